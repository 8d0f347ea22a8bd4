"""Shared fixtures, and CI's strictness about skips.

The real-data tests read ``../shared/datasets`` and ``../shared/models`` (beside the repository;
``METACTL_OMNIGLOT``, ``METACTL_ONESHOT_RUNS``, ``METACTL_INTENTS`` and ``METACTL_MINILM`` point
elsewhere). Outside CI a missing dataset is a skip, listed with its reason (``-rs`` in the pytest
addopts). With ``CI`` set (CI runs a fresh clone with shared/ beside it) a missing dataset is an
error, and any skip whose reason is not in ``CI_ALLOWED_SKIPS`` makes the run exit non-zero: a
real-data test cannot silently not run in CI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from metactl.testing import make_image_folder

if TYPE_CHECKING:
    import torch

    from metactl.api import Learner, TaskBatch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
OMNIGLOT = Path(os.environ.get("METACTL_OMNIGLOT", SHARED / "omniglot"))
ONESHOT_RUNS = Path(os.environ.get("METACTL_ONESHOT_RUNS", SHARED / "omniglot_oneshot_runs"))
INTENTS = Path(os.environ.get("METACTL_INTENTS", SHARED / "intents"))
MINILM = Path(os.environ.get("METACTL_MINILM", SHARED.parent / "models" / "all-MiniLM-L6-v2"))
# skips CI accepts: tests that need hardware CI does not have (a case-insensitive substring of the reason)
CI_ALLOWED_SKIPS = ("cuda",)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def write_image_folder(root: Path, classes: int = 6, per_class: int = 6, size: int = 20, seed: int = 0) -> Path:
    """A tiny Omniglot-shaped tree of PNGs (dark ink on white)."""
    return make_image_folder(root, classes, per_class, size, seed, ink=0.2, omniglot_layout=True)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data")


def _real_data(path: Path, what: str, env: str) -> Path:
    if not path.is_file():
        message = f"{what} not found at {path} (set {env}, or put shared/datasets beside the repository)"
        if in_ci():
            pytest.fail(f"CI must run the real-data tests: {message}", pytrace=False)
        pytest.skip(message)
    return path.parent


@pytest.fixture
def omniglot_dir() -> Path:
    return _real_data(OMNIGLOT / "images_background.zip", "Omniglot", "METACTL_OMNIGLOT")


@pytest.fixture
def oneshot_runs_zip() -> Path:
    """Lake et al.'s real ``all_runs.zip`` (the 20 one-shot runs)."""
    return _real_data(ONESHOT_RUNS / "all_runs.zip", "Omniglot one-shot runs", "METACTL_ONESHOT_RUNS") / "all_runs.zip"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained sentence encoder ``all-MiniLM-L6-v2`` (a sentence-transformers folder)."""
    return _real_data(MINILM / "model.safetensors", "all-MiniLM-L6-v2", "METACTL_MINILM")


@pytest.fixture(scope="session")
def intents_dir() -> Path:
    """The intents root (``clinc150/``, ``banking77/``, ``hwu64/``)."""
    return _real_data(INTENTS / "clinc150" / "data_full.json", "The intents datasets", "METACTL_INTENTS").parent


def drift_the_exported_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on ``export`` writes a graph that computes something else than torch (the head's first
    bias shifted by 0.5): what its parity check must refuse."""
    import copy

    import torch

    from metactl import export as export_mod

    original = export_mod._onnx_bytes

    def drifted(module: Any, metadata: dict[str, str]) -> bytes:
        other = copy.deepcopy(module)
        with torch.no_grad():
            other.model.head.bias[0] += 0.5
        return original(other, metadata)

    monkeypatch.setattr(export_mod, "_onnx_bytes", drifted)


# --- gradient checks ------------------------------------------------------------------------------


def meta_objective(learner: Learner, batch: TaskBatch, steps: int) -> float:
    """The meta-objective (1/B) Σ L_query(ϕᵢ(θ, α)) as a plain number: ``steps`` inner steps from θ."""
    import torch

    from metactl.inner import inner_loop

    total = 0.0
    with torch.enable_grad():
        for i in range(len(batch)):
            sx, sy, qx, qy = batch.task(i)
            phi = inner_loop(learner, learner.params, sx, sy, steps, second_order=False)
            total += float(learner.loss(learner.predict_query(phi, sx, qx), qy).detach())
    return total / len(batch)


def central_difference(f: Callable[[], float], flat: torch.Tensor, j: int, eps: float = 1e-6) -> float:
    """(f with ``flat[j]`` + eps − f with ``flat[j]`` − eps) / 2 eps; ``flat[j]`` is restored."""
    old = float(flat[j])
    flat[j] = old + eps
    up = f()
    flat[j] = old - eps
    down = f()
    flat[j] = old
    return (up - down) / (2 * eps)


Objective = Callable[["Learner", "TaskBatch", int], float]


def finite_difference(
    learner: Learner, batch: TaskBatch, steps: int, tensors: dict[str, torch.Tensor], objective: Objective = meta_objective, eps: float = 1e-6
) -> dict[str, torch.Tensor]:
    """d objective / d t by central differences at every coordinate of every tensor of ``tensors``."""
    import torch

    grads = {}
    for name, t in tensors.items():
        g = torch.zeros_like(t)
        flat = t.data.view(-1)
        for j in range(flat.numel()):
            g.view(-1)[j] = central_difference(lambda: objective(learner, batch, steps), flat, j, eps)
        grads[name] = g
    return grads


# --- CI: no silent skips -------------------------------------------------------------------------

_skips: list[tuple[str, str]] = []  # (test id, reason)


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _record(report: Any) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append((report.nodeid, _skip_reason(report)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record(report)


def _forbidden_skips() -> list[tuple[str, str]]:
    return [(node, reason) for node, reason in _skips if not any(a in reason.lower() for a in CI_ALLOWED_SKIPS)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if in_ci() and _forbidden_skips() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    forbidden = _forbidden_skips() if in_ci() else []
    if forbidden:
        terminalreporter.section("skips not allowed in CI", sep="=", red=True, bold=True)
        for node, reason in forbidden:
            terminalreporter.write_line(f"{node}: {reason}")
        allowed = ", ".join(CI_ALLOWED_SKIPS)
        terminalreporter.write_line(f"CI is set: {len(forbidden)} skipped test(s) make this run fail (allowed: skip reasons mentioning {allowed}).")
