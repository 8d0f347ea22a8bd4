"""What a pretrained body's folder says about itself, read without torch or transformers: the sha256 a run
records of its weights (computed once per file and process) and how a sentence-transformers folder pools
token states. Used by the text task sources (to write a run's model spec) and by the text model (to
build and check it)."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from metactl.errors import MetactlError


@functools.cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file (cached per path, size and modification time)."""
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetactlError(f"{path}: cannot be read as JSON ({exc}).", "Use an intact pretrained folder.") from None


def run_model_spec(folder: Path) -> dict[str, Any]:
    """The model spec of a metactl run dir used as a backbone ({} for a Hugging Face folder)."""
    meta = folder / "metactl.json"
    if not meta.is_file():
        return {}
    model = _json(meta).get("model", {})
    return model if isinstance(model, dict) else {}


def backbone_pooling(folder: Path) -> dict[str, Any]:
    """How a sentence-transformers folder pools token states: ``{"pooling": "mean"|"cls"|"max", "normalize": bool}``
    from ``modules.json`` and the pooling module's ``config.json`` (``1_Pooling/`` by default). A plain
    Hugging Face folder: mean pooling, no normalization. A metactl run: what its model spec records."""
    model = run_model_spec(folder)
    if "pooling" in model:
        return {"pooling": model["pooling"], "normalize": bool(model.get("normalize", False))}
    pooling_dir, normalize = folder / "1_Pooling", False
    if (folder / "modules.json").is_file():
        modules = _json(folder / "modules.json")
        for m in modules if isinstance(modules, list) else []:
            kind = str(m.get("type", ""))
            if kind.endswith(".Pooling"):
                pooling_dir = folder / str(m.get("path", "1_Pooling"))
            elif kind.endswith(".Normalize"):
                normalize = True
    config = pooling_dir / "config.json"
    if not config.is_file():
        return {"pooling": "mean", "normalize": normalize}
    cfg = _json(config)
    mode = cfg.get("pooling_mode")
    if mode is None:
        on = [k.removeprefix("pooling_mode_") for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
        mode = on[0] if len(on) == 1 else ("mean_tokens" if not on else "+".join(on))
    mode = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}.get(str(mode), str(mode))
    if mode not in ("mean", "cls", "max"):
        raise MetactlError(f"{config}: pooling {mode!r} is not supported.", "metactl pools by mean, cls or max.")
    return {"pooling": mode, "normalize": normalize}
