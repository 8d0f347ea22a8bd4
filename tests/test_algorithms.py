"""Numerical proof that each built-in algorithm is what it claims (iMAML: tests/test_imaml.py)."""

from __future__ import annotations

import pytest
import torch

from metactl.algorithms.anil import ANIL, ANILConfig
from metactl.algorithms.fomaml import FOMAML, FOMAMLConfig
from metactl.algorithms.maml import MAML, MAMLConfig, maml_meta_gradient, msl_weights
from metactl.algorithms.metasgd import MetaSGD, MetaSGDConfig
from metactl.algorithms.pretrain import Pretrain, PretrainConfig
from metactl.algorithms.protomaml import ProtoMAML, ProtoMAMLConfig
from metactl.algorithms.reptile import Reptile, ReptileConfig
from metactl.api import Learner, SetupInfo, TaskBatch
from metactl.config import TrainConfig
from metactl.train import init_learner
from tests.conftest import finite_difference
from tests.test_maml import tiny_batch, tiny_learner

CONV = {"kind": "conv4", "num_classes": 3, "in_channels": 1, "image_size": 16, "width": 4}


def grads(learner: Learner) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in learner.params.values()])


def fresh(kind: str = "conv", lr: float = 0.3) -> tuple[Learner, TaskBatch]:
    return tiny_learner(kind, lr), tiny_batch(kind)


def test_reptile_one_sgd_step_beta_1_is_one_sgd_step_on_the_task() -> None:
    learner, batch = fresh("conv", 0.2)
    one = TaskBatch(batch.support_x[:1], batch.support_y[:1], batch.query_x[:1], batch.query_y[:1])
    cfg = TrainConfig(inner_steps=1, inner_lr=0.2, steps=10)
    algo = Reptile(ReptileConfig(beta=1.0, beta_final=1.0, use_query=False), cfg)
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in learner.params.items()}
    loss = learner.loss(learner.forward(theta, one.support_x[0]), one.support_y[0])
    g = torch.autograd.grad(loss, list(theta.values()))
    expected = {k: v.detach() - learner.inner_lr[k].detach() * gk for (k, v), gk in zip(theta.items(), g, strict=True)}
    opt = algo.make_optimizer([{"params": list(learner.params.values())}], cfg)
    algo.meta_gradient(learner, one)
    opt.step()
    for k, v in learner.params.items():
        torch.testing.assert_close(v.detach(), expected[k], rtol=1e-12, atol=1e-12)


def test_reptile_beta_is_annealed() -> None:
    learner, batch = fresh("mlp", 0.1)
    algo = Reptile(ReptileConfig(beta=1.0, beta_final=0.0), TrainConfig(inner_steps=2, inner_lr=0.1))
    algo.begin_step(0, 100)
    algo.meta_gradient(learner, batch)
    start = grads(learner).clone()
    for p in learner.params.values():
        p.grad = None
    algo.begin_step(75, 100)
    algo.meta_gradient(learner, batch)
    torch.testing.assert_close(grads(learner), 0.25 * start)


def test_anil_inner_update_leaves_body_unchanged_but_body_gets_outer_gradient() -> None:
    learner, batch = fresh("conv")
    algo = ANIL(ANILConfig(), TrainConfig(inner_steps=2))
    trajectory = algo.adapt(learner, batch.support_x[0], batch.support_y[0], 3)
    for params in trajectory:
        for k, v in params.items():
            if k not in learner.head:
                assert torch.equal(v, learner.params[k].detach())  # body's inner update is exactly zero
    assert not torch.equal(trajectory[-1]["head.weight"], learner.params["head.weight"].detach())
    algo.meta_gradient(learner, batch)
    body = [k for k in learner.params if k not in learner.head]
    assert all(learner.params[k].grad is not None and float(learner.params[k].grad.abs().sum()) > 0 for k in body)


def test_anil_batched_body_matches_the_per_task_loop() -> None:
    """The batched body (one forward for all tasks, per-task statistics) gives the per-task gradient."""
    learner, batch = fresh("conv")
    algo = ANIL(ANILConfig(), TrainConfig(inner_steps=2))
    algo.meta_gradient(learner, batch)
    batched = grads(learner).clone()
    reference, _ = fresh("conv")
    total = 0
    for i in range(len(batch)):
        sx, qx = batch.support_x[i], batch.query_x[i]
        feats = reference.features(reference.params, torch.cat([sx, qx]), ref=len(sx))
        head = {k: reference.params[k] for k in reference.head}
        for _ in range(2):
            loss = reference.loss(reference.head_forward(head, feats[: len(sx)]), batch.support_y[i])
            g = torch.autograd.grad(loss, list(head.values()), create_graph=True)
            head = {k: v - reference.inner_lr[k] * gk for (k, v), gk in zip(head.items(), g, strict=True)}
        total = total + reference.loss(reference.head_forward(head, feats[len(sx) :]), batch.query_y[i])
    (total / len(batch)).backward()
    torch.testing.assert_close(batched, grads(reference), rtol=1e-9, atol=1e-11)


def test_metasgd_alpha_has_each_parameters_shape_and_learns() -> None:
    cfg = TrainConfig(inner_lr=0.1, width=4, ways=3)
    learner = init_learner(CONV, cfg, "classification", "cpu", MetaSGD.inner_lr_shape)
    for k, p in learner.params.items():
        assert learner.inner_lr[k].shape == p.shape and learner.inner_lr[k].requires_grad
    batch = tiny_batch("conv")
    batch = TaskBatch(*(t.float() if t.is_floating_point() else t for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)))
    MetaSGD(MetaSGDConfig(), cfg).meta_gradient(learner, batch)
    assert all(a.grad is not None and a.grad.shape == a.shape and float(a.grad.abs().sum()) > 0 for a in learner.inner_lr.values())


def test_pretrain_never_calls_the_inner_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import metactl.inner as inner

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pretrain called the inner loop")

    for name in ("inner_step", "inner_loop", "adapt_trajectory"):
        monkeypatch.setattr(inner, name, forbidden)
    learner, batch = fresh("conv")
    batch = TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y, torch.tensor([[5, 2, 7], [1, 0, 3]]))
    algo = Pretrain(PretrainConfig(), TrainConfig())
    algo.setup(learner, SetupInfo(train_classes=8))
    metrics = algo.meta_gradient(learner, batch)
    assert metrics["loss"] > 0 and learner.extra["classifier.weight"].grad is not None
    assert all(float(learner.params[k].detach().abs().sum()) == 0 for k in learner.head)  # the N-way head starts at zero


def test_msl_weights_anneal_to_the_last_step() -> None:
    w0, w_half, w_end = msl_weights(4, 0.0, 0.5), msl_weights(4, 0.25, 0.5), msl_weights(4, 0.9, 0.5)
    assert w0 == pytest.approx([0.25] * 4) and sum(w_half) == pytest.approx(1) and sum(w_end) == pytest.approx(1)
    assert w_half[0] < 0.25 < w_half[-1] and w_end[0] == pytest.approx(0.03 / 4) and w_end[-1] > 0.97


def test_multi_step_loss_gradient_is_the_weighted_sum_of_per_step_gradients() -> None:
    """MSL: ∇θ Σₖ wₖ L_q(ϕₖ) = Σₖ wₖ ∇θ L_q(ϕₖ) — each term being MAML's gradient with k inner steps."""
    learner, batch = fresh("mlp")
    algo = MAML(MAMLConfig(multi_step_loss=True, msl_anneal=1.0), TrainConfig(inner_steps=3, steps=100))
    algo.begin_step(40, 100)
    weights = msl_weights(3, 0.4, 1.0)
    algo.meta_gradient(learner, batch)
    msl = grads(learner)
    expected = torch.zeros_like(msl)
    for k, w in enumerate(weights, start=1):
        ref, _ = fresh("mlp")
        maml_meta_gradient(ref, batch, k, second_order=True)
        expected += w * grads(ref)
    torch.testing.assert_close(msl, expected, rtol=1e-10, atol=1e-12)


def test_second_order_after_n_steps_switches_from_first_to_second_order() -> None:
    cfg = TrainConfig(inner_steps=1, steps=100)
    results = {}
    for label, algo_cls, config, step in [
        ("early", MAML, MAMLConfig(second_order_after=10), 9),
        ("late", MAML, MAMLConfig(second_order_after=10), 10),
        ("fomaml", FOMAML, FOMAMLConfig(), 0),
        ("maml", MAML, MAMLConfig(), 0),
    ]:
        learner, batch = fresh("mlp")
        algo = algo_cls(config, cfg)
        algo.begin_step(step, cfg.steps)
        algo.meta_gradient(learner, batch)
        results[label] = grads(learner)
    torch.testing.assert_close(results["early"], results["fomaml"])
    torch.testing.assert_close(results["late"], results["maml"])
    assert (results["maml"] - results["fomaml"]).abs().max() > 1e-4


def test_per_step_inner_lr_gives_each_inner_step_its_own_alpha() -> None:
    """MAML++ LSLR: α[layer] has one entry per inner step; step k uses entry k (checked against finite differences)."""
    cfg = TrainConfig(inner_steps=2, inner_lr=0.3, steps=10)
    algo = MAML(MAMLConfig(per_step_inner_lr=True), cfg)
    assert algo.inner_lr_shape == "step"
    learner = init_learner({"kind": "mlp", "in_features": 1, "out_features": 1, "hidden": [5, 5]}, cfg, "regression", "cpu", algo.inner_lr_shape)
    learner.model.double()
    learner.params = {k: v.detach().double().requires_grad_(True) for k, v in learner.params.items()}
    learner.inner_lr = {k: torch.tensor([0.3, 0.1], dtype=torch.float64, requires_grad=True) for k in learner.params}
    assert learner.per_step_lr and all(a.shape == (2,) for a in learner.inner_lr.values())
    batch = tiny_batch("mlp")
    algo.meta_gradient(learner, batch)
    fd = finite_difference(learner, batch, 2, learner.inner_lr)
    for k, a in learner.inner_lr.items():
        torch.testing.assert_close(a.grad, fd[k], rtol=1e-5, atol=1e-7)
        assert float(a.grad[0].abs()) > 0 and float(a.grad[1].abs()) > 0


def test_centroid_head_classifies_by_the_nearest_class_mean() -> None:
    """The centroid head's argmax is the nearest class mean in Euclidean distance (computed here directly)."""
    from metactl.algorithms.centroid import centroid_head

    g = torch.Generator().manual_seed(0)
    feats, y = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.arange(3).repeat(4)
    w, b = centroid_head(feats, y, 3)
    means = torch.stack([feats[y == c].mean(0) for c in range(3)])
    queries = torch.randn(50, 5, generator=g, dtype=torch.float64)
    nearest = torch.cdist(queries, means).argmin(-1)
    assert torch.equal((queries @ w.T + b).argmax(-1), nearest)
    torch.testing.assert_close(queries @ w.T + b, -torch.cdist(queries, means).pow(2) + queries.pow(2).sum(-1, keepdim=True))


def test_probe_reaches_the_optimum_of_regularised_logistic_regression() -> None:
    """First-order optimality: the gradient of (1/n) Σ CE + ‖W‖²/(2Cn) vanishes at the fitted head."""
    from metactl.algorithms.probe import fit_logistic

    g = torch.Generator().manual_seed(1)
    feats, y = torch.randn(15, 4, generator=g, dtype=torch.float64), torch.arange(3).repeat(5)
    w, b = fit_logistic(feats, y, 3, c=0.5, max_iter=200)
    w, b = w.requires_grad_(True), b.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(feats @ w.T + b, y) + w.pow(2).sum() / (2 * 0.5 * 15)
    gw, gb = torch.autograd.grad(loss, [w, b])
    assert float(gw.abs().max()) < 1e-6 and float(gb.abs().max()) < 1e-6
    assert float(w.detach().norm()) > 0.1  # not the zero start


# --- ProtoMAML ---------------------------------------------------------------------------------------


def _protomaml(steps: int, first_order: bool = False) -> ProtoMAML:
    return ProtoMAML(ProtoMAMLConfig(first_order=first_order), TrainConfig(inner_steps=steps))


def test_protomaml_with_no_inner_step_predicts_with_the_nearest_centroid_head() -> None:
    """Step 0 of adapt is θ with the nearest-centroid head of the support features (computed here independently)."""
    from metactl.algorithms.centroid import centroid_head

    learner, batch = fresh("conv")
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    trajectory = _protomaml(0).adapt(learner, sx, sy, 0)
    assert len(trajectory) == 1
    with torch.no_grad():
        n = len(sx)
        feats = learner.features(learner.params, torch.cat([sx, qx]), ref=n)
        w, b = centroid_head(feats[:n], sy, 3)
        expected = feats[n:] @ w.T + b
        got = learner.predict_query(trajectory[0], sx, qx)
        means = torch.stack([feats[:n][sy == c].mean(0) for c in range(3)])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(got.argmax(-1), torch.cdist(feats[n:], means).argmin(-1))
    body = [k for k in learner.params if k not in learner.head]
    assert all(torch.equal(trajectory[0][k], learner.params[k].detach()) for k in body)


def _protomaml_objective(learner: Learner, batch: TaskBatch, steps: int) -> float:
    """(1/B) Σ L_query(ϕᵢ) with ϕ₀ = θ with the prototype head, as a plain number."""
    from metactl.algorithms.protomaml import prototype_init
    from metactl.inner import inner_loop

    with torch.enable_grad():
        total = 0.0
        for i in range(len(batch)):
            sx, sy = batch.support_x[i], batch.support_y[i]
            phi = inner_loop(learner, prototype_init(learner, learner.params, sx, sy), sx, sy, steps, second_order=False)
            total += float(learner.loss(learner.predict_query(phi, sx, batch.query_x[i]), batch.query_y[i]).detach())
    return total / len(batch)


@pytest.mark.parametrize("steps", [1, 2])
def test_protomaml_second_order_meta_gradient_matches_finite_differences(steps: int) -> None:
    learner, batch = fresh("conv")
    _protomaml(steps).meta_gradient(learner, batch)
    fd_theta = finite_difference(learner, batch, steps, learner.params, _protomaml_objective)
    fd_alpha = finite_difference(learner, batch, steps, learner.inner_lr, _protomaml_objective)
    for name, p in learner.params.items():
        if name in learner.head:  # replaced by the prototype head: no gradient, and the objective does not depend on it
            assert p.grad is None and float(fd_theta[name].abs().max()) < 1e-8
            continue
        torch.testing.assert_close(p.grad, fd_theta[name], rtol=1e-5, atol=1e-7, msg=f"θ {name}")
    for name, a in learner.inner_lr.items():
        torch.testing.assert_close(a.grad, fd_alpha[name], rtol=1e-5, atol=1e-7, msg=f"α {name}")
        assert float(a.grad.abs()) > 0, f"α {name} got no gradient"


def test_protomaml_first_order_is_the_query_gradient_at_phi_pulled_back_through_the_prototypes() -> None:
    """first_order: constant inner gradients, prototypes still differentiated:
    ∇θ_body = ∂L/∂ϕ_body + (∂(w, b)/∂θ_body)ᵀ ∂L/∂ϕ_head,  ∇α = −Σₖ ⟨∂L/∂ϕ, gₖ⟩."""
    from metactl.algorithms.centroid import centroid_head

    learner, batch = fresh("conv")
    _protomaml(2, first_order=True).meta_gradient(learner, batch)
    body = [k for k in learner.params if k not in learner.head]
    expected = {k: torch.zeros_like(learner.params[k]) for k in body}
    expected_alpha = {k: torch.zeros_like(v) for k, v in learner.inner_lr.items()}
    for i in range(len(batch)):
        sx, sy = batch.support_x[i], batch.support_y[i]
        theta = {k: v.detach().requires_grad_(True) for k, v in learner.params.items()}
        w, b = centroid_head(learner.features(theta, sx, ref=len(sx)), sy, 3)
        phi = {**{k: theta[k].detach() for k in body}, "head.weight": w.detach(), "head.bias": b.detach()}
        phi = {k: v.requires_grad_(True) for k, v in phi.items()}
        support_grads = []
        for _ in range(2):  # explicit first-order inner loop
            g = torch.autograd.grad(learner.loss(learner.forward(phi, sx), sy), list(phi.values()))
            support_grads.append(dict(zip(phi, g, strict=True)))
            phi = {k: (v - learner.inner_lr[k].detach() * gk).detach().requires_grad_(True) for (k, v), gk in zip(phi.items(), g, strict=True)}
        q = learner.loss(learner.predict_query(phi, sx, batch.query_x[i]), batch.query_y[i])
        gq = dict(zip(phi, torch.autograd.grad(q, list(phi.values())), strict=True))
        through_prototypes = torch.autograd.grad([w, b], [theta[k] for k in body], grad_outputs=[gq["head.weight"], gq["head.bias"]])
        for k, gp in zip(body, through_prototypes, strict=True):
            expected[k] += (gq[k] + gp) / len(batch)
        for k in expected_alpha:
            expected_alpha[k] += -(gq[k] * (support_grads[0][k] + support_grads[1][k])).sum() / len(batch)
    for k in body:
        torch.testing.assert_close(learner.params[k].grad, expected[k], rtol=1e-10, atol=1e-12, msg=f"θ {k}")
    for k, a in learner.inner_lr.items():
        torch.testing.assert_close(a.grad, expected_alpha[k], rtol=1e-10, atol=1e-12, msg=f"α {k}")
    assert all(learner.params[k].grad is None for k in learner.head)
    # the pull-back through the prototypes is not zero: cutting it would change the body's gradient
    assert any(float(gp.abs().max()) > 1e-6 for gp in through_prototypes)


def test_protomaml_refuses_regression() -> None:
    from metactl.errors import MetactlError

    with pytest.raises(MetactlError, match="classification"):
        _protomaml(1).setup(tiny_learner("mlp"), SetupInfo())


def test_protomaml_on_a_frozen_body_meta_learns_alpha_only() -> None:
    """--adapt head: θ is the head alone, the prototypes are constants; the inner loop still runs from them."""
    learner, batch = fresh("conv")
    body = {k: v.detach() for k, v in learner.params.items() if k not in learner.head}
    head_only = learner.replace(params={k: learner.params[k] for k in learner.head}, inner_lr={k: learner.inner_lr[k] for k in learner.head}, frozen=body)
    metrics = _protomaml(2).meta_gradient(head_only, batch)
    assert metrics["loss"] > 0
    assert all(p.grad is None for p in head_only.params.values())
    assert all(a.grad is not None and float(a.grad.abs()) > 0 for a in head_only.inner_lr.values())
