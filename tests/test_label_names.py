"""Label names as extra support (``--label-names``): the readable name, the meta-train sampler's support
sets, adapt's head on the real all-MiniLM-L6-v2 (features computed here with transformers alone), and
labels that give no word."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from typer.testing import CliRunner

from metactl.cli import app
from metactl.config import TrainConfig
from metactl.data import open_data
from metactl.data.label_names import has_word, label_texts, readable
from metactl.errors import MetactlError
from metactl.train import meta_train

runner = CliRunner()
MAX_LENGTH = 32
TRAIN = {
    "card_arrival": ["my card has not arrived", "when will the new card come", "card still not delivered", "where is my card"],
    "lost-card": ["i lost my card", "my card is missing", "cannot find my card", "card was stolen"],
    "banking77/balance_check": ["what is my balance", "how much money do i have", "show my balance", "check the account balance"],
    "TopUpFailed": ["top up did not work", "my top-up failed", "the top up was declined", "could not top up"],
    "exchange_rate": ["what is the exchange rate", "euro to dollar rate", "how much is a pound in euro", "rate for yen"],
    "pin_blocked": ["my pin is blocked", "pin locked after tries", "unblock my pin", "pin does not work"],
}
SUPPORT = {
    "card_arrival": ["the card I ordered is late", "no card in the mail yet"],
    "exchange-rate": ["dollar to euro today", "current rate for francs"],
    "TopUpFailed": ["top up was rejected", "adding money failed"],
}


@pytest.mark.parametrize(
    ("label", "want"),
    [
        ("banking77/card_arrival", "card arrival"),
        ("hwu64/iot_hue_lighton", "iot hue lighton"),
        ("Card-Arrival", "Card Arrival"),
        ("getBalance", "get Balance"),
        ("ATMWithdrawal", "ATM Withdrawal"),
        ("  spaced__out--label  ", "spaced out label"),
        ("café_au_lait", "café au lait"),
        ("v2.0_release", "v2 0 release"),
        ("123", "123"),
        ("__", ""),
        ("clinc150/", ""),
    ],
)
def test_readable_names(label: str, want: str) -> None:
    assert readable(label) == want


def test_a_label_without_a_word_is_one_error_naming_it() -> None:
    assert [has_word(readable(x)) for x in ("123", "__", "😀", "-_-", "a1", "日本")] == [False, False, False, False, True, True]
    assert label_texts(["card_arrival", "x"]) == ["card arrival", "x"]
    for bad in ("123", "__", "😀"):
        with pytest.raises(MetactlError, match=f"label {bad!r}"):
            label_texts(["card_arrival", bad])


@pytest.fixture(scope="module")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "texts.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([(t, label) for label, texts in TRAIN.items() for t in texts])
    return path


def _cfg(minilm: Path, data: Path, **kw: object) -> TrainConfig:
    base = dict(
        algo="centroid", backbone=str(minilm), adapt="head", data=f"text:{data}", ways=2, shots=1, query_shots=1, steps=1,
        eval_every=0, eval_episodes=2, max_length=MAX_LENGTH, val_classes=0.34, threads=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_meta_train_support_sets_end_each_class_with_its_name(minilm_dir: Path, text_data: Path) -> None:
    """Each episode's support: per class its K texts, then its readable name's tokens (tokenized here
    independently); the texts drawn are the same as without names."""
    named, plain = (open_data(_cfg(minilm_dir, text_data, label_names=flag, shots=2)) for flag in (True, False))
    a, b = (d.train.sample(np.random.default_rng(7), 3) for d in (named, plain))
    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    labels = named.train.pool.labels
    assert a.support_y.shape == (3, 2 * 3) and a.support_y[0].tolist() == [0, 0, 0, 1, 1, 1]
    for t in range(3):
        for j, c in enumerate(a.classes[t]):
            ids = a.support_x["input_ids"][t, 3 * j + 2]
            want = tok.encode(readable(labels[c])).ids
            assert ids[: len(want)].tolist() == want and not ids[len(want) :].any()
            for i in range(2):  # the K texts are those the plain sampler drew
                got, ref = a.support_x["input_ids"][t, 3 * j + i], b.support_x["input_ids"][t, 2 * j + i]
                n = max(int(np.count_nonzero(got)), int(np.count_nonzero(ref)))
                assert got[:n].tolist() == ref[:n].tolist()
    assert np.array_equal(a.query_y, b.query_y) and np.array_equal(a.classes, b.classes)


def _features(minilm: Path, texts: list[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings by transformers alone: mean pooling, L2-normalised, one text at a time."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm).eval()
    tok = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LENGTH)
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok.encode(text).ids])
            out.append(F.normalize(model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(1)[0], dim=-1))
    return torch.stack(out)


def _support(root: Path, with_names: bool) -> Path:
    root.mkdir(parents=True)
    for label, texts in SUPPORT.items():
        (root / f"{label}.txt").write_text("\n".join(texts + ([readable(label)] if with_names else [])) + "\n", encoding="utf-8")
    return root


def test_adapt_with_label_names_builds_the_head_from_the_names_too(minilm_dir: Path, text_data: Path, tmp_path: Path) -> None:
    run = meta_train(_cfg(minilm_dir, text_data, label_names=True), out=tmp_path / "run").path
    assert json.loads((run / "metactl.json").read_text())["config"]["label_names"] is True
    heads = {}
    for name, args, folder in (
        ("default", [], _support(tmp_path / "shots", False)),  # the run trained with names: adapt uses them
        ("off", ["--no-label-names"], tmp_path / "shots"),
        ("by-hand", ["--no-label-names"], _support(tmp_path / "shots-with-names", True)),  # the names as ordinary examples
    ):
        r = runner.invoke(app, ["adapt", "--support", str(folder), "--from", str(run), "--steps", "1", "--out", str(tmp_path / name), *args])
        assert r.exit_code == 0, r.output
        heads[name] = load_file(tmp_path / name / "model.safetensors")["head.weight"]
        assert json.loads((tmp_path / name / "metactl.json").read_text())["label_names"] is (name == "default")
    torch.testing.assert_close(heads["default"], heads["by-hand"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(heads["default"], heads["off"], atol=1e-3)
    # by hand: each head row points at its class's centroid of the texts and the name (sorted labels, as adapt orders them)
    labels = sorted(SUPPORT)
    with_names = torch.stack([_features(minilm_dir, SUPPORT[lab] + [readable(lab)]).mean(0) for lab in labels])
    without = torch.stack([_features(minilm_dir, SUPPORT[lab]).mean(0) for lab in labels])
    cos = F.cosine_similarity(heads["default"], with_names, dim=-1)
    assert (cos > 1 - 1e-4).all(), cos
    assert (F.cosine_similarity(heads["default"], without, dim=-1) < 1 - 1e-3).all()


def test_labels_without_a_word_stop_adapt_and_meta_train_before_anything_is_written(minilm_dir: Path, text_data: Path, tmp_path: Path) -> None:
    run = meta_train(_cfg(minilm_dir, text_data), out=tmp_path / "run").path
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "card_arrival.txt").write_text("where is my card\n", encoding="utf-8")
    (shots / "123.txt").write_text("one two three\n", encoding="utf-8")
    r = runner.invoke(app, ["adapt", "--support", str(shots), "--from", str(run), "--label-names", "--out", str(tmp_path / "adapted")])
    assert r.exit_code == 1 and "label '123'" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "adapted").exists()
    bad = tmp_path / "bad.csv"
    bad.write_text(text_data.read_text(encoding="utf-8").replace("pin_blocked", "__"), encoding="utf-8")
    (tmp_path / "c.toml").write_text("val-classes = 0.34\n", encoding="utf-8")
    r = runner.invoke(app, ["meta-train", "--algo", "centroid", "--backbone", str(minilm_dir), "--adapt", "head", "--data", f"text:{bad}",
                            "--ways", "2", "--shots", "1", "--query-shots", "1", "--steps", "1", "--config", str(tmp_path / "c.toml"),
                            "--label-names", "--out", str(tmp_path / "bad-run")])  # fmt: skip
    assert r.exit_code == 1 and "label '__'" in r.output, r.output
    assert not (tmp_path / "bad-run").exists()


def test_all_classes_validation_scores_what_evaluate_all_classes_split_val_scores(minilm_dir: Path, text_data: Path, tmp_path: Path) -> None:
    """``val_all_classes``: each validation score is the best mean of ``metactl evaluate --all-classes
    --split val`` (every validation class at once, the same draws) on the θ validated; kept θ recorded."""
    import metactl

    cfg = _cfg(minilm_dir, text_data, algo="anil", steps=2, eval_every=1, eval_episodes=3, test_inner_steps=2, snapshot_every=1, val_all_classes=True)
    run = meta_train(cfg, out=tmp_path / "run").path
    best = json.loads((run / "metactl.json").read_text())["best_theta"]
    assert best["setting"] == "all-classes" and [x["step"] for x in best["scores"]] == [0, 1, 2]
    for x in best["scores"][1:]:
        snap = run / "snapshots" / f"step-{x['step']:07d}"
        result = metactl.evaluate(snap, all_classes=True, split="val", episodes=3, steps=2, seed=0, quiet=True)
        assert max(result.runs[0].mean) == pytest.approx(x["score"], abs=1e-9), (x, result.runs[0].mean)


def test_evaluate_all_classes_label_names_adds_each_name_after_the_same_draws(minilm_dir: Path, text_data: Path, tmp_path: Path) -> None:
    """``metactl evaluate --all-classes --label-names``: every draw's support is the plain draw's texts with
    each class's readable name (tokenized here independently) after them; without the flag, a run trained
    without names gets none."""
    from metactl.config import EvaluateOptions
    from metactl.evaluate import held_out_episodes

    run = meta_train(_cfg(minilm_dir, text_data), out=tmp_path / "run").path
    meta = json.loads((run / "metactl.json").read_text())
    cfg = TrainConfig(**meta["config"])
    plain, default, named = (
        held_out_episodes(meta, cfg, EvaluateOptions(all_classes=True, split="val", shots=2, label_names=flag)) for flag in (False, None, True)
    )
    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    for d in range(2):
        a, b, c = named.draw(0, d), plain.draw(0, d), default.draw(0, d)
        assert np.array_equal(b.support_x["input_ids"], c.support_x["input_ids"])  # the run trained without names
        ways = len(plain.support.labels)
        assert a.support_y[0].tolist() == np.repeat(np.arange(ways), 3).tolist()
        for j, label in enumerate(plain.support.labels):
            want = tok.encode(readable(label)).ids
            ids = a.support_x["input_ids"][0, 3 * j + 2]
            assert ids[: len(want)].tolist() == want and not ids[len(want) :].any()
            for i in range(2):
                got, ref = a.support_x["input_ids"][0, 3 * j + i], b.support_x["input_ids"][0, 2 * j + i]
                n = max(int(np.count_nonzero(got)), int(np.count_nonzero(ref)))
                assert got[:n].tolist() == ref[:n].tolist()
        assert np.array_equal(a.query_y, b.query_y)
    with pytest.raises(MetactlError, match="--all-classes"):
        EvaluateOptions(label_names=True)
