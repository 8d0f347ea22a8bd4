"""metactl.calibration against references computed differently here: ECE by a loop over bins, AUROC by
counting pairs, the out-of-scope threshold by trying every candidate by hand; and ``evaluate``'s ECE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metactl.calibration import auroc, expected_calibration_error, oos_at_threshold, threshold_on_validation
from metactl.evaluate import calibration_error


def ece_by_loop(conf: list[float], correct: list[bool], bins: int = 15) -> float:
    """Σ over bins (lo, hi] (the first also holding 0) of (n_b / n)·|accuracy_b − mean confidence_b|."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0.0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            mean_conf = sum(conf[i] for i in members) / len(members)
            total += len(members) / len(conf) * abs(acc - mean_conf)
    return total


def test_ece_on_a_hand_example() -> None:
    # four predictions at 0.8, three right: |0.75 − 0.8| = 0.05; plus two at 0.3, none right: |0 − 0.3|, weight 2/6
    conf, correct = [0.8, 0.8, 0.8, 0.8, 0.3, 0.3], [True, True, True, False, False, False]
    assert expected_calibration_error(conf, correct) == pytest.approx(4 / 6 * 0.05 + 2 / 6 * 0.3)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    assert expected_calibration_error([0.0], [False]) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_ece_matches_a_loop_over_bins(seed: int) -> None:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.05, 1.0, size=200)
    correct = rng.random(200) < conf**2  # over-confident
    assert expected_calibration_error(conf, correct) == pytest.approx(ece_by_loop(conf.tolist(), correct.tolist()), abs=1e-12)


def auroc_by_pairs(pos: list[float], neg: list[float]) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pair_counting_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos, neg = rng.integers(0, 6, size=37).astype(float), rng.integers(0, 5, size=23).astype(float)  # many ties
    assert auroc(pos, neg) == pytest.approx(auroc_by_pairs(pos.tolist(), neg.tolist()), abs=1e-12)
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0 and auroc([1.0], [2.0]) == 0.0 and auroc([1.0, 1.0], [1.0]) == 0.5


def test_oos_threshold_is_the_best_validation_candidate_and_is_applied_to_test() -> None:
    rng = np.random.default_rng(0)
    val_in, val_hit, val_oos = rng.uniform(0.3, 1.0, 50), rng.random(50) < 0.8, rng.uniform(0.1, 0.8, 30)
    chosen = threshold_on_validation(val_in, val_hit, val_oos)
    best, best_t = -1.0, None
    for t in sorted({0.0, *val_in.tolist(), *val_oos.tolist()}):  # by hand: every candidate, ties to the lowest
        acc = sum(1 for c, h in zip(val_in, val_hit, strict=True) if c >= t and h) / len(val_in)
        rec = sum(1 for c in val_oos if c < t) / len(val_oos)
        if (acc + rec) / 2 > best:
            best, best_t = (acc + rec) / 2, t
    assert chosen.threshold == best_t and chosen.balanced == pytest.approx(best)
    test_in, test_hit, test_oos = rng.uniform(0.3, 1.0, 40), rng.random(40) < 0.8, rng.uniform(0.1, 0.8, 20)
    applied = oos_at_threshold(chosen.threshold, test_in, test_hit, test_oos)
    assert applied.in_scope_accuracy == pytest.approx(np.mean([h and c >= best_t for c, h in zip(test_in, test_hit, strict=True)]))
    assert applied.oos_recall == pytest.approx(np.mean([c < best_t for c in test_oos]))
    assert threshold_on_validation(val_in, val_hit, val_oos).threshold == chosen.threshold  # test scores play no part


def test_evaluate_ece_is_the_ece_of_the_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(40, 5, generator=g) * 3, torch.randint(0, 5, (40,), generator=g)
    probs = torch.softmax(logits.double(), -1)
    conf = [float(r.max()) for r in probs]
    correct = [int(r.argmax()) == int(t) for r, t in zip(probs, y, strict=True)]
    assert calibration_error(logits, y) == pytest.approx(ece_by_loop(conf, correct), abs=1e-6)
