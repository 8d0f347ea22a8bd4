"""The probe solved inside adapt.onnx (metactl.adapt_probe) against torch's L-BFGS fit (metactl.algorithms.probe)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from metactl.adapt_graph import adapt_model
from metactl.adapt_spec import HeadAdaptation
from metactl.algorithms.probe import fit_logistic

TOL = 1e-4  # max |Δ| over the scaled head (W and b)
SCALE = 2.5


def sentence_like(classes: int, shots: int, dim: int = 384, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors clustered around class means that share a common direction (as sentence embeddings do)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    means = 1.5 * common / np.linalg.norm(common) + rng.normal(size=(classes, dim)) / np.sqrt(dim)
    x = np.repeat(means, shots, axis=0) + 0.8 * rng.normal(size=(classes * shots, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(classes), shots)


def image_like(classes: int = 10, shots: int = 5, dim: int = 64, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative (ReLU) features of norms ~5–20."""
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(128, dim)) / np.sqrt(128)
    x = np.repeat(rng.normal(size=(classes, 128)), shots, axis=0) + 0.8 * rng.normal(size=(classes * shots, 128))
    f = np.maximum(x @ proj, 0.0)
    f *= rng.uniform(0.5, 1.5, size=(len(f), 1)) * 10.0 / np.linalg.norm(f, axis=1).mean()
    return f.astype(np.float32), np.repeat(np.arange(classes), shots)


def run_graph(
    spec: HeadAdaptation, feats: np.ndarray, labels: np.ndarray, other: HeadAdaptation | None = None, trained: int = 999
) -> tuple[np.ndarray, np.ndarray]:
    model = adapt_model(spec, other or spec, trained_classes=trained, dim=feats.shape[1])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    w, b = sess.run(["weight", "bias"], {"features": feats, "labels": labels.astype(np.int64)})
    assert w.dtype == np.float32 and w.shape == (int(labels.max()) + 1, feats.shape[1])
    return w, b


def torch_probe(feats: np.ndarray, labels: np.ndarray, c: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``fit_logistic`` (max_iter=100, as the probe runs it) times ``scale``."""
    w, b = fit_logistic(torch.from_numpy(feats).double(), torch.from_numpy(labels), int(labels.max()) + 1, c, max_iter=100)
    return scale * w.numpy(), scale * b.numpy()


def max_diff(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def objective_gradient(feats: np.ndarray, labels: np.ndarray, w: np.ndarray, b: np.ndarray, c: float) -> float:
    """max |∇| of mean cross-entropy + ‖W‖² / (2 C n) at (W, b), in float64 (zero at the optimum)."""
    f, n = feats.astype(np.float64), len(labels)
    z = f @ w.astype(np.float64).T + b.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    r = (p / p.sum(1, keepdims=True) - np.eye(w.shape[0])[labels]) / n
    return float(max(np.abs(r.T @ f + w / (c * n)).max(), np.abs(r.sum(0)).max()))


@pytest.mark.parametrize("c", [1.0, 10.0])
def test_sentence_like_matches_torch(c: float) -> None:
    feats, labels = sentence_like(20, 5)
    got = run_graph(HeadAdaptation("probe", probe_c=c, scale=SCALE), feats, labels)
    assert max_diff(got, torch_probe(feats, labels, c, SCALE)) <= TOL


def test_one_shot_matches_torch() -> None:
    feats, labels = sentence_like(5, 1, seed=2)
    got = run_graph(HeadAdaptation("probe", probe_c=10.0, scale=SCALE), feats, labels)
    assert max_diff(got, torch_probe(feats, labels, 10.0, SCALE)) <= TOL


@pytest.mark.parametrize("c", [1.0, 10.0])
def test_image_like_matches_torch(c: float) -> None:
    """Non-negative features of norms 5–20 (Conv-4-like): the graph's head equals the probe's own (``fit_logistic``,
    which runs until its gradient is ≤ 1e-9) within the tolerance, and it satisfies the optimality condition."""
    feats, labels = image_like()
    w, b = run_graph(HeadAdaptation("probe", probe_c=c, scale=SCALE), feats, labels)
    tw, tb = torch_probe(feats, labels, c, SCALE)
    assert float(np.abs(w - tw).max()) <= TOL
    assert float(np.abs(b - tb).max()) <= TOL
    assert objective_gradient(feats, labels, w / SCALE, b / SCALE, c) <= 2e-8  # measured 2e-10–3e-9


def test_wrong_c_fails() -> None:
    feats, labels = sentence_like(20, 5)
    got = run_graph(HeadAdaptation("probe", probe_c=13.0, scale=SCALE), feats, labels)
    assert max_diff(got, torch_probe(feats, labels, 10.0, SCALE)) > 10 * TOL


def test_fixed_iterations_and_if_branches() -> None:
    """``probe_iterations`` caps the loop (a few iterations: far from the optimum); a probe in each branch of the
    class-count ``If`` (unique names) picks the C of its branch."""
    feats, labels = sentence_like(20, 5)
    few = run_graph(HeadAdaptation("probe", probe_c=10.0, scale=SCALE, probe_iterations=3), feats, labels)
    assert max_diff(few, torch_probe(feats, labels, 10.0, SCALE)) > 10 * TOL
    same, other = HeadAdaptation("probe", probe_c=10.0, scale=SCALE), HeadAdaptation("probe", probe_c=1.0, scale=1.5)
    assert max_diff(run_graph(same, feats, labels, other, trained=20), torch_probe(feats, labels, 10.0, SCALE)) <= TOL
    sub = labels < 5
    assert max_diff(run_graph(same, feats[sub], labels[sub], other, trained=20), torch_probe(feats[sub], labels[sub], 1.0, 1.5)) <= TOL


def test_no_torch_import() -> None:
    code = "import sys, metactl.adapt_probe; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
