"""ProtoMAML runs the body once per task when the inner loop adapts the head alone (``--adapt head``, the body
frozen, trained whole by the outer loop, or only its top layers with ``--train-layers``).

The one-pass meta-gradient of every parameter — body, α per layer, the learned log-temperature — and its loss
equal those of a reference written out here as the old code ran it (the body on the support set for the
prototypes, again at every inner step, and on support + query for the logits), on a tiny BERT saved as a
Hugging Face folder and on a small Conv-4; and the body's last layer runs exactly once per task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metactl.algorithms.protomaml import ProtoMAML, ProtoMAMLConfig
from metactl.api import Inputs, Learner, SetupInfo, TaskBatch
from metactl.config import TrainConfig
from metactl.heads import LOG_TEMPERATURE
from metactl.models.text import TextClassifier, _layer_list, text_model_spec
from metactl.train import learner_for_model
from tests.test_maml import tiny_batch, tiny_learner
from tests.test_text_model import LENGTH, make_backbone, token_batch

WAYS = 3
CASES = ["text-frozen", "text-train-body", "text-train-layers", "image-frozen", "image-train-body"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_backbone(tmp_path_factory.mktemp("bert2"), layers=2)


def _perturbed(learner: Learner) -> Learner:
    """θ moved off its initialization and a distinct learned α per adapted head entry (the body's α stays 0, fixed)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in learner.params.values():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    for i, k in enumerate(learner.head):
        learner.inner_lr[k] = torch.tensor(0.4 + 0.15 * i, dtype=torch.float64, requires_grad=True)
    return learner


def _text(backbone: Path, train_body: bool, k: int | None) -> tuple[Learner, TaskBatch]:
    spec = text_model_spec(backbone, WAYS, "head", 0, train_body, LENGTH)
    if k is not None:
        spec["train_layers"] = k
    torch.manual_seed(1)
    model = TextClassifier.from_spec(spec).double()
    learner = _perturbed(learner_for_model(model, TrainConfig(inner_lr=0.5, backbone=str(backbone), adapt="head"), "classification", "cpu"))
    batch = token_batch()
    if k is None:
        return learner, batch

    def hidden(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # the cached lower layers' states, as a --train-layers pool gives them
        t, n = x["input_ids"].shape[:2]
        with torch.no_grad():
            h = model.lower_hidden(x["input_ids"].flatten(0, 1), x["attention_mask"].flatten(0, 1)).view(t, n, LENGTH, -1)
        return {"hidden": h, "attention_mask": x["attention_mask"], "body": torch.full((t, n), model.body_tag())}

    return learner, TaskBatch(hidden(batch.support_x), batch.support_y, hidden(batch.query_x), batch.query_y)  # type: ignore[arg-type]


def _image(train_body: bool) -> tuple[Learner, TaskBatch]:
    """Conv-4 with the inner loop on the head alone: a frozen body, or one the outer loop trains (α fixed at 0)."""
    learner = tiny_learner("conv")
    body = [k for k in learner.params if k not in learner.head]
    if train_body:
        lr = {**learner.inner_lr, **{k: torch.zeros((), dtype=torch.float64) for k in body}}
        learner = learner.replace(inner_lr=lr, outer_only=frozenset(body))
    else:
        frozen = {k: learner.params[k].detach() for k in body}
        learner = learner.replace(params={k: learner.params[k] for k in learner.head}, inner_lr={k: learner.inner_lr[k] for k in learner.head}, frozen=frozen)
    return _perturbed(learner), tiny_batch("conv")


def make_case(case: str, backbone: Path) -> tuple[Learner, TaskBatch]:
    if case == "text-frozen":
        return _text(backbone, False, None)
    if case == "text-train-body":
        return _text(backbone, True, None)
    if case == "text-train-layers":
        return _text(backbone, True, 1)
    return _image(case == "image-train-body")


def _cat(a: Inputs, b: Inputs) -> Inputs:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])  # type: ignore[list-item]
    return {k: torch.cat([a[k], b[k]]) for k in a}  # type: ignore[index]


def reference_meta_gradient(learner: Learner, batch: TaskBatch, steps: int, first_order: bool, cosine: bool) -> float:
    """The old per-task computation, written out: the body on the support set for the prototype head (s·p/‖p‖
    and 0, or 2p and −‖p‖²), once more at each inner step of the head (second order: the inner gradients keep
    their graph; first order: taken at a detached ϕ), and on support + query for the query logits. Adds
    (1/B) ∇ L_query into ``.grad``; returns the mean query loss."""
    head_w, head_b = learner.head
    total = 0.0
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.task(i)
        n = len(sy)
        s = learner.extra[LOG_TEMPERATURE].exp() if LOG_TEMPERATURE in learner.extra else 1.0
        f = learner.features(learner.params, sx, ref=n)
        protos = torch.stack([f[sy == c].mean(0) for c in range(WAYS)])
        if cosine:
            w, b = s * protos / protos.norm(dim=-1, keepdim=True), torch.zeros(WAYS, dtype=f.dtype)
        else:
            w, b = 2 * s * protos, -s * protos.pow(2).sum(-1)
        phi = {**learner.params, head_w: w if w.requires_grad else w.requires_grad_(True), head_b: b if b.requires_grad else b.requires_grad_(True)}
        for _ in range(steps):
            at = {name: v.detach().requires_grad_(name in learner.head) for name, v in phi.items()} if first_order else phi
            support_loss = F.cross_entropy(learner.forward(at, sx), sy)
            grads = torch.autograd.grad(support_loss, [at[h] for h in learner.head], create_graph=not first_order)
            phi = {**phi, **{h: phi[h] - learner.inner_lr[h] * g for h, g in zip(learner.head, grads, strict=True)}}
        loss = F.cross_entropy(learner.forward(phi, _cat(sx, qx), ref=n)[n:], qy)
        (loss / len(batch)).backward()
        total += float(loss.detach()) / len(batch)
    return total


def _grads(learner: Learner) -> dict[str, torch.Tensor | None]:
    out = {f"θ {k}": v.grad for k, v in learner.params.items()}
    out.update({f"α {k}": v.grad for k, v in learner.inner_lr.items() if v.requires_grad})
    out.update({f"extra {k}": v.grad for k, v in learner.extra.items()})
    for p in learner.parameters():
        p.grad = None
    return {k: None if g is None else g.clone() for k, g in out.items()}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("steps", "first_order"), [(0, False), (2, False), (2, True)])
def test_one_pass_meta_gradient_equals_the_three_pass_reference(case: str, steps: int, first_order: bool, backbone: Path) -> None:
    learner, batch = make_case(case, backbone)
    algo = ProtoMAML(ProtoMAMLConfig(first_order=first_order, temperature=3.0), TrainConfig(inner_steps=steps))
    algo.setup(learner, SetupInfo(train_classes=WAYS))
    cosine = bool(algo.config.cosine)
    assert cosine == case.startswith("text") and (LOG_TEMPERATURE in learner.extra) == cosine
    metrics = algo.meta_gradient(learner, batch)
    got = _grads(learner)
    expected_loss = reference_meta_gradient(learner, batch, steps, first_order, cosine)
    expected = _grads(learner)
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5, abs=1e-8)
    assert set(got) == set(expected)
    for name, g in expected.items():
        if g is None:  # the head entries of θ (replaced by the prototype head) and α with no inner step
            assert got[name] is None, name
            continue
        assert got[name] is not None, f"{name}: no meta-gradient"
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-8, msg=name)
    body = [k for k in learner.params if k not in learner.head]
    trained = [name for name in expected if expected[name] is not None]
    assert all(f"θ {k}" in trained for k in body)  # every body entry of θ gets a meta-gradient ...
    assert any(float(expected[f"θ {k}"].abs().max()) > 1e-6 for k in body) or not body  # type: ignore[union-attr]
    if cosine:  # ... so does log s, and α once there is an inner step
        assert abs(float(expected[f"extra {LOG_TEMPERATURE}"])) > 1e-6  # type: ignore[arg-type]
    if steps:
        assert all(abs(float(expected[f"α {k}"])) > 1e-8 for k in learner.head)  # type: ignore[arg-type]


def _last_body_layer(learner: Learner) -> torch.nn.Module:
    model = learner.model
    return _layer_list(model.encoder)[1][-1] if isinstance(model, TextClassifier) else model.convs[-1]


@pytest.mark.parametrize("case", CASES)
def test_the_body_runs_once_per_task(case: str, backbone: Path) -> None:
    learner, batch = make_case(case, backbone)
    calls = []
    hook = _last_body_layer(learner).register_forward_hook(lambda *args: calls.append(1))
    try:
        algo = ProtoMAML(ProtoMAMLConfig(), TrainConfig(inner_steps=3))
        algo.setup(learner, SetupInfo(train_classes=WAYS))
        algo.meta_gradient(learner, batch)
    finally:
        hook.remove()
    assert len(calls) == len(batch)  # the old path: 1 (prototypes) + 3 (inner steps) + 1 (query) per task
