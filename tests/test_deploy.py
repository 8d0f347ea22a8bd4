"""Deployment checked against independent references: a plain onnxruntime session, hand-written formulas.

README claims backed here (the others are in test_adapt_export.py):
- "export fails above 1e-4"                      -> test_export_refuses_a_file_that_differs_from_torch
- "`metactl predict` gives torch's label"        -> test_predict_names_the_right_label_for_each_file
- "the deployed model computes exactly what was validated" -> test_deployed_onnx_equals_validation
- "`--steps` defaults to ... `adapt_steps`"      -> test_adapt_defaults_to_the_runs_adapt_steps
- "the head ... zero-initialised ... first step moves each row towards its label's features"
                                                 -> test_head_for_a_different_number_of_labels
- "`--device cuda` ... a clear error where torch sees no GPU" -> test_device_cuda_without_a_gpu_is_one_line_error
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from metactl.cli import app
from tests.conftest import drift_the_exported_graph, write_image_folder

runner = CliRunner()
SIZE = 28
TRAIN = ["--ways", "3", "--shots", "2", "--query-shots", "2", "--steps", "3", "--meta-batch", "2", "--width", "8", "--test-inner-steps", "2"]


def _shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 drawing, dark ink on white: visibly different shapes per kind, jittered per image."""
    ink = np.zeros((SIZE, SIZE), bool)
    dy, dx = rng.integers(-2, 3, 2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if kind == "bars":  # three horizontal bars
        for row in (7, 13, 19):
            ink[row + dy : row + dy + 2, 4:24] = True
    elif kind == "columns":  # three vertical bars
        for col in (7, 13, 19):
            ink[4:24, col + dx : col + dx + 2] = True
    elif kind == "ring":
        r = np.hypot(yy - 14 - dy, xx - 14 - dx)
        ink = (r > 6) & (r < 9)
    elif kind == "cross":
        ink = (np.abs((yy - dy) - (xx - dx)) < 2) | (np.abs((yy - dy) + (xx - dx) - SIZE) < 2)
    elif kind == "blob":
        ink = np.hypot(yy - 14 - dy, xx - 14 - dx) < 5
    ink ^= rng.random((SIZE, SIZE)) > 0.98
    return np.where(ink, 0, 255).astype(np.uint8)


def _folder(root: Path, kinds: list[str], per: int | list[int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    counts = per if isinstance(per, list) else [per] * len(kinds)
    for kind, n in zip(kinds, counts, strict=True):
        (root / kind).mkdir(parents=True)
        for j in range(n):
            Image.fromarray(_shape(kind, rng)).save(root / kind / f"{j}.png")
    return root


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def _pixels(files: list[Path]) -> np.ndarray:
    """What a client sends: the file decoded to grayscale (already 28x28), as float32 NCHW."""
    return np.stack([np.asarray(Image.open(f).convert("L"), np.float32) for f in files])[:, None]


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _onnx_labels(path: Path) -> list[str]:
    import onnx

    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["labels"])


def _ok(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return result


def _train(root: Path, algo: str = "maml") -> Path:
    data = root / "train-data"
    if not data.exists():
        write_image_folder(data, classes=8, per_class=8, size=20, seed=1)
    run = root / f"run-{algo}"
    _ok(runner.invoke(app, ["meta-train", "--algo", algo, "--data", str(data), *TRAIN, "--eval-every", "0", "--eval-episodes", "2", "--out", str(run)]))
    return run


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deploy")
    kinds = ["bars", "columns", "ring"]
    return {"root": root, "run": _train(root), "support": _folder(root / "support", kinds, 3, seed=10), "query": _folder(root / "query", kinds, 3, seed=11)}


@pytest.fixture(scope="module")
def exported(ws: dict[str, Path]) -> Path:
    adapted, export = ws["root"] / "adapted", ws["root"] / "export"
    args = ["--support", str(ws["support"]), "--query", str(ws["query"]), "--steps", "8", "--out", str(adapted)]
    _ok(runner.invoke(app, ["adapt", "--from", str(ws["run"]), *args]))
    _ok(runner.invoke(app, ["export", "--from", str(adapted), "--out", str(export)]))
    return export / "model.onnx"


def test_predict_names_the_right_label_for_each_file(ws: dict[str, Path], exported: Path) -> None:
    """Every query file gets its folder's label, and the label of the argmax of a plain onnxruntime session."""
    files = _files(ws["query"])
    r = _ok(runner.invoke(app, ["predict", str(exported), str(ws["query"]), "--json", "--top-k", "3"]))
    results = {Path(x["file"]): x for x in json.loads(r.output)}
    assert sorted(results) == files
    probs = _session(exported).run(["probabilities"], {"pixels": _pixels(files)})[0]
    labels = _onnx_labels(exported)
    assert labels == ["bars", "columns", "ring"]
    for f, p in zip(files, probs, strict=True):
        got = results[f]
        assert got["label"] == f.parent.name, (f, got)  # the right answer: the model is clearly right on these shapes
        assert got["label"] == labels[int(p.argmax())] and got["probability"] == pytest.approx(float(p.max()), abs=1e-6)
        assert [t["label"] for t in got["top_k"]] == [labels[i] for i in np.argsort(-p)]
        np.testing.assert_allclose([t["probability"] for t in got["top_k"]], np.sort(p)[::-1], atol=1e-6)


def _validation_probs(run: Path, support: Path, query: Path, steps: int) -> tuple[np.ndarray, list[str]]:
    """What validation/evaluate measures: adapt θ on the support with the run's algorithm, then
    ``predict_query`` (queries normalised with support statistics). Inputs read here: ink bright, [0, 1]."""
    import torch

    from metactl.config import TrainConfig
    from metactl.registry import load_algorithm, make_config
    from metactl.runs import load_run

    meta, learner = load_run(run)
    cls = load_algorithm(meta["algorithm"]["name"])
    algo = cls(make_config(cls, meta["algorithm"].get("config", {})), TrainConfig(**meta["config"]))
    labels = sorted(p.name for p in support.iterdir())
    sfiles = _files(support)
    sx = torch.from_numpy(255.0 - _pixels(sfiles)) / 255.0
    sy = torch.tensor([labels.index(f.parent.name) for f in sfiles])
    qx = torch.from_numpy(255.0 - _pixels(_files(query))) / 255.0
    phi = algo.adapt(learner, sx, sy, steps)[-1]
    with torch.no_grad():
        return torch.softmax(learner.predict_query(phi, sx, qx), -1).numpy(), labels


def test_deployed_onnx_equals_validation(ws: dict[str, Path], exported: Path) -> None:
    """maml: the exported ONNX model's query probabilities are validation's, and its accuracy is the one `adapt --query` reported."""
    expected, labels = _validation_probs(ws["run"], ws["support"], ws["query"], 8)
    files = _files(ws["query"])
    got = _session(exported).run(["probabilities"], {"pixels": _pixels(files)})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    target = np.array([labels.index(f.parent.name) for f in files])
    reported = json.loads((exported.parent.parent / "adapted" / "metactl.json").read_text())["query_accuracy"]
    assert reported == float((got.argmax(-1) == target).mean()) == float((expected.argmax(-1) == target).mean())


@pytest.mark.parametrize("algo", ["anil", "metasgd"])
def test_adapted_model_equals_validation(ws: dict[str, Path], algo: str) -> None:
    """anil, metasgd: the adapted model (frozen statistics) gives validation's query probabilities.
    (That the ONNX file computes the adapted model is test_adapt_export.py::test_onnx_and_int8_match_an_independent_reference.)"""
    import torch

    from metactl.adapt import load_adapted

    run = _train(ws["root"], algo)
    adapted = ws["root"] / f"adapted-{algo}"
    _ok(runner.invoke(app, ["adapt", "--support", str(ws["support"]), "--from", str(run), "--steps", "3", "--query", str(ws["query"]), "--out", str(adapted)]))
    expected, _ = _validation_probs(run, ws["support"], ws["query"], 3)
    meta, model = load_adapted(adapted)
    with torch.no_grad():
        got = torch.softmax(model(torch.from_numpy(255.0 - _pixels(_files(ws["query"]))) / 255.0), -1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert meta["algorithm"] == algo


def test_export_refuses_a_file_that_differs_from_torch(ws: dict[str, Path], exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parity check: an ONNX file that computes something else (head bias shifted by 0.5) is a
    one-line error, exit 1, and nothing is written (no export folder, no temp folder)."""
    drift_the_exported_graph(monkeypatch)
    out = ws["root"] / "export-drifted"
    before = set(out.parent.iterdir())
    r = runner.invoke(app, ["export", "--from", str(exported.parent.parent / "adapted"), "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert "ONNX check failed: onnxruntime differs from torch by" in r.output and "(> 0.0001)" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert set(out.parent.iterdir()) == before


def _run_copy(ws: dict[str, Path], name: str, adapt_steps: int) -> Path:
    run = ws["root"] / name
    shutil.copytree(ws["run"], run)
    meta = json.loads((run / "metactl.json").read_text())
    assert meta["config"]["test_inner_steps"] == 2
    meta["adapt_steps"] = adapt_steps
    (run / "metactl.json").write_text(json.dumps(meta))
    return run


def test_adapt_defaults_to_the_runs_adapt_steps(ws: dict[str, Path]) -> None:
    """Without --steps, adapt takes `adapt_steps` from the run's metactl.json (1 or 3 here; the run's
    test-inner-steps is 2): the saved weights are those after exactly that many steps of the run's algorithm."""
    import torch
    from safetensors.numpy import load_file

    from metactl.config import TrainConfig
    from metactl.registry import load_algorithm, make_config
    from metactl.runs import load_run

    labels = ["bars", "columns", "ring"]
    sfiles = _files(ws["support"])
    sx = torch.from_numpy(255.0 - _pixels(sfiles)) / 255.0
    sy = torch.tensor([labels.index(f.parent.name) for f in sfiles])
    for k in (1, 3):
        run = _run_copy(ws, f"run-adapt-steps-{k}", k)
        out = ws["root"] / f"adapted-default-{k}"
        _ok(runner.invoke(app, ["adapt", "--support", str(ws["support"]), "--from", str(run), "--out", str(out)]))
        meta, learner = load_run(run)
        cls = load_algorithm(meta["algorithm"]["name"])
        trajectory = cls(make_config(cls, meta["algorithm"].get("config", {})), TrainConfig(**meta["config"])).adapt(learner, sx, sy, 3)
        saved = load_file(str(out / "model.safetensors"))
        for name, value in trajectory[k].items():
            np.testing.assert_allclose(saved[name], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
        assert not np.allclose(saved["head.weight"], trajectory[2]["head.weight"].numpy(), atol=1e-4)
        assert json.loads((out / "metactl.json").read_text())["steps"] == k


@pytest.mark.parametrize(("kinds", "counts"), [(["bars", "columns"], [3, 2]), (["bars", "blob", "columns", "cross", "ring"], [2, 3, 2, 3, 2])])
def test_head_for_a_different_number_of_labels(ws: dict[str, Path], kinds: list[str], counts: list[int]) -> None:
    """N' != N (trained 3-way): the head starts at zero (the first support loss is log N'), and one step
    moves row c to α/M · Σᵢ (1[yᵢ = c] − 1/N') fᵢ (cross-entropy's gradient at uniform probabilities)."""
    import torch
    from safetensors.numpy import load_file

    from metactl.runs import load_run

    n = len(kinds)
    support = _folder(ws["root"] / f"support-{n}", kinds, counts, seed=20 + n)
    out = ws["root"] / f"adapted-{n}-labels"
    _ok(runner.invoke(app, ["adapt", "--support", str(support), "--from", str(ws["run"]), "--steps", "1", "--out", str(out)]))
    meta = json.loads((out / "metactl.json").read_text())
    assert meta["labels"] == kinds and meta["model"]["num_classes"] == n
    assert meta["support_losses"][0] == pytest.approx(math.log(n), rel=1e-6)
    saved = load_file(str(out / "model.safetensors"))
    _, learner = load_run(ws["run"])
    files = _files(support)
    sx = torch.from_numpy(255.0 - _pixels(files)) / 255.0
    onehot = np.eye(n)[[kinds.index(f.parent.name) for f in files]] - 1.0 / n  # (M, N')
    with torch.no_grad():
        feats = learner.features(learner.params, sx).numpy().astype(np.float64)  # (M, D) at θ, support statistics
    alpha_w, alpha_b = float(learner.lr("head.weight", 0)), float(learner.lr("head.bias", 0))
    assert saved["head.weight"].shape == (n, feats.shape[1]) and saved["head.bias"].shape == (n,)
    np.testing.assert_allclose(saved["head.weight"], alpha_w * onehot.T @ feats / len(files), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(saved["head.bias"], alpha_b * onehot.mean(0), rtol=1e-4, atol=1e-7)


def test_same_number_of_labels_starts_from_the_meta_learned_head(ws: dict[str, Path]) -> None:
    """N' = N: the meta-learned head is the starting point (0 steps: the saved head is θ's)."""
    from safetensors.numpy import load_file

    out = ws["root"] / "adapted-0-steps"
    _ok(runner.invoke(app, ["adapt", "--support", str(ws["support"]), "--from", str(ws["run"]), "--steps", "0", "--out", str(out)]))
    saved, theta = load_file(str(out / "model.safetensors")), load_file(str(ws["run"] / "theta.safetensors"))
    for name in ("head.weight", "head.bias"):
        np.testing.assert_array_equal(saved[name], theta[name])
    assert np.abs(theta["head.weight"]).max() > 0


@pytest.mark.parametrize("command", ["adapt", "evaluate", "meta-train"])
def test_device_cuda_without_a_gpu_is_one_line_error(ws: dict[str, Path], command: str) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: this test covers the error where none is")
    out = ws["root"] / f"cuda-{command}"
    args = {
        "adapt": ["--support", str(ws["support"]), "--from", str(ws["run"]), "--out", str(out)],
        "evaluate": ["--from", str(ws["run"]), "--episodes", "2", "--json", str(out)],
        "meta-train": ["--data", str(ws["root"] / "train-data"), *TRAIN, "--out", str(out)],
    }[command]
    r = runner.invoke(app, [command, *args, "--device", "cuda"])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --device cuda: no CUDA device is available to torch here."), r.output
    assert not out.exists()


def test_int8_agreement_is_measured_on_the_query_images(ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported int8-vs-float agreement is the fraction of --query images (not support ones) on which
    model.int8.onnx and model.onnx pick the same label, recomputed here with plain sessions. A stand-in
    "quantizer" that always answers "bars" makes the true value 3/6 on the queries (6/15 with the support)."""
    import copy

    import torch

    from metactl import export as export_mod

    query = _folder(ws["root"] / "query-two-labels", ["bars", "columns"], 3, seed=12)
    adapted, out = ws["root"] / "adapted-q2", ws["root"] / "export-q2"
    _ok(runner.invoke(app, ["adapt", "--support", str(ws["support"]), "--from", str(ws["run"]), "--steps", "8", "--query", str(query), "--out", str(adapted)]))
    original, seen = export_mod._onnx_bytes, {}

    def capture(module: Any, metadata: dict[str, str]) -> bytes:
        seen.update(module=module, metadata=metadata)
        return original(module, metadata)

    def always_bars(data: bytes, calibration: dict[str, np.ndarray], workdir: Path, unit: str) -> tuple[bytes, str]:
        other = copy.deepcopy(seen["module"])
        with torch.no_grad():
            other.model.head.bias[0] += 100.0  # label 0 = "bars"
        return original(other, seen["metadata"]), "int8 static (QDQ), calibrated on the support images"

    monkeypatch.setattr(export_mod, "_onnx_bytes", capture)
    monkeypatch.setitem(export_mod.QUANTIZERS, "static", always_bars)  # the image modality's int8 mode
    _ok(runner.invoke(app, ["export", "--from", str(adapted), "--quantize", "int8", "--out", str(out)]))
    pixels = _pixels(_files(query))
    float_pred = _session(out / "model.onnx").run(["probabilities"], {"pixels": pixels})[0].argmax(1)
    int8_pred = _session(out / "model.int8.onnx").run(["probabilities"], {"pixels": pixels})[0].argmax(1)
    assert (int8_pred == 0).all()
    expected = float((int8_pred == float_pred).mean())
    assert 0 < expected < 1
    assert json.loads((out / "metactl.json").read_text())["quantization"]["argmax_agreement_with_float"] == expected
