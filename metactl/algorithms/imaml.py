"""iMAML: meta-learning with implicit gradients.

Rajeswaran, Finn, Kakade & Levine, "Meta-Learning with Implicit Gradients", NeurIPS 2019,
https://arxiv.org/abs/1909.04630.

For each task i the inner problem is regularised towards θ:

    ϕᵢ ≈ argmin_ϕ  L_supp,i(ϕ) + (λ/2)‖ϕ − θ‖²

approximated by ``inner_steps`` plain gradient steps from ϕ = θ with step size α (the learner's
per-parameter inner learning rate, used as a constant). At the optimum, dϕ/dθ = (I + H/λ)⁻¹ with
H = ∇²ϕ L_supp,i(ϕᵢ), so the task's meta-gradient is

    gᵢ = (I + H/λ)⁻¹ ∇ϕ L_query,i(ϕᵢ)

solved with ``cg_steps`` iterations of conjugate gradient on Hessian-vector products (double
backward through the support loss at ϕᵢ only; with ``cg_damping`` = d the system solved is
((1 + d) I + H/λ) v = ∇ϕ L_query). No graph is kept through the inner steps, so memory does not
grow with ``inner_steps``. θ receives (1/B) Σᵢ gᵢ; α is not meta-learned by iMAML (its ``.grad``
is left untouched). Test-time ``adapt`` takes plain (unregularised) steps with α, like MAML.

Usage::

    metactl meta-train --algo imaml --inner-steps 10 --config imaml.toml

    # imaml.toml
    [algo-options]
    lam = 1.0
    cg_steps = 5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from metactl.api import AlgorithmBase, Learner, Params, TaskBatch
from metactl.inner import adapt_trajectory


@dataclass(frozen=True)
class IMAMLConfig:
    lam: float = 1.0  # λ, strength of the proximal term (λ/2)‖ϕ − θ‖²
    cg_steps: int = 5  # conjugate-gradient iterations per task
    cg_damping: float = 0.0  # extra d in ((1 + d) I + H/λ) v = g, for stability

    def __post_init__(self) -> None:
        if not self.lam > 0:
            raise ValueError(f"lam must be > 0 (got {self.lam})")
        if isinstance(self.cg_steps, bool) or int(self.cg_steps) != self.cg_steps or self.cg_steps < 1:
            raise ValueError(f"cg_steps must be an integer >= 1 (got {self.cg_steps})")
        if not self.cg_damping >= 0:
            raise ValueError(f"cg_damping must be >= 0 (got {self.cg_damping})")


def _leaves(params: Params) -> Params:
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def _grad(loss: Tensor, params: Params, *, create_graph: bool = False) -> list[Tensor]:
    """∇ loss w.r.t. each tensor of ``params`` (zeros where it does not depend on one)."""
    tensors = list(params.values())
    grads = torch.autograd.grad(loss, tensors, create_graph=create_graph, retain_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads, strict=True)]


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def proximal_inner_loop(learner: Learner, x: Tensor, y: Tensor, steps: int, lam: float) -> Params:
    """``steps`` gradient steps on L_supp(ϕ) + (λ/2)‖ϕ − θ‖² from ϕ = θ; returns detached leaves."""
    theta = {k: v.detach() for k, v in learner.params.items()}
    lr = {k: v.detach() for k, v in learner.inner_lr.items()}
    phi = _leaves(theta)
    for _ in range(steps):
        grads = _grad(learner.loss(learner.forward(phi, x), y), phi)
        with torch.no_grad():
            phi = {k: v - lr[k] * (g + lam * (v - theta[k])) for (k, v), g in zip(phi.items(), grads, strict=True)}
        phi = _leaves(phi)
    return phi


def implicit_solve(learner: Learner, phi: Params, x: Tensor, y: Tensor, rhs: list[Tensor], config: IMAMLConfig) -> list[Tensor]:
    """Conjugate gradient for ((1 + d) I + H/λ) v = rhs, H the support-loss Hessian at ``phi``."""
    grads = _grad(learner.loss(learner.forward(phi, x), y), phi, create_graph=True)
    live = [g.requires_grad for g in grads]
    tensors = list(phi.values())

    def apply(v: list[Tensor]) -> list[Tensor]:
        if any(live):
            dot = _dot([g for g, on in zip(grads, live, strict=True) if on], [u for u, on in zip(v, live, strict=True) if on])
            hv = torch.autograd.grad(dot, tensors, retain_graph=True, allow_unused=True)
            hv = [torch.zeros_like(t) if h is None else h for t, h in zip(tensors, hv, strict=True)]
        else:  # the support gradient is constant in ϕ: H = 0
            hv = [torch.zeros_like(u) for u in v]
        return [(1.0 + config.cg_damping) * u + h.detach() / config.lam for u, h in zip(v, hv, strict=True)]

    sol = [torch.zeros_like(r) for r in rhs]
    r = [t.clone() for t in rhs]
    p = [t.clone() for t in rhs]
    rs = _dot(r, r)
    tol = float(rs) * 1e-24  # stop once the residual is ~1e-12 of ‖rhs‖ (or exactly zero)
    for _ in range(config.cg_steps):
        if float(rs) <= tol:
            break
        ap = apply(p)
        step = rs / _dot(p, ap)
        sol = [s + step * u for s, u in zip(sol, p, strict=True)]
        r = [t - step * u for t, u in zip(r, ap, strict=True)]
        rs_new = _dot(r, r)
        p = [t + (rs_new / rs) * u for t, u in zip(r, p, strict=True)]
        rs = rs_new
    return sol


class IMAML(AlgorithmBase):
    """iMAML: proximal inner loop, implicit meta-gradient of θ by conjugate gradient."""

    name: ClassVar[str] = "imaml"
    description: ClassVar[str] = "iMAML (Rajeswaran et al. 2019): implicit meta-gradient by conjugate gradient"
    task_parallel: ClassVar[bool] = True  # meta-gradient and metrics are means over independent tasks
    Config: ClassVar[type] = IMAMLConfig

    def __init__(self, config: IMAMLConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = int(train.inner_steps)

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        b = len(batch)
        total_loss = 0.0
        total_metric = 0.0
        thetas = list(learner.params.values())
        with torch.enable_grad():
            for i in range(b):
                sx, sy, qx, qy = batch.task(i)
                phi = proximal_inner_loop(learner, sx, sy, self.inner_steps, self.config.lam)
                out = learner.predict_query(phi, sx, qx)
                loss = learner.loss(out, qy)
                gq = _grad(loss, phi)
                v = implicit_solve(learner, phi, sx, sy, gq, self.config)
                for p, g in zip(thetas, v, strict=True):
                    g = (g / b).to(p.dtype)
                    if p.grad is None:
                        p.grad = g
                    else:
                        p.grad.add_(g)
                total_loss += float(loss.detach())
                total_metric += learner.metric(out.detach(), qy)
        return {"loss": total_loss / b, "metric": total_metric / b}

    def adapt(self, learner: Learner, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        return adapt_trajectory(learner, x, y, steps)
