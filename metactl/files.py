"""Writing a folder's files atomically, and the version check every metactl folder gets: no torch, so the
torch-free paths (``metactl predict``, ``metactl adapt --from ADAPTABLE_DIR``) share them with ``metactl.runs``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from metactl._version import __version__
from metactl.errors import MetactlError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename over ``path``.

    On failure (disk full, permissions) the temp file is removed, the previous ``path`` is left
    exactly as it was, and the error is a MetactlError saying so.
    """
    try:
        _atomic_write(path, data)
    except OSError as exc:
        raise MetactlError(
            f"Cannot write {path}: {exc.strerror or exc}.",
            "Free disk space or fix the folder's permissions; the previous version of the file is unchanged.",
        ) from None


def _atomic_write(path: Path, data: bytes) -> None:
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


def replace_dir(new: Path, target: Path) -> None:
    """Put the completed folder ``new`` in place of ``target`` (if any): the old one is moved aside
    first and deleted only after the swap, so ``target`` is at every moment either old or new."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("+")[0].split(".")[:3] if p.isdigit())


def check_version(version: Any, path: Path) -> None:
    """Files from another major version, or from a newer minor version than this one, are refused."""
    if not isinstance(version, str) or not _version_tuple(version):
        raise MetactlError(f"{path}: no metactl version recorded.", "Use a folder written by metactl.")
    ours, theirs = _version_tuple(__version__), _version_tuple(version)
    if theirs[:1] != ours[:1] or theirs[:2] > ours[:2]:
        raise MetactlError(
            f"{path}: written by metactl {version}, which this metactl {__version__} cannot read.",
            f"Install metactl {'.'.join(map(str, theirs[:2]))}.x, or redo the step with this version.",
        )


def ensure_out_free(out: Path, force: bool) -> None:
    """``--out`` must not exist unless ``--force``: checked before any work."""
    if out.exists() and not force:
        raise MetactlError(f"--out {out} already exists.", "Pass --force to replace it, or choose another --out.")
    if out.exists() and not out.is_dir():
        raise MetactlError(f"--out {out} exists and is not a directory.", "Choose another --out.")


def write_dir_atomically(out: Path, force: bool, files: dict[str, bytes]) -> None:
    """Write all files into a temp folder beside ``out``, then swap it in (replacing only with --force)."""
    ensure_out_free(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        tmp.chmod(0o755)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
