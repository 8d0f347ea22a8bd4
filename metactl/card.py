"""The model card every export carries: ``export/README.md`` in the Hugging Face model-card layout.

YAML front matter (``library_name``, ``license`` where known, ``pipeline_tag``, ``base_model`` for a text
backbone whose Hugging Face id is known (the hub id the run was given, with its revision, commit and sha256
in the body), ``tags``, and ``model-index`` with the adapted accuracy when
``adapt --query`` measured one), then Markdown: what was adapted from what, the labels and the support
set, the evaluation, parity and int8 figures, the command lines that made the model, how to use it,
its intended use and its limitations.

Everything here is read from the metadata the run, the adapted folder and the export record; nothing
is recomputed. Torch-free, and free of a YAML library: the front matter is written in block style with
every string JSON-quoted (valid YAML).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from metactl.contract import Modality
from metactl.modalities import modality_of

CARD = "README.md"
_HUB_CACHE = re.compile(r"^models--([^-][^/]*?)--([^/]+)$")  # huggingface_hub's cache: models--ORG--NAME/snapshots/REV


def front_matter_value(readme: Path, key: str) -> str | None:
    """A top-level scalar of a README's YAML front matter (``license: apache-2.0``), if present."""
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("---"):
        return None
    block = text[3:].split("\n---", 1)[0]
    m = re.search(rf"^{re.escape(key)}:\s*['\"]?([^'\"\n#]+?)['\"]?\s*(#.*)?$", block, re.MULTILINE)
    return m.group(1).strip() if m else None


def hub_id(folder: Path) -> str | None:
    """``ORG/NAME`` for a folder in the Hugging Face cache layout (``models--ORG--NAME/snapshots/REV``)."""
    for part in reversed(folder.parts):
        m = _HUB_CACHE.match(part)
        if m:
            return f"{m.group(1)}/{m.group(2)}"
    return None


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(str(value))  # a JSON string is a YAML double-quoted scalar


def to_yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML lines for dicts, lists and scalars."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(to_yaml(item, indent + 2))
            else:
                lines.append(f"{pad}{key}: {_scalar(item) if not isinstance(item, dict | list) else '[]' if isinstance(item, list) else '{}'}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines.extend(inner[1:])
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _fmt(x: float | None, pct: bool = True) -> str:
    return "—" if x is None else f"{100 * x:.2f} %" if pct else f"{x:.2e}"


def _span(counts: Any) -> str:
    counts = list(counts)
    if not counts:
        return "?"
    return str(min(counts)) if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"


def _backbone(model: dict[str, Any]) -> dict[str, Any]:
    """The pretrained body a text model stands on: folder, licence, Hugging Face id and provenance (all None without one).
    ``backbone_source`` (recorded when the run was given a hub id) names the id, revision and commit."""
    folder = model.get("backbone")
    if not folder:
        return {"folder": None, "license": None, "base": None, "source": {}}
    source = model.get("backbone_source") or {}
    license_ = front_matter_value(Path(folder) / "README.md", "license")
    base = source.get("hub_id") or hub_id(Path(folder)) or front_matter_value(Path(folder) / "README.md", "model_id")
    return {"folder": folder, "license": license_, "base": base, "source": source}


def _front_matter(adapted: dict[str, Any], name: str, pipeline: str, algorithm: str, body: dict[str, Any]) -> list[str]:
    """The YAML block: library, licence, pipeline, base model, tags and the query accuracy as a model-index."""
    meta: dict[str, Any] = {"library_name": "metactl"}
    if body["license"]:
        meta["license"] = body["license"]
    meta["pipeline_tag"] = pipeline
    if body["base"]:
        meta["base_model"] = body["base"]
    meta["tags"] = ["metactl", "meta-learning", "few-shot", algorithm, "onnx", pipeline]
    accuracy = adapted.get("query_accuracy")
    if accuracy is not None:
        query = adapted.get("query") or {}
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": pipeline, "name": pipeline.replace("-", " ").title()},
                        "dataset": {"type": "local-folder", "name": f"query set {Path(query.get('folder', 'query')).name}"},
                        "metrics": [{"type": "accuracy", "value": round(float(accuracy), 6), "name": "Query accuracy after adaptation"}],
                    }
                ],
            }
        ]
    return ["---", *to_yaml(meta), "---", ""]


def _backbone_lines(model: dict[str, Any], body: dict[str, Any]) -> list[str]:
    """The backbone (with its hub provenance when recorded) or the model trained from scratch."""
    if not body["folder"]:
        init = model.get("init_from", {}).get("run") if isinstance(model.get("init_from"), dict) else None
        origin = f"body from run `{init}`" if init else "trained from scratch by meta-training"
        return [f"- **Model:** {model.get('kind', '?')} (width {model.get('width', '?')}), {origin}"]
    sha = str(model.get("backbone_sha256", "?"))
    licence = body["license"] or "not recorded in the folder — check it before sharing"
    hub = f"; Hugging Face id `{body['base']}`" if body["base"] else ""
    lines = [f"- **Backbone:** `{body['folder']}` (frozen body; weights sha256 `{sha[:16]}…`; licence: {licence}){hub}"]
    source = body["source"]
    if source.get("hub_id"):
        revision = f", revision `{source['revision']}`" if source.get("revision") else ""
        lines.append(f"  - **Hugging Face hub:** `{source['hub_id']}`{revision}, commit `{source.get('commit', '?')}`, weights sha256 `{sha}`")
    lines.append(f"- **Adapted part:** {model.get('adapt', 'head')}")
    return lines


def _provenance(adapted: dict[str, Any], run: dict[str, Any] | None, algorithm: str, body: dict[str, Any], files: list[str]) -> list[str]:
    """ "What was adapted from what": algorithm, run, backbone or model, adaptation, files."""
    cfg = (run or {}).get("config", {})
    trained = " (no longer readable)"
    if run:
        trained = f" ({run.get('steps_done', '?')} outer steps on `{cfg.get('data')}`, {cfg.get('ways')}-way {cfg.get('shots')}-shot)"
    lines = ["## What was adapted from what", "", f"- **Algorithm:** {algorithm}"]
    lines.append(f"- **Meta-trained run:** `{adapted.get('source_run', 'unknown')}`{trained}")
    lines += _backbone_lines(adapted.get("model", {}), body)
    lines.append(f"- **Adaptation:** {adapted.get('steps', '?')} inner step(s); {adapted.get('normalization', '')}")
    lines.append(f"- **Files:** {', '.join(f'`{f}`' for f in files)}")
    return lines


def _labels_and_support(adapted: dict[str, Any], unit: str) -> list[str]:
    """The label table (index, label, support count) and the support set in one paragraph."""
    labels: list[str] = adapted["labels"]
    support = adapted.get("support") or {}
    per_label = support.get("per_label", {})
    lines = ["", "## Labels", "", f"Output column *i* of `probabilities` is label *i*; {len(labels)} labels.", ""]
    lines += ["| index | label | support " + unit + " |", "|---:|---|---:|"]
    lines += [f"| {i} | {_cell(lab)} | {per_label.get(lab, '?')} |" for i, lab in enumerate(labels)]
    lines += ["", "## Support set", ""]
    lines.append(
        f"{support.get(unit, '?')} {unit} in `{support.get('folder', '?')}`, "
        + ", ".join(f"{_cell(k)}: {v}" for k, v in per_label.items())
        + (" (truncated)" if support.get("truncated") else "")
        + f". Support accuracy after adaptation: {_fmt(adapted.get('support_accuracy'))}."
    )
    return lines


def _evaluation(adapted: dict[str, Any], run: dict[str, Any] | None, export: dict[str, Any], unit: str) -> list[str]:
    """Query accuracy, meta-training validation, onnxruntime parity, the batch check and the int8 figures."""
    lines = ["", "## Evaluation", ""]
    accuracy, query = adapted.get("query_accuracy"), adapted.get("query") or {}
    if accuracy is not None:
        lines.append(f"- **Query accuracy after adaptation:** {_fmt(accuracy)} on {query.get(unit, '?')} {unit} in `{query.get('folder', '?')}`")
        lines += [f"  - {_cell(row['label'])}: {_fmt(row['accuracy'])} ({row['images']} {unit})" for row in adapted.get("query_per_class", [])]
    else:
        lines.append("- **Query accuracy:** not measured (`metactl adapt --query DIR` measures it on a labeled folder).")
    val, cfg = (run or {}).get("validation", {}).get("curve") or [], (run or {}).get("config", {})
    if val:
        curve = ", ".join(f"{k}: {_fmt(c['mean'])}" for k, c in enumerate(val))
        lines.append(
            f"- **Meta-training validation** ({cfg.get('ways')}-way {cfg.get('shots')}-shot episodes on held-out classes), "
            f"accuracy after k inner steps: {curve}"
        )
    check = export.get("check", {})
    lines.append(
        f"- **Parity:** onnxruntime vs torch, max abs difference of `{check.get('output', 'probabilities')}` "
        f"{_fmt(check.get('max_abs_diff'), pct=False)} on {check.get(unit, '?')} {check.get('on', unit)} "
        f"(tolerance {check.get('tolerance', '?')}); opset {export.get('opset')}"
    )
    if check.get("batch_and_padding_max_abs_diff") is not None:
        lines.append(f"- **Batch and padding independence:** max change {_fmt(check['batch_and_padding_max_abs_diff'], pct=False)}")
    quant = export.get("quantization")
    if quant:
        lines.append(
            f"- **int8 (`{quant['file']}`):** {quant['kind']}; same prediction as the float model on "
            f"{_fmt(quant.get('argmax_agreement_with_float'))} of the {quant.get('agreement_on', unit)}"
        )
    else:
        lines.append("- **int8:** not quantized (`metactl export --quantize int8` adds `model.int8.onnx`).")
    return lines


def _making_and_use(adapted: dict[str, Any], run: dict[str, Any] | None, export: dict[str, Any], name: str, modality: Modality) -> list[str]:
    """The recorded command lines, how to call the model, and what it is for."""
    commands = [c for c in ((run or {}).get("command"), adapted.get("command"), export.get("command")) if c]
    lines = ["", "## How it was made", ""]
    if commands:
        lines += ["```" + ("bash" if all(c.startswith("metactl ") for c in commands) else "text"), *commands, "```"]
    else:
        lines.append("The commands were not recorded.")
    lines += ["", "## How to use", "", "```bash", f"metactl predict {name}/ {modality.example_input}", "```", ""]
    lines.append("Or any onnxruntime client: input and output are described in `metactl.json` (`input`, `output`) and in `model.onnx`'s metadata.")
    lines += ["", "## Intended use", ""]
    lines.append(
        f"Classifying {modality.unit} into exactly these {len(adapted['labels'])} labels, for the setting the support set shows "
        f"({modality.setting}). A quick, cheap model for a narrow task, adapted from a handful of examples per label."
    )
    return lines


def _limitations(adapted: dict[str, Any], licensed: bool) -> list[str]:
    n = len(adapted["labels"])
    per_label = (adapted.get("support") or {}).get("per_label", {})
    lines = ["", "## Limitations", ""]
    lines += [
        f"- Every input gets one of the {n} labels: there is no 'none of these'; an input unlike all labels still gets confident scores.",
        f"- Adapted from {_span(per_label.values())} example(s) per label: "
        "accuracy on data unlike the support set is unknown"
        + (" beyond the query set above." if adapted.get("query_accuracy") is not None else "; measure it on a labeled query folder."),
        "- The meta-training data bounds what the initialization learned; inputs far from it (other scripts, styles, domains) adapt less well.",
    ]
    if not licensed:
        lines.append("- No licence is recorded: decide one (and check the training data's and any backbone's licences) before sharing the model.")
    return lines


def render(adapted: dict[str, Any], run: dict[str, Any] | None, export: dict[str, Any], name: str, files: list[str]) -> str:
    """The card's text. ``adapted``, ``run`` and ``export``: the three folders' ``metactl.json``
    (``run`` None when the source run is gone); ``name``: the export folder's name. The kind of input
    (and so the card's words for it) is the modality of the adapted preprocessing."""
    modality = modality_of(adapted.get("preprocessing"))
    pipeline = f"{modality.name}-classification"
    algorithm = adapted.get("algorithm") or (run or {}).get("algorithm", {}).get("name", "unknown")
    body = _backbone(adapted.get("model", {}))
    support = adapted.get("support") or {}
    lines = _front_matter(adapted, name, pipeline, algorithm, body)
    lines += [f"# {name}: a {len(adapted['labels'])}-label {modality.name} classifier adapted with metactl", ""]
    lines += [
        f"A few-shot {modality.name} classifier: a meta-learned initialization ({algorithm}) adapted by {adapted.get('steps', '?')} "
        f"gradient step(s) with its learned per-layer learning rates to {support.get(modality.unit, '?')} labeled {modality.unit}, "
        "exported to ONNX and checked in onnxruntime.",
        "",
    ]
    lines += _provenance(adapted, run, algorithm, body, files)
    lines += _labels_and_support(adapted, modality.unit)
    lines += _evaluation(adapted, run, export, modality.unit)
    lines += _making_and_use(adapted, run, export, name, modality)
    lines += _limitations(adapted, bool(body["license"]))
    return "\n".join(lines) + "\n"


__all__ = ["CARD", "front_matter_value", "hub_id", "render", "to_yaml"]
