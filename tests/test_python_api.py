"""The Python API (metactl.meta_train / adapt / export / evaluate / predict): lazy, typed results,
MetactlError (never SystemExit) for user errors and unknown keywords, and the CLI as a thin layer
over the same functions. The whole flow runs in examples/notebook.py (tests/test_examples.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import metactl
from metactl import library
from metactl.cli import app
from metactl.errors import MetactlError

runner = CliRunner()
TINY = dict(steps=2, meta_batch=2, eval_every=0, eval_episodes=2, width=8, query_shots=2, threads=1)


def test_import_metactl_stays_torch_free_and_exposes_the_api() -> None:
    code = (
        "import sys, metactl\n"
        "from metactl import MetactlError\n"
        "print('torch' in sys.modules, set(metactl.API) <= set(dir(metactl)))\n"
        "metactl.meta_train\n"  # the first use of an API function loads the library (and torch)
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]


def test_api_names_are_the_library_functions_whatever_was_imported_first() -> None:
    import metactl.adapt
    import metactl.evaluate
    import metactl.export
    from metactl import adapt, evaluate, export

    for fn, name in ((adapt, "adapt"), (export, "export"), (evaluate, "evaluate")):
        assert callable(fn) and callable(getattr(metactl, name))
        assert str(__import__("inspect").signature(fn)) == str(__import__("inspect").signature(getattr(library, name)))
    assert metactl.meta_train is library.meta_train and metactl.predict is library.predict


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: metactl.meta_train(stepz=3), "stepz"),
        (lambda: metactl.adapt("shots", frm="runs/x"), "frm"),
        (lambda: metactl.export("adapted", quantise="int8"), "quantise"),
        (lambda: metactl.evaluate("runs/x", episode=10), "episode"),
    ],
)
def test_unknown_keyword_is_a_metactl_error_naming_the_valid_ones(call: Any, name: str) -> None:
    with pytest.raises(MetactlError) as err:
        call()
    assert name in str(err.value) and "Valid keywords:" in str(err.value)
    if name == "stepz":
        assert "time_budget" in str(err.value) and "log_to" in str(err.value)
    if name == "frm":
        assert "run, out, steps, query, force" in str(err.value)


def test_user_errors_raise_metactl_error_never_system_exit(tmp_path: Path) -> None:
    cases = [
        lambda: metactl.meta_train(resume=True, force=True),
        lambda: metactl.meta_train(steps="many"),
        lambda: metactl.meta_train(ways=1, out=tmp_path / "r"),
        lambda: metactl.adapt(tmp_path / "no-shots", run=tmp_path / "no-run", out=tmp_path / "a"),
        lambda: metactl.export(tmp_path / "nothing", out=tmp_path / "e"),
        lambda: metactl.export(tmp_path / "nothing", onnx=False),
        lambda: metactl.evaluate(tmp_path / "no-run", episodes=5),
        lambda: metactl.evaluate(episodes=0),
        lambda: metactl.predict(tmp_path / "model.onnx", ["x.png"]),
        lambda: metactl.meta_train(log_to=["no-such-logger"], out=tmp_path / "r2"),
    ]
    for case in cases:
        try:
            case()
        except MetactlError:
            continue
        except BaseException as exc:  # SystemExit, typer.Exit, a traceback-worthy error: all wrong here
            pytest.fail(f"{type(exc).__name__}: {exc}")
        pytest.fail("no error raised")


def test_results_are_frozen_and_typed(tmp_path: Path) -> None:
    run = metactl.meta_train(data="glyphs", out=tmp_path / "run", quiet=True, **TINY)
    assert isinstance(run, library.TrainResult) and run.path == tmp_path / "run" and run.steps == 2
    assert [r["step"] for r in run.history()] == [1, 2]
    assert set(run.metrics) == {f"val/accuracy_step_{k}" for k in range(4)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.steps = 3  # type: ignore[misc]
    curves = metactl.evaluate(run, episodes=3, quiet=True)
    (curve,) = curves.runs
    assert curve.run == run.path and len(curve.mean) == 4 and curve.metric == "accuracy"
    assert '"command": "metactl.meta_train(' in (run.path / "metactl.json").read_text()  # the call, recorded as Python


@pytest.mark.parametrize(
    "command, function, args",
    [
        ("meta-train", "meta_train", ["--steps", "2", "--out", "r", "--log-to", "tensorboard"]),
        ("adapt", "adapt", ["--support", "s", "--from", "r", "--steps", "1"]),
        ("export", "export", ["--from", "a", "--quantize", "int8"]),
        ("evaluate", "evaluate", ["--from", "r", "--episodes", "7"]),
    ],
)
def test_each_command_calls_the_library_function(monkeypatch: pytest.MonkeyPatch, command: str, function: str, args: list[str]) -> None:
    """The CLI parses and prints; the work is the Python API's (no second code path)."""
    seen: dict[str, Any] = {}

    def spy(*a: Any, **k: Any) -> Any:
        seen.update(args=a, kwargs=k)
        raise MetactlError("stop here")

    monkeypatch.setattr(library, function, spy)
    if command == "evaluate":
        monkeypatch.setattr("metactl.cli.evaluate._check_run_dir", lambda run, positional: None)
    r = runner.invoke(app, [command, *args])
    assert r.exit_code == 1 and "Error: stop here" in r.output, r.output
    assert seen["kwargs"]["command"].startswith(f"metactl {command} ")
    if command == "meta-train":
        assert seen["kwargs"]["steps"] == 2 and seen["kwargs"]["log_to"] == ["tensorboard"]
    if command == "evaluate":
        assert seen["kwargs"]["episodes"] == 7 and [str(p) for p in seen["args"][0]] == ["r"]
