"""Task sources: ``--data SPEC`` dispatched, in this one place, to a source registered in the
``metactl.data`` entry-point group (the built-ins in :mod:`metactl.data.sources`).

``KIND:ARG`` goes to the source named ``KIND`` (``omniglot:DIR``, ``oneshot:PATH``, a third
party's ``mykind:...``); a bare registered name to that source (``glyphs``, ``sinusoid``); anything
else is a path, read by the ``folder`` source (a ``.csv``, ``.tsv`` or ``.jsonl`` file: by the ``text`` source).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metactl import contract
from metactl.config import TrainConfig
from metactl.data.episodes import Sampler, split_classes
from metactl.data.sources import RotatedPool, TaskData, TaskSource
from metactl.errors import MetactlError
from metactl.registry import EntryPointGroup

GROUP = "metactl.data"
TEXT_FILES = (".csv", ".tsv", ".jsonl")  # a bare path ending so is labeled text (the ``text`` source)


SOURCES = EntryPointGroup(GROUP, "Data source", "Unknown data source {name!r}.", "Installed sources")
refresh = SOURCES.refresh


def source(name: str) -> TaskSource:
    return SOURCES.load(name)()


def resolve(spec: str) -> tuple[TaskSource, str | None]:
    """The source ``spec`` names, and its argument."""
    kind, sep, rest = spec.partition(":")
    names = SOURCES.entry_points()
    if sep and kind in names:
        return source(kind), rest
    if not sep and spec in names:
        src = source(spec)
        if not src.takes_argument:
            return src, None
    if spec.lower().endswith(TEXT_FILES) and "text" in names:
        return source("text"), spec
    return source("folder"), spec


def open_data(cfg: Any, progress: Callable[[int, int], None] | None = None) -> TaskData:
    """Resolve ``cfg.data`` (a TrainConfig) into samplers for training and validation."""
    src, arg = resolve(cfg.data)
    return src.open(cfg, arg, progress)


SPLITS = ("test", "val")  # metactl evaluate --split: the held-out classes | the run's validation classes


def check_split(split: str) -> None:
    """A MetactlError unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise MetactlError(f"--split {split}: unknown.", "Use test (the held-out classes) or val (the run's validation classes).")


def _check_own_data(meta: dict[str, Any], data: str | None, protocol: str | None) -> dict[str, Any]:
    """``--split val`` reads the run's own data and protocol: a MetactlError if others are given; the run's config."""
    recorded = dict(meta.get("config", {}))
    if data is not None and data != recorded.get("data"):
        raise MetactlError(f"--split val reads the run's own data ({recorded.get('data')}), not --data {data}.", "Drop --data, or use --split test.")
    if protocol is not None and protocol != recorded.get("protocol"):
        raise MetactlError(f"--split val uses the run's protocol ({recorded.get('protocol')}), not --protocol {protocol}.", "Drop --protocol.")
    return recorded


def held_out_sampler(meta: dict[str, Any], data: str | None, ways: int, shots: int, queries: int, protocol: str | None = None, split: str = "test") -> Sampler:
    """Episodes from classes the run never trained on: ``data`` (all its classes, or a protocol's
    test classes) or, without ``data``, the held-out classes of the run's own data.

    ``split="val"``: the run's own validation classes instead (the ones meta-training validated
    on), for choosing a setting such as a fine-tuning learning rate without touching the test classes."""
    check_split(split)
    if split == "val":
        return validation_sampler(meta, data, ways, shots, queries, protocol)
    if data is not None:
        src, arg = resolve(data)
        return src.held_out(meta, arg, ways, shots, queries, protocol)
    if meta.get("task") == "regression":
        return source("sinusoid").held_out(meta, None, ways, shots, queries, protocol)
    recorded = meta.get("data", {})
    kind = recorded.get("kind", "glyphs")
    if kind == "omniglot":
        protocol = protocol or recorded.get("protocol", "lake")
    src = source(kind)
    return src.held_out(meta, recorded.get("path") if src.takes_argument else None, ways, shots, queries, protocol)


def _own_or_given(meta: dict[str, Any], data: str | None, protocol: str | None, split: str, flag: str) -> tuple[TaskSource, str | None]:
    """The source and argument ``--all-classes``/``--by-domain`` read: ``data``, else the run's own data."""
    check_split(split)
    if split == "val":
        _check_own_data(meta, data, protocol)
    if data is not None:
        src, arg = resolve(data)
    else:
        own = meta.get("data", {})
        src = source(own.get("kind", "glyphs"))
        arg = own.get("path") if src.takes_argument else None
    if contract.hook(src, flag.removeprefix("--").replace("-", "_")) is None:
        raise MetactlError(f"{flag} is for text data (intents:DIR, text:PATH); this data is {data or meta.get('data', {}).get('kind')}.", f"Drop {flag}.")
    return src, arg


def all_classes_sampler(meta: dict[str, Any], data: str | None, shots: int, protocol: str | None = None, split: str = "test", label_names: bool = False) -> Any:
    """Every held-out class in each episode (``metactl evaluate --all-classes``): for ``intents:`` the
    test intents with support drawn from their ``train`` split and their whole ``test`` split as
    queries (see :class:`metactl.data.text.AllClassesEpisodes`); ``split="val"``: the run's validation
    classes. Draw ``d`` is a function of the seed and ``d`` only. ``label_names``: each class's readable
    name is one more support text of every draw (text runs)."""
    src, arg = _own_or_given(meta, data, protocol, split, "--all-classes")
    sampler = src.all_classes(meta, arg, shots, protocol, split)  # type: ignore[attr-defined]
    if label_names:
        from metactl.data.text import named_all_classes  # the [text] extra (tokenizers)

        sampler = named_all_classes(sampler, meta)
    return sampler


def domain_sampler(meta: dict[str, Any], data: str | None, shots: int, queries: int, protocol: str | None = None, split: str = "test") -> Any:
    """Whole-domain episodes (``metactl evaluate --by-domain``): CLINC150's ``domains`` protocol, every
    intent of one test domain per episode (``split="val"``: of the validation domain)."""
    src, arg = _own_or_given(meta, data, protocol, split, "--by-domain")
    return src.by_domain(meta, arg, shots, queries, protocol, split)  # type: ignore[attr-defined]


def validation_sampler(meta: dict[str, Any], data: str | None, ways: int, shots: int, queries: int, protocol: str | None) -> Sampler:
    """The validation classes of the run's own data and protocol, as meta-training split them."""
    if meta.get("task") == "regression":
        raise MetactlError("--split val: a regression run has no validation classes.", "Leave --split at test.")
    recorded = _check_own_data(meta, data, protocol)
    cfg = TrainConfig(**{**recorded, "ways": ways, "shots": shots, "query_shots": queries})
    val = open_data(cfg).val
    if val is None:
        raise MetactlError(f"--split val: the run's data ({recorded.get('data')}) has no validation classes.", "Use --split test.")
    return val


__all__ = [
    "GROUP",
    "SPLITS",
    "RotatedPool",
    "TaskData",
    "all_classes_sampler",
    "check_split",
    "domain_sampler",
    "held_out_sampler",
    "open_data",
    "resolve",
    "source",
    "split_classes",
    "validation_sampler",
]
