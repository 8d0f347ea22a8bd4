"""MAML: Model-Agnostic Meta-Learning, second order — with the MAML++ training options.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017, https://arxiv.org/abs/1703.03400 — with per-layer learned inner learning rates
(Li et al. 2017, Meta-SGD; Antoniou et al. 2019, MAML++ "LSLR") when ``learn_inner_lr`` is on.

For each task i:   ϕᵢ = θ − α ∇θ L_supp,i(θ)   (``inner_steps`` times)
Outer objective:   (1/B) Σᵢ L_query,i(ϕᵢ),  differentiated through the inner steps (Hessian
terms included), w.r.t. θ and α.

MAML++ options (Antoniou, Edwards, Storkey, "How to train your MAML", ICLR 2019,
https://arxiv.org/abs/1810.09502):
- ``multi_step_loss``: the outer loss is Σₖ wₖ L_query(ϕₖ) over every inner step k = 1..K; the
  weights start uniform and anneal over the first ``msl_anneal`` fraction of training until only
  the last step counts (MSL).
- ``second_order_after``: first-order gradients for the first N outer steps, second order after
  (derivative-order annealing).
- ``per_step_inner_lr``: LSLR — one learned α per layer and per inner step (test-time steps beyond
  the trained ones reuse the last step's α).

Usage::

    metactl meta-train --algo maml --inner-steps 1 --inner-lr 0.4
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from metactl.api import AlgorithmBase, Inputs, Learner, Params, TaskBatch
from metactl.inner import adapt_trajectory, inner_step


@dataclass(frozen=True)
class MAMLConfig:
    first_order: bool = False  # drop the second-order terms (the fomaml algorithm does this)
    multi_step_loss: bool = False  # MAML++ MSL: query loss after every inner step, annealed weights
    msl_anneal: float = 0.3  # fraction of training over which MSL weights move to the last step
    second_order_after: int = 0  # MAML++: first order for the first N outer steps
    per_step_inner_lr: bool = False  # MAML++ LSLR: a learned α per layer *and per inner step*

    def __post_init__(self) -> None:
        if not 0 < self.msl_anneal <= 1:
            raise ValueError("msl_anneal must be in (0, 1]")
        if self.second_order_after < 0:
            raise ValueError("second_order_after must be >= 0")


def msl_weights(steps: int, progress: float, anneal: float) -> list[float]:
    """MAML++ importance of the query loss after each inner step 1..K (sums to 1)."""
    if steps <= 1:
        return [1.0] * steps
    floor = 0.03 / steps
    t = min(progress / anneal, 1.0)
    early = [1.0 / steps - t * (1.0 / steps - floor)] * (steps - 1)
    return [*early, 1.0 - sum(early)]


def _checkpointed_step(learner: Learner, phi: Params, sx: Tensor, sy: Tensor, second_order: bool, k: int) -> Params:
    """One inner step whose activations are not kept: the backward pass recomputes them
    (non-reentrant ``torch.utils.checkpoint``, which supports the ``autograd.grad`` inside and the
    double backward through it). Memory then holds only ϕₖ per step, not step k's graph."""
    names = list(phi)

    def step(*values: Tensor) -> tuple[Tensor, ...]:
        new, _ = inner_step(learner, dict(zip(names, values, strict=True)), sx, sy, second_order=second_order, step=k)
        return tuple(new[n] for n in names)

    out = checkpoint(step, *[phi[n] for n in names], use_reentrant=False, preserve_rng_state=False)
    return dict(zip(names, out, strict=True))


def maml_meta_gradient(
    learner: Learner, batch: TaskBatch, steps: int, second_order: bool, step_weights: list[float] | None = None, checkpoint_inner: bool = False
) -> dict[str, float]:
    """Per-task loop: adapt, take the query loss at ϕᵢ, backpropagate it / B (``vmap`` over tasks
    measured slower on CPU, and wrong through BatchNorm's double backward).

    ``step_weights`` (length ``steps``): the outer loss is Σₖ wₖ L_query(ϕₖ) instead of L_query(ϕ_K).
    ``checkpoint_inner``: recompute each inner step in the backward pass instead of storing it
    (second order only: a first-order step's support graph is freed at once, so checkpointing it
    measured only slower and larger — examples/results/memory-inner-steps-checkpoint.json).
    """
    b = len(batch)
    total_loss = 0.0
    total_metric = 0.0
    for i in range(b):
        sx, sy, qx, qy = batch.task(i)
        phi = learner.params
        objective = torch.zeros(())
        for k in range(steps):
            if checkpoint_inner and second_order:  # first order keeps no inner graph: nothing to recompute
                phi = _checkpointed_step(learner, phi, sx, sy, second_order, k)
            else:
                phi, _ = inner_step(learner, phi, sx, sy, second_order=second_order, step=k)
            if step_weights is not None and step_weights[k] > 0 and k < steps - 1:
                objective = objective + step_weights[k] * learner.loss(learner.predict_query(phi, sx, qx), qy)
        out = learner.predict_query(phi, sx, qx)
        loss = learner.loss(out, qy)
        objective = objective + (step_weights[-1] if step_weights is not None and steps > 0 else 1.0) * loss
        (objective / b).backward()
        total_loss += float(loss.detach())
        total_metric += learner.metric(out.detach(), qy)
    return {"loss": total_loss / b, "metric": total_metric / b}


class MAML(AlgorithmBase):
    """Second-order MAML with per-layer learned inner learning rates (and the MAML++ options)."""

    name: ClassVar[str] = "maml"
    description: ClassVar[str] = "MAML (Finn et al. 2017), second order, learned per-layer α, MAML++ options"
    task_parallel: ClassVar[bool] = True  # meta-gradient and metrics are means over independent tasks
    Config: ClassVar[type] = MAMLConfig

    def __init__(self, config: MAMLConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = int(train.inner_steps)
        self.total_steps = int(train.steps)
        self.step = 0  # the outer step about to run (begin_step)
        self.progress = 0.0  # fraction of training done (begin_step)
        self.inner_lr_shape = "step" if config.per_step_inner_lr else "layer"
        self.checkpoint_inner = bool(getattr(train, "checkpoint_inner", False))

    def begin_step(self, step: int, total: int) -> None:
        self.step, self.progress = step, step / total

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        second_order = not self.config.first_order and self.step >= self.config.second_order_after
        weights = msl_weights(self.inner_steps, self.progress, self.config.msl_anneal) if self.config.multi_step_loss else None
        return maml_meta_gradient(learner, batch, self.inner_steps, second_order, weights, self.checkpoint_inner)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        return adapt_trajectory(learner, x, y, steps)
