"""``metactl adapt --from ADAPTABLE_DIR``: adaptation with onnxruntime and numpy only (no torch, no transformers).

The folder ``export --adaptable`` wrote (:mod:`metactl.adaptable`) is checked first (its format, the
metactl version that wrote it, every file's sha256), then the support set is read as the run read it
(texts tokenized with the folder's ``tokenizer.json``; images in the run's recorded layout), embedded
(``embed.onnx``), adapted (``adapt.onnx``: the run's own head adaptation) and the head baked into
``classify.onnx``: the result is a normal export folder (``model.onnx`` with the labels and preprocessing
in its metadata, ``metactl.json``, and for text ``tokenizer.json`` and ``config.json`` with the labels) that
``metactl predict`` and any onnxruntime client serve. Importing torch or transformers here is a defect: a
test makes them unimportable and runs this path.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from metactl._version import __version__
from metactl.adapt_graph import bake
from metactl.data.images import IMAGE_SUFFIXES
from metactl.data.label_names import add_label_names
from metactl.data.text_files import TABLE_SUFFIXES
from metactl.errors import MetactlError
from metactl.files import check_version, ensure_out_free, write_dir_atomically
from metactl.modalities import modality_of

META = "metactl.json"
FORMAT = 1  # the adaptable folder's layout (metactl.adaptable writes it); any other is refused
GRAPHS = ("embed.onnx", "adapt.onnx", "classify.onnx")
TEXT_BATCH = 64  # texts embedded per call (each text's features do not depend on the rest of its batch)
TEXT_SUFFIXES = (".txt", *TABLE_SUFFIXES)


@dataclass(frozen=True)
class RuntimeAdaptResult:
    """The export folder ``metactl adapt --from ADAPTABLE_DIR`` wrote."""

    path: Path
    labels: list[str]
    support_accuracy: float
    query_accuracy: float | None
    seconds: dict[str, float]  # embed, adapt, total
    files: list[str] = field(default_factory=list)


def is_adaptable(folder: Path) -> bool:
    """True when ``folder`` holds a ``metactl.json`` of kind ``adaptable`` (no other check)."""
    try:
        return folder.is_dir() and json.loads((folder / META).read_text(encoding="utf-8")).get("kind") == "adaptable"
    except (OSError, ValueError, AttributeError):
        return False


def read_adaptable(folder: Path) -> dict[str, Any]:
    """The folder's metactl.json, after checking its kind, format, metactl version and every file's sha256."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MetactlError(f"{folder}: no readable {META} ({exc}).", "Pass a folder written by `metactl export --adaptable`.") from None
    if not isinstance(meta, dict) or meta.get("kind") != "adaptable":
        raise MetactlError(f"{folder}: not an adaptable export.", "Pass a folder written by `metactl export --adaptable`.")
    check_version(meta.get("metactl_version"), folder / META)
    if meta.get("format") != FORMAT:
        raise MetactlError(
            f"{folder}: adaptable format {meta.get('format')!r}, which this metactl {__version__} cannot run (it runs format {FORMAT}).",
            "Export it again with this metactl: metactl export --from RUN --adaptable.",
        )
    files = meta.get("files")
    if not isinstance(files, dict) or not set(GRAPHS) <= set(files):
        raise MetactlError(f"{folder}/{META}: no file list.", "Export it again: metactl export --from RUN --adaptable.")
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise MetactlError(f"{folder}: {name} is missing.", "Copy the whole folder, or export it again.")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise MetactlError(f"{path}: the file is corrupt or was changed (its sha256 differs from {META}'s).", "Copy the folder again, or export it again.")
    return meta


def check_labels(labels: np.ndarray, what: str = "labels") -> int:
    """The class count C of ``labels`` (int, 0..C−1, every class at least once), else a MetactlError naming the problem."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        raise MetactlError(f"{what}: need a non-empty 1-D array of integer class ids.", "Give each support example its class id 0..C-1.")
    if int(y.min()) < 0:
        raise MetactlError(f"{what}: class id {int(y.min())} is negative.", "Use class ids 0..C-1.")
    c = int(y.max()) + 1
    missing = sorted(set(range(c)) - {int(v) for v in y})
    if missing:
        raise MetactlError(
            f"{what}: class{'es' if len(missing) > 1 else ''} {', '.join(map(str, missing[:5]))} of 0..{c - 1} "
            f"{'have' if len(missing) > 1 else 'has'} no example.",
            "Number the classes 0..C-1 with at least one example each.",
        )
    if c < 2:
        raise MetactlError(f"{what}: one class only.", "Give examples of at least two classes.")
    return c


def _kinds(folder: Path) -> tuple[int, int]:
    """(image files, text files) under ``folder`` (a file: itself), hidden entries skipped."""
    paths = (
        [folder]
        if folder.is_file()
        else [p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    )
    suffixes = [p.suffix.lower() for p in paths]
    return sum(s in IMAGE_SUFFIXES for s in suffixes), sum(s in TEXT_SUFFIXES for s in suffixes)


def _check_kind(path: Path, modality: str, what: str) -> None:
    """A support (or query) folder of images for a text model, or of texts for an image model: one clear error."""
    if not path.exists():
        raise MetactlError(f"{what} {path}: no such file or folder.", "Pass your labeled examples.")
    images, texts = _kinds(path)
    if modality == "text" and images and not texts:
        raise MetactlError(f"{what} {path} holds images, but this adaptable model takes text.", "Pass labeled texts, or an adaptable export of an image run.")
    if modality == "image" and texts and not images:
        raise MetactlError(
            f"{what} {path} holds texts, but this adaptable model takes images.", "Pass a folder of images, or an adaptable export of a text run."
        )


def _session(path: Path) -> Any:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _embed(session: Any, inputs: dict[str, np.ndarray], text: bool) -> list[np.ndarray]:
    """embed.onnx's outputs for all rows: texts in batches of TEXT_BATCH (in order of length, each cut to its longest
    text); images in one call (the batch's statistics are the support's)."""
    if not text:
        return session.run(None, inputs)
    mask = inputs["attention_mask"]
    order = np.argsort(mask.sum(1), kind="stable")
    parts = []
    for lo in range(0, len(order), TEXT_BATCH):
        rows = order[lo : lo + TEXT_BATCH]
        width = max(int(mask[rows].sum(1).max()), 1)
        parts.append(session.run(["features"], {k: np.ascontiguousarray(v[rows, :width]) for k, v in inputs.items()})[0])
    out = np.empty((len(order), parts[0].shape[1]), np.float32)
    out[order] = np.concatenate(parts)
    return [out]


def _inputs(modality: Any, examples: Any, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Examples as the support reader gives them -> embed.onnx's inputs (the client's layout)."""
    if modality.name == "text":
        return {k: np.asarray(examples[k], np.int64) for k in ("input_ids", "attention_mask")}
    raw = 255 - examples if meta["preprocessing"].get("invert") else examples
    raw = raw.astype(np.float32)
    return {"pixels": raw[:, None] if raw.ndim == 3 else raw}


def _read(modality: Any, folder: Path, meta: dict[str, Any], path: Path, what: str) -> Any:
    """The labeled examples at ``path``, read with the run's preprocessing (text: the folder's tokenizer.json)."""
    prep = dict(meta["preprocessing"])
    if modality.name == "text":
        prep["tokenizer"] = str(folder / "tokenizer.json")
    _check_kind(path, modality.name, what)
    return modality.read_support(path, prep, what), prep


def _config(folder: Path, labels: list[str]) -> bytes:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(num_labels=len(labels), id2label={str(i): lab for i, lab in enumerate(labels)}, label2id={lab: i for i, lab in enumerate(labels)})
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()


def _sets(folder: Path, meta: dict[str, Any], modality: Any, support: Path, query: Path | None, label_names: bool | None) -> tuple[Any, Any, bool]:
    """The support set (with each label's name as one more text when the run trained so, or ``label_names``), the
    query set if given (its labels must be the support's), and whether names were added."""
    data, prep = _read(modality, folder, meta, support, "--support")
    names = bool(meta.get("label_names", False) if label_names is None else label_names)
    if names and modality.name == "text":
        data = add_label_names(data, prep)
    elif names and label_names:
        raise MetactlError("--label-names adds each label's name as a text example: text models only.", "Drop --label-names.")
    qdata = None
    if query is not None:
        qdata, _ = _read(modality, folder, meta, query, "--query")
        extra = sorted(set(qdata.labels) - set(data.labels))
        if extra:
            raise MetactlError(f"--query {query}: labels not in the support set: {', '.join(extra)}.", "Use the same labels as --support.")
    return data, qdata, names and modality.name == "text"


def _accuracy(session: Any, feed: dict[str, np.ndarray], targets: np.ndarray) -> float:
    n = len(targets)
    batches = ({k: v[lo : lo + TEXT_BATCH] for k, v in feed.items()} for lo in range(0, n, TEXT_BATCH))
    pred = np.concatenate([session.run(["probabilities"], batch)[0].argmax(1) for batch in batches])
    return float((pred == targets).mean())


def _served_model(folder: Path, meta: dict[str, Any], modality: Any, labels: list[str], head: dict[str, np.ndarray]) -> bytes:
    """classify.onnx with the head (and the support's statistics) baked in, its metadata as ``export --onnx`` writes it."""
    served = modality.served_preprocessing(meta["preprocessing"])
    props = {
        "labels": json.dumps(labels, ensure_ascii=False),
        "preprocessing": json.dumps({**served, "input": meta.get("input", "")}, ensure_ascii=False),
        "source_run": str(meta.get("source_run", "")),
        "adapted_from": str(folder.resolve()),
        "metactl_version": __version__,
    }
    return bake(onnx.load(str(folder / "classify.onnx")), head, props).SerializeToString()


def adapt_onnx(
    folder: Path, support: Path, out: Path, force: bool = False, query: Path | None = None, label_names: bool | None = None, command: str | None = None,
    steps: int | None = None, device: str = "cpu",
) -> RuntimeAdaptResult:  # fmt: skip
    """Adapt the adaptable export ``folder`` to the labeled examples at ``support`` and write a normal export to ``out``.
    ``steps`` and ``device`` are ``metactl adapt``'s options for a run: given here they are an error."""
    t0 = time.perf_counter()
    if steps is not None:
        raise MetactlError("--steps does not apply to an adaptable export: its steps are part of adapt.onnx.", "Drop --steps (or re-export the run).")
    if device != "cpu":
        raise MetactlError("--device does not apply to an adaptable export: onnxruntime adapts on the CPU.", "Drop --device.")
    ensure_out_free(out, force)
    meta = read_adaptable(folder)
    modality = modality_of(meta["preprocessing"])
    text = modality.name == "text"
    data, qdata, names = _sets(folder, meta, modality, support, query, label_names)
    labels, y = list(data.labels), np.asarray(data.targets, np.int64)
    check_labels(y, f"--support {support}")
    embed, adapt = _session(folder / "embed.onnx"), _session(folder / "adapt.onnx")
    t1 = time.perf_counter()
    support_out = _embed(embed, _inputs(modality, data.examples, meta), text)
    t2 = time.perf_counter()
    weight, bias = adapt.run(["weight", "bias"], {"features": support_out[0], "labels": y})
    t3 = time.perf_counter()
    state = dict(zip(list(meta["io"].get("state") or []), support_out[1:], strict=True))
    blob = _served_model(folder, meta, modality, labels, {"weight": weight, "bias": bias, **state})
    support_acc = float(((support_out[0] @ weight.T + bias).argmax(1) == y).mean())  # the served model's logits on the support
    query_acc = None
    if qdata is not None:
        session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        remap = np.array([labels.index(lab) for lab in qdata.labels])
        query_acc = _accuracy(session, _inputs(modality, qdata.examples, meta), remap[qdata.targets])
    files: dict[str, bytes] = {"model.onnx": blob}
    if text:
        files["tokenizer.json"] = (folder / "tokenizer.json").read_bytes()
        files["config.json"] = _config(folder, labels)
    unit = modality.unit
    info = {
        "metactl_version": __version__, "kind": "export", "labels": labels,
        "preprocessing": modality.served_preprocessing(meta["preprocessing"]), "input": meta.get("input"),
        "adapted_with": "onnxruntime (metactl adapt --from ADAPTABLE_DIR)", "source_adaptable": str(folder.resolve()),
        "source_run": meta.get("source_run"), "algorithm": meta.get("algorithm"),
        "steps": meta["steps"]["trained_classes" if len(labels) == meta.get("trained_classes") else "other"], "label_names": names,
        "support": {"folder": str(support.resolve()), unit: len(y), "per_label": {lab: int((y == i).sum()) for i, lab in enumerate(labels)}},
        "support_accuracy": support_acc, "query_accuracy": query_acc,
        "query": None if qdata is None else {"folder": str(query.resolve()), unit: len(qdata.targets)},  # type: ignore[union-attr]
        "opset": meta.get("opset"), "created": datetime.now().isoformat(timespec="seconds"),
    }  # fmt: skip
    if command:
        info["command"] = command
    files[META] = (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()
    write_dir_atomically(out, force, files)
    seconds = {"embed": t2 - t1, "adapt": t3 - t2, "total": time.perf_counter() - t0}
    return RuntimeAdaptResult(out, labels, support_acc, query_acc, seconds, sorted(files))


__all__ = ["RuntimeAdaptResult", "adapt_onnx", "check_labels", "is_adaptable", "read_adaptable"]
