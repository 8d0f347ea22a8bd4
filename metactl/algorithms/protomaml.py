"""ProtoMAML: MAML whose inner loop starts each task from the prototype head.

Triantafillou et al., "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples",
ICLR 2020, Sec. 4, https://arxiv.org/abs/1903.03096.

For each task: p_c = mean support feature of class c at θ (the body's features, support statistics),
the head becomes the nearest-prototype head w_c = 2 p_c, b_c = −‖p_c‖² (``centroid.centroid_head``),
and ϕ₀ = θ with that head. Then the MAML inner steps with the learned per-layer α on every adapted
entry, head included: ϕₖ₊₁ = ϕₖ − α ∇ϕ L_support(ϕₖ). The outer loss (1/B) Σᵢ L_query(ϕᵢ) is
differentiated w.r.t. θ and α through the inner steps *and* through the prototypes (they depend on
the body / LoRA entries of θ).

- Second order (default): the inner gradients keep their graph (Hessian terms), as in MAML.
- ``first_order``: the inner gradients gₖ are constants (∂ϕ_K/∂ϕ₀ = I, ∂ϕ_K/∂α = −Σₖ gₖ), but the
  prototypes' dependence on θ is kept: the meta-gradient of θ is the query gradient at ϕ_K for the
  body plus the head part of it pulled back through the prototype head, ∂L/∂ϕ_body + (∂(w, b)/∂θ)ᵀ
  ∂L/∂ϕ_head. This is the paper's fo-Proto-MAML ("gradients flow through the prototype init").

The meta-learned head init of θ is unused: the head entries of θ are replaced by the prototype head
at the start of every task (in training and in ``adapt``), so they receive no meta-gradient and the
run's stored head is the untouched initialization. On a frozen body (``--adapt head``) the prototypes
are constants, so what is meta-learned there is α alone. Classification only.

Usage::

    metactl meta-train --algo protomaml --backbone DIR --adapt head --data intents:DIR --inner-steps 3 --inner-lr 0.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from metactl.algorithms.centroid import centroid_head
from metactl.api import AlgorithmBase, Inputs, Learner, Params, SetupInfo, TaskBatch, inputs_len
from metactl.errors import MetactlError
from metactl.inner import adapt_trajectory, inner_step


@dataclass(frozen=True)
class ProtoMAMLConfig:
    first_order: bool = False  # constant inner gradients; the prototypes still depend on θ (see the module docstring)


def prototype_init(learner: Learner, params: Params, x: Inputs, y: Tensor) -> Params:
    """``params`` with the head replaced by the nearest-prototype head of the support set (x, y) at ``params``.
    Differentiable: the head depends on the body's entries of ``params``."""
    feats = learner.features(params, x, ref=inputs_len(x))
    wname, bname = learner.head
    w, b = centroid_head(feats, y, params[wname].shape[0])
    head = {wname: w.to(params[wname].dtype), bname: b.to(params[bname].dtype)}
    if torch.is_grad_enabled():  # a frozen body (--adapt head) gives a constant head: the inner loop still differentiates it
        head = {k: v if v.requires_grad else v.requires_grad_(True) for k, v in head.items()}
    return {**params, **head}


def _first_order_step(learner: Learner, phi: Params, x: Inputs, y: Tensor, step: int) -> Params:
    """ϕ − α g with g the support gradient taken at a detached copy of ϕ: a constant, and the graph from ϕ
    back to the prototypes (which ``inner_step`` would free with its gradient) is left for the outer pass."""
    names = learner.inner_names()
    leaf = {k: v.detach().requires_grad_(k in names) for k, v in phi.items()}
    grads = torch.autograd.grad(learner.loss(learner.forward(leaf, x), y), [leaf[n] for n in names])
    return {**phi, **{n: phi[n] - learner.lr(n, step) * g for n, g in zip(names, grads, strict=True)}}


class ProtoMAML(AlgorithmBase):
    """ProtoMAML (Triantafillou et al. 2020): MAML from the prototype head, learned per-layer α."""

    name: ClassVar[str] = "protomaml"
    description: ClassVar[str] = "ProtoMAML (Triantafillou et al. 2020): MAML inner loop from the prototype head, second order, learned per-layer α"
    task_parallel: ClassVar[bool] = True  # meta-gradient and metrics are means over independent tasks
    Config: ClassVar[type] = ProtoMAMLConfig

    def __init__(self, config: ProtoMAMLConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = int(train.inner_steps)

    def setup(self, learner: Learner, info: SetupInfo) -> None:
        if learner.task != "classification":
            raise MetactlError(f"protomaml needs a classification task, not {learner.task}.", "Use --algo maml for regression.")

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        b = len(batch)
        second_order = not self.config.first_order
        total_loss = total_metric = 0.0
        for i in range(b):
            sx, sy, qx, qy = batch.task(i)
            phi = prototype_init(learner, learner.params, sx, sy)
            for k in range(self.inner_steps):
                phi = inner_step(learner, phi, sx, sy, second_order=True, step=k)[0] if second_order else _first_order_step(learner, phi, sx, sy, k)
            out = learner.predict_query(phi, sx, qx)
            loss = learner.loss(out, qy)
            (loss / b).backward()
            total_loss += float(loss.detach())
            total_metric += learner.metric(out.detach(), qy)
        return {"loss": total_loss / b, "metric": total_metric / b}

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        """θ with the prototype head (step 0), then ``steps`` first-order inner steps from it (detached)."""
        with torch.no_grad():
            start = prototype_init(learner.replace(precision="fp32"), {k: v.detach() for k, v in learner.params.items()}, x, y)
        return adapt_trajectory(learner.replace(params=start), x, y, steps)
