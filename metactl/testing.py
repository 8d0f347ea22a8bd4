"""The algorithm contract suite, reusable by plugins.

    from metactl.testing import check_algorithm

    def test_contract(tmp_path):
        check_algorithm("myalgo", tmp_path)

It checks, through the public API: the class satisfies the contract; a meta-step gives finite
metrics and changes θ; adaptation lowers the support loss; training is reproducible from the seed;
and a run dir round-trips through ``adapt`` and ``export --onnx`` into a working ONNX model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def make_image_folder(
    root: Path, classes: int = 6, per_class: int = 6, size: int = 20, seed: int = 0, ink: float = 0.25, omniglot_layout: bool = False
) -> Path:
    """A tiny class-per-folder tree of PNGs (dark ink on white). ``omniglot_layout`` nests the
    classes as ``alphabetA/characterNN/XXXX_YY.png`` like Omniglot's zips; otherwise ``classNN/YY.png``."""
    from PIL import Image

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
    from metactl.config import TrainConfig

    values: dict[str, Any] = dict(
        algo=algo, data=str(data), ways=3, shots=1, query_shots=2, inner_steps=2, test_inner_steps=2, inner_lr=0.1,
        meta_batch=2, steps=3, width=8, eval_every=0, eval_episodes=2, checkpoint_every=2, threads=1, val_classes=0.3,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def check_algorithm(name: str, tmp: Path, **config: Any) -> None:
    import torch
    from safetensors.torch import load_file

    from metactl.adapt import adapt
    from metactl.api import SetupInfo
    from metactl.data import open_data
    from metactl.data.episodes import training_tasks
    from metactl.evaluate import to_batch
    from metactl.export import export
    from metactl.registry import check_contract, load_algorithm, make_config
    from metactl.train import init_learner, make_optimizer, meta_train

    cls = load_algorithm(name)
    assert check_contract(cls) == [], check_contract(cls)
    data_dir = make_image_folder(tmp / "data")
    cfg = tiny_config(name, data_dir, **config)
    algo = cls(make_config(cls, cfg.algo_options), cfg)

    # a meta-step gives finite metrics and changes θ
    data = open_data(cfg)
    learner = init_learner(data.model_spec, cfg, data.kind, "cpu", algo.inner_lr_shape)
    algo.setup(learner, SetupInfo(train_classes=data.train.pool.num_classes))  # type: ignore[attr-defined]
    opt = make_optimizer(algo, learner, cfg)
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    batch = to_batch(training_tasks(data.train, cfg.seed, 0, range(cfg.meta_batch)))
    opt.zero_grad()
    metrics = algo.meta_gradient(learner, batch)
    assert set(metrics) >= {"loss", "metric"} and all(math.isfinite(v) for v in metrics.values()), metrics
    opt.step()
    assert any(not torch.equal(before[k], v) for k, v in learner.params.items()), "a meta-step did not change θ"

    # adaptation lowers the support loss
    sx, sy = batch.support_x[0], batch.support_y[0]
    trajectory = algo.adapt(learner, sx, sy, 3)
    assert len(trajectory) == 4, "adapt must return the weights after 0..steps steps"
    with torch.no_grad():
        start = float(learner.loss(learner.forward(learner.params, sx), sy))
        end = float(learner.loss(learner.forward(trajectory[-1], sx), sy))
    assert end < start, f"adaptation did not lower the support loss ({start:.4f} -> {end:.4f})"

    # reproducible from the seed, and the run dir round-trips through adapt and export
    a = meta_train(cfg, out=tmp / "a")
    b = meta_train(cfg, out=tmp / "b")
    ta, tb = load_file(a.run_dir / "theta.safetensors"), load_file(b.run_dir / "theta.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), "same seed, different θ"
    support = make_image_folder(tmp / "support", classes=3, per_class=2, seed=5)
    adapt(support, a.run_dir, None, None, tmp / "adapted")
    result = export(tmp / "adapted", tmp / "export")
    assert result.max_abs_diff <= 1e-4

    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp / "export" / "model.onnx"))
    probs = sess.run(["probabilities"], {"pixels": np.zeros((2, 1, 28, 28), np.float32)})[0]
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
