"""Adaptation curves: the metric after each inner step 0..K on held-out episodes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from metactl.api import Learner, TaskBatch
from metactl.data.episodes import EpisodeBatch, Sampler, episode_rng

EVAL_STREAM = 1  # episode streams: 0 = training, 1 = validation/evaluation


def to_batch(ep: EpisodeBatch, device: str | torch.device = "cpu") -> TaskBatch:
    """numpy episodes -> tensors; images uint8 (ink = 255) become float in [0, 1]."""

    def x(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.float() / 255.0 if t.dtype == torch.uint8 else t).to(device)

    classes = None if ep.classes is None else torch.from_numpy(np.ascontiguousarray(ep.classes)).to(device)
    return TaskBatch(
        x(ep.support_x),
        torch.from_numpy(np.ascontiguousarray(ep.support_y)).to(device),
        x(ep.query_x),
        torch.from_numpy(np.ascontiguousarray(ep.query_y)).to(device),
        classes,
    )


def adaptation_curve(algo: Any, learner: Learner, sampler: Sampler, episodes: int, steps: int, seed: int, device: str = "cpu", chunk: int = 20) -> np.ndarray:
    """(episodes, steps + 1) metric per episode after 0..steps inner steps (same episodes for a seed)."""
    out = np.empty((episodes, steps + 1))
    done = 0
    while done < episodes:
        n = min(chunk, episodes - done)
        fixed = getattr(sampler, "episodes", None)  # a fixed set (Lake's one-shot runs) is not sampled
        ep = fixed(done, n) if fixed is not None else sampler.sample(episode_rng(seed, done // chunk, EVAL_STREAM), n)
        batch = to_batch(ep, device)
        for i in range(n):
            sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
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


def _held_out_sampler(meta: dict[str, Any], data: str | None, ways: int, shots: int, queries: int, protocol: str | None = None) -> Any:
    """Episodes from classes the run never trained on: ``data`` (all its classes, or an Omniglot
    protocol's test characters) or, without ``data``, the run's own held-out classes."""
    from pathlib import Path

    from metactl.data import glyphs, omniglot
    from metactl.data.episodes import ClassificationEpisodes, SinusoidEpisodes
    from metactl.data.folder import detect_invert, load_folder
    from metactl.data.images import default_preprocessing
    from metactl.errors import MetactlError

    if meta.get("task") == "regression":
        if data not in (None, "sinusoid"):
            raise MetactlError(f"--data {data}: this run is a sinusoid regression run.", "Drop --data or use --data sinusoid.")
        return SinusoidEpisodes(shots, queries)
    recorded = meta["data"]
    if data is None:
        if recorded.get("kind") == "omniglot":  # the protocol's test characters
            data, protocol = f"omniglot:{recorded['path']}", protocol or recorded.get("protocol", "lake")
        elif recorded.get("kind") == "folder":
            data = recorded["path"]
        else:
            data = "glyphs"
    spec = data
    if spec == "glyphs":
        pool: Any = glyphs.GlyphPool(*glyphs.TEST)
        return ClassificationEpisodes(pool, ways, shots, queries, "glyph test")
    if spec == "sinusoid":
        raise MetactlError("--data sinusoid: this run is a classification run.", "Use image data.")
    prep = dict(meta.get("preprocessing") or default_preprocessing())
    kind, _, rest = spec.partition(":")
    path = Path(rest if kind in ("omniglot", "oneshot") and rest else spec).expanduser()
    if not path.exists():
        raise MetactlError(f"--data {spec}: no such folder or file.", "Pass a folder of class folders, a .zip of one, omniglot:DIR or oneshot:PATH.")
    if kind == "oneshot":
        prep["invert"] = True
        return omniglot.oneshot_runs(path, prep)
    if kind == "omniglot" and omniglot.find_parts(path) is not None:
        prep["invert"] = True
        proto = protocol or "lake"
        test = omniglot.protocol_pools(omniglot.Omniglot(path, prep), proto, ("test",))["test"]
        return ClassificationEpisodes(test, ways, shots, queries, f"Omniglot {proto} test")
    prep["invert"] = detect_invert(path)
    pool = load_folder(path, prep)
    if data == recorded.get("path") and "val" in meta.get("split", {}):  # the run's own held-out validation classes
        names = set(meta["split"]["val"])
        pool = pool.subset([i for i, n in enumerate(pool.names()) if n in names])
    return ClassificationEpisodes(pool, ways, shots, queries, "evaluation")


def evaluate_runs(
    run_dirs: list[Any],
    data: str | None = None,
    ways: int | None = None,
    shots: int | None = None,
    queries: int = 15,
    episodes: int = 600,
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    protocol: str | None = None,
) -> list[dict[str, Any]]:
    """Adaptation curves of several runs on the same held-out episodes."""
    from metactl.config import TrainConfig
    from metactl.perf import check_device, tune_malloc
    from metactl.registry import load_algorithm, make_config
    from metactl.train import load_run

    check_device(device)
    tune_malloc()
    results = []
    for run in run_dirs:
        meta, learner = load_run(run, device)
        cfg = TrainConfig(**meta["config"])
        algo_cls = load_algorithm(meta["algorithm"]["name"])
        algo = algo_cls(make_config(algo_cls, meta["algorithm"].get("config", {})), cfg)
        k = steps if steps is not None else cfg.test_inner_steps
        sampler = _held_out_sampler(meta, data, ways or cfg.ways, shots or cfg.shots, queries, protocol)
        n = getattr(sampler, "ways", ways or cfg.ways)
        if learner.task == "classification" and n != cfg.ways:
            # N' != N: a zero-initialised head, exactly as ``metactl adapt`` starts one
            from metactl.adapt import with_head

            learner, _ = with_head(learner, meta["model"], n)
        count = len(sampler) if hasattr(sampler, "episodes") else episodes
        values = adaptation_curve(algo, learner, sampler, count, k, seed, device)
        results.append(
            {
                "run": str(run),
                "algorithm": cfg.algo,
                "metric": "accuracy" if learner.task == "classification" else "mse",
                "ways": n if learner.task == "classification" else None,
                "episodes": count,
                "head": "meta-learned" if learner.task != "classification" or n == cfg.ways else "zero-initialised",
                "steps": summarise(values),
            }
        )
    return results
