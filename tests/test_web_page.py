"""The browser page ``examples/web`` (onnxruntime-web in headless Chromium) adapts and classifies as onnxruntime does.

A tiny image run (Conv-4, anil) and a tiny text run (the real all-MiniLM-L6-v2 body, protomaml) are exported with
``export --adaptable``; the page is served beside each export and driven through its test API ``window.metactl``
and through its buttons (strokes drawn with the mouse on the pad, texts typed into the label areas). The reference
is python onnxruntime running the same three graphs on the same inputs: probabilities within 1e-4, and the page's
token ids equal python ``tokenizers``' (the export's tokenizer.json, truncated at max_length) on tricky strings.

Needs Chromium (``/usr/bin/chromium``, or ``METACTL_CHROMIUM``), python Playwright and ``npm ci --prefix
examples/web`` (run here when npm is found): outside CI a missing browser or npm is a skip, in CI a failure.
"""

from __future__ import annotations

import base64
import csv
import json
import random
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from metactl.adaptable import export_adaptable
from metactl.config import TrainConfig
from metactl.data.tokens import encode, load_tokenizer
from metactl.modalities.image import raw_pixels
from metactl.testing import make_image_folder, tiny_config
from metactl.train import meta_train
from tests.conftest import in_ci
from tests.web_support import PageError, WebPage, browser_problem, chromium, ensure_node_modules, node_modules_missing, open_page

TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-3  # the text head's cosine logits are scaled by a learned temperature (~10-250)
IMAGE_WAYS = 3  # the image run's trained class count: adapting to 3 labels takes its "trained" path, to 4 its "other" path
TEXT_MAX_LENGTH = 32
TRICKY = [
    "Café déjà vu — naïve résumé, Ångström, façade",
    "I ❤️ 🍕 pizza 😀👍🏽 and 👨‍👩‍👧‍👦",
    "東京タワーに行きたい 你好世界 한국어 текст العربية",
    " ".join(f"word{i} and more" for i in range(200)),  # far past max_length: truncated
    "",
    "   ",
    "\t\n ",
    "?",
    "[CLS] hello [SEP] [PAD] [UNK] [MASK]",
    "supercalifragilistic" * 8,  # one word longer than WordPiece's max_input_chars_per_word
    "e\u0301 \u200b zero\u200dwidth ＦＵＬＬＷＩＤＴＨ ﬁ ligature",
    "don't won't y'all's — “quotes” «guillemets» ‘single’",
    "CamelCaseWords snake_case kebab-case 3.14159 $100 50% #tag @user",
]


# --- fixtures ------------------------------------------------------------------------------------


def _unavailable(why: str) -> None:
    if in_ci():
        pytest.fail(f"CI must run the browser tests: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = browser_problem()
    if problem:
        _unavailable(problem)
    if node_modules_missing():
        try:
            ensure_node_modules()
        except RuntimeError as exc:
            if "npm is not installed" in str(exc):
                _unavailable(str(exc))
            pytest.fail(str(exc), pytrace=False)
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def image_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("web-image")
    data = make_image_folder(root / "data", classes=8, per_class=6, size=28, ink=0.2, omniglot_layout=True)
    meta_train(tiny_config("anil", data, ways=IMAGE_WAYS), out=root / "run")
    export_adaptable(root / "run", root / "adaptable")
    return root / "adaptable"


@pytest.fixture(scope="module")
def image_files(image_export: Path) -> list[list[Path]]:
    """The tiny dataset's images, per class (as the files hold them: dark ink on white)."""
    data = image_export.parent / "data"
    return [sorted(d.glob("*.png")) for d in sorted(data.glob("alphabet*/character*"))]


@pytest.fixture
def image_page(browser: Any, image_export: Path) -> Iterator[WebPage]:
    with open_page(image_export, browser) as page:
        yield page
        assert not page.errors, page.errors


@pytest.fixture(scope="module")
def clinc(intents_dir: Path) -> dict[str, list[str]]:
    rows = json.loads((intents_dir / "clinc150" / "data_full.json").read_text(encoding="utf-8"))["train"]
    texts: dict[str, list[str]] = {}
    for text, label in rows:
        texts.setdefault(label, []).append(text)
    return texts


@pytest.fixture(scope="module")
def text_export(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, clinc: dict[str, list[str]]) -> Path:
    """A one-step protomaml run on six CLINC150 intents over the real MiniLM body, exported adaptable (~30 s)."""
    root = tmp_path_factory.mktemp("web-text")
    with open(root / "texts.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([t, label] for label in sorted(clinc)[:6] for t in clinc[label][:6])
    cfg = TrainConfig(
        algo="protomaml", backbone=str(minilm_dir), adapt="head", data=f"text:{root / 'texts.csv'}", ways=3, shots=1, query_shots=1,
        inner_steps=1, test_inner_steps=2, inner_lr=0.5, eval_every=0, max_length=TEXT_MAX_LENGTH, steps=1, meta_batch=1, threads=2,
    )  # fmt: skip
    meta_train(cfg, out=root / "run")
    export_adaptable(root / "run", root / "adaptable")
    return root / "adaptable"


@pytest.fixture(scope="module")
def text_page(browser: Any, text_export: Path) -> Iterator[WebPage]:
    with open_page(text_export, browser) as page:
        yield page
        assert not page.errors, page.errors


# --- the reference: python onnxruntime on the same three graphs ----------------------------------


@cache
def _sessions(folder: Path) -> tuple[Any, Any, Any]:
    return tuple(ort.InferenceSession(str(folder / g), providers=["CPUExecutionProvider"]) for g in ("embed.onnx", "adapt.onnx", "classify.onnx"))  # type: ignore[return-value]


def reference(folder: Path, support: dict[str, np.ndarray], labels: list[int], query: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """embed (the whole support in one call) -> adapt -> classify, as the folder's README says."""
    embed, adapt, classify = _sessions(folder)
    state_names = json.loads((folder / "metactl.json").read_text(encoding="utf-8"))["io"]["state"]
    out = embed.run(None, support)
    weight, bias = adapt.run(["weight", "bias"], {"features": out[0], "labels": np.asarray(labels, np.int64)})
    logits, probs = classify.run(["logits", "probabilities"], {**query, "weight": weight, "bias": bias, **dict(zip(state_names, out[1:], strict=True))})
    return {"weight": weight, "bias": bias, "logits": logits, "probabilities": probs}


def pixels_of(paths: list[Path]) -> np.ndarray:
    return np.stack([raw_pixels(p, 28) for p in paths]).astype(np.float32)[:, None]


def text_inputs(folder: Path, texts: list[str]) -> dict[str, np.ndarray]:
    inputs, _ = encode(load_tokenizer(folder / "tokenizer.json", TEXT_MAX_LENGTH), texts)
    return inputs


def shown_probabilities(page: WebPage) -> list[list[float]]:
    """The probabilities table on the page (each cell's exact value is in its data-p)."""
    rows = page.page.query_selector_all("#probabilities tbody tr")
    return [[float(td.get_attribute("data-p") or "nan") for td in tr.query_selector_all("td[data-p]")] for tr in rows]


def max_diff(page_rows: Any, expected: np.ndarray) -> float:
    got = np.asarray(page_rows, np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    return float(np.abs(got - expected).max())


# --- image models --------------------------------------------------------------------------------


@pytest.mark.parametrize("ways", [IMAGE_WAYS, IMAGE_WAYS + 1])
def test_image_page_matches_onnxruntime(image_page: WebPage, image_export: Path, image_files: list[list[Path]], ways: int) -> None:
    """Adapting to the trained label count (3) and to another (4): the page's head and probabilities are onnxruntime's."""
    support = [p for c in range(ways) for p in image_files[c][:2]]
    labels = [c for c in range(ways) for _ in range(2)]
    query = [image_files[c][k] for c in range(ways) for k in (2, 3)][:7]
    names = [f"glyph {c}" for c in range(ways)]
    adapted = image_page.adapt(labels, pixels=pixels_of(support), names=names)
    assert adapted["labels"] == names and adapted["timings"]["embed"] > 0
    result = image_page.classify(pixels=pixels_of(query))
    ref = reference(image_export, {"pixels": pixels_of(support)}, labels, {"pixels": pixels_of(query)})
    head = image_page.call("head")
    assert max_diff(head["weight"], ref["weight"]) <= TOLERANCE
    assert max_diff(head["bias"], ref["bias"]) <= TOLERANCE
    assert max_diff(result["probabilities"], ref["probabilities"]) <= TOLERANCE
    assert max_diff(result["logits"], ref["logits"]) <= TOLERANCE
    assert result["labels"] == names and len(result["probabilities"]) >= 5
    assert max_diff(shown_probabilities(image_page), ref["probabilities"]) <= TOLERANCE


def _draw(page: WebPage, strokes: list[list[tuple[float, float]]]) -> None:
    """Mouse strokes on the pad, points as fractions of its width and height."""
    box = page.page.locator("#pad").bounding_box()
    assert box is not None
    mouse = page.page.mouse
    for stroke in strokes:
        xs = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        mouse.move(*xs[0])
        mouse.down()
        for point in xs[1:]:
            mouse.move(*point, steps=6)
        mouse.up()


SHAPES = {
    "bar": [[(0.15, 0.5), (0.85, 0.5)]],
    "pole": [[(0.5, 0.15), (0.5, 0.85)]],
    "vee": [[(0.2, 0.2), (0.5, 0.8), (0.8, 0.2)]],
}


def test_image_page_buttons(image_page: WebPage, image_export: Path) -> None:
    """Draw two examples of three labels with the mouse, press Adapt, draw a query, press Classify: the probabilities
    shown are onnxruntime's on the pixels the page drew (dark strokes on white, 0-255, 28×28)."""
    page = image_page.page
    for name, strokes in SHAPES.items():
        for shift in (-0.08, 0.08):
            _draw(image_page, [[(x + shift, y - shift) for x, y in s] for s in strokes])
            page.fill("#label-name", name)
            page.click("#add-example")
    assert page.locator("#image-labels .label").count() == 3
    assert np.all(np.asarray(image_page.call("padPixels")) == 255)  # the pad is cleared after each example
    page.click("#adapt")
    page.wait_for_function("document.querySelector('#message').textContent.startsWith('Adapted')")
    _draw(image_page, [[(0.2, 0.45), (0.8, 0.55)]])
    page.click("#classify")
    page.wait_for_selector("#probabilities td[data-p]")
    shown = shown_probabilities(image_page)
    assert [th.text_content() for th in page.query_selector_all("#probabilities th")][1:] == list(SHAPES)
    support = page.evaluate("(() => { const s = window.metactl.uiSupport(); return {...s, pixels: Array.from(s.pixels)}; })()")
    query = np.asarray(image_page.call("padPixels"), np.float32).reshape(1, 1, 28, 28)
    pixels = np.asarray(support["pixels"], np.float32).reshape(-1, 1, 28, 28)
    assert support["labels"] == [0, 0, 1, 1, 2, 2] and support["names"] == list(SHAPES)
    for image in (*pixels, query[0]):  # dark ink on white paper, as image files hold them
        assert image.max() == 255 and image.min() <= 64 and 0.5 < (image == 255).mean() < 0.97
    ref = reference(image_export, {"pixels": pixels}, support["labels"], {"pixels": query})
    assert max_diff(shown, ref["probabilities"]) <= TOLERANCE
    timings = page.text_content("#timings") or ""
    assert all(k in timings for k in ("embed", "adapt", "classify"))


_COUNT = "([name, k]) => { const s = window.metactl.uiSupport(); return s.labels.filter((v) => v === s.names.indexOf(name)).length === k; }"
_DROP = """async ([name, b64]) => {
  const file = new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], "dropped.png", { type: "image/png" });
  const dt = new DataTransfer();
  dt.items.add(file);
  const card = document.querySelector(`#image-labels .label[data-label="${name}"]`);
  card.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
}"""


def test_image_page_files(image_page: WebPage, image_export: Path, image_files: list[list[Path]]) -> None:
    """Image files uploaded to labels and dropped on one come in exactly as the files hold them; a file opened on the
    pad is classified as onnxruntime classifies it."""
    page = image_page.page
    names = ["first", "second", "third"]
    for c, name in enumerate(names):
        page.fill("#label-name", name)
        page.click("#new-label")
        page.locator(f'#image-labels .label[data-label="{name}"] input[type=file]').set_input_files([str(p) for p in image_files[c][:2]])
        page.wait_for_function(_COUNT, arg=[name, 2])
    page.evaluate(_DROP, [names[0], base64.b64encode(image_files[0][2].read_bytes()).decode()])
    page.wait_for_function(_COUNT, arg=[names[0], 3])
    support = page.evaluate("(() => { const s = window.metactl.uiSupport(); return {...s, pixels: Array.from(s.pixels)}; })()")
    files = [*image_files[0][:3], *image_files[1][:2], *image_files[2][:2]]
    assert support["labels"] == [0, 0, 0, 1, 1, 2, 2]
    assert np.array_equal(np.asarray(support["pixels"], np.float32).reshape(-1, 1, 28, 28), pixels_of(files))
    page.click("#adapt")
    page.wait_for_function("document.querySelector('#message').textContent.startsWith('Adapted to 3 labels from 7')")
    query = image_files[1][4]
    page.set_input_files("#open-image", str(query))
    page.wait_for_function("Math.min(...window.metactl.padPixels()) < 255")
    assert np.array_equal(np.asarray(image_page.call("padPixels"), np.float32).reshape(1, 1, 28, 28), pixels_of([query]))
    page.click("#classify")
    page.wait_for_selector("#probabilities td[data-p]")
    ref = reference(image_export, {"pixels": pixels_of(files)}, support["labels"], {"pixels": pixels_of([query])})
    assert max_diff(shown_probabilities(image_page), ref["probabilities"]) <= TOLERANCE


def test_label_checks_refuse_before_any_graph_runs(image_page: WebPage, image_files: list[list[Path]]) -> None:
    pixels = pixels_of([image_files[0][0], image_files[0][1], image_files[1][0], image_files[1][1]])
    refusals = [
        (dict(labels=[0, 0, 1, 1], names=["a", "b", "c"]), 'Label "c" has no example'),
        (dict(labels=[0, 0, 2, 2]), "Label 1 has no example"),
        (dict(labels=[0, 0, 0, 0], names=["a"]), "at least 2 labels"),
        (dict(labels=[0, 0, 1, -1]), "class ids 0..C-1"),
        (dict(labels=[0, 1]), "4 images for 2 labels"),
    ]
    for support, message in refusals:
        with pytest.raises(PageError, match=message):
            image_page.adapt(pixels=pixels, **support)  # type: ignore[arg-type]
        assert message in image_page.message()
    with pytest.raises(PageError, match="Adapt first"):
        image_page.classify(pixels=pixels)
    page = image_page.page
    page.fill("#label-name", "empty")
    page.click("#new-label")
    page.fill("#label-name", "drawn")
    _draw(image_page, SHAPES["bar"])
    page.click("#add-example")
    page.click("#adapt")
    page.wait_for_function("document.querySelector('#message').textContent.includes('no example')")
    assert 'Label "empty" has no example' in image_page.message()
    assert page.locator("#message.error").is_visible() and page.locator("#classify").is_disabled()
    status = image_page.status()
    assert status["adapted"] is False and status["runs"] == {"embed": 0, "adapt": 0, "classify": 0}


# --- text models ---------------------------------------------------------------------------------


def test_text_page_token_ids_are_pythons(text_page: WebPage, text_export: Path) -> None:
    """tokenizers.js + the page's truncation and [CLS]/[SEP] wrap == python tokenizers with the export's tokenizer.json."""
    expected = [e.ids for e in load_tokenizer(text_export / "tokenizer.json", TEXT_MAX_LENGTH).encode_batch(TRICKY)]
    got = text_page.tokenize(TRICKY)
    assert len(expected[3]) == TEXT_MAX_LENGTH  # the long text was truncated
    assert [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e] == []


def _intent_split(clinc: dict[str, list[str]], ways: int, shots: int, queries: int) -> tuple[list[str], list[int], list[str], list[str]]:
    """Intents the run never saw: ``shots`` support texts of ``ways`` of them, and queries (theirs and an unrelated one)."""
    intents = sorted(clinc)[40 : 40 + ways]
    texts = [t for name in intents for t in clinc[name][:shots]]
    labels = [c for c in range(ways) for _ in range(shots)]
    rng = random.Random(0)
    query = [clinc[name][shots + k] for name in intents for k in range(queries)] + [rng.choice(clinc[sorted(clinc)[100]])]
    return texts, labels, query, intents


@pytest.mark.parametrize("ways", [3, 4])
def test_text_page_matches_onnxruntime(text_page: WebPage, text_export: Path, clinc: dict[str, list[str]], ways: int) -> None:
    texts, labels, query, intents = _intent_split(clinc, ways, shots=3, queries=2)
    query += TRICKY[:3] + TRICKY[4:5]  # accents, emoji, CJK, empty
    adapted = text_page.adapt(labels, texts=texts, names=intents)
    assert adapted["examples"] == len(texts)
    result = text_page.classify(texts=query)
    ref = reference(text_export, text_inputs(text_export, texts), labels, text_inputs(text_export, query))
    assert max_diff(result["probabilities"], ref["probabilities"]) <= TOLERANCE
    assert max_diff(result["logits"], ref["logits"]) <= LOGIT_TOLERANCE
    assert max_diff(text_page.call("head")["weight"], ref["weight"]) <= TOLERANCE


def test_text_page_buttons(text_page: WebPage, text_export: Path, clinc: dict[str, list[str]]) -> None:
    texts, labels, query, intents = _intent_split(clinc, 3, shots=2, queries=1)
    query += [t.strip() for t in TRICKY[:3]]  # unsure predictions: probabilities that a wrong input would move
    page = text_page.page
    page.evaluate("document.querySelectorAll('#text-labels .text-label').forEach((c, i) => i > 0 && c.remove())")
    while page.locator("#text-labels .text-label").count() < 3:
        page.click("#add-text-label")
    cards = page.locator("#text-labels .text-label")
    for c, name in enumerate(intents):
        cards.nth(c).locator("input").fill(name)
        cards.nth(c).locator("textarea").fill("\n".join(t for t, y in zip(texts, labels, strict=True) if y == c) + "\n\n")
    page.click("#adapt")
    page.wait_for_function("document.querySelector('#message').textContent.startsWith('Adapted to 3 labels from 6')")
    page.fill("#query-text", "\n".join(query))
    page.click("#classify")
    page.wait_for_selector("#probabilities td[data-p]")
    shown = shown_probabilities(text_page)
    ref = reference(text_export, text_inputs(text_export, texts), labels, text_inputs(text_export, query))
    assert max_diff(shown, ref["probabilities"]) <= TOLERANCE
    assert ((np.asarray(shown) > 0.01) & (np.asarray(shown) < 0.99)).any()  # not all saturated: a wrong input would show
    assert [r.text_content() for r in page.query_selector_all("#probabilities tbody td:first-child")] == query
    cards.nth(2).locator("textarea").fill("   \n")
    page.click("#adapt")
    page.wait_for_function("document.querySelector('#message').textContent.includes('no example')")
    assert f'Label "{intents[2]}" has no example' in text_page.message()
