"""Text task sources: the intent benchmarks' protocols (real data), the labeled-text source, tokenization,
and the text episode sampler (same draws as the image sampler, per-batch padding, precomputed features)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from metactl.config import TrainConfig
from metactl.data import held_out_sampler, open_data, resolve, split_classes
from metactl.data.episodes import ClassificationEpisodes, ImagePool, training_tasks
from metactl.data.text import (
    TEST_DOMAINS,
    TRAIN_DOMAINS,
    VAL_DOMAINS,
    LabeledText,
    TextPool,
    backbone_pooling,
    find_datasets,
    load_banking77,
    load_tokenizer,
    protocol_texts,
    read_labeled_texts,
    tokenize,
)
from metactl.errors import MetactlError
from tests.conftest import SHARED, _real_data

INTENTS = SHARED / "intents"
MINILM = SHARED.parent / "models" / "all-MiniLM-L6-v2"


@pytest.fixture
def intents_dir() -> Path:
    return _real_data(INTENTS / "clinc150" / "data_full.json", "The intents datasets", "shared/datasets/intents").parent


@pytest.fixture
def minilm_dir() -> Path:
    return _real_data(MINILM / "tokenizer.json", "all-MiniLM-L6-v2", "shared/models")


# --- a tiny word-level backbone folder (a real tokenizers file; the weights are a stand-in) ------

WORDS = [f"w{i}" for i in range(200)]
PAD, UNK, CLS, SEP = 0, 1, 2, 3


def make_backbone(folder: Path) -> Path:
    vocab = {"[PAD]": PAD, "[UNK]": UNK, "[CLS]": CLS, "[SEP]": SEP, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "model.safetensors").write_bytes(b"stand-in weights")
    return folder


def ids_of(text: str) -> list[int]:
    """The reference tokenization of the tiny backbone, by hand."""
    return [CLS, *(int(w[1:]) + 4 for w in text.split()), SEP]


@pytest.fixture
def backbone(tmp_path: Path) -> Path:
    return make_backbone(tmp_path / "tiny-bert")


def corpus(classes: int = 8, per: int = 12, seed: int = 0) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    return {f"label{c}": [" ".join(rng.choice(WORDS, size=rng.integers(1, 9))) for _ in range(per)] for c in range(classes)}


def write_csv(path: Path, texts: dict[str, list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["label", "text"])
        for label, ts in texts.items():
            w.writerows([label, t] for t in ts)
    return path


def cfg_for(data: str, backbone: Path | None, **kw: Any) -> TrainConfig:
    return TrainConfig(data=data, backbone=None if backbone is None else str(backbone), **kw)


# --- the intent benchmarks: protocols on the real data ---------------------------------------------


def test_domains_protocol_is_the_documented_clinc150_split(intents_dir: Path) -> None:
    parts = protocol_texts(find_datasets(intents_dir, "x"), "domains")
    raw = json.loads((intents_dir / "clinc150" / "data_full.json").read_text())
    domains = json.loads((intents_dir / "clinc150" / "domains.json").read_text())
    assert len(TRAIN_DOMAINS) + len(VAL_DOMAINS) + len(TEST_DOMAINS) == len(domains) == 10
    assert {k: len(v) for k, v in parts.items()} == {"train": 105, "val": 15, "test": 30}
    for part, names, split in (("train", TRAIN_DOMAINS, "train"), ("val", VAL_DOMAINS, "train"), ("test", TEST_DOMAINS, "test")):
        intents = {i for d in names for i in domains[d]}
        assert set(parts[part]) == intents
        expected = {i: [t for t, lab in raw[split] if lab == i] for i in intents}  # independent: straight from the JSON
        assert parts[part] == expected
    assert all(len(t) == 100 for t in parts["train"].values()) and all(len(t) == 30 for t in parts["test"].values())
    assert not (set(parts["train"]) & set(parts["val"]) or set(parts["train"]) & set(parts["test"]) or set(parts["val"]) & set(parts["test"]))
    assert "oos" not in set(parts["train"]) | set(parts["val"]) | set(parts["test"])


@pytest.mark.parametrize(("unseen", "n_test", "seen_intents", "seen_texts"), [("clinc150", 150, 77 + 64, 10003 + 8954), ("hwu64", 64, 150 + 77, 15000 + 10003)])
def test_cross_dataset_protocols(intents_dir: Path, unseen: str, n_test: int, seen_intents: int, seen_texts: int) -> None:
    found = find_datasets(intents_dir, "x")
    parts = protocol_texts(found, f"unseen-{unseen}", 0.1, seed=3, ways=5)
    assert len(parts["test"]) == n_test and all(n.startswith(f"{unseen}/") for n in parts["test"])
    assert not any(n.startswith(f"{unseen}/") for n in [*parts["train"], *parts["val"]])
    assert len(parts["train"]) + len(parts["val"]) == seen_intents and len(parts["val"]) == round(0.1 * seen_intents)
    assert not set(parts["train"]) & set(parts["val"])
    assert sum(len(t) for p in ("train", "val") for t in parts[p].values()) == seen_texts  # every train-split text, none of the test splits
    again = protocol_texts(found, f"unseen-{unseen}", 0.1, seed=3, ways=5)
    other = protocol_texts(found, f"unseen-{unseen}", 0.1, seed=4, ways=5)
    assert list(again["val"]) == list(parts["val"]) and set(other["val"]) != set(parts["val"])


def test_banking77_read_with_a_real_csv_parser(intents_dir: Path) -> None:
    data = load_banking77(intents_dir / "banking77")
    categories = json.loads((intents_dir / "banking77" / "categories.json").read_text())
    assert set(data["train"]) == set(data["test"]) == set(categories)
    assert sum(map(len, data["train"].values())) == 10003 and all(len(t) == 40 for t in data["test"].values())
    texts = [t for ts in data["train"].values() for t in ts]
    assert all(t == t.strip() and t for t in texts)
    # 10 quoted fields hold newlines: each stays one text, stripped (a line reader would split them)
    assert "I can't seem to be able to use my card" in texts and "\nI can't seem to be able to use my card\n\n\n" not in texts
    assert [t for t in texts if "\n" in t] == ["I have an account at another bank, but I want to transfer some of the money to my account here.\n."]


def test_open_intents_with_minilm(intents_dir: Path, minilm_dir: Path) -> None:
    cfg = cfg_for(f"intents:{intents_dir}", minilm_dir, protocol="domains", ways=5, shots=5, query_shots=15, max_length=32)
    data = open_data(cfg)
    assert data.kind == "classification"
    assert data.spec["kind"] == "intents" and data.spec["protocol"] == "domains" and data.spec["max_length"] == 32
    assert data.spec["intents"] == {"train": 105, "val": 15, "test": 30}
    assert data.preprocessing == {"kind": "text", "tokenizer": str(minilm_dir.resolve() / "tokenizer.json"), "max_length": 32}
    sha = hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest()
    assert data.model_spec == {
        "kind": "text-classifier",
        "backbone": str(minilm_dir.resolve()),
        "backbone_sha256": sha,
        "num_classes": 5,
        "adapt": "head",  # the default on a --backbone
        "lora_rank": 8,
        "train_body": False,
        "pooling": "mean",
        "normalize": True,
        "max_length": 32,
    }
    assert data.split["test"] == list(TEST_DOMAINS)
    # token ids are the tokenizer's own (independent: tokenizers, no metactl code)
    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(32)
    raw = json.loads((intents_dir / "clinc150" / "data_full.json").read_text())
    pool = data.train.pool
    c = pool.names().index("balance")
    first = [t for t, lab in raw["train"] if lab == "balance"][:3]
    got = pool.take([(c, np.arange(3))])
    for i, text in enumerate(first):
        ref = tok.encode(text).ids
        assert got["input_ids"][i, : len(ref)].tolist() == ref and got["attention_mask"][i].sum() == len(ref)
    ep = data.train.sample(np.random.default_rng(0), 2)
    assert ep.support_x["input_ids"].shape[:2] == (2, 25) and ep.query_x["input_ids"].shape[:2] == (2, 75)


def test_evaluate_gets_the_test_domains_from_the_test_split(intents_dir: Path, minilm_dir: Path) -> None:
    meta = {
        "config": {"ways": 5},
        "data": {"kind": "intents", "path": str(intents_dir.resolve()), "protocol": "domains"},
        "preprocessing": {"kind": "text", "tokenizer": str(minilm_dir / "tokenizer.json"), "max_length": 64},
    }
    sampler = held_out_sampler(meta, None, 5, 5, 15)
    assert isinstance(sampler, ClassificationEpisodes) and isinstance(sampler.pool, TextPool)
    domains = json.loads((intents_dir / "clinc150" / "domains.json").read_text())
    assert set(sampler.pool.names()) == {i for d in TEST_DOMAINS for i in domains[d]}
    assert len(sampler.pool) == 30 * 30
    cross = held_out_sampler(meta, f"intents:{intents_dir}", 5, 1, 2, "unseen-hwu64")
    assert cross.pool.num_classes == 64 and len(cross.pool) == 1076
    whole = held_out_sampler(meta, f"intents:{intents_dir / 'banking77'}", 5, 1, 2)  # a given folder, no protocol: all its intents
    assert whole.pool.num_classes == 77 and len(whole.pool) == 3080


# --- protocol and backbone errors ------------------------------------------------------------------


def test_intents_errors(tmp_path: Path, backbone: Path, intents_dir: Path) -> None:
    with pytest.raises(MetactlError, match=r"--data intents:.* needs --backbone DIR") as e:
        open_data(cfg_for(f"intents:{intents_dir}", None))
    assert "tokenizer.json" in (e.value.hint or "")
    (tmp_path / "no-tok").mkdir()
    with pytest.raises(MetactlError, match=r"no tokenizer\.json"):
        open_data(cfg_for(f"intents:{intents_dir}", tmp_path / "no-tok"))
    with pytest.raises(MetactlError, match="--protocol vinyals is not a protocol of --data intents:"):
        open_data(cfg_for(f"intents:{intents_dir}", backbone, protocol="vinyals"))
    with pytest.raises(MetactlError, match="--protocol domains splits CLINC150 by domain"):
        open_data(cfg_for(f"intents:{intents_dir / 'banking77'}", backbone, protocol="domains"))
    with pytest.raises(MetactlError, match="--protocol unseen-hwu64 needs all three datasets"):
        open_data(cfg_for(f"intents:{intents_dir / 'clinc150'}", backbone, protocol="unseen-hwu64"))
    with pytest.raises(MetactlError, match=r"no CLINC150 .* files found"):
        open_data(cfg_for(f"intents:{tmp_path}", backbone))
    with pytest.raises(MetactlError, match=r"unseen-hwu64 test data has 63 classes with at least 4 texts"):
        held_out_sampler(
            {"data": {}, "preprocessing": {"kind": "text", "tokenizer": str(backbone / "tokenizer.json"), "max_length": 8}},
            f"intents:{intents_dir}",
            64,
            1,
            3,
            "unseen-hwu64",
        )


def test_a_clinc150_release_missing_a_listed_intent_is_one_clear_error(tmp_path: Path, intents_dir: Path) -> None:
    """domains.json and data_full.json from different releases: a MetactlError naming file and intent, not a KeyError."""
    clinc = tmp_path / "clinc150"
    clinc.mkdir()
    (clinc / "domains.json").write_bytes((intents_dir / "clinc150" / "domains.json").read_bytes())
    data = json.loads((intents_dir / "clinc150" / "data_full.json").read_text())
    gone = json.loads((clinc / "domains.json").read_text())[TEST_DOMAINS[0]][0]
    data["test"] = [pair for pair in data["test"] if pair[1] != gone]
    (clinc / "data_full.json").write_text(json.dumps(data))
    with pytest.raises(MetactlError, match=rf"data_full\.json: no test examples of intent {gone}, which domains\.json lists"):
        protocol_texts({"clinc150": clinc}, "domains")


def test_config_accepts_the_intents_protocols_and_text_fields() -> None:
    for p in ("domains", "unseen-clinc150", "unseen-banking77", "unseen-hwu64", "lake", "vinyals"):
        assert TrainConfig(protocol=p).protocol == p
    with pytest.raises(MetactlError) as e:
        TrainConfig(protocol="clinc", adapt="some", lora_rank=0, max_length=1)
    for words in ("protocol must be one of", "adapt must be", "lora-rank must be", "max-length must be"):
        assert words in e.value.message
    c = TrainConfig(backbone="/m", adapt="lora", lora_rank=4, train_body=True, max_length=32)
    assert (c.backbone, c.adapt, c.lora_rank, c.train_body, c.max_length) == ("/m", "lora", 4, True, 32)
    assert TrainConfig().backbone is None and TrainConfig().adapt == "all"


def test_backbone_pooling(tmp_path: Path, minilm_dir: Path) -> None:
    assert backbone_pooling(minilm_dir) == {"pooling": "mean", "normalize": True}
    plain = tmp_path / "plain"
    plain.mkdir()
    assert backbone_pooling(plain) == {"pooling": "mean", "normalize": False}
    st = tmp_path / "st"
    (st / "pool").mkdir(parents=True)
    (st / "modules.json").write_text(json.dumps([{"path": "", "type": "x.Transformer"}, {"path": "pool", "type": "sentence_transformers.models.Pooling"}]))
    (st / "pool" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert backbone_pooling(st) == {"pooling": "cls", "normalize": False}
    (st / "pool" / "config.json").write_text(json.dumps({"pooling_mode_mean_sqrt_len_tokens": True}))
    with pytest.raises(MetactlError, match="pooling 'mean_sqrt_len_tokens' is not supported"):
        backbone_pooling(st)


# --- tokenization ----------------------------------------------------------------------------------


def test_tokenize_pads_per_batch_and_truncates(backbone: Path) -> None:
    tok = load_tokenizer(backbone / "tokenizer.json", 6)
    out = tokenize(tok, ["w1 w2", "w9", "w1 w2 w3 w4 w5 w6 w7 w8"], 6)
    assert out["input_ids"].dtype == np.int64 and out["attention_mask"].dtype == np.int64
    assert out["input_ids"].tolist() == [
        [CLS, 5, 6, SEP, PAD, PAD],
        [CLS, 13, SEP, PAD, PAD, PAD],
        [CLS, 5, 6, 7, 8, SEP],  # truncated at 6 tokens, special tokens included
    ]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1] * 6]
    short = tokenize(tok, ["w1", "w2"], 64)
    assert short["input_ids"].shape == (2, 3)  # the batch's longest, not a fixed length


def test_max_length_is_applied_and_recorded(tmp_path: Path, backbone: Path) -> None:
    texts = {f"l{c}": [" ".join(WORDS[: 3 + i]) for i in range(6)] for c in range(6)}
    path = write_csv(tmp_path / "t.csv", texts)
    data = open_data(cfg_for(str(path), backbone, max_length=5, ways=2, shots=1, query_shots=1, val_classes=0.3))
    assert data.preprocessing == {"kind": "text", "tokenizer": str(backbone.resolve() / "tokenizer.json"), "max_length": 5}
    assert data.spec["max_length"] == 5 and data.spec["truncated"] == 30  # texts of 4 words or more (3 words + [CLS] + [SEP] fit)
    ep = data.train.sample(np.random.default_rng(0), 3)
    assert ep.support_x["input_ids"].shape[-1] == 5 and (ep.support_x["input_ids"][..., -1] == SEP).all()


# --- episodes --------------------------------------------------------------------------------------


def pool_of(texts: dict[str, list[str]], backbone: Path, max_length: int = 64) -> TextPool:
    return TextPool.from_texts(texts, load_tokenizer(backbone / "tokenizer.json", max_length), max_length)


class IndexPool(ImagePool):
    """Images whose single pixel is the example's index: what ClassificationEpisodes picks, readable."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def count(self, c: int) -> int:
        return self.counts[c]

    def get(self, c: int) -> np.ndarray:
        return np.arange(self.counts[c], dtype=np.uint8)[:, None, None]

    def names(self) -> list[str]:
        return [str(c) for c in range(len(self.counts))]


def test_text_episodes_draw_exactly_what_image_episodes_draw(backbone: Path) -> None:
    counts = [12, 5, 9, 30, 7, 15, 3, 11]
    # text i of class c is "w<c> w<i>" plus i % 4 filler words: lengths vary within a batch
    texts = {f"c{c}": [" ".join([f"w{c}", f"w{i}", *WORDS[100 : 100 + i % 4]]) for i in range(n)] for c, n in enumerate(counts)}
    text_eps = ClassificationEpisodes(pool_of(texts, backbone), 4, 2, 3)
    image_eps = ClassificationEpisodes(IndexPool(counts), 4, 2, 3)
    assert text_eps.eligible.tolist() == image_eps.eligible.tolist() == [0, 1, 2, 3, 4, 5, 7]
    for seed in range(5):
        t = text_eps.sample(np.random.default_rng(seed), 3)
        im = image_eps.sample(np.random.default_rng(seed), 3)
        assert np.array_equal(t.classes, im.classes)
        assert np.array_equal(t.support_y, im.support_y) and np.array_equal(t.query_y, im.query_y)
        for x, ix in ((t.support_x, im.support_x), (t.query_x, im.query_x)):
            ids, mask = x["input_ids"], x["attention_mask"]
            assert ids.shape == mask.shape and ids.shape[:2] == ix.shape[:2]
            assert np.array_equal(ids[:, :, 2] - 4, ix[:, :, 0, 0, 0])  # the same example indices
            classes = np.repeat(t.classes, ids.shape[1] // t.classes.shape[1], axis=1)
            assert np.array_equal(ids[:, :, 1] - 4, classes)  # of the same classes, class-major
            lengths = 4 + (ids[:, :, 2] - 4) % 4
            assert np.array_equal(mask.sum(-1), lengths) and ids.shape[-1] == lengths.max()  # padded to the batch's longest
            assert (ids[mask == 0] == PAD).all() and (mask == (np.arange(ids.shape[-1]) < lengths[..., None])).all()
    assert t.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_sampling_is_a_function_of_the_seed(backbone: Path) -> None:
    eps = ClassificationEpisodes(pool_of(corpus(), backbone), 5, 1, 2)
    a, b, c = (eps.sample(np.random.default_rng(s), 4) for s in (7, 7, 8))
    for key in ("input_ids", "attention_mask"):
        assert np.array_equal(a.support_x[key], b.support_x[key]) and np.array_equal(a.query_x[key], b.query_x[key])
    assert not np.array_equal(a.classes, c.classes)


def test_training_tasks_pads_tasks_to_the_longest(backbone: Path) -> None:
    texts = {f"c{c}": [" ".join(WORDS[: 1 + (c * 7 + i) % 11]) for i in range(6)] for c in range(6)}
    eps = ClassificationEpisodes(pool_of(texts, backbone), 2, 1, 1)
    batch = training_tasks(eps, 0, 5, range(4))
    parts = [eps.sample(np.random.default_rng([0, 0, 5, i]), 1) for i in range(4)]
    assert len({p.support_x["input_ids"].shape[-1] for p in parts}) > 1  # the tasks' own lengths differ
    width = max(p.support_x["input_ids"].shape[-1] for p in parts)
    assert batch.support_x["input_ids"].shape == (4, 2, width)
    for i, p in enumerate(parts):
        n = p.support_x["input_ids"].shape[-1]
        for key in ("input_ids", "attention_mask"):
            assert np.array_equal(batch.support_x[key][i, :, :n], p.support_x[key][0]) and (batch.support_x[key][i, :, n:] == 0).all()


def test_precompute_equals_features_computed_per_episode(backbone: Path) -> None:
    def fn(x: dict[str, np.ndarray]) -> np.ndarray:
        ids, mask = x["input_ids"], x["attention_mask"]
        return np.stack([(ids * mask).sum(-1), mask.sum(-1), ids[:, 1]], axis=-1).astype(np.float32)

    eps = ClassificationEpisodes(pool_of(corpus(per=13), backbone), 3, 2, 4)
    before = [eps.sample(np.random.default_rng(s), 2) for s in range(4)]
    seen: list[int] = []
    eps.precompute(fn, batch_size=7, progress=lambda done, total: seen.append(done))
    assert seen[-1] == len(eps.pool) == 8 * 13 and len(seen) == -(-104 // 7)
    for s, ep in enumerate(before):
        after = eps.sample(np.random.default_rng(s), 2)
        assert set(after.support_x) == {"features"} and after.support_x["features"].dtype == np.float32
        for x, y in ((ep.support_x, after.support_x), (ep.query_x, after.query_x)):
            b, m, length = x["input_ids"].shape
            ref = fn({k: v.reshape(b * m, length) for k, v in x.items()}).reshape(b, m, -1)
            assert np.array_equal(y["features"], ref)
        assert np.array_equal(after.support_y, ep.support_y) and np.array_equal(after.classes, ep.classes)


def test_too_few_texts_for_the_episode(backbone: Path) -> None:
    with pytest.raises(MetactlError, match=r"The validation data has 2 classes with at least 13 texts .* a 3-way episode needs 3"):
        ClassificationEpisodes(pool_of({**corpus(classes=2, per=13), "few": ["w1"] * 12, "one": ["w1"]}, backbone), 3, 3, 10, "validation")


# --- the labeled-text source -----------------------------------------------------------------------


def test_csv_tsv_jsonl_and_folders_read_the_same_texts(tmp_path: Path) -> None:
    texts = {"alpha": ["hi, there", 'say "yes"', "two\nlines"], "beta": ["b one", "b two"]}
    write_csv(tmp_path / "a.csv", texts)
    write_csv(tmp_path / "a.tsv", texts, "\t")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t, "label": k}) for k, ts in texts.items() for t in ts) + "\n\n", encoding="utf-8")
    per_file = tmp_path / "files"
    for k, ts in texts.items():
        (per_file / k).mkdir(parents=True)
        for i, t in enumerate(ts):
            (per_file / k / f"{i}.txt").write_text(f"  {t}\n", encoding="utf-8")
    for path in ("a.csv", "a.tsv", "a.jsonl", "files"):
        assert read_labeled_texts(tmp_path / path, path) == texts
    lines = tmp_path / "lines"
    lines.mkdir()
    (lines / "alpha.txt").write_text("one\n\n  two \n", encoding="utf-8")
    (lines / "beta.txt").write_text("three", encoding="utf-8")
    assert read_labeled_texts(lines, "lines") == {"alpha": ["one", "two"], "beta": ["three"]}


def test_labeled_text_errors(tmp_path: Path, backbone: Path) -> None:
    (tmp_path / "cols.csv").write_text("sentence,intent\nhello,greet\n", encoding="utf-8")
    with pytest.raises(MetactlError, match=r"cols.csv: needs a header with 'text' and 'label' columns \(found 'sentence', 'intent'\)"):
        read_labeled_texts(tmp_path / "cols.csv", "cols.csv")
    (tmp_path / "latin.csv").write_bytes("text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(MetactlError, match=r"latin.csv:3: not UTF-8"):
        read_labeled_texts(tmp_path / "latin.csv", "latin.csv")
    (tmp_path / "empty.csv").write_text("text,label\nok,a\nhm, \n", encoding="utf-8")
    with pytest.raises(MetactlError, match=r"empty.csv:3: empty label"):
        read_labeled_texts(tmp_path / "empty.csv", "empty.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(MetactlError, match=r'bad.jsonl:2: needs an object with "text" and "label" keys'):
        read_labeled_texts(tmp_path / "bad.jsonl", "bad.jsonl")
    (tmp_path / "long.csv").write_text("text,label\n" + "x" * 1_100_000 + ",a\n", encoding="utf-8")  # the 1 MB bound adapt has
    with pytest.raises(MetactlError, match=r"long.csv:2: line longer than 1 MB"):
        read_labeled_texts(tmp_path / "long.csv", "long.csv")
    with pytest.raises(MetactlError, match=r"--data text:nope.csv: no such file"):
        open_data(cfg_for("text:nope.csv", backbone))
    with pytest.raises(MetactlError, match=r"--data .*a.csv needs --backbone DIR"):
        open_data(cfg_for(str(write_csv(tmp_path / "a.csv", corpus())), None))


def test_a_bare_csv_path_is_labeled_text(tmp_path: Path, backbone: Path) -> None:
    texts = corpus(classes=10, per=6)
    path = write_csv(tmp_path / "mine.csv", texts)
    src, arg = resolve(str(path))
    assert isinstance(src, LabeledText) and arg == str(path)
    cfg = cfg_for(str(path), backbone, ways=3, shots=2, query_shots=2, val_classes=0.3, seed=5)
    data = open_data(cfg)
    labels = sorted(texts)
    train_ids, val_ids = split_classes(10, 0.3, 5, 3)
    assert data.split == {"train": [labels[i] for i in train_ids], "val": [labels[i] for i in val_ids]}
    assert data.train.pool.names() == data.split["train"] and data.val.pool.names() == data.split["val"]
    assert data.spec == {"kind": "text", "path": str(path.resolve()), "classes": 10, "texts": 60, "max_length": 64, "truncated": 0}
    assert data.model_spec["kind"] == "text-classifier" and data.model_spec["pooling"] == "mean" and data.model_spec["normalize"] is False
    c = data.train.pool.names().index(labels[train_ids[0]])
    got = data.train.pool.take([(c, np.arange(6))])
    for i, text in enumerate(texts[labels[train_ids[0]]]):
        assert got["input_ids"][i, : len(ids_of(text))].tolist() == ids_of(text)
    meta = {"data": data.spec, "split": data.split, "preprocessing": data.preprocessing}
    own = held_out_sampler(meta, None, 3, 1, 1)
    assert own.pool.names() == data.split["val"]
    other = write_csv(tmp_path / "other.csv", corpus(classes=4, per=3, seed=9))
    assert held_out_sampler(meta, str(other), 3, 1, 1).pool.names() == [f"label{i}" for i in range(4)]
    with pytest.raises(MetactlError, match="this run was not trained on text"):
        held_out_sampler({"data": {}, "preprocessing": {"size": 28}}, str(other), 3, 1, 1)
