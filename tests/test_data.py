from __future__ import annotations

import itertools
import zipfile
from pathlib import Path

import numpy as np
import pytest

from metactl.config import TrainConfig
from metactl.data import RotatedPool, glyphs, open_data, split_classes
from metactl.data.episodes import ClassificationEpisodes, SinusoidEpisodes, episode_rng
from metactl.data.folder import ArrayPool, load_folder
from metactl.data.images import default_preprocessing
from metactl.errors import MetactlError


def test_glyphs_are_deterministic_28x28_and_distinct() -> None:
    a, b = glyphs.render_class(7), glyphs.render_class(7)
    assert a.shape == (20, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, glyphs.render_class(8))
    assert a.max() == 255 and a.min() == 0  # antialiased ink on an empty background
    assert 0 < len(np.unique(a)) - 2  # intermediate grey levels: antialiasing
    # drawings of one class differ from each other (jitter) but resemble each other more than other classes
    same = np.abs(a[0].astype(float) - a[1]).mean()
    other = np.mean([np.abs(a[0].astype(float) - glyphs.render_class(c)[0]).mean() for c in range(20, 30)])
    assert 0 < same < other


def test_glyph_class_ranges_are_disjoint() -> None:
    ranges = [glyphs.TRAIN, glyphs.VAL, glyphs.TEST]
    for (_, a1), (b0, _) in itertools.pairwise(ranges):
        assert a1 <= b0
    assert glyphs.TRAIN[1] - glyphs.TRAIN[0] >= 1000


def _pool(classes: int = 10, per: int = 20) -> ArrayPool:
    imgs = np.repeat(np.arange(classes, dtype=np.uint8), per)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    return ArrayPool(imgs, np.arange(0, classes * per + 1, per), [f"c{i}" for i in range(classes)])


def test_sampler_shapes_labels_and_reproducibility() -> None:
    sampler = ClassificationEpisodes(_pool(), ways=5, shots=2, queries=3)
    ep = sampler.sample(episode_rng(0, 4, 0), 6)
    assert ep.support_x.shape == (6, 10, 1, 4, 4) and ep.query_x.shape == (6, 15, 1, 4, 4)
    assert ep.support_y.tolist()[0] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.query_y.tolist()[0] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    for b in range(6):
        assert len(set(ep.classes[b].tolist())) == 5
        for j, c in enumerate(ep.classes[b]):  # label j is class c in this episode (pixel value = class id)
            assert (ep.support_x[b, ep.support_y[b] == j] == c).all()
            assert (ep.query_x[b, ep.query_y[b] == j] == c).all()
    again = sampler.sample(episode_rng(0, 4, 0), 6)
    assert np.array_equal(ep.support_x, again.support_x) and np.array_equal(ep.classes, again.classes)
    other = sampler.sample(episode_rng(0, 5, 0), 6)
    assert not np.array_equal(ep.classes, other.classes)


def test_support_and_query_images_are_disjoint() -> None:
    imgs = np.arange(10 * 20, dtype=np.int64).astype(np.uint8)  # unique per image within a class
    pool = ArrayPool(np.broadcast_to(imgs[:, None, None], (200, 2, 2)).copy(), np.arange(0, 201, 20), [str(i) for i in range(10)])
    ep = ClassificationEpisodes(pool, 5, 5, 15).sample(episode_rng(1, 0, 0), 4)
    for b in range(4):
        for j in range(5):
            s = set(ep.support_x[b, ep.support_y[b] == j, 0, 0, 0].tolist())
            q = set(ep.query_x[b, ep.query_y[b] == j, 0, 0, 0].tolist())
            assert not s & q and len(s) == 5 and len(q) == 15


def _reference_draws(counts: list[int], ways: int, shots: int, queries: int, rng: np.random.Generator, tasks: int) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """The episode draws as the image sampler and the former TextEpisodes made them: every task's classes
    first (of those with K + Q examples), then task by task, class by class, K + Q example indices."""
    eligible = np.array([c for c, n in enumerate(counts) if n >= shots + queries], dtype=np.int64)
    classes = np.stack([rng.choice(eligible, size=ways, replace=False) for _ in range(tasks)])
    picks = [[rng.choice(counts[int(c)], size=shots + queries, replace=False) for c in classes[b]] for b in range(tasks)]
    return classes, picks


def test_one_sampler_draws_images_and_texts_as_the_reference_does() -> None:
    from metactl.data.text import TextPool

    counts, ways, shots, queries, tasks = [9, 4, 12, 30, 6, 15, 5, 11], 4, 2, 3, 3
    offsets = np.concatenate([[0], np.cumsum(counts)])
    index = np.concatenate([np.arange(n) for n in counts]).astype(np.uint8)  # an image's pixels: its index in its class
    images = ArrayPool(np.broadcast_to(index[:, None, None], (len(index), 2, 2)).copy(), offsets, [f"c{c}" for c in range(len(counts))])
    # text i of class c: the tokens [101, c, i, 7 * (i % 3) fillers..., 102]: lengths differ within a batch
    rows = [[np.array([101, c, i, *[7] * (i % 3), 102], dtype=np.int64) for i in range(n)] for c, n in enumerate(counts)]
    texts = TextPool([f"c{c}" for c in range(len(counts))], rows)
    for seed in range(4):
        classes, picks = _reference_draws(counts, ways, shots, queries, np.random.default_rng(seed), tasks)
        support_ids = np.array([[i for p in task for i in p[:shots]] for task in picks])
        query_ids = np.array([[i for p in task for i in p[shots:]] for task in picks])
        im = ClassificationEpisodes(images, ways, shots, queries).sample(np.random.default_rng(seed), tasks)
        tx = ClassificationEpisodes(texts, ways, shots, queries).sample(np.random.default_rng(seed), tasks)
        for ep in (im, tx):
            assert np.array_equal(ep.classes, classes)
            assert ep.support_y.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]] * tasks
            assert ep.query_y.tolist() == [[j for j in range(ways) for _ in range(queries)]] * tasks
        assert im.support_x.shape == (tasks, ways * shots, 1, 2, 2) and im.support_x.dtype == np.uint8
        assert np.array_equal(im.support_x[:, :, 0, 0, 0], support_ids) and np.array_equal(im.query_x[:, :, 0, 0, 0], query_ids)
        for x, ids in ((tx.support_x, support_ids), (tx.query_x, query_ids)):
            assert np.array_equal(x["input_ids"][:, :, 2], ids)  # the same example indices
            assert np.array_equal(x["input_ids"][:, :, 1], np.repeat(classes, ids.shape[1] // ways, axis=1))  # of the same classes, class-major
            assert x["input_ids"].shape[-1] == 4 + int((ids % 3).max())  # padded to the batch's longest text


def test_too_few_classes_is_a_clear_error() -> None:
    with pytest.raises(MetactlError, match="5-way episode needs 5"):
        ClassificationEpisodes(_pool(classes=4), ways=5, shots=1, queries=1)
    with pytest.raises(MetactlError, match="at least 25 images"):
        ClassificationEpisodes(_pool(per=20), ways=5, shots=5, queries=20)


def test_split_is_disjoint_seeded_and_complete() -> None:
    train, val = split_classes(100, 0.1, seed=3, ways=5)
    assert not set(train) & set(val) and len(train) + len(val) == 100 and len(val) == 10
    assert split_classes(100, 0.1, seed=3, ways=5) == (train, val)


def test_rotations_add_three_new_classes_per_class() -> None:
    pool = RotatedPool(_pool())
    assert pool.num_classes == 40
    base = _pool().get(1)
    assert np.array_equal(pool.get(5), np.rot90(base, 1, axes=(-2, -1)))
    assert pool.names()[5] == "c1@rot90"


def test_sinusoid_family_ranges() -> None:
    ep = SinusoidEpisodes(10, 20).sample(episode_rng(0, 0, 0), 50)
    assert ep.support_x.shape == (50, 10, 1) and ep.query_y.shape == (50, 20, 1)
    x = np.concatenate([ep.support_x, ep.query_x], 1)
    y = np.concatenate([ep.support_y, ep.query_y], 1)
    assert x.min() >= -5 and x.max() <= 5 and np.abs(y).max() <= 5


def test_folder_and_zip_read_the_same(image_folder: Path, tmp_path: Path) -> None:
    prep = default_preprocessing(28, invert=True)
    from_dir = load_folder(image_folder, prep)
    zpath = tmp_path / "data.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(image_folder.rglob("*.png")):
            z.write(f, "top/" + f.relative_to(image_folder).as_posix())
        z.writestr("top/.hidden/x.png", b"junk")  # hidden folders are skipped
        z.writestr("top/readme.txt", b"not an image")
    from_zip = load_folder(zpath, prep)
    assert from_dir.num_classes == from_zip.num_classes == 6
    assert np.array_equal(from_dir.images, from_zip.images)
    assert from_dir.images.shape == (36, 28, 28)
    # ink (black in the files) becomes 255 after inversion; background 0
    assert from_dir.images.mean() < 128


def test_data_split_is_recorded_and_disjoint(image_folder: Path) -> None:
    cfg = TrainConfig(data=str(image_folder), ways=2, shots=1, query_shots=2, val_classes=0.3)
    data = open_data(cfg)
    assert set(data.split["train"]).isdisjoint(data.split["val"])
    assert len(data.split["train"]) + len(data.split["val"]) == 6
    assert data.preprocessing is not None and data.preprocessing["invert"] is True


def test_official_omniglot_zip_reads_as_downloaded(omniglot_dir: Path) -> None:
    pool = load_folder(omniglot_dir / "images_background.zip", default_preprocessing(28, invert=True))
    assert pool.num_classes == 964 and pool.images.shape == (19280, 28, 28)
    assert all(pool.count(c) == 20 for c in range(pool.num_classes))
    # same pixels as the packed reference arrays (ink = 255, Lanczos from 105x105)
    ref = np.load(omniglot_dir / "omniglot.npz")
    names = ref["character_names"]
    c = pool.names().index("images_background/Latin/character01")
    row = int(np.flatnonzero(names == "Latin/character01")[0]) * 20
    assert np.abs(pool.get(c).astype(int) - ref["images"][row : row + 20]).max() <= 1


def _unpack(bits: np.ndarray) -> np.ndarray:
    return np.unpackbits(bits, axis=-1)[..., : 105 * 105].reshape((*bits.shape[:-1], 105, 105))


def test_real_oneshot_runs_read_as_lake_published_them(oneshot_runs_zip: Path) -> None:
    """metactl's reader of Lake's real all_runs.zip (what ``--data oneshot:PATH`` evaluates) against an
    independent parse: zipfile + PIL + class_labels.txt, and the packed oneshot_runs.npz beside it."""
    import io
    import re

    from PIL import Image

    from metactl.data.omniglot import oneshot_runs

    runs = oneshot_runs(oneshot_runs_zip, default_preprocessing(105, invert=True))  # 105: the files' own size, no resampling
    b = runs.batch
    assert len(runs) == 20 and runs.ways == 20 and runs.shots == 1 and runs.names == [f"run{r:02d}" for r in range(1, 21)]
    assert b.support_x.shape == b.query_x.shape == (20, 20, 1, 105, 105)
    ref = np.load(oneshot_runs_zip.parent / "oneshot_runs.npz")
    assert np.array_equal(b.query_y, ref["test_label"])  # query i of run r belongs to training class test_label[r, i]
    assert np.array_equal(b.support_y, np.tile(np.arange(20), (20, 1)))
    assert np.array_equal(b.support_x[:, :, 0], _unpack(ref["train_bits"]) * 255)  # ink = 255
    assert np.array_equal(b.query_x[:, :, 0], _unpack(ref["test_bits"]) * 255)
    with zipfile.ZipFile(oneshot_runs_zip) as zf:

        def ink(member: str) -> np.ndarray:
            return 255 - np.asarray(Image.open(io.BytesIO(zf.read(member))).convert("L"))

        for r in (0, 7, 19):
            lines = zf.read(f"run{r + 1:02d}/class_labels.txt").decode().split()
            for i, (item, cls) in enumerate(zip(lines[::2], lines[1::2], strict=True)):
                assert item == f"run{r + 1:02d}/test/item{i + 1:02d}.png"
                label = int(re.fullmatch(rf"run{r + 1:02d}/training/class(\d\d)\.png", cls)[1]) - 1
                assert b.query_y[r, i] == label
                assert np.array_equal(b.query_x[r, i, 0], ink(item)) and np.array_equal(b.support_x[r, label, 0], ink(cls))


def test_real_oneshot_runs_as_evaluate_reads_them(oneshot_runs_zip: Path) -> None:
    """``--data oneshot:PATH`` in evaluate: 28x28 (inverted, then Lanczos, computed here by hand), whatever the run's invert."""
    import io

    from PIL import Image

    from metactl.data import held_out_sampler

    meta = {"task": "classification", "data": {"kind": "glyphs"}, "preprocessing": default_preprocessing(28, invert=False)}
    runs = held_out_sampler(meta, f"oneshot:{oneshot_runs_zip.parent}", 5, 1, 15)
    ep = runs.episodes(19, 1)
    assert ep.support_x.shape == (1, 20, 1, 28, 28) and ep.query_x.shape == (1, 20, 1, 28, 28)
    with zipfile.ZipFile(oneshot_runs_zip) as zf:
        img = 255 - np.asarray(Image.open(io.BytesIO(zf.read("run20/training/class05.png"))).convert("L"))
    expected = np.asarray(Image.fromarray(img).resize((28, 28), Image.Resampling.LANCZOS))
    assert np.array_equal(ep.support_x[0, 4, 0], expected)


def test_ci_fails_on_missing_real_data_and_on_skips(tmp_path: Path) -> None:
    """tests/conftest.py: with CI set, a missing dataset is an error and a skip (other than CUDA) fails the run; without CI both are listed skips."""
    import os
    import subprocess
    import sys

    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n"
        "def test_real(omniglot_dir):\n    pass\n\n"
        "def test_other():\n    pytest.skip('no data here')\n\n"
        "def test_gpu():\n    pytest.skip('needs CUDA')\n"
    )
    repo = Path(__file__).resolve().parents[1]

    def probe(ci: str, *tests: str) -> subprocess.CompletedProcess[str]:
        """Run the probe's ``tests`` (all when none), selected by node id: ``-k`` would also match the folder's name."""
        env = {**os.environ, "CI": ci, "METACTL_OMNIGLOT": str(tmp_path / "nonexistent")}
        ids = [f"{tmp_path / 'test_probe.py'}::{t}" for t in tests] or [str(tmp_path / "test_probe.py")]
        cmd = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-rs", "-p", "no:cacheprovider", *ids]
        return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=False)

    local = probe("")
    assert local.returncode == 0 and "3 skipped" in local.stdout and "Omniglot not found" in local.stdout, local.stdout
    missing = probe("true", "test_real")
    assert missing.returncode == 1 and "CI must run the real-data tests: Omniglot not found" in missing.stdout, missing.stdout
    skips = probe("true", "test_other", "test_gpu")  # skips only: the run still fails, naming every skip but the CUDA-only one
    assert skips.returncode == 1, skips.stdout
    not_allowed = skips.stdout.split("skips not allowed in CI")[1].split("short test summary")[0]
    assert "test_other: no data here" in not_allowed and "test_gpu" not in not_allowed
