"""A head adaptation as data (:class:`HeadAdaptation`): what an algorithm's ``adaptable_head`` hook returns and
``export --adaptable`` turns into ``adapt.onnx`` (:mod:`metactl.adapt_graph`). numpy only, so that algorithms can
declare it without loading onnx on the training path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STARTS = ("prototype", "initial", "zero", "probe")


class NotAdaptable(Exception):
    """Raised by an ``adaptable_head`` hook for a run whose adaptation a graph cannot replay (it changes the body);
    its message says why, and ``export --adaptable`` turns it into one error naming the algorithms that can."""


@dataclass(frozen=True)
class HeadAdaptation:
    """The head adaptation of one algorithm for one class count, as data (what ``adapt.onnx`` computes).

    ``start``: ``"prototype"`` (class means of the features; cosine: w = s·p/‖p‖, b = 0; Euclidean:
    w = 2s·p, b = −s‖p‖²), ``"initial"`` (θ's head: ``weight``, ``bias``), ``"zero"`` (a zero head) or
    ``"probe"`` (L2-regularised logistic regression at ``probe_c``, times ``scale``).
    ``alphas``: per inner step, (α of the weight, α of the bias): scalars, or element-wise arrays of
    the head's shape (Meta-SGD)."""

    start: str
    cosine: bool = False
    scale: float = 1.0
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    alphas: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    probe_c: float | None = None
    probe_iterations: int | None = None  # None: chosen from the conditioning bound (see metactl.adapt_probe)

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}")
        if self.start == "initial" and (self.weight is None or self.bias is None):
            raise ValueError("start 'initial' needs weight and bias")
        if self.start == "probe" and (self.probe_c is None or self.probe_c <= 0):
            raise ValueError("start 'probe' needs probe_c > 0")

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def same_as(self, other: HeadAdaptation) -> bool:
        """True when both compute the same head for every support set (one graph serves both)."""
        if (self.start, self.cosine, self.scale, self.probe_c, self.steps) != (other.start, other.cosine, other.scale, other.probe_c, other.steps):
            return False
        arrays = [(self.weight, other.weight), (self.bias, other.bias)] + [
            pair for a, b in zip(self.alphas, other.alphas, strict=True) for pair in zip(a, b, strict=True)
        ]
        return all((x is None and y is None) or (x is not None and y is not None and np.shape(x) == np.shape(y) and np.array_equal(x, y)) for x, y in arrays)

    def describe(self) -> dict[str, object]:
        """What metactl.json records about it."""
        alphas = [[_summary(a) for a in pair] for pair in self.alphas]
        out: dict[str, object] = {"start": self.start, "steps": self.steps, "alphas": alphas}
        if self.start == "prototype":
            out.update(cosine=self.cosine, temperature=self.scale)
        if self.start == "probe":
            out.update(c=self.probe_c, temperature=self.scale)
        return out


def _summary(a: np.ndarray) -> float | dict[str, float]:
    arr = np.asarray(a, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max())}


__all__ = ["STARTS", "HeadAdaptation", "NotAdaptable"]
