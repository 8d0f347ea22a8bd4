"""onnxruntime-only inference for ``metactl predict`` and any client: numpy, Pillow, onnxruntime
(and ``tokenizers`` for a text model).

An image model is a ``model.onnx`` file (or an export folder holding one) whose input is ``pixels``.
A text model is an export folder (or its ``model.onnx``) whose graph takes ``input_ids`` and
``attention_mask``: the texts are tokenized with the folder's ``tokenizer.json`` (truncated at the
recorded ``max_length``, padded per batch) and the labels read from its ``metactl.json`` (else
``config.json``'s ``id2label``). Importing torch or transformers on this path is a defect (a test
makes them unimportable and runs predict).
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


def _top(p: np.ndarray, labels: list[str], k: int) -> dict[str, Any]:
    order = np.argsort(-p)[:k]
    return {
        "label": labels[int(order[0])],
        "probability": float(p[order[0]]),
        "top_k": [{"label": labels[int(i)], "probability": float(p[i])} for i in order],
    }


def _json_file(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetactlError(f"{path}: not readable JSON ({exc}).", "Export the model again with `metactl export`.") from None
    return data if isinstance(data, dict) else None


@dataclass
class ServedTextModel:
    session: Any
    labels: list[str]
    tokenizer: Any  # tokenizers.Tokenizer, no padding of its own, truncating at max_length
    max_length: int

    def predict(self, texts: list[str]) -> np.ndarray:
        """texts -> probabilities (n, labels); padded to the longest of these texts."""
        inputs, _ = support_text().encode(self.tokenizer, texts)
        names = [i.name for i in self.session.get_inputs()]
        return self.session.run(["probabilities"], {k: v for k, v in inputs.items() if k in names})[0]


def support_text() -> Any:
    """The text module (it needs the ``[text]`` extra's ``tokenizers``; image predict never loads it)."""
    try:
        from metactl.data import support_text as module
    except ImportError as exc:
        raise MetactlError(f"This is a text model and serving it needs {exc.name or 'tokenizers'}.", "Install it: pip install 'metactl[text]'.") from None
    return module


def _model_file(path: Path) -> Path:
    """An export folder -> its model.onnx; a file stays as it is."""
    if path.is_dir():
        if not (path / "model.onnx").is_file():
            raise MetactlError(f"{path}: no model.onnx in this folder.", "Pass the folder written by `metactl export` (or its model.onnx).")
        return path / "model.onnx"
    return path


def load_text_model(onnx_path: Path, session: Any) -> ServedTextModel:
    """The text model of an export folder: labels from metactl.json (else config.json), tokenizer.json beside the graph."""
    folder = onnx_path.parent
    meta = _json_file(folder / "metactl.json") or {}
    config = _json_file(folder / "config.json") or {}
    props = session.get_modelmeta().custom_metadata_map
    labels = meta.get("labels")
    if labels is None and "id2label" in config:
        labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    if labels is None and "labels" in props:
        labels = json.loads(props["labels"])
    if not labels:
        raise MetactlError(f"{folder}: no labels (metactl.json or config.json's id2label).", "Pass the folder written by `metactl export`.")
    prep = meta.get("preprocessing") or json.loads(props.get("preprocessing", "{}"))
    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        raise MetactlError(f"{folder}: no tokenizer.json beside {onnx_path.name}.", "Pass the folder written by `metactl export`, with all its files.")
    max_length = int(prep.get("max_length") or (_json_file(tok_file) or {}).get("truncation", {}).get("max_length") or 512)
    return ServedTextModel(session, list(labels), support_text().load_tokenizer(tok_file, max_length), max_length)


def read_texts(items: list[str]) -> list[tuple[str, str]]:
    """(where, text) for each input: an existing file is read one text per non-empty line (UTF-8,
    lines under 1 MB); a word ending in .txt that names no file is an error; anything else is a text."""
    out: list[tuple[str, str]] = []
    for n, item in enumerate(items, 1):
        path = Path(item)
        if path.is_file():
            out += [(f"{path}:{i}", line.strip()) for i, line in support_text().read_lines(path, "input") if line.strip()]
        elif item.lower().endswith(".txt") and not any(c.isspace() for c in item):
            raise MetactlError(f"{item}: no such file.", "Pass texts, or .txt files with one text per line.")
        elif not item.strip():
            raise MetactlError(f"text {n} is empty.", "Pass non-empty texts.")
        else:
            out.append((f"argument {n}", item))
    if not out:
        raise MetactlError("No texts found in the given inputs.", "Pass texts, or .txt files with one text per non-empty line.")
    return out


def predict_texts(model: ServedTextModel, items: list[str], top_k: int = 1, batch: int = 64) -> list[dict[str, Any]]:
    texts = read_texts(items)
    k = max(1, min(top_k, len(model.labels)))
    results: list[dict[str, Any]] = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        probs = model.predict([t for _, t in chunk])
        results += [{"text": t, "source": where, **_top(p, model.labels, k)} for (where, t), p in zip(chunk, probs, strict=True)]
    return results


def predict(model_path: Path, inputs: list[str] | list[Path], top_k: int = 1, batch: int = 64) -> list[dict[str, Any]]:
    """Label + probability per input: texts (or .txt files) for a text model, image files or folders for an image model."""
    onnx_path = _model_file(model_path)
    model = load_model(onnx_path)
    if "input_ids" in [i.name for i in model.session.get_inputs()]:
        return predict_texts(load_text_model(onnx_path, model.session), [str(i) for i in inputs], top_k, batch)
    files = collect_images([Path(p) for p in inputs])
    k = max(1, min(top_k, len(model.labels)))
    results: list[dict[str, Any]] = []
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        probs = model.predict(np.stack([raw_pixels(f, model.size, model.channels) for f in chunk]))
        results += [{"file": str(f), **_top(p, model.labels, k)} for f, p in zip(chunk, probs, strict=True)]
    return results
