"""Calibration and out-of-scope metrics of a classifier's probabilities (numpy only).

- :func:`expected_calibration_error`: ECE with equal-width bins on the top probability (Guo et al. 2017,
  "On Calibration of Modern Neural Networks", 15 bins): Σ_b (n_b / n) |accuracy_b − confidence_b|;
- :func:`auroc`: the area under the ROC curve of a score that should be higher on one set than on
  another, i.e. P(score(positive) > score(negative)) + ½ P(tie), from ranks (ties get their mean rank);
- :func:`threshold_on_validation` / :func:`oos_at_threshold`: out-of-scope detection by thresholding
  the top probability, the threshold chosen on validation scores (never test) to maximise the mean of
  in-scope accuracy and out-of-scope recall, then applied to test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

ECE_BINS = 15


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike, bins: int = ECE_BINS) -> float:
    """ECE of top probabilities ``confidence`` (in [0, 1]) whose predictions were ``correct`` (bools):
    bins (i/bins, (i+1)/bins], the first also holding 0."""
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hit = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != hit.shape or conf.size == 0:
        raise ValueError("confidence and correct must be non-empty and of the same length")
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.bincount(which, weights=hit, minlength=bins) - np.bincount(which, weights=conf, minlength=bins)
    return float(np.abs(gap).sum() / conf.size)


def auroc(positive: ArrayLike, negative: ArrayLike) -> float:
    """P(a positive's score > a negative's) + ½ P(equal), from the Mann–Whitney rank sum (ties: mean ranks)."""
    pos, neg = np.asarray(positive, dtype=np.float64).ravel(), np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("auroc needs at least one score in each set")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size)
    ranks[order] = np.arange(1, scores.size + 1)
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    for start, n in zip(first, counts, strict=True):  # ties share their mean rank
        if n > 1:
            ranks[order[start : start + n]] = start + (n + 1) / 2
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


@dataclass(frozen=True)
class OutOfScope:
    """Out-of-scope detection at a threshold t: an input is answered when its top probability is ≥ t."""

    threshold: float
    in_scope_accuracy: float  # in-scope inputs answered with the right label
    oos_recall: float  # out-of-scope inputs rejected (top probability < t)

    @property
    def balanced(self) -> float:
        return (self.in_scope_accuracy + self.oos_recall) / 2


def oos_at_threshold(threshold: float, in_confidence: ArrayLike, in_correct: ArrayLike, oos_confidence: ArrayLike) -> OutOfScope:
    """In-scope accuracy (answered and right) and out-of-scope recall (rejected) at ``threshold``."""
    conf, hit = np.asarray(in_confidence, dtype=np.float64).ravel(), np.asarray(in_correct, dtype=bool).ravel()
    oos = np.asarray(oos_confidence, dtype=np.float64).ravel()
    return OutOfScope(float(threshold), float(np.mean((conf >= threshold) & hit)), float(np.mean(oos < threshold)))


def threshold_on_validation(in_confidence: ArrayLike, in_correct: ArrayLike, oos_confidence: ArrayLike) -> OutOfScope:
    """The threshold (among 0 and every observed validation score) maximising the mean of in-scope accuracy
    and out-of-scope recall on these validation scores; ties: the lowest threshold."""
    candidates = np.unique(np.concatenate([[0.0], np.asarray(in_confidence, np.float64).ravel(), np.asarray(oos_confidence, np.float64).ravel()]))
    results = [oos_at_threshold(t, in_confidence, in_correct, oos_confidence) for t in candidates]
    return max(results, key=lambda r: (r.balanced, -r.threshold))


def top_probability(probabilities: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(top probability, predicted label) per row of ``probabilities``."""
    p = np.asarray(probabilities, dtype=np.float64)
    return p.max(-1), p.argmax(-1)


__all__ = ["ECE_BINS", "OutOfScope", "auroc", "expected_calibration_error", "oos_at_threshold", "threshold_on_validation", "top_probability"]
