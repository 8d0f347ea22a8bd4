"""``export --adaptable``: a meta-trained run as three ONNX graphs that adapt and classify without torch.

For a run whose inner loop adapts only the head (anil, protomaml and pretrain with ``--adapt head``, centroid, probe,
and plugins with an ``adaptable_head`` hook) the folder holds:

- ``embed.onnx``: the model's own inputs (``pixels``, or ``input_ids`` + ``attention_mask``) -> ``features``
  float32 [B, D]. A model that normalises with support statistics (Conv-4) also outputs those statistics
  of the batch it is given (``mean{i}`` / ``var{i}``): embed the whole support set in one call;
- ``adapt.onnx``: ``features`` [N, D] and ``labels`` int64 [N] (0..C−1, every class present, C dynamic) ->
  ``weight`` [C, D] and ``bias`` [C]: the run's own head adaptation with its meta-learned head and learned
  per-step α baked in (:mod:`metactl.adapt_graph`);
- ``classify.onnx``: the model's inputs, ``weight``, ``bias`` (and the support's statistics) -> ``logits``,
  ``probabilities`` [B, C]; for a model without support statistics also ``head.onnx`` (``features``, ``weight``,
  ``bias`` -> the same outputs), so a client that keeps ``embed.onnx``'s features loads the body once;
- text: ``tokenizer.json`` and ``config.json`` as ``export --onnx`` writes them; ``metactl.json`` (the
  input/output contract, the adaptation, each file's sha256) and a model card with the three-call recipe.

The exporter checks its graphs against torch before writing: ``embed.onnx`` against the model's features,
and embed + adapt + classify on a small support set against ``adapt`` (the algorithm's own, as ``metactl
adapt`` runs it) — both within 1e-4. ``metactl adapt --from DIR`` (:mod:`metactl.runtime_adapt`) then runs the
graphs with onnxruntime and numpy only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from metactl import contract, registry, runs
from metactl._version import __version__
from metactl.adapt import default_steps
from metactl.adapt_graph import IR_VERSION, OPSET, adapt_model, classify_model, head_model
from metactl.adapt_spec import HeadAdaptation, NotAdaptable
from metactl.config import TrainConfig
from metactl.errors import MetactlError
from metactl.evaluate import algorithm_of_run, body_features
from metactl.export import _onnx_bytes
from metactl.modalities import modality_of
from metactl.results import AdaptableResult
from metactl.runtime_adapt import FORMAT

EMBED, ADAPT, CLASSIFY, HEAD = "embed.onnx", "adapt.onnx", "classify.onnx", "head.onnx"
TOLERANCE = 1e-4
CHECK_CLASSES = 3  # the self-check's support: two examples of each of the trained classes, or of this many when there are more than
MAX_CHECK_CLASSES = 20


def exportable_algorithms() -> list[str]:
    """The installed algorithms whose adaptation exports as a graph (those with an ``adaptable_head`` hook)."""
    names = []
    for name in registry.available_names():
        try:
            cls = registry.load_algorithm(name)
        except MetactlError:
            continue
        if getattr(cls, "adaptable_head", None) is not None:
            names.append(name)
    return sorted(names)


def _refuse(name: str, why: str) -> MetactlError:
    return MetactlError(
        f"{name}: {why}; export --adaptable needs an adaptation that changes only the head.",
        f"Export adaptable from a run of: {', '.join(exportable_algorithms())} (with --adapt head), or use `metactl adapt` + `metactl export --onnx`.",
    )


def _adaptations(meta: dict[str, Any], cfg: TrainConfig, learner: Any, algo: Any) -> tuple[HeadAdaptation, HeadAdaptation, int, int]:
    """The head adaptation for the trained class count and for any other count, and the steps of each."""
    hook = contract.hook(algo, "adaptable_head")
    if hook is None:
        raise _refuse(algo.name, "its inner loop adapts the body (or it declares no adaptable head)")
    trained = int(meta["model"]["num_classes"])
    k_same, k_other = default_steps(meta, cfg, trained), default_steps(meta, cfg, trained + 1)
    other_learner, _ = runs.with_head(learner, meta["model"], trained + 1)
    try:
        same, other = hook(learner, k_same), hook(other_learner, k_other)
    except NotAdaptable as exc:
        raise _refuse(algo.name, str(exc)) from None
    if other.start == "initial":  # another class count starts from a zero head (runs.with_head)
        other = dataclasses.replace(other, start="zero", weight=None, bias=None)
    return same, other, k_same, k_other


def _model_at_theta(learner: Any) -> torch.nn.Module:
    """The run's model with θ (and the frozen body) loaded into its modules."""
    model = learner.model
    model.load_state_dict({k: v.detach() for k, v in {**learner.frozen, **learner.params}.items()}, strict=False)
    return model.eval()


def _session(data: bytes) -> Any:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _lower_ir(data: bytes) -> bytes:
    """The traced graph at the IR version every onnxruntime build (web included) reads."""
    model = onnx.load_from_string(data)
    model.ir_version = min(model.ir_version, IR_VERSION)
    return model.SerializeToString()


def _check_inputs(modality: Any, mods: Any, prep: dict[str, Any], trained: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A small support set as client inputs (the modality's fallback examples, repeated when too few) and labels
    0..C−1 with C the trained count when there are enough rows, else CHECK_CLASSES."""
    raw, _ = modality.fallback_inputs(mods.embed, prep)
    n = len(next(iter(raw.values())))
    classes = trained if trained <= MAX_CHECK_CLASSES else CHECK_CLASSES
    reps = -(-2 * classes // n)
    inputs = {k: np.concatenate([v] * reps)[: 2 * classes] for k, v in raw.items()}
    return inputs, np.arange(2 * classes, dtype=np.int64) % classes


def _torch_head(learner: Any, meta: dict[str, Any], algo: Any, model_x: Any, y: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The head ``metactl adapt`` computes for this support: the algorithm's ``adapt`` as adapt.py calls it."""
    n = int(y.max()) + 1
    learner_n, _ = runs.with_head(learner, meta["model"], n)
    x = {"features": body_features(learner_n, model_x)} if learner_n.model.adapts_head_only() else model_x
    phi = algo.adapt(learner_n, x, torch.from_numpy(y), steps)[-1]
    w, b = learner.head
    return phi[w].detach().float().numpy(), phi[b].detach().float().numpy()


def _model_input(raw: dict[str, np.ndarray], embed: Any) -> Any:
    """Client inputs -> the model's own input (what ``metactl adapt`` feeds the learner)."""
    if "pixels" in raw:
        with torch.no_grad():
            return embed.scaled(torch.from_numpy(raw["pixels"]))
    return {k: torch.from_numpy(v) for k, v in raw.items()}


def _self_check(learner: Any, meta: dict[str, Any], cfg: TrainConfig, algo: Any, mods: Any, graphs: dict[str, bytes], modality: Any) -> dict[str, Any]:
    """embed.onnx against torch's features, then embed + adapt + classify against ``adapt`` in torch."""
    prep = meta["preprocessing"]
    trained = int(meta["model"]["num_classes"])
    raw, y = _check_inputs(modality, mods, prep, trained)
    embed_out = _session(graphs[EMBED]).run(None, raw)
    with torch.no_grad():
        expected = mods.embed(*(torch.from_numpy(raw[name]) for name in mods.embed.input_names))
    expected = expected if isinstance(expected, tuple) else (expected,)
    embed_diff = max(float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, embed_out, strict=True))
    feats, state = embed_out[0], dict(zip(mods.state, embed_out[1:], strict=True))
    weight, bias = _session(graphs[ADAPT]).run(["weight", "bias"], {"features": feats, "labels": y})
    steps = default_steps(meta, cfg, int(y.max()) + 1)
    ref_w, ref_b = _torch_head(learner, meta, algo, _model_input(raw, mods.embed), y, steps)
    head_diff = max(float(np.abs(weight - ref_w).max()), float(np.abs(bias - ref_b).max()))
    probs = _session(graphs[CLASSIFY]).run(["probabilities"], {**raw, "weight": weight, "bias": bias, **state})[0]
    ref_probs = F.softmax(torch.from_numpy(feats) @ torch.from_numpy(ref_w).T + torch.from_numpy(ref_b), -1).numpy()
    prob_diff = float(np.abs(probs - ref_probs).max())
    worst = max(embed_diff, head_diff, prob_diff)
    if not worst <= TOLERANCE:
        raise MetactlError(
            f"Adaptable export check failed: onnxruntime differs from torch by {worst:.2e} (features {embed_diff:.1e}, head {head_diff:.1e}, "
            f"probabilities {prob_diff:.1e}; > {TOLERANCE:g}).",
            "Please report this with the run folder.",
        )
    return {
        "on": f"{len(y)} {modality.unit} ({'the fallback examples' if 'pixels' in raw else 'the model example inputs'}), {int(y.max()) + 1} classes",
        "features_max_abs_diff": embed_diff, "head_max_abs_diff": head_diff, "probabilities_max_abs_diff": prob_diff, "tolerance": TOLERANCE,
    }  # fmt: skip


def _io(modality: Any, mods: Any, dim: int) -> dict[str, Any]:
    """The three graphs' inputs and outputs, for metactl.json and the card."""
    inputs = list(mods.embed.input_names)
    state = list(mods.state)
    return {
        "embed": {"inputs": inputs, "outputs": ["features", *state], "features": ["batch", dim]},
        "adapt": {"inputs": {"features": ["N", dim], "labels": ["N"]}, "outputs": {"weight": ["C", dim], "bias": ["C"]},
                  "labels": "int64 0..C-1, every class present at least once"},
        "classify": {"inputs": [*inputs, "weight", "bias", *state], "outputs": ["logits", "probabilities"], "shape": ["batch", "C"]},
        "head": None if state else {"inputs": {"features": ["batch", dim], "weight": ["C", dim], "bias": ["C"]}, "outputs": ["logits", "probabilities"]},
        "state": state,
        "state_note": "embed.onnx normalises with the statistics of the batch it is given: embed the whole support set in one call "
        "and pass its statistics to classify.onnx" if state else None,
    }  # fmt: skip


def render_card(info: dict[str, Any], name: str) -> str:
    """The adaptable folder's README.md: what it is and the three-call recipe."""
    text = info["modality"] == "text"
    inputs = "input_ids, attention_mask (tokenizer.json)" if text else "pixels (float32 raw 0-255, NCHW)"
    state = info["io"]["state"]
    lines = [
        f"# {name}: an adaptable {info['algorithm']} model",
        "",
        f"Adapts to your own labels on any runtime that runs ONNX (onnxruntime in Python, C++, C#, Java, JavaScript, the browser), "
        f"without torch. Meta-trained by metactl {info['metactl_version']} (`{info['algorithm']}`, run `{info['source_run']}`).",
        "",
        "## Three calls",
        "",
        f"1. `embed.onnx`: {inputs} -> `features` [batch, {info['features']}]"
        + (f" and the batch's normalisation statistics ({len(state)} tensors): embed the whole support set in one call" if state else "")
        + ".",
        "2. `adapt.onnx`: the support set's `features` [N, D] and `labels` int64 [N] (0..C-1, every class present) -> `weight` [C, D], `bias` [C].",
        "3. `classify.onnx`: new inputs + `weight` + `bias`" + (" + the support's statistics" if state else "") + " -> `logits`, `probabilities` [batch, C]."
        + ("" if state else " (`head.onnx` does the same from `features`: embed once, keep the features, skip the second copy of the body.)"),
        "",
        "```python",
        "import numpy as np, onnxruntime as ort",
        "embed, adapt, classify = (ort.InferenceSession(f'{d}.onnx') for d in ('embed', 'adapt', 'classify'))",
        "support = embed.run(None, support_inputs)  # features" + (" + statistics" if state else ""),
        "weight, bias = adapt.run(None, {'features': support[0], 'labels': labels})",
        "probs = classify.run(['probabilities'], {**new_inputs, 'weight': weight, 'bias': bias"
        + (", **dict(zip(STATE_NAMES, support[1:]))" if state else "") + "})[0]",
        "```",
        "",
        "Or in one command, torch-free: `metactl adapt --from THIS_FOLDER --support ./shots --out adapted-export`, which writes a "
        "normal export (`model.onnx` with the adapted head baked in) that `metactl predict` serves.",
        "",
        "## Adaptation",
        "",
        f"- classes the run was trained with: {info['trained_classes']}; steps then: {info['steps']['trained_classes']}, "
        f"for any other count: {info['steps']['other']}",
        f"- head start: {info['adaptation']['trained_classes']['start']} (trained count), {info['adaptation']['other']['start']} (other counts)",
        f"- checked against torch on {info['check']['on']}: head max |Δ| {info['check']['head_max_abs_diff']:.1e}, "
        f"probabilities {info['check']['probabilities_max_abs_diff']:.1e}",
        f"- preprocessing: {json.dumps(info['preprocessing'], ensure_ascii=False)}",
        "",
    ]  # fmt: skip
    return "\n".join(lines)


def export_adaptable(run: Path | None, out: Path, force: bool = False, command: str | None = None) -> AdaptableResult:
    """Write the adaptable folder ``out`` for the run ``run`` (default: the newest under ./runs)."""
    runs.ensure_out_free(out, force)
    run = run or runs.latest_run()
    meta, learner = runs.load_run(run, "cpu")
    if meta.get("task") != "classification" or not meta.get("preprocessing"):
        raise MetactlError(f"{run}: export --adaptable needs a classification run (this one is {meta.get('task')}).", "Meta-train on image or text data.")
    prep = meta["preprocessing"]
    modality = modality_of(prep)
    cfg = TrainConfig(**meta["config"])
    algo = algorithm_of_run(meta, cfg)
    same, other, k_same, k_other = _adaptations(meta, cfg, learner, algo)
    model = _model_at_theta(learner)
    modules = contract.hook(model, "adaptable_modules")
    if modules is None:
        raise _refuse(f"{type(model).__name__} models", "the model declares no adaptable modules")
    mods = modules(prep)
    source = {"source_run": str(run.resolve()), "metactl_version": __version__}
    embed_bytes = _lower_ir(_onnx_bytes(mods.embed, source))
    body_bytes = _lower_ir(_onnx_bytes(mods.body, source)) if mods.body is not None else embed_bytes
    with torch.no_grad():
        example = mods.embed(*mods.embed.example_inputs())
    dim = int((example[0] if mods.state else example).shape[-1])  # embed's outputs: features, then the statistics if any
    trained = int(meta["model"]["num_classes"])
    graphs = {
        EMBED: embed_bytes,
        ADAPT: adapt_model(same, other, trained, dim, source).SerializeToString(),
        CLASSIFY: classify_model(onnx.load_from_string(body_bytes), dim, source).SerializeToString(),
    }
    check = _self_check(learner, meta, cfg, algo, mods, graphs, modality)
    files = dict(graphs)
    if not mods.state:  # features do not depend on the batch: a client may keep them and classify with the head alone
        files[HEAD] = head_model(dim, source).SerializeToString()
    files.update(modality.export_assets(model, [], prep))  # text: tokenizer.json, config.json (labels come at adapt time)
    info = {
        "metactl_version": __version__,
        "kind": "adaptable",
        "format": FORMAT,
        "algorithm": meta["algorithm"]["name"],
        "modality": modality.name,
        "preprocessing": modality.served_preprocessing(prep),
        "input": modality.describe_input(prep),
        "features": dim,
        "trained_classes": trained,
        "steps": {"trained_classes": k_same, "other": k_other},
        "adaptation": {"trained_classes": same.describe(), "other": other.describe()},
        "label_names": bool(cfg.label_names),
        "io": _io(modality, mods, dim),
        "opset": OPSET,
        "check": check,
        "source_run": str(run.resolve()),
        "source_theta_sha256": hashlib.sha256((run / runs.THETA).read_bytes()).hexdigest(),
        "created": datetime.now().isoformat(timespec="seconds"),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    if command:
        info["command"] = command
    files[runs.META] = (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()
    files["README.md"] = render_card(info, out.name).encode()
    runs.write_dir_atomically(out, force, files)
    sizes = {name: len(files[name]) for name in graphs}
    return AdaptableResult(out, info["algorithm"], modality.name, sizes, check["head_max_abs_diff"], check["probabilities_max_abs_diff"], sorted(files))


__all__ = ["ADAPT", "CLASSIFY", "EMBED", "FORMAT", "export_adaptable", "exportable_algorithms"]
