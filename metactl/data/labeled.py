"""Labeled support (and query) sets for ``adapt`` and ``export``, whatever the modality.

:func:`read_support` dispatches on the run's recorded preprocessing: ``{"kind": "text", ...}`` goes to
the text reader (:mod:`metactl.data.support_text`: ``shots/<label>/*.txt``, ``shots/<label>.txt``,
``shots.csv|.tsv|.jsonl``), anything else (no ``kind``, or ``"image"``) to the image folder reader
(:func:`metactl.data.support.read_labeled_folder`). Both answer a :class:`LabeledExamples`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metactl.data.support import read_labeled_folder

Examples = np.ndarray | dict[str, np.ndarray]
"""Images (n, size, size) uint8, or named arrays sharing their first dimension (``input_ids``, ``attention_mask``: int64 (n, L))."""


@dataclass
class LabeledExamples:
    examples: Examples
    targets: np.ndarray  # (n,) int64 index into labels
    labels: list[str]  # sorted by code point
    files: list[str]  # where each example came from ("FILE" or "FILE:LINE")
    skipped: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    texts: list[str] | None = None  # text examples as read (before tokenization)
    truncated: int = 0  # text examples cut at max_length tokens

    def __len__(self) -> int:
        return len(self.targets)

    def counts(self) -> dict[str, int]:
        return {lab: int((self.targets == i).sum()) for i, lab in enumerate(self.labels)}


def kind_of(preprocessing: dict[str, Any]) -> str:
    """``"text"`` or ``"image"`` (runs from before text support record no kind)."""
    return str(preprocessing.get("kind", "image"))


def read_support(path: Path, preprocessing: dict[str, Any], what: str = "--support") -> LabeledExamples:
    """Read a labeled support (or query) set the way the run's ``preprocessing`` says; errors name the file."""
    if kind_of(preprocessing) == "text":
        from metactl.data.support_text import read_text_support

        return read_text_support(path, preprocessing, what)
    data = read_labeled_folder(path, preprocessing, what)
    return LabeledExamples(data.images, data.targets, data.labels, data.files, data.skipped, data.preprocessing)


__all__ = ["Examples", "LabeledExamples", "kind_of", "read_support"]
