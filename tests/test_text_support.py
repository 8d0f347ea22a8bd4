"""Text support sets (``read_support`` with ``{"kind": "text"}``): the three layouts, tokenization, and
every bad input of issue 14 item 4 as one error line naming the file (and line)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from metactl.data.examples import LabeledExamples
from metactl.data.support import read_labeled_folder
from metactl.errors import MetactlError
from metactl.modalities import read_support
from metactl.testing import make_image_folder

WORDS = "book a flight to paris cancel my order where is package play some music what weather today tomorrow please thanks the hello".split()
EXAMPLES = {
    "music": ["play some music", "play music please"],
    "travel": ["book a flight to paris", "book a flight", "flight to paris please"],
    "weather": ["what weather today", "weather tomorrow"],
}


def write_tokenizer(path: Path) -> Path:
    """A tiny WordLevel BERT-style tokenizer ([CLS] ... [SEP], lower-cased) that, like MiniLM's
    tokenizer.json, pads every input to a fixed 128 tokens and truncates at 128."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_truncation(128)
    tok.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


@pytest.fixture
def prep(tmp_path: Path) -> dict[str, object]:
    return {"kind": "text", "tokenizer": str(write_tokenizer(tmp_path / "tok" / "tokenizer.json")), "max_length": 6}


def _reference_ids(tokenizer: Path, text: str, max_length: int) -> list[int]:
    """Independent: the tokenizer's own encode with its padding off and truncation at max_length."""
    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok.encode(text).ids


def _layout(root: Path, kind: str) -> Path:
    if kind == "per-file":
        for label, texts in EXAMPLES.items():
            (root / label).mkdir(parents=True)
            for i, t in enumerate(texts):
                (root / label / f"{i}.txt").write_text(t + "\n", encoding="utf-8")
        return root
    if kind == "per-line":
        root.mkdir(parents=True)
        for label, texts in EXAMPLES.items():
            (root / f"{label}.txt").write_text("\n\n".join(texts) + "\n\n", encoding="utf-8")  # blank lines are not examples
        return root
    rows = [(t, label) for label, texts in EXAMPLES.items() for t in texts][::-1]  # file order is not label order
    root.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        path = root.with_suffix(".jsonl")
        path.write_text("".join(json.dumps({"label": lab, "text": t}) + "\n" for t, lab in rows), encoding="utf-8")
        return path
    sep = "," if kind == "csv" else "\t"
    path = root.with_suffix("." + kind)
    path.write_text(f"id{sep}text{sep}label\n" + "".join(f"{i}{sep}{t}{sep}{lab}\n" for i, (t, lab) in enumerate(rows)), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["per-file", "per-line", "csv", "tsv", "jsonl"])
def test_every_layout_reads_the_same_examples_tokenized_and_padded_per_batch(tmp_path: Path, prep: dict[str, object], kind: str) -> None:
    data = read_support(_layout(tmp_path / "shots", kind), prep)
    assert isinstance(data, LabeledExamples)
    assert data.labels == ["music", "travel", "weather"] and data.counts() == {k: len(v) for k, v in EXAMPLES.items()} and len(data) == 7
    assert data.texts is not None
    assert sorted(zip(data.texts, (data.labels[t] for t in data.targets), strict=True)) == sorted((t, k) for k, v in EXAMPLES.items() for t in v)
    ids, mask = data.examples["input_ids"], data.examples["attention_mask"]  # type: ignore[index]
    refs = [_reference_ids(Path(str(prep["tokenizer"])), t, 6) for t in data.texts]
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (7, max(len(r) for r in refs)) == (7, 6)  # not 128
    for row, m, ref in zip(ids, mask, refs, strict=True):
        assert row[: len(ref)].tolist() == ref and (row[len(ref) :] == 0).all() and m.tolist() == [1] * len(ref) + [0] * (6 - len(ref))
    assert data.truncated == 1  # "book a flight to paris": 5 words + 2 special tokens > 6


def test_padding_is_to_the_longest_example_of_the_set(tmp_path: Path, prep: dict[str, object]) -> None:
    root = tmp_path / "shots"
    root.mkdir()
    (root / "a.txt").write_text("hello\n", encoding="utf-8")
    (root / "b.txt").write_text("thanks\n", encoding="utf-8")
    data = read_support(root, prep)
    assert data.examples["input_ids"].tolist() == [[2, WORDS.index("hello") + 4, 3], [2, WORDS.index("thanks") + 4, 3]]  # type: ignore[index]
    assert data.truncated == 0


def test_image_preprocessing_goes_to_the_image_reader(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "img", classes=2, per_class=2, size=12)
    prep = {"size": 12, "channels": 1, "invert": True, "resample": "lanczos", "scale": 1 / 255}
    got, want = read_support(folder, prep), read_labeled_folder(folder, prep)
    assert got.labels == want.labels and np.array_equal(got.examples, want.images) and np.array_equal(got.targets, want.targets)  # type: ignore[arg-type]


def _error(path: Path, prep: dict[str, object]) -> str:
    before = sorted(p for p in path.parent.rglob("*"))
    with pytest.raises(MetactlError) as exc:
        read_support(path, prep)
    assert sorted(p for p in path.parent.rglob("*")) == before  # nothing written
    line = str(exc.value)
    assert "\n" not in line
    return line


def test_not_utf8_names_file_and_line(tmp_path: Path, prep: dict[str, object]) -> None:
    root = _layout(tmp_path / "shots", "per-line")
    (root / "travel.txt").write_bytes(b"book a flight\ncaf\xe9 to paris\n")  # Latin-1
    assert f"{root / 'travel.txt'}:2: not UTF-8" in _error(root, prep)


def test_not_utf8_one_example_file_names_the_file(tmp_path: Path, prep: dict[str, object]) -> None:
    root = _layout(tmp_path / "shots", "per-file")
    (root / "music" / "9.txt").write_bytes(b"\xff\xfep\x00l\x00")  # UTF-16
    assert f"{root / 'music' / '9.txt'}: not UTF-8" in _error(root, prep)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_empty_label_names_file_and_line(tmp_path: Path, prep: dict[str, object], kind: str) -> None:
    path = tmp_path / f"shots.{kind}"
    if kind == "csv":
        path.write_text("text,label\nplay music,music\nbook a flight,  \n", encoding="utf-8")
    else:
        path.write_text('{"text": "play music", "label": "music"}\n{"text": "book a flight", "label": ""}\n', encoding="utf-8")
    assert f"{path}:{3 if kind == 'csv' else 2}: empty label" in _error(path, prep)


@pytest.mark.parametrize("how", ["empty folder", "blank lines only"])
def test_label_without_examples_names_it(tmp_path: Path, prep: dict[str, object], how: str) -> None:
    root = _layout(tmp_path / "shots", "per-line")
    if how == "empty folder":
        (root / "greet").mkdir()
        (root / "greet" / "notes.md").write_text("not an example", encoding="utf-8")
        assert f"{root / 'greet'}: label folder holds no .txt files" in _error(root, prep)
    else:
        (root / "greet.txt").write_text("\n  \n\n", encoding="utf-8")
        assert f"{root / 'greet.txt'}: no examples" in _error(root, prep)


@pytest.mark.parametrize("header", ["sentence,intent", "text,category", "label"])
def test_table_without_the_columns_names_the_file(tmp_path: Path, prep: dict[str, object], header: str) -> None:
    path = tmp_path / "shots.csv"
    path.write_text(f"{header}\nplay music,music\n", encoding="utf-8")
    assert f"{path}: needs a header with 'text' and 'label' columns" in _error(path, prep)


def test_jsonl_line_without_the_keys_names_file_and_line(tmp_path: Path, prep: dict[str, object]) -> None:
    path = tmp_path / "shots.jsonl"
    path.write_text('{"text": "play music", "label": "music"}\n{"sentence": "hi", "label": "x"}\n', encoding="utf-8")
    assert f'{path}:2: needs an object with "text" and "label" keys' in _error(path, prep)


def test_a_50_mb_line_is_refused_without_reading_it_whole(tmp_path: Path, prep: dict[str, object]) -> None:
    root = _layout(tmp_path / "shots", "per-line")
    with (root / "travel.txt").open("w", encoding="utf-8") as f:
        f.write("book a flight\n")
        f.write("paris " * (50 * 1024 * 1024 // 6) + "\n")
    tracemalloc.start()
    try:
        message = _error(root, prep)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{root / 'travel.txt'}:2: line longer than 1 MB" in message
    assert peak < 8 * 1024 * 1024, f"read {peak / 2**20:.1f} MB to refuse the line"


def test_an_over_long_one_example_file_is_refused(tmp_path: Path, prep: dict[str, object]) -> None:
    root = _layout(tmp_path / "shots", "per-file")
    (root / "music" / "big.txt").write_text("music " * 300_000, encoding="utf-8")
    assert f"{root / 'music' / 'big.txt'}: example longer than 1 MB" in _error(root, prep)


@pytest.mark.parametrize("kind", ["per-line", "csv"])
def test_labels_differing_only_in_case_name_both(tmp_path: Path, prep: dict[str, object], kind: str) -> None:
    if kind == "per-line":
        root = _layout(tmp_path / "shots", "per-line")
        (root / "Music.txt").write_text("play some music\n", encoding="utf-8")
        message = _error(root, prep)
        assert f"labels 'Music' (at {root / 'Music.txt'}:1) and 'music' (at {root / 'music.txt'}:1) differ only in case" in message
    else:
        path = tmp_path / "shots.csv"
        path.write_text("text,label\nplay music,music\nbook a flight,travel\nplay some music,MUSIC\n", encoding="utf-8")
        assert "labels 'music' " in _error(path, prep) and "'MUSIC' " in _error(path, prep)


def test_one_label_is_not_enough(tmp_path: Path, prep: dict[str, object]) -> None:
    path = tmp_path / "shots.csv"
    path.write_text("text,label\nplay music,music\n", encoding="utf-8")
    assert "found 1 label ('music'); need at least 2" in _error(path, prep)
