"""``--algo pretrain`` with ``cosine = true`` (``[algo_options]``): the all-classes classifier's logits are
s·cos(w_c, f) at a learned s, computed here by hand; log s gets a gradient and moves; the default stays the
plain linear classifier; a real run on all-MiniLM-L6-v2 with ``--train-layers 1`` trains and is adapted
and evaluated."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from metactl.algorithms.pretrain import Pretrain, PretrainConfig
from metactl.api import SetupInfo, TaskBatch
from metactl.cli import app
from metactl.config import TrainConfig
from metactl.heads import LOG_TEMPERATURE
from tests.test_maml import tiny_batch, tiny_learner

runner = CliRunner()
CLASSES = torch.tensor([[5, 2, 7], [1, 0, 3]])  # the two tasks' global classes


def _setup(**config: object) -> tuple[Pretrain, object, TaskBatch]:
    learner, b = tiny_learner("conv"), tiny_batch("conv")
    algo = Pretrain(PretrainConfig(**config), TrainConfig())  # type: ignore[arg-type]
    algo.setup(learner, SetupInfo(train_classes=8))
    return algo, learner, TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y, CLASSES)


def test_cosine_logits_are_s_times_the_cosine_of_weights_and_features() -> None:
    algo, learner, _ = _setup(cosine=True, temperature=7.0)
    assert "classifier.bias" not in learner.extra and float(learner.extra[LOG_TEMPERATURE].detach()) == pytest.approx(math.log(7.0))
    feats = torch.randn(5, learner.extra["classifier.weight"].shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = learner.extra["classifier.weight"].detach().double()
    want = 7.0 * (w / w.norm(dim=1, keepdim=True)) @ (feats / feats.norm(dim=1, keepdim=True)).T  # (classes, 5)
    assert torch.allclose(algo.logits(learner, feats).double(), want.T, atol=1e-6)
    with torch.no_grad():
        learner.extra[LOG_TEMPERATURE].fill_(math.log(2.5))
    assert torch.allclose(algo.logits(learner, feats).double(), want.T * 2.5 / 7.0, atol=1e-6)


def test_the_loss_is_the_cross_entropy_of_the_cosine_logits_and_log_s_learns() -> None:
    algo, learner, batch = _setup(cosine=True, temperature=10.0, tasks_per_forward=0)
    metrics = algo.meta_gradient(learner, batch)
    x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
    y = torch.gather(CLASSES, 1, torch.cat([batch.support_y, batch.query_y], dim=1)).flatten()
    with torch.no_grad():
        f = learner.features(learner.params, x).double()
        w = learner.extra["classifier.weight"].double()
        want = F.cross_entropy(10.0 * F.normalize(f, dim=-1) @ F.normalize(w, dim=-1).T, y)
    assert metrics["loss"] == pytest.approx(float(want), rel=1e-6)
    log_s = learner.extra[LOG_TEMPERATURE]
    assert log_s.grad is not None and float(log_s.grad.abs()) > 0
    before = float(log_s.detach())
    torch.optim.Adam([log_s], lr=0.1).step()
    assert float(log_s.detach()) != before


def test_the_default_classifier_is_linear_with_a_bias() -> None:
    algo, learner, _ = _setup()
    assert LOG_TEMPERATURE not in learner.extra and "classifier.bias" in learner.extra
    f = torch.randn(4, learner.extra["classifier.weight"].shape[1], dtype=torch.float64)
    want = f @ learner.extra["classifier.weight"].detach().T.double() + learner.extra["classifier.bias"].detach().double()
    assert torch.allclose(algo.logits(learner, f).double(), want)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        PretrainConfig(cosine=True, temperature=0.0)


def test_a_cosine_pretrain_run_with_cached_layers_trains_adapts_and_evaluates(minilm_dir: Path, tmp_path: Path) -> None:
    topics = ["weather", "music", "banking", "travel", "cooking", "sports", "movies", "health"]
    data, shots = tmp_path / "texts.csv", tmp_path / "shots.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *((f"a question {i} about {t}", f"{t}_query") for t in topics for i in range(4))])
    with shots.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *((f"tell me {i} on {t}", t) for t in topics[:3] for i in range(2))])
    config = tmp_path / "pretrain.toml"
    config.write_text("[algo_options]\ncosine = true\ntemperature = 12.0\n", encoding="utf-8")
    run = tmp_path / "run"
    r = runner.invoke(app, ["meta-train", "--config", str(config), "--algo", "pretrain", "--backbone", str(minilm_dir), "--data", f"text:{data}",
                            "--train-layers", "1", "--ways", "3", "--shots", "1", "--query-shots", "1", "--steps", "3", "--meta-batch", "2",
                            "--test-inner-steps", "1", "--eval-every", "0", "--threads", "1", "--out", str(run)])  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = json.loads((run / "metactl.json").read_text(encoding="utf-8"))
    assert meta["algorithm"]["config"]["cosine"] is True and meta["config"]["train_layers"] == 1
    r = runner.invoke(app, ["adapt", "--from", str(run), "--support", str(shots), "--out", str(tmp_path / "adapted")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "--from", str(run), "--data", f"text:{data}", "--ways", "3", "--shots", "1", "--query-shots", "1",
                            "--episodes", "4", "--json", str(tmp_path / "eval.json")])  # fmt: skip
    assert r.exit_code == 0, r.output
