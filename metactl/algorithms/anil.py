"""ANIL: Almost No Inner Loop — the inner loop adapts only the head.

Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, https://arxiv.org/abs/1909.09157.

The body's features are computed once per meta-batch, batched across all tasks (the body is shared;
each task's BatchNorm statistics still come from its own support set), then each task adapts only
the linear head: head' = head − α ∇head L_supp(head; f(x)). The outer loss trains body and head
(second order through the head's inner steps unless ``first_order``).

Usage::

    metactl meta-train --algo anil --inner-steps 5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from metactl.api import Learner, Params, TaskBatch


@dataclass(frozen=True)
class ANILConfig:
    first_order: bool = False


def head_step(learner: Learner, head: Params, feats: Tensor, y: Tensor, second_order: bool) -> tuple[Params, Tensor]:
    """One pure inner step on the head only, given fixed features."""
    loss = learner.loss(learner.head_forward(head, feats), y)
    grads = torch.autograd.grad(loss, list(head.values()), create_graph=second_order)
    return {k: v - learner.inner_lr[k] * g for (k, v), g in zip(head.items(), grads, strict=True)}, loss


class ANIL:
    name: ClassVar[str] = "anil"
    description: ClassVar[str] = "ANIL (Raghu et al. 2020): inner loop on the head only, batched body"
    Config: ClassVar[type] = ANILConfig

    def __init__(self, config: ANILConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = int(train.inner_steps)

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        b, m = batch.support_x.shape[:2]
        x = torch.cat([batch.support_x, batch.query_x], dim=1)  # (B, M + Q, ...)
        feats = learner.features(learner.params, x.flatten(0, 1), ref=m, tasks=b).view(b, x.shape[1], -1)
        total = torch.zeros((), dtype=feats.dtype)
        total_metric = 0.0
        for i in range(b):
            head = {k: learner.params[k] for k in learner.head}
            for _ in range(self.inner_steps):
                head, _ = head_step(learner, head, feats[i, :m], batch.support_y[i], second_order=not self.config.first_order)
            out = learner.head_forward(head, feats[i, m:])
            total = total + learner.loss(out, batch.query_y[i])
            total_metric += learner.metric(out.detach(), batch.query_y[i])
        (total / b).backward()
        return {"loss": float(total.detach()) / b, "metric": total_metric / b}

    def adapt(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        theta = {k: v.detach() for k, v in learner.params.items()}
        with torch.no_grad():
            feats = learner.features(theta, x)
        head = {k: theta[k] for k in learner.head}
        out = [dict(theta)]
        with torch.enable_grad():
            for _ in range(steps):
                head = {k: v.detach().requires_grad_(True) for k, v in head.items()}
                head, _ = head_step(learner, head, feats, y, second_order=False)
                out.append({**theta, **{k: v.detach() for k, v in head.items()}})
        return out
