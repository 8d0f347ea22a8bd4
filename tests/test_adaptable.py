"""``export --adaptable`` and ``adapt --from ADAPTABLE_DIR``: adaptation as ONNX graphs, run without torch.

Parity: for each algorithm whose adaptation exports (anil, protomaml with --adapt head, centroid, probe), on
images (a tiny Conv-4 run) and on text (the real all-MiniLM-L6-v2 body), the head the graphs compute equals
the head ``metactl adapt`` computes in torch (max |Δ| ≤ 1e-4), for the trained class count and for another
one, and the served model predicts what the torch-adapted model predicts on held-out queries. The reference
is ``metactl adapt``'s own output, never a number the exporter reports. Then: the torch-free path really
imports no torch, and every bad input gets one message, exit 1 and nothing written.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from safetensors.numpy import load_file
from typer.testing import CliRunner

from metactl.adapt import load_adapted
from metactl.adaptable import export_adaptable
from metactl.cli import app
from metactl.errors import MetactlError
from metactl.library import adapt as torch_adapt
from metactl.modalities.image import raw_pixels
from metactl.runtime_adapt import adapt_onnx, check_labels
from metactl.testing import make_image_folder, tiny_config
from metactl.train import meta_train

runner = CliRunner()
TOLERANCE = 1e-4
IMAGE_ALGOS = ("anil", "protomaml", "centroid", "probe", "pretrain")
TEXT_ALGOS = ("anil", "protomaml", "centroid", "probe", "pretrain")
TRAINED_WAYS = 5


def _split_folder(src: Path, support: Path, query: Path, shots: int, labels: int | None = None) -> None:
    """Class subfolders of ``src`` -> the first ``shots`` images of each in ``support``, the rest in ``query``."""
    for d in sorted(p for p in src.iterdir() if p.is_dir())[:labels]:
        files = sorted(d.glob("*.png"))
        for dest, part in ((support, files[:shots]), (query, files[shots:])):
            (dest / d.name).mkdir(parents=True, exist_ok=True)
            for f in part:
                shutil.copy(f, dest / d.name / f.name)


@pytest.fixture(scope="module")
def image_ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("adaptable-image")
    data = make_image_folder(root / "data", classes=10, per_class=6, size=28, ink=0.2, omniglot_layout=True)
    new = make_image_folder(root / "new", classes=TRAINED_WAYS, per_class=9, size=28, seed=7, ink=0.2)
    for n in (TRAINED_WAYS, 3):  # the trained class count (θ's head, element-wise α) and another one
        _split_folder(new, root / f"support{n}", root / f"query{n}", shots=3, labels=n)
    runs = {}
    for algo in IMAGE_ALGOS:
        extra: dict[str, Any] = {"adapt": "head", "backbone": str(runs["anil"]), "train_body": True} if algo in ("protomaml", "pretrain") else {}
        runs[algo] = root / f"run-{algo}"
        meta_train(tiny_config(algo, data, ways=TRAINED_WAYS, **extra), out=runs[algo])
    adaptable = {algo: export_adaptable(run, root / f"{algo}-adaptable").path for algo, run in runs.items()}
    return {"root": root, "runs": runs, "adaptable": adaptable}


def _baked_head(export: Path) -> tuple[np.ndarray, np.ndarray]:
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(export / "model.onnx")).graph.initializer}
    return init["weight"], init["bias"]


def _served(export: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], feed)[0]


def _query_pixels(query: Path) -> np.ndarray:
    files = sorted(query.rglob("*.png"))
    return np.stack([raw_pixels(f, 28) for f in files]).astype(np.float32)[:, None]


@pytest.mark.parametrize("algo", IMAGE_ALGOS)
@pytest.mark.parametrize("classes", [TRAINED_WAYS, 3])
def test_image_head_from_the_graphs_equals_metactl_adapt(image_ws: dict[str, Any], algo: str, classes: int) -> None:
    root, run = image_ws["root"], image_ws["runs"][algo]
    support, query = root / f"support{classes}", root / f"query{classes}"
    ref = torch_adapt(support, run, out=root / f"torch-{algo}-{classes}", quiet=True)
    got = adapt_onnx(image_ws["adaptable"][algo], support, root / f"onnx-{algo}-{classes}")
    assert got.labels == ref.labels
    expected = load_file(str(ref.path / "model.safetensors"))
    weight, bias = _baked_head(got.path)
    assert weight.shape == (classes, expected["head.weight"].shape[1])
    assert np.abs(weight - expected["head.weight"]).max() <= TOLERANCE
    assert np.abs(bias - expected["head.bias"]).max() <= TOLERANCE
    # held-out queries: the served model (onnxruntime) against the torch-adapted model
    pixels = _query_pixels(query)
    meta, model = load_adapted(ref.path)
    with torch.no_grad():
        torch_probs = model.export_module(meta["preprocessing"]).eval()(torch.from_numpy(pixels)).numpy()
    probs = _served(got.path, {"pixels": pixels})
    assert np.abs(probs - torch_probs).max() <= TOLERANCE
    assert (probs.argmax(1) == torch_probs.argmax(1)).mean() >= 0.995


def test_predict_serves_the_onnx_adapted_export(image_ws: dict[str, Any]) -> None:
    root = image_ws["root"]
    out = root / "served"
    r = runner.invoke(app, ["adapt", "--from", str(image_ws["adaptable"]["anil"]), "--support", str(root / "support3"), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["labels"] == ["class00", "class01", "class02"]
    files = sorted((root / "query3").rglob("*.png"))
    r = runner.invoke(app, ["predict", str(out), *map(str, files), "--json"])
    assert r.exit_code == 0, r.output
    pixels = np.stack([raw_pixels(f, 28) for f in files]).astype(np.float32)[:, None]
    labels = ["class00", "class01", "class02"]
    assert [row["label"] for row in json.loads(r.output)] == [labels[i] for i in _served(out, {"pixels": pixels}).argmax(1)]


def test_three_calls_equal_the_served_model(image_ws: dict[str, Any]) -> None:
    """embed -> adapt -> classify, as a client calls them, gives the served model.onnx's probabilities."""
    root, folder = image_ws["root"], image_ws["adaptable"]["protomaml"]
    support = sorted((root / "support3").rglob("*.png"))
    sx = np.stack([raw_pixels(f, 28) for f in support]).astype(np.float32)[:, None]
    sy = np.array([["class00", "class01", "class02"].index(f.parent.name) for f in support], np.int64)
    sess = {g: ort.InferenceSession(str(folder / f"{g}.onnx"), providers=["CPUExecutionProvider"]) for g in ("embed", "adapt", "classify")}
    out = sess["embed"].run(None, {"pixels": sx})
    state = json.loads((folder / "metactl.json").read_text())["io"]["state"]
    assert len(state) == len(out) - 1 == 8
    weight, bias = sess["adapt"].run(None, {"features": out[0], "labels": sy})
    qx = _query_pixels(root / "query3")
    probs = sess["classify"].run(["probabilities"], {"pixels": qx, "weight": weight, "bias": bias, **dict(zip(state, out[1:], strict=True))})[0]
    served = adapt_onnx(folder, root / "support3", root / "three-calls")
    assert np.abs(probs - _served(served.path, {"pixels": qx})).max() <= 1e-5  # constants folded differently: float32 rounding


TORCH_FREE = """
import json, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Block())
from typer.testing import CliRunner
from metactl.cli import app
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)
print(r.output)
"""


def _torch_free_cli(*commands: list[str], timeout: int) -> str:
    """Run metactl ``commands`` one after another in a fresh interpreter where torch and transformers cannot be
    imported; each must succeed and neither may be loaded. The last command's output."""
    done = subprocess.run([sys.executable, "-c", TORCH_FREE, json.dumps(commands)], capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_onnx_adaptation_imports_no_torch(image_ws: dict[str, Any], tmp_path: Path) -> None:
    folder, support = str(image_ws["adaptable"]["centroid"]), str(image_ws["root"] / "support3")
    _torch_free_cli(["adapt", "--from", folder, "--support", support, "--out", str(tmp_path / "out"), "--json"], timeout=120)
    assert (tmp_path / "out" / "model.onnx").is_file()


# --- bad input ----------------------------------------------------------------------------------------


def test_labels_must_be_0_to_c_minus_1_with_every_class_present() -> None:
    assert check_labels(np.array([0, 1, 2, 1])) == 3
    with pytest.raises(MetactlError, match=r"class 1 of 0\.\.2 has no example"):
        check_labels(np.array([0, 2, 2]))
    with pytest.raises(MetactlError, match="negative"):
        check_labels(np.array([0, -1]))
    with pytest.raises(MetactlError, match="integer"):
        check_labels(np.array([0.0, 1.0]))
    with pytest.raises(MetactlError, match="one class only"):
        check_labels(np.array([0, 0]))


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _refused(args: list[str], pattern: str, out: Path) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    assert pattern in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
    assert not out.exists()  # nothing half-written


def test_a_corrupt_or_foreign_adaptable_folder_is_refused(image_ws: dict[str, Any], tmp_path: Path) -> None:
    support, out = str(image_ws["root"] / "support3"), tmp_path / "out"
    corrupt = _copy(image_ws["adaptable"]["anil"], tmp_path / "corrupt")
    data = bytearray((corrupt / "adapt.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / "adapt.onnx").write_bytes(bytes(data))
    _refused(["adapt", "--from", str(corrupt), "--support", support, "--out", str(out)], "adapt.onnx: the file is corrupt or was changed", out)
    missing = _copy(image_ws["adaptable"]["anil"], tmp_path / "missing")
    (missing / "classify.onnx").unlink()
    _refused(["adapt", "--from", str(missing), "--support", support, "--out", str(out)], "classify.onnx is missing", out)
    for key, value, says in (("metactl_version", "99.0.0", "written by metactl 99.0.0"), ("format", 2, "adaptable format 2")):
        other = _copy(image_ws["adaptable"]["anil"], tmp_path / f"other-{key}")
        meta = json.loads((other / "metactl.json").read_text())
        (other / "metactl.json").write_text(json.dumps({**meta, key: value}))
        _refused(["adapt", "--from", str(other), "--support", support, "--out", str(out)], says, out)


def test_texts_for_an_image_model_are_refused(image_ws: dict[str, Any], tmp_path: Path) -> None:
    texts = tmp_path / "texts"
    texts.mkdir()
    for label in ("a", "b"):
        (texts / f"{label}.txt").write_text("one example\nanother\n", encoding="utf-8")
    out = tmp_path / "out"
    _refused(
        ["adapt", "--from", str(image_ws["adaptable"]["anil"]), "--support", str(texts), "--out", str(out)],
        "holds texts, but this adaptable model takes images",
        out,
    )


def test_steps_and_existing_out_are_refused(image_ws: dict[str, Any], tmp_path: Path) -> None:
    folder, support = str(image_ws["adaptable"]["anil"]), str(image_ws["root"] / "support3")
    _refused(["adapt", "--from", folder, "--support", support, "--steps", "3", "--out", str(tmp_path / "o")], "--steps does not apply", tmp_path / "o")
    taken = tmp_path / "taken"
    taken.mkdir()
    r = runner.invoke(app, ["adapt", "--from", folder, "--support", support, "--out", str(taken)])
    assert r.exit_code == 1 and "already exists" in r.output and not any(taken.iterdir())


def test_a_run_that_adapts_the_body_is_refused_with_the_exportable_algorithms(image_ws: dict[str, Any], tmp_path: Path) -> None:
    data = image_ws["root"] / "data"
    for algo, extra in (("fomaml", {}), ("protomaml", {})):  # protomaml with the default --adapt all adapts the body
        run = tmp_path / f"run-{algo}"
        meta_train(tiny_config(algo, data, ways=TRAINED_WAYS, **extra), out=run)
        out = tmp_path / f"adaptable-{algo}"
        r = runner.invoke(app, ["export", "--from", str(run), "--adaptable", "--out", str(out)])
        assert r.exit_code == 1, r.output
        said = " ".join(r.output.split())
        assert "export --adaptable needs an adaptation that changes only the head" in said and "anil, centroid, pretrain, probe, protomaml" in said, said
        assert not out.exists()


# --- text: the real all-MiniLM-L6-v2 body ------------------------------------------------------------------

TRAIN_INTENTS = ["alarm", "balance", "book_flight", "calculator", "calories", "car_rental", "cook_time", "flip_coin", "jump_start", "meaning_of_life"]
NEW_INTENTS = ["translate", "weather", "tell_joke", "timer", "greeting", "pto_request"]  # never meta-trained on
COMMON = ["--ways", "3", "--shots", "2", "--query-shots", "4", "--eval-every", "0", "--max-length", "64", "--steps", "2", "--meta-batch", "2"]


@pytest.fixture(scope="module")
def text_ws(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, intents_dir: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("adaptable-text")
    rows = json.loads((intents_dir / "clinc150" / "data_full.json").read_text(encoding="utf-8"))["train"]
    texts: dict[str, list[str]] = {}
    for text, label in rows:
        texts.setdefault(label, []).append(text)
    with (root / "texts.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([t, label] for label in TRAIN_INTENTS for t in texts[label][:10])
    for n in (3, len(NEW_INTENTS)):  # the trained class count (3) and another one
        for name, part in ((f"support{n}", slice(0, 5)), (f"query{n}", slice(5, 25))):
            (root / name).mkdir()
            for label in NEW_INTENTS[:n]:
                (root / name / f"{label}.txt").write_text("\n".join(texts[label][part]) + "\n", encoding="utf-8")
    runs, adaptable = {}, {}
    for algo in TEXT_ALGOS:
        inner = ["--inner-steps", "2", "--test-inner-steps", "2", "--inner-lr", "0.5"] if algo in ("anil", "protomaml", "pretrain") else []
        inner += ["--label-names"] if algo == "protomaml" else []  # each label's readable name is one more support example
        runs[algo] = root / f"run-{algo}"
        r = runner.invoke(app, ["meta-train", "--algo", algo, "--backbone", str(minilm_dir), "--adapt", "head", "--data", f"text:{root / 'texts.csv'}",
                                *COMMON, *inner, "--out", str(runs[algo])])  # fmt: skip
        assert r.exit_code == 0, r.output
        adaptable[algo] = export_adaptable(runs[algo], root / f"{algo}-adaptable").path
    yield {"root": root, "runs": runs, "adaptable": adaptable, "texts": texts}


def _text_feed(export: Path, lines: list[str]) -> dict[str, np.ndarray]:
    """What any client feeds the served text model: the export's tokenizer.json, padded per batch."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(export / "tokenizer.json"))
    enc = tok.encode_batch(lines)
    return {"input_ids": np.array([e.ids for e in enc], np.int64), "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


@pytest.mark.parametrize("algo", TEXT_ALGOS)
@pytest.mark.parametrize("classes", [3, len(NEW_INTENTS)])
def test_text_head_from_the_graphs_equals_metactl_adapt(text_ws: dict[str, Any], algo: str, classes: int) -> None:
    root, run = text_ws["root"], text_ws["runs"][algo]
    support, query = root / f"support{classes}", root / f"query{classes}"
    ref = torch_adapt(support, run, out=root / f"torch-{algo}-{classes}", quiet=True)
    got = adapt_onnx(text_ws["adaptable"][algo], support, root / f"onnx-{algo}-{classes}")
    assert got.labels == ref.labels == sorted(NEW_INTENTS[:classes])
    expected = load_file(str(ref.path / "model.safetensors"))
    weight, bias = _baked_head(got.path)
    assert np.abs(weight - expected["head.weight"]).max() <= TOLERANCE
    assert np.abs(bias - expected["head.bias"]).max() <= TOLERANCE
    lines = [t for label in sorted(NEW_INTENTS[:classes]) for t in (query / f"{label}.txt").read_text(encoding="utf-8").splitlines()]
    feed = _text_feed(got.path, lines)
    meta, model = load_adapted(ref.path)
    with torch.no_grad():
        _, torch_probs = model.export_module(meta["preprocessing"]).eval()(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask")))
    probs = _served(got.path, feed)
    assert np.abs(probs - torch_probs.numpy()).max() <= TOLERANCE
    assert (probs.argmax(1) == torch_probs.numpy().argmax(1)).mean() >= 0.995


def test_text_adaptation_imports_no_torch_and_predict_serves_it(text_ws: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    folder, support = str(text_ws["adaptable"]["protomaml"]), str(text_ws["root"] / "support3")
    output = _torch_free_cli(
        ["adapt", "--from", folder, "--support", support, "--out", str(out), "--json"],
        ["predict", str(out), "what is the weather in Paris", "--json"],
        timeout=300,
    )
    (row,) = json.loads(output)
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "translate", "1": "weather", "2": "tell_joke"} or set(config["id2label"].values()) == {
        "translate",
        "weather",
        "tell_joke",
    }
    probs = _served(out, _text_feed(out, ["what is the weather in Paris"]))[0]
    assert row["label"] == config["id2label"][str(int(probs.argmax()))]


def test_images_for_a_text_model_are_refused(text_ws: dict[str, Any], image_ws: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _refused(
        ["adapt", "--from", str(text_ws["adaptable"]["centroid"]), "--support", str(image_ws["root"] / "support3"), "--out", str(out)],
        "holds images, but this adaptable model takes text",
        out,
    )


# --- examples/adapt_anywhere.py: the client an app developer copies ---------------------------------------


def _example() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "adapt_anywhere.py"
    spec = importlib.util.spec_from_file_location("adapt_anywhere", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_client_adapts_like_metactl_on_images(image_ws: dict[str, Any]) -> None:
    example, root = _example(), image_ws["root"]
    folder = image_ws["adaptable"]["protomaml"]
    model = example.Adaptable(folder)
    names, examples, labels = example.read_support(root / "support3", False)
    queries = sorted((root / "query3").rglob("*.png"))
    probs = model.classify(model.adapt(examples, labels), queries)
    served = adapt_onnx(folder, root / "support3", root / "example-reference")
    assert names == served.labels
    assert np.abs(probs - _served(served.path, {"pixels": _query_pixels(root / "query3")})).max() <= TOLERANCE
    with pytest.raises(SystemExit, match="missing: \\[1\\]"):
        model.adapt(examples[:2], np.array([0, 2]))


def test_the_example_client_adapts_like_metactl_on_text(text_ws: dict[str, Any]) -> None:
    example, root = _example(), text_ws["root"]
    folder = text_ws["adaptable"]["protomaml"]
    model = example.Adaptable(folder)
    names, examples, labels = example.read_support(root / "support6", True)
    assert model.meta["label_names"]
    if model.meta.get("label_names"):
        examples, labels = [*examples, *(example.readable(n) for n in names)], np.concatenate([labels, np.arange(len(names))])
    lines = ["what is the weather like in Paris", "tell me something funny", "Ünïcödé  and emoji 🚀 in a sentence"]
    probs = model.classify(model.adapt(examples, labels), lines)
    served = adapt_onnx(folder, root / "support6", root / "example-reference")
    assert names == served.labels
    assert np.abs(probs - _served(served.path, _text_feed(served.path, lines))).max() <= TOLERANCE


def test_text_head_graph_classifies_features_like_classify_onnx(text_ws: dict[str, Any], image_ws: dict[str, Any]) -> None:
    """head.onnx on embed.onnx's features gives classify.onnx's outputs (text: features do not depend on the batch);
    an image model, whose classify needs the support's statistics, has no head.onnx."""
    folder = text_ws["adaptable"]["anil"]
    feed = _text_feed(folder, ["book a table for two", "what's my balance", "Ünïcödé 🚀"])
    sess = {g: ort.InferenceSession(str(folder / f"{g}.onnx"), providers=["CPUExecutionProvider"]) for g in ("embed", "head", "classify")}
    rng = np.random.default_rng(0)
    head = {"weight": rng.normal(size=(4, 384)).astype(np.float32), "bias": rng.normal(size=4).astype(np.float32)}
    (features,) = sess["embed"].run(["features"], feed)
    via_head = sess["head"].run(["logits", "probabilities"], {"features": features, **head})
    direct = sess["classify"].run(["logits", "probabilities"], {**feed, **head})
    for a, b in zip(via_head, direct, strict=True):
        assert np.abs(a - b).max() <= 1e-5
    assert "head.onnx" in json.loads((folder / "metactl.json").read_text())["files"]
    assert not (image_ws["adaptable"]["anil"] / "head.onnx").exists()
