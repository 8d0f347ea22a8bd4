"""Labeled examples as every support reader answers them (a leaf module: numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


__all__ = ["Examples", "LabeledExamples"]
