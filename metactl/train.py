"""``meta-train``: the outer loop shared by every algorithm.

The algorithm computes the meta-gradient of a meta-batch (``Algorithm.meta_gradient``); this
module owns everything around it: data, model, θ and α, the Adam outer update, NaN/inf guards,
validation, checkpoints, the time budget and the run dir.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from metactl import __version__, runs
from metactl.api import Learner
from metactl.config import TrainConfig
from metactl.data import TaskData, open_data
from metactl.data.episodes import prefetch, training_tasks
from metactl.distributed import World, init_from_env, shutdown
from metactl.errors import MetactlError
from metactl.evaluate import adaptation_curve, summarise, to_batch
from metactl.models import build_model
from metactl.perf import check_device, task_parallel_meta_gradient, task_workers, tune_malloc
from metactl.registry import load_algorithm, make_config

TRAIN_STREAM = 0


@dataclass
class Reporter:
    """Callbacks the CLI fills in (rich progress); all optional."""

    message: Callable[[str], None] = lambda s: None
    start: Callable[[int, int], None] = lambda first, total: None
    step: Callable[[int, dict[str, float]], None] = lambda step, m: None
    load: Callable[[int, int], None] = lambda done, total: None


@dataclass
class TrainResult:
    run_dir: Path
    steps_done: int
    seconds: float
    stopped_by: str  # "steps" | "time-budget" | "non-finite"
    val_curve: list[dict[str, float]] = field(default_factory=list)
    val_curve_start: list[dict[str, float]] = field(default_factory=list)
    inner_lr: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0


def default_run_dir(cfg: TrainConfig) -> Path:
    data = cfg.data if cfg.data in ("glyphs", "sinusoid") else Path(cfg.data.split(":", 1)[-1]).stem
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.algo}-{data}-{cfg.ways}w{cfg.shots}s-{stamp}"


def _prepare_out(out: Path, force: bool, resume: bool) -> Path:
    """Check ``--out`` and return the folder to write into.

    With ``--force`` over an existing run, training writes into a hidden ``.NAME.partial`` folder
    beside it, and the old run is replaced only when the new one is complete (``runs.replace_dir``).
    """
    if out.exists() and not out.is_dir():
        raise MetactlError(f"--out {out} exists and is not a directory.", "Choose another --out.")
    existing = out.is_dir() and any(out.iterdir())
    if resume:
        if not (out / runs.CHECKPOINT).is_file():
            raise MetactlError(f"--resume: no checkpoint in {out}.", "Pass --out of an interrupted run, or drop --resume.")
        return out
    if existing and not force:
        raise MetactlError(f"--out {out} already holds files.", "Pass --force to replace it, --resume to continue it, or choose another --out.")
    if existing:
        if not (out / runs.META).is_file():
            raise MetactlError(f"--out {out} is not a metactl run; refusing to replace it even with --force.", "Choose another --out.")
        work = out.parent / f".{out.name}.partial"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        return work
    out.mkdir(parents=True, exist_ok=True)
    return out


def init_learner(model_spec: dict[str, Any], cfg: TrainConfig, task: str, device: str, inner_lr_shape: str = "layer") -> Learner:
    """θ from the seed, and α = ``inner_lr`` per parameter tensor ("layer") or per element ("element", Meta-SGD)."""
    torch.manual_seed(cfg.seed)
    model = build_model(model_spec).to(device)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    if inner_lr_shape == "element":
        lr = {k: torch.full_like(v, float(cfg.inner_lr)).requires_grad_(cfg.learn_inner_lr) for k, v in params.items()}
    elif inner_lr_shape == "step":
        lr = {k: torch.full((max(1, cfg.inner_steps),), float(cfg.inner_lr), device=device).requires_grad_(cfg.learn_inner_lr) for k in params}
    else:
        lr = {k: torch.tensor(float(cfg.inner_lr), device=device, requires_grad=cfg.learn_inner_lr) for k in params}
    return Learner(model, params, lr, task, per_step_lr=inner_lr_shape == "step", precision=cfg.precision)


def make_optimizer(algo: Any, learner: Learner, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam on θ, α (if learned) and the algorithm's extra parameters, unless the algorithm brings its own."""
    groups: list[dict[str, Any]] = [{"params": list(learner.params.values()), "name": "theta"}]
    if cfg.learn_inner_lr:
        groups.append({"params": list(learner.inner_lr.values()), "name": "inner_lr"})
    if learner.extra:
        groups.append({"params": list(learner.extra.values()), "name": "extra"})
    if hasattr(algo, "make_optimizer"):
        return algo.make_optimizer(groups, cfg)
    return torch.optim.Adam(groups, lr=cfg.meta_lr)


def _save_checkpoint(out: Path, learner: Learner, opt: torch.optim.Optimizer, step: int, elapsed: float, bad: int) -> None:
    tensors = runs.join_theta(learner.params, learner.inner_lr)
    tensors.update({f"extra.{k}": v for k, v in learner.extra.items()})
    state = opt.state_dict()
    for i, s in state["state"].items():
        for key, value in s.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{i}.{key}"] = value
    runs.save_tensors(out / runs.CHECKPOINT, tensors, {"format": "metactl-checkpoint", "step": str(step)})
    runs.atomic_write_json(
        out / runs.CHECKPOINT_META,
        {
            "step": step,
            "elapsed_seconds": elapsed,
            "bad_steps_in_a_row": bad,
            "param_groups": state["param_groups"],
            "metactl_version": __version__,
        },
    )


def _save_theta(run: Path, learner: Learner) -> None:
    runs.save_tensors(run / runs.THETA, runs.join_theta(learner.params, learner.inner_lr), {"format": "metactl-theta", "metactl_version": __version__})


def _save_snapshot(out: Path, learner: Learner, meta: dict[str, Any], step: int, elapsed: float) -> None:
    """θ and α at this step as a small run of its own (``metactl evaluate`` / ``adapt`` read it).

    ``seconds`` is the training time so far: setup and any validation are not in it."""
    snap = out / runs.SNAPSHOTS / f"step-{step:07d}"
    snap.mkdir(parents=True, exist_ok=True)
    _save_theta(snap, learner)
    runs.atomic_write_json(snap / runs.META, {**meta, "status": "snapshot", "steps_done": step, "seconds": round(elapsed, 3)})


def _load_checkpoint(out: Path, learner: Learner, opt: torch.optim.Optimizer) -> tuple[int, float, int]:
    tensors = runs.load_tensors(out / runs.CHECKPOINT)
    try:
        meta = json.loads((out / runs.CHECKPOINT_META).read_text(encoding="utf-8"))
        runs.check_version(meta.get("metactl_version"), out / runs.CHECKPOINT_META)
        int(meta["step"]), meta["param_groups"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MetactlError(f"{out / runs.CHECKPOINT_META}: missing or damaged.", "The checkpoint cannot be resumed; start a new run.") from None
    theta, lr = runs.split_theta({k: v for k, v in tensors.items() if not k.startswith(("optimizer.", "extra."))})
    if set(theta) != set(learner.params) or any(theta[k].shape != learner.params[k].shape for k in theta):
        raise MetactlError(f"{out / runs.CHECKPOINT}: weights do not match this model.", "Resume with the same model settings the run was started with.")
    with torch.no_grad():
        for k, v in theta.items():
            learner.params[k].copy_(v)
        for k, v in lr.items():
            learner.inner_lr[k].copy_(v)
        for k, v in learner.extra.items():
            v.copy_(tensors[f"extra.{k}"])
    state: dict[str, Any] = {"state": {}, "param_groups": meta["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, i, name = key.split(".", 2)
            state["state"].setdefault(int(i), {})[name] = value
    opt.load_state_dict(state)
    return int(meta["step"]), float(meta["elapsed_seconds"]), int(meta.get("bad_steps_in_a_row", 0))


def _check_resume_config(out: Path, cfg: TrainConfig) -> None:
    old = runs.read_meta(out).get("config", {})
    keys = ("algo", "data", "ways", "shots", "query_shots", "inner_steps", "meta_batch", "seed", "width", "rotations")
    diff = [f"{k} ({old.get(k)!r} -> {getattr(cfg, k)!r})" for k in keys if k in old and old[k] != getattr(cfg, k)]
    if diff:
        raise MetactlError(f"--resume with settings that differ from the run in {out}: " + ", ".join(diff) + ".", "Resume with the run's own settings.")


def meta_train(cfg: TrainConfig, out: Path | None = None, force: bool = False, resume: bool = False, report: Reporter | None = None) -> TrainResult:
    report = report or Reporter()
    tune_malloc()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    check_device(cfg.device)
    algo_cls = load_algorithm(cfg.algo)
    algo = algo_cls(make_config(algo_cls, cfg.algo_options), cfg)
    world = init_from_env(cfg.device)
    try:
        return _meta_train(cfg, algo, world, out, force, resume, report)
    finally:
        shutdown(world)


def _meta_train(cfg: TrainConfig, algo: Any, world: World, out: Path | None, force: bool, resume: bool, report: Reporter) -> TrainResult:
    device = cfg.device
    if world.size > 1:
        if cfg.meta_batch % world.size:
            raise MetactlError(f"--meta-batch {cfg.meta_batch} does not split evenly over {world.size} workers.", "Use a meta-batch divisible by --nproc.")
        if device == "cuda":
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    main = world.main
    out = out or default_run_dir(cfg)
    replaces: str | None = None
    if resume:
        _prepare_out(out, force, resume)
        _check_resume_config(out, cfg)
        replaces = runs.read_meta(out).get("replaces")
    data: TaskData = open_data(cfg, report.load)
    if data.kind == "regression" and cfg.data != "sinusoid":  # pragma: no cover - future sources
        raise MetactlError("unsupported regression source")
    if not resume and main:
        work = _prepare_out(out, force, resume)
        replaces = str(out) if work != out else None
        out = work
    learner = init_learner(data.model_spec, cfg, data.kind, device, getattr(algo, "inner_lr_shape", "layer"))
    if hasattr(algo, "setup"):  # e.g. pretrain's classifier over all training classes
        pool = getattr(data.train, "pool", None)
        algo.setup(learner, {"train_classes": pool.num_classes if pool is not None else 0})
    opt = make_optimizer(algo, learner, cfg)
    start_step, elapsed_before, bad = (0, 0.0, 0)
    if resume:
        start_step, elapsed_before, bad = _load_checkpoint(out, learner, opt)
        if main:
            _truncate_metrics(out / runs.METRICS, start_step)
            report.message(f"Resuming {out} from step {start_step}.")
    world.broadcast_([t.data for t in learner.parameters()])

    meta = {
        "metactl_version": __version__,
        "kind": "run",
        "algorithm": {"name": cfg.algo, "config": _asdict(algo.config)},
        "config": cfg.to_dict(),
        "task": data.kind,
        "model": data.model_spec,
        "data": data.spec,
        "preprocessing": data.preprocessing,
        "split": data.split,
        "seed": cfg.seed,
        "budget": {"steps": cfg.steps, "time_budget_minutes": cfg.time_budget},
        "workers": world.size,
        "inner_lr_shape": getattr(algo, "inner_lr_shape", "layer"),
        "status": "running",
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    if replaces:
        meta["replaces"] = replaces
    validate = data.val is not None and main

    def val_curve_now() -> list[dict[str, float]]:
        return summarise(adaptation_curve(algo, learner, data.val, cfg.eval_episodes, cfg.test_inner_steps, cfg.seed, device))

    val_start: list[dict[str, float]] = []
    if main:
        runs.atomic_write_json(out / runs.META, meta)
        if validate and cfg.eval_every > 0 and start_step == 0:
            val_start = val_curve_now()

    budget = cfg.time_budget * 60 if cfg.time_budget else math.inf
    t0 = time.perf_counter() - elapsed_before
    stopped_by = "steps"
    skipped = 0
    val_seconds = 0.0  # validation inside the loop; snapshots report training time without it
    step = start_step
    report.start(start_step, cfg.steps)
    mine = world.slice(cfg.meta_batch)
    workers = task_workers(cfg, algo, device, len(mine))
    ctrl_c = _DeferredInterrupt()
    batches = prefetch(lambda s: training_tasks(data.train, cfg.seed, s, mine, TRAIN_STREAM), range(start_step, cfg.steps))
    try:
        for ep in batches:
            # a safe point: Ctrl-C and the time budget take effect here, on every rank at the same step
            if world.any(time.perf_counter() - t0 >= budget or ctrl_c.is_set()):
                if world.any(ctrl_c.is_set()):
                    raise KeyboardInterrupt
                stopped_by = "time-budget"
                break
            ts = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            if hasattr(algo, "progress"):  # schedules (e.g. Reptile's annealed β) read the fraction done
                algo.progress = step / cfg.steps
            metrics = task_parallel_meta_gradient(algo, learner, to_batch(ep, device), workers)
            if world.size > 1:  # identical mean meta-gradient (and logged metrics) on every rank
                for p in learner.parameters():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                stats = torch.tensor([metrics["loss"], metrics["metric"]], dtype=torch.float64, device=device)
                world.average_([p.grad for p in learner.parameters()] + [stats])
                metrics = {"loss": float(stats[0]), "metric": float(stats[1])}
            finite = math.isfinite(metrics["loss"]) and all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in learner.parameters())
            if finite:
                opt.step()
                bad = 0
            else:
                skipped += 1
                bad += 1
            step += 1
            record: dict[str, Any] = {
                "step": step,
                "loss": metrics["loss"],
                "train_metric": metrics["metric"],
                "seconds": time.perf_counter() - ts,
                "elapsed": time.perf_counter() - t0,
            }
            if not finite:
                record["skipped"] = True
            if validate and cfg.eval_every > 0 and (step % cfg.eval_every == 0):
                tv = time.perf_counter()
                record["val"] = [c["mean"] for c in val_curve_now()]
                val_seconds += time.perf_counter() - tv
            if main:
                runs.append_jsonl(out / runs.METRICS, record)
                report.step(step, record)
            if bad >= cfg.max_bad_steps:
                stopped_by = "non-finite"
                break
            if main and cfg.snapshot_every and step % cfg.snapshot_every == 0:
                _save_snapshot(out, learner, meta, step, time.perf_counter() - t0 - val_seconds)
            if main and step % cfg.checkpoint_every == 0:
                _save_checkpoint(out, learner, opt, step, time.perf_counter() - t0, bad)
    except KeyboardInterrupt:
        # Ctrl-C: keep what was learned, resumable with --resume, then exit 130 (the CLI does).
        if main:
            _save_checkpoint(out, learner, opt, step, time.perf_counter() - t0, bad)
            report.message(f"Interrupted at step {step}; checkpoint saved. Continue with: metactl meta-train --out {out} --resume")
        raise
    finally:
        batches.close()
        ctrl_c.restore()
    seconds = time.perf_counter() - t0
    if not main:
        world.barrier()  # wait for rank 0 to finish writing, then leave together
        return TrainResult(run_dir=Path(replaces or out), steps_done=step, seconds=seconds, stopped_by=stopped_by, skipped_steps=skipped)
    _save_checkpoint(out, learner, opt, step, seconds, bad)
    _save_theta(out, learner)
    val_curve: list[dict[str, float]] = []
    if data.val is not None:
        val_curve = val_curve_now()
    if val_curve:  # the step count that adapted best on validation classes: adapt's default
        after = [c["mean"] for c in val_curve[1:]]  # after 1..K steps
        best = max(after) if data.kind == "classification" else min(after)
        meta["adapt_steps"] = 1 + after.index(best) if after else 0
    meta.update(
        status="complete" if stopped_by != "non-finite" else "stopped-non-finite",
        finished=datetime.now().isoformat(timespec="seconds"),
        steps_done=step,
        seconds=round(seconds, 2),
        stopped_by=stopped_by,
        skipped_steps=skipped,
        validation={"episodes": cfg.eval_episodes, "inner_steps": cfg.test_inner_steps, "curve": val_curve},
    )
    if replaces:
        meta.pop("replaces")
        runs.atomic_write_json(out / runs.META, meta)
        runs.replace_dir(out, Path(replaces))
        out = Path(replaces)
    else:
        runs.atomic_write_json(out / runs.META, meta)
    world.barrier()
    if stopped_by == "non-finite":
        raise MetactlError(
            f"Training stopped: {cfg.max_bad_steps} meta-steps in a row had a non-finite loss or gradient (each was skipped). "
            f"The last good θ is saved in {out}.",
            f"Try a lower --meta-lr (now {cfg.meta_lr:g}) or --inner-lr (now {cfg.inner_lr:g}).",
        )
    return TrainResult(
        run_dir=out,
        steps_done=step,
        seconds=seconds,
        stopped_by=stopped_by,
        val_curve=val_curve,
        val_curve_start=val_start,
        inner_lr={k: float(v.detach().mean()) for k, v in learner.inner_lr.items()},
        skipped_steps=skipped,
    )


class _DeferredInterrupt:
    """The first Ctrl-C only sets a flag, so the step in flight completes (θ, optimizer state, step
    count and metrics stay consistent) and the loop stops at its next safe point; a second Ctrl-C
    interrupts at once."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self._flag.is_set():
            raise KeyboardInterrupt
        self._flag.set()

    def is_set(self) -> bool:
        return self._flag.is_set()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _asdict(config: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    runs.atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode("utf-8"))


def load_run(run: Path, device: str = "cpu") -> tuple[dict[str, Any], Learner]:
    """Read a run dir back into (metadata, learner with θ and α)."""
    meta = runs.read_meta(run)
    if meta.get("kind") != "run":
        raise MetactlError(
            f"{run}: not a meta-training run ({runs.META} says kind={meta.get('kind')!r}).",
            "Pass a directory written by metactl meta-train.",
        )
    runs.require(meta, ("model", "config", "algorithm"), run)
    if not (run / runs.THETA).is_file():
        raise MetactlError(
            f"{run}: the run has no {runs.THETA} yet (status {meta.get('status')!r}).",
            f"Finish it: metactl meta-train --out {run} --resume",
        )
    tensors = runs.load_tensors(run / runs.THETA)
    theta, lr = runs.split_theta(tensors)
    model = build_model(meta["model"]).to(device)
    expected = dict(model.named_parameters())
    if set(theta) != set(expected) or any(theta[k].shape != expected[k].shape for k in theta):
        raise MetactlError(f"{run / runs.THETA}: weights do not match the model in {runs.META}.", "The run is damaged or from another version.")
    params = {k: v.to(device).requires_grad_(True) for k, v in theta.items()}
    inner = {k: lr[k].to(device) if k in lr else torch.tensor(0.0, device=device) for k in params}
    return meta, Learner(model, params, inner, meta.get("task", "classification"), per_step_lr=meta.get("inner_lr_shape") == "step")


__all__ = ["Reporter", "TrainResult", "load_run", "meta_train"]
