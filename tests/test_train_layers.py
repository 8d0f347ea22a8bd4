"""``--train-layers K`` on the real all-MiniLM-L6-v2 and real CLINC150 texts: the lower layers' hidden states
cached once per text give the same features, loss and meta-gradient as the whole encoder on token ids; length
bucketing leaves every text's features as transformers computes them one text at a time; hidden states cached
by another body are refused; K outside 1..depth is one line and exit 1 with nothing written; a run trained
with ``--train-layers 1`` stores only the top layer (+ head, α, extras) and is adapted and exported
(export checks its ONNX against torch itself)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch
import torch.nn.functional as F
from safetensors.numpy import load_file as load_numpy
from tokenizers import Tokenizer
from transformers import AutoModel
from typer.testing import CliRunner

from metactl.backbones import resolve_backbone
from metactl.cli import app
from metactl.config import TrainConfig
from metactl.data.episodes import ClassificationEpisodes
from metactl.data.tensors import to_batch
from metactl.data.text import TextPool, load_tokenizer, text_model_spec
from metactl.errors import MetactlError
from metactl.models.text import BUCKET
from metactl.registry import build_algorithm
from metactl.train import hidden_fn, init_learner

runner = CliRunner()
INTENTS = ["alarm", "balance", "book_flight", "calculator", "flip_coin", "meaning_of_life"]
PER_INTENT = 12
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def texts(intents_dir: Path) -> dict[str, list[str]]:
    rows = json.loads((intents_dir / "clinc150" / "data_full.json").read_text(encoding="utf-8"))["train"]
    out: dict[str, list[str]] = {}
    for text, label in rows:
        if label in INTENTS and len(out.setdefault(label, [])) < PER_INTENT:
            out[label].append(text)
    return out


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory, texts: dict[str, list[str]]) -> Path:
    path = tmp_path_factory.mktemp("train-layers") / "texts.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([t, label] for label in INTENTS for t in texts[label])
    return path


def _learner(minilm: Path, csv_path: Path, k: int, algo: str = "protomaml", **cfg: Any) -> tuple[TrainConfig, Any]:
    c = TrainConfig(algo=algo, backbone=str(minilm), data=f"text:{csv_path}", train_layers=k, ways=3, shots=2, query_shots=2, max_length=MAX_LENGTH, **cfg)
    return c, init_learner(text_model_spec(c), c, "classification", "cpu")


def _pool(minilm: Path, texts: dict[str, list[str]]) -> TextPool:
    tok = load_tokenizer(resolve_backbone(minilm).tokenizer, MAX_LENGTH)
    return TextPool.from_texts({label: texts[label] for label in INTENTS}, tok, MAX_LENGTH)


def _one_at_a_time(minilm: Path, sentences: list[str]) -> torch.Tensor:
    """The independent reference: transformers' encoder on each text alone (no padding), mean pooling, L2 norm."""
    encoder = AutoModel.from_pretrained(minilm, local_files_only=True).eval()
    tok = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LENGTH)
    with torch.no_grad():
        rows = []
        for t in sentences:
            ids = torch.tensor([tok.encode(t).ids])
            rows.append(F.normalize(encoder(input_ids=ids).last_hidden_state.mean(1), dim=-1)[0])
    return torch.stack(rows)


def test_bucketing_and_cached_layers_leave_every_feature_unchanged(minilm_dir: Path, csv_file: Path, texts: dict[str, list[str]]) -> None:
    """More texts than one bucket, of mixed lengths, padded together: every text's features (whole encoder on
    token ids, and top layers on cached hidden states) equal the encoder's on that text alone."""
    _, learner = _learner(minilm_dir, csv_file, 2)
    pool = _pool(minilm_dir, texts)
    sentences = [t for label in INTENTS for t in texts[label]]
    assert len(sentences) > BUCKET  # several buckets
    reference = _one_at_a_time(minilm_dir, sentences)
    picks = [(c, np.arange(pool.count(c))) for c in range(pool.num_classes)]
    tokens = {k: torch.from_numpy(v) for k, v in pool.take(picks).items()}
    assert int(tokens["attention_mask"].sum(-1).min()) < tokens["attention_mask"].shape[1]  # really padded
    with torch.no_grad():
        whole = learner.features(learner.params, tokens)
        pool.precompute_hidden(hidden_fn(learner.model, "cpu"), learner.model.body_tag(), batch_size=16)
        cached = {k: torch.from_numpy(v) for k, v in pool.take(picks).items()}
        top = learner.features(learner.params, cached)
    assert set(cached) == {"hidden", "attention_mask", "body"}
    torch.testing.assert_close(whole, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(top, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("algo", ["protomaml", "anil"])
def test_cached_training_equals_uncached(algo: str, minilm_dir: Path, csv_file: Path, texts: dict[str, list[str]]) -> None:
    """One meta-gradient on the same episodes, token ids through every layer vs cached lower layers: same
    loss, same gradient of the trained top layers, the head and α."""
    cfg, learner = _learner(minilm_dir, csv_file, 2, algo, inner_steps=1, meta_batch=2)
    algo_obj = build_algorithm(algo, {}, cfg)
    from metactl.api import SetupInfo

    algo_obj.setup(learner, SetupInfo(train_classes=len(INTENTS)))
    plain, cached = _pool(minilm_dir, texts), _pool(minilm_dir, texts)
    cached.precompute_hidden(hidden_fn(learner.model, "cpu"), learner.model.body_tag())
    grads, losses = [], []
    for pool in (plain, cached):
        episodes = ClassificationEpisodes(pool, 3, 2, 2).sample(np.random.default_rng(7), 2)
        for p in learner.parameters():
            p.grad = None
        losses.append(algo_obj.meta_gradient(learner, to_batch(episodes))["loss"])
        grads.append({k: v.grad.clone() for k, v in learner.params.items() if v.grad is not None})
    trained = set(learner.outer_only)
    assert trained and all(k.startswith("encoder.encoder.layer.4.") or k.startswith("encoder.encoder.layer.5.") for k in trained)
    assert trained <= set(grads[0]) and set(grads[0]) == set(grads[1])
    assert abs(losses[0] - losses[1]) < 1e-5
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-6, rtol=1e-4)
    assert any(float(grads[0][k].abs().max()) > 0 for k in trained)


def test_hidden_states_of_another_body_are_refused(minilm_dir: Path, csv_file: Path, texts: dict[str, list[str]]) -> None:
    """States cached with K = 1 (5 lower layers) fed to a K = 2 model, or tagged for other weights: one MetactlError."""
    _, one = _learner(minilm_dir, csv_file, 1)
    _, two = _learner(minilm_dir, csv_file, 2)
    pool = _pool(minilm_dir, texts)
    pool.precompute_hidden(hidden_fn(one.model, "cpu"), one.model.body_tag())
    x = {k: torch.from_numpy(v) for k, v in pool.take([(0, np.arange(3))]).items()}
    one.features(one.params, x)  # its own cache: fine
    with pytest.raises(MetactlError, match="computed by a different body"):
        two.features(two.params, x)
    one.model.spec["backbone_sha256"] = "0" * 64  # the body's weights changed since the cache
    with pytest.raises(MetactlError, match="computed by a different body"):
        one.features(one.params, x)
    del x["body"]  # untagged states
    with pytest.raises(MetactlError, match="computed by a different body"):
        two.features(two.params, x)


@pytest.mark.parametrize("k", ["0", "7"])
def test_train_layers_outside_one_to_depth_is_one_line(k: str, minilm_dir: Path, csv_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = runner.invoke(app, ["meta-train", "--algo", "protomaml", "--backbone", str(minilm_dir), "--data", f"text:{csv_file}", "--train-layers", k,
                            "--ways", "3", "--shots", "2", "--query-shots", "2", "--steps", "1", "--out", str(out)])  # fmt: skip
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert ("train-layers must be >= 1 (got 0)" if k == "0" else "--train-layers 7: the encoder in") in r.output
    assert not out.exists()


def test_a_train_layers_run_is_adapted_and_exported(minilm_dir: Path, csv_file: Path, tmp_path: Path, texts: dict[str, list[str]]) -> None:
    run, adapted, export = tmp_path / "run", tmp_path / "adapted", tmp_path / "export"
    r = runner.invoke(app, ["meta-train", "--algo", "protomaml", "--backbone", str(minilm_dir), "--data", f"text:{csv_file}", "--train-layers", "1",
                            "--ways", "3", "--shots", "2", "--query-shots", "2", "--steps", "2", "--meta-batch", "2", "--inner-steps", "0",
                            "--test-inner-steps", "0", "--eval-every", "0", "--eval-episodes", "4", "--meta-lr", "1e-3", "--out", str(run)])  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = json.loads((run / "metactl.json").read_text(encoding="utf-8"))
    assert meta["config"]["train_layers"] == 1 and meta["config"]["train_body"] is True
    assert meta["model"]["train_layers"] == 1 and meta["model"]["train_body"] is True
    theta = load_numpy(str(run / "theta.safetensors"))
    body = {k for k in theta if k.startswith("encoder.")}
    assert body and all(k.startswith("encoder.encoder.layer.5.") for k in body), sorted(body)[:5]
    assert {k for k in theta if k.startswith("inner_lr.encoder.")} == {f"inner_lr.{k}" for k in body}
    assert {k for k in theta if not k.startswith(("encoder.", "inner_lr.", "extra."))} == {"head.weight", "head.bias"}
    pretrained = load_numpy(str(minilm_dir / "model.safetensors"))
    assert any(not np.array_equal(theta[k], pretrained[k.removeprefix("encoder.")]) for k in body)  # the top layer trained
    shots = tmp_path / "shots.csv"
    with shots.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *([t, label] for label in INTENTS[:3] for t in texts[label][:3])])
    r = runner.invoke(app, ["adapt", "--from", str(run), "--support", str(shots), "--out", str(adapted)])
    assert r.exit_code == 0, r.output
    stored = load_numpy(str(adapted / "model.safetensors"))
    assert {k for k in stored if k.startswith("encoder.")} == body
    r = runner.invoke(app, ["export", "--from", str(adapted), "--out", str(export)])  # checks onnxruntime against torch itself
    assert r.exit_code == 0, r.output
    assert (export / "model.onnx").is_file()
