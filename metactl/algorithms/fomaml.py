"""First-order MAML (FOMAML).

Finn, Abbeel & Levine, ICML 2017, Sec. 5.2 ("first-order approximation"),
https://arxiv.org/abs/1703.03400; analysed by Nichol, Achiam & Schulman 2018 (Reptile paper).

Same inner loop as MAML, but the support gradients are treated as constants: ∂ϕ/∂θ = I, so the
θ-gradient of a task is simply ∇ϕ L_query(ϕ). α still learns: ∂ϕ/∂α = −Σₖ gₖ is first order.
No Hessian-vector products, so each step is cheaper than MAML's.

Usage::

    metactl meta-train --algo fomaml
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from metactl.algorithms.maml import maml_meta_gradient
from metactl.api import AlgorithmBase, Inputs, Learner, Params, TaskBatch
from metactl.inner import adapt_trajectory


@dataclass(frozen=True)
class FOMAMLConfig:
    pass


class FOMAML(AlgorithmBase):
    name: ClassVar[str] = "fomaml"
    description: ClassVar[str] = "First-order MAML (Finn et al. 2017), learned per-layer α"
    task_parallel: ClassVar[bool] = True  # meta-gradient and metrics are means over independent tasks
    Config: ClassVar[type] = FOMAMLConfig

    def __init__(self, config: FOMAMLConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = int(train.inner_steps)
        self.checkpoint_inner = bool(getattr(train, "checkpoint_inner", False))

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        return maml_meta_gradient(learner, batch, self.inner_steps, second_order=False, checkpoint_inner=self.checkpoint_inner)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        return adapt_trajectory(learner, x, y, steps)
