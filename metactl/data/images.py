"""Decoding and preprocessing of image files (shared by training data and support folders).

The preprocessing is recorded in every run (``metactl.json``) so that adapt, export and predict
turn a user's file into exactly the tensor the model was trained on. Two kinds:

- grayscale (``"channels": 1``, the default; Omniglot, glyphs, any folder without color):
  ink as foreground (bright), antialiased (Lanczos) resize to ``size`` x ``size``, stored as
  uint8 (ink = 255), shape (size, size);
- color (``"channels": 3``, a training folder holding any color image): RGB, transparency over
  white, Lanczos resize, no inversion (ink is a grayscale notion), stored as uint8 channels-first
  (3, size, size).

The model sees ``pixel / 255``.
"""

from __future__ import annotations

import io
from typing import IO, Any

import numpy as np
from PIL import Image

from metactl.errors import MetactlError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
COLOR_SIZE = 84  # default input size for color data (miniImageNet's); grayscale keeps 28
# A pixel is colored when its R, G, B values differ by more than this: lossy formats (JPEG, WebP)
# store a gray picture saved as RGB with a few levels of chroma noise, which must not count as color.
COLOR_TOLERANCE = 8
# Modes that cannot hold color: read off the header, no pixel decoding needed to know.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_DEEP = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def default_preprocessing(size: int = 28, invert: bool = True) -> dict[str, Any]:
    """``invert``: the files have dark ink on a light background (Omniglot's PNGs do)."""
    return {"size": size, "channels": 1, "invert": invert, "resample": "lanczos", "scale": 1 / 255}


def color_preprocessing(size: int = COLOR_SIZE) -> dict[str, Any]:
    """Three channels (RGB), never inverted."""
    return {"size": size, "channels": 3, "invert": False, "resample": "lanczos", "scale": 1 / 255}


def channels_of(prep: dict[str, Any]) -> int:
    return int(prep.get("channels", 1))


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def _flatten_alpha(img: Any) -> Any:
    """Transparency composited over white (RGBA); other images unchanged."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img


def _to_gray(img: Any) -> Any:
    """Any PIL mode (1, L, P, RGB, RGBA, CMYK, I;16, I, F, LA, ...) -> 'L', transparency over white."""

    img = _flatten_alpha(img)
    if img.mode in _DEEP:
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
    return img.convert("L")


def _to_rgb(img: Any) -> Any:
    """Any PIL mode -> 'RGB', transparency over white; deep grayscale through its 8-bit gray."""
    img = _flatten_alpha(img)
    if img.mode in _DEEP:
        return _to_gray(img).convert("RGB")
    return img.convert("RGB")


def _decode(source: str | IO[bytes], name: str, channels: int) -> np.ndarray:
    try:
        with Image.open(source) as img:
            img.seek(0)  # first frame of animated GIF/WebP/TIFF
            img.load()
            return np.asarray(_to_rgb(img) if channels == 3 else _to_gray(img), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise MetactlError(f"{name}: image is larger than the decompression-bomb limit.", "Resize it or remove it from the folder.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MetactlError(f"{name}: cannot read image ({exc}).", "Replace or remove the file.") from None


def decode_gray(source: str | IO[bytes], name: str) -> np.ndarray:
    """Decode one file to a 2-D uint8 array (L mode, not yet resized or inverted)."""
    return _decode(source, name, 1)


def decode_rgb(source: str | IO[bytes], name: str) -> np.ndarray:
    """Decode one file to an (H, W, 3) uint8 RGB array (not yet resized)."""
    return _decode(source, name, 3)


def decode(source: str | IO[bytes], name: str, channels: int = 1) -> np.ndarray:
    """``decode_gray`` (channels 1) or ``decode_rgb`` (channels 3)."""
    if channels not in (1, 3):
        raise MetactlError(f"{name}: the preprocessing asks for {channels} channels.", "Only 1 (grayscale) or 3 (RGB) channels are supported.")
    return _decode(source, name, channels)


def colored(rgb: np.ndarray) -> bool:
    """True when some pixel's channels differ by more than ``COLOR_TOLERANCE`` levels."""
    spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1).astype(np.int16)
    return bool((spread > COLOR_TOLERANCE).any())


def has_color(source: str | IO[bytes], name: str) -> bool:
    """Whether the file holds a color picture: its mode can hold color (RGB, RGBA, P, CMYK, ...)
    and its channels actually differ. Grayscale modes are answered from the header alone."""
    try:
        with Image.open(source) as img:
            if img.mode in GRAY_MODES:
                return False
            img.seek(0)
            img.load()
            return colored(np.asarray(_to_rgb(img), dtype=np.uint8))
    except Image.DecompressionBombError:
        raise MetactlError(f"{name}: image is larger than the decompression-bomb limit.", "Resize it or remove it from the folder.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MetactlError(f"{name}: cannot read image ({exc}).", "Replace or remove the file.") from None


def preprocess(pixels: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    """2-D uint8 gray -> (size, size) uint8 with ink = 255 (inverted when ``prep["invert"]``);
    (H, W, 3) uint8 RGB -> (3, size, size) uint8, channels first, never inverted."""

    size = int(prep["size"])
    if pixels.ndim == 3:
        rgb = pixels
        if rgb.shape[:2] != (size, size):
            rgb = np.asarray(Image.fromarray(rgb, "RGB").resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))
    arr = 255 - pixels if prep.get("invert", False) else pixels
    if arr.shape != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    return arr


def decode_bytes(data: bytes, name: str, channels: int = 1) -> np.ndarray:
    if not data:
        raise MetactlError(f"{name}: image file is empty (0 bytes).", "Replace or remove the file.")
    return decode(io.BytesIO(data), name, channels)
