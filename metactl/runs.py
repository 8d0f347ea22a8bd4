"""Run dirs and their files: written atomically, read and validated.

Layout::

    runs/NAME/theta.safetensors    θ, α ("inner_lr.<param>") and the head's extra parameters ("extra.head.<name>")
    runs/NAME/metactl.json         version, config, model/data spec, preprocessing, split, seed, budget
    runs/NAME/metrics.jsonl        one line per logged step
    runs/NAME/checkpoint.safetensors + checkpoint.json   resumable state (θ, α, optimizer, step)

Every file is written to a temp file in the same folder, fsynced, then renamed over the target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from metactl.api import Learner
from metactl.backbones import recorded_tokenizer
from metactl.errors import MetactlError
from metactl.files import (  # noqa: F401  (re-exported: metactl.runs is where callers find them)
    _version_tuple,
    atomic_write_bytes,
    atomic_write_json,
    check_version,
    ensure_out_free,
    replace_dir,
    write_dir_atomically,
)
from metactl.models import build_model

THETA = "theta.safetensors"
META = "metactl.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
SNAPSHOTS = "snapshots"
INNER_LR_PREFIX = "inner_lr."
EXTRA_PREFIX = "extra."  # an algorithm's extra parameters that belong to the head (named head.*, e.g. a learned log-temperature)






def save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """safetensors, atomically (never pickle)."""

    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save's zip container


def load_tensors(path: Path) -> dict[str, Any]:
    """Read a safetensors file. Pickles (and torch.save files) are refused by inspecting their first
    bytes: nothing in metactl ever unpickles a file."""

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MetactlError(f"{path}: file not found.", "Point --from at a run directory written by metactl.") from None
    except OSError as exc:
        raise MetactlError(f"{path}: cannot read ({exc.strerror}).", "Check the file's permissions.") from None
    if raw.startswith(PICKLE_MAGIC):
        raise MetactlError(
            f"{path}: is a pickle / torch.save file, not safetensors; metactl never loads pickles (they can run code).",
            "Convert it to safetensors with a tool you trust, or use a run written by metactl.",
        )
    if len(raw) < 10 or raw[8:9] != b"{":  # safetensors: u64 header length, then a JSON header
        raise MetactlError(f"{path}: not a safetensors file (damaged, truncated or another format).", "Use an intact run or checkpoint.")
    try:
        return load(raw)
    except (SafetensorError, ValueError, OSError) as exc:
        raise MetactlError(f"{path}: not a readable safetensors file ({exc}).", "The file is damaged; use another run or checkpoint.") from None


def split_theta(tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    theta = {k: v for k, v in tensors.items() if not k.startswith((INNER_LR_PREFIX, EXTRA_PREFIX))}
    lr = {k[len(INNER_LR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(INNER_LR_PREFIX)}
    return theta, lr


def join_theta(theta: dict[str, Any], inner_lr: dict[str, Any]) -> dict[str, Any]:
    return {**theta, **{INNER_LR_PREFIX + k: v for k, v in inner_lr.items()}}


def run_extras(extra: dict[str, Any]) -> dict[str, Any]:
    """The extra parameters a run keeps in its θ file (as ``extra.NAME``): those of the head (``head.*``),
    which adapt needs; training-only ones (pretrain's all-classes classifier) stay in checkpoints."""
    return {EXTRA_PREFIX + k: v for k, v in extra.items() if k.startswith("head.")}


def read_meta(run: Path) -> dict[str, Any]:
    """Read and sanity-check a folder's ``metactl.json`` (run, adapted or export)."""
    if not run.exists():
        raise MetactlError(f"{run}: no such folder.", "Check the path given to --from.")
    if not run.is_dir():
        raise MetactlError(f"{run}: not a folder.", "Pass a folder written by metactl (e.g. runs/NAME or adapted/).")
    path = run / META
    if not path.is_file():
        raise MetactlError(f"{run}: not written by metactl ({META} missing).", "Pass a folder written by metactl (e.g. runs/NAME or adapted/).")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetactlError(f"{path}: not valid JSON ({exc}).", "The folder is damaged; use another one.") from None
    if not isinstance(meta, dict):
        raise MetactlError(f"{path}: not a metactl metadata file.", "The folder is damaged; use another one.")
    check_version(meta.get("metactl_version"), path)
    return _found_tokenizer(meta)


def _found_tokenizer(meta: dict[str, Any]) -> dict[str, Any]:
    """A text run (or adapted folder) whose recorded tokenizer.json is gone but whose body came from the Hub:
    the same commit's tokenizer, found again in the Hugging Face cache (the body is found the same way)."""
    prep, model = meta.get("preprocessing"), meta.get("model")
    if isinstance(prep, dict) and prep.get("kind") == "text" and "tokenizer" in prep and isinstance(model, dict):
        meta["preprocessing"] = {**prep, "tokenizer": str(recorded_tokenizer(prep, model))}
    return meta


def require(meta: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise MetactlError(f"{path / META}: missing {', '.join(missing)}.", "The folder is damaged or not from metactl; use another one.")




def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def latest_run(root: Path = Path("runs")) -> Path:
    """The most recently written run under ``root`` (by its theta file's mtime)."""
    runs = [p.parent for p in root.glob(f"*/{THETA}")] if root.is_dir() else []
    if not runs:
        raise MetactlError(f"No run found under {root}/.", "Run `metactl meta-train` first, or pass --from RUN_DIR.")
    return max(runs, key=lambda p: (p / THETA).stat().st_mtime)




def split_model_parameters(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta-learned, frozen) parameters of a model, by its ``frozen_parameter_names()``."""
    frozen_names = set(model.frozen_parameter_names())
    named = dict(model.named_parameters())
    return {k: v for k, v in named.items() if k not in frozen_names}, {k: v.detach() for k, v in named.items() if k in frozen_names}


def load_run(run: Path, device: str = "cpu") -> tuple[dict[str, Any], Learner]:
    """Read a run dir back into (metadata, learner with θ and α; frozen weights from the model itself).

    The learner evaluates in float32 whatever precision the run trained in."""

    meta = read_meta(run)
    if meta.get("kind") != "run":
        raise MetactlError(
            f"{run}: not a meta-training run ({META} says kind={meta.get('kind')!r}).",
            "Pass a directory written by metactl meta-train.",
        )
    require(meta, ("model", "config", "algorithm"), run)
    if not (run / THETA).is_file():
        raise MetactlError(
            f"{run}: the run has no {THETA} yet (status {meta.get('status')!r}).",
            f"Finish it: metactl meta-train --out {run} --resume",
        )
    tensors = load_tensors(run / THETA)
    theta, lr = split_theta(tensors)
    extra = {k[len(EXTRA_PREFIX) :]: v.to(device) for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    model = build_model(meta["model"]).to(device)
    expected, frozen = split_model_parameters(model)
    if set(theta) != set(expected) or any(theta[k].shape != expected[k].shape for k in theta):
        raise MetactlError(f"{run / THETA}: weights do not match the model in {META}.", "The run is damaged or from another version.")
    params = {k: v.to(device).requires_grad_(True) for k, v in theta.items()}
    inner = {k: lr[k].to(device) if k in lr else torch.tensor(0.0, device=device) for k in params}
    learner = Learner(
        model=model, params=params, inner_lr=inner, task=meta.get("task", "classification"),
        per_step_lr=meta.get("inner_lr_shape") == "step", frozen=frozen, outer_only=frozenset(model.outer_only_parameter_names()), extra=extra,
    )  # fmt: skip
    return meta, learner


def with_head(learner: Learner, spec: dict[str, Any], n: int) -> tuple[Learner, dict[str, Any]]:
    """The learner for ``n`` classes: unchanged when ``n`` is the trained way count, else a
    zero-initialised head (every label equally likely at step 0) keeping the head's learned α
    (element-wise α, Meta-SGD's, is per old class: its mean per step is used)."""

    if n == int(spec["num_classes"]):
        return learner, spec
    spec = {**spec, "num_classes": n}
    device = next(iter(learner.params.values())).device
    model = build_model(spec).to(device)
    shapes = dict(model.named_parameters())
    params = dict(learner.params)
    lr = dict(learner.inner_lr)
    for name in learner.head:
        params[name] = torch.zeros_like(shapes[name]).requires_grad_(True)
        a = lr.get(name)
        if a is not None and a.dim() > int(learner.per_step_lr):
            lr[name] = a.flatten(int(learner.per_step_lr)).mean(-1).detach()
    return learner.replace(model=model, params=params, inner_lr=lr), spec
