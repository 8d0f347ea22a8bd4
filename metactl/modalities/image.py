"""Images: a support folder of label subfolders, a graph taking raw pixels ``pixels`` (float32 0-255,
NCHW, decoded and resized, not inverted: inversion and scaling are inside the graph), static int8
calibrated on the support images. Torch-free: ``predict`` uses it with numpy, Pillow and onnxruntime."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image as PILImage

from metactl.data.examples import LabeledExamples
from metactl.data.images import decode, is_image_name
from metactl.data.support import read_labeled_folder
from metactl.errors import MetactlError

INPUT = "pixels"
FALLBACK_IMAGES = 16  # random images the export is checked on when the support folder moved


def raw_pixels(path: Path, size: int, channels: int = 1) -> np.ndarray:
    """Decode to grayscale (or RGB, channels 3) and resize (Lanczos): what a client sends; the graph does the rest.
    (size, size) grayscale, (3, size, size) RGB."""
    pixels = decode(str(path), str(path), channels)
    if pixels.shape[:2] != (size, size):
        pixels = np.asarray(PILImage.fromarray(pixels).resize((size, size), PILImage.Resampling.LANCZOS), dtype=np.uint8)
    return pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def collect_images(paths: list[Path]) -> list[Path]:
    """The image files among ``paths`` (folders searched recursively, hidden entries skipped)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(
                f for f in p.rglob("*") if f.is_file() and is_image_name(f.name) and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            files.append(p)
        else:
            raise MetactlError(f"{p}: no such file or folder.", "Pass image files or folders of images.")
    if not files:
        raise MetactlError("No images found in the given paths.", "Pass png/jpg/bmp/gif/webp/tiff files or folders holding them.")
    return files


def geometry(session: Any) -> tuple[int, int]:
    """(size, channels) of an image graph's input, from its shape or else its recorded preprocessing."""
    meta = session.get_modelmeta().custom_metadata_map
    prep = json.loads(meta.get("preprocessing", "{}"))
    shape = session.get_inputs()[0].shape
    size = int(shape[-1]) if isinstance(shape[-1], int) else int(prep.get("size", 28))
    channels = int(shape[1]) if isinstance(shape[1], int) else int(prep.get("channels", 1))
    return size, channels


def _color(channels: int) -> str:
    return "RGB" if channels == 3 else "grayscale"


@dataclass
class ImageInputs:
    """Image files as ``pixels`` batches."""

    labels: list[str]
    records: list[dict[str, str]]
    files: list[Path]
    size: int
    channels: int

    def feed(self, start: int, stop: int) -> dict[str, np.ndarray]:
        pixels = np.stack([raw_pixels(f, self.size, self.channels) for f in self.files[start:stop]]).astype(np.float32)
        return {INPUT: pixels[:, None] if pixels.ndim == 3 else pixels}


class Image:
    """Pictures: png, jpg, bmp, gif, webp, tiff in one subfolder per label."""

    name: ClassVar[str] = "image"
    unit: ClassVar[str] = "images"
    quantization: ClassVar[str] = "static"
    normalization: ClassVar[str] = "BatchNorm statistics frozen from the support set at the adapted weights"
    example_input: ClassVar[str] = "image.png"
    setting: ClassVar[str] = "the same kind of image, size and colour"

    def read_support(self, path: Path, preprocessing: dict[str, Any], what: str = "--support") -> LabeledExamples:
        data = read_labeled_folder(path, preprocessing, what)
        return LabeledExamples(data.images, data.targets, data.labels, data.files, data.skipped, data.preprocessing)

    def support_preprocessing(self, recorded: dict[str, Any]) -> dict[str, Any]:
        """The model expects ink = 255; whether the user's files need inverting is read off the support folder."""
        return {**recorded, "invert": None}

    def served_preprocessing(self, preprocessing: dict[str, Any]) -> dict[str, Any]:
        return preprocessing

    def describe_input(self, preprocessing: dict[str, Any]) -> str:
        channels = int(preprocessing.get("channels", 1))
        return f"{INPUT}: float32 raw values 0-255, NCHW (batch, {channels}, size, size); {_color(channels)}, resized, not inverted"

    def io_contract(self, module: Any, preprocessing: dict[str, Any], labels: list[str]) -> dict[str, Any]:
        size, channels = int(preprocessing["size"]), int(preprocessing.get("channels", 1))
        return {
            "input": {
                "name": INPUT,
                "dtype": "float32",
                "shape": ["batch", channels, size, size],
                "values": f"raw 0-255, {_color(channels)}, resized; inversion and scaling are inside the graph",
            },
            "output": {"name": "probabilities", "shape": ["batch", len(labels)]},
        }

    def export_assets(self, model: Any, labels: list[str], preprocessing: dict[str, Any]) -> dict[str, bytes]:
        return {}

    def fallback_inputs(self, module: Any, preprocessing: dict[str, Any]) -> tuple[dict[str, np.ndarray], str]:
        size, channels = int(preprocessing["size"]), int(preprocessing.get("channels", 1))
        shape = (FALLBACK_IMAGES, size, size) if channels == 1 else (FALLBACK_IMAGES, channels, size, size)
        pixels = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
        return module.client_inputs(pixels), "random pixels"

    def batch_independence(self, run: Any, inputs: dict[str, np.ndarray], batched: np.ndarray) -> float | None:
        """None: normalisation statistics are frozen into the graph, which the export check itself covers."""
        return None

    def predict_inputs(self, model: Path, session: Any, items: Sequence[str]) -> ImageInputs:
        meta = session.get_modelmeta().custom_metadata_map
        files = collect_images([Path(p) for p in items])
        size, channels = geometry(session)
        return ImageInputs(json.loads(meta["labels"]), [{"file": str(f)} for f in files], files, size, channels)


__all__ = ["Image", "ImageInputs", "collect_images", "geometry", "raw_pixels"]
