"""The text classifier on a pretrained encoder (``metactl.models.text``), on a tiny randomly
initialised BERT saved as a Hugging Face folder in the test: MAML's meta-gradient through the head
alone and through LoRA adapters matches finite differences (float64), first order is the query
gradient at ϕ, the frozen body never moves, merged LoRA equals the unmerged model, and a changed
weights file is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from metactl.algorithms.maml import maml_meta_gradient
from metactl.api import Learner, TaskBatch
from metactl.config import TrainConfig
from metactl.errors import MetactlError
from metactl.models.text import TextClassifier, describe_backbone, text_model_spec
from metactl.train import learner_for_model
from tests.conftest import central_difference, meta_objective

VOCAB, LENGTH = 40, 7


def make_backbone(root: Path, hidden: int = 8, layers: int = 1, normalize: bool = True, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=16
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(root, safe_serialization=True)
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}))
    modules = [
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (root / "modules.json").write_text(json.dumps(modules))
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_backbone(tmp_path_factory.mktemp("bert"))


def text_learner(backbone: Path, adapt: str, rank: int = 2, ways: int = 3) -> Learner:
    spec = text_model_spec(backbone, ways, adapt, rank, False, LENGTH)
    torch.manual_seed(1)
    model = TextClassifier.from_spec(spec).double()
    cfg = TrainConfig(inner_lr=0.5, backbone=str(backbone), adapt=adapt)
    learner = learner_for_model(model, cfg, "classification", "cpu")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # away from peft's zero-initialised B, so every term of the gradient shows
        for _k, p in learner.params.items():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    learner.inner_lr = {k: torch.tensor(0.4 + 0.05 * i, dtype=torch.float64, requires_grad=True) for i, k in enumerate(learner.params)}
    return learner


def token_batch(tasks: int = 2, ways: int = 3, shots: int = 2, queries: int = 2) -> TaskBatch:
    g = torch.Generator().manual_seed(3)

    def part(n: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1, VOCAB, (tasks, n, LENGTH), generator=g)
        lengths = torch.randint(2, LENGTH + 1, (tasks, n, 1), generator=g)
        mask = (torch.arange(LENGTH) < lengths).long()
        return {"input_ids": ids * mask, "attention_mask": mask}

    labels = lambda k: torch.arange(ways).repeat_interleave(k).expand(tasks, -1).clone()  # noqa: E731
    return TaskBatch(part(ways * shots), labels(shots), part(ways * queries), labels(queries))


def check_finite_differences(learner: Learner, batch: TaskBatch, steps: int, coordinates: int = 3, eps: float = 1e-6) -> int:
    """Compare .grad with central differences at a few coordinates of every θ and α tensor; returns how many."""
    g = torch.Generator().manual_seed(4)
    checked = 0
    for group in (learner.params, learner.inner_lr):
        for name, t in group.items():
            flat, grad = t.data.view(-1), t.grad.view(-1)
            for j in torch.randperm(flat.numel(), generator=g)[:coordinates].tolist():
                fd = central_difference(lambda: meta_objective(learner, batch, steps), flat, j, eps)
                assert abs(float(grad[j]) - fd) <= 1e-6 + 1e-5 * abs(fd), f"{name}[{j}]: autograd {float(grad[j]):.8g}, finite differences {fd:.8g}"
                checked += 1
    return checked


def test_the_folder_says_mean_pooling_and_normalize(backbone: Path) -> None:
    info = describe_backbone(backbone)
    assert info["pooling"] == "mean" and info["normalize"] is True and info["hidden"] == 8


@pytest.mark.parametrize("steps", [1, 2])
def test_head_meta_gradient_matches_finite_differences(backbone: Path, steps: int) -> None:
    learner = text_learner(backbone, "head")
    assert set(learner.params) == {"head.weight", "head.bias"} and learner.frozen
    batch = token_batch()
    maml_meta_gradient(learner, batch, steps, second_order=True)
    assert check_finite_differences(learner, batch, steps) == 2 * 3 + 2  # 3 coordinates of each θ tensor, every (scalar) α


def test_lora_meta_gradient_matches_finite_differences(backbone: Path) -> None:
    learner = text_learner(backbone, "lora")
    lora = [k for k in learner.params if "lora_" in k]
    assert len(lora) == 2 * 6 and set(learner.params) == {*lora, "head.weight", "head.bias"}  # query, key, value, 3 dense × (A, B)
    assert not set(learner.frozen) & set(learner.params) and all("lora_" not in k for k in learner.frozen)
    batch = token_batch()
    maml_meta_gradient(learner, batch, 1, second_order=True)
    assert check_finite_differences(learner, batch, 1, coordinates=2) == 14 * 2 + 14  # 2 coordinates of each θ tensor, every α


def test_lora_first_order_gradient_is_the_query_gradient_at_phi(backbone: Path) -> None:
    learner, batch = text_learner(backbone, "lora"), token_batch()
    maml_meta_gradient(learner, batch, 1, second_order=False)
    expected = {k: torch.zeros_like(v) for k, v in learner.params.items()}
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.task(i)
        theta = {k: v.detach().requires_grad_(True) for k, v in learner.params.items()}
        gs = torch.autograd.grad(learner.loss(learner.forward(theta, sx), sy), list(theta.values()))
        phi = {k: (v - learner.inner_lr[k].detach() * g).detach().requires_grad_(True) for (k, v), g in zip(theta.items(), gs, strict=True)}
        gq = torch.autograd.grad(learner.loss(learner.predict_query(phi, sx, qx), qy), list(phi.values()))
        for k, g in zip(phi, gq, strict=True):
            expected[k] += g / len(batch)
    for k, p in learner.params.items():
        torch.testing.assert_close(p.grad, expected[k], rtol=1e-10, atol=1e-12, msg=k)


def test_merged_lora_equals_the_unmerged_model(backbone: Path) -> None:
    learner = text_learner(backbone, "lora")
    model = learner.model
    with torch.no_grad():
        for k, v in model.named_parameters():
            if k in learner.params:
                v.copy_(learner.params[k])
    x = {k: v[0] for k, v in token_batch().support_x.items()}
    exported = model.export_module({"kind": "text"}).double()
    assert not any("lora_" in k for k, _ in exported.named_parameters()), "LoRA is merged into the body's weights"
    with torch.no_grad():
        logits, probs = exported(x["input_ids"], x["attention_mask"])
        torch.testing.assert_close(logits, model(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(probs, torch.softmax(logits, -1))


def test_a_changed_weights_file_is_refused(tmp_path: Path) -> None:
    folder = make_backbone(tmp_path / "bert")
    spec = text_model_spec(folder, 3, "head", 2, False, LENGTH)
    make_backbone(tmp_path / "other", seed=5)
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(MetactlError, match="is not the file this was trained on"):
        TextClassifier.from_spec(spec)


def test_what_a_head_run_stores_does_not_grow_with_the_body(tmp_path: Path) -> None:
    """θ (what the run dir, checkpoints and the optimizer hold) is the head whatever the body's depth; the body is frozen."""
    small, deep = make_backbone(tmp_path / "small", layers=1), make_backbone(tmp_path / "deep", layers=4)
    learners = [text_learner(b, "head") for b in (small, deep)]
    sizes = [sum(p.numel() for p in lrn.params.values()) for lrn in learners]
    frozen = [sum(p.numel() for p in lrn.frozen.values()) for lrn in learners]
    assert sizes[0] == sizes[1] == 8 * 3 + 3
    assert frozen[1] > 2 * frozen[0]
