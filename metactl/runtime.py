"""onnxruntime-only inference for ``metactl predict`` and any client: numpy, Pillow, onnxruntime.

Importing torch on this path is a defect (a test makes torch unimportable and runs predict).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from metactl.data.images import decode, is_image_name
from metactl.errors import MetactlError


@dataclass
class ServedModel:
    session: Any
    labels: list[str]
    size: int
    metadata: dict[str, str]
    channels: int = 1  # 1: grayscale, 3: RGB (the graph's input is (batch, channels, size, size))

    def predict(self, raw: np.ndarray) -> np.ndarray:
        """raw (n, size, size) grayscale or (n, 3, size, size) RGB pixel values 0-255 -> probabilities (n, labels)."""
        pixels = raw.astype(np.float32)
        return self.session.run(["probabilities"], {"pixels": pixels[:, None] if pixels.ndim == 3 else pixels})[0]


def load_model(path: Path) -> ServedModel:

    if not path.is_file():
        raise MetactlError(f"{path}: no such model file.", "Pass the model.onnx written by `metactl export --onnx`.")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
        raise MetactlError(f"{path}: not a loadable ONNX model ({type(exc).__name__}).", "Export it again with `metactl export --onnx`.") from None
    meta = sess.get_modelmeta().custom_metadata_map
    if "labels" not in meta:
        raise MetactlError(f"{path}: the model has no 'labels' metadata.", "Use a model exported by metactl.")
    shape = sess.get_inputs()[0].shape
    size = int(shape[-1]) if isinstance(shape[-1], int) else int(json.loads(meta.get("preprocessing", "{}")).get("size", 28))
    channels = int(shape[1]) if isinstance(shape[1], int) else int(json.loads(meta.get("preprocessing", "{}")).get("channels", 1))
    return ServedModel(sess, json.loads(meta["labels"]), size, dict(meta), channels)


def raw_pixels(path: Path, size: int, channels: int = 1) -> np.ndarray:
    """Decode to grayscale (or RGB, channels 3) and resize (Lanczos): what a client sends; the graph does the rest.
    (size, size) grayscale, (3, size, size) RGB."""

    pixels = decode(str(path), str(path), channels)
    if pixels.shape[:2] != (size, size):
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    return pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def collect_images(paths: list[Path]) -> list[Path]:
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


def predict(model_path: Path, paths: list[Path], top_k: int = 1, batch: int = 64) -> list[dict[str, Any]]:
    model = load_model(model_path)
    files = collect_images(paths)
    k = max(1, min(top_k, len(model.labels)))
    results: list[dict[str, Any]] = []
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        probs = model.predict(np.stack([raw_pixels(f, model.size, model.channels) for f in chunk]))
        for f, p in zip(chunk, probs, strict=True):
            order = np.argsort(-p)[:k]
            results.append(
                {
                    "file": str(f),
                    "label": model.labels[int(order[0])],
                    "probability": float(p[order[0]]),
                    "top_k": [{"label": model.labels[int(i)], "probability": float(p[i])} for i in order],
                }
            )
    return results
