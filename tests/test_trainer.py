"""The trainer's parts, one at a time: set-up and resume, one outer step with its NaN guard, the
all-reduce of the meta-gradient, the time budget, and the finish."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from metactl.api import Learner
from metactl.config import TrainConfig
from metactl.data.episodes import training_tasks
from metactl.distributed import World
from metactl.registry import build_algorithm
from metactl.train import Reporter, Session, budget_spent, finish, gradients_finite, outer_step, reduce_gradients, setup, train_loop

TINY = dict(algo="maml", data="glyphs", ways=3, shots=1, query_shots=2, meta_batch=2, steps=3, width=8, eval_every=0, eval_episodes=2, threads=1)


def _session(tmp_path: Path, resume: bool = False, **overrides: Any) -> Session:
    cfg = TrainConfig(**{**TINY, **overrides})
    return setup(cfg, build_algorithm(cfg.algo, cfg.algo_options, cfg), World(), tmp_path / "run", False, resume, Reporter())


def _episodes(s: Session, step: int) -> Any:
    return training_tasks(s.data.train, s.cfg.seed, step, range(s.cfg.meta_batch))


def _theta(s: Session) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in s.learner.params.items()}


def test_outer_step_updates_theta_and_counts_the_step(tmp_path: Path) -> None:
    s = _session(tmp_path)
    before = _theta(s)
    record = outer_step(s, _episodes(s, 0), workers=1)
    assert s.step == 1 and record["step"] == 1 and "skipped" not in record and math.isfinite(record["loss"])
    assert any(not torch.equal(before[k], v) for k, v in s.learner.params.items())


def test_a_non_finite_meta_gradient_is_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _session(tmp_path)
    real = s.algo.meta_gradient

    def poisoned(learner: Learner, batch: Any) -> dict[str, float]:
        metrics = real(learner, batch)
        next(iter(learner.params.values())).grad[0] = float("nan")
        return metrics

    monkeypatch.setattr(s.algo, "meta_gradient", poisoned)
    before = _theta(s)
    for expected_bad in (1, 2):
        record = outer_step(s, _episodes(s, s.step), workers=1)
        assert record.get("skipped") is True and s.bad == expected_bad and s.skipped == expected_bad
        assert all(torch.equal(before[k], v) for k, v in s.learner.params.items()), "a skipped step moved θ"
    monkeypatch.setattr(s.algo, "meta_gradient", real)
    record = outer_step(s, _episodes(s, s.step), workers=1)
    assert "skipped" not in record and s.bad == 0 and s.skipped == 2 and s.step == 3


def test_gradients_finite_is_the_nan_guard() -> None:
    p = torch.zeros(3, requires_grad=True)
    learner = Learner(model=torch.nn.Linear(1, 1), params={"w": p}, inner_lr={"w": torch.tensor(0.1)}, task="regression")
    assert gradients_finite({"loss": 1.0}, learner)  # no gradient at all is not a failure
    p.grad = torch.tensor([0.0, 1.0, -2.0])
    assert gradients_finite({"loss": 1.0}, learner)
    assert not gradients_finite({"loss": float("inf")}, learner)
    p.grad = torch.tensor([0.0, float("nan"), 1.0])
    assert not gradients_finite({"loss": 1.0}, learner)
    p.grad = torch.tensor([0.0, float("-inf"), 1.0])
    assert not gradients_finite({"loss": 1.0}, learner)


def test_budget_stop(tmp_path: Path) -> None:
    s = _session(tmp_path, time_budget=0.5, steps=50)  # 30 seconds
    s.t0 = __import__("time").perf_counter() - 29.0
    assert not budget_spent(s)
    s.t0 -= 2.0
    assert budget_spent(s)
    spent = _session(tmp_path / "b", time_budget=1e-9, steps=50)  # spent before the first step
    train_loop(spent)
    assert spent.stopped_by == "time-budget" and spent.step == 0
    result = finish(spent)
    assert result.stopped_by == "time-budget" and (result.path / "theta.safetensors").is_file()


def test_resume_restores_theta_alpha_optimizer_and_step(tmp_path: Path) -> None:
    s = _session(tmp_path, steps=2, checkpoint_every=1)
    train_loop(s)
    done = finish(s)
    saved = load_file(done.path / "checkpoint.safetensors")
    r = _session(tmp_path, resume=True, steps=4, checkpoint_every=1)
    assert r.step == 2 and r.elapsed_before > 0
    for k, v in r.learner.params.items():
        assert torch.equal(v.detach(), saved[k]), k
    for k, v in r.learner.inner_lr.items():
        assert torch.equal(v.detach(), saved[f"inner_lr.{k}"]), k
    state = r.opt.state_dict()["state"]
    assert state and all(torch.equal(value, saved[f"optimizer.{i}.{key}"]) for i, st in state.items() for key, value in st.items() if torch.is_tensor(value))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reduce_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
        learner = Learner(model=torch.nn.Linear(1, 1), params={"a": a, "b": b}, inner_lr={"a": torch.tensor(0.1), "b": torch.tensor(0.1)}, task="regression")
        a.grad = torch.tensor([1.0, 2.0]) * (rank + 1)  # rank 0: [1, 2]; rank 1: [2, 4]
        if rank == 1:
            b.grad = torch.tensor([6.0])  # rank 0 has no gradient for b: it counts as zero
        metrics = reduce_gradients(World(rank, 2), learner, {"loss": float(rank), "metric": 0.5 + rank}, "cpu")
        Path(f"{out}/{rank}.json").write_text(json.dumps({"a": a.grad.tolist(), "b": b.grad.tolist(), "metrics": metrics}))
    finally:
        dist.destroy_process_group()


def test_reduce_gradients_is_the_mean_over_workers(tmp_path: Path) -> None:
    mp.start_processes(_reduce_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got["a"] == [1.5, 3.0] and got["b"] == [3.0]
        assert got["metrics"] == {"loss": 0.5, "metric": 1.0}


def test_reduce_gradients_is_the_identity_for_one_worker(tmp_path: Path) -> None:
    p = torch.zeros(2, requires_grad=True)
    p.grad = torch.tensor([1.0, 2.0])
    learner = Learner(model=torch.nn.Linear(1, 1), params={"p": p}, inner_lr={"p": torch.tensor(0.1)}, task="regression")
    assert reduce_gradients(World(), learner, {"loss": 2.0, "metric": 0.1}, "cpu") == {"loss": 2.0, "metric": 0.1}
    assert torch.equal(p.grad, torch.tensor([1.0, 2.0]))


def test_a_second_ctrl_c_waits_for_the_update_of_theta() -> None:
    """Inside ``critical`` (θ's update and the step count) a second Ctrl-C takes effect when it ends."""
    import signal

    from metactl.train import _DeferredInterrupt

    ctrl_c = _DeferredInterrupt()
    try:
        signal.raise_signal(signal.SIGINT)  # the first: only a flag
        assert ctrl_c.is_set()
        done = []
        with pytest.raises(KeyboardInterrupt):
            with ctrl_c.critical():
                signal.raise_signal(signal.SIGINT)  # the second, mid-update: deferred
                done.append("update finished")
        assert done == ["update finished"]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # outside the block: at once
    finally:
        ctrl_c.restore()
