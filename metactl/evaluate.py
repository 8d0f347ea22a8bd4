"""Adaptation curves: the metric after each inner step 0..K on held-out episodes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metactl import contract, runs
from metactl._callable import callable_module
from metactl.api import Inputs, Learner, inputs_len
from metactl.calibration import expected_calibration_error
from metactl.config import EvaluateOptions, TrainConfig
from metactl.data import all_classes_sampler, domain_sampler, held_out_sampler
from metactl.data.episodes import Sampler, episode_rng
from metactl.data.tensors import to_batch
from metactl.perf import check_device, tune_malloc
from metactl.registry import build_algorithm

EVAL_STREAM = 1  # episode streams: 0 = training, 1 = validation/evaluation


def algorithm_of_run(meta: dict[str, Any], cfg: TrainConfig) -> Any:
    """The algorithm a run was trained with, with its recorded options."""
    return build_algorithm(meta["algorithm"]["name"], meta["algorithm"].get("config", {}), cfg)


def feature_fn(learner: Learner, device: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Examples (a dict of arrays) -> the body's features at θ, as numpy: for samplers that replace
    their examples by features once (a frozen body)."""

    def fn(x: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in x.items()}
            return learner.features(learner.params, inputs).float().cpu().numpy()

    return fn


def body_features(learner: Any, x: Inputs, batch_size: int = 128) -> torch.Tensor:
    """The fixed body's features of every example of ``x`` (a dict of token arrays), in order: computed
    ``batch_size`` texts at a time in order of length, each batch cut to its longest text (:func:`_rows`;
    mean pooling over the attention mask makes the padding columns no text uses irrelevant)."""
    assert isinstance(x, dict) and "attention_mask" in x  # the caller checked adapts_head_only (a text model)
    order = torch.argsort(x["attention_mask"].sum(-1), stable=True)
    by_length = {k: v[order] for k, v in x.items()}
    n = len(order)
    with torch.no_grad():
        f = torch.cat([learner.features(learner.params, _rows(by_length, lo, min(lo + batch_size, n))).float() for lo in range(0, n, batch_size)])
    out = torch.empty_like(f)
    out[order] = f
    return out


def _rows(x: Inputs, lo: int, hi: int) -> Inputs:
    """Rows ``lo:hi`` of a task's examples; token arrays lose the padding columns no row of them uses."""
    if not isinstance(x, dict):
        return x[lo:hi]
    part = {k: v[lo:hi] for k, v in x.items()}
    if "attention_mask" in part:
        width = max(int(part["attention_mask"].sum(-1).max()), 1)
        part = {k: v[:, :width] if k in ("input_ids", "attention_mask", "token_type_ids") else v for k, v in part.items()}
    return part


def predict_in_chunks(learner: Learner, params: Any, sx: Inputs, qx: Inputs, chunk: int) -> torch.Tensor:
    """The query outputs ``chunk`` queries at a time (memory bounded by the chunk, not the query set).
    For models whose prediction for an example does not depend on the batch (text classifiers)."""
    n = inputs_len(qx)
    return torch.cat([learner.forward(params, _rows(qx, lo, min(lo + chunk, n))) for lo in range(0, n, chunk)])


def _head_only_inputs(learner: Learner, sx: Inputs, sy: Tensor, qx: Inputs, qy: Tensor) -> tuple[Inputs, Tensor, Inputs, Tensor]:
    """An episode's texts as their body's features when only the head adapts (the body then runs once per
    text, not once per inner step); anything else unchanged."""
    if learner.model.adapts_head_only() and isinstance(sx, dict) and "features" not in sx:
        return {"features": body_features(learner, sx)}, sy, {"features": body_features(learner, qx)}, qy
    return sx, sy, qx, qy


def calibration_error(logits: Tensor, y: Tensor) -> float:
    """Expected calibration error (:data:`metactl.calibration.ECE_BINS` bins) of the softmax of ``logits``."""
    top, pred = logits.float().softmax(-1).max(-1)
    return expected_calibration_error(top.cpu().numpy(), (pred == y).cpu().numpy())


def _all_classes_curve(algo: Any, learner: Learner, sampler: Any, draws: int, steps: int, seed: int, device: str, ece: np.ndarray | None = None) -> np.ndarray:
    """(draws, steps + 1) accuracy per draw of an every-class sampler (:meth:`draw`), queries in chunks;
    ``ece`` (the same shape), when given, is filled with each draw's expected calibration error."""
    out = np.empty((draws, steps + 1))
    for d in range(draws):
        sx, sy, qx, qy = _head_only_inputs(learner, *to_batch(sampler.draw(seed, d), device).task(0))
        trajectory = algo.adapt(learner, sx, sy, steps)
        with torch.no_grad():
            for k, params in enumerate(trajectory):
                logits = predict_in_chunks(learner, params, sx, qx, sampler.query_chunk)
                out[d, k] = learner.metric(logits, qy)
                if ece is not None:
                    ece[d, k] = calibration_error(logits, qy)
    return out


def adaptation_curve(
    algo: Any, learner: Learner, sampler: Sampler, episodes: int, steps: int, seed: int, device: str = "cpu", chunk: int = 20, ece: np.ndarray | None = None
) -> np.ndarray:
    """(episodes, steps + 1) metric per episode after 0..steps inner steps (same episodes for a seed).
    A sampler with ``draw(seed, d)`` (every class at once) gives draw ``d`` as episode ``d``, and fills
    ``ece`` (when given, of the same shape) with each draw's expected calibration error."""
    if contract.hook(sampler, "draw") is not None:
        return _all_classes_curve(algo, learner, sampler, episodes, steps, seed, device, ece)
    out = np.empty((episodes, steps + 1))
    done = 0
    while done < episodes:
        n = min(chunk, episodes - done)
        fixed = getattr(sampler, "episodes", None)  # a fixed set (Lake's one-shot runs) is not sampled
        ep = fixed(done, n) if fixed is not None else sampler.sample(episode_rng(seed, done // chunk, EVAL_STREAM), n)
        batch = to_batch(ep, device)
        for i in range(n):
            sx, sy, qx, qy = _head_only_inputs(learner, *batch.task(i))
            trajectory = algo.adapt(learner, sx, sy, steps)
            with torch.no_grad():
                for k, params in enumerate(trajectory):
                    out[done + i, k] = learner.metric(learner.predict_query(params, sx, qx), qy)
        done += n
    return out


def summarise(values: np.ndarray) -> list[dict[str, float]]:
    """Mean and 95 % confidence interval (1.96 std / sqrt(n)) per step, and the median (robust to a
    few diverging episodes, which regression MSE can have)."""
    n = values.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        return [
            {
                "step": k,
                "mean": float(values[:, k].mean()),
                "ci95": float(1.96 * values[:, k].std() / np.sqrt(max(n, 1))),
                "median": float(np.median(values[:, k])),
            }
            for k in range(values.shape[1])
        ]


def run_curve(
    meta: dict[str, Any],
    learner: Learner,
    sampler: Any,
    episodes: int,
    steps: int,
    seed: int,
    device: str = "cpu",
    inner_lr: float | None = None,
    precompute: bool = True,
    ece: np.ndarray | None = None,
) -> np.ndarray:
    """One run's adaptation curve on ``sampler``: a zero head for another number of classes (as
    ``metactl adapt`` starts one), one inner learning rate for every tensor with ``inner_lr``, and the
    body's features computed once first when only the head adapts (``precompute=False``: ``sampler`` has them already).
    ``ece``: filled with each draw's expected calibration error (an every-class sampler; see :func:`adaptation_curve`)."""
    cfg = TrainConfig(**meta["config"])
    algo = algorithm_of_run(meta, cfg)
    n = getattr(sampler, "ways", cfg.ways)
    if learner.task == "classification" and n != cfg.ways:
        learner, _ = runs.with_head(learner, meta["model"], n)  # N' != N: a zero head, exactly as ``metactl adapt`` starts one
    if inner_lr is not None:
        learner = learner.replace(inner_lr={k: torch.full_like(v, inner_lr) for k, v in learner.inner_lr.items()})
    if precompute and learner.model.adapts_head_only() and contract.hook(sampler, "precompute") is not None:
        sampler.precompute(feature_fn(learner, device))
    return adaptation_curve(algo, learner, sampler, episodes, steps, seed, device, ece=ece)


def held_out_episodes(meta: dict[str, Any], cfg: TrainConfig, o: EvaluateOptions) -> Any:
    """The sampler ``o`` asks for, for the run described by ``meta`` (its own N and K unless ``o`` sets them)."""
    shots = o.shots or cfg.shots
    if o.all_classes:
        names = cfg.label_names if o.label_names is None else o.label_names
        return all_classes_sampler(meta, o.data, shots, o.protocol, o.split, label_names=names)
    if o.by_domain:
        return domain_sampler(meta, o.data, shots, o.query_shots, o.protocol, o.split)
    return held_out_sampler(meta, o.data, o.ways or cfg.ways, shots, o.query_shots, o.protocol, o.split)


def evaluate_runs(run_dirs: list[Any], options: EvaluateOptions | None = None) -> list[dict[str, Any]]:
    """Adaptation curves of several runs on the same held-out episodes (:class:`EvaluateOptions`: which).

    ``split="val"`` scores on each run's validation classes instead of its test classes;
    ``inner_lr`` replaces the run's (learned or fixed) inner learning rates by one rate for every
    adapted tensor: fine-tuning at a chosen rate, e.g. the best of a grid on ``split="val"``.
    ``all_classes``: every held-out class in each episode, ``episodes`` draws of ``shots`` support
    examples per class, queries = the whole test split (:func:`metactl.data.all_classes_sampler`);
    ``by_domain``: episodes of every intent of one CLINC150 domain (:func:`metactl.data.domain_sampler`)."""
    o = options or EvaluateOptions()
    check_device(o.device)
    tune_malloc()
    results = []
    for run in run_dirs:
        meta, learner = runs.load_run(run, o.device)
        cfg = TrainConfig(**meta["config"])
        sampler = held_out_episodes(meta, cfg, o)
        n = getattr(sampler, "ways", o.ways or cfg.ways)
        count = len(sampler) if contract.hook(sampler, "episodes") is not None else o.episodes
        t0 = time.perf_counter()
        steps = o.steps if o.steps is not None else cfg.test_inner_steps
        ece = np.full((count, steps + 1), np.nan) if o.all_classes and learner.task == "classification" else None
        values = run_curve(meta, learner, sampler, count, steps, o.seed, o.device, o.inner_lr, ece=ece)
        results.append(
            {
                "run": str(run),
                "algorithm": cfg.algo,
                "metric": "accuracy" if learner.task == "classification" else "mse",
                "ways": n if learner.task == "classification" else None,
                "episodes": count,
                "split": o.split,
                "inner_lr": o.inner_lr,
                "head": "meta-learned" if learner.task != "classification" or n == cfg.ways else "zero-initialised",
                "setting": o.setting,
                "shots": o.shots or cfg.shots,
                "queries": None if o.all_classes else o.query_shots,  # per class
                "query_texts": len(sampler) if o.all_classes else None,  # all-classes: the query texts of each draw
                "seconds": time.perf_counter() - t0,  # the frozen body's features (once), then adapting and scoring every episode
                "steps": summarise(values),
                "per_episode": values.tolist() if o.all_classes else None,  # draws are few: each one's curve
                "ece": None if ece is None else summarise(ece),  # all-classes: expected calibration error (15 bins) per step
            }
        )
    return results


callable_module(__name__, "evaluate")  # metactl.evaluate(...) is the Python API's evaluate (metactl.library.evaluate)
