"""onnxruntime-only inference for ``metactl predict`` and any client: numpy, Pillow, onnxruntime
(and ``tokenizers`` for a text model).

An image model is a ``model.onnx`` file (or an export folder holding one) whose input is ``pixels``.
A text model is an export folder (or its ``model.onnx``) whose graph takes ``input_ids`` and
``attention_mask``: the texts are tokenized with the folder's ``tokenizer.json`` (truncated at the
recorded ``max_length``, padded per batch) and the labels read from its ``metactl.json`` (else
``config.json``'s ``id2label``). Which it is comes from the graph's recorded preprocessing (its
modality, :mod:`metactl.modalities`), which also turns the arguments into graph inputs. Importing
torch or transformers on this path is a defect (a test makes them unimportable and runs predict).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from metactl.errors import MetactlError
from metactl.modalities import modality_of
from metactl.modalities.image import collect_images, geometry, raw_pixels

OUTPUT = "probabilities"


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
        return self.session.run([OUTPUT], {"pixels": pixels[:, None] if pixels.ndim == 3 else pixels})[0]


def _session(path: Path) -> Any:
    """An onnxruntime session of a metactl export (one with ``labels`` metadata)."""
    if not path.is_file():
        raise MetactlError(f"{path}: no such model file.", "Pass the model.onnx written by `metactl export --onnx`.")
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
        raise MetactlError(f"{path}: not a loadable ONNX model ({type(exc).__name__}).", "Export it again with `metactl export --onnx`.") from None
    if "labels" not in sess.get_modelmeta().custom_metadata_map:
        raise MetactlError(f"{path}: the model has no 'labels' metadata.", "Use a model exported by metactl.")
    return sess


def load_model(path: Path) -> ServedModel:
    """An image model file, ready for raw pixels."""
    sess = _session(path)
    meta = sess.get_modelmeta().custom_metadata_map
    size, channels = geometry(sess)
    return ServedModel(sess, json.loads(meta["labels"]), size, dict(meta), channels)


def _top(p: np.ndarray, labels: list[str], k: int) -> dict[str, Any]:
    order = np.argsort(-p)[:k]
    return {
        "label": labels[int(order[0])],
        "probability": float(p[order[0]]),
        "top_k": [{"label": labels[int(i)], "probability": float(p[i])} for i in order],
    }


def _model_file(path: Path) -> Path:
    """An export folder -> its model.onnx; a file stays as it is."""
    if path.is_dir():
        if not (path / "model.onnx").is_file():
            raise MetactlError(f"{path}: no model.onnx in this folder.", "Pass the folder written by `metactl export` (or its model.onnx).")
        return path / "model.onnx"
    return path


def predict(model_path: Path, inputs: list[str] | list[Path], top_k: int = 1, batch: int = 64) -> list[dict[str, Any]]:
    """Label + probability per input: texts (or .txt files) for a text model, image files or folders for an image model."""
    onnx_path = _model_file(model_path)
    session = _session(onnx_path)
    prep = json.loads(session.get_modelmeta().custom_metadata_map.get("preprocessing", "{}"))
    given = modality_of(prep).predict_inputs(onnx_path, session, [str(i) for i in inputs])
    k = max(1, min(top_k, len(given.labels)))
    results: list[dict[str, Any]] = []
    for start in range(0, len(given.records), batch):
        stop = min(start + batch, len(given.records))
        probs = session.run([OUTPUT], given.feed(start, stop))[0]
        results += [{**record, **_top(p, given.labels, k)} for record, p in zip(given.records[start:stop], probs, strict=True)]
    return results


__all__ = ["ServedModel", "collect_images", "load_model", "predict", "raw_pixels"]
