"""The inner loop: a pure function ``(θ, α, support) -> ϕ``, shared by every gradient-based algorithm.

ϕ₀ = θ;  ϕₖ₊₁ = ϕₖ − α ⊙ ∇ϕ L_support(ϕₖ)   (α per parameter tensor, or element-wise).

With ``second_order=True`` the gradients are built with ``create_graph=True`` so that the outer
loss differentiates through them (MAML). With ``second_order=False`` they are constants, so
∂ϕ/∂θ = I (first-order MAML) while ∂ϕ/∂α = −Σₖ gₖ still flows: α keeps learning.
Nothing is mutated in place: each step builds a new dict.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from metactl.api import Inputs, Learner, Params


def inner_step(
    learner: Learner,
    params: Params,
    x: Inputs,
    y: Tensor,
    *,
    second_order: bool,
    names: Collection[str] | None = None,
    ref: int | None = None,
    step: int = 0,
) -> tuple[Params, Tensor]:
    """Inner step number ``step`` on (x, y); returns (new params, support loss before the step)."""
    names = [n for n in params if n not in learner.outer_only] if names is None else list(names)
    loss = learner.loss(learner.forward(params, x, ref), y)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=second_order)
    new = dict(params)
    for n, g in zip(names, grads, strict=True):
        new[n] = params[n] - learner.lr(n, step) * g
    return new, loss


def inner_loop(
    learner: Learner,
    params: Params,
    x: Tensor,
    y: Tensor,
    steps: int,
    *,
    second_order: bool,
    names: Collection[str] | None = None,
) -> Params:
    """``steps`` inner steps from ``params`` on the support set (x, y)."""
    for k in range(steps):
        params, _ = inner_step(learner, params, x, y, second_order=second_order, names=names, step=k)
    return params


def adapt_trajectory(learner: Learner, x: Inputs, y: Tensor, steps: int, names: Collection[str] | None = None) -> list[Params]:
    """Test-time adaptation from θ: detached weights after 0..steps steps (no outer graph)."""
    with torch.enable_grad():
        params = {k: v.detach().requires_grad_(True) for k, v in learner.params.items()}
        lr = {k: v.detach() for k, v in learner.inner_lr.items()}
        # test-time adaptation runs in float32 whatever the training precision; the algorithm's extra parameters play no part
        frozen = learner.replace(params=params, inner_lr=lr, extra={}, precision="fp32")
        out = [{k: v.detach() for k, v in params.items()}]
        for step in range(steps):
            params, _ = inner_step(frozen, params, x, y, second_order=False, names=names, step=step)
            out.append({k: v.detach() for k, v in params.items()})
            params = {k: v.detach().requires_grad_(True) for k, v in out[-1].items()}
    return out
