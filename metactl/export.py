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
are token sequences, dynamic in their first two dimensions); what differs between images and text
(the files beside the graph, the input description, the fallback check inputs, the batch check, the
int8 mode) is the modality's (:mod:`metactl.modalities`), chosen from the adapted preprocessing.
``metadata_props`` hold ``labels`` (JSON list, index =
output column), ``preprocessing``, ``source_run`` and ``metactl_version``. The exporter checks its
own file against torch on ``probabilities`` (≤ 1e-4).

``--quantize int8``: static QDQ quantization calibrated on the support set for images; dynamic
quantization (weights int8 per output channel, activations quantized on the fly: what suits
transformers on a CPU) for text, the feed-forward down projections left float (their inputs' outlier
activations are what costs accuracy). Either way the argmax agreement with the float model is measured on the query set when there
is one, and reported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import warnings
from collections.abc import Callable
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

from metactl import card, contract, runs
from metactl._callable import callable_module
from metactl._version import __version__
from metactl.adapt import MODEL, load_adapted
from metactl.contract import Modality
from metactl.data.examples import Examples
from metactl.errors import MetactlError
from metactl.modalities import modality_of
from metactl.results import ExportResult

ONNX = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
OPSET = 18
TOLERANCE = 1e-4
CHECKED_OUTPUT = "probabilities"


def _dynamic_axes(module: Any, example: tuple[torch.Tensor, ...]) -> dict[str, dict[int, str]]:
    """The module's own ``dynamic_axes`` if it declares them; otherwise dimension 0 is the batch and
    integer inputs (token ids, masks) are ``[batch, seq]``."""
    declared = contract.hook(module, "dynamic_axes")
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


def _quantize_static(data: bytes, calibration: dict[str, np.ndarray], workdir: Path, unit: str) -> tuple[bytes, str]:
    """QDQ int8 (weights per channel), activations calibrated on ``calibration`` (the support set); and its description."""

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
    return dst.read_bytes(), f"int8 static (QDQ), calibrated on the support {unit}"


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


def _quantize_dynamic(data: bytes, calibration: dict[str, np.ndarray], workdir: Path, unit: str) -> tuple[bytes, str]:
    """int8 weights (one scale per output channel), activations quantized at run time (MatMul/Gather): no
    calibration set needed. The feed-forward down projections stay float (``float_down_projections``).
    Returns the file and its description (how many MatMuls stayed float)."""
    raw, dst = workdir / "raw.onnx", workdir / "int8.onnx"
    raw.write_bytes(data)  # no quant_pre_process: its symbolic shape inference gives up on a dynamic sequence length
    keep = float_down_projections(onnx.load_from_string(data))
    quantize_dynamic(str(raw), str(dst), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep)
    kind = f"int8 dynamic (weights int8 per output channel, activations at run time; {len(keep)} feed-forward down projections float)"
    return dst.read_bytes(), kind


QUANTIZERS: dict[str, Callable[[bytes, dict[str, np.ndarray], Path, str], tuple[bytes, str]]] = {
    "static": _quantize_static,
    "dynamic": _quantize_dynamic,
}  # a modality's ``quantization`` mode -> how --quantize int8 makes the file


def _checked_set(modality: Modality, info: dict[str, Any] | None, prep: dict[str, Any], what: str) -> Examples | None:
    """The adapt-time support (or query) set read again, or None when it moved or changed since."""
    if not info:
        return None
    path = Path(info.get("path") or info.get("folder") or "")
    if not str(path) or not path.exists():
        return None
    try:
        return modality.read_support(path, prep, what).examples
    except MetactlError:  # changed since adapt; the check falls back to other examples
        return None


def _count(examples: Examples | dict[str, np.ndarray]) -> int:
    return len(examples) if isinstance(examples, np.ndarray) else len(next(iter(examples.values())))


@dataclass
class Check:
    """What the export was checked on and what the check found."""

    inputs: dict[str, np.ndarray]  # the graph inputs, as a client sends them: the support rows first
    calibration_rows: int  # the support rows (int8 calibrates on these)
    has_query: bool  # rows after the support rows are the query set's
    on: str  # what the inputs are, in words
    max_abs_diff: float = 0.0
    probabilities: np.ndarray | None = None  # onnxruntime's, for the inputs
    batch_and_padding: float | None = None  # the modality's batch-independence figure, where it has one


def _check_inputs(meta: dict[str, Any], prep: dict[str, Any], deployed: Any, modality: Modality) -> Check:
    """The support (and query) examples as graph inputs; the modality's fallback inputs when the support set moved."""
    unit = modality.unit
    support = _checked_set(modality, meta.get("support"), prep, "support")
    query = _checked_set(modality, meta.get("query"), prep, "query")
    if support is None:
        raw, on = modality.fallback_inputs(deployed, prep)
        return Check(raw, _count(raw), False, on)
    raw = deployed.client_inputs(support if query is None else _concat(support, query))
    return Check(raw, _count(support), query is not None, f"support {unit}" + (f" and query {unit}" if query is not None else ""))


def _check(data: bytes, deployed: Any, check: Check, modality: Modality) -> Check:
    """onnxruntime against torch on ``check.inputs`` (≤ TOLERANCE), then the modality's batch-independence check."""
    expected = _torch_outputs(deployed, check.inputs)[CHECKED_OUTPUT]
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return sess.run([CHECKED_OUTPUT], inputs)[0]

    got = run(check.inputs)
    diff = float(np.abs(expected - got).max())
    if not diff <= TOLERANCE:
        raise MetactlError(f"ONNX check failed: onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE:g}).", "Please report this.")
    padding = modality.batch_independence(run, check.inputs, got)
    if padding is not None and not padding <= TOLERANCE:
        raise MetactlError(
            f"ONNX check failed: a prediction changes by {padding:.2e} (> {TOLERANCE:g}) with the batch's other {modality.unit} or its padding.",
            "Please report this with the adapted folder.",
        )
    return dataclasses.replace(check, max_abs_diff=diff, probabilities=got, batch_and_padding=padding)


def _int8(data: bytes, check: Check, modality: Modality) -> tuple[bytes, dict[str, Any]]:
    """The int8 file (the modality's quantization mode) and its record: how often it predicts what the float model does,
    on the query rows when there are some (never calibrated on), else on every checked row."""
    with tempfile.TemporaryDirectory() as tmp:
        calibration = _rows(check.inputs, slice(None, check.calibration_rows))
        q, kind = QUANTIZERS[modality.quantization](data, calibration, Path(tmp), modality.unit)
    held = slice(check.calibration_rows, None) if check.has_query else slice(None)
    assert check.probabilities is not None
    agreement = float((_run_onnx(q, _rows(check.inputs, held)).argmax(-1) == check.probabilities[held].argmax(-1)).mean())
    on = f"query {modality.unit}" if check.has_query else check.on
    return q, {"kind": kind, "file": ONNX_INT8, "argmax_agreement_with_float": agreement, "agreement_on": on}


def _record(meta: dict[str, Any], source: Path, deployed: Any, modality: Modality, check: Check, quantization: dict[str, Any] | None) -> dict[str, Any]:
    """The export's metactl.json: labels, preprocessing, the input/output contract, the check and the int8 figures."""
    prep, labels = meta["preprocessing"], meta["labels"]
    n_checked = _count(check.inputs)
    checked: dict[str, Any] = {modality.unit: n_checked, "on": check.on, "output": CHECKED_OUTPUT, "max_abs_diff": check.max_abs_diff, "tolerance": TOLERANCE}
    if check.batch_and_padding is not None:
        checked["batch_and_padding_max_abs_diff"] = check.batch_and_padding
    return {
        "metactl_version": __version__,
        "kind": "export",
        "labels": labels,
        "preprocessing": modality.served_preprocessing(prep),
        **modality.io_contract(deployed, prep, labels),
        "opset": OPSET,
        "check": checked,
        "quantization": quantization,
        "source_adapted": str(source.resolve()),
        "source_run": meta.get("source_run"),
    }


def _source_run_meta(adapted: dict[str, Any]) -> dict[str, Any] | None:
    """The meta-trained run's ``metactl.json`` for the card, or None when it is gone or unreadable."""
    try:
        return runs.read_meta(Path(adapted["source_run"]))
    except (KeyError, TypeError, MetactlError):
        return None


def _graph_metadata(meta: dict[str, Any], source: Path, modality: Modality) -> dict[str, str]:
    """``model.onnx``'s metadata_props: labels, the preprocessing with its input described, provenance."""
    prep = meta["preprocessing"]
    described = {**modality.served_preprocessing(prep), "input": modality.describe_input(prep)}
    return {
        "labels": json.dumps(meta["labels"], ensure_ascii=False),
        "preprocessing": json.dumps(described, ensure_ascii=False),
        "source_run": meta.get("source_run", ""),
        "adapted_from": str(source.resolve()),
        "metactl_version": __version__,
    }


def export(
    source: Path = Path("adapted"), out: Path = Path("export"), quantize: str | None = None, force: bool = False, command: str | None = None
) -> ExportResult:
    """Export the adapted folder ``source`` to ``out`` (model.onnx, model.safetensors, metactl.json, the model
    card README.md, and the modality's files); ``command`` (what asked for it) is recorded in the card."""
    if quantize not in (None, "int8"):
        raise MetactlError(f"--quantize {quantize!r} is not supported.", "Use --quantize int8 or leave it out.")
    runs.ensure_out_free(out, force)
    meta, model = load_adapted(source)
    prep = meta["preprocessing"]
    modality = modality_of(prep)
    deployed = model.export_module(prep).eval()  # type: ignore[operator]
    assets = modality.export_assets(model, meta["labels"], prep)
    data = _onnx_bytes(deployed, _graph_metadata(meta, source, modality))
    check = _check(data, deployed, _check_inputs(meta, prep, deployed, modality), modality)  # as a client sends them
    files = {ONNX: data, **assets}
    quantization = None
    if quantize == "int8":
        files[ONNX_INT8], quantization = _int8(data, check, modality)
    files[MODEL] = save(runs.load_tensors(source / MODEL), metadata={"format": "metactl-adapted", "metactl_version": __version__})
    info = _record(meta, source, deployed, modality, check, quantization)
    if command:
        info["command"] = command
    files[runs.META] = (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()
    files[card.CARD] = card.render(meta, _source_run_meta(meta), info, out.name, sorted([*files, card.CARD])).encode()
    runs.write_dir_atomically(out, force, files)
    int8 = out / ONNX_INT8 if quantization else None
    agreement = quantization["argmax_agreement_with_float"] if quantization else None
    return ExportResult(out, out / ONNX, int8, check.max_abs_diff, agreement, OPSET, out / card.CARD, sorted(files))


__all__ = ["ExportResult", "export"]


callable_module(__name__, "export")  # metactl.export(...) is the Python API's export (metactl.library.export)
