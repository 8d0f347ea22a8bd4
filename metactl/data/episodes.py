"""The episode sampler: N-way K-shot support + Q queries per class, labels remapped to 0..N-1.

An episode batch is a pure function of ``(seed, step, split)``: the same numbers give the same
tasks on any machine, in any thread, after any resume. Batches are produced ahead of the training
loop by a prefetch thread so that decoding/rendering stays off the critical path.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from metactl.data import sinusoid
from metactl.errors import MetactlError


class ClassPool(Protocol):
    @property
    def num_classes(self) -> int: ...
    def count(self, c: int) -> int: ...
    def get(self, c: int) -> np.ndarray: ...
    def names(self) -> list[str]: ...


@dataclass(frozen=True)
class EpisodeBatch:
    """B tasks stacked: support (B, N*K, ...) and query (B, N*Q, ...); numpy, not yet tensors.

    For classification x is uint8 with shape (B, M, C, H, W) (C = 1: grayscale, ink = 255; C = 3: RGB) and y is int64 in
    0..N-1; class-major order (the K shots of class 0 first). For regression both are float32.
    A source with several arrays per example (token ids and an attention mask) gives x as a dict of them.
    """

    support_x: np.ndarray | dict[str, np.ndarray]
    support_y: np.ndarray
    query_x: np.ndarray | dict[str, np.ndarray]
    query_y: np.ndarray
    classes: np.ndarray | None = None  # (B, N) pool indices of the sampled classes


def episode_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, step])


def _concatenate(xs: list[Any]) -> Any:
    """Tasks stacked on axis 0; a dict's arrays of different last lengths (token ids padded per task)
    are first padded with 0 to the longest."""
    if isinstance(xs[0], dict):
        return {k: _pad_cat([x[k] for x in xs]) for k in xs[0]}
    return np.concatenate(xs)


def _pad_cat(arrays: list[np.ndarray]) -> np.ndarray:
    width = max(a.shape[-1] for a in arrays)
    return np.concatenate([np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])]) for a in arrays])


def training_tasks(sampler: Sampler, seed: int, step: int, indices: range, stream: int = 0) -> EpisodeBatch:
    """Tasks ``indices`` of meta-batch ``step``. Task i has its own random stream, so a meta-batch
    split across N ranks (rank r taking its slice of indices) holds exactly the tasks one rank sees."""
    parts = [sampler.sample(np.random.default_rng([seed, stream, step, i]), 1) for i in indices]
    classes = [p.classes for p in parts]
    return EpisodeBatch(
        _concatenate([p.support_x for p in parts]),
        np.concatenate([p.support_y for p in parts]),
        _concatenate([p.query_x for p in parts]),
        np.concatenate([p.query_y for p in parts]),
        None if any(c is None for c in classes) else np.concatenate(classes),  # type: ignore[arg-type]
    )


def split_classes(n: int, fraction: float, seed: int, ways: int) -> tuple[list[int], list[int]]:
    """Hold out ``fraction`` of the classes (at least ``ways``) for validation, seeded."""
    n_val = max(ways, round(n * fraction))
    if n - n_val < ways:
        raise MetactlError(
            f"The data has {n} classes: too few for {ways}-way training plus {n_val} held-out validation classes.",
            "Use more classes, fewer --ways, or a smaller val-classes fraction.",
        )
    perm = np.random.default_rng([seed, 0x5D1]).permutation(n)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


class ClassificationEpisodes:
    """Samples N-way K-shot episodes from a pool of classes."""

    def __init__(self, pool: ClassPool, ways: int, shots: int, queries: int, what: str = "training") -> None:
        need = shots + queries
        self.eligible = np.array([c for c in range(pool.num_classes) if pool.count(c) >= need], dtype=np.int64)
        if len(self.eligible) < ways:
            raise MetactlError(
                f"The {what} data has {len(self.eligible)} classes with at least {need} images "
                f"(shots {shots} + query-shots {queries}); a {ways}-way episode needs {ways}.",
                "Lower --ways, --shots or --query-shots, or use more data.",
            )
        self.pool, self.ways, self.shots, self.queries = pool, ways, shots, queries

    def sample(self, rng: np.random.Generator, tasks: int) -> EpisodeBatch:
        n, k, q = self.ways, self.shots, self.queries
        classes = np.stack([rng.choice(self.eligible, size=n, replace=False) for _ in range(tasks)])
        first = self.pool.get(int(classes[0, 0]))
        shape = first.shape[1:]  # (H, W) grayscale or (C, H, W) color
        per = (1, *shape) if len(shape) == 2 else shape
        sx = np.empty((tasks, n * k, *per), dtype=np.uint8)
        qx = np.empty((tasks, n * q, *per), dtype=np.uint8)
        sv, qv = (sx[:, :, 0], qx[:, :, 0]) if len(shape) == 2 else (sx, qx)  # views: grayscale fills channel 0
        for b in range(tasks):
            for j, c in enumerate(classes[b]):
                imgs = self.pool.get(int(c))
                pick = rng.choice(len(imgs), size=k + q, replace=False)
                sv[b, j * k : (j + 1) * k] = imgs[pick[:k]]
                qv[b, j * q : (j + 1) * q] = imgs[pick[k:]]
        sy = np.broadcast_to(np.repeat(np.arange(n), k), (tasks, n * k)).astype(np.int64)
        qy = np.broadcast_to(np.repeat(np.arange(n), q), (tasks, n * q)).astype(np.int64)
        return EpisodeBatch(sx, sy, qx, qy, classes)


class SinusoidEpisodes:
    def __init__(self, shots: int, queries: int) -> None:
        self.shots, self.queries = shots, queries

    def sample(self, rng: np.random.Generator, tasks: int) -> EpisodeBatch:
        return EpisodeBatch(*sinusoid.sample_tasks(rng, tasks, self.shots, self.queries))


class Sampler(Protocol):
    def sample(self, rng: np.random.Generator, tasks: int) -> EpisodeBatch: ...


def prefetch(make: Callable[[int], EpisodeBatch], steps: range, depth: int = 3) -> Iterator[EpisodeBatch]:
    """Yield ``make(step)`` for each step, computed ``depth`` steps ahead in a daemon thread."""
    q: queue.Queue[tuple[EpisodeBatch | None, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for s in steps:
                if stop.is_set():
                    return
                q.put((make(s), None))
        except BaseException as exc:  # surfaced in the consumer
            q.put((None, exc))

    t = threading.Thread(target=work, daemon=True, name="metactl-prefetch")
    t.start()
    try:
        for _ in steps:
            batch, exc = q.get()
            if exc is not None:
                raise exc
            assert batch is not None
            yield batch
    finally:
        stop.set()
        while not q.empty():
            q.get_nowait()
