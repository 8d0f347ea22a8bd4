"""Data-parallel meta-training: 2 CPU processes (gloo) reach the θ of 1 process; a dead rank never hangs the others."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import write_image_folder

ENV = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


def _args(data: Path, out: Path, steps: int = 4) -> list[str]:
    return ["meta-train", "--data", str(data), "--ways", "2", "--shots", "1", "--query-shots", "2", "--steps", str(steps),
            "--meta-batch", "4", "--width", "8", "--eval-every", "0", "--eval-episodes", "2", "--checkpoint-every", "2",
            "--out", str(out)]  # fmt: skip


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, check=False)


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a / "theta.safetensors"), load_file(b / "theta.safetensors")
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dist")
    data = write_image_folder(root / "data", classes=6, per_class=6, size=16)
    out = root / "one"
    r = _run([sys.executable, "-m", "metactl", *_args(data, out), "--threads", "1"])
    assert r.returncode == 0, r.stderr
    return data, out


def test_nproc_2_equals_one_process(single: tuple[Path, Path], tmp_path: Path) -> None:
    data, one = single
    out = tmp_path / "two"
    r = _run([sys.executable, "-m", "metactl", *_args(data, out), "--nproc", "2"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert _max_diff(one, out) <= 1e-5
    meta = json.loads((out / "metactl.json").read_text())
    assert meta["workers"] == 2 and meta["steps_done"] == 4
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]  # rank 0 alone logs


def test_torchrun_equals_one_process(single: tuple[Path, Path], tmp_path: Path) -> None:
    data, one = single
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "metactl", *_args(data, out), "--threads", "1"]
    r = _run(cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _max_diff(one, out) <= 1e-5


def test_distributed_resume(single: tuple[Path, Path], tmp_path: Path) -> None:
    data, one = single
    out = tmp_path / "resumed"
    r = _run([sys.executable, "-m", "metactl", *_args(data, out, steps=2), "--nproc", "2"])
    assert r.returncode == 0, r.stderr
    r = _run([sys.executable, "-m", "metactl", "meta-train", "--out", str(out), "--resume", "--steps", "4", "--nproc", "2"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert _max_diff(one, out) <= 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_rank_stops_the_others(tmp_path: Path) -> None:
    """Two ranks started by hand (as a cluster launcher would); SIGKILL rank 1: rank 0 exits non-zero, fast."""
    out = tmp_path / "run"
    port = _free_port()
    cmd = [sys.executable, "-m", "metactl", "meta-train", "--data", "sinusoid", "--shots", "5", "--inner-lr", "0.01", "--steps", "1000000",
           "--meta-batch", "4", "--width", "16", "--eval-every", "0", "--eval-episodes", "2", "--threads", "1", "--out", str(out)]  # fmt: skip
    procs = []
    for rank in (0, 1):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.05)
        assert (out / "metrics.jsonl").is_file(), procs[0].communicate(timeout=5)
        procs[1].send_signal(signal.SIGKILL)
        t = time.time()
        _, err = procs[0].communicate(timeout=90)
        assert procs[0].returncode not in (0, None)
        assert time.time() - t < 60
        assert "another worker stopped" in err.replace("\n", " ") and "Traceback" not in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
