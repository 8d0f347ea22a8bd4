"""The built-in task sources, and the contract a task source keeps.

A task source turns the argument of ``--data KIND[:ARG]`` into episode samplers: for meta-training
(``open``: training and validation samplers, the model spec and the preprocessing) and for
``metactl evaluate`` (``held_out``: episodes from classes a run never trained on). Sources are
registered in the ``metactl.data`` entry-point group; :mod:`metactl.data` dispatches ``--data``
to them in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from metactl.contract import TaskSource
from metactl.data import glyphs, omniglot
from metactl.data.episodes import ClassificationEpisodes, ClassPool, ImagePool, Sampler, SinusoidEpisodes, split_classes
from metactl.data.folder import ArrayPool, detect_color, detect_invert, load_folder
from metactl.data.images import COLOR_SIZE, channels_of, color_preprocessing, default_preprocessing
from metactl.errors import MetactlError

Progress = Callable[[int, int], None]


@dataclass
class TaskData:
    kind: str  # "classification" | "regression"
    spec: dict[str, Any]  # what --data resolved to (recorded in metactl.json)
    train: Sampler
    val: Sampler | None
    model_spec: dict[str, Any]
    preprocessing: dict[str, Any] | None = None
    split: dict[str, Any] = field(default_factory=dict)


class RotatedPool(ImagePool):
    """Each base class c gives classes 4c..4c+3: the drawings rotated by 0/90/180/270 degrees."""

    def __init__(self, base: ImagePool) -> None:
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


def conv_spec(ways: int, width: int, size: int = 28, channels: int = 1) -> dict[str, Any]:
    """The Conv-4 every image source trains by default."""
    return {"kind": "conv4", "num_classes": ways, "in_channels": channels, "image_size": size, "width": width}


def folder_preprocessing(path: Path, image_size: int = 0) -> dict[str, Any]:
    """The preprocessing a training folder (or zip) gets: RGB at ``image_size`` (0: 84) when any image
    holds color (a mixed folder is color: a gray picture is a valid RGB one, while color squeezed to
    gray loses what may tell the classes apart); otherwise grayscale at ``image_size`` (0: 28) with
    the ink polarity read off the files."""
    if detect_color(path):
        return color_preprocessing(image_size or COLOR_SIZE)
    return default_preprocessing(image_size or 28, invert=detect_invert(path))


def _rotated(pool: ImagePool, rotations: bool) -> ImagePool:
    return RotatedPool(pool) if rotations else pool


def _not_regression(meta: dict[str, Any], spec: str) -> None:
    if meta.get("task") == "regression":
        raise MetactlError(f"--data {spec}: this run is a sinusoid regression run.", "Drop --data or use --data sinusoid.")


class Sinusoid:
    """``sinusoid``: the MAML paper's regression family (amplitude 0.1-5, phase 0-π, x in [-5, 5])."""

    name: ClassVar[str] = "sinusoid"
    takes_argument: ClassVar[bool] = False

    def open(self, cfg: Any, arg: str | None, progress: Progress | None) -> TaskData:
        return TaskData(
            kind="regression",
            spec={"kind": "sinusoid"},
            train=SinusoidEpisodes(cfg.shots, cfg.query_shots),
            val=SinusoidEpisodes(cfg.shots, cfg.query_shots),
            model_spec={"kind": "mlp", "in_features": 1, "out_features": 1, "hidden": [cfg.width, cfg.width]},
        )

    def held_out(self, meta: dict[str, Any], arg: str | None, ways: int, shots: int, queries: int, protocol: str | None) -> Sampler:
        if meta.get("task") != "regression":
            raise MetactlError("--data sinusoid: this run is a classification run.", "Use image data.")
        return SinusoidEpisodes(shots, queries)


class Glyphs:
    """``glyphs`` (built-in, the default): procedurally drawn glyph classes, disjoint train/val/test ranges."""

    name: ClassVar[str] = "glyphs"
    takes_argument: ClassVar[bool] = False

    def open(self, cfg: Any, arg: str | None, progress: Progress | None) -> TaskData:
        if getattr(cfg, "image_size", 0) not in (0, glyphs.SIZE):
            raise MetactlError(f"--image-size {cfg.image_size}: glyphs are drawn at {glyphs.SIZE}x{glyphs.SIZE}.", "Drop --image-size or use image files.")
        train: ClassPool = _rotated(glyphs.GlyphPool(*glyphs.TRAIN), cfg.rotations)
        val = glyphs.GlyphPool(*glyphs.VAL)
        return TaskData(
            kind="classification",
            spec={"kind": "glyphs", "train": list(glyphs.TRAIN), "val": list(glyphs.VAL), "test": list(glyphs.TEST)},
            train=ClassificationEpisodes(train, cfg.ways, cfg.shots, cfg.query_shots),
            val=ClassificationEpisodes(val, cfg.ways, cfg.shots, cfg.query_shots, "validation"),
            model_spec=conv_spec(cfg.ways, cfg.width),
            preprocessing=default_preprocessing(28, invert=False),
            split={
                "train": f"glyph classes {glyphs.TRAIN[0]}..{glyphs.TRAIN[1] - 1}",
                "val": f"glyph classes {glyphs.VAL[0]}..{glyphs.VAL[1] - 1}",
            },
        )

    def held_out(self, meta: dict[str, Any], arg: str | None, ways: int, shots: int, queries: int, protocol: str | None) -> Sampler:
        _not_regression(meta, "glyphs")
        return ClassificationEpisodes(glyphs.GlyphPool(*glyphs.TEST), ways, shots, queries, "glyph test")


TRAIN_HINT = "Use glyphs, sinusoid, a folder of class folders, or a .zip of one."
EVAL_HINT = "Pass a folder of class folders, a .zip of one, omniglot:DIR or oneshot:PATH."


def _existing(spec: str, path: Path, hint: str = EVAL_HINT) -> Path:
    if not path.exists():
        raise MetactlError(f"--data {spec}: no such folder or file.", hint)
    return path


class Folder:
    """``PATH`` (or ``folder:PATH``): a folder of class folders at any depth, or a ``.zip`` of one."""

    name: ClassVar[str] = "folder"
    takes_argument: ClassVar[bool] = True

    def open(self, cfg: Any, arg: str | None, progress: Progress | None, spec: str | None = None) -> TaskData:
        path = _existing(spec or str(arg), Path(str(arg)).expanduser(), TRAIN_HINT)
        prep = folder_preprocessing(path, getattr(cfg, "image_size", 0))
        pool = load_folder(path, prep, progress)
        train_ids, val_ids = split_classes(pool.num_classes, cfg.val_classes, cfg.seed, cfg.ways)
        names = pool.names()
        return TaskData(
            kind="classification",
            spec={"kind": "folder", "path": str(path.resolve()), "classes": pool.num_classes, "images": len(pool.images)},
            train=ClassificationEpisodes(_rotated(pool.subset(train_ids), cfg.rotations), cfg.ways, cfg.shots, cfg.query_shots),
            val=ClassificationEpisodes(pool.subset(val_ids), cfg.ways, cfg.shots, cfg.query_shots, "validation"),
            model_spec=conv_spec(cfg.ways, cfg.width, int(prep["size"]), channels_of(prep)),
            preprocessing=prep,
            split={"train": [names[i] for i in train_ids], "val": [names[i] for i in val_ids]},
        )

    def held_out(self, meta: dict[str, Any], arg: str | None, ways: int, shots: int, queries: int, protocol: str | None) -> Sampler:
        """All classes of ``arg``; the run's own folder: its held-out validation classes."""
        _not_regression(meta, str(arg))
        recorded = meta.get("data", {})
        path = _existing(str(arg), Path(str(arg)).expanduser())
        prep = meta.get("preprocessing") or default_preprocessing()
        if channels_of(prep) == 1:  # a color run reads the folder in RGB, never inverted
            prep = {**prep, "invert": detect_invert(path)}
        pool: ArrayPool = load_folder(path, prep)
        if arg == recorded.get("path") and "val" in meta.get("split", {}):
            names = set(meta["split"]["val"])
            pool = pool.subset([i for i, n in enumerate(pool.names()) if n in names])
        return ClassificationEpisodes(pool, ways, shots, queries, "evaluation")


class OmniglotSource:
    """``omniglot:DIR``: the official Omniglot archives, split by ``--protocol`` (lake | vinyals).
    A ``DIR`` without the official files is read as a plain folder."""

    name: ClassVar[str] = "omniglot"
    takes_argument: ClassVar[bool] = True

    def open(self, cfg: Any, arg: str | None, progress: Progress | None) -> TaskData:
        root = Path(str(arg)).expanduser()
        if not (root.is_dir() and omniglot.find_parts(root) is not None):
            return Folder().open(cfg, arg, progress, spec=f"omniglot:{arg}")
        size = getattr(cfg, "image_size", 0) or 28
        prep = default_preprocessing(size, invert=True)
        data = omniglot.Omniglot(root, prep, progress)
        pools = omniglot.protocol_pools(data, cfg.protocol, ("train", "val"), cfg.val_classes, cfg.seed)
        return TaskData(
            kind="classification",
            spec={"kind": "omniglot", "path": str(root.resolve()), **omniglot.describe(pools, cfg.protocol)},
            train=ClassificationEpisodes(_rotated(pools["train"], cfg.rotations), cfg.ways, cfg.shots, cfg.query_shots),
            val=ClassificationEpisodes(pools["val"], cfg.ways, cfg.shots, cfg.query_shots, "validation"),
            model_spec=conv_spec(cfg.ways, cfg.width, size),
            preprocessing=prep,
            split={
                "protocol": cfg.protocol,
                "train": f"{pools['train'].num_classes} characters",
                "val": pools["val"].names(),
                "test": omniglot.TEST_SETS[cfg.protocol],
            },
        )

    def held_out(self, meta: dict[str, Any], arg: str | None, ways: int, shots: int, queries: int, protocol: str | None) -> Sampler:
        """The protocol's test characters."""
        _not_regression(meta, f"omniglot:{arg}")
        path = _existing(f"omniglot:{arg}", Path(str(arg)).expanduser())
        if omniglot.find_parts(path) is None:
            return Folder().held_out(meta, arg, ways, shots, queries, protocol)
        prep = {**(meta.get("preprocessing") or default_preprocessing()), "invert": True}
        proto = protocol or "lake"
        test = omniglot.protocol_pools(omniglot.Omniglot(path, prep), proto, ("test",))["test"]
        return ClassificationEpisodes(test, ways, shots, queries, f"Omniglot {proto} test")


class OneShotRuns:
    """``oneshot:PATH``: Lake et al.'s 20 one-shot runs (``all_runs.zip`` or its folder), a fixed test set."""

    name: ClassVar[str] = "oneshot"
    takes_argument: ClassVar[bool] = True

    def open(self, cfg: Any, arg: str | None, progress: Progress | None) -> TaskData:
        raise MetactlError(f"--data oneshot:{arg}: Lake's one-shot runs are a test set.", "Use them with metactl evaluate --data oneshot:PATH.")

    def held_out(self, meta: dict[str, Any], arg: str | None, ways: int, shots: int, queries: int, protocol: str | None) -> Sampler:
        _not_regression(meta, f"oneshot:{arg}")
        path = _existing(f"oneshot:{arg}", Path(str(arg)).expanduser())
        return omniglot.oneshot_runs(path, {**(meta.get("preprocessing") or default_preprocessing()), "invert": True})


__all__ = [
    "Folder", "Glyphs", "OmniglotSource", "OneShotRuns", "RotatedPool", "Sinusoid", "TaskData", "TaskSource",
    "conv_spec", "folder_preprocessing", "split_classes",
]  # fmt: skip
