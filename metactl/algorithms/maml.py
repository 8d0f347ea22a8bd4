"""MAML: Model-Agnostic Meta-Learning, second order.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017, https://arxiv.org/abs/1703.03400 — with per-layer learned inner learning rates
(Li et al. 2017, Meta-SGD; Antoniou et al. 2019, MAML++ "LSLR") when ``learn_inner_lr`` is on.

For each task i:   ϕᵢ = θ − α ∇θ L_supp,i(θ)   (``inner_steps`` times)
Outer objective:   (1/B) Σᵢ L_query,i(ϕᵢ),  differentiated through the inner steps (Hessian
terms included), w.r.t. θ and α.

Usage::

    metactl meta-train --algo maml --inner-steps 1 --inner-lr 0.4
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from metactl.api import Learner, Params, TaskBatch
from metactl.inner import adapt_trajectory, inner_loop


@dataclass(frozen=True)
class MAMLConfig:
    first_order: bool = False  # drop the second-order terms (the fomaml algorithm does this)


def maml_meta_gradient(learner: Learner, batch: TaskBatch, steps: int, second_order: bool) -> dict[str, float]:
    """Per-task loop (DESIGN §5): adapt, take the query loss at ϕᵢ, backpropagate it / B."""
    b = len(batch)
    total_loss = 0.0
    total_metric = 0.0
    for i in range(b):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        phi = inner_loop(learner, learner.params, sx, sy, steps, second_order=second_order)
        out = learner.predict_query(phi, sx, qx)
        loss = learner.loss(out, qy)
        (loss / b).backward()
        total_loss += float(loss.detach())
        total_metric += learner.metric(out.detach(), qy)
    return {"loss": total_loss / b, "metric": total_metric / b}


class MAML:
    """Second-order MAML with per-layer learned inner learning rates."""

    name: ClassVar[str] = "maml"
    description: ClassVar[str] = "MAML (Finn et al. 2017), second order, learned per-layer α"
    Config: ClassVar[type] = MAMLConfig

    def __init__(self, config: MAMLConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = int(train.inner_steps)

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        return maml_meta_gradient(learner, batch, self.inner_steps, second_order=not self.config.first_order)

    def adapt(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        return adapt_trajectory(learner, x, y, steps)
