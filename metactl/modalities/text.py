"""Text: support sets of labeled texts (:mod:`metactl.data.support_text`), a graph taking ``input_ids`` and
``attention_mask`` (int64 ``[batch, seq]``) with ``tokenizer.json`` and ``config.json`` beside it, dynamic
int8 with float down projections, and a check that a prediction depends neither on the rest of its batch
nor on its padding. Needs ``tokenizers`` (the ``[text]`` extra), never torch or transformers."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from metactl import contract
from metactl.data.examples import LabeledExamples
from metactl.data.support_text import read_text_support
from metactl.data.text_files import read_lines
from metactl.data.tokens import encode, load_tokenizer
from metactl.errors import MetactlError

TOKENIZER = "tokenizer.json"
CONFIG = "config.json"
META = "metactl.json"
PADDING_CHECK_ROWS = 32  # rows run one by one, unpadded, in the batch-independence check
EXTRA_PADDING = 7  # pad tokens added to every row in the padding-independence check
DEFAULT_MAX_LENGTH = 512


def serving_tokenizer(blob: bytes, max_length: int) -> bytes:
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


def _json_file(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetactlError(f"{path}: not readable JSON ({exc}).", "Export the model again with `metactl export`.") from None
    return data if isinstance(data, dict) else None


def read_texts(items: Sequence[str]) -> list[tuple[str, str]]:
    """(where, text) for each input: an existing file is read one text per non-empty line (UTF-8,
    lines under 1 MB); a word ending in .txt that names no file is an error; anything else is a text."""
    out: list[tuple[str, str]] = []
    for n, item in enumerate(items, 1):
        path = Path(item)
        if path.is_file():
            out += [(f"{path}:{i}", line.strip()) for i, line in read_lines(path, "input") if line.strip()]
        elif item.lower().endswith(".txt") and not any(c.isspace() for c in item):
            raise MetactlError(f"{item}: no such file.", "Pass texts, or .txt files with one text per line.")
        elif not item.strip():
            raise MetactlError(f"text {n} is empty.", "Pass non-empty texts.")
        else:
            out.append((f"argument {n}", item))
    if not out:
        raise MetactlError("No texts found in the given inputs.", "Pass texts, or .txt files with one text per non-empty line.")
    return out


@dataclass
class TextInputs:
    """Texts, tokenized per batch with the export folder's tokenizer.json."""

    labels: list[str]
    records: list[dict[str, str]]
    tokenizer: Any  # tokenizers.Tokenizer, no padding of its own, truncating at max_length
    input_names: list[str]

    def feed(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Padded to the longest of these texts."""
        inputs, _ = encode(self.tokenizer, [r["text"] for r in self.records[start:stop]])
        return {k: v for k, v in inputs.items() if k in self.input_names}


def served_labels(folder: Path, session: Any) -> tuple[list[str], dict[str, Any]]:
    """An export folder's labels (metactl.json, else config.json's id2label, else the graph's metadata) and preprocessing."""
    meta = _json_file(folder / META) or {}
    config = _json_file(folder / CONFIG) or {}
    props = session.get_modelmeta().custom_metadata_map
    labels = meta.get("labels")
    if labels is None and "id2label" in config:
        labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    if labels is None and "labels" in props:
        labels = json.loads(props["labels"])
    if not labels:
        raise MetactlError(f"{folder}: no labels (metactl.json or config.json's id2label).", "Pass the folder written by `metactl export`.")
    return list(labels), meta.get("preprocessing") or json.loads(props.get("preprocessing", "{}"))


class Text:
    """Labeled texts: ``shots/<label>/*.txt``, ``shots/<label>.txt`` or a ``.csv``/``.tsv``/``.jsonl`` table."""

    name: ClassVar[str] = "text"
    unit: ClassVar[str] = "texts"
    quantization: ClassVar[str] = "dynamic"
    normalization: ClassVar[str] = "none (no batch statistics)"
    example_input: ClassVar[str] = '"some text"'
    setting: ClassVar[str] = "the same kind of text"

    def read_support(self, path: Path, preprocessing: dict[str, Any], what: str = "--support") -> LabeledExamples:
        return read_text_support(path, preprocessing, what)

    def support_preprocessing(self, recorded: dict[str, Any]) -> dict[str, Any]:
        return recorded

    def served_preprocessing(self, preprocessing: dict[str, Any]) -> dict[str, Any]:
        return {**preprocessing, "tokenizer": TOKENIZER}

    def describe_input(self, preprocessing: dict[str, Any]) -> str:
        return f"input_ids, attention_mask: int64 [batch, seq] from {TOKENIZER} (truncated at max_length, padded per batch)"

    def io_contract(self, module: Any, preprocessing: dict[str, Any], labels: list[str]) -> dict[str, Any]:
        return {
            "input": {
                "names": list(module.input_names),
                "dtype": "int64",
                "shape": ["batch", "seq"],
                "values": f"{TOKENIZER}'s ids (truncated at max_length) and 1/0 attention mask; pad per batch, with any id",
            },
            "output": {"names": list(module.output_names), "shape": ["batch", len(labels)]},
            "tokenizer": TOKENIZER,
            "config": CONFIG,
        }

    def export_assets(self, model: Any, labels: list[str], preprocessing: dict[str, Any]) -> dict[str, bytes]:
        """tokenizer.json and config.json: the model's own (its ``export_assets`` hook), else the run's tokenizer and a label map."""
        own = contract.hook(model, "export_assets")
        assets = dict(own(labels)) if own is not None else {}
        if TOKENIZER not in assets:
            source = Path(preprocessing["tokenizer"])
            if not source.is_file():
                raise MetactlError(f"{source}: the run's tokenizer.json is missing.", "Restore the backbone folder the run was trained with.")
            assets[TOKENIZER] = source.read_bytes()
        assets[TOKENIZER] = serving_tokenizer(assets[TOKENIZER], int(preprocessing["max_length"]))
        id2label = {str(i): lab for i, lab in enumerate(labels)}
        config = json.loads(assets[CONFIG]) if CONFIG in assets else {"id2label": id2label, "label2id": {lab: i for i, lab in enumerate(labels)}}
        if {str(k): v for k, v in config.get("id2label", {}).items()} != id2label:
            raise MetactlError(f"The model's {CONFIG} names other labels than the adapted model's metactl.json.", "Please report this with the adapted folder.")
        assets[CONFIG] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()
        return assets

    def fallback_inputs(self, module: Any, preprocessing: dict[str, Any]) -> tuple[dict[str, np.ndarray], str]:
        return {name: t.numpy() for name, t in zip(module.input_names, module.example_inputs(), strict=True)}, "the model's example inputs"

    def batch_independence(self, run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray], batched: np.ndarray) -> float:
        """The largest change of a probability when a row is run alone without padding, or with
        EXTRA_PADDING more pad tokens (id 0, mask 0) than its batch needed."""
        diff = 0.0
        lengths = inputs["attention_mask"].sum(1)
        for i in range(min(len(lengths), PADDING_CHECK_ROWS)):
            alone = {k: v[i : i + 1, : int(lengths[i])] for k, v in inputs.items()}
            diff = max(diff, float(np.abs(run(alone)[0] - batched[i]).max()))
        padded = {k: np.pad(v, [(0, 0), (0, EXTRA_PADDING)]) for k, v in inputs.items()}
        return max(diff, float(np.abs(run(padded) - batched).max()))

    def predict_inputs(self, model: Path, session: Any, items: Sequence[str]) -> TextInputs:
        """Labels from metactl.json (else config.json), tokenizer.json beside the graph."""
        folder = model.parent
        labels, prep = served_labels(folder, session)
        tok_file = folder / TOKENIZER
        if not tok_file.is_file():
            raise MetactlError(f"{folder}: no {TOKENIZER} beside {model.name}.", "Pass the folder written by `metactl export`, with all its files.")
        max_length = int(prep.get("max_length") or (_json_file(tok_file) or {}).get("truncation", {}).get("max_length") or DEFAULT_MAX_LENGTH)
        tokenizer = load_tokenizer(tok_file, max_length)
        records = [{"text": text, "source": where} for where, text in read_texts(items)]
        return TextInputs(labels, records, tokenizer, [i.name for i in session.get_inputs()])


__all__ = ["CONFIG", "TOKENIZER", "Text", "TextInputs", "read_texts", "serving_tokenizer"]
