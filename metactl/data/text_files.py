"""The one reader of labeled texts in files: meta-train's ``text:PATH``, ``evaluate --data text:PATH``,
``adapt --support`` / ``--query``, export's check and the BANKING77 CSVs all read through it.

Layouts (UTF-8, a BOM is allowed):

- ``DIR/<label>/**/*.txt``: one example per file (the file's text, stripped); the label is the folder
  directly under ``DIR``, the files may sit at any depth below it;
- ``DIR/<label>.txt``: one example per non-empty line (stripped);
- ``FILE.csv`` / ``FILE.tsv``: a header row naming a ``text`` and a ``label`` column (matched
  without case and surrounding spaces: ``Text,Label`` works), read by the csv module, so quoted
  fields may hold the delimiter and newlines;
- ``FILE.jsonl``: one ``{"text": ..., "label": ...}`` object per non-empty line.

A folder may mix the first two (``greet/`` and ``greet.txt`` are the same label). Hidden entries (at
any depth) and files of other types are skipped and reported. Labels are NFC-normalised, and two
labels differing only in case are refused. Anything else that makes the set unusable is one
:class:`MetactlError` ``"{what} FILE[:LINE]: ..."``: not UTF-8, an empty label or text, a label without
examples, a table without the columns, a line, CSV field or one-example file over :data:`MAX_BYTES`.
Lines are read with a bounded ``readline``: a 50 MB line is refused after reading 1 MB of it.

Standard library only (no tokenizers, numpy or torch): image-only installs and predict load it freely.
"""

from __future__ import annotations

import csv
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metactl.errors import MetactlError

MAX_BYTES = 1 << 20  # the longest line, CSV field or one-example file accepted: 1 MB
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")
FORMATS_HINT = "Pass a folder of <label>/*.txt or <label>.txt files, or a .csv/.tsv/.jsonl file with text and label (UTF-8)."

Found = dict[str, list[tuple[str, str]]]  # label -> [(text, source: "FILE" or "FILE:LINE")], in reading order


@dataclass
class LabeledTexts:
    """Labeled texts as read: label -> [(text, source)] with labels sorted by code point, texts in
    reading order; and the entries skipped (hidden, or not a ``.txt`` file)."""

    examples: Found
    skipped: list[str] = field(default_factory=list)

    def texts(self) -> dict[str, list[str]]:
        """label -> its texts (sources dropped)."""
        return {label: [text for text, _ in rows] for label, rows in self.examples.items()}


# --- lines and files ---------------------------------------------------------------------------------


def _decode(raw: bytes, where: str, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetactlError(f"{what} {where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1}).", "Save the file as UTF-8 text.") from None


def _cannot_read(path: Path, what: str, exc: OSError) -> MetactlError:
    return MetactlError(f"{what} {path}: cannot read ({exc.strerror}).", "Check the file's permissions.")


def physical_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line with its line ending), reading at most MAX_BYTES per line;
    a BOM at the start is dropped."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise _cannot_read(path, what, exc) from None
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
            yield number, _decode(raw, f"{path}:{number}", what)


def read_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its line ending), as :func:`physical_lines` bounds them."""
    for number, line in physical_lines(path, what):
        yield number, line.rstrip("\r\n")


def read_one_text(path: Path, what: str) -> str:
    """A one-example file's text, stripped: at most MAX_BYTES, UTF-8 (a BOM is dropped), not empty."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _cannot_read(path, what, exc) from None
    if size > MAX_BYTES:
        raise MetactlError(f"{what} {path}: example longer than {MAX_BYTES // (1 << 20)} MB.", "Shorten it: one example per file, each under 1 MB.")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _cannot_read(path, what, exc) from None
    text = _decode(raw.removeprefix(b"\xef\xbb\xbf"), str(path), what).strip()
    if not text:
        raise MetactlError(f"{what} {path}: empty example.", "Write the example's text into the file, or remove the file.")
    return text


def label_of(name: str, where: str, what: str) -> str:
    """``name`` stripped and NFC-normalised; an empty label is an error naming ``where``."""
    label = unicodedata.normalize("NFC", name.strip())
    if not label:
        raise MetactlError(f"{what} {where}: empty label.", "Give every example a non-empty label.")
    return label


# --- tables ------------------------------------------------------------------------------------------


def _adder(found: Found, what: str) -> Any:
    """``add(text, label, where)``: one table row into ``found``, checked."""

    def add(text: Any, label: Any, where: str) -> None:
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise MetactlError(f"{what} {where}: the label must be a string (got {json.dumps(label)}).", "Write the label as text.")
        if not isinstance(text, str):
            raise MetactlError(f"{what} {where}: the text must be a string (got {json.dumps(text)}).", "Write the text as a string.")
        if not text.strip():
            raise MetactlError(f"{what} {where}: empty text.", "Give every row a non-empty text, or remove the row.")
        found.setdefault(label_of(str(label), where, what), []).append((text.strip(), where))

    return add


def _read_jsonl(path: Path, what: str) -> Found:
    found: Found = {}
    add = _adder(found, what)
    for n, line in read_lines(path, what):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetactlError(f"{what} {path}:{n}: not valid JSON ({exc.msg}).", "Write one JSON object per line.") from None
        if not isinstance(row, dict) or "text" not in row or "label" not in row:
            raise MetactlError(f'{what} {path}:{n}: needs an object with "text" and "label" keys.', 'Write lines like {"text": "...", "label": "..."}.')
        add(row["text"], row["label"], f"{path}:{n}")
    return found


def _read_csv(path: Path, what: str, label_column: str, delimiter: str) -> Found:
    """Rows of a CSV/TSV whose header names ``text`` and ``label_column``; a row's source is the line it
    starts on (a quoted field may run over several lines, each bounded, the field itself too)."""
    found: Found = {}
    add = _adder(found, what)
    line_of = [0]  # the last physical line handed to the csv reader

    def lines() -> Iterator[str]:
        for n, line in physical_lines(path, what):
            line_of[0] = n
            yield line

    csv.field_size_limit(MAX_BYTES)
    reader = csv.reader(lines(), delimiter=delimiter)
    try:
        header = next(reader, None)
        columns = [c.strip().lower() for c in header or []]
        if "text" not in columns or label_column not in columns:
            shown = ", ".join(repr(c) for c in header or []) or "none"
            raise MetactlError(
                f"{what} {path}: needs a header with 'text' and '{label_column}' columns (found {shown}).",
                f"Name the columns in the first row, e.g. text{delimiter}{label_column}.",
            )
        ti, li = columns.index("text"), columns.index(label_column)
        start = line_of[0] + 1
        for row in reader:
            if any(cell.strip() for cell in row):
                if len(row) <= max(ti, li):
                    raise MetactlError(f"{what} {path}:{start}: {len(row)} columns, the header has {len(columns)}.", "Check the row's separators and quotes.")
                add(row[ti], row[li], f"{path}:{start}")
            start = line_of[0] + 1
    except csv.Error as exc:
        raise MetactlError(f"{what} {path}:{line_of[0]}: {exc}.", "Check the row's quotes (a field holds at most 1 MB).") from None
    return found


def read_table(path: Path, what: str, label_column: str = "label") -> Found:
    """label -> [(text, "FILE:LINE")] of a ``.csv``/``.tsv`` (header with ``text`` and ``label_column``,
    any case) or a ``.jsonl`` file (``text`` and ``label`` keys); labels in order of first appearance."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, what)
    return _read_csv(path, what, label_column.lower(), "\t" if suffix == ".tsv" else ",")


# --- folders -----------------------------------------------------------------------------------------


def _label_folder(folder: Path, what: str, skipped: list[str], above: frozenset[Path]) -> list[tuple[str, str]]:
    """[(text, FILE)] of every ``.txt`` file at any depth under ``folder``, in path order; hidden
    entries and other files go to ``skipped``."""
    here = folder.resolve()
    if here in above:
        raise MetactlError(f"{what} {folder}: symbolic link loop.", "Remove or fix the link.")
    out: list[tuple[str, str]] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skipped.append(str(entry))
        elif entry.is_dir():
            out += _label_folder(entry, what, skipped, above | {here})
        elif entry.suffix.lower() == ".txt":
            out.append((read_one_text(entry, what), str(entry)))
        else:
            skipped.append(str(entry))
    return out


def read_text_folder(root: Path, what: str, skipped: list[str]) -> Found:
    """label -> [(text, source)] from ``<label>/**/*.txt`` and ``<label>.txt``; skipped entries are appended to ``skipped``."""
    found: Found = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skipped.append(str(entry))
        elif entry.is_dir():
            examples = _label_folder(entry, what, skipped, frozenset())
            if not examples:
                raise MetactlError(f"{what} {entry}: label folder holds no .txt files.", "Add one .txt file per example, or remove the folder.")
            found.setdefault(label_of(entry.name, str(entry), what), []).extend(examples)
        elif entry.is_file() and entry.suffix.lower() == ".txt":
            lines = [(line.strip(), f"{entry}:{n}") for n, line in read_lines(entry, what) if line.strip()]
            if not lines:
                raise MetactlError(f"{what} {entry}: no examples (every line is empty).", "Write one example per line, or remove the file.")
            found.setdefault(label_of(entry.stem, str(entry), what), []).extend(lines)
        else:
            skipped.append(str(entry))
    return found


# --- the reader --------------------------------------------------------------------------------------


def _check_case(found: Found, path: Path, what: str) -> None:
    seen: dict[str, str] = {}
    for label in found:
        other = seen.setdefault(label.casefold(), label)
        if other != label:
            raise MetactlError(
                f"{what} {path}: labels {other!r} (at {found[other][0][1]}) and {label!r} (at {found[label][0][1]}) differ only in case.",
                "Merge or rename one of them.",
            )


def read_labeled_text_files(path: Path, what: str) -> LabeledTexts:
    """The labeled texts at ``path`` (a folder, or a ``.csv``/``.tsv``/``.jsonl`` file; see the module
    docstring), checked; nothing is written. ``what`` starts every error (``--data``, ``--support``)."""
    if not path.exists():
        raise MetactlError(f"{what} {path}: no such file or folder.", FORMATS_HINT)
    skipped: list[str] = []
    if path.is_dir():
        found = read_text_folder(path, what, skipped)
    elif path.suffix.lower() in TABLE_SUFFIXES:
        found = read_table(path, what)
    else:
        raise MetactlError(f"{what} {path}: not a folder or a .csv/.tsv/.jsonl file.", FORMATS_HINT)
    if not found:
        raise MetactlError(f"{what} {path}: no labeled examples found.", FORMATS_HINT)
    _check_case(found, path, what)
    return LabeledTexts({label: found[label] for label in sorted(found)}, skipped)


__all__ = [
    "FORMATS_HINT",
    "MAX_BYTES",
    "TABLE_SUFFIXES",
    "LabeledTexts",
    "label_of",
    "physical_lines",
    "read_labeled_text_files",
    "read_lines",
    "read_one_text",
    "read_table",
    "read_text_folder",
]
