"""Modalities: what kind of example a model takes, chosen from a run's ``preprocessing["kind"]``.

A modality (:class:`metactl.contract.Modality`) is registered in the ``metactl.modalities`` entry-point
group (the built-ins ``image`` and ``text`` in metactl's own ``pyproject.toml``, exactly as a third
party's would be) and owns everything that differs between kinds of input: the support reader, the
input description, the files beside ``model.onnx``, the export check's fallback inputs and batch
check, the int8 mode, how ``predict`` turns its arguments into graph inputs, and the model card's
words. A third modality is one module and one entry point. A run recorded before text support has
no ``kind``: it is ``image``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metactl.contract import Modality
from metactl.data.examples import LabeledExamples
from metactl.registry import EntryPointGroup

GROUP = "metactl.modalities"
DEFAULT = "image"  # runs recorded before text support name no kind

MODALITIES = EntryPointGroup(
    GROUP, "Modality", "Unknown input kind {name!r} in the model's preprocessing.", "Installed modalities",
    missing="Install the text extra: pip install 'metactl[text]'.",
)  # fmt: skip
refresh = MODALITIES.refresh


def kind_of(preprocessing: dict[str, Any] | None) -> str:
    """The modality's name a preprocessing record names (``image`` when it names none)."""
    return str((preprocessing or {}).get("kind") or DEFAULT)


def modality_of(preprocessing: dict[str, Any] | None) -> Modality:
    """The modality for a run's (or an export's) preprocessing; a MetactlError naming the installed ones when unknown."""
    return MODALITIES.load(kind_of(preprocessing))()


def read_support(path: Path, preprocessing: dict[str, Any], what: str = "--support") -> LabeledExamples:
    """Read a labeled support (or query) set the way the run's ``preprocessing`` says; errors name the file."""
    return modality_of(preprocessing).read_support(path, preprocessing, what)


__all__ = ["DEFAULT", "GROUP", "MODALITIES", "kind_of", "modality_of", "read_support"]
