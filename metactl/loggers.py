"""Metric loggers: ``meta-train --log-to NAME`` sends a run's settings and per-step metrics where a user
already looks (TensorBoard, MLflow, a third party's tracker).

``metrics.jsonl`` in the run dir stays the source of truth: the trainer appends each step's record
there and hands the very same numbers to every logger (:func:`scalars`, on rank 0 only in a
distributed run). Loggers are found in the entry-point group ``metactl.loggers``; the built-ins register
there exactly as a third party's would::

    [project.entry-points."metactl.loggers"]
    tensorboard = "metactl.loggers:TensorBoardLogger"
    mlflow = "metactl.loggers:MLflowLogger"

An entry point names a class (or any callable) that :class:`MetricLogger` describes: it is called as
``factory(run_dir, start_step=N)`` once the run dir exists (``start_step`` > 0 when a run resumes), and
may have a ``check()`` class method, called before training starts, that raises :class:`MetactlError`
when something it needs (a package) is missing.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from metactl import contract
from metactl.contract import MetricLogger
from metactl.errors import MetactlError
from metactl.registry import EntryPointGroup

GROUP = "metactl.loggers"
TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: the event files (tensorboard --logdir runs)
MLFLOW_DIR = "mlruns"  # MLflow's local file store, in the working folder (MLflow's own default)
MLFLOW_EXPERIMENT = "metactl"  # unless MLFLOW_EXPERIMENT_NAME says otherwise
MLFLOW_ARTIFACT_PATH = "run"  # the run dir's files, as the MLflow run's artifacts under run/


LOGGERS = EntryPointGroup(
    GROUP, "Logger", "Unknown logger {name!r} (--log-to).", "Installed loggers", missing="Install what that logger needs (see its documentation)."
)


def available() -> list[str]:
    return sorted(LOGGERS.entry_points())


def resolve(names: Iterable[str]) -> list[Callable[..., MetricLogger]]:
    """The logger factories ``names`` choose, each checked (``check()``: its packages installed) before
    any training starts. Unknown names, import failures and missing packages are MetactlErrors."""
    factories = []
    for name in dict.fromkeys(names):  # --log-to twice with one name logs once
        factory = LOGGERS.load(name)
        check = contract.hook(factory, "check")
        if callable(check):
            check()
        factories.append(factory)
    return factories


def scalars(record: dict[str, Any], task: str) -> dict[str, float]:
    """A ``metrics.jsonl`` record as the flat scalars a logger receives (the same numbers, renamed)::

    train/loss                 meta-loss on the query sets
    train/accuracy | train/mse the query metric during meta-training (mse for regression)
    val/accuracy_step_K        validation metric after K inner steps (K = 0: before adapting)
    time/step_seconds          the meta-step's wall time
    time/elapsed_seconds       training time so far
    train/skipped              1 where the step was skipped (non-finite loss or gradient)
    """
    metric = "accuracy" if task == "classification" else "mse"
    out = {"train/loss": float(record["loss"]), f"train/{metric}": float(record["train_metric"])}
    for k, value in enumerate(record.get("val", [])):
        out[f"val/{metric}_step_{k}"] = float(value)
    out["time/step_seconds"] = float(record["seconds"])
    out["time/elapsed_seconds"] = float(record["elapsed"])
    if record.get("skipped"):
        out["train/skipped"] = 1.0
    return out


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level (``algo_options.first_order``); values kept as they are."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _missing(package: str, extra: str) -> MetactlError:
    return MetactlError(f"--log-to {extra} needs the {package} package, which is not installed.", f"Install it: pip install 'metactl[{extra}]'")


class TensorBoardLogger:
    """Event files in ``RUN/tensorboard/``, as ``torch.utils.tensorboard`` writes them (scalars in double
    precision, so they equal ``metrics.jsonl``'s values); the settings as a text summary ``config``."""

    name: ClassVar[str] = "tensorboard"

    @classmethod
    def check(cls) -> None:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        self.check()
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run: TensorBoard drops what the old files logged after the checkpoint's step
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)

    def log_params(self, params: dict[str, Any]) -> None:
        text = "\n".join(f"    {k} = {json.dumps(v, ensure_ascii=False)}" for k, v in params.items())
        self.writer.add_text("config", text, 0)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step, new_style=True, double_precision=True)
        self.writer.flush()  # TensorBoard shows each step as it happens

    def finish(self, run_dir: Path, status: str) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.close()


class MLflowLogger:
    """An MLflow run: the settings as params, each step's scalars as metrics, the run dir's files as
    artifacts (under ``run/``) when it ends. Tracking goes where ``MLFLOW_TRACKING_URI`` points, else to
    a local file store ``./mlruns`` (``mlflow ui`` in the same folder shows it); the experiment is
    ``MLFLOW_EXPERIMENT_NAME`` or ``metactl``. A resumed run starts a new MLflow run."""

    name: ClassVar[str] = "mlflow"
    STATUS: ClassVar[dict[str, str]] = {"complete": "FINISHED", "interrupted": "KILLED"}

    @classmethod
    def check(cls) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise _missing("mlflow", "mlflow") from None

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        self.check()
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # MLflow 3 keeps the file store only on request; it is the local, server-free default here
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = Path(MLFLOW_DIR).resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or MLFLOW_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        final = run_dir.name.removeprefix(".").removesuffix(".partial")  # a --force run is written beside its final name
        tags = {"metactl.run_dir": str(run_dir.parent.resolve() / final), "metactl.start_step": str(start_step)}
        self.run_id = self.client.create_run(experiment_id, run_name=final, tags=tags).info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v) for k, v in params.items()])

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items() if not math.isinf(v)])

    def finish(self, run_dir: Path, status: str) -> None:
        if status in ("complete", "stopped-non-finite") and run_dir.is_dir():
            self.client.log_artifacts(self.run_id, str(run_dir), MLFLOW_ARTIFACT_PATH)
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))


__all__ = ["GROUP", "LOGGERS", "MLflowLogger", "MetricLogger", "TensorBoardLogger", "available", "flat_params", "resolve", "scalars"]
