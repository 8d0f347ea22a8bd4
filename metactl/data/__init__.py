"""Task sources: turn ``--data SPEC`` into training/validation episode samplers.

``glyphs`` (built-in, default), ``sinusoid`` (built-in regression), a folder of class folders or
a ``.zip`` of one, or ``omniglot:DIR`` (the official Omniglot archives, split by ``protocol``:
see :mod:`metactl.data.omniglot`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metactl.data import glyphs, omniglot
from metactl.data.episodes import ClassificationEpisodes, ClassPool, Sampler, SinusoidEpisodes
from metactl.data.folder import ArrayPool, detect_invert, load_folder
from metactl.data.images import default_preprocessing
from metactl.errors import MetactlError


@dataclass
class TaskData:
    kind: str  # "classification" | "regression"
    spec: dict[str, Any]  # what --data resolved to (recorded in metactl.json)
    train: Sampler
    val: Sampler | None
    model_spec: dict[str, Any]
    preprocessing: dict[str, Any] | None = None
    split: dict[str, Any] = field(default_factory=dict)


class RotatedPool:
    """Each base class c gives classes 4c..4c+3: the drawings rotated by 0/90/180/270 degrees."""

    def __init__(self, base: ClassPool) -> None:
        self.base = base

    @property
    def num_classes(self) -> int:
        return 4 * self.base.num_classes

    def count(self, c: int) -> int:
        return self.base.count(c // 4)

    def get(self, c: int) -> np.ndarray:
        return np.rot90(self.base.get(c // 4), k=c % 4, axes=(-2, -1))

    def names(self) -> list[str]:
        return [f"{n}@rot{90 * r}" for n in self.base.names() for r in range(4)]


def _conv_spec(ways: int, width: int, size: int = 28) -> dict[str, Any]:
    return {"kind": "conv4", "num_classes": ways, "in_channels": 1, "image_size": size, "width": width}


def open_data(cfg: Any, progress: Callable[[int, int], None] | None = None) -> TaskData:
    """Resolve ``cfg.data`` (a TrainConfig) into samplers for training and validation."""
    spec = cfg.data
    if spec == "sinusoid":
        return TaskData(
            kind="regression",
            spec={"kind": "sinusoid"},
            train=SinusoidEpisodes(cfg.shots, cfg.query_shots),
            val=SinusoidEpisodes(cfg.shots, cfg.query_shots),
            model_spec={"kind": "mlp", "in_features": 1, "out_features": 1, "hidden": [cfg.width, cfg.width]},
        )
    if spec == "glyphs":
        train: ClassPool = glyphs.GlyphPool(*glyphs.TRAIN)
        if cfg.rotations:
            train = RotatedPool(train)
        val = glyphs.GlyphPool(*glyphs.VAL)
        return TaskData(
            kind="classification",
            spec={"kind": "glyphs", "train": list(glyphs.TRAIN), "val": list(glyphs.VAL), "test": list(glyphs.TEST)},
            train=ClassificationEpisodes(train, cfg.ways, cfg.shots, cfg.query_shots),
            val=ClassificationEpisodes(val, cfg.ways, cfg.shots, cfg.query_shots, "validation"),
            model_spec=_conv_spec(cfg.ways, cfg.width),
            preprocessing=default_preprocessing(28, invert=False),
            split={
                "train": f"glyph classes {glyphs.TRAIN[0]}..{glyphs.TRAIN[1] - 1}",
                "val": f"glyph classes {glyphs.VAL[0]}..{glyphs.VAL[1] - 1}",
            },
        )
    path = Path(spec[len("omniglot:") :] if spec.startswith("omniglot:") else spec).expanduser()
    if spec.startswith("oneshot:"):
        raise MetactlError(f"--data {spec}: Lake's one-shot runs are a test set.", "Use them with metactl evaluate --data oneshot:PATH.")
    if spec.startswith("omniglot:") and path.is_dir() and omniglot.find_parts(path) is not None:
        return _open_omniglot(cfg, path, progress)
    if not path.exists():
        raise MetactlError(
            f"--data {spec}: no such folder or file.",
            "Use glyphs, sinusoid, a folder of class folders, or a .zip of one.",
        )
    prep = default_preprocessing(28, invert=detect_invert(path))
    pool = load_folder(path, prep, progress)
    train_ids, val_ids = split_classes(pool.num_classes, cfg.val_classes, cfg.seed, cfg.ways)
    train_pool: ClassPool = pool.subset(train_ids)
    val_pool: ArrayPool = pool.subset(val_ids)
    if cfg.rotations:
        train_pool = RotatedPool(train_pool)
    names = pool.names()
    return TaskData(
        kind="classification",
        spec={"kind": "folder", "path": str(path.resolve()), "classes": pool.num_classes, "images": len(pool.images)},
        train=ClassificationEpisodes(train_pool, cfg.ways, cfg.shots, cfg.query_shots),
        val=ClassificationEpisodes(val_pool, cfg.ways, cfg.shots, cfg.query_shots, "validation"),
        model_spec=_conv_spec(cfg.ways, cfg.width),
        preprocessing=prep,
        split={"train": [names[i] for i in train_ids], "val": [names[i] for i in val_ids]},
    )


def _open_omniglot(cfg: Any, root: Path, progress: Callable[[int, int], None] | None) -> TaskData:
    prep = default_preprocessing(28, invert=True)
    data = omniglot.Omniglot(root, prep, progress)
    pools = omniglot.protocol_pools(data, cfg.protocol, ("train", "val"), cfg.val_classes, cfg.seed)
    train_pool: ClassPool = pools["train"]
    if cfg.rotations:
        train_pool = RotatedPool(train_pool)
    return TaskData(
        kind="classification",
        spec={"kind": "omniglot", "path": str(root.resolve()), **omniglot.describe(pools, cfg.protocol)},
        train=ClassificationEpisodes(train_pool, cfg.ways, cfg.shots, cfg.query_shots),
        val=ClassificationEpisodes(pools["val"], cfg.ways, cfg.shots, cfg.query_shots, "validation"),
        model_spec=_conv_spec(cfg.ways, cfg.width),
        preprocessing=prep,
        split={
            "protocol": cfg.protocol,
            "train": f"{pools['train'].num_classes} characters",
            "val": pools["val"].names(),
            "test": omniglot.TEST_SETS[cfg.protocol],
        },
    )


def split_classes(n: int, fraction: float, seed: int, ways: int) -> tuple[list[int], list[int]]:
    """Hold out ``fraction`` of the classes (at least ``ways``) for validation, seeded."""
    n_val = max(ways, round(n * fraction))
    if n - n_val < ways:
        raise MetactlError(
            f"The data has {n} classes: too few for {ways}-way training plus {n_val} held-out validation classes.",
            "Use more classes, fewer --ways, or a smaller val-classes fraction.",
        )
    perm = np.random.default_rng([seed, 0x5D1]).permutation(n)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])
