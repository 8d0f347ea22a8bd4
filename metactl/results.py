"""One result type per command: what ``meta_train``, ``adapt`` and ``export`` return.

The trainer (:mod:`metactl.train`), :mod:`metactl.adapt` and :mod:`metactl.export` build these frozen
dataclasses themselves, and the Python API (:mod:`metactl.library`, docs/python-api.md) hands them on
unchanged: one type per command, with the field names the documentation gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metactl.runs import METRICS


@dataclass(frozen=True)
class TrainResult:
    """A finished meta-training run."""

    path: Path  # the run dir
    steps: int  # outer steps done
    seconds: float
    stopped_by: str  # steps | time-budget | non-finite
    metrics: dict[str, float] = field(default_factory=dict)  # final validation, named as the loggers name it: val/accuracy_step_K
    validation: list[dict[str, float]] = field(default_factory=list)  # per inner step k: mean, ci95, median (held-out classes)
    validation_at_start: list[dict[str, float]] = field(default_factory=list)
    inner_lr: dict[str, float] = field(default_factory=dict)  # the learned α per parameter tensor (mean)
    skipped_steps: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # the resolved settings, as the run records them

    @classmethod
    def of_curve(cls, path: Path, steps: int, seconds: float, stopped_by: str, curve: list[dict[str, float]], task: str, **rest: Any) -> TrainResult:
        """The result whose ``metrics`` name the validation ``curve``'s means (``val/accuracy_step_K``, or ``mse`` for regression)."""
        metric = "accuracy" if task == "classification" else "mse"
        metrics = {f"val/{metric}_step_{k}": c["mean"] for k, c in enumerate(curve)}
        return cls(path, steps, seconds, stopped_by, metrics, curve, **rest)

    def history(self) -> list[dict[str, Any]]:
        """The run's ``metrics.jsonl``: one record per outer step (loss, train_metric, seconds, val...)."""
        path = self.path / METRICS
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


@dataclass(frozen=True)
class AdaptResult:
    """An adapted model folder."""

    path: Path
    labels: list[str]
    metrics: dict[str, Any]  # support_accuracy, query_accuracy (None without a query set), support_losses (per inner step)
    per_class: list[dict[str, Any]] = field(default_factory=list)  # query accuracy per label
    skipped: list[str] = field(default_factory=list)  # entries of the support folder that are not examples
    seconds: float = 0.0


@dataclass(frozen=True)
class ExportResult:
    """An export folder: model.onnx (+ int8), model.safetensors, metactl.json, README.md (the model card)."""

    path: Path
    onnx: Path
    int8: Path | None  # model.int8.onnx with quantize="int8"
    parity: float  # onnxruntime vs torch, max abs difference of the probabilities
    agreement: float | None  # int8 vs float: share of identical predictions
    opset: int
    card: Path  # README.md
    files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AdaptableResult:
    """An adaptable folder (``export --adaptable``): embed.onnx, adapt.onnx, classify.onnx, metactl.json, README.md."""

    path: Path
    algorithm: str
    modality: str  # "image" or "text"
    sizes: dict[str, int]  # bytes of each graph
    head_parity: float  # adapt graph vs the algorithm's adapt in torch, max abs difference of the head
    parity: float  # classify graph vs torch, max abs difference of the probabilities
    files: list[str] = field(default_factory=list)


__all__ = ["AdaptResult", "AdaptableResult", "ExportResult", "TrainResult"]
