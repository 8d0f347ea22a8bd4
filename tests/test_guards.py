"""Guards of the outer loop on a body it trains (``--train-body``): L2-SP toward the pretrained weights,
a linear warmup of the body's learning rate, gradient clipping; and 0 inner steps (prototypical
training, a prototype head at test time) allowed. Real outer steps on a Conv-4 body pre-trained by a
real (tiny) run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from metactl.adapt import default_steps
from metactl.config import TrainConfig
from metactl.data.episodes import training_tasks
from metactl.distributed import init_from_env
from metactl.errors import MetactlError
from metactl.registry import build_algorithm
from metactl.train import Reporter, Session, meta_train, outer_step, setup

TINY: dict[str, Any] = dict(data="glyphs", ways=3, shots=1, query_shots=2, meta_batch=2, width=8, eval_every=0, eval_episodes=4, threads=1)


@pytest.fixture(scope="module")
def body_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return meta_train(TrainConfig(algo="pretrain", steps=3, **TINY), out=tmp_path_factory.mktemp("pre") / "run").path


def _session(cfg: TrainConfig, out: Path) -> Session:
    algo = build_algorithm(cfg.algo, cfg.algo_options, cfg)
    return setup(cfg, algo, init_from_env("cpu"), out, False, False, Reporter())


def _body_cfg(body_run: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(algo="maml", steps=5, backbone=str(body_run), adapt="head", train_body=True, **{**TINY, **kw})


def _step_grads(s: Session, shift: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """θ moved by ``shift`` (away from the pretrained body), then one real outer step: the gradients it used."""
    with torch.no_grad():
        for k, d in shift.items():
            s.learner.params[k].add_(d)
    record = outer_step(s, training_tasks(s.data.train, s.cfg.seed, 0, range(s.cfg.meta_batch)), 1)
    grads = {k: v.grad.detach().clone() for k, v in s.learner.params.items()}
    grads.update({f"α {k}": v.grad.detach().clone() for k, v in s.learner.inner_lr.items() if v.grad is not None})
    return grads, record


def test_l2sp_adds_lambda_times_the_distance_to_the_pretrained_body(body_run: Path, tmp_path: Path) -> None:
    lam = 0.5
    pretrained = {k: v for k, v in load_file(body_run / "theta.safetensors").items() if not k.startswith(("head.", "inner_lr."))}
    plain, pulled = _session(_body_cfg(body_run), tmp_path / "a"), _session(_body_cfg(body_run, body_l2sp=lam), tmp_path / "b")
    assert set(pulled.learner.outer_only) == set(pretrained)
    gen = torch.Generator().manual_seed(1)
    shift = {k: 0.05 * torch.randn(v.shape, generator=gen) for k, v in plain.learner.params.items() if k in pretrained}
    before = {k: pulled.learner.params[k].detach() + shift[k] for k in shift}
    g0, _ = _step_grads(plain, shift)
    g1, _ = _step_grads(pulled, shift)
    for k in g0:
        want = g0[k] + lam * (before[k] - pretrained[k]) if k in pretrained else g0[k]
        torch.testing.assert_close(g1[k], want, rtol=1e-5, atol=1e-6, msg=k)
    assert any(float((before[k] - pretrained[k]).abs().max()) > 0.01 for k in shift)


def test_body_warmup_ramps_the_body_learning_rate_linearly(body_run: Path, tmp_path: Path) -> None:
    s = _session(_body_cfg(body_run, body_lr=1e-3, body_warmup=3, meta_lr=2e-3), tmp_path / "w")
    lrs, theta_lrs, moved = [], [], []
    for step in range(5):
        before = {k: s.learner.params[k].detach().clone() for k in s.learner.outer_only}
        outer_step(s, training_tasks(s.data.train, s.cfg.seed, step, range(s.cfg.meta_batch)), 1)
        groups = {g["name"]: g["lr"] for g in s.opt.param_groups}
        lrs.append(groups["body"])
        theta_lrs.append(groups["theta"])
        moved.append(max(float((s.learner.params[k].detach() - v).abs().max()) for k, v in before.items()))
    np.testing.assert_allclose(lrs, [1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3], rtol=1e-12)
    assert theta_lrs == [2e-3] * 5  # only the body warms up
    assert 0.9e-3 / 3 < moved[0] <= 1.1e-3 / 3, moved  # Adam's first step moves a weight by about the lr it used


def test_clip_grad_bounds_the_outer_gradient_norm(body_run: Path, tmp_path: Path) -> None:
    shift: dict[str, torch.Tensor] = {}
    g0, _ = _step_grads(_session(_body_cfg(body_run), tmp_path / "a"), shift)
    g1, record = _step_grads(_session(_body_cfg(body_run, clip_grad=1e-3), tmp_path / "b"), shift)
    norm0 = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g0.values()])))
    assert norm0 > 1e-2 and record["grad_norm"] == pytest.approx(norm0, rel=1e-5)  # the norm before clipping (θ and α)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k] * (1e-3 / norm0), rtol=1e-4, atol=1e-9)


def test_guards_need_a_trained_body() -> None:
    for bad in (dict(body_warmup=3), dict(body_l2sp=0.1)):
        with pytest.raises(MetactlError, match="--train-body"):
            TrainConfig(**bad)
    with pytest.raises(MetactlError, match="clip-grad must be > 0"):
        TrainConfig(clip_grad=0.0)


def test_zero_inner_steps_trains_protomaml_and_adapt_may_choose_zero_steps(tmp_path: Path) -> None:
    """--inner-steps 0: prototypical-network training (θ moves). A huge fixed inner learning rate makes
    every inner step hurt, so the step count chosen on validation is 0: the prototype head itself."""
    cfg = TrainConfig(algo="protomaml", inner_steps=0, test_inner_steps=2, inner_lr=500.0, learn_inner_lr=False, steps=2, **{**TINY, "eval_episodes": 20})
    run = meta_train(cfg, out=tmp_path / "run").path
    meta = json.loads((run / "metactl.json").read_text())
    curve = [c["mean"] for c in meta["validation"]["curve"]]
    assert meta["adapt_steps"] == int(np.argmax(curve)) == 0, curve
    assert curve[0] > curve[2] + 0.05, curve


def test_a_zero_step_choice_made_with_another_kind_of_head_falls_back() -> None:
    """0 chosen on N-way episodes (the meta-learned head) does not carry to N' labels (a new zero head)."""
    cfg = TrainConfig(test_inner_steps=3)
    meta = {"adapt_steps": 0, "adapt_steps_ways": 5, "model": {"num_classes": 5}}
    assert default_steps(meta, cfg, 5) == 0
    assert default_steps(meta, cfg, 7) == 3
    assert default_steps({**meta, "adapt_steps_ways": 20}, cfg, 7) == 0  # chosen on a new head of every validation class
    assert default_steps({**meta, "adapt_steps": 2}, cfg, 7) == 2
