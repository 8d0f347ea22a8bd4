"""Meta-SGD: MAML with a learned inner learning rate for every single parameter.

Li, Zhou, Chen, Li, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", 2017,
https://arxiv.org/abs/1707.09835.

ϕ = θ − α ⊙ ∇θ L_supp(θ) with α the same shape as θ (element-wise, sign unconstrained), learned
with θ by the outer loop through the second-order MAML objective. metactl's default is one α per
layer; this algorithm makes α element-wise (``inner_lr_shape = "element"``).

Usage::

    metactl meta-train --algo metasgd --inner-lr 0.1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from metactl.algorithms.maml import maml_meta_gradient
from metactl.api import AlgorithmBase, Inputs, Learner, Params, TaskBatch
from metactl.inner import adapt_trajectory


@dataclass(frozen=True)
class MetaSGDConfig:
    first_order: bool = False  # drop the second-order terms (α still learns)


class MetaSGD(AlgorithmBase):
    name: ClassVar[str] = "metasgd"
    description: ClassVar[str] = "Meta-SGD (Li et al. 2017): element-wise learned inner learning rates"
    task_parallel: ClassVar[bool] = True  # meta-gradient and metrics are means over independent tasks
    Config: ClassVar[type] = MetaSGDConfig
    inner_lr_shape = "element"

    def __init__(self, config: MetaSGDConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = int(train.inner_steps)
        self.checkpoint_inner = bool(getattr(train, "checkpoint_inner", False))

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        return maml_meta_gradient(learner, batch, self.inner_steps, second_order=not self.config.first_order, checkpoint_inner=self.checkpoint_inner)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        return adapt_trajectory(learner, x, y, steps)
