"""Class-per-folder image data: a directory tree or a ``.zip`` of one, read without extracting.

Every folder that directly holds images is a class (any depth), so Omniglot's official
``images_background.zip`` (``images_background/<alphabet>/characterNN/*.png``) works as downloaded.
The whole set is decoded once into memory (uint8, ink = 255) with a progress callback.

Color: a folder in which any image holds color (:func:`detect_color`; mixed folders: color wins) is
read in RGB, shape (n, 3, size, size); a folder of grayscale pictures only (whatever their file
mode: RGB files whose channels are equal count as gray) keeps one channel, shape (n, size, size).
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from metactl.data.episodes import ImagePool
from metactl.data.images import channels_of, decode, decode_bytes, decode_gray, has_color, is_image_name, preprocess
from metactl.errors import MetactlError

Progress = Callable[[int, int], None]


class ArrayPool(ImagePool):
    """Classes held in memory: ``images[offsets[c]:offsets[c+1]]`` are class ``c``."""

    def __init__(self, images: np.ndarray, offsets: np.ndarray, names: list[str]) -> None:
        self.images = images
        self.offsets = offsets
        self._names = names

    @property
    def num_classes(self) -> int:
        return len(self._names)

    def count(self, c: int) -> int:
        return int(self.offsets[c + 1] - self.offsets[c])

    def get(self, c: int) -> np.ndarray:
        return self.images[self.offsets[c] : self.offsets[c + 1]]

    def names(self) -> list[str]:
        return list(self._names)

    def subset(self, classes: list[int]) -> ArrayPool:
        parts = [self.get(c) for c in classes]
        counts = [len(p) for p in parts]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        images = np.concatenate(parts) if parts else self.images[:0]
        return ArrayPool(images, offsets, [self._names[c] for c in classes])


def _list_classes(path: Path) -> tuple[dict[str, list[str]], zipfile.ZipFile | None]:
    classes: dict[str, list[str]] = defaultdict(list)
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise MetactlError(f"--data {path}: not a folder or a .zip file.", "Pass a folder of class folders or a .zip of one.")
        zf = zipfile.ZipFile(path)
        for name in zf.namelist():
            if name.endswith("/") or "__MACOSX/" in name or not is_image_name(name):
                continue
            parent = name.rsplit("/", 1)[0] if "/" in name else ""
            if any(part.startswith(".") for part in parent.split("/") if part):
                continue
            classes[parent].append(name)
        return classes, zf
    if not path.is_dir():
        raise MetactlError(f"--data {path}: no such folder or file.", "Check the path, or use --data glyphs.")
    for file in path.rglob("*"):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not file.is_file() or not is_image_name(file.name):
            continue
        classes[rel.parent.as_posix()].append(str(file))
    return classes, None


def load_folder(path: Path, prep: dict[str, Any], progress: Progress | None = None) -> ArrayPool:
    """Decode every image under ``path`` (folder or zip); classes sorted by their relative path."""
    classes, zf = _list_classes(path)
    if len(classes) < 2:
        raise MetactlError(
            f"--data {path}: found {len(classes)} class folder(s) with images; need at least 2.",
            "Point --data at a folder whose subfolders (one per class) hold the images.",
        )
    names = sorted(classes)
    files = [(n, f) for n in names for f in sorted(classes[n])]
    total = len(files)
    done = 0

    channels = channels_of(prep)

    def read(item: tuple[str, str]) -> np.ndarray:
        _, f = item
        if zf is not None:
            return preprocess(decode_bytes(zf.read(f), f"{path}:{f}", channels), prep)
        return preprocess(decode(f, f, channels), prep)

    size = int(prep["size"])
    out = np.empty((total, size, size) if channels == 1 else (total, channels, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i, arr in enumerate(pool.map(read, files, chunksize=64) if zf is None else map(read, files)):
            out[i] = arr
            done += 1
            if progress is not None and (done % 500 == 0 or done == total):
                progress(done, total)
    if zf is not None:
        zf.close()
    counts = [len(classes[n]) for n in names]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return ArrayPool(out, offsets, names)


def detect_invert(path: Path) -> bool:
    """True when the files draw dark ink on a light background (then ink is inverted to 255)."""
    classes, zf = _list_classes(path)
    sample = [f for n in sorted(classes)[:20] for f in sorted(classes[n])[:2]]
    means = []
    for f in sample:
        gray = decode_bytes(zf.read(f), f) if zf is not None else decode_gray(f, f)
        means.append(float(np.median(gray)))
    if zf is not None:
        zf.close()
    return bool(np.median(means) > 127) if means else True


def detect_color(path: Path, chunk: int = 256) -> bool:
    """True when any image under ``path`` (folder or zip) holds color (:func:`metactl.data.images.has_color`).

    Every file is looked at, in class order, until the first color one: files in a grayscale mode
    (Omniglot's 1-bit PNGs) are answered from their header, others are decoded and their channels compared.
    """
    classes, zf = _list_classes(path)
    files = [f for n in sorted(classes) for f in sorted(classes[n])]
    try:
        if zf is not None:
            for f in files:
                if zf.getinfo(f).file_size == 0:
                    continue  # load_folder names the empty file
                with zf.open(f) as stream:
                    if has_color(stream, f"{path}:{f}"):
                        return True
            return False
        with ThreadPoolExecutor(max_workers=2) as pool:
            for start in range(0, len(files), chunk):
                if any(pool.map(lambda f: has_color(f, f), files[start : start + chunk])):
                    return True
        return False
    finally:
        if zf is not None:
            zf.close()
