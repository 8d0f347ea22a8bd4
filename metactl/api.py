"""The algorithm contract and the small types it speaks.

An algorithm is any class with this shape (a ``typing.Protocol``: no base class to inherit),
registered under the ``metactl.algorithms`` entry-point group.

The trainer owns the outer update: ``meta_gradient`` fills ``.grad`` of ``learner.params`` (θ)
and ``learner.inner_lr`` (α) for one meta-batch and returns metrics; the trainer then checks the
gradients for NaN/inf, (all-)reduces them and takes the optimizer step. Keeping the update out of
the algorithm lets every algorithm share checkpointing, fault handling and distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]


@dataclass(frozen=True)
class TaskBatch:
    """B tasks on the model's device: support (B, M, ...) and query (B, Q, ...)."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None  # (B, N) pool indices of each task's classes (label j = classes[b, j])

    def __len__(self) -> int:
        return self.support_x.shape[0]


@dataclass
class Learner:
    """θ, the per-layer inner learning rates α, and how to evaluate the model with given weights."""

    model: nn.Module
    params: Params  # θ: leaf tensors, requires_grad
    inner_lr: Params  # α: one tensor per adapted parameter (0-dim per layer, or param-shaped)
    task: str  # "classification" | "regression"
    head: tuple[str, ...] = ("head.weight", "head.bias")
    extra: Params = field(default_factory=dict)  # outer-loop parameters an algorithm owns (not part of θ)
    per_step_lr: bool = False  # α[name] has one entry per inner step (MAML++ LSLR); steps past the end reuse the last
    precision: str = "fp32"  # "bf16": forward passes under CPU/CUDA autocast, outputs returned as float32

    def lr(self, name: str, step: int = 0) -> Tensor:
        """α for parameter ``name`` at inner step ``step``."""
        a = self.inner_lr[name]
        return a[min(step, a.shape[0] - 1)] if self.per_step_lr else a

    def _call(self, params: Params, x: Tensor, kwargs: dict[str, Any]) -> Tensor:
        if self.precision == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return functional_call(self.model, params, (x,), kwargs).float()
        return functional_call(self.model, params, (x,), kwargs)

    def forward(self, params: Params, x: Tensor, ref: int | None = None) -> Tensor:
        return self._call(params, x, {"ref": ref})

    def features(self, params: Params, x: Tensor, ref: int | None = None, tasks: int = 1) -> Tensor:
        """The body's output (no head); ``tasks`` > 1 normalises each task-major block on its own."""
        return self._call(params, x, {"ref": ref, "tasks": tasks, "return_features": True})

    def head_forward(self, head: Params, features: Tensor) -> Tensor:
        return F.linear(features, head[self.head[0]], head[self.head[1]])

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        if self.task == "classification":
            return F.cross_entropy(out, y)
        return F.mse_loss(out, y)

    def metric(self, out: Tensor, y: Tensor) -> float:
        """Accuracy (classification) or mean squared error (regression)."""
        if self.task == "classification":
            return float((out.argmax(-1) == y).float().mean())
        return float(F.mse_loss(out, y))

    def predict_query(self, params: Params, sx: Tensor, qx: Tensor) -> Tensor:
        """Query outputs with normalisation statistics from the support set only."""
        n = sx.shape[0]
        return self.forward(params, torch.cat([sx, qx]), ref=n)[n:]

    def parameters(self) -> list[Tensor]:
        """Everything the outer optimizer updates: θ, learned α, the algorithm's extra parameters."""
        return list(self.params.values()) + [a for a in self.inner_lr.values() if a.requires_grad] + list(self.extra.values())


@runtime_checkable
class Algorithm(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type]

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        """Accumulate the meta-gradient of one meta-batch into ``.grad`` of θ and α."""
        ...

    def adapt(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        """The inner loop, pure: returns the weights after each of 0..steps steps (detached)."""
        ...


AlgorithmFactory = Callable[[Any, Any], Algorithm]
