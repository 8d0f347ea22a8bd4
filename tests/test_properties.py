"""Property-based tests (hypothesis) for the folder reader and the episode sampler."""

from __future__ import annotations

import tempfile
import unicodedata
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from metactl.data.episodes import ClassificationEpisodes, episode_rng
from metactl.data.folder import ArrayPool
from metactl.data.images import default_preprocessing
from metactl.data.support import read_labeled_folder

label_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="/\\\x00"), min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".") and s.strip() == s and s not in (".", "..") and len(s.encode()) < 200
)
modes = st.sampled_from(["1", "L", "P", "RGB", "RGBA", "I;16"])
formats = st.sampled_from(["png", "bmp", "gif", "tiff", "webp", "jpg"])


def _save(path: Path, mode: str, fmt: str, size: tuple[int, int], seed: int) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0])).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16) * 257)
        fmt = "png" if fmt not in ("png", "tiff") else fmt
    elif mode != "L":
        img = img.convert(mode)
    if fmt == "jpg" and img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    if fmt == "bmp" and img.mode == "RGBA":
        fmt = "png"
    out = path.with_suffix("." + fmt)
    img.save(out)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    labels=st.lists(label_text, min_size=2, max_size=5, unique_by=lambda s: unicodedata.normalize("NFC", s).casefold()),
    counts=st.lists(st.integers(1, 3), min_size=5, max_size=5),
    mode=modes,
    fmt=formats,
    size=st.tuples(st.integers(1, 60), st.integers(1, 60)),
)
def test_folder_reader_reads_any_labels_and_images(labels: list[str], counts: list[int], mode: str, fmt: str, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, label in enumerate(labels):
            (root / label).mkdir()
            for j in range(counts[i]):
                _save(root / label / f"img{j}", mode, fmt, size, seed=i * 10 + j)
        (root / labels[0] / "notes.txt").write_text("skip me")
        data = read_labeled_folder(root, {**default_preprocessing(), "invert": None})
        names = sorted(unicodedata.normalize("NFC", p.name) for p in root.iterdir())
        assert data.labels == names  # sorted, one per folder
        assert data.images.shape == (sum(counts[: len(labels)]), 28, 28) and data.images.dtype == np.uint8
        assert [data.counts()[unicodedata.normalize("NFC", lab)] for lab in labels] == counts[: len(labels)]
        assert len(data.skipped) == 1 and data.skipped[0].endswith("notes.txt")
        assert set(data.targets.tolist()) == set(range(len(labels)))


@settings(max_examples=60, deadline=None)
@given(
    n_classes=st.integers(2, 12),
    per_class=st.lists(st.integers(1, 12), min_size=12, max_size=12),
    ways=st.integers(2, 6),
    shots=st.integers(1, 4),
    queries=st.integers(1, 4),
    tasks=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    step=st.integers(0, 10**6),
)
def test_episode_sampler_properties(n_classes: int, per_class: list[int], ways: int, shots: int, queries: int, tasks: int, seed: int, step: int) -> None:
    counts = per_class[:n_classes]
    # image pixel value = its index within the whole pool (mod 256 is fine: we track ids separately)
    ids = np.arange(sum(counts))
    images = np.stack([np.full((2, 2), i % 256, np.uint8) for i in ids]) if len(ids) else np.zeros((0, 2, 2), np.uint8)
    pool = ArrayPool(images, np.concatenate([[0], np.cumsum(counts)]), [f"c{i}" for i in range(n_classes)])
    eligible = sum(c >= shots + queries for c in counts)
    try:
        sampler = ClassificationEpisodes(pool, ways, shots, queries)
    except Exception as exc:  # too few usable classes: must be the clear MetactlError
        from metactl.errors import MetactlError

        assert isinstance(exc, MetactlError) and eligible < ways
        return
    assert eligible >= ways
    ep = sampler.sample(episode_rng(seed, step, 0), tasks)
    assert ep.support_x.shape == (tasks, ways * shots, 1, 2, 2) and ep.query_x.shape == (tasks, ways * queries, 1, 2, 2)
    for b in range(tasks):
        classes = ep.classes[b]
        assert len(set(classes.tolist())) == ways
        assert all(counts[c] >= shots + queries for c in classes)
        assert ep.support_y[b].tolist() == np.repeat(np.arange(ways), shots).tolist()
        assert ep.query_y[b].tolist() == np.repeat(np.arange(ways), queries).tolist()
    again = sampler.sample(episode_rng(seed, step, 0), tasks)
    assert np.array_equal(again.support_x, ep.support_x) and np.array_equal(again.query_x, ep.query_x)
