"""Color images (issue 14, item 8): a training folder holding color keeps three channels end to end.

Claims backed here:
- a folder in which any image holds color is read in RGB at 84x84 (``--image-size`` overrides),
  recorded as ``"channels": 3, "size": 84`` and a Conv-4 with 3 input channels -> test_color_run_records_rgb_and_its_size
- grayscale data stays one channel, 28x28, inverted as before, whatever its files' modes (RGB files whose
  channels are equal or differ by a few levels, lossy JPEG/WebP of gray pictures, CMYK, palette) -> test_gray_folders_stay_one_channel
- mixed folders (some gray, some color): color wins -> test_mixed_folder_is_color
- RGB preprocessing is PIL's RGB conversion (transparency over white) + Lanczos resize, channels first,
  never inverted -> test_rgb_preprocessing_matches_pil
- episodes carry (B, M, 3, H, W) images of the sampled classes -> test_color_episodes_hold_the_pool_images
- adapt reads the support folder in RGB and separates classes that differ only in hue (a gray model
  cannot) -> test_adapt_separates_hues
- export writes an ONNX whose input is (batch, 3, size, size) and whose output matches a torch reference on
  pixels read by this test; ``metactl predict`` decodes RGB and names that reference's label
  -> test_export_and_predict_in_rgb
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from metactl.cli import app
from metactl.config import TrainConfig
from metactl.data import held_out_sampler, open_data
from metactl.data.episodes import ClassificationEpisodes
from metactl.data.folder import ArrayPool, detect_color, load_folder
from metactl.data.images import color_preprocessing, decode_gray, has_color, preprocess
from metactl.data.sources import RotatedPool, folder_preprocessing
from metactl.data.support import read_labeled_folder
from metactl.errors import MetactlError
from metactl.models import build_model
from tests.conftest import write_image_folder

runner = CliRunner()
LUMA = np.array([0.299, 0.587, 0.114])  # PIL's RGB -> L weights (ITU-R 601-2)


def hue_color(angle: float, luma: float = 110.0, radius: float = 70.0) -> tuple[int, int, int]:
    """An RGB color of the given hue whose PIL grayscale value is ``luma`` (±1): the chroma offset lies in
    the plane orthogonal to the luma weights."""
    e1 = np.array([LUMA[1], -LUMA[0], 0.0])
    e2 = np.cross(LUMA, e1)
    d = np.cos(angle) * e1 / np.linalg.norm(e1) + np.sin(angle) * e2 / np.linalg.norm(e2)
    c = np.rint(luma + radius * d).astype(int)
    assert abs(float(LUMA @ c) - luma) < 1.5 and c.min() >= 0 and c.max() <= 255
    return int(c[0]), int(c[1]), int(c[2])


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random class-independent shape (mask)."""
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(3):
        cy, cx, r = rng.uniform(size * 0.2, size * 0.8), rng.uniform(size * 0.2, size * 0.8), rng.uniform(size * 0.15, size * 0.3)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return mask


def hue_folder(root: Path, angles: list[float], per_class: int, seed: int, size: int = 40, names: list[str] | None = None) -> Path:
    """One class per hue: the same random blobs (drawn independently of the class) in that hue on white.
    Converted to gray, every class has the same distribution: only color tells the classes apart."""
    rng = np.random.default_rng(seed)
    for i, angle in enumerate(angles):
        d = root / (names[i] if names else f"hue{i:02d}")
        d.mkdir(parents=True)
        color = np.array(hue_color(angle), dtype=np.uint8)
        for j in range(per_class):
            img = np.full((size, size, 3), 255, dtype=np.uint8)
            img[_blob(rng, size)] = color
            Image.fromarray(img, "RGB").save(d / f"{j}.png")
    return root


def _invoke(*args: str) -> Any:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("color")
    train = hue_folder(root / "train", [2 * np.pi * i / 8 for i in range(8)], per_class=6, seed=0)
    run = root / "run"
    _invoke(
        "meta-train", "--data", str(train), "--algo", "protomaml", "--ways", "3", "--shots", "2", "--query-shots", "2", "--steps", "40", "--meta-batch", "2",
        "--width", "8", "--eval-every", "0", "--eval-episodes", "2", "--threads", "1", "--out", str(run),
    )  # fmt: skip  (ProtoMAML: 20 MAML steps on 2 tasks a step separated the hues for some seeds only)
    test_hues = [0.4, 0.4 + 2 * np.pi / 3, 0.4 + 4 * np.pi / 3]  # hues between the training ones
    shots = hue_folder(root / "shots", test_hues, per_class=3, seed=1, names=["blue-ish", "green-ish", "red-ish"])
    query = hue_folder(root / "query", test_hues, per_class=6, seed=2, names=["blue-ish", "green-ish", "red-ish"])
    adapted = root / "adapted"
    _invoke("adapt", "--support", str(shots), "--query", str(query), "--from", str(run), "--steps", "10", "--out", str(adapted))
    export = root / "export"
    _invoke("export", "--from", str(adapted), "--onnx", "--out", str(export))
    return {"root": root, "train": train, "run": run, "shots": shots, "query": query, "adapted": adapted, "export": export}


def test_hue_classes_are_identical_in_gray(tmp_path: Path) -> None:
    """The data's premise: every hue class converts to the same grayscale images (blob at 110 ±1 on white),
    while each file is detected as color."""
    root = hue_folder(tmp_path / "h", [0.0, 2.0, 4.0], per_class=2, seed=5)
    for f in root.rglob("*.png"):
        assert set(np.unique(decode_gray(str(f), "x"))) <= {109, 110, 111, 255}
        assert has_color(str(f), str(f))
    # a palette image (GIF) with a colored palette is color too; the same picture in gray is not
    f = next(root.rglob("*.png"))
    Image.open(f).convert("P").save(tmp_path / "color.gif")
    Image.open(f).convert("L").convert("P").save(tmp_path / "gray.gif")
    assert Image.open(tmp_path / "color.gif").mode == "P" and has_color(str(tmp_path / "color.gif"), "c")
    assert not has_color(str(tmp_path / "gray.gif"), "g")


def test_color_run_records_rgb_and_its_size(ws: dict[str, Path]) -> None:
    meta = json.loads((ws["run"] / "metactl.json").read_text())
    assert meta["preprocessing"]["channels"] == 3 and meta["preprocessing"]["size"] == 84 and meta["preprocessing"]["invert"] is False
    assert meta["model"]["in_channels"] == 3 and meta["model"]["image_size"] == 84
    theta = load_file(ws["run"] / "theta.safetensors")
    assert tuple(theta["convs.0.weight"].shape) == (8, 3, 3, 3)
    # --image-size sets the size; the color decision stays automatic
    cfg = TrainConfig(data=str(ws["train"]), ways=3, shots=1, query_shots=1, width=4, image_size=32)
    data = open_data(cfg)
    assert data.preprocessing == color_preprocessing(32) and data.model_spec["image_size"] == 32 and data.model_spec["in_channels"] == 3
    batch = data.train.sample(np.random.default_rng(0), 2)
    assert batch.support_x.shape == (2, 3, 3, 32, 32) and batch.support_x.dtype == np.uint8
    # evaluate's held-out episodes of a color run are RGB too
    episodes = held_out_sampler(meta, str(ws["query"]), 3, 1, 1).sample(np.random.default_rng(0), 1)
    assert episodes.query_x.shape == (1, 3, 3, 84, 84)


def _modes_folder(root: Path) -> Path:
    """Gray pictures in every mode that could hold color, two classes."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        d = root / label
        d.mkdir(parents=True)
        arr = np.where(rng.random((30, 30)) > 0.7, 0, 255).astype(np.uint8)
        arr = (arr * 0.8 + rng.integers(0, 40, arr.shape)).astype(np.uint8)  # some gray levels, not only black and white
        rgb = np.stack([arr] * 3, -1)
        Image.fromarray(rgb).save(d / "rgb.bmp")
        Image.fromarray(rgb).save(d / "rgb.jpg", quality=60)
        Image.fromarray(np.dstack([rgb, np.full_like(arr, 200)]), "RGBA").save(d / "rgba.webp")
        Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.tiff")
        Image.fromarray(arr).convert("P").save(d / "palette.gif")
        Image.fromarray(arr).convert("1").save(d / "bits.png")
        tint = np.clip(rgb.astype(int) + rng.integers(-4, 5, rgb.shape), 0, 255).astype(np.uint8)  # a scanner's slight tint
        Image.fromarray(tint).save(d / "scan.png")
    return root


def test_gray_folders_stay_one_channel(tmp_path: Path) -> None:
    """Omniglot-like PNGs (1-bit and L) and gray pictures stored in color modes: one channel, 28x28, ink detection as before."""
    glyph = write_image_folder(tmp_path / "glyphs", classes=8, per_class=4)
    prep = folder_preprocessing(glyph)
    assert prep == {"size": 28, "channels": 1, "invert": True, "resample": "lanczos", "scale": 1 / 255}
    pool = load_folder(glyph, prep)
    assert pool.images.shape == (32, 28, 28)
    modes = _modes_folder(tmp_path / "modes")
    assert not detect_color(modes)
    assert folder_preprocessing(modes, 32)["channels"] == 1 and folder_preprocessing(modes, 32)["size"] == 32
    data = open_data(TrainConfig(data=str(glyph), ways=3, shots=1, query_shots=1, width=4))
    assert data.model_spec["in_channels"] == 1 and data.model_spec["image_size"] == 28
    assert data.train.sample(np.random.default_rng(0), 2).support_x.shape == (2, 3, 1, 28, 28)


def test_mixed_folder_is_color(tmp_path: Path) -> None:
    """One color file among gray ones, in the last class: the folder is read in RGB (color wins);
    its gray files become three equal channels."""
    root = write_image_folder(tmp_path / "mixed", classes=6, per_class=4)
    last = sorted(p for p in root.rglob("*.png"))[-1]
    img = np.asarray(Image.open(last).convert("RGB")).copy()
    img[img.sum(-1) < 300] = (200, 30, 30)
    Image.fromarray(img).save(last)
    assert detect_color(root)
    prep = folder_preprocessing(root)
    assert prep["channels"] == 3 and prep["size"] == 84 and not prep["invert"]
    pool = load_folder(root, prep)
    assert pool.images.shape == (24, 3, 84, 84)
    gray_ones = pool.images[:-1]
    assert (gray_ones[:, 0] == gray_ones[:, 1]).all() and (gray_ones[:, 1] == gray_ones[:, 2]).all()
    assert not (pool.images[-1, 0] == pool.images[-1, 1]).all()
    # the same folder zipped
    zpath = tmp_path / "mixed.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f.relative_to(tmp_path).as_posix())
    assert detect_color(zpath)
    np.testing.assert_array_equal(load_folder(zpath, prep).images, pool.images)


def test_rgb_preprocessing_matches_pil(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (30, 50, 4), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(rgba, "RGBA").save(path)
    support = tmp_path / "s"
    for label in ("a", "b"):
        (support / label).mkdir(parents=True)
        Image.fromarray(rgba, "RGBA").save(support / label / "x.png")
    data = read_labeled_folder(support, {**color_preprocessing(24), "invert": None})
    # reference: PIL composites over white, converts to RGB, resizes (Lanczos); then channels first
    ref_img = Image.alpha_composite(Image.new("RGBA", (50, 30), (255, 255, 255, 255)), Image.open(path)).convert("RGB")
    ref = np.asarray(ref_img.resize((24, 24), Image.Resampling.LANCZOS)).transpose(2, 0, 1)
    assert data.images.shape == (2, 3, 24, 24) and data.preprocessing["invert"] is False
    np.testing.assert_array_equal(data.images[0], ref)
    # a gray picture in a color run: three equal channels, the gray values (not inverted)
    gray = (rng.random((20, 20)) * 255).astype(np.uint8)
    Image.fromarray(gray).save(support / "a" / "g.png")
    data = read_labeled_folder(support, color_preprocessing(20))
    np.testing.assert_array_equal(data.images[data.files.index(str(support / "a" / "g.png"))], np.stack([gray] * 3))
    # the grayscale path is unchanged: 2-D in, 2-D out, inverted when asked
    g = decode_gray(str(path), "x")
    assert preprocess(g, {"size": 30, "invert": True}).shape == (30, 30)


def test_color_episodes_hold_the_pool_images() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5 * 4, 3, 6, 6), dtype=np.uint8)
    pool = ArrayPool(images, np.arange(0, 21, 4), [f"c{i}" for i in range(5)])
    batch = ClassificationEpisodes(pool, 3, 2, 1).sample(np.random.default_rng(1), 2)
    assert batch.support_x.shape == (2, 6, 3, 6, 6) and batch.query_x.shape == (2, 3, 3, 6, 6)
    assert batch.classes is not None
    for b in range(2):
        for j, c in enumerate(batch.classes[b]):
            own = images[4 * c : 4 * c + 4]
            for x in [*batch.support_x[b, 2 * j : 2 * j + 2], batch.query_x[b, j]]:
                assert any((x == o).all() for o in own), "an episode image is not one of its class's images"
    rotated = RotatedPool(pool)
    np.testing.assert_array_equal(rotated.get(1)[0], np.rot90(images[0], 1, axes=(1, 2)))


def test_image_size_is_validated() -> None:
    with pytest.raises(MetactlError, match="image-size must be 0"):
        TrainConfig(image_size=8)
    with pytest.raises(MetactlError, match="image-size applies to image data"):
        TrainConfig(data="sinusoid", image_size=32)
    with pytest.raises(MetactlError, match="glyphs are drawn at 28x28"):
        open_data(TrainConfig(data="glyphs", image_size=32))


def _reference(adapted: Path, pixels: np.ndarray) -> np.ndarray:
    """The adapted Conv-4 rebuilt from its files, fed pixels / 255 (no inversion for color), softmax."""
    meta = json.loads((adapted / "metactl.json").read_text())
    model = build_model(meta["model"])
    model.prepare_deployment()  # type: ignore[operator]
    model.load_state_dict(load_file(adapted / "model.safetensors"), strict=True)
    with torch.no_grad():
        return torch.softmax(model.eval()(torch.from_numpy(pixels) / 255.0), -1).numpy()


def _client_rgb(files: list[Path], size: int) -> np.ndarray:
    """What a client sends: decoded in RGB, resized (Lanczos), float32 NCHW."""
    return np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.Resampling.LANCZOS), np.float32).transpose(2, 0, 1) for f in files])


def test_adapt_separates_hues(ws: dict[str, Path]) -> None:
    """Classes that differ only in hue: the adapted color model tells the query images apart (a gray
    reading of the same files is at chance, as test_hue_classes_are_identical_in_gray shows)."""
    meta = json.loads((ws["adapted"] / "metactl.json").read_text())
    assert meta["preprocessing"]["channels"] == 3 and meta["preprocessing"]["size"] == 84
    assert meta["labels"] == ["blue-ish", "green-ish", "red-ish"]
    assert meta["query_accuracy"] >= 0.9, meta["query_accuracy"]
    files = sorted(ws["query"].rglob("*.png"))
    probs = _reference(ws["adapted"], _client_rgb(files, 84))
    truth = [meta["labels"].index(f.parent.name) for f in files]
    assert (probs.argmax(1) == truth).mean() >= 0.9


def test_export_and_predict_in_rgb(ws: dict[str, Path]) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(ws["export"] / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "pixels" and inp.shape[1:] == [3, 84, 84]
    exported = json.loads((ws["export"] / "metactl.json").read_text())
    assert exported["input"]["shape"] == ["batch", 3, 84, 84] and exported["preprocessing"]["channels"] == 3
    files = sorted(ws["query"].rglob("*.png")) + sorted(ws["shots"].rglob("*.png"))
    pixels = _client_rgb(files, 84)
    got = sess.run(["probabilities"], {"pixels": pixels})[0]
    np.testing.assert_allclose(got, _reference(ws["adapted"], pixels), atol=1e-4)
    r = _invoke("predict", str(ws["export"] / "model.onnx"), str(ws["query"]), "--json")
    results = json.loads(r.output)
    labels = exported["labels"]
    order = {str(f): i for i, f in enumerate(files)}
    want = {str(f): labels[int(got[order[str(f)]].argmax())] for f in files}
    assert len(results) == 18 and all(res["label"] == want[res["file"]] for res in results)
    np.testing.assert_allclose([res["probability"] for res in results], [float(got[order[res["file"]]].max()) for res in results], atol=1e-5)
