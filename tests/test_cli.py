from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metactl.cli import app

runner = CliRunner()
TINY = ["--steps", "3", "--meta-batch", "2", "--eval-every", "2", "--eval-episodes", "3", "--width", "8", "--query-shots", "2",
        "--checkpoint-every", "2", "--threads", "1"]  # fmt: skip


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _no_torch(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


INVOKE = (
    "import sys\nfrom typer.testing import CliRunner\nfrom metactl.cli import app\nr = CliRunner().invoke(app, {args!r})\nassert r.exit_code == 0, r.output\n"
)


def test_help_does_not_import_torch() -> None:
    code = INVOKE.format(args=["--help"]) + "assert 'meta-train' in r.output\nprint('torch' in sys.modules)"
    out = _no_torch(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_algorithms_lists_builtins_without_importing_torch() -> None:
    code = INVOKE.format(args=["algorithms"]) + "assert 'maml' in r.output and 'fomaml' in r.output, r.output\nprint('torch' in sys.modules)"
    out = _no_torch(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_console_script_and_module_entry() -> None:
    out = subprocess.run([sys.executable, "-m", "metactl", "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.startswith("metactl ")


def _train(tmp_path: Path, *args: str) -> tuple[Path, dict]:
    out = tmp_path / "run"
    result = runner.invoke(app, ["meta-train", *TINY, "--out", str(out), "--json", *args])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    return out, summary


def _check_run(out: Path, steps: int = 3) -> dict:
    from safetensors.torch import load_file

    meta = json.loads((out / "metactl.json").read_text())
    assert meta["status"] == "complete" and meta["steps_done"] == steps
    tensors = load_file(out / "theta.safetensors")
    assert any(k.startswith("inner_lr.") for k in tensors) and any(not k.startswith("inner_lr.") for k in tensors)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, steps + 1))
    assert "val" in lines[1]
    assert not list(out.glob(".*.tmp"))
    return meta


def test_meta_train_glyphs(tmp_path: Path) -> None:
    out, summary = _train(tmp_path)
    meta = _check_run(out)
    assert meta["data"]["kind"] == "glyphs" and meta["preprocessing"]["size"] == 28
    assert len(summary["validation"]) == 4  # steps 0..3


def test_meta_train_sinusoid(tmp_path: Path) -> None:
    out, summary = _train(tmp_path, "--data", "sinusoid", "--algo", "fomaml", "--shots", "5", "--inner-lr", "0.01")
    meta = _check_run(out)
    assert meta["task"] == "regression" and meta["model"]["kind"] == "mlp"
    assert summary["validation"][0]["mean"] > 0  # an MSE


def test_meta_train_folder_and_zip(tmp_path: Path, image_folder: Path) -> None:
    args = ["--ways", "2", "--shots", "1", "--query-shots", "2"]
    out, _ = _train(tmp_path, "--data", str(image_folder), *args)
    meta = _check_run(out)
    assert set(meta["split"]["train"]).isdisjoint(meta["split"]["val"])
    zpath = tmp_path / "d.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in image_folder.rglob("*.png"):
            z.write(f, f.relative_to(image_folder).as_posix())
    out2 = tmp_path / "zip-run"
    result = runner.invoke(app, ["meta-train", *TINY, *args, "--data", str(zpath), "--out", str(out2), "--rotations"])
    assert result.exit_code == 0, result.output
    assert "Validation" in result.output and str(out2.name) in result.output
    _check_run(out2)


def test_meta_train_omniglot_zip(tmp_path: Path, omniglot_dir: Path) -> None:
    out, _ = _train(tmp_path, "--data", str(omniglot_dir / "images_background.zip"), "--rotations")
    meta = _check_run(out)
    assert len(meta["split"]["train"]) + len(meta["split"]["val"]) == 964


def test_existing_out_needs_force_and_resume_continues(tmp_path: Path) -> None:
    out, _ = _train(tmp_path)
    again = runner.invoke(app, ["meta-train", *TINY, "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output and "Traceback" not in again.output
    more = [a if a != "3" else "5" for a in TINY[:2]] + TINY[2:]  # --steps 5
    resumed = runner.invoke(app, ["meta-train", *more, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    meta = json.loads((out / "metactl.json").read_text())
    assert meta["steps_done"] == 5
    forced = runner.invoke(app, ["meta-train", *TINY, "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output


def test_time_budget_stops_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["meta-train", *TINY[2:], "--steps", "100000", "--time-budget", "0.02", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "metactl.json").read_text())
    assert meta["stopped_by"] == "time-budget" and 0 < meta["steps_done"] < 100000
    assert (out / "theta.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--algo", "nope"], "Installed algorithms: anil, centroid, fomaml, imaml, maml, metasgd, pretrain, probe, protomaml"),
        (["--ways", "1"], "ways must be >= 2"),
        (["--data", "/no/such/dir"], "no such folder or file"),
        (["--config", "/no/such.toml"], "Config file not found"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_user_errors_are_one_line_exit_1(tmp_path: Path, args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["meta-train", *args])
    assert result.exit_code == 1
    assert expected in result.output, result.output
    assert "Traceback" not in result.output


def test_config_file_is_used_and_flags_override(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('algo = "fomaml"\nsteps = 2\nmeta_batch = 2\neval_every = 0\neval_episodes = 2\nwidth = 8\nquery_shots = 2\n')
    out = tmp_path / "run"
    result = runner.invoke(app, ["meta-train", "--config", str(cfg), "--steps", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "metactl.json").read_text())
    assert meta["config"]["algo"] == "fomaml" and meta["config"]["steps"] == 1 and meta["steps_done"] == 1


def test_evaluate_same_episodes_for_every_run(tmp_path: Path) -> None:
    out, _ = _train(tmp_path)
    js = tmp_path / "e.json"
    result = runner.invoke(app, ["evaluate", "--from", str(out), "--from", str(out), "--episodes", "4", "--steps", "2", "--json", str(js)])
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    a, b = data["runs"]
    assert a["steps"] == b["steps"] and [s["step"] for s in a["steps"]] == [0, 1, 2]
    assert set(a["steps"][0]) >= {"step", "mean", "ci95"}


def test_metactl_algorithms_env_restricts_and_broken_plugin_is_a_warning(tmp_path: Path) -> None:
    """METACTL_ALGORITHMS limits the entry points seen; a plugin whose module is missing is one warning line."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[metactl.algorithms]\nbroken = no_such_module_xyz:Algo\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    code = "from typer.testing import CliRunner\nfrom metactl.cli import app\nr = CliRunner().invoke(app, ['algorithms'])\nprint(r.exit_code)\nprint(r.output)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert out.stdout.splitlines()[0] == "0"
    assert "Warning:" in out.stdout and "broken" in out.stdout and "maml" in out.stdout
    env["METACTL_ALGORITHMS"] = "maml,anil"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert "maml" in out.stdout and "anil" in out.stdout and "fomaml" not in out.stdout and "broken" not in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "metactl", "meta-train", "--algo", "broken"],
        capture_output=True,
        text=True,
        env={**env, "METACTL_ALGORITHMS": ""},
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and "failed to import" in bad.stderr and "Traceback" not in bad.stderr


def test_evaluate_from_a_glob_of_snapshots(tmp_path: Path) -> None:
    """README: ``metactl evaluate --from RUN/snapshots/*``: the shell hands over ``--from a b c``; every run is evaluated, in order."""
    out, _ = _train(tmp_path, "--snapshot-every", "1", "--eval-every", "0")
    snaps = sorted(glob.glob(str(out / "snapshots" / "*")))  # what the shell expands RUN/snapshots/* to
    assert [Path(s).name for s in snaps] == ["step-0000001", "step-0000002", "step-0000003"]
    common = ["--episodes", "2", "--steps", "1", "--query-shots", "2"]
    globbed, repeated = tmp_path / "glob.json", tmp_path / "repeated.json"
    result = runner.invoke(app, ["evaluate", "--from", *snaps, *common, "--json", str(globbed)])
    assert result.exit_code == 0, result.output
    assert all(f"step-000000{k}" in result.output for k in (1, 2, 3))  # a table row per snapshot
    args = [a for s in snaps for a in ("--from", s)]
    assert runner.invoke(app, ["evaluate", *args, *common, "--json", str(repeated)]).exit_code == 0
    a, b = json.loads(globbed.read_text())["runs"], json.loads(repeated.read_text())["runs"]
    assert [r["run"] for r in a] == [r["run"] for r in b] == snaps
    assert [r["steps"] for r in a] == [r["steps"] for r in b]


def test_evaluate_extra_argument_that_is_not_a_run_is_one_line(tmp_path: Path) -> None:
    out, _ = _train(tmp_path, "--steps", "1")
    for bad, expected in ((tmp_path / "nope", "no such folder"), (tmp_path, "metactl.json missing")):
        result = runner.invoke(app, ["evaluate", "--from", str(out), str(bad), "--episodes", "2"])
        assert result.exit_code == 1, result.output
        assert expected in result.output and "more run dirs" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.skipif(torch_cuda_available(), reason="CUDA is available here: this checks the error without it")
@pytest.mark.parametrize("command", ["meta-train", "evaluate"])
def test_device_cuda_without_cuda_is_one_line(tmp_path: Path, command: str) -> None:
    if command == "evaluate":
        run, _ = _train(tmp_path, "--steps", "1", "--data", "sinusoid")
        args = ["evaluate", "--from", str(run), "--episodes", "2", "--device", "cuda"]
    else:
        run = tmp_path / "cuda-run"
        args = ["meta-train", *TINY, "--out", str(run), "--device", "cuda"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "--device cuda: no CUDA device" in result.output and "Use --device cpu" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert command == "evaluate" or not run.exists()  # meta-train refused before writing anything


def test_time_remaining_is_capped_by_the_time_budget() -> None:
    """A run whose step count is only a ceiling (``steps = 1000000`` with ``--time-budget``) shows what is
    left of the budget, not the step-rate estimate of hours; a task without a budget keeps the estimate."""
    import time

    from rich.progress import Progress

    from metactl.library import BudgetRemainingColumn

    column = BudgetRemainingColumn()
    progress = Progress(column)
    budgeted = progress.add_task("meta-train", total=1_000_000, budget=60.0)
    plain = progress.add_task("decoding", total=1_000_000)
    for task in (budgeted, plain):
        progress.update(task, completed=10)
    time.sleep(0.2)
    for task in (budgeted, plain):
        progress.update(task, completed=20)
    shown = [str(column.render(t)) for t in progress.tasks]
    h, m, s = (int(x) for x in shown[0].split(":"))
    assert 0 < 3600 * h + 60 * m + s <= 60
    assert progress.tasks[1].time_remaining is not None and progress.tasks[1].time_remaining > 3600
    assert int(shown[1].split(":")[0]) >= 1  # hours from the step rate
