"""``--backbone RUN``: a metactl image run as the pretrained body of a later meta-training
(pre-train -> meta-train -> fine-tune), with ``--adapt head`` (body frozen) or ``all`` (body trained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from metactl.cli import app
from metactl.config import TrainConfig
from metactl.data import open_data
from metactl.errors import MetactlError
from metactl.runs import load_run
from metactl.train import init_learner, meta_train, model_spec_for

runner = CliRunner()
TINY = dict(data="glyphs", ways=3, shots=1, query_shots=2, meta_batch=2, width=8, eval_every=0, eval_episodes=4, threads=1)


@pytest.fixture(scope="module")
def body_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return meta_train(TrainConfig(algo="pretrain", steps=3, **TINY), out=tmp_path_factory.mktemp("pre") / "run").path


def _body(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / "theta.safetensors").items() if not k.startswith(("head.", "inner_lr."))}


def test_head_on_a_frozen_pretrained_body(body_run: Path, tmp_path: Path) -> None:
    run = meta_train(TrainConfig(algo="maml", steps=3, backbone=str(body_run), adapt="head", **TINY), out=tmp_path / "meta").path
    theta = load_file(run / "theta.safetensors")
    assert {k for k in theta if not k.startswith("inner_lr.")} == {"head.weight", "head.bias"}, sorted(theta)
    meta = json.loads((run / "metactl.json").read_text())
    assert meta["model"]["init_from"]["run"] == str(body_run.resolve()) and meta["model"]["adapt"] == "head"
    _, learner = load_run(run)
    body = _body(body_run)
    assert set(learner.frozen) == set(body) and all(torch.equal(learner.frozen[k], body[k]) for k in body), "the frozen body moved"
    assert (run / "theta.safetensors").stat().st_size < (body_run / "theta.safetensors").stat().st_size / 5
    support = tmp_path / "shots"
    from metactl.testing import make_image_folder

    make_image_folder(support, classes=3, per_class=2, seed=3)
    r = runner.invoke(app, ["adapt", "--support", str(support), "--from", str(run), "--out", str(tmp_path / "adapted")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "--from", str(tmp_path / "adapted"), "--onnx", "--out", str(tmp_path / "export")])
    assert r.exit_code == 0, r.output


def test_all_starts_from_the_pretrained_body_and_trains_it(body_run: Path) -> None:
    cfg = TrainConfig(algo="maml", steps=3, backbone=str(body_run), adapt="all", **TINY)
    data = open_data(cfg)
    learner = init_learner(model_spec_for(data, cfg), cfg, "classification", "cpu")
    body = _body(body_run)
    assert not learner.frozen and all(torch.equal(learner.params[k].detach(), body[k]) for k in body)
    assert learner.params["head.weight"].shape[0] == 3


def test_train_body_keeps_the_body_out_of_the_inner_loop(body_run: Path) -> None:
    cfg = TrainConfig(algo="maml", steps=3, backbone=str(body_run), adapt="head", train_body=True, **TINY)
    learner = init_learner(model_spec_for(open_data(cfg), cfg), cfg, "classification", "cpu")
    assert not learner.frozen and set(learner.outer_only) == set(_body(body_run))
    assert learner.inner_names() == ["head.weight", "head.bias"]
    assert all(float(learner.inner_lr[k]) == 0.0 and not learner.inner_lr[k].requires_grad for k in learner.outer_only)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"adapt": "lora"}, "--adapt lora adds adapters to a transformer"),
        ({"data": "sinusoid"}, "does not take this data's inputs"),
    ],
)
def test_backbone_mismatches_are_clear_errors(body_run: Path, overrides: dict, message: str) -> None:
    cfg = TrainConfig(**{**dict(algo="maml", steps=3, backbone=str(body_run), adapt="head", **TINY), **overrides})
    with pytest.raises(MetactlError, match=message):
        model_spec_for(open_data(cfg), cfg)


def test_a_changed_body_run_is_refused(body_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(body_run, copy)
    run = meta_train(TrainConfig(algo="maml", steps=2, backbone=str(copy), adapt="head", **TINY), out=tmp_path / "meta").path
    theta = load_file(copy / "theta.safetensors")
    theta["convs.0.weight"] = theta["convs.0.weight"] + 1.0
    from safetensors.torch import save_file

    save_file(theta, copy / "theta.safetensors")
    with pytest.raises(MetactlError, match="changed since this run was trained on top of it"):
        load_run(run)


def test_body_lr_is_the_bodys_own_outer_learning_rate(body_run: Path, tmp_path: Path) -> None:
    """Adam's first step moves every weight with a gradient by its group's learning rate (m/sqrt(v) = ±1):
    the pretrained body by ``body_lr`` when given, else by ``meta_lr`` like the rest of θ."""
    body = _body(body_run)
    for body_lr, want in ((1e-6, 1e-6), (None, 1e-3)):
        cfg = TrainConfig(algo="maml", steps=1, backbone=str(body_run), adapt="head", train_body=True, body_lr=body_lr, meta_lr=1e-3, **TINY)
        theta = load_file(meta_train(cfg, out=tmp_path / f"meta-{body_lr}").path / "theta.safetensors")
        moved = torch.cat([(theta[k] - body[k]).abs().flatten() for k in body if k.endswith("weight")])
        assert 0.9 * want < float(moved.max()) <= 1.1 * want, (body_lr, float(moved.max()))  # float32 rounding of weights near 1: ±6e-8
    with pytest.raises(MetactlError, match="body-lr applies to a body the outer loop trains"):
        TrainConfig(backbone=str(body_run), adapt="head", body_lr=1e-5)
