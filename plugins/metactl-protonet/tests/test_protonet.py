"""metactl-protonet: the metactl contract suite, plus ProtoNet's own numerics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metactl_protonet import ProtoNet, ProtoNetConfig, distance_logits, embed, prototype_head, prototypes

from metactl.adapt import deployable, norm_statistics
from metactl.api import Learner, SetupInfo, TaskBatch
from metactl.errors import MetactlError
from metactl.models import build_model
from metactl.testing import check_algorithm

SPEC = {"kind": "conv4", "num_classes": 3, "in_channels": 1, "image_size": 16, "width": 4}


def tiny_learner(dtype: torch.dtype = torch.float64, seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    model = build_model(SPEC).to(dtype)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    lr = {k: torch.tensor(0.1, dtype=dtype, requires_grad=True) for k in params}
    return Learner(model, params, lr, "classification")


def tiny_batch(b: int = 2, ways: int = 3, shots: int = 2, queries: int = 2, dtype: torch.dtype = torch.float64, seed: int = 1) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = lambda k: torch.arange(ways).repeat_interleave(k).expand(b, -1).clone()  # noqa: E731
    return TaskBatch(
        torch.rand(b, ways * shots, 1, 16, 16, generator=g, dtype=dtype),
        labels(shots),
        torch.rand(b, ways * queries, 1, 16, 16, generator=g, dtype=dtype),
        labels(queries),
    )


def test_contract(tmp_path: Path) -> None:
    check_algorithm("protonet", tmp_path)


def test_contract_in_bf16(tmp_path: Path) -> None:
    """The same suite with the forward passes under bf16 autocast (the plugin reaches the model only
    through ``Learner``, so it gets autocast, task threads and frozen weights like the built-ins)."""
    check_algorithm("protonet", tmp_path, precision="bf16")


def test_prototype_head_logits_are_negative_squared_distances_up_to_a_row_constant() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    protos = prototypes(emb, y, 3)
    for c in range(3):
        torch.testing.assert_close(protos[c], emb[y == c].mean(0))
    query = torch.randn(4, 5, generator=g, dtype=torch.float64)
    w, b = prototype_head(protos)
    linear = query @ w.T + b
    direct = torch.stack([-((query - p) ** 2).sum(-1) for p in protos], dim=1)
    torch.testing.assert_close(distance_logits(query, protos), direct)
    diff = linear - direct
    torch.testing.assert_close(diff, (query**2).sum(-1, keepdim=True).expand_as(diff))  # ‖f‖²: the same for every class
    torch.testing.assert_close(linear.softmax(-1), direct.softmax(-1))


def test_meta_gradient_matches_a_direct_reimplementation() -> None:
    learner = tiny_learner()
    batch = tiny_batch()
    metrics = ProtoNet(ProtoNetConfig(), None).meta_gradient(learner, batch)

    model = learner.model  # its own parameters hold the same values as learner.params
    body = [(k, p) for k, p in model.named_parameters() if not k.startswith("head.")]
    b = len(batch)
    losses = []
    for i in range(b):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        n = sx.shape[0]
        emb = model.features(torch.cat([sx, qx]), ref=n)
        protos = torch.stack([emb[:n][sy == c].mean(0) for c in range(3)])
        dist = torch.stack([((emb[n:] - p) ** 2).sum(-1) for p in protos], dim=1)
        losses.append(F.cross_entropy(-dist, qy))
    mean = torch.stack(losses).mean()
    expected = torch.autograd.grad(mean, [p for _, p in body])

    assert metrics["loss"] == pytest.approx(float(mean.detach()), rel=1e-12)
    for (name, _), g in zip(body, expected, strict=True):
        torch.testing.assert_close(learner.params[name].grad, g, rtol=1e-10, atol=1e-12)
    assert learner.params["head.weight"].grad is None and learner.params["head.bias"].grad is None
    assert all(a.grad is None for a in learner.inner_lr.values())


def test_adapted_head_gives_prototype_probabilities_in_training_and_deployment() -> None:
    learner = tiny_learner(torch.float32)
    batch = tiny_batch(b=1, shots=3, queries=4, dtype=torch.float32)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    algo = ProtoNet(ProtoNetConfig(), None)
    trajectory = algo.adapt(learner, sx, sy, 2)
    assert len(trajectory) == 3 and all(not v.requires_grad for p in trajectory for v in p.values())
    with torch.no_grad():
        expected = algo.task_logits(learner, learner.params, sx, sy, qx).softmax(-1)
        # what evaluation measures: the linear head, queries normalised with support statistics
        torch.testing.assert_close(learner.predict_query(trajectory[-1], sx, qx).softmax(-1), expected)
        # what `metactl adapt` deploys: BatchNorm statistics frozen from the support set
        tensors = {**trajectory[-1], **norm_statistics(learner.model, trajectory[-1], sx)}
        torch.testing.assert_close(deployable(SPEC, tensors)(qx).softmax(-1), expected, rtol=1e-4, atol=1e-5)
        # the support embeddings are those of the support alone
        torch.testing.assert_close(embed(learner, learner.params, sx, ref=sx.shape[0]), embed(learner, learner.params, sx))


def test_adapt_to_a_different_number_of_labels() -> None:
    learner = tiny_learner(torch.float32)  # trained 3-way; `metactl adapt` swaps in a zero (2, D) head
    learner.params["head.weight"] = torch.zeros(2, learner.params["head.weight"].shape[1])
    learner.params["head.bias"] = torch.zeros(2)
    learner.model = build_model({**SPEC, "num_classes": 2})
    sx = torch.rand(4, 1, 16, 16)
    phi = ProtoNet(ProtoNetConfig(), None).adapt(learner, sx, torch.tensor([0, 1, 0, 1]), 1)[-1]
    assert phi["head.weight"].shape == (2, 4) and phi["head.bias"].shape == (2,)


def test_every_label_needs_a_support_example() -> None:
    with pytest.raises(ValueError, match="label"):
        prototypes(torch.zeros(2, 4), torch.tensor([0, 2]), 3)


def test_regression_is_refused_at_setup() -> None:
    model = build_model({"kind": "mlp"})
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    learner = Learner(model, params, {k: torch.tensor(0.1) for k in params}, "regression")
    with pytest.raises(MetactlError, match="classification"):
        ProtoNet(ProtoNetConfig(), None).setup(learner, SetupInfo())


def test_embeddings_follow_the_learners_precision() -> None:
    """bf16 reaches the plugin: its embeddings are the learner's features under autocast (not a
    float32 forward of its own), and differ from the float32 ones by bf16 rounding only."""
    fp32 = tiny_learner(torch.float32)
    bf16 = fp32.replace(precision="bf16")
    x = tiny_batch(dtype=torch.float32).support_x[0]
    with torch.no_grad():
        e32, e16 = embed(fp32, fp32.params, x, ref=len(x)), embed(bf16, bf16.params, x, ref=len(x))
        assert torch.equal(e16, bf16.features(bf16.params, x, ref=len(x)))
    assert e16.dtype == torch.float32 and not torch.equal(e16, e32)
    torch.testing.assert_close(e16, e32, rtol=0.05, atol=0.05)


class UnitNormBody(torch.nn.Module):
    """f(x) = normalize(W x) under a linear head; its spec says the features are unit-norm (a sentence encoder's)."""

    def __init__(self, dim: int = 6, ways: int = 3) -> None:
        super().__init__()
        self.spec = {"normalize": True}
        self.body = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, ways)

    def forward(self, x: torch.Tensor, ref: int | None = None, tasks: int = 1, return_features: bool = False) -> torch.Tensor:
        f = F.normalize(self.body(x), dim=-1)
        return f if return_features else self.head(f)


def test_cosine_logits_learn_their_temperature_and_the_adapted_head_carries_it() -> None:
    from metactl.heads import LOG_TEMPERATURE

    torch.manual_seed(0)
    model = UnitNormBody().double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    learner = Learner(model, params, {k: torch.tensor(0.1, dtype=torch.float64) for k in params}, "classification")
    algo = ProtoNet(ProtoNetConfig(temperature=5.0), None)
    algo.setup(learner, SetupInfo())
    assert algo.config.cosine is True and float(learner.extra[LOG_TEMPERATURE].detach()) == pytest.approx(np.log(5.0))
    g = torch.Generator().manual_seed(2)
    sx, qx = torch.randn(2, 6, 6, generator=g, dtype=torch.float64), torch.randn(2, 9, 6, generator=g, dtype=torch.float64)
    sy, qy = torch.arange(3).repeat(2).expand(2, -1).clone(), torch.arange(3).repeat(3).expand(2, -1).clone()
    algo.meta_gradient(learner, TaskBatch(sx, sy, qx, qy))

    log_s = torch.tensor(np.log(5.0), dtype=torch.float64, requires_grad=True)  # the same objective, written out here
    losses = []
    for i in range(2):
        f, q = F.normalize(model.body(sx[i]), dim=-1), F.normalize(model.body(qx[i]), dim=-1)
        protos = torch.stack([f[sy[i] == c].mean(0) for c in range(3)])
        cos = torch.stack([torch.stack([(a @ p) / (a.norm() * p.norm()) for p in protos]) for a in q])
        losses.append(F.cross_entropy(log_s.exp() * cos, qy[i]))
    (expected,) = torch.autograd.grad(torch.stack(losses).mean(), [log_s])
    assert abs(float(expected)) > 1e-4
    torch.testing.assert_close(learner.extra[LOG_TEMPERATURE].grad, expected, rtol=1e-9, atol=1e-12)

    phi = algo.adapt(learner, sx[0], sy[0], 0)[0]
    with torch.no_grad():
        direct = algo.task_logits(learner, learner.params, sx[0], sy[0], qx[0])
        torch.testing.assert_close(learner.forward(phi, qx[0]), direct)  # the linear head = s·cos on unit-norm features
        assert float(phi["head.bias"].abs().max()) == 0.0


def test_adaptable_export_adapts_like_metactl_adapt(tmp_path: Path) -> None:
    """The plugin's ``adaptable_head`` hook: the adapt graph's head equals ``metactl adapt``'s (torch), and the
    served model predicts what the torch-adapted model predicts."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    from metactl.adapt import load_adapted
    from metactl.adaptable import export_adaptable
    from metactl.library import adapt
    from metactl.modalities.image import raw_pixels
    from metactl.runtime_adapt import adapt_onnx
    from metactl.testing import make_image_folder, tiny_config
    from metactl.train import meta_train

    data = make_image_folder(tmp_path / "data", classes=8, per_class=5, size=28, ink=0.2, omniglot_layout=True)
    support = make_image_folder(tmp_path / "support", classes=4, per_class=3, size=28, seed=5, ink=0.2)
    run = tmp_path / "run"
    meta_train(tiny_config("protonet", data, ways=3), out=run)
    folder = export_adaptable(run, tmp_path / "adaptable").path
    ref = adapt(support, run, out=tmp_path / "torch", quiet=True)
    got = adapt_onnx(folder, support, tmp_path / "onnx")
    expected = load_file(str(ref.path / "model.safetensors"))
    model = onnx.load(str(got.path / "model.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.abs(init["weight"] - expected["head.weight"]).max() <= 1e-4
    assert np.abs(init["bias"] - expected["head.bias"]).max() <= 1e-4
    pixels = np.stack([raw_pixels(f, 28) for f in sorted(support.rglob("*.png"))]).astype(np.float32)[:, None]
    meta, adapted = load_adapted(ref.path)
    with torch.no_grad():
        reference = adapted.export_module(meta["preprocessing"]).eval()(torch.from_numpy(pixels)).numpy()
    probs = ort.InferenceSession(str(got.path / "model.onnx"), providers=["CPUExecutionProvider"]).run(["probabilities"], {"pixels": pixels})[0]
    assert np.abs(probs - reference).max() <= 1e-4
