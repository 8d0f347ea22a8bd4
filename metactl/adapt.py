"""``adapt``: fine-tune a run's θ on a user's support folder with the learned per-layer α.

Head set-up for the folder's number of labels N':
- N' equal to the N of meta-training: the meta-learned head is the starting point (exactly what
  meta-training optimised and validation measured);
- any other N': a zero-initialised head (as in MAML++, Antoniou et al. 2019): every label starts
  with equal probability and the first step moves each row towards its class's mean feature; the
  head's learned α is kept.

A text body under a head that alone adapts (``adapts_head_only``): the body runs once per
support text (in batches of similar length) and the K steps run on its features, as in meta-training.

After the K steps, BatchNorm statistics are computed once from the support set at the adapted
weights and frozen into the model, so the adapted model's prediction for an image never depends on
the rest of the batch: the same computation meta-training and validation used (``ref=`` support).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from metactl import contract, runs
from metactl._callable import callable_module
from metactl._version import __version__
from metactl.api import Inputs, Params, map_inputs
from metactl.config import TrainConfig
from metactl.data.examples import LabeledExamples
from metactl.data.label_names import add_label_names
from metactl.errors import MetactlError
from metactl.evaluate import algorithm_of_run, body_features
from metactl.modalities import modality_of
from metactl.models import build_model
from metactl.perf import check_device
from metactl.results import AdaptResult

MODEL = "model.safetensors"


def norm_statistics(model: nn.Module, params: Params, x: Inputs) -> dict[str, torch.Tensor]:
    """The tensors the model freezes for deployment (its normalisation statistics of ``x`` at ``params``)."""
    return model.deployment_buffers(params, x)  # type: ignore[operator]


def deployable(spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    """The adapted model in eval mode: its weights from ``tensors`` (everything but the frozen
    pretrained body, which the model brings itself) and its deployment buffers (normalisation statistics)."""
    model = build_model(spec)
    model.prepare_deployment()  # type: ignore[operator]
    expected = set(model.state_dict()) - set(model.frozen_parameter_names())  # type: ignore[operator]
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        what = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise MetactlError(f"The adapted weights do not match their model spec ({what}).", "Run `metactl adapt` again.")
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise MetactlError(f"The adapted weights do not match their model spec ({str(exc).splitlines()[0]}).", "Run `metactl adapt` again.") from None
    return model.eval()


def model_input(examples: np.ndarray | dict[str, np.ndarray]) -> Inputs:
    """Examples as the support reader gives them -> the model's input on the CPU."""
    if isinstance(examples, dict):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in examples.items()}
    return to_input(examples)


def to_input(images: np.ndarray) -> torch.Tensor:
    """(n, size, size) grayscale -> (n, 1, size, size); (n, 3, size, size) RGB stays; values / 255."""
    x = torch.from_numpy(images).float().div(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x


def _accuracy_table(pred: np.ndarray, target: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i, lab in enumerate(labels):
        mask = target == i
        if mask.any():
            rows.append({"label": lab, "images": int(mask.sum()), "accuracy": float((pred[mask] == i).mean())})
    return rows


def _query_accuracy(model: nn.Module, labels: list[str], qdata: LabeledExamples | None) -> tuple[float | None, list[dict[str, Any]]]:
    """The adapted model's accuracy on the query set (its labels mapped to the support set's), overall and per label."""
    if qdata is None:
        return None, []
    remap = np.array([labels.index(lab) for lab in qdata.labels])
    qy = remap[qdata.targets]
    with torch.no_grad():
        pred = model(model_input(qdata.examples)).argmax(-1).numpy()
    return float((pred == qy).mean()), _accuracy_table(pred, qy, labels)


def adapt(
    support: Path,
    run: Path | None = None,
    steps: int | None = None,
    query: Path | None = None,
    out: Path = Path("adapted"),
    force: bool = False,
    device: str = "cpu",
    command: str | None = None,
    label_names: bool | None = None,
) -> AdaptResult:
    """Adapt on ``device`` (the inner loop); the adapted model is built, checked and saved on the CPU.
    ``command``: the command line (or Python call) that asked for it, recorded for the model card.
    ``label_names``: each label's readable name is one more support example (None: as the run trained)."""
    t0 = time.perf_counter()
    runs.ensure_out_free(out, force)  # fail before any work
    check_device(device)
    run = run or runs.latest_run()
    meta, learner = runs.load_run(run, device)
    if meta.get("task") != "classification" or not meta.get("preprocessing"):
        raise MetactlError(f"{run}: adapt needs a classification run (this one is {meta.get('task')}).", "Meta-train on image or text data.")
    modality = modality_of(meta["preprocessing"])
    cfg = TrainConfig(**meta["config"])
    names = cfg.label_names if label_names is None else label_names
    data, qdata, prep = _read_sets(modality, meta["preprocessing"], support, query, names)
    k = default_steps(meta, cfg, len(data.labels)) if steps is None else steps
    if k < 0:
        raise MetactlError(f"--steps must be >= 0 (got {k}).", "Pass a number of inner steps.")
    algo = algorithm_of_run(meta, cfg)
    learner, spec = runs.with_head(learner, meta["model"], len(data.labels))
    sx, sy = model_input(data.examples), torch.from_numpy(data.targets)
    dx, dy = map_inputs(lambda t: t.to(device), sx), sy.to(device)
    fixed = learner.model.adapts_head_only()
    if fixed:  # the body never changes: its features once, not once per inner step and per check
        dx = {"features": body_features(learner, dx)}
    trajectory = algo.adapt(learner, dx, dy, k)
    with torch.no_grad():
        losses = [float(learner.loss(learner.forward(p, dx), dy)) for p in trajectory]
    phi = trajectory[-1]  # the frozen pretrained body is not stored: the model spec brings it back
    tensors = {k2: v.detach() for k2, v in phi.items()}
    tensors.update(norm_statistics(learner.model, {**learner.frozen, **phi}, dx))
    tensors = {k2: v.cpu() for k2, v in tensors.items()}
    model = deployable(spec, tensors)
    with torch.no_grad():
        support_acc = float((model({"features": dx["features"].cpu()} if fixed else sx).argmax(-1) == sy).float().mean())
    query_acc, per_class = _query_accuracy(model, data.labels, qdata)
    theta_bytes = (run / runs.THETA).read_bytes()
    unit = modality.unit
    info = {
        "metactl_version": __version__,
        "kind": "adapted",
        "labels": data.labels,
        "model": spec,
        "preprocessing": prep,
        "normalization": modality.normalization,
        "source_run": str(run.resolve()),
        "source_theta_sha256": hashlib.sha256(theta_bytes).hexdigest(),
        "algorithm": meta["algorithm"]["name"],
        "steps": k,
        "label_names": names,
        "support": {"folder": str(support.resolve()), unit: len(data), "per_label": data.counts(), "truncated": data.truncated},
        "support_losses": losses,
        "support_accuracy": support_acc,
        "query_accuracy": query_acc,
        "query": None if qdata is None else {"folder": str(query.resolve()), unit: len(qdata)},  # type: ignore[union-attr]
        "query_per_class": per_class,
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    if command:
        info["command"] = command
    blob = save({k2: v.contiguous() for k2, v in tensors.items()}, metadata={"format": "metactl-adapted", "metactl_version": __version__})
    files = {MODEL: blob, runs.META: (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()}
    assets = contract.hook(model, "adapted_assets")
    files.update(assets() if assets is not None else {})  # e.g. the LoRA as a PEFT adapter folder
    runs.write_dir_atomically(out, force, files)
    metrics = {"support_accuracy": support_acc, "query_accuracy": query_acc, "support_losses": losses}
    return AdaptResult(out, data.labels, metrics, per_class, data.skipped, time.perf_counter() - t0)


def _read_sets(
    modality: Any, recorded: dict[str, Any], support: Path, query: Path | None, names: bool
) -> tuple[LabeledExamples, LabeledExamples | None, dict[str, Any]]:
    """The support set (with each label's readable name as one more example when ``names``), the query
    set if given (its labels must be the support's), and the preprocessing they were read with."""
    data = modality.read_support(support, modality.support_preprocessing(recorded), "--support")
    prep = data.preprocessing or recorded
    qdata: LabeledExamples | None = modality.read_support(query, prep, "--query") if query is not None else None
    if qdata is not None and set(qdata.labels) - set(data.labels):
        extra = ", ".join(sorted(set(qdata.labels) - set(data.labels)))
        raise MetactlError(f"--query {query}: labels not in the support set: {extra}.", "Use the same labels as --support.")
    return (add_label_names(data, prep) if names else data), qdata, prep


def default_steps(meta: dict[str, Any], cfg: TrainConfig, n: int) -> int:
    """The run's ``adapt_steps`` (chosen on validation among 0..K). Step 0 is the head adaptation starts
    from: the meta-learned one for the trained N, a new zero head for another N'. When the validation
    that chose 0 started from the other kind of head than ``n`` labels get, 0 is not a choice made for
    them: ``test_inner_steps`` then."""
    k = int(meta.get("adapt_steps", cfg.test_inner_steps))
    trained = int(meta["model"].get("num_classes", cfg.ways))
    chosen_at = int(meta.get("adapt_steps_ways", trained))
    if k == 0 and (chosen_at == trained) != (n == trained):
        return cfg.test_inner_steps
    return k


def load_adapted(path: Path) -> tuple[dict[str, Any], nn.Module]:
    meta = runs.read_meta(path)
    if meta.get("kind") != "adapted":
        raise MetactlError(f"{path}: not an adapted model ({runs.META} says kind={meta.get('kind')!r}).", "Pass the folder written by `metactl adapt`.")
    runs.require(meta, ("model", "labels", "preprocessing"), path)
    tensors = runs.load_tensors(path / MODEL)
    return meta, deployable(meta["model"], tensors)


callable_module(__name__, "adapt")  # metactl.adapt(...) is the Python API's adapt (metactl.library.adapt)
