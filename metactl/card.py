"""The model card every export carries: ``export/README.md`` in the Hugging Face model-card layout.

YAML front matter (``library_name``, ``license`` where known, ``pipeline_tag``, ``base_model`` for a text
backbone whose Hugging Face id is known, ``tags``, and ``model-index`` with the adapted accuracy when
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


def render(adapted: dict[str, Any], run: dict[str, Any] | None, export: dict[str, Any], name: str, files: list[str]) -> str:
    """The card's text. ``adapted``, ``run`` and ``export``: the three folders' ``metactl.json``
    (``run`` None when the source run is gone); ``name``: the export folder's name."""
    text = "texts" if export.get("input", {}).get("names") else "images"
    kind = "text" if text == "texts" else "image"
    pipeline = f"{kind}-classification"
    labels: list[str] = adapted["labels"]
    algorithm = adapted.get("algorithm") or (run or {}).get("algorithm", {}).get("name", "unknown")
    model = adapted.get("model", {})
    backbone = model.get("backbone")
    license_ = front_matter_value(Path(backbone) / "README.md", "license") if backbone else None
    base = (hub_id(Path(backbone)) or front_matter_value(Path(backbone) / "README.md", "model_id")) if backbone else None
    support = adapted.get("support") or {}
    per_label = support.get("per_label", {})
    accuracy = adapted.get("query_accuracy")
    query = adapted.get("query") or {}

    meta: dict[str, Any] = {"library_name": "metactl"}
    if license_:
        meta["license"] = license_
    meta["pipeline_tag"] = pipeline
    if base:
        meta["base_model"] = base
    meta["tags"] = ["metactl", "meta-learning", "few-shot", algorithm, "onnx", pipeline]
    if accuracy is not None:
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

    cfg = (run or {}).get("config", {})
    source_run = adapted.get("source_run", "unknown")
    lines = ["---", *to_yaml(meta), "---", ""]
    lines += [f"# {name}: a {len(labels)}-label {kind} classifier adapted with metactl", ""]
    lines += [
        f"A few-shot {kind} classifier: a meta-learned initialization ({algorithm}) adapted by {adapted.get('steps', '?')} "
        f"gradient step(s) with its learned per-layer learning rates to {support.get(text, '?')} labeled {text}, "
        "exported to ONNX and checked in onnxruntime.",
        "",
        "## What was adapted from what",
        "",
        f"- **Algorithm:** {algorithm}",
        f"- **Meta-trained run:** `{source_run}`"
        + (
            f" ({run.get('steps_done', '?')} outer steps on `{cfg.get('data')}`, {cfg.get('ways')}-way {cfg.get('shots')}-shot)"
            if run
            else " (no longer readable)"
        ),
    ]
    if backbone:
        lines.append(
            f"- **Backbone:** `{backbone}` (frozen body; weights sha256 `{str(model.get('backbone_sha256', '?'))[:16]}…`; "
            f"licence: {license_ or 'not recorded in the folder — check it before sharing'})" + (f"; Hugging Face id `{base}`" if base else "")
        )
        lines.append(f"- **Adapted part:** {model.get('adapt', 'head')}")
    else:
        init = model.get("init_from", {}).get("run") if isinstance(model.get("init_from"), dict) else None
        body = f"{model.get('kind', '?')} (width {model.get('width', '?')}), " + (
            f"body from run `{init}`" if init else "trained from scratch by meta-training"
        )
        lines.append(f"- **Model:** {body}")
    lines.append(f"- **Adaptation:** {adapted.get('steps', '?')} inner step(s); {adapted.get('normalization', '')}")
    lines.append(f"- **Files:** {', '.join(f'`{f}`' for f in files)}")
    lines += ["", "## Labels", "", f"Output column *i* of `probabilities` is label *i*; {len(labels)} labels.", ""]
    lines += ["| index | label | support " + text + " |", "|---:|---|---:|"]
    lines += [f"| {i} | {_cell(lab)} | {per_label.get(lab, '?')} |" for i, lab in enumerate(labels)]
    lines += ["", "## Support set", ""]
    lines.append(
        f"{support.get(text, '?')} {text} in `{support.get('folder', '?')}`, "
        + ", ".join(f"{_cell(k)}: {v}" for k, v in per_label.items())
        + (" (truncated)" if support.get("truncated") else "")
        + f". Support accuracy after adaptation: {_fmt(adapted.get('support_accuracy'))}."
    )
    lines += ["", "## Evaluation", ""]
    if accuracy is not None:
        lines.append(f"- **Query accuracy after adaptation:** {_fmt(accuracy)} on {query.get(text, '?')} {text} in `{query.get('folder', '?')}`")
        for row in adapted.get("query_per_class", []):
            lines.append(f"  - {_cell(row['label'])}: {_fmt(row['accuracy'])} ({row['images']} {text})")
    else:
        lines.append("- **Query accuracy:** not measured (`metactl adapt --query DIR` measures it on a labeled folder).")
    val = (run or {}).get("validation", {}).get("curve") or []
    if val:
        curve = ", ".join(f"{k}: {_fmt(c['mean'])}" for k, c in enumerate(val))
        lines.append(
            f"- **Meta-training validation** ({cfg.get('ways')}-way {cfg.get('shots')}-shot episodes on held-out classes), "
            f"accuracy after k inner steps: {curve}"
        )
    check = export.get("check", {})
    lines.append(
        f"- **Parity:** onnxruntime vs torch, max abs difference of `{check.get('output', 'probabilities')}` "
        f"{_fmt(check.get('max_abs_diff'), pct=False)} on {check.get(text, '?')} {check.get('on', text)} "
        f"(tolerance {check.get('tolerance', '?')}); opset {export.get('opset')}"
    )
    if check.get("batch_and_padding_max_abs_diff") is not None:
        lines.append(f"- **Batch and padding independence:** max change {_fmt(check['batch_and_padding_max_abs_diff'], pct=False)}")
    quant = export.get("quantization")
    if quant:
        lines.append(
            f"- **int8 (`{quant['file']}`):** {quant['kind']}; same prediction as the float model on "
            f"{_fmt(quant.get('argmax_agreement_with_float'))} of the {quant.get('agreement_on', text)}"
        )
    else:
        lines.append("- **int8:** not quantized (`metactl export --quantize int8` adds `model.int8.onnx`).")
    commands = [c for c in ((run or {}).get("command"), adapted.get("command"), export.get("command")) if c]
    lines += ["", "## How it was made", ""]
    if commands:
        lines += ["```" + ("bash" if all(c.startswith("metactl ") for c in commands) else "text"), *commands, "```"]
    else:
        lines.append("The commands were not recorded.")
    lines += ["", "## How to use", "", "```bash", f"metactl predict {name}/ " + ('"some text"' if kind == "text" else "image.png"), "```", ""]
    lines.append("Or any onnxruntime client: input and output are described in `metactl.json` (`input`, `output`) and in `model.onnx`'s metadata.")
    lines += ["", "## Intended use", ""]
    lines.append(
        f"Classifying {text} into exactly these {len(labels)} labels, for the setting the support set shows "
        f"({'the same kind of text' if kind == 'text' else 'the same kind of image, size and colour'}). "
        "A quick, cheap model for a narrow task, adapted from a handful of examples per label."
    )
    lines += ["", "## Limitations", ""]
    lines += [
        f"- Every input gets one of the {len(labels)} labels: there is no 'none of these'; an input unlike all labels still gets confident scores.",
        f"- Adapted from {_span(per_label.values())} example(s) per label: "
        "accuracy on data unlike the support set is unknown"
        + (" beyond the query set above." if accuracy is not None else "; measure it on a labeled query folder."),
        "- The meta-training data bounds what the initialization learned; inputs far from it (other scripts, styles, domains) adapt less well.",
    ]
    if not license_:
        lines.append("- No licence is recorded: decide one (and check the training data's and any backbone's licences) before sharing the model.")
    return "\n".join(lines) + "\n"


__all__ = ["CARD", "front_matter_value", "hub_id", "render", "to_yaml"]
