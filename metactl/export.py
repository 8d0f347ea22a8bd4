"""``export --onnx``: an adapted model as a folder that onnxruntime (and the ecosystem's clients) serve.

Images: the graph's single input ``pixels`` takes raw pixel values 0-255 (float32), NCHW, shape
(batch, channels, size, size): the image decoded and resized, nothing else. Ink inversion and
scaling happen inside the graph. The output ``probabilities`` has shape (batch, number of labels).

Text: inputs ``input_ids`` and ``attention_mask`` (int64, ``[batch, seq]``, both dynamic), outputs
``logits`` and ``probabilities``; ``tokenizer.json`` (set to truncate at the run's ``max_length`` and
to pad per batch) and ``config.json`` (``id2label``, ``label2id``, architecture) lie beside
``model.onnx``: the layout Hugging Face tooling reads. A prediction never depends on the rest of the
batch or on the padding length: checked at export.

Which inputs and outputs the graph has is the model's business (its ``export_module``:
``input_names``, ``output_names``, ``example_inputs()``, ``client_inputs(examples)``; integer inputs
are token sequences, dynamic in their first two dimensions); extra files come from the model's
``export_assets(labels)`` when it has one. ``metadata_props`` hold ``labels`` (JSON list, index =
output column), ``preprocessing``, ``source_run`` and ``metactl_version``. The exporter checks its
own file against torch on ``probabilities`` (≤ 1e-4).

``--quantize int8``: static QDQ quantization calibrated on the support set for images; dynamic
quantization (weights int8 per output channel, activations quantized on the fly: what suits
transformers on a CPU) for text, the feed-forward down projections left float (their inputs' outlier
activations are what costs accuracy). Either way the argmax agreement with the float model is measured on the query set when there
is one, and reported.
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
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from safetensors.torch import save

from metactl import __version__, callable_module, card, runs
from metactl.adapt import MODEL, load_adapted
from metactl.data.labeled import Examples, kind_of, read_support
from metactl.errors import MetactlError

ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
TOKENIZER = "tokenizer.json"
CONFIG = "config.json"
OPSET = 18
TOLERANCE = 1e-4
CHECKED_OUTPUT = "probabilities"
PADDING_CHECK_ROWS = 32  # rows run one by one, unpadded, in the batch-independence check
EXTRA_PADDING = 7  # pad tokens added to every row in the padding-independence check


@dataclass
class ExportResult:
    out: Path
    max_abs_diff: float
    agreement_int8: float | None
    opset: int
    files: list[str]
    padding_diff: float | None = None  # text: the largest change of a probability with batch composition or padding


def _dynamic_axes(module: Any, example: tuple[torch.Tensor, ...]) -> dict[str, dict[int, str]]:
    """The module's own ``dynamic_axes`` if it declares them; otherwise dimension 0 is the batch and
    integer inputs (token ids, masks) are ``[batch, seq]``."""
    declared = getattr(module, "dynamic_axes", None)
    if declared is not None:
        return dict(declared)
    axes: dict[str, dict[int, str]] = {}
    for name, t in zip(module.input_names, example, strict=True):
        axes[name] = {0: "batch", 1: "seq"} if not t.dtype.is_floating_point and t.dim() >= 2 else {0: "batch"}
    return axes


def _onnx_bytes(module: Any, metadata: dict[str, str]) -> bytes:

    # the exporter logs one warning per optional torchvision op it cannot register: noise for us
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = module.example_inputs()
    dims: dict[str, Any] = {}
    shapes = {
        name: {axis: dims.setdefault(label, torch.export.Dim(label, min=1)) for axis, label in axes.items()}
        for name, axes in _dynamic_axes(module, example).items()
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.export's own deprecation chatter
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=module.input_names, output_names=module.output_names,
                dynamic_shapes=shapes, opset_version=OPSET, external_data=False, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter's own failures are not the user's fault but must not crash silently
        raise MetactlError(f"ONNX export failed: {type(exc).__name__}: {exc}", "Please report this with the adapted folder.") from None
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    data = proto.SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def _run_onnx(data: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The graph's ``probabilities`` for ``inputs``."""
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run([CHECKED_OUTPUT], inputs)[0]


def _torch_outputs(module: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(inputs[name]) for name in module.input_names))
    outs = out if isinstance(out, tuple | list) else (out,)
    return {name: t.numpy() for name, t in zip(module.output_names, outs, strict=True)}


def _rows(inputs: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in inputs.items()}


def _concat(a: Examples, b: Examples) -> Examples:
    """Two example sets as one; named token arrays are padded with 0 to the longer length first."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.concatenate([a, b])
    assert isinstance(a, dict) and isinstance(b, dict)
    out = {}
    for k in a:
        width = max(a[k].shape[1], b[k].shape[1])
        out[k] = np.concatenate([np.pad(x[k], [(0, 0), (0, width - x[k].shape[1])]) for x in (a, b)])
    return out


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


def float_down_projections(model: onnx.ModelProto) -> list[str]:
    """The MatMul nodes whose constant weight narrows its input (``d_in > d_out``): a transformer's
    feed-forward down projections. Their inputs carry the few outlier activations that one int8 scale per
    tensor cannot represent (Bondarenko et al., 2021, "Understanding and Overcoming the Challenges of
    Efficient Transformer Quantization"); dynamic quantization leaves them float."""
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        shape = next((weights[i] for i in node.input if i in weights), None)
        if node.op_type == "MatMul" and shape is not None and len(shape) == 2 and shape[0] > shape[1]:
            out.append(node.name)
    return out


def _quantize_dynamic(data: bytes, workdir: Path) -> tuple[bytes, int]:
    """int8 weights (one scale per output channel), activations quantized at run time (MatMul/Gather): no
    calibration set needed. The feed-forward down projections stay float (``float_down_projections``).
    Returns the file and how many MatMuls stayed float."""
    raw, dst = workdir / "raw.onnx", workdir / "int8.onnx"
    raw.write_bytes(data)  # no quant_pre_process: its symbolic shape inference gives up on a dynamic sequence length
    keep = float_down_projections(onnx.load_from_string(data))
    quantize_dynamic(str(raw), str(dst), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep)
    return dst.read_bytes(), len(keep)


def _padding_diff(data: bytes, inputs: dict[str, np.ndarray], batched: np.ndarray) -> float:
    """Text: the largest change of a probability when a row is run alone without padding, or with
    EXTRA_PADDING more pad tokens (id 0, mask 0) than its batch needed."""
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    diff = 0.0
    lengths = inputs["attention_mask"].sum(1)
    for i in range(min(len(lengths), PADDING_CHECK_ROWS)):
        alone = {k: v[i : i + 1, : int(lengths[i])] for k, v in inputs.items()}
        diff = max(diff, float(np.abs(sess.run([CHECKED_OUTPUT], alone)[0][0] - batched[i]).max()))
    padded = {k: np.pad(v, [(0, 0), (0, EXTRA_PADDING)]) for k, v in inputs.items()}
    return max(diff, float(np.abs(sess.run([CHECKED_OUTPUT], padded)[0] - batched).max()))


def _checked_set(info: dict[str, Any] | None, prep: dict[str, Any], what: str) -> Examples | None:
    """The adapt-time support (or query) set read again, or None when it moved or changed since."""
    if not info:
        return None
    path = Path(info.get("path") or info.get("folder") or "")
    if not str(path) or not path.exists():
        return None
    try:
        return read_support(path, prep, what).examples
    except MetactlError:  # changed since adapt; the check falls back to other examples
        return None


def _serving_tokenizer(blob: bytes, max_length: int) -> bytes:
    """The tokenizer as the model saw text: truncation at ``max_length``, padding to the longest of a
    batch (a sentence-transformers folder's own tokenizer.json pads every input to a fixed 128)."""
    spec = json.loads(blob)
    pad = spec.get("padding") or {}
    spec["truncation"] = {"direction": "Right", "max_length": int(max_length), "strategy": "LongestFirst", "stride": 0}
    spec["padding"] = {
        "strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
        "pad_id": int(pad.get("pad_id", 0)), "pad_type_id": int(pad.get("pad_type_id", 0)), "pad_token": str(pad.get("pad_token", "[PAD]")),
    }  # fmt: skip
    return (json.dumps(spec, ensure_ascii=False, indent=2) + "\n").encode()


def _text_assets(model: Any, labels: list[str], prep: dict[str, Any]) -> dict[str, bytes]:
    """tokenizer.json and config.json: the model's own (``export_assets``), else the run's tokenizer and a label map."""
    assets = dict(model.export_assets(labels)) if hasattr(model, "export_assets") else {}
    if TOKENIZER not in assets:
        source = Path(prep["tokenizer"])
        if not source.is_file():
            raise MetactlError(f"{source}: the run's tokenizer.json is missing.", "Restore the backbone folder the run was trained with.")
        assets[TOKENIZER] = source.read_bytes()
    assets[TOKENIZER] = _serving_tokenizer(assets[TOKENIZER], int(prep["max_length"]))
    id2label = {str(i): lab for i, lab in enumerate(labels)}
    config = json.loads(assets[CONFIG]) if CONFIG in assets else {"id2label": id2label, "label2id": {lab: i for i, lab in enumerate(labels)}}
    if {str(k): v for k, v in config.get("id2label", {}).items()} != id2label:
        raise MetactlError(f"The model's {CONFIG} names other labels than the adapted model's metactl.json.", "Please report this with the adapted folder.")
    assets[CONFIG] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()
    return assets


def _source_run_meta(adapted: dict[str, Any]) -> dict[str, Any] | None:
    """The meta-trained run's ``metactl.json`` for the card, or None when it is gone or unreadable."""
    try:
        return runs.read_meta(Path(adapted["source_run"]))
    except (KeyError, TypeError, MetactlError):
        return None


def export(
    source: Path = Path("adapted"), out: Path = Path("export"), quantize: str | None = None, force: bool = False, command: str | None = None
) -> ExportResult:
    """Export the adapted folder ``source`` to ``out`` (model.onnx, model.safetensors, metactl.json, the model
    card README.md, and the text files); ``command`` (what asked for it) is recorded in the card."""

    if quantize not in (None, "int8"):
        raise MetactlError(f"--quantize {quantize!r} is not supported.", "Use --quantize int8 or leave it out.")
    runs.ensure_out_free(out, force)
    meta, model = load_adapted(source)
    prep = meta["preprocessing"]
    labels = meta["labels"]
    text = kind_of(prep) == "text"
    deployed = model.export_module(prep).eval()  # type: ignore[operator]
    assets = _text_assets(model, labels, prep) if text else {}
    served_prep = {**prep, "tokenizer": TOKENIZER} if text else prep
    if text:
        described = {**served_prep, "input": "input_ids, attention_mask: int64 [batch, seq] from tokenizer.json (truncated at max_length, padded per batch)"}
    else:
        channels = int(prep.get("channels", 1))
        color = "RGB" if channels == 3 else "grayscale"
        described = {**prep, "input": f"pixels: float32 raw values 0-255, NCHW (batch, {channels}, size, size); {color}, resized, not inverted"}
    metadata = {
        "labels": json.dumps(labels, ensure_ascii=False),
        "preprocessing": json.dumps(described, ensure_ascii=False),
        "source_run": meta.get("source_run", ""),
        "adapted_from": str(source.resolve()),
        "metactl_version": __version__,
    }
    data = _onnx_bytes(deployed, metadata)
    # check the file against torch on the support (and query) examples, as a client sends them
    unit = "texts" if text else "images"
    support = _checked_set(meta.get("support"), prep, "support")
    query = _checked_set(meta.get("query"), prep, "query")
    checked_on = f"support {unit}" + (f" and query {unit}" if query is not None else "")
    n_support = 0
    if support is None:  # the support set moved since adapt: check on fixed inputs instead
        if text:
            raw = {name: t.numpy() for name, t in zip(deployed.input_names, deployed.example_inputs(), strict=True)}
            checked_on = "the model's example inputs"
        else:
            size = int(prep["size"])
            channels = int(prep.get("channels", 1))
            shape = (16, size, size) if channels == 1 else (16, channels, size, size)
            pixels = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
            raw, checked_on = deployed.client_inputs(pixels), "random pixels"
        query = None
        n_support = len(next(iter(raw.values())))
    else:
        n_support = len(support["input_ids"] if isinstance(support, dict) else support)
        raw = deployed.client_inputs(support if query is None else _concat(support, query))
    n_checked = len(next(iter(raw.values())))
    expected = _torch_outputs(deployed, raw)[CHECKED_OUTPUT]
    got = _run_onnx(data, raw)
    diff = float(np.abs(expected - got).max())
    if not diff <= TOLERANCE:
        raise MetactlError(f"ONNX check failed: onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE:g}).", "Please report this.")
    padding = None
    if text:
        padding = _padding_diff(data, raw, got)
        if not padding <= TOLERANCE:
            raise MetactlError(
                f"ONNX check failed: a prediction changes by {padding:.2e} (> {TOLERANCE:g}) with the batch's other texts or its padding.",
                "Please report this with the adapted folder.",
            )
    files = {ONNX: data, **assets}
    agreement, kept_float = None, 0
    held = slice(n_support, None) if query is not None else slice(None)  # queries: not calibrated on
    if quantize == "int8":
        with tempfile.TemporaryDirectory() as tmp:
            q, kept_float = _quantize_dynamic(data, Path(tmp)) if text else (_quantize(data, _rows(raw, slice(None, n_support)), Path(tmp)), 0)
        agreement = float((_run_onnx(q, _rows(raw, held)).argmax(-1) == got[held].argmax(-1)).mean())
        files[ONNX_INT8] = q
    tensors = runs.load_tensors(source / MODEL)
    files[MODEL] = save(tensors, metadata={"format": "metactl-adapted", "metactl_version": __version__})
    if text:
        io: dict[str, Any] = {
            "input": {
                "names": list(deployed.input_names),
                "dtype": "int64",
                "shape": ["batch", "seq"],
                "values": "tokenizer.json's ids (truncated at max_length) and 1/0 attention mask; pad per batch, with any id",
            },
            "output": {"names": list(deployed.output_names), "shape": ["batch", len(labels)]},
            "tokenizer": TOKENIZER,
            "config": CONFIG,
        }
    else:
        size, channels = int(prep["size"]), int(prep.get("channels", 1))
        io = {
            "input": {
                "name": "pixels",
                "dtype": "float32",
                "shape": ["batch", channels, size, size],
                "values": f"raw 0-255, {'RGB' if channels == 3 else 'grayscale'}, resized; inversion and scaling are inside the graph",
            },
            "output": {"name": "probabilities", "shape": ["batch", len(labels)]},
        }
    check: dict[str, Any] = {unit: n_checked, "on": checked_on, "output": CHECKED_OUTPUT, "max_abs_diff": diff, "tolerance": TOLERANCE}
    if padding is not None:
        check["batch_and_padding_max_abs_diff"] = padding
    info = {
        "metactl_version": __version__,
        "kind": "export",
        "labels": labels,
        "preprocessing": served_prep,
        **io,
        "opset": OPSET,
        "check": check,
        "quantization": None
        if quantize is None
        else {
            "kind": (
                f"int8 dynamic (weights int8 per output channel, activations at run time; {kept_float} feed-forward down projections float)"
                if text
                else "int8 static (QDQ), calibrated on the support images"
            ),
            "file": ONNX_INT8,
            "argmax_agreement_with_float": agreement,
            "agreement_on": f"query {unit}" if query is not None else checked_on,
        },
        "source_adapted": str(source.resolve()),
        "source_run": meta.get("source_run"),
    }
    if command:
        info["command"] = command
    files[runs.META] = (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()
    files[card.CARD] = card.render(meta, _source_run_meta(meta), info, out.name, sorted([*files, card.CARD])).encode()
    runs.write_dir_atomically(out, force, files)
    return ExportResult(out, diff, agreement, OPSET, sorted(files), padding)


__all__ = ["ExportResult", "export"]


callable_module(__name__, "export")  # metactl.export(...) is the Python API's export (metactl.library.export)
