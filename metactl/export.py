"""``export --onnx``: an adapted model as one self-contained ONNX file that onnxruntime serves.

The graph's single input ``pixels`` takes raw pixel values 0-255 (float32), NCHW, shape
(batch, channels, size, size): the image decoded to grayscale (channels 1) or RGB (channels 3, runs
trained on color images) and resized, nothing else. Ink inversion (grayscale) and scaling happen
inside the graph. The output ``probabilities`` has shape (batch, number of labels);
``metadata_props`` hold ``labels`` (JSON list, index = output column), ``preprocessing``,
``source_run`` and ``metactl_version``. Normalisation statistics are frozen, so a prediction never
depends on the rest of the batch. The exporter checks its own file against torch.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from safetensors.torch import save

from metactl import __version__, runs
from metactl.adapt import MODEL, load_adapted
from metactl.data.support import read_labeled_folder
from metactl.errors import MetactlError

ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
OPSET = 18
TOLERANCE = 1e-4


@dataclass
class ExportResult:
    out: Path
    max_abs_diff: float
    agreement_int8: float | None
    opset: int
    files: list[str]


def _onnx_bytes(module: Any, metadata: dict[str, str]) -> bytes:

    # the exporter logs one warning per optional torchvision op it cannot register: noise for us
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = module.example_inputs()
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecation chatter
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=module.input_names, output_names=module.output_names,
                dynamic_shapes={name: {0: batch} for name in module.input_names}, opset_version=OPSET, external_data=False, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter's own failures are not the user's fault but must not crash silently
        raise MetactlError(f"ONNX export failed: {type(exc).__name__}: {exc}", "Please report this with the adapted folder.") from None
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    data = proto.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def _run_onnx(data: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], inputs)[0]


def _rows(inputs: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in inputs.items()}


def _quantize(data: bytes, calibration: dict[str, np.ndarray], workdir: Path) -> bytes:

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calibration.values())))
            self.items = iter([_rows(calibration, slice(i, i + 1)) for i in range(n)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    raw, src, dst = workdir / "raw.onnx", workdir / "float.onnx", workdir / "int8.onnx"
    raw.write_bytes(data)
    quant_pre_process(str(raw), str(src))  # shape inference + graph clean-up, as onnxruntime recommends
    quantize_static(
        str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True,
    )  # fmt: skip
    return dst.read_bytes()


def _folder_images(info: dict[str, Any] | None, prep: dict[str, Any]) -> np.ndarray | None:
    if not info or not Path(info["folder"]).is_dir():
        return None
    try:
        return read_labeled_folder(Path(info["folder"]), prep, "folder").images
    except MetactlError:  # changed since adapt; the check falls back to other images
        return None


def export(source: Path = Path("adapted"), out: Path = Path("export"), quantize: str | None = None, force: bool = False) -> ExportResult:

    if quantize not in (None, "int8"):
        raise MetactlError(f"--quantize {quantize!r} is not supported.", "Use --quantize int8 or leave it out.")
    runs.ensure_out_free(out, force)
    meta, model = load_adapted(source)
    prep = meta["preprocessing"]
    size, channels = int(prep["size"]), int(prep.get("channels", 1))
    color = "RGB" if channels == 3 else "grayscale"
    deployed = model.export_module(prep).eval()  # type: ignore[operator]
    metadata = {
        "labels": json.dumps(meta["labels"], ensure_ascii=False),
        "preprocessing": json.dumps(
            {**prep, "input": f"pixels: float32 raw values 0-255, NCHW (batch, {channels}, size, size); {color}, resized, not inverted"}
        ),
        "source_run": meta.get("source_run", ""),
        "adapted_from": str(source.resolve()),
        "metactl_version": __version__,
    }
    data = _onnx_bytes(deployed, metadata)
    # check the file against torch on the support (and query) images, as a client sends them: not inverted
    support = _folder_images(meta.get("support"), prep)
    query = _folder_images(meta.get("query"), prep)
    checked_on = "support images" + (" and query images" if query is not None else "")
    if support is None:  # the folders moved since adapt: check on a fixed random batch instead
        shape = (16, size, size) if channels == 1 else (16, channels, size, size)
        support, checked_on = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8), "random pixels"
    images = support if query is None else np.concatenate([support, query])
    raw = deployed.client_inputs(images)
    with torch.no_grad():
        expected = deployed(*(torch.from_numpy(raw[name]) for name in deployed.input_names)).numpy()
    got = _run_onnx(data, raw)
    diff = float(np.abs(expected - got).max())
    if not diff <= TOLERANCE:
        raise MetactlError(f"ONNX check failed: onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE:g}).", "Please report this.")
    files = {ONNX: data}
    agreement = None
    if quantize == "int8":
        calibration = _rows(raw, slice(None, len(support)))
        with tempfile.TemporaryDirectory() as tmp:
            q = _quantize(data, calibration, Path(tmp))
        held = slice(len(support), None) if query is not None else slice(None)  # queries: not calibrated on
        agreement = float((_run_onnx(q, _rows(raw, held)).argmax(-1) == got[held].argmax(-1)).mean())
        files[ONNX_INT8] = q
    tensors = runs.load_tensors(source / MODEL)
    files[MODEL] = save(tensors, metadata={"format": "metactl-adapted", "metactl_version": __version__})
    info = {
        "metactl_version": __version__,
        "kind": "export",
        "labels": meta["labels"],
        "preprocessing": prep,
        "input": {
            "name": "pixels",
            "dtype": "float32",
            "shape": ["batch", channels, size, size],
            "values": f"raw 0-255, {color}, resized; inversion and scaling are inside the graph",
        },
        "output": {"name": "probabilities", "shape": ["batch", len(meta["labels"])]},
        "opset": OPSET,
        "check": {
            "images": len(images),
            "on": checked_on,
            "max_abs_diff": diff,
            "tolerance": TOLERANCE,
        },
        "quantization": None
        if quantize is None
        else {
            "kind": "int8 static (QDQ), calibrated on the support images",
            "file": ONNX_INT8,
            "argmax_agreement_with_float": agreement,
            "agreement_on": "query images" if query is not None else checked_on,
        },
        "source_adapted": str(source.resolve()),
        "source_run": meta.get("source_run"),
    }
    files[runs.META] = (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()
    runs.write_dir_atomically(out, force, files)
    return ExportResult(out, diff, agreement, OPSET, sorted(files))


__all__ = ["ExportResult", "export"]
