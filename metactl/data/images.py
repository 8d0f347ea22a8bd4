"""Decoding and preprocessing of image files (shared by training data and support folders).

The preprocessing is recorded in every run (``metactl.json``) so that adapt, export and predict
turn a user's file into exactly the tensor the model was trained on:
grayscale, ink as foreground (bright), antialiased (Lanczos) resize to ``size`` x ``size``,
stored as uint8 (ink = 255); the model sees ``pixel / 255``.
"""

from __future__ import annotations

import io
from typing import IO, Any

import numpy as np
from PIL import Image

from metactl.errors import MetactlError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def default_preprocessing(size: int = 28, invert: bool = True) -> dict[str, Any]:
    """``invert``: the files have dark ink on a light background (Omniglot's PNGs do)."""
    return {"size": size, "channels": 1, "invert": invert, "resample": "lanczos", "scale": 1 / 255}


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def _to_gray(img: Any) -> Any:
    """Any PIL mode (1, L, P, RGB, RGBA, CMYK, I;16, I, F, LA, ...) -> 'L', transparency over white."""

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
    return img.convert("L")


def decode_gray(source: str | IO[bytes], name: str) -> np.ndarray:
    """Decode one file to a 2-D uint8 array (L mode, not yet resized or inverted)."""

    try:
        with Image.open(source) as img:
            img.seek(0)  # first frame of animated GIF/WebP/TIFF
            img.load()
            return np.asarray(_to_gray(img), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise MetactlError(f"{name}: image is larger than the decompression-bomb limit.", "Resize it or remove it from the folder.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MetactlError(f"{name}: cannot read image ({exc}).", "Replace or remove the file.") from None


def preprocess(gray: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    """2-D uint8 gray -> (size, size) uint8 with ink = 255."""

    size = int(prep["size"])
    arr = 255 - gray if prep.get("invert", False) else gray
    if arr.shape != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    return arr


def decode_bytes(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise MetactlError(f"{name}: image file is empty (0 bytes).", "Replace or remove the file.")
    return decode_gray(io.BytesIO(data), name)
