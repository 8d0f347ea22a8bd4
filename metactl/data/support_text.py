"""Text support sets for ``adapt`` / ``export``, and the tokenization ``predict`` shares with them.

Three layouts (UTF-8, a BOM is allowed):

- ``shots/<label>/*.txt``: one example per file (the file's text, stripped);
- ``shots/<label>.txt``: one example per non-empty line;
- ``shots.csv`` / ``shots.tsv`` / ``shots.jsonl``: a ``text`` and a ``label`` column (key).

A folder may mix the first two (``greet/`` and ``greet.txt`` are the same label). Hidden entries and
files of other types are skipped and reported. Labels are NFC-normalised and sorted by code point.
Anything that makes the set unusable is one :class:`MetactlError` naming the file (and line): not
UTF-8, an empty label, a label without examples, a table without the columns, a line (or one-example
file) over :data:`MAX_BYTES`, labels differing only in case. Lines are read with a bounded
``readline``: a 50 MB line is refused after reading 1 MB of it.

The examples are tokenized with the run's ``preprocessing["tokenizer"]`` (a ``tokenizer.json``),
truncated at ``preprocessing["max_length"]`` tokens and padded with 0 to the longest example.
Imports ``tokenizers`` (the ``[text]`` extra), never torch or transformers.
"""

from __future__ import annotations

import csv
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from metactl.data.labeled import LabeledExamples
from metactl.errors import MetactlError

MAX_BYTES = 1 << 20  # the longest line (or one-example file) accepted: 1 MB
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")


def load_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    """A ``tokenizer.json`` without its own padding (we pad per batch), truncating at ``max_length`` tokens."""
    p = Path(path)
    if not p.is_file():
        raise MetactlError(f"{p}: tokenizer file not found.", "The run records the backbone's tokenizer.json; restore that folder or meta-train again.")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as exc:  # tokenizers raises its own exception type for a damaged file
        raise MetactlError(f"{p}: not a loadable tokenizer.json ({exc}).", "Restore the backbone folder's tokenizer.json.") from None
    tok.no_padding()
    tok.enable_truncation(int(max_length))
    return tok


def encode(tokenizer: Tokenizer, texts: list[str], pad_id: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """``{"input_ids", "attention_mask"}`` int64 (n, L), right-padded with ``pad_id`` to the longest of
    these texts; and how many texts the tokenizer truncated."""
    encodings = tokenizer.encode_batch(texts)
    length = max((len(e.ids) for e in encodings), default=0)
    ids = np.full((len(texts), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=np.int64)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}, sum(bool(e.overflowing) for e in encodings)


def read_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its newline), reading at most MAX_BYTES per line."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise MetactlError(f"{what} {path}: cannot read ({exc.strerror}).", "Check the file's permissions.") from None
    with f:
        number = 0
        while True:
            raw = f.readline(MAX_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_BYTES:
                raise MetactlError(
                    f"{what} {path}:{number}: line longer than {MAX_BYTES // (1 << 20)} MB.", "Split or shorten it: one example per line, each under 1 MB."
                )
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            yield number, _decode(raw, f"{path}:{number}", what).rstrip("\r\n")


def _decode(raw: bytes, where: str, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetactlError(f"{what} {where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}).", "Save the file as UTF-8 text.") from None


def _label(name: str, where: str, what: str) -> str:
    label = unicodedata.normalize("NFC", name.strip())
    if not label:
        raise MetactlError(f"{what} {where}: empty label.", "Give every example a non-empty label.")
    return label


def _one_example_file(path: Path, what: str) -> str:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise MetactlError(f"{what} {path}: cannot read ({exc.strerror}).", "Check the file's permissions.") from None
    if size > MAX_BYTES:
        raise MetactlError(f"{what} {path}: example longer than {MAX_BYTES // (1 << 20)} MB.", "Shorten it: one example per file, each under 1 MB.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MetactlError(f"{what} {path}: cannot read ({exc.strerror}).", "Check the file's permissions.") from None
    text = _decode(raw.removeprefix(b"\xef\xbb\xbf"), str(path), what).strip()
    if not text:
        raise MetactlError(f"{what} {path}: empty example.", "Write the example's text into the file, or remove the file.")
    return text


def _read_folder(root: Path, what: str, skipped: list[str]) -> dict[str, list[tuple[str, str]]]:
    """label -> [(text, source)] from ``<label>/*.txt`` and ``<label>.txt``."""
    found: dict[str, list[tuple[str, str]]] = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skipped.append(str(entry))
        elif entry.is_dir():
            examples = found.setdefault(_label(entry.name, str(entry), what), [])
            files = sorted(f for f in entry.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix.lower() == ".txt")
            skipped += sorted(str(f) for f in entry.iterdir() if f not in files)
            if not files:
                raise MetactlError(f"{what} {entry}: label folder holds no .txt files.", "Add one .txt file per example, or remove the folder.")
            examples += [(_one_example_file(f, what), str(f)) for f in files]
        elif entry.is_file() and entry.suffix.lower() == ".txt":
            examples = found.setdefault(_label(entry.stem, str(entry), what), [])
            lines = [(line.strip(), f"{entry}:{n}") for n, line in read_lines(entry, what) if line.strip()]
            if not lines:
                raise MetactlError(f"{what} {entry}: no examples (every line is empty).", "Write one example per line, or remove the file.")
            examples += lines
        else:
            skipped.append(str(entry))
    return found


def _read_table(path: Path, what: str) -> dict[str, list[tuple[str, str]]]:
    """label -> [(text, "FILE:LINE")] from a CSV/TSV (header with text and label) or JSONL file."""
    found: dict[str, list[tuple[str, str]]] = {}

    def add(text: Any, label: Any, line: int) -> None:
        where = f"{path}:{line}"
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise MetactlError(f"{what} {where}: the label must be a string (got {json.dumps(label)}).", "Write the label as text.")
        if not isinstance(text, str) or not text.strip():
            raise MetactlError(f"{what} {where}: empty text.", "Give every row a non-empty text, or remove the row.")
        found.setdefault(_label(str(label), where, what), []).append((text.strip(), where))

    if path.suffix.lower() == ".jsonl":
        for n, line in read_lines(path, what):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MetactlError(f"{what} {path}:{n}: not valid JSON ({exc.msg}).", "Write one JSON object per line.") from None
            if not isinstance(row, dict) or "text" not in row or "label" not in row:
                raise MetactlError(f'{what} {path}:{n}: needs an object with "text" and "label" keys.', 'Write lines like {"text": "...", "label": "..."}.')
            add(row["text"], row["label"], n)
        return found
    numbered = read_lines(path, what)
    line_of = [0]

    def texts() -> Iterator[str]:
        for n, line in numbered:
            line_of[0] = n
            yield line

    csv.field_size_limit(MAX_BYTES)
    reader = csv.reader(texts(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        header = next(reader, None)
        columns = [c.strip().lower() for c in header or []]
        if "text" not in columns or "label" not in columns:
            shown = ", ".join(repr(c) for c in header or []) or "none"
            raise MetactlError(
                f"{what} {path}: needs a header with 'text' and 'label' columns (found {shown}).", "Name the columns text and label in the first row."
            )
        ti, li = columns.index("text"), columns.index("label")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(ti, li):
                raise MetactlError(f"{what} {path}:{line_of[0]}: {len(row)} columns, the header has {len(columns)}.", "Check the row's separators and quotes.")
            add(row[ti], row[li], line_of[0])
    except csv.Error as exc:
        raise MetactlError(f"{what} {path}:{line_of[0]}: {exc}.", "Check the row's quotes.") from None
    return found


def read_text_support(path: Path, preprocessing: dict[str, Any], what: str = "--support") -> LabeledExamples:
    """Read, check and tokenize a text support set (see the module docstring); nothing is written."""
    if not path.exists():
        raise MetactlError(f"{what} {path}: no such file or folder.", "Pass a folder of <label>/*.txt or <label>.txt files, or a .csv/.tsv/.jsonl file.")
    skipped: list[str] = []
    if path.is_dir():
        found = _read_folder(path, what, skipped)
    elif path.suffix.lower() in TABLE_SUFFIXES:
        found = _read_table(path, what)
    else:
        raise MetactlError(f"{what} {path}: not a folder or a .csv/.tsv/.jsonl file.", "Pass a folder of <label>/*.txt or <label>.txt files, or a table.")
    seen: dict[str, str] = {}
    for label in found:
        other = seen.setdefault(label.casefold(), label)
        if other != label:
            raise MetactlError(
                f"{what} {path}: labels {other!r} (at {found[other][0][1]}) and {label!r} (at {found[label][0][1]}) differ only in case.",
                "Merge or rename one of them.",
            )
    if not found:
        raise MetactlError(f"{what} {path}: no labeled examples found.", "Use <label>/*.txt files, <label>.txt files or a table with text and label.")
    if len(found) < 2:
        raise MetactlError(f"{what} {path}: found 1 label ({next(iter(found))!r}); need at least 2.", "Add examples of each further label.")
    labels = sorted(found)
    rows = [(text, i, source) for i, label in enumerate(labels) for text, source in found[label]]
    tokenizer = load_tokenizer(preprocessing["tokenizer"], int(preprocessing["max_length"]))
    texts = [text for text, _, _ in rows]
    examples, truncated = encode(tokenizer, texts)
    targets = np.array([i for _, i, _ in rows], dtype=np.int64)
    return LabeledExamples(examples, targets, labels, [s for _, _, s in rows], skipped, dict(preprocessing), texts, truncated)


__all__ = ["MAX_BYTES", "encode", "load_tokenizer", "read_lines", "read_text_support"]
