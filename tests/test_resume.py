"""Resume, interruptions and numerical faults: refused when it cannot be exact, bit for bit when it can.

README claims backed here:
- "reaches exactly the θ an uninterrupted run reaches (tested bit for bit)":
  test_ctrl_c_then_resume_is_bit_for_bit_conv4_task_threads, test_second_ctrl_c_interrupts_the_step_at_once
  (and, through a real SIGINT / kill -9 of a subprocess, test_reliability.py).
- "Files from an incompatible metactl version ... are refused": test_resume_refuses_a_checkpoint_from_another_version.
- resume "with the run's recorded settings": test_resume_refuses_a_changed_setting[*], test_cli_resume_refuses_a_changed_flag.
- "a meta-step whose loss or gradient is NaN/inf is skipped and counted (metrics.jsonl marks it)":
  test_a_non_finite_step_is_skipped_marked_and_training_recovers.
- "a second Ctrl-C interrupts at once" (train._DeferredInterrupt): test_deferred_interrupt_first_sets_a_flag_second_raises,
  test_second_ctrl_c_interrupts_the_step_at_once.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import metactl.train as train
from metactl import runs
from metactl.cli import app
from metactl.config import TrainConfig
from metactl.errors import MetactlError
from metactl.testing import make_image_folder, tiny_config
from metactl.train import Reporter, meta_train

SINUSOID = dict(data="sinusoid", shots=5, inner_lr=0.01, meta_batch=2, width=8, eval_every=0, eval_episodes=2, threads=1)


def _sinusoid(**overrides: Any) -> TrainConfig:
    return TrainConfig(**{**SINUSOID, **overrides})


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return runs.load_tensors(path)


def _assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == [], f"{what}: {differ}"


def _files(run: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*")) if p.is_file()}


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / runs.METRICS).read_text().splitlines())]


def _spy_meta_gradient(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[int], None] = lambda call: None, after: Callable[[int, Any], None] = lambda call, learner: None
) -> list[int]:
    """Wrap the trainer's real meta-gradient call (fault injection around it; the real computation runs).

    Returns the list of ``workers`` it was called with."""
    real = train.task_parallel_meta_gradient
    workers: list[int] = []

    def wrapped(algo: Any, learner: Any, batch: Any, n: int) -> dict[str, float]:
        workers.append(n)
        before(len(workers))
        metrics = real(algo, learner, batch, n)
        after(len(workers), learner)
        return metrics

    monkeypatch.setattr(train, "task_parallel_meta_gradient", wrapped)
    return workers


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An uninterrupted 4-step run with θ kept after every step, and a 2-step run to resume."""
    root = tmp_path_factory.mktemp("resume")
    full = meta_train(_sinusoid(steps=4, snapshot_every=1, checkpoint_every=100), out=root / "full").path
    short = meta_train(_sinusoid(steps=2, checkpoint_every=100), out=root / "short").path
    return {"root": root, "full": full, "short": short}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("meta_batch", 4), ("seed", 1), ("inner_steps", 2), ("algo", "fomaml"), ("width", 16)])
def test_resume_refuses_a_changed_setting(sinusoid_run: dict[str, Path], tmp_path: Path, key: str, value: Any) -> None:
    run = _copy(sinusoid_run["short"], tmp_path / "run")
    before = _files(run)
    cfg = _sinusoid(steps=4, checkpoint_every=100, **{key: value})
    with pytest.raises(MetactlError) as err:
        meta_train(cfg, out=run, resume=True)
    message = str(err.value)
    assert "\n" not in message
    assert f"{key} ({getattr(_sinusoid(), key)!r} -> {value!r})" in message, message
    assert _files(run) == before  # nothing in the run dir touched


def test_resume_accepts_more_steps_and_the_same_settings(sinusoid_run: dict[str, Path], tmp_path: Path) -> None:
    """The counterpart of the refusals: --steps may grow (that is what resuming is for)."""
    run = _copy(sinusoid_run["short"], tmp_path / "run")
    assert meta_train(_sinusoid(steps=4, checkpoint_every=100), out=run, resume=True).steps == 4


def test_cli_resume_refuses_a_changed_flag(sinusoid_run: dict[str, Path], tmp_path: Path) -> None:
    run = _copy(sinusoid_run["short"], tmp_path / "run")
    before = _files(run)
    result = CliRunner().invoke(app, ["meta-train", "--out", str(run), "--resume", "--steps", "4", "--meta-batch", "4"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().count("Error:") == 1 and "Traceback" not in result.output
    assert "meta_batch (2 -> 4)" in result.output.replace("\n", "")
    assert _files(run) == before


@pytest.mark.parametrize(
    ("version", "expected"),
    [("9.0.0", "written by metactl 9.0.0, which this metactl"), ("0.99.0", "written by metactl 0.99.0"), (None, "no metactl version recorded")],
)
def test_resume_refuses_a_checkpoint_from_another_version(sinusoid_run: dict[str, Path], tmp_path: Path, version: str | None, expected: str) -> None:
    """Only checkpoint.json is changed: metactl.json is current, so this is train._load_checkpoint's own check."""
    run = _copy(sinusoid_run["short"], tmp_path / "run")
    meta = json.loads((run / runs.CHECKPOINT_META).read_text())
    meta["metactl_version"] = version
    (run / runs.CHECKPOINT_META).write_text(json.dumps(meta))
    before = _files(run)
    with pytest.raises(MetactlError, match=expected) as err:
        meta_train(_sinusoid(steps=4, checkpoint_every=100), out=run, resume=True)
    assert "\n" not in str(err.value) and "checkpoint.json" in str(err.value)
    assert _files(run) == before
    result = CliRunner().invoke(app, ["meta-train", "--out", str(run), "--resume", "--steps", "4"])
    assert result.exit_code == 1 and expected in result.output.replace("\n", "") and "Traceback" not in result.output
    assert _files(run) == before


# --- bit for bit ------------------------------------------------------------------------------


def test_ctrl_c_then_resume_is_bit_for_bit_conv4_task_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Conv-4 (+ per-task BatchNorm) on images, learned α, Adam, on the default task-threaded path
    (--task-threads 0 = auto with 2 intra-op threads -> 2 workers). A real SIGINT (first Ctrl-C) after step 3,
    then --resume to step 5: θ, α, the Adam state and every logged loss equal the uninterrupted run's exactly.
    (The two uninterrupted-vs-resumed runs are also two task-threaded runs compared with torch.equal.)"""
    data = make_image_folder(tmp_path / "data")
    cfg = tiny_config("maml", data, steps=5, meta_batch=4, threads=2, task_threads=0, checkpoint_every=2)
    workers = _spy_meta_gradient(monkeypatch)
    full = meta_train(cfg, out=tmp_path / "full").path
    assert set(workers) == {2}  # really the task-threaded path

    def ctrl_c(step: int, record: dict[str, Any]) -> None:
        if step == 3:
            signal.raise_signal(signal.SIGINT)  # handled by train._DeferredInterrupt: the loop stops at its next safe point

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        meta_train(cfg, out=run, report=Reporter(step=ctrl_c))
    assert json.loads((run / runs.CHECKPOINT_META).read_text())["step"] == 3  # the Ctrl-C checkpoint, not the step-2 one
    assert not (run / runs.THETA).exists()
    assert meta_train(cfg, out=run, resume=True).steps == 5
    _assert_bit_equal(_tensors(full / runs.THETA), _tensors(run / runs.THETA), "θ and α")
    _assert_bit_equal(_tensors(full / runs.CHECKPOINT), _tensors(run / runs.CHECKPOINT), "θ, α and Adam state")
    assert _losses(run) == _losses(full)
    assert [s for s, _ in _losses(run)] == [1, 2, 3, 4, 5]


def test_second_ctrl_c_interrupts_the_step_at_once(sinusoid_run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two SIGINTs during step 3's meta-gradient: the second raises there, so step 3 never completes; the
    checkpoint holds exactly θ after step 2, and resuming reaches the uninterrupted θ bit for bit."""

    def twice(call: int) -> None:
        if call == 3:
            signal.raise_signal(signal.SIGINT)  # first: a flag
            signal.raise_signal(signal.SIGINT)  # second: KeyboardInterrupt now, inside the step

    _spy_meta_gradient(monkeypatch, before=twice)
    run = tmp_path / "run"
    cfg = _sinusoid(steps=4, snapshot_every=1, checkpoint_every=100)
    with pytest.raises(KeyboardInterrupt):
        meta_train(cfg, out=run)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    assert json.loads((run / runs.CHECKPOINT_META).read_text())["step"] == 2
    assert [s for s, _ in _losses(run)] == [1, 2]
    full = sinusoid_run["full"]
    ckpt = _tensors(run / runs.CHECKPOINT)
    step2 = _tensors(full / runs.SNAPSHOTS / "step-0000002" / runs.THETA)
    _assert_bit_equal({k: ckpt[k] for k in step2}, step2, "checkpoint θ vs θ after step 2")
    monkeypatch.undo()
    meta_train(cfg, out=run, resume=True)
    _assert_bit_equal(_tensors(full / runs.THETA), _tensors(run / runs.THETA), "θ and α")


def test_deferred_interrupt_first_sets_a_flag_second_raises() -> None:
    previous = signal.getsignal(signal.SIGINT)
    ctrl_c = train._DeferredInterrupt()
    try:
        assert not ctrl_c.is_set()
        signal.raise_signal(signal.SIGINT)  # must not raise
        assert ctrl_c.is_set()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        ctrl_c.restore()
    assert signal.getsignal(signal.SIGINT) is previous


# --- numerical faults -------------------------------------------------------------------------


def test_a_non_finite_step_is_skipped_marked_and_training_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN gradients injected at steps 3 and 5 (not in a row; --max-bad-steps 2): both are skipped and
    marked, θ and Adam do not move on them, the other steps train, and the run completes."""

    def poison(call: int, learner: Any) -> None:
        if call in (3, 5):
            next(iter(learner.params.values())).grad.fill_(float("nan"))

    _spy_meta_gradient(monkeypatch, after=poison)
    out = tmp_path / "run"
    result = meta_train(_sinusoid(steps=6, snapshot_every=1, checkpoint_every=100, max_bad_steps=2), out=out)
    assert (result.stopped_by, result.steps, result.skipped_steps) == ("steps", 6, 2)
    records = [json.loads(x) for x in (out / runs.METRICS).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r.get("skipped", False) for r in records] == [False, False, True, False, True, False]
    meta = json.loads((out / runs.META).read_text())
    assert (meta["status"], meta["skipped_steps"]) == ("complete", 2)
    theta = {s: _tensors(out / runs.SNAPSHOTS / f"step-{s:07d}" / runs.THETA) for s in range(1, 7)}
    _assert_bit_equal(theta[3], theta[2], "θ after the skipped step 3")
    _assert_bit_equal(theta[5], theta[4], "θ after the skipped step 5")
    for s in (2, 4, 6):
        assert any(not torch.equal(theta[s][k], theta[s - 1][k]) for k in theta[s]), f"step {s} did not train"
    assert all(bool(v.isfinite().all()) for v in _tensors(out / runs.THETA).values())
    ckpt = _tensors(out / runs.CHECKPOINT)
    assert float(ckpt["optimizer.0.step"]) == 4  # Adam stepped on the 4 good steps only
