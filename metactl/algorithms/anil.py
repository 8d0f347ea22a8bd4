"""ANIL: Almost No Inner Loop — the inner loop adapts only the head.

Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding the
Effectiveness of MAML", ICLR 2020, https://arxiv.org/abs/1909.09157.

The body's features are computed once per task — never again in the inner loop — and batched
across ``tasks_per_forward`` tasks per forward pass (the body is shared; each task's BatchNorm
statistics still come from its own support set; 0 batches the whole meta-batch), then each task
adapts only the linear head: head' = head − α ∇head L_supp(head; f(x)). The outer loss trains body and head
(second order through the head's inner steps unless ``first_order``).

Usage::

    metactl meta-train --algo anil --inner-steps 5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from metactl.adapt_spec import HeadAdaptation
from metactl.api import AlgorithmBase, Inputs, Learner, Params, TaskBatch, cat_inputs, inputs_len, map_inputs
from metactl.heads import head_alphas, head_arrays


@dataclass(frozen=True)
class ANILConfig:
    first_order: bool = False
    tasks_per_forward: int = 2  # tasks per batched body forward/backward (0 = the whole meta-batch; 2 measured fastest on CPU)

    def __post_init__(self) -> None:
        if self.tasks_per_forward < 0:
            raise ValueError("tasks_per_forward must be >= 0")


def head_step(learner: Learner, head: Params, feats: Tensor, y: Tensor, second_order: bool, step: int = 0) -> tuple[Params, Tensor]:
    """One pure inner step on the head only, given fixed features."""
    loss = learner.loss(learner.head_forward(head, feats), y)
    grads = torch.autograd.grad(loss, list(head.values()), create_graph=second_order)
    return {k: v - learner.lr(k, step) * g for (k, v), g in zip(head.items(), grads, strict=True)}, loss


class ANIL(AlgorithmBase):
    name: ClassVar[str] = "anil"
    description: ClassVar[str] = "ANIL (Raghu et al. 2020): inner loop on the head only, batched body"
    task_parallel: ClassVar[bool] = True  # meta-gradient and metrics are means over independent tasks
    Config: ClassVar[type] = ANILConfig

    def __init__(self, config: ANILConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = int(train.inner_steps)

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        b, m = len(batch), inputs_len(batch.support_x, 1)
        chunk = self.config.tasks_per_forward or b
        total_loss = total_metric = 0.0
        for lo in range(0, b, chunk):
            hi = min(lo + chunk, b)
            part = batch.tasks(lo, hi)
            x = cat_inputs([part.support_x, part.query_x], dim=1)  # (T, M + Q, ...)
            # one body forward for these T tasks; each task normalised with its own support statistics
            flat = map_inputs(lambda t: t.flatten(0, 1), x)
            feats = learner.features(learner.params, flat, ref=m, tasks=hi - lo).view(hi - lo, inputs_len(x, 1), -1)
            objective = torch.zeros((), dtype=feats.dtype)
            for j, i in enumerate(range(lo, hi)):
                head = {k: learner.params[k] for k in learner.head}
                for k in range(self.inner_steps):
                    head, _ = head_step(learner, head, feats[j, :m], batch.support_y[i], second_order=not self.config.first_order, step=k)
                out = learner.head_forward(head, feats[j, m:])
                loss = learner.loss(out, batch.query_y[i])
                objective = objective + loss
                total_loss += float(loss.detach())
                total_metric += learner.metric(out.detach(), batch.query_y[i])
            (objective / b).backward()
        return {"loss": total_loss / b, "metric": total_metric / b}

    def adaptable_head(self, learner: Learner, steps: int) -> HeadAdaptation:
        """``adapt``'s ``steps`` head steps from θ's head, with the learned α of each (export --adaptable)."""
        return HeadAdaptation("initial", **head_arrays(learner), alphas=head_alphas(learner, steps))

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        theta = {k: v.detach() for k, v in learner.params.items()}
        with torch.no_grad():
            feats = learner.features(theta, x)
        head = {k: theta[k] for k in learner.head}
        out = [dict(theta)]
        with torch.enable_grad():
            for step in range(steps):
                head = {k: v.detach().requires_grad_(True) for k, v in head.items()}
                head, _ = head_step(learner, head, feats, y, second_order=False, step=step)
                out.append({**theta, **{k: v.detach() for k, v in head.items()}})
        return out
