"""One reader per modality: the same tricky labeled texts (a BOM, capitalised headers, decomposed
Unicode labels, quoted newlines, CRLF, nested label folders, hidden entries, ``<label>.txt`` line files,
TSV, JSONL) read by meta-train's ``text:PATH`` source (and evaluate's ``read_labeled_texts``) and by
adapt's support reader give the same labels and the same examples, tokenized alike by the real MiniLM
``tokenizer.json``; ``metactl meta-train --data text:FILE.csv`` accepts ``Text,Label``. And the image
readers of meta-train (class folders) and adapt (support folders) decode a file to the same pixels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
from tokenizers import Tokenizer
from typer.testing import CliRunner

from metactl.cli import app
from metactl.config import TrainConfig
from metactl.data import open_data, resolve
from metactl.data.folder import load_folder
from metactl.data.support import read_labeled_folder
from metactl.data.support_text import read_text_support
from metactl.data.text import LabeledText, read_labeled_texts
from metactl.data.text_files import MAX_BYTES
from metactl.errors import MetactlError
from metactl.testing import make_image_folder
from tests.conftest import MINILM, _real_data

CAFE, CAFE_DECOMPOSED = "caf\u00e9", "cafe\u0301"  # the same label, NFC and NFD
# label (NFC) -> its texts in reading order; labels in code-point order
EXPECTED = {
    CAFE: ["un café, s'il vous plaît", "two\nlines about coffee", "a third, deeper one"],
    "greet": ["hello there", "good morning"],
    "travel": ["book a flight to paris", 'say "yes" to rome'],
    "weather": ["what's the weather", "rain tomorrow?"],
}
ROWS = [("greet", 0), (CAFE_DECOMPOSED, 0), ("travel", 0), (CAFE, 1), ("weather", 0), ("greet", 1), (CAFE_DECOMPOSED, 2), ("travel", 1), ("weather", 1)]
BOM = "\ufeff"


@pytest.fixture(scope="module")
def tokenizer_json() -> Path:
    return _real_data(MINILM / "tokenizer.json", "all-MiniLM-L6-v2", "METACTL_MINILM") / "tokenizer.json"


def _text(row: tuple[str, int]) -> str:
    label, i = row
    return EXPECTED[CAFE if label == CAFE_DECOMPOSED else label][i]


def write_layout(root: Path, kind: str) -> Path:
    """EXPECTED written as ``kind``: the labels of some rows decomposed, a BOM, odd headers."""
    root.mkdir(parents=True)
    if kind in ("csv", "tsv"):
        path = root / f"texts.{kind}"
        with path.open("w", newline="", encoding="utf-8") as f:  # csv's \r\n line ends; "two\nlines" quoted
            f.write(BOM)
            w = csv.writer(f, delimiter="," if kind == "csv" else "\t")
            w.writerow(["Id", "Text", "Label"] if kind == "csv" else [" id ", " TEXT ", " label "])
            w.writerows([n, _text(r), r[0]] for n, r in enumerate(ROWS))
        return path
    if kind == "jsonl":
        path = root / "texts.jsonl"
        lines = [json.dumps({"label": r[0], "text": _text(r)}, ensure_ascii=n % 2 == 0) for n, r in enumerate(ROWS)]
        path.write_text(BOM + "\n".join(lines) + "\n\n", encoding="utf-8")
        return path
    # a folder: café/ (decomposed name) and travel/ one text per file, nested; greet.txt and weather.txt one per line
    cafe = root / CAFE_DECOMPOSED
    (cafe / "more" / "deeper").mkdir(parents=True)
    (cafe / "01.txt").write_text(BOM + EXPECTED[CAFE][0] + "\n", encoding="utf-8")
    (cafe / "more" / "02.txt").write_text(EXPECTED[CAFE][1], encoding="utf-8")
    (cafe / "more" / "deeper" / "03.txt").write_text("  " + EXPECTED[CAFE][2] + "\r\n", encoding="utf-8")
    (cafe / "more" / "notes.md").write_text("not an example", encoding="utf-8")
    (root / "travel" / "sub").mkdir(parents=True)
    (root / "travel" / "a.txt").write_text(EXPECTED["travel"][0], encoding="utf-8")
    (root / "travel" / "sub" / "b.txt").write_text(EXPECTED["travel"][1], encoding="utf-8")
    (root / "travel" / ".hidden").mkdir()
    (root / "travel" / ".hidden" / "c.txt").write_text("never read", encoding="utf-8")
    (root / "travel" / ".c.txt").write_text("never read", encoding="utf-8")
    (root / "greet.txt").write_text(BOM + "\n\n".join(EXPECTED["greet"]) + "\n  \n", encoding="utf-8")
    (root / "weather.txt").write_bytes("\r\n".join(EXPECTED["weather"]).encode("utf-8"))
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "README.md").write_text("not a label", encoding="utf-8")
    return root


LAYOUTS = ["csv", "tsv", "jsonl", "folder"]


def _reference_ids(tokenizer_json: Path, texts: list[str], max_length: int) -> list[list[int]]:
    """Independent of metactl: the tokenizer's own encode, its fixed padding off, truncating at max_length."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return [e.ids for e in tok.encode_batch(texts)]


def _rows(ids: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    assert ids.shape == mask.shape and ids.dtype == mask.dtype == np.int64
    for row, m in zip(ids, mask, strict=True):
        n = int(m.sum())
        assert m.tolist() == [1] * n + [0] * (len(m) - n) and not row[n:].any()
    return [row[: int(m.sum())].tolist() for row, m in zip(ids, mask, strict=True)]


@pytest.mark.parametrize("kind", LAYOUTS)
def test_meta_train_and_adapt_read_the_same_labels_and_examples(tmp_path: Path, tokenizer_json: Path, kind: str) -> None:
    path = write_layout(tmp_path / kind, kind)
    # meta-train's and evaluate's reader
    texts = read_labeled_texts(path, f"text:{path}")
    assert texts == EXPECTED and list(texts) == list(EXPECTED)
    # adapt's reader (tokenized)
    support = read_text_support(path, {"kind": "text", "tokenizer": str(tokenizer_json), "max_length": 64})
    assert support.labels == list(EXPECTED)
    assert support.texts == [t for ts in EXPECTED.values() for t in ts]
    assert [support.labels[t] for t in support.targets] == [label for label, ts in EXPECTED.items() for _ in ts]
    want = _reference_ids(tokenizer_json, support.texts, 64)
    assert _rows(support.examples["input_ids"], support.examples["attention_mask"]) == want  # type: ignore[index]
    assert support.examples["input_ids"].shape[1] == max(len(w) for w in want)  # type: ignore[index]  # padded per set, not to 128
    if kind == "folder":
        assert sorted(Path(s).name for s in support.skipped) == [".DS_Store", ".c.txt", ".hidden", "README.md", "notes.md"]
        assert support.files[:3] == [str(path / CAFE_DECOMPOSED / "01.txt"), str(path / CAFE_DECOMPOSED / "more" / "02.txt"),
                                     str(path / CAFE_DECOMPOSED / "more" / "deeper" / "03.txt")]  # fmt: skip
    else:
        lines = [2, 4, 7] if kind == "jsonl" else [3, 5, 9]  # a CSV row's line is where it starts ("two\nlines" spans 5-6)
        assert support.skipped == [] and support.files[:3] == [f"{path}:{n}" for n in lines]


@pytest.mark.parametrize("kind", LAYOUTS)
def test_the_text_data_source_meta_trains_on_those_labels_and_tokens(tmp_path: Path, tokenizer_json: Path, kind: str) -> None:
    path = write_layout(tmp_path / kind, kind)
    spec = f"text:{path}"
    assert isinstance(resolve(spec)[0], LabeledText)
    cfg = TrainConfig(data=spec, backbone=str(tokenizer_json.parent), ways=2, shots=1, query_shots=1, max_length=64)
    data = open_data(cfg)
    assert sorted(data.split["train"] + data.split["val"]) == list(EXPECTED)
    assert data.spec["classes"] == 4 and data.spec["texts"] == 9
    for sampler, labels in ((data.train, data.split["train"]), (data.val, data.split["val"])):
        pool = sampler.pool
        assert pool.names() == labels
        for c, label in enumerate(labels):
            got = pool.take([(c, np.arange(pool.count(c)))])
            assert _rows(got["input_ids"], got["attention_mask"]) == _reference_ids(tokenizer_json, EXPECTED[label], 64)


def test_meta_train_cli_accepts_capitalised_headers(tmp_path: Path, tokenizer_json: Path) -> None:
    """The issue's case: a ``Text,Label`` CSV that adapt accepted and meta-train refused."""
    path = write_layout(tmp_path / "data", "csv")
    out = tmp_path / "run"
    args = ["meta-train", "--backbone", str(tokenizer_json.parent), "--adapt", "head", "--data", f"text:{path}", "--ways", "2", "--shots", "1",
            "--query-shots", "1", "--meta-batch", "1", "--steps", "1", "--inner-steps", "1", "--test-inner-steps", "1", "--eval-every", "0",
            "--eval-episodes", "1", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "metactl.json").read_text(encoding="utf-8"))
    assert sorted(meta["split"]["train"] + meta["split"]["val"]) == list(EXPECTED)


def _both_refuse(path: Path, tokenizer_json: Path) -> tuple[str, str]:
    with pytest.raises(MetactlError) as train:
        read_labeled_texts(path, f"text:{path}")
    with pytest.raises(MetactlError) as adapt:
        read_text_support(path, {"kind": "text", "tokenizer": str(tokenizer_json), "max_length": 64})
    return str(train.value), str(adapt.value)


def test_labels_differing_only_in_case_are_refused_by_both(tmp_path: Path, tokenizer_json: Path) -> None:
    root = write_layout(tmp_path / "shots", "folder")
    (root / "Greet.txt").write_text("hi\n", encoding="utf-8")
    for message in _both_refuse(root, tokenizer_json):
        assert f"labels 'Greet' (at {root / 'Greet.txt'}:1) and 'greet' (at {root / 'greet.txt'}:1) differ only in case" in message


def test_a_quoted_field_over_the_bound_is_refused_by_both(tmp_path: Path, tokenizer_json: Path) -> None:
    """Each physical line is short, the quoted field spanning them is over MAX_BYTES."""
    path = tmp_path / "big.csv"
    line = "x" * 1000 + "\n"
    path.write_text('text,label\nok,a\n"' + line * (MAX_BYTES // len(line) + 5) + '",b\n', encoding="utf-8")
    for message in _both_refuse(path, tokenizer_json):
        assert f"{path}:" in message and "field larger than field limit" in message


def test_errors_name_file_and_line_in_both(tmp_path: Path, tokenizer_json: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("Text,Label\nok,a\n\"two\nlines\",b\ncaf\xe9,c\n".encode("latin-1"))
    train, adapt = _both_refuse(path, tokenizer_json)
    assert train.startswith(f"--data {path}:5: not UTF-8") and adapt.startswith(f"--support {path}:5: not UTF-8")
    path.write_text("Text,Label\nok,a\n\"two\nlines\", \n", encoding="utf-8")  # the row starts on line 3
    train, adapt = _both_refuse(path, tokenizer_json)
    assert train.startswith(f"--data {path}:3: empty label") and adapt.startswith(f"--support {path}:3: empty label")


def test_image_readers_decode_alike(tmp_path: Path) -> None:
    """meta-train's folder source and adapt's support reader: the same file gives the same pixels."""
    folder = make_image_folder(tmp_path / "img", classes=3, per_class=2, size=17)
    for prep in ({"size": 12, "channels": 1, "invert": True, "resample": "lanczos", "scale": 1 / 255},
                 {"size": 9, "channels": 3, "invert": False, "resample": "lanczos", "scale": 1 / 255}):  # fmt: skip
        pool = load_folder(folder, prep)
        support = read_labeled_folder(folder, prep)
        assert pool.names() == support.labels and np.array_equal(pool.images, support.images)
        assert not np.array_equal(pool.images[0], pool.images[2])  # different classes, different pixels
