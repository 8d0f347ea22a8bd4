"""Numerical proof that imaml computes iMAML's implicit meta-gradient (Rajeswaran et al. 2019)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from metactl.algorithms.imaml import IMAML, IMAMLConfig, proximal_inner_loop
from metactl.algorithms.maml import maml_meta_gradient
from metactl.api import Learner, Params, TaskBatch
from tests import test_maml as maml_tests
from tests.conftest import central_difference


def tiny_learner(kind: str, lr: float = 0.1) -> Learner:
    return maml_tests.tiny_learner(kind, lr, hidden=(3,))  # the MLP is 1-3-1: 10 parameters


def tiny_batch(kind: str, tasks: int = 2) -> TaskBatch:
    return maml_tests.tiny_batch(kind, tasks, x_range=2.0)


def make(steps: int, **config: float) -> IMAML:
    return IMAML(IMAMLConfig(**config), SimpleNamespace(inner_steps=steps, inner_lr=0.1))  # type: ignore[arg-type]


def flat(params: Params) -> torch.Tensor:
    return torch.cat([v.detach().reshape(-1) for v in params.values()])


def unflat(vec: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i : i + v.numel()].view_as(v)
        i += v.numel()
    return out


def explicit_phi(learner: Learner, sx: torch.Tensor, sy: torch.Tensor, steps: int, lam: float) -> torch.Tensor:
    """The proximal inner loop written out on the flat vector: ϕ ← ϕ − α (∇L_supp(ϕ) + λ(ϕ − θ))."""
    theta = flat(learner.params)
    alpha = torch.cat([learner.inner_lr[k].detach().expand_as(v).reshape(-1) for k, v in learner.params.items()])
    phi = theta.clone()
    for _ in range(steps):
        x = phi.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(learner.loss(learner.forward(unflat(x, learner.params), sx), sy), x)
        phi = phi - alpha * (g + lam * (phi - theta))
    return phi


def explicit_implicit_gradient(learner: Learner, batch: TaskBatch, steps: int, lam: float, damping: float = 0.0, hessian: bool = True) -> torch.Tensor:
    """(1/B) Σᵢ ((1 + d) I + Hᵢ/λ)⁻¹ ∇ϕ L_query,i(ϕᵢ), with Hᵢ the full support-loss Hessian at ϕᵢ (0 if not ``hessian``)."""
    total = torch.zeros_like(flat(learner.params))
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        phi = explicit_phi(learner, sx, sy, steps, lam)
        hess = torch.autograd.functional.hessian(lambda v: learner.loss(learner.forward(unflat(v, learner.params), sx), sy), phi, vectorize=True)  # noqa: B023
        x = phi.clone().requires_grad_(True)
        (gq,) = torch.autograd.grad(learner.loss(learner.predict_query(unflat(x, learner.params), sx, qx), qy), x)
        a = (1 + damping) * torch.eye(phi.numel(), dtype=phi.dtype) + (hess / lam if hessian else 0)
        assert torch.linalg.eigvalsh(a).min() > 0, "the test system must be positive definite for CG"
        total += torch.linalg.solve(a, gq) / len(batch)
    return total


@pytest.mark.parametrize(("steps", "lam", "damping"), [(0, 4.0, 0.0), (3, 1.0, 0.0), (5, 2.0, 0.0), (3, 0.5, 0.1)])
def test_meta_gradient_is_exact_implicit_gradient(steps: int, lam: float, damping: float) -> None:
    learner, batch = tiny_learner("mlp"), tiny_batch("mlp")
    n = flat(learner.params).numel()
    make(steps, lam=lam, cg_steps=2 * n, cg_damping=damping).meta_gradient(learner, batch)
    got = torch.cat([p.grad.reshape(-1) for p in learner.params.values()])
    expected = explicit_implicit_gradient(learner, batch, steps, lam, damping)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-10)
    # the Hessian term matters: this is not the first-order gradient (1/B) Σᵢ ∇ϕ L_query,i(ϕᵢ)
    assert (expected - explicit_implicit_gradient(learner, batch, steps, lam, damping, hessian=False)).abs().max() > 1e-4


def test_conv_meta_gradient_matches_explicit_solve() -> None:
    """Same check on the conv net (TaskNorm, max-pool, cross-entropy); damping keeps the system positive definite."""
    learner, batch = tiny_learner("conv", lr=0.01), tiny_batch("conv", tasks=1)
    make(2, lam=10.0, cg_steps=200, cg_damping=1.0).meta_gradient(learner, batch)
    got = torch.cat([p.grad.reshape(-1) for p in learner.params.values()])
    expected = explicit_implicit_gradient(learner, batch, 2, 10.0, 1.0)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-10)


def test_inner_loop_matches_explicit_and_reaches_the_regularised_optimum() -> None:
    learner, batch = tiny_learner("mlp"), tiny_batch("mlp")
    sx, sy, lam = batch.support_x[0], batch.support_y[0], 1.0
    phi = proximal_inner_loop(learner, sx, sy, 4, lam)
    torch.testing.assert_close(flat(phi), explicit_phi(learner, sx, sy, 4, lam), rtol=1e-12, atol=1e-12)
    phi = proximal_inner_loop(learner, sx, sy, 400, lam)
    x = flat(phi).requires_grad_(True)
    objective = learner.loss(learner.forward(unflat(x, learner.params), sx), sy) + lam / 2 * (x - flat(learner.params)).pow(2).sum()
    (g,) = torch.autograd.grad(objective, x)
    assert float(g.norm()) < 1e-8


def test_converged_implicit_gradient_matches_finite_differences() -> None:
    """With the inner problem solved, the implicit gradient is d/dθ L_query(ϕ*(θ)) (iMAML, Lemma 1)."""
    learner, batch, steps, lam = tiny_learner("mlp"), tiny_batch("mlp", tasks=1), 300, 1.0
    n = flat(learner.params).numel()
    make(steps, lam=lam, cg_steps=2 * n).meta_gradient(learner, batch)
    got = torch.cat([p.grad.reshape(-1) for p in learner.params.values()])
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]

    def objective() -> float:
        phi = unflat(explicit_phi(learner, sx, sy, steps, lam), learner.params)
        return float(learner.loss(learner.predict_query(phi, sx, qx), qy))

    fd = torch.zeros(n, dtype=torch.float64)
    eps, j = 1e-6, 0
    for p in learner.params.values():
        data = p.data.view(-1)
        for k in range(data.numel()):
            fd[j] = central_difference(objective, data, k, eps)
            j += 1
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-8)


class SavedBytes:
    """Peak bytes of tensors saved for backward that are alive at once (the autograd graph's memory).

    (A hook that holds a saved *output* makes a cycle through the C++ graph, so a graph kept with
    ``retain_graph=True`` stays counted after use; that adds the same amount at any step count.)
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def __enter__(self) -> SavedBytes:
        outer = self

        class Held:
            def __init__(self, t: torch.Tensor) -> None:
                self.t, self.n = t, t.numel() * t.element_size()
                outer.live += self.n
                outer.peak = max(outer.peak, outer.live)

            def __del__(self) -> None:
                outer.live -= self.n

        self.hooks = torch.autograd.graph.saved_tensors_hooks(Held, lambda h: h.t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)


def test_memory_does_not_grow_with_inner_steps() -> None:
    peaks = {}
    for steps in (1, 10):
        learner, batch = tiny_learner("conv"), tiny_batch("conv")
        with SavedBytes() as imaml:
            make(steps).meta_gradient(learner, batch)
        learner, batch = tiny_learner("conv"), tiny_batch("conv")
        with SavedBytes() as maml:
            maml_meta_gradient(learner, batch, steps, second_order=True)
        peaks[steps] = (imaml.peak, maml.peak)
    assert peaks[10][1] > 3 * peaks[1][1], peaks  # the measurement sees MAML's graph grow with the steps
    assert peaks[10][0] <= 1.05 * peaks[1][0], peaks  # iMAML's does not
    learner, batch = tiny_learner("conv"), tiny_batch("conv")
    phi = proximal_inner_loop(learner, batch.support_x[0], batch.support_y[0], 5, 1.0)
    assert all(v.is_leaf and v.grad_fn is None for v in phi.values())


def test_alpha_grad_left_alone_and_theta_untouched() -> None:
    learner, batch = tiny_learner("conv"), tiny_batch("conv")
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    metrics = make(3).meta_gradient(learner, batch)
    assert set(metrics) >= {"loss", "metric"}
    assert all(a.grad is None for a in learner.inner_lr.values())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in learner.params.values())
    assert all(torch.equal(before[k], v) for k, v in learner.params.items())


def test_meta_gradient_accumulates() -> None:
    learner, batch = tiny_learner("mlp"), tiny_batch("mlp")
    algo = make(2)
    algo.meta_gradient(learner, batch)
    once = flat({k: p.grad for k, p in learner.params.items()})
    algo.meta_gradient(learner, batch)
    torch.testing.assert_close(flat({k: p.grad for k, p in learner.params.items()}), 2 * once)


@pytest.mark.parametrize("bad", [{"lam": 0.0}, {"lam": -1.0}, {"cg_steps": 0}, {"cg_steps": 1.5}, {"cg_damping": -0.1}])
def test_config_validation(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        IMAMLConfig(**bad)  # type: ignore[arg-type]
