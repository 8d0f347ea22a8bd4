"""The algorithm contract suite, reusable by plugins.

    from metactl.testing import check_algorithm

    def test_contract(tmp_path):
        check_algorithm("myalgo", tmp_path)

It checks, through the public API (each failure is an AssertionError that names the broken promise):
- the class satisfies the contract (``registry.check_contract``);
- ``meta_gradient`` gives finite metrics, fills ``.grad`` and nothing else: θ, α and the
  algorithm's extra parameters are unchanged after the call (the trainer takes the step);
- ``meta_gradient`` accumulates: twice on the same batch without zeroing gives twice the ``.grad``
  of once (the trainer zeroes before each step);
- for a class that declares ``task_parallel``: the meta-batch split over two task workers
  (``metactl.perf.task_parallel_meta_gradient``, the trainer's path) gives the one-worker
  meta-gradient and metrics;
- one optimizer step on that gradient changes θ;
- ``adapt`` is pure (θ, α, extra parameters, their ``.grad`` and the model's state unchanged;
  repeated calls give identical, detached weights) and lowers the support loss;
- training is reproducible from the seed;
- a run dir round-trips through ``adapt`` and ``export --onnx``: a plain onnxruntime session fed
  real images gives the probabilities of a torch model rebuilt here from the adapted folder
  (``model.safetensors`` and its ``metactl.json``), within 1e-4, with the labels in the
  support folder's order.

``register_plugin`` makes entry points real for a test (a ``.dist-info`` folder on ``sys.path``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from metactl.adapt import adapt
from metactl.api import SetupInfo, TaskBatch
from metactl.config import TrainConfig
from metactl.data import open_data
from metactl.data.episodes import training_tasks
from metactl.data.tensors import to_batch
from metactl.export import export
from metactl.models import ModelBase, build_model
from metactl.perf import task_parallel_meta_gradient
from metactl.registry import check_contract, check_instance, load_algorithm, make_config
from metactl.train import init_learner, learner_for_model, make_optimizer, meta_train

ONNX_TOLERANCE = 1e-4  # README: the exported model matches torch to 1e-4


def make_image_folder(
    root: Path, classes: int = 6, per_class: int = 6, size: int = 20, seed: int = 0, ink: float = 0.25, omniglot_layout: bool = False
) -> Path:
    """A tiny class-per-folder tree of PNGs (dark ink on white). ``omniglot_layout`` nests the
    classes as ``alphabetA/characterNN/XXXX_YY.png`` like Omniglot's zips; otherwise ``classNN/YY.png``."""

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"alphabet{c % 2}" / f"character{c:02d}" if omniglot_layout else root / f"class{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.random((size, size)) > 1 - ink
        for i in range(per_class):
            noisy = base ^ (rng.random((size, size)) > 0.95)
            name = f"{c:04d}_{i:02d}.png" if omniglot_layout else f"{i:02d}.png"
            Image.fromarray(np.where(noisy, 0, 255).astype(np.uint8)).save(d / name)
    return root


def tiny_config(algo: str, data: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        algo=algo, data=str(data), ways=3, shots=1, query_shots=2, inner_steps=2, test_inner_steps=2, inner_lr=0.1,
        meta_batch=2, steps=3, width=8, eval_every=0, eval_episodes=2, checkpoint_every=2, threads=1, val_classes=0.3,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def register_plugin(root: Path, entry_points: dict[str, str], distribution: str = "metactl-test-plugins", group: str = "metactl.algorithms") -> Path:
    """Write ``root/<distribution>-0.0.dist-info`` declaring ``entry_points`` (name -> "module:attr")
    in ``group`` (``metactl.algorithms``, ``metactl.models`` or ``metactl.data``), and return ``root``:
    put it on ``sys.path`` (e.g. ``monkeypatch.syspath_prepend(root)``) and importlib.metadata finds it
    like an installed package. Models and sources are looked up once per process: call
    ``metactl.models.refresh()`` / ``metactl.data.refresh()`` after adding one."""
    dist = root / f"{distribution.replace('-', '_')}-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.0\n", encoding="utf-8")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[{group}]\n{lines}", encoding="utf-8")
    return root


def _snapshot(learner: Any, model: bool = False, grads: bool = False) -> dict[str, Any]:
    """Copies of θ, α, the extra parameters (and the model's state_dict, and every .grad)."""
    groups = {"θ": learner.params, "α": learner.inner_lr, "extra": learner.extra}
    out = {f"{g} {k}": v.detach().clone() for g, tensors in groups.items() for k, v in tensors.items()}
    if model:
        out.update({f"model state {k}": v.detach().clone() for k, v in learner.model.state_dict().items()})
    if grads:
        out.update({f".grad of {g} {k}": None if v.grad is None else v.grad.detach().clone() for g, tensors in groups.items() for k, v in tensors.items()})
    return out


def _changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    def same(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all())  # NaN counts as a change

    return sorted(k for k in before.keys() | after.keys() if k not in before or k not in after or not same(before[k], after[k]))


def _grads(learner: Any) -> list[Any]:
    """A copy of every ``.grad`` of ``learner.parameters()`` (zeros where there is none)."""

    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in learner.parameters()]


def _parameter_names(learner: Any) -> list[str]:
    """Names in ``learner.parameters()`` order: θ, the learned α, the extra parameters."""
    return [f"θ {k}" for k in learner.params] + [f"α {k}" for k, a in learner.inner_lr.items() if a.requires_grad] + [f"extra {k}" for k in learner.extra]


def _differ(got: list[Any], want: list[Any], names: list[str], rtol: float) -> list[str]:
    """Tensors whose difference exceeds ``rtol`` of their own norm plus ``rtol``/10 of the whole gradient's
    (a sum of per-task terms that nearly cancel keeps only the rounding of the terms, not of the sum)."""
    total = math.sqrt(sum(float(w.double().norm()) ** 2 for w in want))
    out = []
    for name, g, w in zip(names, got, want, strict=True):
        err, size = float((g.double() - w.double()).norm()), float(w.double().norm())
        if not err <= rtol * size + rtol / 10 * total:
            out.append(f"{name} (|got| {float(g.double().norm()):.4g}, |expected| {size:.4g})")
    return out if len(out) <= 3 else [*out[:3], f"{len(out) - 3} more"]


def _check_meta_gradient(algo: Any, learner: Any, batch: Any) -> tuple[list[Any], dict[str, float]]:
    """One call from empty .grad: finite metrics, only .grad set; a second call accumulates.
    Returns the first call's .grad and metrics."""
    names = _parameter_names(learner)
    for p in learner.parameters():
        p.grad = None
    before = _snapshot(learner)
    metrics = algo.meta_gradient(learner, batch)
    assert set(metrics) >= {"loss", "metric"} and all(math.isfinite(v) for v in metrics.values()), f"meta_gradient metrics: {metrics}"
    changed = _changed(before, _snapshot(learner))
    assert not changed, f"meta_gradient changed {', '.join(changed)}: it must only fill .grad (the trainer takes the optimizer step)"
    for name, p in zip(names, learner.parameters(), strict=True):
        assert p.grad is None or (p.grad.shape == p.shape and p.grad.dtype == p.dtype), f"meta_gradient set a .grad of the wrong shape or dtype on {name}"
    once = _grads(learner)
    if type(algo).meta_learns:
        assert any(float(g.abs().sum()) > 0 for g in once), "meta_gradient left every .grad empty or zero"
    else:
        assert all(float(g.abs().sum()) == 0 for g in once), "meta_learns = False, but meta_gradient added a gradient"
    algo.meta_gradient(learner, batch)  # no zeroing in between: .grad must now hold twice the first call's
    wrong = _differ(_grads(learner), [2 * g for g in once], names, 1e-5)  # measured ≤ 1.2e-7
    assert not wrong, (
        "meta_gradient must accumulate into .grad (add to p.grad, do not assign it): twice on one batch without zeroing "
        f"did not give twice the .grad of once for {', '.join(wrong)}"
    )
    return once, metrics


def _check_task_parallel(algo: Any, learner: Any, batch: Any, once: list[Any], metrics: dict[str, float]) -> None:
    """The trainer's task-parallel path with two workers gives the one-worker meta-gradient (same θ)."""

    for p in learner.parameters():
        p.grad = None
    split = task_parallel_meta_gradient(algo, learner, batch, 2)
    for key in ("loss", "metric"):
        assert math.isclose(split[key], metrics[key], rel_tol=1e-5, abs_tol=1e-7), (
            f"task_parallel: metric {key!r} over 2 task workers is {split[key]!r}, over one {metrics[key]!r}"
        )
    # float32 sums in another order (and other intra-op thread counts): measured ≤ 1.2e-5 of a tensor's norm
    wrong = _differ(_grads(learner), once, _parameter_names(learner), 1e-4)
    assert not wrong, (
        f"task_parallel: the meta-gradient over 2 task workers differs from one worker's for {', '.join(wrong)}; "
        "a class that declares task_parallel must compute a mean over independent tasks"
    )


def _check_adapt(algo: Any, learner: Any, sx: Any, sy: Any, steps: int) -> None:

    before = _snapshot(learner, model=True, grads=True)
    first = algo.adapt(learner, sx, sy, steps)
    changed = _changed(before, _snapshot(learner, model=True, grads=True))
    assert not changed, f"adapt is not pure: it changed {', '.join(changed)}"
    assert len(first) == steps + 1, "adapt must return the weights after 0..steps steps"
    assert all(not v.requires_grad for w in first for v in w.values()), "adapt must return detached weights"
    again = algo.adapt(learner, sx, sy, steps)
    assert len(again) == len(first) and all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(first, again, strict=True)), (
        "adapt is not pure: a repeated call on the same support set gave different weights"
    )
    with torch.no_grad():
        start = float(learner.loss(learner.forward(learner.params, sx), sy))
        end = float(learner.loss(learner.forward(first[-1], sx), sy))
    assert end < start, f"adaptation did not lower the support loss ({start:.4f} -> {end:.4f})"


def _reference_probabilities(adapted: Path, pixels: np.ndarray) -> np.ndarray:
    """What the adapted folder promises, computed here: the model rebuilt from its ``metactl.json``
    with ``model.safetensors`` (normalisation statistics frozen), pixels / 255, inverted if the
    preprocessing says so, softmax. Not export's own parity code."""

    meta = json.loads((adapted / "metactl.json").read_text(encoding="utf-8"))
    tensors = load_file(adapted / "model.safetensors")
    model = build_model(meta["model"])
    model.prepare_deployment()  # room for the frozen normalisation statistics
    model.load_state_dict(tensors, strict=True)
    x = torch.from_numpy(pixels.astype(np.float32)) / 255.0
    if meta["preprocessing"].get("invert"):
        x = 1.0 - x
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=-1).numpy()


def _raw_pixels(files: list[Path], size: int) -> np.ndarray:
    """Image files as a client sends them: grayscale, resized, not inverted, values 0-255, (n, 1, size, size)."""

    return np.stack([np.asarray(Image.open(f).convert("L").resize((size, size), Image.Resampling.LANCZOS)) for f in files])[:, None].astype(np.float32)


def _check_onnx(export_dir: Path, adapted: Path, support: Path, others: Path) -> None:

    meta = json.loads((adapted / "metactl.json").read_text(encoding="utf-8"))
    folders = sorted((d for d in support.iterdir() if d.is_dir()), key=lambda d: d.name)
    labels = [d.name for d in folders]
    assert meta["labels"] == labels, f"adapt: labels {meta['labels']} are not the support folder's, in code-point order {labels}"
    sess = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_labels = json.loads(sess.get_modelmeta().custom_metadata_map["labels"])
    assert onnx_labels == labels, f"export: the ONNX file's labels {onnx_labels} are not the adapted model's {labels} (output column order)"
    exported = json.loads((export_dir / "metactl.json").read_text(encoding="utf-8"))
    assert exported["labels"] == labels, f"export: metactl.json labels {exported['labels']} are not the adapted model's {labels}"
    files = [f for d in folders for f in sorted(d.iterdir())] + sorted(others.rglob("*.png"))[::3]
    pixels = _raw_pixels(files, int(meta["preprocessing"]["size"]))
    got = sess.run(["probabilities"], {"pixels": pixels})[0]
    want = _reference_probabilities(adapted, pixels)
    assert got.shape == want.shape == (len(files), len(labels)), f"ONNX output shape {got.shape}, expected {(len(files), len(labels))}"
    diff = float(np.abs(got - want).max())
    assert diff <= ONNX_TOLERANCE, f"ONNX probabilities differ from the adapted torch model by {diff:.2e} (> {ONNX_TOLERANCE:g}) on real images"


class TokenBag:
    """A tiny text-shaped model for the contract suite: token ids and an attention mask (a dict of
    two tensors per example) -> mean of the embeddings of the unmasked tokens -> tanh layer -> head.
    It shows an algorithm never assumes an example is one tensor (nor an image)."""

    VOCAB, LENGTH, DIM = 40, 6, 8

    @classmethod
    def model(cls, num_classes: int) -> Any:

        class _TokenBag(ModelBase):
            def __init__(self) -> None:
                super().__init__()
                self.embed = nn.Embedding(cls.VOCAB, cls.DIM)
                self.body = nn.Linear(cls.DIM, cls.DIM)
                self.head = nn.Linear(cls.DIM, num_classes)

            def forward(self, x: dict[str, Any], ref: int | None = None, tasks: int = 1, return_features: bool = False) -> Any:
                mask = x["attention_mask"].to(self.embed.weight.dtype)[..., None]
                pooled = (self.embed(x["input_ids"]) * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)
                f = torch.tanh(self.body(pooled))
                return f if return_features else self.head(f)

        return _TokenBag()

    @classmethod
    def batch(cls, tasks: int, ways: int, shots: int, queries: int, seed: int = 0) -> Any:
        """Each class prefers its own few tokens; padded to LENGTH with a random number of real tokens."""

        g = torch.Generator().manual_seed(seed)

        def examples(classes: Any, per_class: int) -> tuple[dict[str, Any], Any]:
            y = torch.arange(ways).repeat_interleave(per_class)
            own = classes[y][:, None] * 4 + torch.randint(0, 4, (len(y), cls.LENGTH), generator=g)
            noise = torch.randint(0, cls.VOCAB, (len(y), cls.LENGTH), generator=g)
            ids = torch.where(torch.rand(len(y), cls.LENGTH, generator=g) < 0.7, own % cls.VOCAB, noise)
            lengths = torch.randint(2, cls.LENGTH + 1, (len(y), 1), generator=g)
            mask = (torch.arange(cls.LENGTH)[None, :] < lengths).long()
            return {"input_ids": ids * mask, "attention_mask": mask}, y

        parts = []
        for _ in range(tasks):
            classes = torch.randperm(cls.VOCAB // 4, generator=g)[:ways]
            (sx, sy), (qx, qy) = examples(classes, shots), examples(classes, queries)
            parts.append((sx, sy, qx, qy, classes))

        def stack(i: int) -> Any:
            if isinstance(parts[0][i], dict):
                return {k: torch.stack([p[i][k] for p in parts]) for k in parts[0][i]}
            return torch.stack([p[i] for p in parts])

        return TaskBatch(stack(0), stack(1), stack(2), stack(3), stack(4))


def _check_token_task(algo: Any, cfg: Any) -> None:
    """meta_gradient, the task-parallel path and adapt on TokenBag's dict-of-tensors examples."""

    batch = TokenBag.batch(tasks=cfg.meta_batch, ways=cfg.ways, shots=2, queries=2)

    def learner() -> Any:
        torch.manual_seed(cfg.seed)
        made = learner_for_model(TokenBag.model(cfg.ways), cfg, "classification", "cpu", algo.inner_lr_shape)
        algo.setup(made, SetupInfo(train_classes=TokenBag.VOCAB // 4))
        return made

    main = learner()
    once, metrics = _check_meta_gradient(algo, main, batch)
    if type(algo).task_parallel:
        _check_task_parallel(algo, learner(), batch, once, metrics)
    sx, sy, _, _ = batch.task(0)
    _check_adapt(algo, main, sx, sy, 3)


def check_algorithm(name: str, tmp: Path, **config: Any) -> None:
    """Run the contract suite on the algorithm registered as ``name`` (``config``: TrainConfig overrides).

    Every member of :class:`metactl.api.Algorithm` is checked: declared (a missing one is named),
    and then what each promises, on images (Conv-4, end to end through meta-train, adapt and export)
    and on text-shaped examples (a dict of token ids and attention mask per example)."""

    cls = load_algorithm(name)  # a MetactlError naming every missing class member
    assert check_contract(cls) == [], check_contract(cls)
    data_dir = make_image_folder(tmp / "data")
    cfg = tiny_config(name, data_dir, **config)
    algo = cls(make_config(cls, cfg.algo_options), cfg)
    missing = check_instance(algo)
    assert not missing, f"{name} breaks the plugin contract: {'; '.join(missing)}"
    data = open_data(cfg)
    batch = to_batch(training_tasks(data.train, cfg.seed, 0, range(cfg.meta_batch)))

    def learner() -> Any:  # the trainer's set-up: θ and α from the seed, then the algorithm's setup hook
        made = init_learner(data.model_spec, cfg, data.kind, "cpu", algo.inner_lr_shape)
        algo.setup(made, SetupInfo(train_classes=data.train.pool.num_classes))  # type: ignore[attr-defined]
        return made

    # meta_gradient fills .grad only and accumulates; with task workers it gives the same mean
    main = learner()
    once, metrics = _check_meta_gradient(algo, main, batch)
    if cls.task_parallel:
        _check_task_parallel(algo, learner(), batch, once, metrics)

    # one optimizer step on that meta-gradient changes θ
    opt = make_optimizer(algo, main, cfg)
    for p, g in zip(main.parameters(), once, strict=True):
        p.grad = g
    before = {k: v.detach().clone() for k, v in main.params.items()}
    opt.step()
    if cls.meta_learns:
        assert any(not torch.equal(before[k], v) for k, v in main.params.items()), "a meta-step did not change θ"

    # adapt is pure and lowers the support loss
    sx, sy, _, _ = batch.task(0)
    _check_adapt(algo, main, sx, sy, 3)

    # the same on examples that are not one tensor (nor images)
    _check_token_task(algo, cfg)

    # begin_step is called with the step and the total, and the algorithm's schedule may read it
    algo.begin_step(0, cfg.steps)

    # reproducible from the seed, and the run dir round-trips through adapt and export
    a = meta_train(cfg, out=tmp / "a")
    b = meta_train(cfg, out=tmp / "b")
    ta, tb = load_file(a.path / "theta.safetensors"), load_file(b.path / "theta.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), "same seed, different θ"
    support = make_image_folder(tmp / "support", classes=3, per_class=2, seed=5)
    adapt(support, a.path, None, None, tmp / "adapted")
    export(tmp / "adapted", tmp / "export")
    _check_onnx(tmp / "export", tmp / "adapted", support, data_dir)
