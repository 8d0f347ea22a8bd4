"""Frozen weights (a pretrained body): used by every forward pass, learned by nothing, stored nowhere
but in the model itself — not in θ, α, the optimizer, checkpoints or the run dir — and `load_run`,
`adapt` and `export` put them back. Shown with a Conv-4 whose convolutions come "pretrained"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from metactl import data as data_registry
from metactl import models
from metactl.adapt import adapt, load_adapted
from metactl.config import TrainConfig
from metactl.data import sources
from metactl.export import export
from metactl.models.conv4 import Conv4
from metactl.runs import load_run
from metactl.testing import make_image_folder, register_plugin
from metactl.train import meta_train


class PretrainedBodyConv4(Conv4):
    """Conv-4 whose convolutions are fixed "pretrained" weights (drawn from a fixed generator) and frozen."""

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PretrainedBodyConv4:
        model = cls(num_classes=int(spec["num_classes"]), width=int(spec.get("width", 64)))
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for conv in model.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
        return model

    def frozen_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.startswith("convs.")]


def body() -> dict[str, torch.Tensor]:
    return {k: v for k, v in PretrainedBodyConv4.from_spec({"num_classes": 3, "width": 8}).named_parameters() if k.startswith("convs.")}


@pytest.fixture
def pretrained_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    site = register_plugin(tmp_path / "site", {"pretrained-conv4": f"{__name__}:PretrainedBodyConv4"}, "metactl-frozen-test", group="metactl.models")
    monkeypatch.syspath_prepend(str(site))
    models.refresh()
    monkeypatch.setattr(sources, "conv_spec", lambda ways, width, size=28: {"kind": "pretrained-conv4", "num_classes": ways, "width": width})
    yield
    models.refresh()
    data_registry.refresh()


def test_frozen_weights_stay_out_of_theta_and_come_back_for_deployment(pretrained_body: None, tmp_path: Path) -> None:
    cfg = TrainConfig(
        algo="maml", data="glyphs", ways=3, shots=1, query_shots=2, meta_batch=2, steps=3, width=8, eval_every=0, eval_episodes=2,
        checkpoint_every=1, threads=1,
    )  # fmt: skip
    run = meta_train(cfg, out=tmp_path / "run").path
    frozen = body()
    theta = load_file(run / "theta.safetensors")
    assert not any(k.startswith("convs.") or k.startswith("inner_lr.convs.") for k in theta), sorted(theta)
    assert {"head.weight", "norms.0.weight", "inner_lr.head.weight"} <= set(theta)
    checkpoint = load_file(run / "checkpoint.safetensors")
    assert not any("convs." in k for k in checkpoint)
    optimizer_tensors = {k.split(".")[1] for k in checkpoint if k.startswith("optimizer.")}
    learned = [k for k in theta if not k.startswith("inner_lr.")]
    assert len(optimizer_tensors) == 2 * len(learned), "Adam keeps state for θ and α only"  # θ then α groups
    _meta, learner = load_run(run)
    assert set(learner.frozen) == set(frozen) and all(torch.equal(learner.frozen[k], frozen[k]) for k in frozen)
    assert set(learner.params) == set(learned)
    # a body learned by nothing: the trained θ's forward uses exactly the pretrained convolutions
    support = make_image_folder(tmp_path / "support", classes=3, per_class=3, seed=5)
    adapt(support, run, 2, None, tmp_path / "adapted")
    adapted = load_file(tmp_path / "adapted" / "model.safetensors")
    assert not set(adapted) & set(frozen), "the adapted folder stores the frozen body"
    _, model = load_adapted(tmp_path / "adapted")
    assert all(torch.equal(v, frozen[k]) for k, v in model.named_parameters() if k in frozen), "the deployed model lost the pretrained body"
    result = export(tmp_path / "adapted", tmp_path / "export")
    assert result.parity <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28)).astype(np.float32)
    probs = sess.run(["probabilities"], {"pixels": pixels})[0]
    assert probs.shape == (4, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert json.loads((tmp_path / "adapted" / "metactl.json").read_text())["model"]["kind"] == "pretrained-conv4"


def test_frozen_weights_get_no_gradient_and_never_move(pretrained_body: None, tmp_path: Path) -> None:
    from metactl.algorithms.maml import maml_meta_gradient
    from metactl.data.episodes import training_tasks
    from metactl.data.tensors import to_batch
    from metactl.train import init_learner

    cfg = TrainConfig(algo="maml", data="glyphs", ways=3, shots=1, query_shots=2, meta_batch=2, width=8, threads=1)
    learner = init_learner({"kind": "pretrained-conv4", "num_classes": 3, "width": 8}, cfg, "classification", "cpu")
    assert set(learner.frozen) == set(body()) and not set(learner.frozen) & set(learner.params)
    batch = to_batch(training_tasks(sources.Glyphs().open(cfg, None, None).train, 0, 0, range(2)))
    maml_meta_gradient(learner, batch, 1, second_order=True)
    assert all(v.grad is None and not v.requires_grad for v in learner.frozen.values())
    assert all(p.grad is not None for p in learner.params.values())
    # and the forward pass really uses them: other frozen weights give other outputs
    x = batch.task(0)[0]
    with torch.no_grad():
        out = learner.forward(learner.params, x)
        shifted = learner.replace(frozen={k: v + 0.1 for k, v in learner.frozen.items()})
        assert not torch.allclose(out, shifted.forward(shifted.params, x))
