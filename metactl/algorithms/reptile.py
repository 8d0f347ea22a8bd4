"""Reptile: first-order meta-learning by moving θ towards the task-adapted weights.

Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms", 2018,
https://arxiv.org/abs/1803.02999.

For each task, k steps of SGD (or Adam) on the task's labelled data from θ give ϕᵢ; then
θ ← θ + β (mean ϕᵢ − θ), with β annealed linearly from ``beta`` to ``beta_final`` over training.
No second derivatives, no inner learning-rate learning; test-time adaptation runs the same inner
optimizer (SGD with α, or Adam with lr ``--inner-lr``). The outer update is exactly that SGD step (``make_optimizer``), not Adam.

Usage::

    metactl meta-train --algo reptile --inner-steps 5 --inner-lr 0.05 --meta-batch 5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from metactl.api import AlgorithmBase, Learner, Params, TaskBatch, cat_inputs


@dataclass(frozen=True)
class ReptileConfig:
    beta: float = 1.0  # outer step size β at the start of training
    beta_final: float = 0.0  # β at the end (linear annealing, as in the paper)
    inner_optimizer: str = "sgd"  # sgd | adam (Adam with lr = --inner-lr, betas (0, 0.999) as the paper)
    use_query: bool = True  # train the inner loop on support and query examples (all of a task's labels)

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.beta_final < 0:
            raise ValueError("beta must be > 0 and beta_final >= 0")
        if self.inner_optimizer not in ("sgd", "adam"):
            raise ValueError("inner_optimizer must be 'sgd' or 'adam'")


class Reptile(AlgorithmBase):
    name: ClassVar[str] = "reptile"
    description: ClassVar[str] = "Reptile (Nichol et al. 2018): θ ← θ + β(ϕ − θ), β annealed"
    task_parallel: ClassVar[bool] = True  # meta-gradient and metrics are means over independent tasks
    Config: ClassVar[type] = ReptileConfig

    def __init__(self, config: ReptileConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = max(1, int(train.inner_steps))
        self.inner_lr = float(train.inner_lr)
        self.progress = 0.0  # fraction of training done (begin_step)

    def begin_step(self, step: int, total: int) -> None:
        self.progress = step / total

    def make_optimizer(self, groups: list[dict[str, Any]], train: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(groups, lr=self.config.beta)

    def trajectory(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> tuple[list[Params], float]:
        """Weights after 0..steps inner steps (SGD with α, or Adam) on (x, y) from θ; and the last training loss."""
        phi = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
        adam = torch.optim.Adam(list(phi.values()), lr=self.inner_lr, betas=(0.0, 0.999)) if self.config.inner_optimizer == "adam" else None
        out = [{k: v.detach().clone() for k, v in phi.items()}]
        loss = torch.zeros(())
        with torch.enable_grad():
            for _ in range(steps):
                loss = learner.loss(learner.forward(phi, x), y)
                grads = torch.autograd.grad(loss, list(phi.values()))
                with torch.no_grad():
                    if adam is None:
                        for (k, p), g in zip(phi.items(), grads, strict=True):
                            p -= learner.inner_lr[k].detach() * g
                    else:
                        for p, g in zip(phi.values(), grads, strict=True):
                            p.grad = g
                        adam.step()
                out.append({k: v.detach().clone() for k, v in phi.items()})
        return out, float(loss.detach())

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        b = len(batch)
        scale = (self.config.beta + (self.config.beta_final - self.config.beta) * self.progress) / self.config.beta
        total_loss = total_metric = 0.0
        for i in range(b):
            sx, sy, qx, qy = batch.task(i)
            x, y = (cat_inputs([sx, qx]), torch.cat([sy, qy])) if self.config.use_query else (sx, sy)
            trajectory, loss = self.trajectory(learner, x, y, self.inner_steps)
            phi = trajectory[-1]
            for k, p in learner.params.items():  # SGD with lr β on (θ − ϕ̄) is θ ← θ + β(ϕ̄ − θ)
                g = (p.detach() - phi[k]) * (scale / b)
                p.grad = g if p.grad is None else p.grad + g
            total_loss += loss
            with torch.no_grad():
                total_metric += learner.metric(learner.predict_query(phi, sx, qx), qy)
        return {"loss": total_loss / b, "metric": total_metric / b}

    def adapt(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        """Test-time adaptation with the same inner optimizer as training."""
        return self.trajectory(learner, x, y, steps)[0]
