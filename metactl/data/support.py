"""The support-folder reader shared by ``adapt --support``, ``adapt --query`` and ``predict``.

A support folder holds one subfolder per label; the subfolder's name is the label (any Unicode),
and labels are sorted by code point. Images (png, jpg/jpeg, bmp, gif, webp, tif/tiff, any mode) are
converted with the run's recorded preprocessing (grayscale, or RGB for a run trained on color
images: ``"channels": 3``). Hidden files and non-image files are skipped and
reported once. Anything that makes the folder unusable is a :class:`MetactlError` naming the path.
"""

from __future__ import annotations

import errno
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metactl.data.images import channels_of, decode, is_image_name, preprocess
from metactl.errors import MetactlError


@dataclass
class LabeledImages:
    images: np.ndarray  # (n, size, size) uint8, ink = 255; color runs: (n, 3, size, size) RGB
    targets: np.ndarray  # (n,) int64 index into labels
    labels: list[str]
    files: list[str]
    skipped: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {lab: int((self.targets == i).sum()) for i, lab in enumerate(self.labels)}


def read_gray_file(path: Path) -> np.ndarray:
    """One file -> 2-D uint8 grayscale as stored (not resized, not inverted)."""
    return read_image_file(path, 1)


def read_image_file(path: Path, channels: int = 1) -> np.ndarray:
    """One file -> 2-D uint8 grayscale (channels 1) or (H, W, 3) RGB (channels 3), as stored (not resized, not inverted)."""

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MetactlError(f"{path}: cannot read ({exc.strerror}).", "Check the file's permissions.") from None
    if size == 0:
        raise MetactlError(f"{path}: image file is empty (0 bytes).", "Replace or remove the file.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return decode(str(path), str(path), channels)
        except Image.DecompressionBombWarning:
            raise MetactlError(f"{path}: image is larger than the decompression-bomb limit.", "Resize it or remove it from the folder.") from None
        except PermissionError:
            raise MetactlError(f"{path}: permission denied.", "Check the file's permissions.") from None


def _list(folder: Path, what: str) -> list[Path]:
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except PermissionError:
        raise MetactlError(f"{what} {folder}: permission denied.", "Check the folder's permissions.") from None
    except OSError as exc:
        raise MetactlError(f"{what} {folder}: cannot list the folder ({exc.strerror}).", "Check the folder.") from None


def _check_link(path: Path, what: str) -> None:
    """Symlinks are followed, but a loop or a dangling link is an error, not a silent skip."""
    if not path.is_symlink():
        return
    try:
        path.resolve(strict=True)
    except RuntimeError:
        raise MetactlError(f"{what} {path}: symbolic link loop.", "Remove or fix the link.") from None
    except OSError as exc:
        kind = "symbolic link loop" if exc.errno == errno.ELOOP else "broken symbolic link"
        raise MetactlError(f"{what} {path}: {kind}.", "Remove or fix the link.") from None


def read_labeled_folder(root: Path, prep: dict[str, Any], what: str = "--support") -> LabeledImages:
    """Read and preprocess a labeled folder. ``prep["invert"] = None`` detects the ink polarity
    from the folder itself (dark ink on a light background is inverted so that ink = 255);
    with ``"channels": 3`` the files are read in RGB and never inverted."""
    if not root.exists():
        raise MetactlError(f"{what} {root}: no such folder.", "Pass a folder with one subfolder of images per label.")
    if not root.is_dir():
        raise MetactlError(f"{what} {root}: not a folder.", "Pass a folder with one subfolder of images per label.")
    skipped: list[str] = []
    classes: list[tuple[str, list[Path]]] = []
    for entry in _list(root, what):
        if entry.name.startswith("."):
            skipped.append(str(entry))
            continue
        _check_link(entry, what)
        if not entry.is_dir():
            skipped.append(str(entry))
            continue
        files = []
        for f in _list(entry, what):
            if f.name.startswith(".") or not is_image_name(f.name):
                skipped.append(str(f))
                continue
            _check_link(f, what)
            if not f.is_file():
                raise MetactlError(f"{what} {f}: not a readable file.", "Replace it with an image file or remove it.")
            files.append(f)
        classes.append((unicodedata.normalize("NFC", entry.name), files))
    seen: dict[str, str] = {}
    for name, _ in classes:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise MetactlError(
                f"{what} {root}: labels {other!r} and {name!r} differ only in case.",
                "Merge or rename one of them (on many file systems they are the same folder).",
            )
    if not classes:
        raise MetactlError(f"{what} {root}: no label subfolders found.", "Put each label's images in a subfolder named after the label.")
    for name, files in classes:
        if not files:
            raise MetactlError(f"{what} {root / name}: label folder holds no images.", "Add images (png, jpg, bmp, gif, webp, tiff) or remove the folder.")
    if len(classes) < 2:
        raise MetactlError(f"{what} {root}: found 1 label ({classes[0][0]!r}); need at least 2.", "Add a subfolder of images for each further label.")
    labels = [name for name, _ in classes]
    channels = channels_of(prep)
    decoded, targets, paths = [], [], []
    for i, (_, files) in enumerate(classes):
        for f in files:
            decoded.append(read_image_file(f, channels))
            targets.append(i)
            paths.append(str(f))
    prep = dict(prep)
    if channels != 1:
        prep["invert"] = False  # ink is a grayscale notion
    elif prep.get("invert") is None:
        prep["invert"] = bool(np.median([np.median(g) for g in decoded]) > 127)
    images = np.stack([preprocess(g, prep) for g in decoded])
    return LabeledImages(images, np.array(targets, dtype=np.int64), labels, paths, skipped, prep)
