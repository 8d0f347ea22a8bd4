"""``meta-train --log-to``: TensorBoard and MLflow read back with their own readers, the numbers equal to
metrics.jsonl's; a missing package is a one-line install hint before any work; a third party's logger
through the ``metactl.loggers`` entry point."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from metactl.cli import app
from metactl.loggers import LOGGERS, scalars
from metactl.testing import register_plugin

runner = CliRunner()
TINY = ["--steps", "4", "--meta-batch", "2", "--eval-every", "2", "--eval-episodes", "3", "--width", "8", "--query-shots", "2", "--threads", "1"]


def _train(out: Path, *extra: str) -> Any:
    return runner.invoke(app, ["meta-train", *TINY, "--out", str(out), *extra])


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _expected(run: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as tag -> {step: value}, under the names the loggers document (spelled out here)."""
    out: dict[str, dict[int, float]] = {}
    for rec in _records(run):
        step = rec["step"]
        values = {"train/loss": rec["loss"], "train/accuracy": rec["train_metric"], "time/step_seconds": rec["seconds"], "time/elapsed_seconds": rec["elapsed"]}
        values.update({f"val/accuracy_step_{k}": v for k, v in enumerate(rec.get("val", []))})
        for tag, value in values.items():
            out.setdefault(tag, {})[step] = value
    return out


def test_scalar_names() -> None:
    rec = {"step": 2, "loss": 1.5, "train_metric": 0.25, "seconds": 0.1, "elapsed": 0.3, "val": [0.2, 0.4]}
    assert scalars(rec, "classification") == {
        "train/loss": 1.5, "train/accuracy": 0.25, "val/accuracy_step_0": 0.2, "val/accuracy_step_1": 0.4,
        "time/step_seconds": 0.1, "time/elapsed_seconds": 0.3,
    }  # fmt: skip
    assert "train/mse" in scalars({**rec, "val": []}, "regression")


def test_tensorboard_reads_back_what_metrics_jsonl_says(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    run = tmp_path / "run"
    r = _train(run, "--log-to", "tensorboard")
    assert r.exit_code == 0, r.output
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    expected = _expected(run)
    assert {"train/loss", "train/accuracy", "val/accuracy_step_0", "val/accuracy_step_3", "time/step_seconds"} <= set(expected)
    assert set(acc.Tags()["tensors"]) >= set(expected)
    for tag, by_step in expected.items():
        got = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
        assert got == by_step, tag  # exactly the same numbers (double precision), at the same steps
    assert len(expected["train/loss"]) == 4 and set(expected["val/accuracy_step_0"]) == {2, 4}
    assert "config/text_summary" in acc.Tags()["tensors"]  # the settings, as a text summary


def test_mlflow_run_has_params_metrics_and_the_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "runs" / "tiny"
    r = _train(run, "--log-to", "mlflow")
    assert r.exit_code == 0, r.output
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("metactl")
    assert experiment is not None
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "tiny" and found.info.status == "FINISHED"
    params = found.data.params
    assert params["steps"] == "4" and params["width"] == "8" and params["algo"] == "maml" and params["data"] == "glyphs"
    for tag, by_step in _expected(run).items():
        history = {m.step: m.value for m in client.get_metric_history(found.info.run_id, tag)}
        assert history == pytest.approx(by_step, rel=0, abs=0), tag
    listed = {Path(f.path).name for f in client.list_artifacts(found.info.run_id, "run")}
    assert {"metactl.json", "metrics.jsonl", "theta.safetensors"} <= listed


@pytest.mark.parametrize("name, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_package_is_an_install_hint_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    run = tmp_path / "run"
    r = _train(run, "--log-to", name)
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        f"Error: --log-to {name} needs the {module} package, which is not installed. Install it: pip install 'metactl[{name}]'"
    ]
    assert not run.exists()  # checked before training starts


def test_unknown_logger_lists_the_installed_ones(tmp_path: Path) -> None:
    r = _train(tmp_path / "run", "--log-to", "wandb-nope")
    assert r.exit_code == 1
    assert "Unknown logger 'wandb-nope' (--log-to). Installed loggers: " in r.output and "mlflow, tensorboard" in r.output
    assert not (tmp_path / "run").exists()


RECORDER = '''"""A third party's logger: every call as a JSON line in RUN/recorded.jsonl."""
import json
from pathlib import Path


class Recorder:
    def __init__(self, run_dir, start_step=0):
        self.file = Path(run_dir) / "recorded.jsonl"
        self._write({"call": "init", "start_step": start_step})

    def _write(self, obj):
        with self.file.open("a") as f:
            f.write(json.dumps(obj) + "\\n")

    def log_params(self, params):
        self._write({"call": "params", "params": params})

    def log_metrics(self, step, metrics):
        self._write({"call": "metrics", "step": step, "metrics": metrics})

    def finish(self, run_dir, status):
        self._write({"call": "finish", "status": status, "files": sorted(p.name for p in Path(run_dir).iterdir())})
'''


def test_a_third_party_logger_through_the_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "recorder_plugin.py").write_text(RECORDER)
    register_plugin(plugins, {"recorder": "recorder_plugin:Recorder"}, distribution="metactl-recorder", group="metactl.loggers")
    monkeypatch.syspath_prepend(str(plugins))
    LOGGERS.refresh()
    try:
        run = tmp_path / "run"
        r = _train(run, "--log-to", "recorder", "--log-to", "recorder")  # twice: logged once
        assert r.exit_code == 0, r.output
    finally:
        monkeypatch.undo()
        LOGGERS.refresh()
    calls = [json.loads(line) for line in (run / "recorded.jsonl").read_text().splitlines()]
    assert [c["call"] for c in calls] == ["init", "params"] + ["metrics"] * 4 + ["finish"]
    assert calls[1]["params"]["steps"] == 4 and calls[1]["params"]["algo"] == "maml"
    got = {(c["step"], tag): v for c in calls if c["call"] == "metrics" for tag, v in c["metrics"].items()}
    want = {(step, tag): v for tag, by_step in _expected(run).items() for step, v in by_step.items()}
    assert got == want
    assert calls[-1]["status"] == "complete" and {"metactl.json", "metrics.jsonl", "theta.safetensors"} <= set(calls[-1]["files"])


def test_float32_would_not_be_exact() -> None:
    """Why the TensorBoard logger writes doubles: float32 changes metrics.jsonl's numbers."""
    assert float(np.float32(0.1)) != 0.1
