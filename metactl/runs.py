"""Run dirs and their files: written atomically, read and validated.

Layout (DESIGN §3)::

    runs/NAME/theta.safetensors    θ and α ("inner_lr.<param>")
    runs/NAME/metactl.json         version, config, model/data spec, preprocessing, split, seed, budget
    runs/NAME/metrics.jsonl        one line per logged step
    runs/NAME/checkpoint.safetensors + checkpoint.json   resumable state (θ, α, optimizer, step)

Every file is written to a temp file in the same folder, fsynced, then renamed over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from metactl.errors import MetactlError

THETA = "theta.safetensors"
META = "metactl.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_META = "checkpoint.json"
INNER_LR_PREFIX = "inner_lr."
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """safetensors, atomically (never pickle)."""
    from safetensors.torch import save

    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


def load_tensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MetactlError(f"{path}: file not found.", "Point --from at a run directory written by metactl.") from None
    try:
        return load(raw)
    except (SafetensorError, ValueError, OSError) as exc:
        raise MetactlError(
            f"{path}: not a readable safetensors file ({exc}).", "The file is damaged; use another run or checkpoint."
        ) from None


def split_theta(tensors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    theta = {k: v for k, v in tensors.items() if not k.startswith(INNER_LR_PREFIX)}
    lr = {k[len(INNER_LR_PREFIX) :]: v for k, v in tensors.items() if k.startswith(INNER_LR_PREFIX)}
    return theta, lr


def join_theta(theta: dict[str, Any], inner_lr: dict[str, Any]) -> dict[str, Any]:
    return {**theta, **{INNER_LR_PREFIX + k: v for k, v in inner_lr.items()}}


def read_meta(run: Path) -> dict[str, Any]:
    path = run / META
    if not path.is_file():
        raise MetactlError(f"{run}: not a metactl run ({META} missing).", "Pass a directory written by metactl meta-train.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MetactlError(f"{path}: not valid JSON ({exc}).", "The run is damaged; use another run.") from None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def latest_run(root: Path = Path("runs")) -> Path:
    """The most recently written run under ``root`` (by its theta file's mtime)."""
    runs = [p.parent for p in root.glob(f"*/{THETA}")] if root.is_dir() else []
    if not runs:
        raise MetactlError(f"No run found under {root}/.", "Run `metactl meta-train` first, or pass --from RUN_DIR.")
    return max(runs, key=lambda p: (p / THETA).stat().st_mtime)
