"""Harder training episodes (``--episode-classes nearest|domain``): on a hand-made pool whose class centroids are
built here (unit vectors at known angles), ``nearest`` episodes hold an anchor and only classes among its
2·(ways − 1) nearest by angle; ``domain`` episodes stay within one domain; only training classes (and only
eligible ones) are drawn, the centroids come from the training texts alone; the default ``random`` draws
exactly what the plain sampler draws; real CLINC150 / HWU64 domains; image data is refused; a real run with
``--train-layers 1 --label-names --episode-classes nearest`` trains."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from metactl.cli import app
from metactl.config import TrainConfig
from metactl.data import open_data
from metactl.data.episodes import ClassificationEpisodes
from metactl.data.text import (
    TEST_DOMAINS,
    TRAIN_DOMAINS,
    VAL_DOMAINS,
    ChosenEpisodes,
    DomainClasses,
    NamedChosenEpisodes,
    NamedEpisodes,
    NearestClasses,
    TextPool,
)
from metactl.errors import MetactlError
from metactl.train import meta_train

runner = CliRunner()
GAPS = [0.31, 0.47, 0.22, 0.58, 0.36, 0.41, 0.27, 0.63, 0.33, 0.5, 0.29, 0.44]  # distinct angle gaps: no ties between neighbours
ANGLES = np.cumsum(GAPS)  # class c's centroid is the unit vector at ANGLES[c] (the gaps add up to < 2π: a ring with a seam)
PER_CLASS = 4


def _nearest_by_angle(c: int, m: int, classes: list[int]) -> set[int]:
    """The m classes of ``classes`` (other than c) with the smallest angle to c on the circle: a reference
    computed from the construction, not from the code under test."""

    def gap(a: int, b: int) -> float:
        d = abs(ANGLES[a] - ANGLES[b]) % (2 * math.pi)
        return min(d, 2 * math.pi - d)

    return set(sorted((o for o in classes if o != c), key=lambda o: gap(c, o))[:m])


def _features(c: int, i: int) -> np.ndarray:
    """Text i of class c: the class's unit vector ± a perpendicular offset (pairs cancel: the class mean is the unit vector)."""
    v = np.array([math.cos(ANGLES[c]), math.sin(ANGLES[c]), 0.0])
    off = [np.array([0.0, 0.0, 0.3]), np.array([-math.sin(ANGLES[c]), math.cos(ANGLES[c]), 0.0]) * 0.2][i // 2]
    return v + (off if i % 2 == 0 else -off)


def _pool(counts: list[int] | None = None) -> TextPool:
    """Class c's text i is the token row [101, c, i, 102]; :func:`_fn` maps it to :func:`_features` (c, i)."""
    counts = counts or [PER_CLASS] * len(ANGLES)
    rows = [[np.array([101, 1000 + c, 2000 + i, 102], dtype=np.int64) for i in range(n)] for c, n in enumerate(counts)]
    return TextPool([f"intent_{c}" for c in range(len(counts))], rows)


def _fn(x: dict[str, np.ndarray]) -> np.ndarray:
    ids = x["input_ids"]
    return np.stack([_features(int(r[1]) - 1000, int(r[2]) - 2000) for r in ids]).astype(np.float32)


def _draws(sampler: Any, n: int, seed: int = 0) -> list[np.ndarray]:
    return [sampler.sample(np.random.default_rng([seed, k]), 1).classes[0] for k in range(n)]


def test_nearest_episodes_hold_an_anchor_and_only_its_nearest_classes() -> None:
    ways = 3
    sampler = ChosenEpisodes(_pool(), ways, 1, 1, choice=NearestClasses)
    with pytest.raises(RuntimeError, match="centroids were not computed"):
        sampler.sample(np.random.default_rng(0), 1)
    sampler.precompute_centroids(_fn, batch_size=5)  # several chunks
    classes = list(range(len(ANGLES)))
    seen = set()
    for drawn in _draws(sampler, 300):
        members = [int(c) for c in drawn]
        assert len(set(members)) == ways
        anchors = [a for a in members if set(members) - {a} <= _nearest_by_angle(a, 2 * (ways - 1), classes)]
        assert anchors, f"{members}: no member has every other among its {2 * (ways - 1)} nearest"
        seen.add(frozenset(members))
    assert len(seen) > 2 * len(ANGLES)  # the anchor and the draw among its nearest vary
    # random classes would often break the rule: a plain sampler's draws do
    plain = _draws(ClassificationEpisodes(_pool(), ways, 1, 1), 300)
    assert any(not any(set(map(int, d)) - {a} <= _nearest_by_angle(a, 4, classes) for a in map(int, d)) for d in plain)


def test_nearest_draws_only_eligible_classes_and_composes_with_label_names() -> None:
    counts = [PER_CLASS] * len(ANGLES)
    counts[5] = 1  # too few texts for shots 1 + queries 1: never drawn, though it is a near neighbour of 4 and 6
    pool = _pool(counts)
    names_pool = TextPool([f"intent_{c}" for c in range(len(counts))], [[np.array([101, 7, 102])] for _ in counts])
    sampler = NamedChosenEpisodes(pool, 4, 1, 1, names_pool, choice=NearestClasses)
    assert isinstance(sampler, NamedEpisodes)
    sampler.precompute_centroids(_fn)
    eligible = [c for c in range(len(counts)) if counts[c] >= 2]
    for k in range(200):
        b = sampler.sample(np.random.default_rng([1, k]), 1)
        members = [int(c) for c in b.classes[0]]
        assert 5 not in members
        assert any(set(members) - {a} <= _nearest_by_angle(a, 6, eligible) for a in members)
        assert b.support_y.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3]]  # K + 1 support per class: the name after its text
        assert (b.support_x["input_ids"][0, 1::2, 1] == 7).all()


def test_the_centroids_come_from_the_training_texts_alone(tmp_path: Path, minilm_dir: Path) -> None:
    path = tmp_path / "texts.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([(f"utterance {i} about topic {c}", f"topic_{c}") for c in range(12) for i in range(3)])
    cfg = TrainConfig(data=f"text:{path}", backbone=str(minilm_dir), ways=3, shots=1, query_shots=1, val_classes=0.25, episode_classes="nearest")
    data = open_data(cfg)
    train, val = data.train, data.val
    assert type(train) is ChosenEpisodes and type(val) is ClassificationEpisodes  # validation stays random
    seen: list[np.ndarray] = []

    def fn(x: dict[str, np.ndarray]) -> np.ndarray:
        seen.extend(x["input_ids"])
        return np.random.default_rng(len(seen)).normal(size=(len(x["input_ids"]), 4))

    train.precompute_centroids(fn)
    tok = {tuple(r[r > 0].tolist()) for r in seen}
    want = {tuple(r.tolist()) for rows in train.pool.rows for r in rows}
    assert tok == want and len(seen) == len(train.pool)  # every training text once, no validation text
    val_labels = set(val.pool.labels)
    for drawn in _draws(train, 100):
        assert not {train.pool.labels[int(c)] for c in drawn} & val_labels


def test_domain_episodes_stay_within_one_domain() -> None:
    pool = _pool()
    domains = {f"intent_{c}": "abc"[c % 3] if c < 11 else "d" for c in range(12)}  # a: 4, b: 4, c: 3, d: 1 intents
    sampler = ChosenEpisodes(pool, 3, 1, 1, choice=lambda p, e, w: DomainClasses(p, e, w, domains, "test"))
    assert isinstance(sampler.choice, DomainClasses)
    sampler.precompute_centroids(_fn)  # nothing to compute: domains need no features
    got = set()
    for drawn in _draws(sampler, 200):
        ds = {domains[f"intent_{int(c)}"] for c in drawn}
        assert len(ds) == 1 and len(set(map(int, drawn))) == 3
        got |= ds
    assert got == {"a", "b", "c"}  # every domain with 3 intents, never the one-intent domain d
    # more ways than any domain holds: whole domains fill the episode, at most one of them in part
    wide = ChosenEpisodes(pool, 6, 1, 1, choice=lambda p, e, w: DomainClasses(p, e, w, domains, "test"))
    size = {d: list(domains.values()).count(d) for d in "abcd"}
    for drawn in _draws(wide, 100):
        members = [domains[f"intent_{int(c)}"] for c in drawn]
        assert len(set(map(int, drawn))) == 6
        assert sum(members.count(d) < size[d] for d in set(members)) <= 1


def test_domain_without_domains_is_one_error() -> None:
    with pytest.raises(MetactlError, match="has no domains"):
        ChosenEpisodes(_pool(), 3, 1, 1, choice=lambda p, e, w: DomainClasses(p, e, w, None, "text:x.csv"))
    one = {f"intent_{c}": "banking" for c in range(12)}
    with pytest.raises(MetactlError, match=r"all of one domain \(banking\)"):
        ChosenEpisodes(_pool(), 3, 1, 1, choice=lambda p, e, w: DomainClasses(p, e, w, one, "intents:banking77"))


def test_random_is_the_plain_sampler_with_the_same_draws(tmp_path: Path, minilm_dir: Path) -> None:
    path = tmp_path / "texts.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *((f"text {i} of {c}", f"label_{c}") for c in range(8) for i in range(4))])
    for label_names in (False, True):
        data = open_data(TrainConfig(data=f"text:{path}", backbone=str(minilm_dir), ways=3, shots=1, query_shots=2, label_names=label_names))
        assert type(data.train) is (NamedEpisodes if label_names else ClassificationEpisodes)
        plain = ClassificationEpisodes(data.train.pool, 3, 1, 2)
        for k in range(5):
            a, b = (s.sample(np.random.default_rng([3, k]), 2) for s in (data.train, plain))
            assert np.array_equal(a.classes, b.classes) and np.array_equal(a.query_x["input_ids"], b.query_x["input_ids"])


def _domain_of(label: str, clinc: dict[str, str]) -> str:
    dataset, _, intent = label.rpartition("/")
    return {"clinc150": lambda: clinc[intent], "hwu64": lambda: intent.split("_")[0]}.get(dataset or "clinc150", lambda: "banking")()


@pytest.mark.parametrize("protocol", ["domains", "unseen-banking77"])
def test_real_intents_domain_episodes(protocol: str, intents_dir: Path, minilm_dir: Path) -> None:
    raw = json.loads((intents_dir / "clinc150" / "domains.json").read_text(encoding="utf-8"))
    clinc = {i: d for d, intents in raw.items() for i in intents}
    cfg = TrainConfig(data=f"intents:{intents_dir}", protocol=protocol, backbone=str(minilm_dir), ways=5, shots=1, query_shots=1, episode_classes="domain")
    data = open_data(cfg)
    labels, val = data.train.pool.labels, set(data.val.pool.labels)
    domains_seen = set()
    for drawn in _draws(data.train, 200):
        names = [labels[int(c)] for c in drawn]
        assert not set(names) & val
        ds = {(n.split("/")[0] if "/" in n else "") + ":" + _domain_of(n, clinc) for n in names}
        assert len(ds) == 1, names
        domains_seen |= ds
    if protocol == "domains":
        assert {d.split(":")[1] for d in domains_seen} == set(TRAIN_DOMAINS)  # never work (validation), travel or utility (test)
        assert not {d.split(":")[1] for d in domains_seen} & {*VAL_DOMAINS, *TEST_DOMAINS}
    else:
        assert {d.split(":")[0] for d in domains_seen} == {"clinc150", "hwu64"}


def test_domain_on_one_domain_data_and_nearest_on_images_are_refused(intents_dir: Path, minilm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MetactlError, match="all of one domain"):
        open_data(TrainConfig(data=f"intents:{intents_dir / 'banking77'}", backbone=str(minilm_dir), ways=5, episode_classes="domain"))
    out = tmp_path / "run"
    r = runner.invoke(app, ["meta-train", "--data", "glyphs", "--episode-classes", "nearest", "--steps", "1", "--out", str(out)])
    assert r.exit_code == 1 and "--episode-classes nearest chooses training episodes' intents: text data only" in r.output, r.output
    assert not out.exists()
    r = runner.invoke(app, ["meta-train", "--data", "glyphs", "--episode-classes", "nearst", "--out", str(out)])
    assert r.exit_code == 1 and "episode-classes must be one of random, nearest, domain (got 'nearst')" in r.output, r.output


def test_a_nearest_run_with_cached_layers_and_label_names_trains(minilm_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "texts.csv"
    topics = ["weather", "music", "banking", "travel", "cooking", "sports", "movies", "health"]
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *((f"a question {i} about {t}", f"{t}_query") for t in topics for i in range(4))])
    cfg = TrainConfig(algo="protomaml", data=f"text:{path}", backbone=str(minilm_dir), train_layers=1, label_names=True, episode_classes="nearest",
                      ways=3, shots=1, query_shots=1, steps=2, meta_batch=2, inner_steps=0, test_inner_steps=0, eval_every=0, threads=1)  # fmt: skip
    result = meta_train(cfg, out=tmp_path / "run")
    meta = json.loads((result.path / "metactl.json").read_text(encoding="utf-8"))
    assert result.steps == 2 and meta["config"]["episode_classes"] == "nearest"
