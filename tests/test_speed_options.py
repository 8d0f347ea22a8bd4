"""Speed/memory options must not change what is computed: --checkpoint-inner, --precision bf16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from metactl.algorithms.maml import maml_meta_gradient
from metactl.api import Learner, TaskBatch
from metactl.cli import app
from tests.test_maml import tiny_batch, tiny_learner


def _grads(learner: Learner) -> dict[str, torch.Tensor]:
    out = {f"θ {k}": v.grad.clone() for k, v in learner.params.items()}
    out.update({f"α {k}": v.grad.clone() for k, v in learner.inner_lr.items()})
    return out


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_checkpoint_inner_gives_the_same_meta_gradient(kind: str) -> None:
    """README: "the meta-gradient is unchanged (tested to 1e-10)". Second order only: first order never
    checkpoints (test_checkpoint_inner_is_used_by_second_order_steps_only), so comparing it would compare identical code."""
    plain, ckpt = tiny_learner(kind), tiny_learner(kind)
    batch = tiny_batch(kind)
    a = maml_meta_gradient(plain, batch, 3, True)
    b = maml_meta_gradient(ckpt, batch, 3, True, checkpoint_inner=True)
    assert a == pytest.approx(b, rel=1e-12)
    ga, gb = _grads(plain), _grads(ckpt)
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-10, atol=1e-12, msg=name)
    assert any(float(g.abs().sum()) > 0 for g in ga.values())


def test_checkpoint_inner_with_msl_weights() -> None:
    plain, ckpt = tiny_learner("conv"), tiny_learner("conv")
    batch = tiny_batch("conv")
    maml_meta_gradient(plain, batch, 3, True, [0.2, 0.3, 0.5])
    maml_meta_gradient(ckpt, batch, 3, True, [0.2, 0.3, 0.5], checkpoint_inner=True)
    for name, g in _grads(plain).items():
        torch.testing.assert_close(_grads(ckpt)[name], g, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize(("algo", "options", "calls"), [("maml", {}, 3 * 2), ("metasgd", {}, 3 * 2), ("fomaml", {}, 0), ("maml", {"first_order": True}, 0)])
def test_checkpoint_inner_is_used_by_second_order_steps_only(algo: str, options: dict[str, object], calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """--checkpoint-inner reaches the algorithm through TrainConfig and wraps every second-order inner step (3 steps x
    2 tasks) in torch.utils.checkpoint; first-order steps ignore it, as the README documents. A spy counts the calls
    and passes them on to the real checkpoint."""
    import metactl.algorithms.maml as maml_module
    from metactl.config import TrainConfig
    from metactl.registry import load_algorithm, make_config

    real = maml_module.checkpoint
    seen: list[int] = []

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(maml_module, "checkpoint", spy)
    cls = load_algorithm(algo)
    for flag, expected in ((False, 0), (True, calls)):
        seen.clear()
        impl = cls(make_config(cls, options), TrainConfig(algo=algo, inner_steps=3, checkpoint_inner=flag))
        learner = tiny_learner("mlp")
        impl.meta_gradient(learner, tiny_batch("mlp"))
        assert len(seen) == expected, (flag, len(seen))


def _saved_bytes(checkpoint_inner: bool, steps: int) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of a second-order meta-gradient (a
    saved_tensors_hooks pack hook sees every tensor saved outside a checkpointed region)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        maml_meta_gradient(tiny_learner("conv"), tiny_batch("conv"), steps, True, checkpoint_inner=checkpoint_inner)
    return total


def test_checkpoint_inner_keeps_less_for_the_backward_pass() -> None:
    """The flag takes effect on memory (README: "second-order MAML's memory then grows ~4x slower with --inner-steps";
    the README's figure is peak RSS, measured by examples/benchmarks/algorithms.py). Here, on the tiny Conv-4: what
    autograd keeps outside checkpointed regions grows ~480 KB per inner step without the flag, ~2 KB with it."""
    plain = {k: _saved_bytes(False, k) for k in (1, 4)}
    ckpt = {k: _saved_bytes(True, k) for k in (1, 4)}
    assert ckpt[4] < plain[4] / 3, (ckpt, plain)
    assert ckpt[4] - ckpt[1] < (plain[4] - plain[1]) / 10, (ckpt, plain)


def test_bf16_meta_gradient_close_to_fp32() -> None:
    """Autocast bf16 forward passes: outputs float32, the meta-gradient points the same way."""
    from metactl.config import TrainConfig
    from metactl.data import glyphs
    from metactl.data.episodes import ClassificationEpisodes, training_tasks
    from metactl.evaluate import to_batch
    from metactl.train import init_learner

    sampler = ClassificationEpisodes(glyphs.GlyphPool(*glyphs.TRAIN), 5, 1, 5)
    batch = to_batch(training_tasks(sampler, 0, 0, range(4)))
    grads = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(precision=precision, width=16)
        learner = init_learner({"kind": "conv4", "num_classes": 5, "width": 16}, cfg, "classification", "cpu")
        out = learner.forward(learner.params, batch.support_x[0])
        assert out.dtype == torch.float32
        maml_meta_gradient(learner, batch, 1, True)
        grads[precision] = torch.cat([p.grad.flatten() for p in learner.params.values()])
    cos = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert float(cos) > 0.95, float(cos)  # bf16 keeps ~3 significant digits; measured 0.977
    assert not torch.equal(grads["fp32"], grads["bf16"])  # bf16 really ran


def test_meta_train_flags_recorded(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["meta-train", "--steps", "2", "--meta-batch", "2", "--eval-every", "0", "--width", "8", "--query-shots", "2",
            "--threads", "1", "--inner-steps", "2", "--precision", "bf16", "--checkpoint-inner", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "metactl.json").read_text())["config"]
    assert cfg["precision"] == "bf16" and cfg["checkpoint_inner"] is True
    bad = CliRunner().invoke(app, ["meta-train", "--precision", "fp8", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "precision" in bad.output


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd", "anil", "imaml", "reptile"])
def test_task_threads_give_the_per_task_loops_meta_gradient(algo: str) -> None:
    """Splitting the meta-batch over threads (one intra-op thread each) sums the same per-task terms, equal to the
    single-thread loop up to float summation order (hence rtol; bit-identity between threaded runs is
    test_task_threads_are_deterministic_and_add_slices_in_order)."""
    from metactl.config import TrainConfig
    from metactl.data import glyphs
    from metactl.data.episodes import ClassificationEpisodes, training_tasks
    from metactl.evaluate import to_batch
    from metactl.perf import task_parallel_meta_gradient
    from metactl.registry import load_algorithm, make_config
    from metactl.train import init_learner

    torch.manual_seed(0)
    cfg = TrainConfig(algo=algo, inner_steps=2, meta_batch=5, width=8, steps=10)
    cls = load_algorithm(algo)
    impl = cls(make_config(cls, {}), cfg)
    assert getattr(cls, "task_parallel", False)
    batch = to_batch(training_tasks(ClassificationEpisodes(glyphs.GlyphPool(*glyphs.TRAIN), 5, 1, 3), 0, 0, range(5)))
    shape = getattr(impl, "inner_lr_shape", "layer")
    learners = [init_learner({"kind": "conv4", "num_classes": 5, "width": 8}, cfg, "classification", "cpu", shape) for _ in range(2)]
    for a, b in zip(learners[0].parameters(), learners[1].parameters(), strict=True):
        b.data.copy_(a.data)
    for learner in learners:
        for p in learner.parameters():
            p.grad = torch.zeros_like(p)
    m_loop = impl.meta_gradient(learners[0], batch)
    before = torch.get_num_threads()
    m_threads = task_parallel_meta_gradient(impl, learners[1], batch, 2)
    assert m_threads == pytest.approx(m_loop, rel=1e-5)
    grads = [[p.grad for p in learner.parameters()] for learner in learners]
    assert any(float(g.abs().sum()) > 0 for g in grads[0])
    for g_loop, g_threads in zip(*grads, strict=True):
        torch.testing.assert_close(g_threads, g_loop, rtol=1e-4, atol=1e-6)
    assert torch.get_num_threads() == before  # the caller's intra-op setting is restored


def test_task_threads_are_deterministic_and_add_slices_in_order() -> None:
    """README: "the partial meta-gradients are added in a fixed order (deterministic ...)". Three workers (with two,
    a + b == b + a would hide the order): repeated threaded meta-gradients are bit-identical, and equal bit for bit to
    an independent reference — each slice's meta-gradient computed alone with one intra-op thread, then
    Σ_j (|slice_j| / B) · g_j added in slice order."""
    from metactl.config import TrainConfig
    from metactl.data import glyphs
    from metactl.data.episodes import ClassificationEpisodes, training_tasks
    from metactl.evaluate import to_batch
    from metactl.perf import task_parallel_meta_gradient
    from metactl.registry import load_algorithm, make_config
    from metactl.train import init_learner

    cfg = TrainConfig(algo="maml", inner_steps=2, meta_batch=6, width=8, steps=10)
    cls = load_algorithm("maml")
    impl = cls(make_config(cls, {}), cfg)
    batch = to_batch(training_tasks(ClassificationEpisodes(glyphs.GlyphPool(*glyphs.TRAIN), 5, 1, 3), 0, 0, range(6)))

    def fresh() -> Learner:
        learner = init_learner({"kind": "conv4", "num_classes": 5, "width": 8}, cfg, "classification", "cpu")
        for p in learner.parameters():
            p.grad = torch.zeros_like(p)
        return learner

    before = torch.get_num_threads()
    torch.set_num_threads(3)  # 3 workers x 1 intra-op thread, whatever the machine's core count
    try:
        threaded = []
        for _ in range(3):
            learner = fresh()
            task_parallel_meta_gradient(impl, learner, batch, 3)
            threaded.append([p.grad.clone() for p in learner.parameters()])
        torch.set_num_threads(1)
        reference = [torch.zeros_like(p) for p in fresh().parameters()]
        for lo, hi in ((0, 2), (2, 4), (4, 6)):
            part = fresh()
            fields = (batch.support_x, batch.support_y, batch.query_x, batch.query_y, batch.classes)
            impl.meta_gradient(part, TaskBatch(*(t[lo:hi] if t is not None else None for t in fields)))
            for total, p in zip(reference, part.parameters(), strict=True):
                total.add_(p.grad, alpha=(hi - lo) / 6)
    finally:
        torch.set_num_threads(before)
    assert any(float(g.abs().sum()) > 0 for g in reference)
    for run in threaded:
        assert all(torch.equal(a, b) for a, b in zip(run, reference, strict=True))


def _textbook_conv4(model: torch.nn.Module, x: torch.Tensor, ref: int | None, tasks: int) -> torch.Tensor:
    """Conv-4 as the paper writes it: conv, norm, ReLU, then max-pool; NCHW throughout."""
    import torch.nn.functional as F

    for conv, norm in zip(model.convs, model.norms, strict=True):
        x = F.max_pool2d(F.relu(norm(conv(x), ref, tasks)), 2)
    return model.head(x.flatten(1))


@pytest.mark.parametrize(("ref", "tasks"), [(None, 1), (5, 1), (3, 2)])
def test_conv4_fast_layout_computes_the_textbook_network(ref: int | None, tasks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pool-before-ReLU and channels-last activations: same outputs and gradients (incl. second order)."""
    from metactl.models import conv4

    torch.manual_seed(0)
    model = conv4.Conv4(5, width=8)
    x = torch.randn(12, 1, 28, 28)
    results = []
    for fast in (True, False):
        monkeypatch.setattr(conv4, "CHANNELS_LAST", fast)
        out = model(x, ref=ref, tasks=tasks) if fast else _textbook_conv4(model, x, ref, tasks)
        g = torch.autograd.grad(out.square().sum(), list(model.parameters()), create_graph=True)
        gg = torch.autograd.grad(sum(t.square().sum() for t in g), list(model.parameters()))
        results.append((out, g, gg))
    (o1, g1, gg1), (o2, g2, gg2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1 + gg1, g2 + gg2, strict=True):  # float32 convolutions in another order: relative to the norm
        assert float((a - b).detach().norm() / b.detach().norm()) < 1e-4
    monkeypatch.setattr(conv4, "CHANNELS_LAST", True)
    assert conv4._fast_layout(x) is torch.channels_last
    with torch.no_grad():
        assert conv4._fast_layout(x) is None  # inference and export keep NCHW
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv4._fast_layout(x) is None


def test_meta_train_with_task_threads_close_to_one_thread(tmp_path: Path) -> None:
    """Close, not equal: task threads add the slices' partial sums, one thread adds task by task (float reassociation)."""
    from metactl import runs
    from metactl.testing import make_image_folder, tiny_config
    from metactl.train import meta_train

    data = make_image_folder(tmp_path / "data")
    thetas = []
    for n in (1, 2):
        cfg = tiny_config("maml", data, steps=3, meta_batch=4, threads=2, task_threads=n)
        run = meta_train(cfg, tmp_path / f"run{n}").path
        assert runs.read_meta(run)["config"]["task_threads"] == n
        thetas.append(runs.load_tensors(run / runs.THETA))
    for k, v in thetas[0].items():
        torch.testing.assert_close(thetas[1][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_task_workers_auto_and_explicit() -> None:
    from types import SimpleNamespace

    from metactl.perf import task_workers

    per_task, batched = SimpleNamespace(task_parallel=True), SimpleNamespace()
    torch.set_num_threads(2)
    assert task_workers(SimpleNamespace(task_threads=0), per_task, "cpu", 32) == 2
    assert task_workers(SimpleNamespace(task_threads=0), per_task, "cuda", 32) == 1
    assert task_workers(SimpleNamespace(task_threads=0), batched, "cpu", 32) == 1  # e.g. pretrain: not a per-task mean
    assert task_workers(SimpleNamespace(task_threads=1), per_task, "cpu", 32) == 1
    assert task_workers(SimpleNamespace(task_threads=4), per_task, "cpu", 3) == 3
