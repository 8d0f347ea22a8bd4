"""The algorithm contract and the small types it speaks.

An algorithm is a class registered under the ``metactl.algorithms`` entry-point group that has
every member of :class:`Algorithm` (a ``typing.Protocol`` declared in :mod:`metactl.contract`). :class:`AlgorithmBase` holds the
defaults of the optional hooks: subclass it and write ``meta_gradient`` and ``adapt``, or write
every hook yourself. ``metactl.registry.check_contract`` names any member that is missing, and
``metactl.testing.check_algorithm`` runs the whole contract suite on an algorithm.

The trainer owns the outer update: ``meta_gradient`` adds the meta-gradient of one meta-batch
into ``.grad`` of θ (``learner.params``), of α (``learner.inner_lr``) and of the algorithm's
``learner.extra``, and returns metrics; the trainer then checks the gradients for NaN/inf,
(all-)reduces them and takes the optimizer step. Keeping the update out of the algorithm lets
every algorithm share checkpointing, fault handling and distribution.

Everything here is modality-neutral: an example's input is one tensor (pixels, points) or a dict
of tensors with the same leading dimensions (``{"input_ids": ..., "attention_mask": ...}``);
algorithms reach the model only through :class:`Learner` and move inputs with :func:`cat_inputs`
and :func:`map_inputs`, so they never know which it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metactl import contract

Params = dict[str, Tensor]
Inputs = Tensor | Mapping[str, Tensor]
"""A batch of example inputs: one tensor, or named tensors sharing their leading dimensions."""

InnerLrShape = Literal["layer", "element", "step"]
INNER_LR_SHAPES: tuple[str, ...] = ("layer", "element", "step")


def map_inputs(fn: Callable[[Tensor], Tensor], x: Inputs) -> Inputs:
    """Apply ``fn`` to the tensor, or to each tensor of a dict of inputs."""
    if isinstance(x, Tensor):
        return fn(x)
    return {k: fn(v) for k, v in x.items()}


def cat_inputs(xs: Sequence[Inputs], dim: int = 0) -> Inputs:
    """``torch.cat`` for inputs (a dict: key by key; all items of one kind). Named inputs of different
    trailing sizes (token sequences padded per batch) are right-padded with zeros to the longest first:
    zeros are padding under a zero attention mask."""
    first = xs[0]
    if isinstance(first, Tensor):
        return torch.cat(list(xs), dim=dim)  # type: ignore[arg-type]
    out = {}
    for k in first:
        parts = [x[k] for x in xs]  # type: ignore[index]
        longest = [max(int(t.shape[d]) for t in parts) for d in range(parts[0].dim())]
        padded = []
        for t in parts:
            pad: list[int] = []
            for d in reversed(range(t.dim())):
                pad += [0, 0 if d == dim % t.dim() else longest[d] - int(t.shape[d])]
            padded.append(F.pad(t, pad) if any(pad) else t)
        out[k] = torch.cat(padded, dim=dim)
    return out


def inputs_len(x: Inputs, dim: int = 0) -> int:
    """The size of dimension ``dim`` (the same for every tensor of a dict)."""
    t = x if isinstance(x, Tensor) else next(iter(x.values()))
    return int(t.shape[dim])


def inputs_device(x: Inputs) -> torch.device:
    t = x if isinstance(x, Tensor) else next(iter(x.values()))
    return t.device


@dataclass(frozen=True)
class TaskBatch:
    """B tasks on the model's device: support inputs (B, M, ...) and query inputs (B, Q, ...)."""

    support_x: Inputs
    support_y: Tensor
    query_x: Inputs
    query_y: Tensor
    classes: Tensor | None = None  # (B, N) pool indices of each task's classes (label j = classes[b, j])

    def __len__(self) -> int:
        return int(self.support_y.shape[0])

    def task(self, i: int) -> tuple[Inputs, Tensor, Inputs, Tensor]:
        """Task ``i`` as (support x, support y, query x, query y)."""
        pick: Callable[[Tensor], Tensor] = lambda t: t[i]  # noqa: E731
        return map_inputs(pick, self.support_x), self.support_y[i], map_inputs(pick, self.query_x), self.query_y[i]

    def tasks(self, lo: int, hi: int) -> TaskBatch:
        """Tasks ``lo..hi-1`` as a batch of their own."""
        part: Callable[[Tensor], Tensor] = lambda t: t[lo:hi]  # noqa: E731
        return TaskBatch(
            map_inputs(part, self.support_x), self.support_y[lo:hi], map_inputs(part, self.query_x), self.query_y[lo:hi],
            None if self.classes is None else self.classes[lo:hi],
        )  # fmt: skip


@dataclass
class Learner:
    """θ, the per-layer inner learning rates α, and how to evaluate the model with given weights.

    ``params`` (θ) are the meta-learned weights: the outer optimizer, α, checkpoints and the run
    dir hold exactly these. ``frozen`` are weights the model needs but nothing learns (a pretrained
    body): they go into every forward pass and nowhere else.
    """

    model: nn.Module
    params: Params  # θ: leaf tensors, requires_grad
    inner_lr: Params  # α: one tensor per adapted parameter (0-dim per layer, or param-shaped)
    task: str  # "classification" | "regression"
    head: tuple[str, ...] = ("head.weight", "head.bias")
    extra: Params = field(default_factory=dict)  # outer-loop parameters an algorithm owns (not part of θ)
    per_step_lr: bool = False  # α[name] has one entry per inner step (MAML++ LSLR); steps past the end reuse the last
    precision: str = "fp32"  # "bf16": forward passes under CPU/CUDA autocast, outputs returned as float32
    frozen: Params = field(default_factory=dict)  # weights used in the forward pass, never learned
    outer_only: frozenset[str] = frozenset()  # θ entries the inner loop leaves alone (α fixed at 0): a body trained by the outer loop only

    def inner_names(self) -> list[str]:
        """The θ entries the inner loop adapts."""
        return [n for n in self.params if n not in self.outer_only]

    def replace(self, **changes: Any) -> Learner:
        """A copy with some fields changed (every other field kept)."""
        return dataclasses.replace(self, **changes)

    def lr(self, name: str, step: int = 0) -> Tensor:
        """α for parameter ``name`` at inner step ``step``."""
        a = self.inner_lr[name]
        return a[min(step, a.shape[0] - 1)] if self.per_step_lr else a

    def _call(self, params: Params, x: Inputs, kwargs: dict[str, Any]) -> Tensor:
        weights = {**self.frozen, **params} if self.frozen else params
        if self.precision == "bf16":
            with torch.autocast(inputs_device(x).type, dtype=torch.bfloat16):
                return functional_call(self.model, weights, (x,), kwargs).float()
        return functional_call(self.model, weights, (x,), kwargs)

    def forward(self, params: Params, x: Inputs, ref: int | None = None) -> Tensor:
        return self._call(params, x, {"ref": ref})

    def features(self, params: Params, x: Inputs, ref: int | None = None, tasks: int = 1) -> Tensor:
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

    def predict_query(self, params: Params, sx: Inputs, qx: Inputs) -> Tensor:
        """Query outputs with normalisation statistics from the support set only."""
        n = inputs_len(sx)
        return self.forward(params, cat_inputs([sx, qx]), ref=n)[n:]

    def parameters(self) -> list[Tensor]:
        """Everything the outer optimizer updates: θ, learned α, the algorithm's extra parameters."""
        return list(self.params.values()) + [a for a in self.inner_lr.values() if a.requires_grad] + list(self.extra.values())


@dataclass(frozen=True)
class SetupInfo:
    """What ``Algorithm.setup`` learns about the training data."""

    train_classes: int = 0  # distinct training classes (0 for regression)


Algorithm = contract.Algorithm  # declared, with every other extension point, in metactl.contract

HOOKS: tuple[str, ...] = tuple(n for n in contract.required(Algorithm) if callable(getattr(Algorithm, n, None)))
CLASS_ATTRIBUTES: tuple[str, ...] = tuple(n for n, a in Algorithm.__annotations__.items() if str(a).startswith("ClassVar"))
INSTANCE_ATTRIBUTES: tuple[str, ...] = tuple(n for n in contract.required(Algorithm) if n not in HOOKS and n not in CLASS_ATTRIBUTES)


class AlgorithmBase:
    """Defaults for the optional members of :class:`Algorithm`; subclass it and write
    ``meta_gradient`` and ``adapt`` (and ``name``, ``description``, ``Config``)."""

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type]
    meta_learns: ClassVar[bool] = True
    task_parallel: ClassVar[bool] = False
    inner_lr_shape: InnerLrShape = "layer"

    def __init__(self, config: Any, train: Any) -> None:
        self.config = config

    def setup(self, learner: Learner, info: SetupInfo) -> None:
        return None

    def make_optimizer(self, groups: list[dict[str, Any]], train: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(groups, lr=train.meta_lr)

    def begin_step(self, step: int, total: int) -> None:
        return None

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__}.meta_gradient")

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        raise NotImplementedError(f"{type(self).__name__}.adapt")
