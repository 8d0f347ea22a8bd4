"""Best θ on validation (``keep_best``): a run whose last steps make it worse ends with the θ of its
best-scoring validation, not the last one.

The worse steps are real: an algorithm (a plugin registered for this test, a MAML subclass) takes
gradient *ascent* steps on the query loss from step ``ASCEND_FROM`` on, so validation accuracy falls.
The run's θ file is compared with the snapshot of the chosen step (``snapshot_every=1``), each read
back from disk independently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from metactl.algorithms.maml import MAML
from metactl.api import Learner, TaskBatch
from metactl.config import TrainConfig
from metactl.registry import ENV
from metactl.testing import register_plugin
from metactl.train import meta_train

ASCEND_FROM = 3  # outer steps 0..2 descend, then every step ascends


class AscendLater(MAML):
    """MAML for the first ``ASCEND_FROM`` outer steps, then the negated meta-gradient, ten times over (ascent)."""

    name: ClassVar[str] = "ascend-later"
    description: ClassVar[str] = "test: MAML, then gradient ascent"

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        metrics = super().meta_gradient(learner, batch)
        if self.step >= ASCEND_FROM:
            for p in learner.parameters():
                if p.grad is not None:
                    p.grad.mul_(-10.0)
        return metrics


@pytest.fixture
def ascend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.syspath_prepend(str(register_plugin(tmp_path / "site", {AscendLater.name: f"{__name__}:AscendLater"})))


BASE: dict[str, Any] = dict(
    algo="ascend-later", data="glyphs", ways=3, shots=1, query_shots=3, meta_batch=4, width=8, steps=7, meta_lr=0.03,
    inner_steps=1, test_inner_steps=1, eval_every=1, eval_episodes=40, snapshot_every=1, checkpoint_every=100, threads=1,
)  # fmt: skip


def _theta(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "theta.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_whose_last_step_is_worse_ends_with_its_best_theta(ascend: None, tmp_path: Path) -> None:
    run = meta_train(TrainConfig(**BASE), out=tmp_path / "run").path
    meta = json.loads((run / "metactl.json").read_text())
    best = meta["best_theta"]
    steps = [x["step"] for x in best["scores"]]
    scores = [x["score"] for x in best["scores"]]
    assert steps == list(range(0, 8)), steps  # the start, then every step
    assert best["step"] == steps[int(np.argmax(scores))] and best["score"] == max(scores)
    assert 1 <= best["step"] < 7, best  # the case this test is about: a trained step beats the start and the end
    assert scores[-1] < best["score"], scores
    final = _theta(run)
    assert _same(final, _theta(run / "snapshots" / f"step-{best['step']:07d}")), "the run's θ is not its best step's"
    assert not _same(final, _theta(run / "snapshots" / "step-0000007")), "the run ended with its last θ"
    assert _same(final, _theta(run / "best"))  # RUN/best holds it too, as a run evaluate reads
    # validation's own record matches: each step's score is the best of its curve in metrics.jsonl
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [max(r["val"]) for r in lines] == scores[1:]


def test_no_keep_best_ends_with_the_last_theta(ascend: None, tmp_path: Path) -> None:
    run = meta_train(TrainConfig(**{**BASE, "steps": 5, "keep_best": False}), out=tmp_path / "run").path
    assert _same(_theta(run), _theta(run / "snapshots" / "step-0000005"))
    meta = json.loads((run / "metactl.json").read_text())
    assert meta["best_theta"]["step"] == 5 and not meta["best_theta"]["keep_best"] and not (run / "best").exists()


def test_resume_keeps_the_best_found_before_the_interruption(ascend: None, tmp_path: Path) -> None:
    """A run stopped after 4 steps and resumed to 7 keeps the same best θ as one run straight through."""
    straight = meta_train(TrainConfig(**BASE), out=tmp_path / "straight").path
    first = meta_train(TrainConfig(**{**BASE, "steps": 4}), out=tmp_path / "split").path
    resumed = meta_train(TrainConfig(**BASE), out=first, resume=True).path
    a, b = (json.loads((r / "metactl.json").read_text())["best_theta"] for r in (straight, resumed))
    assert a["step"] == b["step"] and [x["step"] for x in b["scores"]] == [x["step"] for x in a["scores"]]
    assert _same(_theta(straight), _theta(resumed))
