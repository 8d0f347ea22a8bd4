"""The probe's C is chosen on the run's validation classes (never its test classes), recorded in the run,
and used by whatever rebuilds the run's algorithm (adapt, evaluate, export); a given ``c`` skips the choice.

A synthetic task source gives feature vectors directly (a model whose body is the identity under a
linear head), so the choice can be recomputed here with :func:`fit_logistic` alone; its test classes
raise when anything reads them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from metactl import data as data_registry
from metactl import models
from metactl.algorithms.probe import FALLBACK_C, fit_logistic, validation_picks
from metactl.config import TrainConfig
from metactl.data.episodes import ClassificationEpisodes
from metactl.data.sources import TaskData
from metactl.evaluate import algorithm_of_run
from metactl.models import ModelBase
from metactl.runs import load_run, read_meta
from metactl.testing import register_plugin
from metactl.train import Reporter, meta_train

DIM, PER_CLASS = 24, 30
GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def class_features(first: int, count: int) -> list[np.ndarray]:
    """Classes ``first..first+count-1``: unit-norm features around a class mean close to the others' (so C matters)."""
    out = []
    for c in range(first, first + count):
        g = np.random.default_rng([7, c])
        mean = g.normal(size=DIM) * 0.35 + np.eye(DIM)[c % DIM]
        x = mean + g.normal(size=(PER_CLASS, DIM)) * np.linspace(0.05, 1.5, DIM)  # anisotropic noise: a centroid-like head is not best
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return out


class FeaturePool:
    """A class pool of feature vectors (examples are ``{"features": (n, D)}``)."""

    unit: ClassVar[str] = "vectors"

    def __init__(self, feats: list[np.ndarray]) -> None:
        self.feats = feats

    @property
    def num_classes(self) -> int:
        return len(self.feats)

    def count(self, c: int) -> int:
        return len(self.feats[c])

    def take(self, picks: list[tuple[int, np.ndarray]]) -> dict[str, np.ndarray]:
        return {"features": np.concatenate([self.feats[c][idx] for c, idx in picks])}

    def precompute(self, fn: Any, batch_size: int = 256, progress: Any = None) -> None:
        del fn, batch_size, progress

    def names(self) -> list[str]:
        return [f"class-{c}" for c in range(self.num_classes)]


TRAIN, VAL = (0, 12), (12, 8)  # (first class, classes)


class Vectors:
    """``vectors:ANY``: 12 training classes, 8 validation classes; the test classes are off limits."""

    name: ClassVar[str] = "vectors"
    takes_argument: ClassVar[bool] = True

    def open(self, cfg: Any, arg: str | None, progress: Any) -> TaskData:
        train, val = (FeaturePool(class_features(*r)) for r in (TRAIN, VAL))
        return TaskData(
            kind="classification",
            spec={"kind": "vectors"},
            train=ClassificationEpisodes(train, cfg.ways, cfg.shots, cfg.query_shots),
            val=ClassificationEpisodes(val, cfg.ways, cfg.shots, cfg.query_shots, "validation"),
            model_spec={"kind": "vector-linear", "dim": DIM, "num_classes": cfg.ways},
        )

    def held_out(self, *args: Any) -> Any:
        raise AssertionError("the test classes were read")

    def all_classes(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the test classes were read")


class VectorLinear(ModelBase):
    """The identity body under a linear head."""

    def __init__(self, dim: int, ways: int) -> None:
        super().__init__()
        self.head = nn.Linear(dim, ways)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> VectorLinear:
        return cls(int(spec["dim"]), int(spec["num_classes"]))

    def forward(self, x: Any, ref: int | None = None, tasks: int = 1, return_features: bool = False) -> torch.Tensor:
        f = x["features"]
        return f if return_features else self.head(f)

    def adapts_head_only(self) -> bool:
        return True


@pytest.fixture
def vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for group, name, obj in (("metactl.data", "vectors", "Vectors"), ("metactl.models", "vector-linear", "VectorLinear")):
        site = register_plugin(tmp_path / f"site-{name}", {name: f"{__name__}:{obj}"}, f"metactl-probe-{name}", group=group)
        monkeypatch.syspath_prepend(str(site))
    models.refresh()
    data_registry.refresh()
    yield
    models.refresh()
    data_registry.refresh()


def train_probe(out: Path, **options: Any) -> Path:
    cfg = TrainConfig(
        algo="probe", data="vectors:x", ways=3, shots=5, query_shots=5, meta_batch=1, steps=1, eval_every=0, eval_episodes=2,
        test_inner_steps=1, threads=1, algo_options={"c_grid": list(GRID), **options},
    )  # fmt: skip
    return meta_train(cfg, out=out).path


def independent_accuracies(shots: int, seed: int, draws: int, max_iter: int) -> dict[float, float]:
    """Each C's mean query accuracy on the validation classes, every class at once, fitted here."""
    feats = class_features(*VAL)
    acc = dict.fromkeys(GRID, 0.0)
    for d in range(draws):
        picks = validation_picks([len(f) for f in feats], shots, seed, d)
        s = torch.from_numpy(np.concatenate([f[p] for f, p in zip(feats, picks, strict=True)]))
        sy = torch.cat([torch.full((shots,), i) for i in range(len(feats))])
        rest = [np.setdiff1d(np.arange(len(f)), p) for f, p in zip(feats, picks, strict=True)]
        q = torch.from_numpy(np.concatenate([f[r] for f, r in zip(feats, rest, strict=True)])).double()
        qy = torch.cat([torch.full((len(r),), i) for i, r in enumerate(rest)])
        for c in GRID:
            w, b = fit_logistic(s, sy, len(feats), c, max_iter)
            acc[c] += float(((q @ w.T + b).argmax(1) == qy).double().mean()) / draws
    return acc


def test_c_is_chosen_on_validation_and_recorded(vectors: None, tmp_path: Path) -> None:
    # (the source's held_out / all_classes raise: the whole run never reads a test class)
    meta = read_meta(train_probe(tmp_path / "run"))
    selection, config = meta["algorithm"]["selection"], meta["algorithm"]["config"]
    want = independent_accuracies(5, 0, config["c_draws"], config["max_iter"])
    assert len(set(np.round(list(want.values()), 6))) > 1, want  # C matters on this problem
    best = max(GRID, key=lambda c: want[c])  # ties: the first (smallest) C
    assert selection["c"] == best == config["c"], (selection, want)
    assert selection["validation_accuracy"] == pytest.approx({f"{c:g}": a for c, a in want.items()}, abs=1e-9)
    assert selection["classes"] == VAL[1] and selection["shots"] == 5


def test_given_c_and_temperature_skip_the_choice(vectors: None, tmp_path: Path) -> None:
    meta = read_meta(train_probe(tmp_path / "run", c=3.0, temperature=2.0))
    config = meta["algorithm"]["config"]
    assert (config["c"], config["temperature"]) == (3.0, 2.0) and "selection" not in meta["algorithm"]
    meta = read_meta(train_probe(tmp_path / "run-c", c=3.0))  # C given: only s is fitted, at that C
    assert meta["algorithm"]["config"]["c"] == 3.0 == meta["algorithm"]["selection"]["c"]
    assert list(meta["algorithm"]["selection"]["validation_accuracy"]) == ["3"]


def test_temperature_minimises_the_validation_nll_at_the_chosen_c(vectors: None, tmp_path: Path) -> None:
    meta = read_meta(train_probe(tmp_path / "run"))
    config = meta["algorithm"]["config"]
    feats = class_features(*VAL)
    logits, labels = [], []
    for d in range(config["c_draws"]):  # the validation queries' scale-1 logits, fitted here
        picks = validation_picks([len(f) for f in feats], 5, 0, d)
        s = torch.from_numpy(np.concatenate([f[p] for f, p in zip(feats, picks, strict=True)]))
        sy = torch.cat([torch.full((5,), i) for i in range(len(feats))])
        rest = [np.setdiff1d(np.arange(len(f)), p) for f, p in zip(feats, picks, strict=True)]
        w, b = fit_logistic(s, sy, len(feats), config["c"], config["max_iter"])
        logits.append(torch.from_numpy(np.concatenate([f[r] for f, r in zip(feats, rest, strict=True)])).double() @ w.T + b)
        labels.append(torch.cat([torch.full((len(r),), i) for i, r in enumerate(rest)]))
    z, y = torch.cat(logits), torch.cat(labels)
    grid = np.exp(np.linspace(np.log(0.05), np.log(200.0), 2001))
    nll = [float(torch.nn.functional.cross_entropy(float(t) * z, y)) for t in grid]
    assert config["temperature"] == pytest.approx(grid[int(np.argmin(nll))], rel=0.01)
    assert abs(np.log(config["temperature"])) > 0.1  # s = 1 would not pass for the fitted one


def test_adapting_a_run_uses_its_chosen_c(vectors: None, tmp_path: Path) -> None:
    run = train_probe(tmp_path / "run")
    meta, learner = load_run(run)
    chosen = meta["algorithm"]["selection"]["c"]
    assert chosen != FALLBACK_C  # otherwise this test could not tell the chosen C from the default
    algo = algorithm_of_run(meta, TrainConfig(**meta["config"]))
    feats = class_features(40, 3)  # a user's support set: classes the run never saw
    x = torch.from_numpy(np.concatenate([f[:5] for f in feats]))
    y = torch.arange(3).repeat_interleave(5)
    adapted = algo.adapt(learner, {"features": x}, y, 1)[-1]
    w, b = fit_logistic(x, y, 3, chosen, meta["algorithm"]["config"]["max_iter"])
    s = meta["algorithm"]["config"]["temperature"]  # the fitted temperature multiplies the head
    w, b = s * w, s * b
    torch.testing.assert_close(adapted["head.weight"], w.float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(adapted["head.bias"], b.float(), atol=1e-6, rtol=1e-5)


def test_a_short_baseline_run_computes_only_the_validation_features(minilm_dir: Path, tmp_path: Path) -> None:
    # --steps 1 runs the body on 4 training texts: computing all 36 first would be wasted (on intents, 25,000)
    csv = tmp_path / "texts.csv"
    csv.write_text("text,label\n" + "".join(f"request number {i} about {lab},{lab}\n" for lab in "abcdefgh" for i in range(6)), encoding="utf-8")
    cfg = TrainConfig(
        algo="centroid", backbone=str(minilm_dir), adapt="head", data=f"text:{csv}", ways=2, shots=1, query_shots=1, meta_batch=1, steps=1,
        eval_every=0, eval_episodes=1, val_classes=0.25, threads=1, max_length=16,
    )  # fmt: skip
    said: list[str] = []
    meta_train(cfg, out=tmp_path / "short", report=Reporter(message=said.append))
    assert not any("training examples" in m for m in said) and any("validation examples" in m for m in said), said
    said.clear()
    meta_train(dataclasses.replace(cfg, steps=10), out=tmp_path / "longer", report=Reporter(message=said.append))  # 40 texts seen >= 36
    assert any("training examples" in m for m in said), said
