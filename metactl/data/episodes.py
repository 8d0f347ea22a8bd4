"""The episode sampler: N-way K-shot support + Q queries per class, labels remapped to 0..N-1.

An episode batch is a pure function of ``(seed, step, split)``: the same numbers give the same
tasks on any machine, in any thread, after any resume. Batches are produced ahead of the training
loop by a prefetch thread so that decoding/rendering stays off the critical path.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from metactl.contract import Sampler
from metactl.data import sinusoid
from metactl.errors import MetactlError

Examples = Any  # what a pool gives for a list of examples: an array (images) or a dict of arrays (token ids and mask, features)
Picks = Sequence[tuple[int, np.ndarray]]  # (class, indices of its examples), in order


class ClassPool(Protocol):
    """Labeled examples by class, as :class:`ClassificationEpisodes` samples them (images or texts alike)."""

    unit: str  # what an example is called in messages: images, texts

    @property
    def num_classes(self) -> int: ...
    def count(self, c: int) -> int: ...
    def take(self, picks: Picks) -> Examples:
        """The examples ``picks`` in order, stacked on axis 0."""
        ...

    def precompute(self, fn: Callable[[Examples], Any], batch_size: int = 256, progress: Callable[[int, int], None] | None = None) -> None:
        """From now on :meth:`take` gives ``{"features": fn(examples)}``, computed once per example (a frozen body)."""
        ...

    def names(self) -> list[str]: ...


class ImagePool(ABC):
    """Base of the image pools: a subclass gives :meth:`get` (with ``num_classes``, ``count`` and
    ``names``); :meth:`take` gathers from it."""

    unit: ClassVar[str] = "images"

    @abstractmethod
    def get(self, c: int) -> np.ndarray:
        """Every image of class ``c``: uint8 (n, H, W) (grayscale) or (n, C, H, W)."""

    def take(self, picks: Picks) -> np.ndarray:
        """The images ``picks`` in order: uint8 (M, H, W) or (M, C, H, W)."""
        return np.concatenate([self.get(c)[idx] for c, idx in picks]).astype(np.uint8, copy=False)

    def precompute(self, fn: Callable[[Examples], Any], batch_size: int = 256, progress: Callable[[int, int], None] | None = None) -> None:
        """Nothing: images stay images (an image model's body runs on each episode's images; ``fn`` is unused)."""
        del fn, batch_size, progress


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
    """Arrays concatenated on axis 0, each first padded with 0 on every later axis to the largest size
    (token ids (B, M, L); cached hidden states (B, M, L, D))."""
    shape = [max(a.shape[d] for a in arrays) for d in range(1, arrays[0].ndim)]
    return np.concatenate([np.pad(a, [(0, 0)] + [(0, w - n) for w, n in zip(shape, a.shape[1:], strict=True)]) for a in arrays])


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
    """N-way K-shot episodes from a pool of classes, images or texts alike. The draws: for each task its
    ``ways`` classes (of those with at least K + Q examples, without replacement), then, task by task and
    class by class, K + Q of the class's examples (without replacement): the first K support, the rest
    queries. Class-major; labels 0..N-1. Images come as uint8 (B, M, C, H, W) (grayscale: C = 1), texts as
    ``{"input_ids", "attention_mask"}`` (B, M, L) padded to the longest of the batch, or ``{"features":
    (B, M, D)}`` after :meth:`precompute`."""

    def __init__(self, pool: ClassPool, ways: int, shots: int, queries: int, what: str = "training") -> None:
        need = shots + queries
        self.eligible = np.array([c for c in range(pool.num_classes) if pool.count(c) >= need], dtype=np.int64)
        if len(self.eligible) < ways:
            raise MetactlError(
                f"The {what} data has {len(self.eligible)} classes with at least {need} {pool.unit} "
                f"(shots {shots} + query-shots {queries}); a {ways}-way episode needs {ways}.",
                "Lower --ways, --shots or --query-shots, or use more data.",
            )
        self.pool, self.ways, self.shots, self.queries, self.what = pool, ways, shots, queries, what

    def precompute(self, fn: Callable[[Examples], Any], batch_size: int = 256, progress: Callable[[int, int], None] | None = None) -> None:
        """From now on episodes hold ``{"features": fn(examples)}``, computed once per example (text pools)."""
        self.pool.precompute(fn, batch_size, progress)

    def precompute_hidden(self, fn: Callable[[Examples], Any], tag: int, batch_size: int = 128, progress: Callable[[int, int], None] | None = None) -> None:
        """From now on episodes hold the texts' cached lower-layer hidden states (``--train-layers``, text pools:
        :meth:`metactl.data.text.TextPool.precompute_hidden`)."""
        self.pool.precompute_hidden(fn, tag, batch_size, progress)

    def classes(self, rng: np.random.Generator) -> np.ndarray:
        """One episode's classes (pool indices): ``ways`` of the eligible ones, drawn without replacement."""
        return rng.choice(self.eligible, size=self.ways, replace=False)

    def sample(self, rng: np.random.Generator, tasks: int) -> EpisodeBatch:
        n, k, q = self.ways, self.shots, self.queries
        classes = np.stack([self.classes(rng) for _ in range(tasks)])
        support: list[tuple[int, np.ndarray]] = []
        query: list[tuple[int, np.ndarray]] = []
        for b in range(tasks):
            for c in classes[b]:
                pick = rng.choice(self.pool.count(int(c)), size=k + q, replace=False)
                support.append((int(c), pick[:k]))
                query.append((int(c), pick[k:]))
        sy = np.broadcast_to(np.repeat(np.arange(n), k), (tasks, n * k)).astype(np.int64)
        qy = np.broadcast_to(np.repeat(np.arange(n), q), (tasks, n * q)).astype(np.int64)
        return EpisodeBatch(_by_task(self.pool.take(support), tasks, n * k), sy, _by_task(self.pool.take(query), tasks, n * q), qy, classes)


def _by_task(x: Examples, tasks: int, m: int) -> Examples:
    """(tasks * m, ...) examples as (tasks, m, ...); grayscale images (H, W) get their channel axis."""
    if isinstance(x, dict):
        return {key: v.reshape(tasks, m, *v.shape[1:]) for key, v in x.items()}
    per = (1, *x.shape[1:]) if x.ndim == 3 else x.shape[1:]
    return x.reshape(tasks, m, *per)


class SinusoidEpisodes:
    def __init__(self, shots: int, queries: int) -> None:
        self.shots, self.queries = shots, queries

    def sample(self, rng: np.random.Generator, tasks: int) -> EpisodeBatch:
        return EpisodeBatch(*sinusoid.sample_tasks(rng, tasks, self.shots, self.queries))


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
