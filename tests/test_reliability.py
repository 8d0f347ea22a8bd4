"""Bad input, interruptions and untrusted files: one clear line, exit 1, nothing lost, nothing executed."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from metactl.cli import app
from tests.conftest import write_image_folder

runner = CliRunner()
TINY = ["--meta-batch", "2", "--width", "8", "--query-shots", "2", "--eval-episodes", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rel")
    data = write_image_folder(root / "train", classes=6, per_class=6, size=16)
    run = root / "run"
    args = ["--data", str(data), "--ways", "2", "--shots", "1", "--steps", "2", "--eval-every", "0", *TINY]
    assert runner.invoke(app, ["meta-train", *args, "--out", str(run)]).exit_code == 0
    shots = root / "shots"
    for label in ("a", "b"):
        (shots / label).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(np.random.default_rng(j).integers(0, 255, (16, 16)).astype(np.uint8)).save(shots / label / f"{j}.png")
    adapted = root / "adapted"
    assert runner.invoke(app, ["adapt", "--support", str(shots), "--from", str(run), "--out", str(adapted)]).exit_code == 0
    export = root / "export"
    assert runner.invoke(app, ["export", "--from", str(adapted), "--out", str(export)]).exit_code == 0
    return {"root": root, "data": data, "run": run, "shots": shots, "adapted": adapted, "export": export}


class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _copy_run(ws: dict[str, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run-copy"
    shutil.copytree(ws["run"], run)
    return run


def _edit_json(path: Path, **changes: object) -> None:
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _case(kind: str, ws: dict[str, Path], tmp: Path) -> tuple[list[str], str]:
    """Build one bad input; return (argv, expected message part)."""
    shots, run, adapted = ws["shots"], ws["run"], ws["adapted"]
    out = ["--out", str(tmp / "out")]
    if kind == "support-symlink-loop":
        s = tmp / "s"
        shutil.copytree(shots, s)
        (s / "c").symlink_to(s / "c")
        return ["adapt", "--support", str(s), "--from", str(run), *out], "symbolic link loop"
    if kind == "support-broken-link":
        s = tmp / "s"
        shutil.copytree(shots, s)
        (s / "a" / "gone.png").symlink_to(tmp / "nowhere.png")
        return ["adapt", "--support", str(s), "--from", str(run), *out], "gone.png: broken symbolic link"
    if kind == "support-case-only-labels":
        s = tmp / "s"
        shutil.copytree(shots, s)
        shutil.copytree(s / "a", s / "A")
        return ["adapt", "--support", str(s), "--from", str(run), *out], "differ only in case"
    if kind == "support-not-a-file":
        s = tmp / "s"
        shutil.copytree(shots, s)
        (s / "a" / "folder.png").mkdir()
        return ["adapt", "--support", str(s), "--from", str(run), *out], "folder.png: not a readable file"
    if kind == "from-not-a-run":
        (tmp / "empty").mkdir()
        return ["adapt", "--support", str(shots), "--from", str(tmp / "empty"), *out], "metactl.json missing"
    if kind == "from-adapted-given-to-adapt":
        return ["adapt", "--support", str(shots), "--from", str(adapted), *out], "not a meta-training run"
    if kind == "from-run-given-to-export":
        return ["export", "--from", str(run), *out], "not an adapted model"
    if kind == "from-missing":
        return ["export", "--from", str(tmp / "nope"), *out], "no such folder"
    if kind == "newer-version":
        r = _copy_run(ws, tmp)
        _edit_json(r / "metactl.json", metactl_version="9.0.0")
        return ["adapt", "--support", str(shots), "--from", str(r), *out], "cannot read"
    if kind == "other-model-weights":
        r = _copy_run(ws, tmp)
        meta = json.loads((r / "metactl.json").read_text())
        meta["model"]["width"] = 16
        (r / "metactl.json").write_text(json.dumps(meta))
        return ["adapt", "--support", str(shots), "--from", str(r), *out], "do not match the model"
    if kind == "truncated-safetensors":
        r = _copy_run(ws, tmp)
        data = (r / "theta.safetensors").read_bytes()
        (r / "theta.safetensors").write_bytes(data[: len(data) // 2])
        return ["adapt", "--support", str(shots), "--from", str(r), *out], "theta.safetensors: not a readable safetensors file"
    if kind == "garbage-safetensors":
        r = _copy_run(ws, tmp)
        (r / "theta.safetensors").write_bytes(b"\x00" * 100)
        return ["adapt", "--support", str(shots), "--from", str(r), *out], "not a safetensors file"
    if kind == "pickle-as-safetensors":
        r = _copy_run(ws, tmp)
        (r / "theta.safetensors").write_bytes(pickle.dumps(Evil(tmp / "PWNED")))
        return ["adapt", "--support", str(shots), "--from", str(r), *out], "metactl never loads pickles"
    if kind == "torch-save-as-safetensors":
        import torch

        r = _copy_run(ws, tmp)
        torch.save({"x": torch.zeros(2)}, r / "theta.safetensors")
        return ["adapt", "--support", str(shots), "--from", str(r), *out], "metactl never loads pickles"
    if kind == "damaged-json":
        r = _copy_run(ws, tmp)
        (r / "metactl.json").write_text("{not json")
        return ["adapt", "--support", str(shots), "--from", str(r), *out], "not valid JSON"
    if kind == "corrupt-onnx":
        (tmp / "bad.onnx").write_bytes(b"not an onnx model at all")
        return ["predict", str(tmp / "bad.onnx"), str(shots)], "not a loadable ONNX model"
    if kind == "onnx-without-labels":
        import onnx

        proto = onnx.load(str(ws["export"] / "model.onnx"))
        del proto.metadata_props[:]
        onnx.save(proto, str(tmp / "nolabels.onnx"))
        return ["predict", str(tmp / "nolabels.onnx"), str(shots)], "no 'labels' metadata"
    if kind == "toml-many-problems":
        (tmp / "c.toml").write_text('wayz = 5\nways = 1\nmeta_batch = "x"\nrotations = true\ndata = "sinusoid"\n')
        return ["meta-train", "--config", str(tmp / "c.toml"), *out], "unknown key 'wayz'; meta_batch must be int"
    if kind == "toml-invalid-values":
        (tmp / "c.toml").write_text("ways = 1\ninner_lr = -2.0\n")
        return ["meta-train", "--config", str(tmp / "c.toml"), *out], "ways must be >= 2 (got 1); inner-lr must be >= 0"
    if kind == "resume-and-force":
        return ["meta-train", "--out", str(run), "--resume", "--force"], "contradict"
    if kind == "rotations-with-sinusoid":
        return ["meta-train", "--data", "sinusoid", "--rotations", *out], "rotations apply to image data"
    if kind == "resume-without-checkpoint":
        (tmp / "o").mkdir()
        return ["meta-train", "--out", str(tmp / "o"), "--resume"], "no checkpoint"
    if kind == "out-is-not-a-run":
        (tmp / "mine").mkdir()
        (tmp / "mine" / "thesis.tex").write_text("precious")
        return ["meta-train", "--out", str(tmp / "mine"), "--force", *TINY, "--steps", "1"], "refusing to replace it"
    raise AssertionError(kind)


BAD_INPUTS = [
    "support-symlink-loop", "support-broken-link", "support-case-only-labels", "support-not-a-file",
    "from-not-a-run", "from-adapted-given-to-adapt", "from-run-given-to-export", "from-missing", "newer-version",
    "other-model-weights", "truncated-safetensors", "garbage-safetensors", "pickle-as-safetensors", "torch-save-as-safetensors",
    "damaged-json", "corrupt-onnx", "onnx-without-labels", "toml-many-problems", "toml-invalid-values", "resume-and-force",
    "rotations-with-sinusoid", "resume-without-checkpoint", "out-is-not-a-run",
]  # fmt: skip


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_clear_line(ws: dict[str, Path], tmp_path: Path, kind: str) -> None:
    argv, expected = _case(kind, ws, tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = runner.invoke(app, argv)
    assert result.exit_code == 1, result.output
    flat = result.output.replace("\n", "")
    assert expected in flat, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("Error:") == 1
    assert not (tmp_path / "out").exists()  # nothing written
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "PWNED").exists()


def test_crafted_pickle_is_never_executed(tmp_path: Path) -> None:
    from metactl.errors import MetactlError
    from metactl.runs import load_tensors

    marker = tmp_path / "PWNED"
    for name in ("theta.safetensors", "model.safetensors", "checkpoint.safetensors"):
        f = tmp_path / name
        for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
            f.write_bytes(pickle.dumps(Evil(marker), protocol=protocol))
            with pytest.raises(MetactlError):
                load_tensors(f)
    assert not marker.exists()
    # the payload is real: unpickling it would have created the marker
    pickle.loads(pickle.dumps(Evil(marker)))
    assert marker.exists()


def test_no_torch_load_of_user_files() -> None:
    root = Path(__file__).resolve().parents[1] / "metactl"
    offenders = [p for p in root.rglob("*.py") if "torch.load(" in p.read_text() or "pickle.load" in p.read_text()]
    assert offenders == []


def _train_cmd(out: Path, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "metactl", "meta-train", "--data", "sinusoid", "--shots", "5", "--inner-lr", "0.01",
            "--steps", str(steps), "--meta-batch", "4", "--width", "16", "--eval-every", "0", "--eval-episodes", "2",
            "--checkpoint-every", "20", "--threads", "1", "--out", str(out), *extra]  # fmt: skip


KILL_AT = """
import os, signal, sys
from pathlib import Path
from metactl.config import TrainConfig
from metactl.train import Reporter, meta_train
cfg = TrainConfig(data="sinusoid", shots=5, inner_lr=0.01, steps=60, meta_batch=4, width=16, eval_every=0,
                  eval_episodes=2, checkpoint_every=20, threads=1)
def step(s, rec):
    if s == 47:
        os.kill(os.getpid(), signal.SIGKILL)
meta_train(cfg, out=Path(sys.argv[1]), report=Reporter(step=step))
"""


def test_kill_9_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """README "reaches exactly the θ an uninterrupted run reaches (tested bit for bit)", after kill -9."""
    from safetensors.torch import load_file

    full = tmp_path / "full"
    assert subprocess.run(_train_cmd(full, 60), capture_output=True, timeout=300, check=False).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_AT, str(killed)], capture_output=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((killed / "checkpoint.json").read_text())["step"] == 40  # at most one interval lost
    assert not (killed / "theta.safetensors").exists()
    # resume needs only --out: the run's recorded settings are reused
    resumed = subprocess.run([sys.executable, "-m", "metactl", "meta-train", "--out", str(killed), "--resume"], capture_output=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(full / "theta.safetensors"), load_file(killed / "theta.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path: Path) -> None:
    """A real SIGINT to a `metactl meta-train` process: exit 130, a checkpoint at the last logged step, and
    --resume reaches the uninterrupted run's θ bit for bit (README "tested bit for bit")."""
    from metactl.config import TrainConfig
    from metactl.runs import load_tensors
    from metactl.train import meta_train

    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(out, 10**6), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    ckpt = json.loads((out / "checkpoint.json").read_text())
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert ckpt["step"] == last > 0
    resumed = subprocess.run([sys.executable, "-m", "metactl", "meta-train", "--out", str(out), "--resume", "--steps", str(last + 3)],
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "metactl.json").read_text())["steps_done"] == last + 3
    # the same settings as _train_cmd, uninterrupted
    cfg = TrainConfig(data="sinusoid", shots=5, inner_lr=0.01, steps=last + 3, meta_batch=4, width=16, eval_every=0, eval_episodes=2,
                      checkpoint_every=20, threads=1)  # fmt: skip
    full = meta_train(cfg, out=tmp_path / "full").path
    a, b = load_tensors(full / "theta.safetensors"), load_tensors(out / "theta.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from metactl import files, runs
    from metactl.config import TrainConfig
    from metactl.errors import MetactlError
    from metactl.train import meta_train

    real = files._atomic_write
    calls = {"n": 0}

    def flaky(path: Path, data: bytes) -> None:
        if path.name == "checkpoint.safetensors":
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(files, "_atomic_write", flaky)
    cfg = TrainConfig(data="sinusoid", shots=5, inner_lr=0.01, steps=10, meta_batch=2, width=8, eval_every=0, eval_episodes=2, checkpoint_every=3, threads=1)
    out = tmp_path / "run"
    with pytest.raises(MetactlError, match=r"No space left on device.*previous version of the file is unchanged"):
        meta_train(cfg, out=out)
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 3
    assert runs.load_tensors(out / "checkpoint.safetensors")  # intact and readable
    assert not list(out.glob(".*.tmp"))


def test_force_replaces_only_when_the_new_run_is_complete(ws: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import metactl.train as train
    from metactl.config import TrainConfig

    run = tmp_path / "run"
    shutil.copytree(ws["run"], run)
    before = (run / "theta.safetensors").read_bytes()
    cfg = TrainConfig(data=str(ws["data"]), ways=2, shots=1, query_shots=2, steps=3, meta_batch=2, width=8, eval_every=0, eval_episodes=2, threads=1)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(train.runs, "save_tensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.meta_train(cfg, out=run, force=True)
    assert (run / "theta.safetensors").read_bytes() == before  # the old run is untouched
    monkeypatch.undo()
    train.meta_train(cfg, out=run, force=True)
    assert (run / "theta.safetensors").read_bytes() != before
    assert json.loads((run / "metactl.json").read_text())["steps_done"] == 3
    assert not (tmp_path / ".run.partial").exists() and not (tmp_path / ".run.old").exists()


def test_non_finite_steps_are_skipped_then_training_stops(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["meta-train", "--data", "sinusoid", "--shots", "5", "--inner-lr", "1e30", "--steps", "50", "--max-bad-steps", "3"]
    result = runner.invoke(app, [*args, *TINY, "--eval-every", "0", "--out", str(out)])
    assert result.exit_code == 1
    flat = result.output.replace("\n", "")
    assert "3 meta-steps in a row had a non-finite loss" in flat and "--inner-lr" in flat and "--meta-lr" in flat
    meta = json.loads((out / "metactl.json").read_text())
    assert meta["stopped_by"] == "non-finite" and meta["steps_done"] == 3 and meta["skipped_steps"] == 3
    from safetensors.torch import load_file

    theta = load_file(out / "theta.safetensors")
    assert all(bool(v.isfinite().all()) for v in theta.values())  # the last good θ


def test_labels_never_become_paths(ws: dict[str, Path], tmp_path: Path) -> None:
    """Labels are only ever JSON strings: odd names write nothing outside --out."""
    shots = tmp_path / "shots"
    for label in ("..", "…", "a b", "$(touch x)", "-rf"):
        if label == "..":
            continue  # cannot be a folder name; listed to document the case
        (shots / label).mkdir(parents=True)
        Image.new("L", (16, 16), 200).save(shots / label / "0.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["adapt", "--support", str(shots), "--from", str(ws["run"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["metactl.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "shots"]


def test_rich_markup_in_labels_and_paths_is_printed_literally(ws: dict[str, Path], tmp_path: Path) -> None:
    shots = tmp_path / "[bold]shots[/]"
    for label in ("[red]a", "[/i]b"[2:] + "[i]"):
        (shots / label).mkdir(parents=True)
        Image.new("L", (16, 16), 100 if label.startswith("[") else 200).save(shots / label / "0.png")
    out = tmp_path / "out[/x]"
    result = runner.invoke(app, ["adapt", "--support", str(shots), "--query", str(shots), "--from", str(ws["run"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "[red]a" in result.output and "]b[i]" in result.output and "out[/x]" in result.output.replace("\n", "")
    bad = runner.invoke(app, ["adapt", "--support", str(tmp_path / "[/nope]"), "--from", str(ws["run"])])
    assert bad.exit_code == 1 and "[/nope]" in bad.output and "Traceback" not in bad.output
