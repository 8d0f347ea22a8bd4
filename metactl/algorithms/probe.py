"""Linear probe: L2-regularised logistic regression on the body's features (no meta-training).

The standard frozen-encoder baseline: the head is fitted to the support examples' features f(x) at θ
by minimising (1/n) Σ cross-entropy + (λ/2)‖W‖² (the bias unregularised) with L-BFGS from a zero head,
which for this convex objective reaches its unique optimum. ``c`` is scikit-learn's C, λ = 1/(C·n).

Usage::

    metactl meta-train --algo probe --backbone DIR --adapt head --data intents:DIR --steps 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from metactl.algorithms.centroid import fitted_head, fitted_head_metrics
from metactl.api import AlgorithmBase, Inputs, Learner, Params, TaskBatch


@dataclass(frozen=True)
class ProbeConfig:
    c: float = 1.0  # inverse regularisation strength (scikit-learn's C)
    max_iter: int = 100  # L-BFGS iterations

    def __post_init__(self) -> None:
        if self.c <= 0 or self.max_iter < 1:
            raise ValueError("c must be > 0 and max_iter >= 1")


def fit_logistic(feats: Tensor, y: Tensor, num_classes: int, c: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """(weight, bias) minimising mean cross-entropy + ‖W‖² / (2 C n) on ``feats`` (float64 L-BFGS)."""
    f = feats.detach().double()
    n = f.shape[0]
    w = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(F.linear(f, w, b), y) + w.pow(2).sum() / (2 * c * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


class LinearProbe(AlgorithmBase):
    """Baseline: logistic regression on the body's features (no meta-training)."""

    name: ClassVar[str] = "probe"
    description: ClassVar[str] = "Baseline: logistic regression (linear probe) on the (frozen) body's features, no meta-training"
    Config: ClassVar[type] = ProbeConfig
    meta_learns: ClassVar[bool] = False
    task_parallel: ClassVar[bool] = True

    def __init__(self, config: ProbeConfig, train: Any) -> None:
        super().__init__(config, train)

    def _head(self, learner: Learner, params: Params, x: Inputs, y: Tensor) -> Params:
        return fitted_head(learner, params, x, y, lambda f, t, n: fit_logistic(f, t, n, self.config.c, self.config.max_iter))

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        """The query loss and accuracy of the fitted probe (logged); no gradient: nothing is meta-learned."""
        return fitted_head_metrics(learner, batch, self._head)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        """θ (step 0), then θ with the fitted probe for every step 1..steps (L-BFGS runs to convergence once)."""
        theta = {k: v.detach() for k, v in learner.params.items()}
        fitted = self._head(learner, theta, x, y)
        return [dict(theta)] + [dict(fitted) for _ in range(steps)]
