"""adapt -> export -> predict, the support-folder reader's errors and odd-but-valid images.

README claims backed here (more in test_deploy.py):
- "one self-contained file (no external data; opset 18 ...)" -> test_export_is_self_contained_with_readme_opset
- "The exporter checks itself: onnxruntime against torch ... the maximum absolute difference is printed and
  recorded", "`--quantize int8` adds model.int8.onnx ... reports how often it agrees"
                                                  -> test_onnx_and_int8_match_an_independent_reference
- "a prediction never depends on the rest of the batch (tested, in torch and in onnxruntime)"
                                                  -> test_adapted_model_is_batch_independent, test_onnx_is_batch_independent
- "`metactl predict` ... never imports torch (a test runs it with torch made unimportable)" -> test_predict_never_imports_torch
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from metactl.cli import app
from tests.conftest import write_image_folder

runner = CliRunner()


def _invoke(*args: str, cwd: Path | None = None) -> object:
    result = runner.invoke(app, list(args))
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ws")
    data = write_image_folder(root / "train", classes=8, per_class=8, size=20, seed=1)
    run = root / "run"
    args = ["--data", str(data), "--ways", "3", "--shots", "2", "--query-shots", "2", "--steps", "3", "--meta-batch", "2", "--width", "8"]
    r = runner.invoke(app, ["meta-train", *args, "--eval-every", "0", "--eval-episodes", "2", "--out", str(run)])
    assert r.exit_code == 0, r.output
    shots = root / "shots"
    for i, name in enumerate(["α-alpha", "beta", "日本"]):
        d = shots / name
        d.mkdir(parents=True)
        rng = np.random.default_rng(i)
        base = rng.random((20, 20)) > 0.7
        for j in range(3):
            Image.fromarray(np.where(base ^ (rng.random((20, 20)) > 0.97), 0, 255).astype(np.uint8)).save(d / f"{j}.png")
    (shots / ".DS_Store").write_bytes(b"junk")
    (shots / "beta" / "notes.txt").write_text("not an image")
    adapted = root / "adapted"
    r = runner.invoke(app, ["adapt", "--support", str(shots), "--from", str(run), "--steps", "2", "--query", str(shots), "--out", str(adapted)])
    assert r.exit_code == 0, r.output
    export = root / "export"
    r = runner.invoke(app, ["export", "--from", str(adapted), "--onnx", "--quantize", "int8", "--out", str(export)])
    assert r.exit_code == 0, r.output
    return {"root": root, "run": run, "shots": shots, "adapted": adapted, "export": export}


def test_adapt_writes_labels_and_lowers_support_loss(workspace: dict[str, Path]) -> None:
    meta = json.loads((workspace["adapted"] / "metactl.json").read_text())
    assert meta["labels"] == sorted(["α-alpha", "beta", "日本"])
    assert meta["model"]["num_classes"] == 3 and meta["steps"] == 2
    assert meta["support"]["per_label"] == {"beta": 3, "α-alpha": 3, "日本": 3}
    assert meta["support_losses"][-1] < meta["support_losses"][0]
    assert (workspace["adapted"] / "model.safetensors").is_file()


def test_adapted_model_is_batch_independent(workspace: dict[str, Path]) -> None:
    import torch

    from metactl.adapt import load_adapted

    _, model = load_adapted(workspace["adapted"])
    x = torch.rand(10, 1, 28, 28)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(10)])
        shuffled = model(torch.cat([x[:1], torch.rand(5, 1, 28, 28)]))[:1]
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together[:1], shuffled, rtol=1e-5, atol=1e-6)


def _conv4_reference(tensors: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Conv-4 with frozen statistics, written out from the saved tensors (float64): [conv 3x3,
    normalise with the stored mean/var, affine, max-pool 2, ReLU] x 4, linear head, softmax."""
    import torch
    import torch.nn.functional as F

    t = {k: torch.from_numpy(v).double() for k, v in tensors.items()}
    h = torch.from_numpy(x).double()
    for i in range(4):
        h = F.conv2d(h, t[f"convs.{i}.weight"], padding=1)
        mean, var, w, b = (t[f"norms.{i}.{k}"].view(1, -1, 1, 1) for k in ("mean", "var", "weight", "bias"))
        h = (h - mean) / torch.sqrt(var + 1e-5) * w + b
        h = torch.relu(F.max_pool2d(h, 2))
    logits = h.flatten(1) @ t["head.weight"].T + t["head.bias"]
    return torch.softmax(logits, -1).numpy()


def _client_pixels(files: list[Path], size: int = 28) -> np.ndarray:
    """What a client sends: decoded to grayscale, resized (Lanczos), float32 NCHW."""
    return np.stack([np.asarray(Image.open(f).convert("L").resize((size, size), Image.Resampling.LANCZOS), np.float32) for f in files])[:, None]


def test_export_is_self_contained_with_readme_opset(workspace: dict[str, Path]) -> None:
    """README: one self-contained file, opset 18 (read from the file itself), labels in metadata_props."""
    import onnx

    out = workspace["export"]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "metactl.json", "model.int8.onnx", "model.onnx", "model.safetensors"]
    proto = onnx.load(str(out / "model.onnx"))
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    assert opsets["ai.onnx"] == 18 == json.loads((out / "metactl.json").read_text())["opset"]
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["labels"]) == sorted(["α-alpha", "beta", "日本"]) and "preprocessing" in props and "metactl_version" in props
    assert [i.name for i in proto.graph.input] == ["pixels"] and [o.name for o in proto.graph.output] == ["probabilities"]


def test_onnx_and_int8_match_an_independent_reference(workspace: dict[str, Path]) -> None:
    """model.onnx in a plain onnxruntime session gives the probabilities of Conv-4 written out by hand
    from adapted/model.safetensors; model.int8.onnx is really quantized, runs, gives probabilities and
    mostly agrees with float; export's reported max_abs_diff and int8 agreement are the true values."""
    import onnx
    import onnxruntime as ort
    import torch
    from safetensors.numpy import load_file

    from metactl.adapt import load_adapted
    from metactl.data.support import read_labeled_folder

    out, adapted = workspace["export"], workspace["adapted"]
    meta = json.loads((adapted / "metactl.json").read_text())
    files = sorted(workspace["shots"].rglob("*.png"))
    raw = _client_pixels(files)
    x = (255.0 - raw if meta["preprocessing"]["invert"] else raw) / 255.0
    expected = _conv4_reference(load_file(str(adapted / "model.safetensors")), x)
    float_sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    int8_sess = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    probs = float_sess.run(["probabilities"], {"pixels": raw})[0]
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert probs.shape == (9, 3) and np.ptp(expected, axis=0).max() > 1e-3  # the images give different answers

    q = int8_sess.run(["probabilities"], {"pixels": raw})[0]
    assert q.shape == (9, 3) and (q >= 0).all()
    np.testing.assert_allclose(q.sum(1), 1.0, atol=3 / 255)  # the output is quantized too: steps of 1/255
    np.testing.assert_allclose(q, probs, atol=0.05)
    assert (q.argmax(1) == expected.argmax(1)).mean() >= 7 / 9
    q_proto = onnx.load(str(out / "model.int8.onnx"))
    ops = {n.op_type for n in q_proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(init.data_type == onnx.TensorProto.INT8 for init in q_proto.graph.initializer)

    # the numbers export reports about itself, recomputed here on the images it checked on
    info = json.loads((out / "metactl.json").read_text())
    prep = meta["preprocessing"]
    support = read_labeled_folder(Path(meta["support"]["folder"]), prep).images
    query = read_labeled_folder(Path(meta["query"]["folder"]), prep).images
    checked = (255 - np.concatenate([support, query])).astype(np.float32)[:, None]  # as a client sends them: dark ink
    _, model = load_adapted(adapted)
    with torch.no_grad():  # the graph's own preprocessing (scale, then invert), written out here
        torch_probs = torch.softmax(model(1.0 - torch.from_numpy(checked) * (1.0 / 255.0)), -1).numpy()
    onnx_probs = float_sess.run(["probabilities"], {"pixels": checked})[0]
    assert info["check"]["images"] == len(checked) == 18
    assert info["check"]["max_abs_diff"] == pytest.approx(float(np.abs(torch_probs - onnx_probs).max()), rel=1e-6, abs=0)
    held = checked[len(support) :]
    agreement = float((int8_sess.run(["probabilities"], {"pixels": held})[0].argmax(1) == onnx_probs[len(support) :].argmax(1)).mean())
    assert info["quantization"]["argmax_agreement_with_float"] == agreement


def test_onnx_is_batch_independent(workspace: dict[str, Path]) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(workspace["export"] / "model.onnx"))
    x = np.random.default_rng(0).integers(0, 256, (7, 1, 28, 28)).astype(np.float32)
    probs = sess.run(["probabilities"], {"pixels": x})[0]
    assert probs.shape == (7, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    alone = np.concatenate([sess.run(["probabilities"], {"pixels": x[i : i + 1]})[0] for i in range(7)])
    np.testing.assert_allclose(probs, alone, rtol=1e-5, atol=1e-6)


def test_onnx_matches_torch_on_files(workspace: dict[str, Path]) -> None:
    """A client that only decodes and resizes gets torch's probabilities."""
    import torch

    from metactl.adapt import load_adapted, to_input
    from metactl.data.support import read_labeled_folder
    from metactl.runtime import load_model, raw_pixels

    meta, model = load_adapted(workspace["adapted"])
    files = sorted(workspace["shots"].rglob("*.png"))
    served = load_model(workspace["export"] / "model.onnx")
    onnx_probs = served.predict(np.stack([raw_pixels(f, 28) for f in files]))
    data = read_labeled_folder(workspace["shots"], meta["preprocessing"])
    with torch.no_grad():
        torch_probs = torch.softmax(model(to_input(data.images)), -1).numpy()
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4)


def test_predict_never_imports_torch(workspace: dict[str, Path]) -> None:
    img = next(workspace["shots"].rglob("*.png"))
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from typer.testing import CliRunner
from metactl.cli import app
model, img, folder = {str(workspace["export"] / "model.onnx")!r}, {str(img)!r}, {str(workspace["shots"])!r}
r = CliRunner().invoke(app, ["predict", model, img, folder, "--json", "--top-k", "2"])
assert r.exit_code == 0, r.output
print(r.output)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads(out.stdout)
    assert len(results) == 1 + 9 and all(len(r["top_k"]) == 2 for r in results)
    # each file's label is the argmax of a plain onnxruntime session, named by the labels in the file's metadata
    import onnxruntime as ort

    sess = ort.InferenceSession(str(workspace["export"] / "model.onnx"), providers=["CPUExecutionProvider"])
    labels = json.loads(sess.get_modelmeta().custom_metadata_map["labels"])
    probs = sess.run(["probabilities"], {"pixels": _client_pixels([Path(r["file"]) for r in results])})[0]
    assert [r["label"] for r in results] == [labels[i] for i in probs.argmax(1)]
    assert [[t["label"] for t in r["top_k"]] for r in results] == [[labels[i] for i in np.argsort(-p)[:2]] for p in probs]


def test_predict_table(workspace: dict[str, Path]) -> None:
    r = runner.invoke(app, ["predict", str(workspace["export"] / "model.onnx"), str(workspace["shots"])])
    assert r.exit_code == 0 and "probability" in r.output


def test_existing_out_needs_force(workspace: dict[str, Path]) -> None:
    r = runner.invoke(app, ["adapt", "--support", str(workspace["shots"]), "--from", str(workspace["run"]), "--out", str(workspace["adapted"])])
    assert r.exit_code == 1 and "--force" in r.output
    r = runner.invoke(app, ["export", "--from", str(workspace["adapted"]), "--out", str(workspace["export"])])
    assert r.exit_code == 1 and "--force" in r.output


def _modes_folder(root: Path) -> Path:
    """Every odd-but-valid image mode and format, two labels."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        d = root / label
        d.mkdir(parents=True)
        arr = np.where(rng.random((30, 30)) > 0.7, 0, 255).astype(np.uint8)
        Image.fromarray(arr).convert("1").save(d / "bits.png")
        Image.fromarray(arr).save(d / "gray.jpg")
        Image.fromarray(arr).convert("P").save(d / "palette.gif")
        Image.fromarray(np.stack([arr] * 3, -1)).save(d / "rgb.bmp")
        rgba = np.dstack([np.stack([arr] * 3, -1), np.full_like(arr, 200)])
        Image.fromarray(rgba, "RGBA").save(d / "rgba.webp")
        Image.fromarray(np.stack([arr] * 3, -1)).convert("CMYK").save(d / "cmyk.tiff")
        Image.fromarray(arr.astype(np.uint16) * 257).save(d / "deep.png")  # 16-bit
        Image.fromarray(arr).convert("LA").save(d / "la.png")
        Image.fromarray(np.stack([arr] * 3, -1)).save(d / "upper.JPEG")
    return root


def test_odd_but_valid_modes_are_read(tmp_path: Path) -> None:
    from metactl.data.images import default_preprocessing
    from metactl.data.support import read_labeled_folder

    data = read_labeled_folder(_modes_folder(tmp_path / "m"), default_preprocessing(28, invert=True))
    assert data.labels == ["a", "b"] and data.images.shape == (18, 28, 28)
    ref = data.images[data.files.index(str(tmp_path / "m" / "a" / "gray.jpg"))].astype(int)
    for i, f in enumerate(data.files):
        if f.startswith(str(tmp_path / "m" / "a")) and not f.endswith(("gray.jpg", "upper.JPEG", "rgba.webp", "cmyk.tiff")):
            assert np.abs(data.images[i].astype(int) - ref).mean() < 12, f  # the same picture in every lossless mode


def _bad(tmp_path: Path, kind: str) -> Path:
    root = tmp_path / "shots"
    if kind == "missing":
        return root
    root.mkdir()
    if kind == "empty":
        return root
    write_image_folder(root, classes=2, per_class=2, size=12)
    classes = sorted(p for p in root.rglob("character*") if p.is_dir())
    flat = tmp_path / "flat"
    flat.mkdir()
    for c in classes:
        c.rename(flat / c.name)
    import shutil

    shutil.rmtree(root)
    root = flat
    if kind == "one-class":
        shutil.rmtree(root / "character01")
    elif kind == "class-without-images":
        (root / "character02").mkdir()
    elif kind == "corrupt":
        (root / "character00" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    elif kind == "truncated":
        good = (root / "character00" / "0000_00.png").read_bytes()
        (root / "character00" / "cut.png").write_bytes(good[: len(good) // 2])
    elif kind == "zero-byte":
        (root / "character00" / "zero.png").write_bytes(b"")
    elif kind == "bomb":
        Image.new("L", (3000, 3000), 255).save(root / "character00" / "huge.png")
    return root


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing", "no such folder"),
        ("empty", "no label subfolders"),
        ("one-class", "need at least 2"),
        ("class-without-images", "holds no images"),
        ("corrupt", "bad.png: cannot read image"),
        ("truncated", "cut.png: cannot read image"),
        ("zero-byte", "zero.png: image file is empty"),
        ("bomb", "huge.png: image is larger than the decompression-bomb limit"),
    ],
)
def test_bad_support_folders_are_one_line_errors(workspace: dict[str, Path], tmp_path: Path, kind: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "bomb":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    support = _bad(tmp_path, kind)
    out = tmp_path / "adapted-out"
    r = runner.invoke(app, ["adapt", "--support", str(support), "--from", str(workspace["run"]), "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert expected in r.output.replace("\n", ""), r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def test_ink_polarity_is_read_off_the_support_folder(workspace: dict[str, Path], tmp_path: Path) -> None:
    """White-on-black copies of the same drawings adapt to the same model input as black-on-white."""
    from metactl.data.images import default_preprocessing
    from metactl.data.support import read_labeled_folder

    inverted = tmp_path / "inverted"
    for f in workspace["shots"].rglob("*.png"):
        dst = inverted / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(f).convert("L"))).save(dst)
    prep = {**default_preprocessing(), "invert": None}
    a, b = read_labeled_folder(workspace["shots"], prep), read_labeled_folder(inverted, prep)
    assert a.preprocessing["invert"] is True and b.preprocessing["invert"] is False
    np.testing.assert_array_equal(a.images, b.images)
