"""Numerical proof that maml is MAML and fomaml is first-order MAML."""

from __future__ import annotations

import pytest
import torch

from metactl.algorithms.maml import maml_meta_gradient
from metactl.api import Learner, TaskBatch
from metactl.inner import inner_loop
from metactl.models.conv4 import Conv4
from metactl.models.mlp import MLP
from tests.conftest import finite_difference


def tiny_learner(kind: str, lr: float = 0.3, hidden: tuple[int, ...] = (5, 5)) -> Learner:
    torch.manual_seed(0)
    if kind == "conv":
        model = Conv4(num_classes=3, in_channels=1, image_size=16, width=2).double()
        task = "classification"
    else:
        model = MLP(1, 1, hidden).double()
        task = "regression"
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    # distinct per-layer rates, so a bug that mixes layers up shows
    inner = {k: torch.tensor(lr * (1 + 0.1 * i), dtype=torch.float64, requires_grad=True) for i, k in enumerate(params)}
    return Learner(model, params, inner, task)


def tiny_batch(kind: str, tasks: int = 2, x_range: float = 5.0) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    if kind == "conv":
        sx = torch.rand(tasks, 6, 1, 16, 16, generator=g, dtype=torch.float64)
        qx = torch.rand(tasks, 9, 1, 16, 16, generator=g, dtype=torch.float64)
        sy = torch.tensor([0, 0, 1, 1, 2, 2]).repeat(tasks, 1)
        qy = torch.tensor([0, 1, 2] * 3).repeat(tasks, 1)
    else:
        sx = torch.rand(tasks, 5, 1, generator=g, dtype=torch.float64) * (2 * x_range) - x_range
        qx = torch.rand(tasks, 7, 1, generator=g, dtype=torch.float64) * (2 * x_range) - x_range
        sy, qy = torch.sin(sx), torch.sin(qx)
    return TaskBatch(sx, sy, qx, qy)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(kind: str, steps: int) -> None:
    learner, batch = tiny_learner(kind), tiny_batch(kind)
    maml_meta_gradient(learner, batch, steps, second_order=True)
    fd_theta = finite_difference(learner, batch, steps, learner.params)
    fd_alpha = finite_difference(learner, batch, steps, learner.inner_lr)
    for name, p in learner.params.items():
        torch.testing.assert_close(p.grad, fd_theta[name], rtol=1e-5, atol=1e-7, msg=f"θ {name}")
    for name, a in learner.inner_lr.items():
        torch.testing.assert_close(a.grad, fd_alpha[name], rtol=1e-5, atol=1e-7, msg=f"α {name}")


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_first_order_gradient_is_query_gradient_at_phi(kind: str) -> None:
    learner, batch = tiny_learner(kind), tiny_batch(kind)
    maml_meta_gradient(learner, batch, 2, second_order=False)
    expected = {k: torch.zeros_like(v) for k, v in learner.params.items()}
    expected_alpha = {k: torch.zeros_like(v) for k, v in learner.inner_lr.items()}
    for i in range(len(batch)):
        sx, sy = batch.support_x[i], batch.support_y[i]
        phi = {k: v.detach().requires_grad_(True) for k, v in learner.params.items()}
        support_grads = []
        for _ in range(2):  # explicit first-order inner loop
            g = torch.autograd.grad(learner.loss(learner.forward(phi, sx), sy), list(phi.values()))
            support_grads.append(dict(zip(phi, g, strict=True)))
            phi = {k: (v - learner.inner_lr[k].detach() * gk).detach().requires_grad_(True) for (k, v), gk in zip(phi.items(), g, strict=True)}
        q = learner.loss(learner.predict_query(phi, sx, batch.query_x[i]), batch.query_y[i])
        gq = dict(zip(phi, torch.autograd.grad(q, list(phi.values())), strict=True))
        for k in expected:
            expected[k] += gq[k] / len(batch)
            # ∂ϕ/∂α = −Σₖ gₖ (first order)
            expected_alpha[k] += -(gq[k] * (support_grads[0][k] + support_grads[1][k])).sum() / len(batch)
    for k, p in learner.params.items():
        torch.testing.assert_close(p.grad, expected[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(learner.inner_lr[k].grad, expected_alpha[k], rtol=1e-10, atol=1e-12)


def test_first_and_second_order_differ_but_agree_for_zero_inner_lr() -> None:
    """With α = 0 there is no inner step, so both are the plain query gradient; otherwise Hessian terms differ."""
    grads = {}
    for so in (True, False):
        learner, batch = tiny_learner("mlp", lr=0.0), tiny_batch("mlp")
        maml_meta_gradient(learner, batch, 1, second_order=so)
        grads[so] = torch.cat([p.grad.view(-1) for p in learner.params.values()])
    torch.testing.assert_close(grads[True], grads[False])
    for so in (True, False):
        learner, batch = tiny_learner("mlp", lr=0.3), tiny_batch("mlp")
        maml_meta_gradient(learner, batch, 1, second_order=so)
        grads[so] = torch.cat([p.grad.view(-1) for p in learner.params.values()])
    assert (grads[True] - grads[False]).abs().max() > 1e-4


def test_inner_lr_receives_gradient_and_moves() -> None:
    learner, batch = tiny_learner("conv"), tiny_batch("conv", tasks=4)
    before = {k: float(v.detach()) for k, v in learner.inner_lr.items()}
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        maml_meta_gradient(learner, batch, 1, second_order=True)
        assert all(a.grad is not None and float(a.grad.abs()) > 0 for a in learner.inner_lr.values())
        opt.step()
    moved = [k for k, v in learner.inner_lr.items() if abs(float(v.detach()) - before[k]) > 1e-3]
    assert len(moved) == len(before)


def test_inner_loop_is_pure() -> None:
    learner, batch = tiny_learner("mlp"), tiny_batch("mlp")
    snapshot = {k: v.detach().clone() for k, v in learner.params.items()}
    phi = inner_loop(learner, learner.params, batch.support_x[0], batch.support_y[0], 3, second_order=True)
    for k, v in learner.params.items():
        assert torch.equal(v, snapshot[k])
        assert not torch.equal(phi[k], v)


def test_adaptation_lowers_support_loss() -> None:
    from metactl.inner import adapt_trajectory

    learner, batch = tiny_learner("conv", lr=0.1), tiny_batch("conv")
    sx, sy = batch.support_x[0], batch.support_y[0]
    traj = adapt_trajectory(learner, sx, sy, 5)
    losses = [float(learner.loss(learner.forward(p, sx), sy)) for p in traj]
    assert len(traj) == 6 and losses[-1] < losses[0]
