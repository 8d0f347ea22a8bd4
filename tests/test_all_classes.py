"""The few-shot intent papers' setting, ``metactl evaluate --all-classes``, and CLINC150's whole-domain
episodes, ``--by-domain``, on the real intents data (``../shared/datasets/intents``): support texts come
from the unseen dataset's ``train`` split, the queries are exactly its ``test`` split's in-scope texts
(counted here from the raw files), draws repeat by seed and differ between draws; end to end with a
nearest-centroid run on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer
from typer.testing import CliRunner

from metactl.cli import app
from metactl.data import all_classes_sampler, domain_sampler
from metactl.data.text import AllClassesEpisodes, DomainEpisodes
from metactl.errors import MetactlError

runner = CliRunner()
MAX_LENGTH = 64


def _meta(intents_dir: Path, minilm_dir: Path, protocol: str = "domains") -> dict[str, Any]:
    """What a text run's metactl.json says (the fields the samplers read)."""
    return {
        "config": {"ways": 5, "val_classes": 0.1, "seed": 0, "data": f"intents:{intents_dir}", "protocol": protocol},
        "data": {"kind": "intents", "path": str(intents_dir.resolve()), "protocol": protocol},
        "preprocessing": {"kind": "text", "tokenizer": str(minilm_dir / "tokenizer.json"), "max_length": MAX_LENGTH},
    }


# --- the raw files, read here without metactl -------------------------------------------------------


def raw_splits(intents_dir: Path, dataset: str) -> dict[str, list[tuple[str, str]]]:
    """``train``/``test`` -> (text, intent) pairs, in-scope only, straight from the published files."""
    folder = intents_dir / dataset
    if dataset == "clinc150":
        data = json.loads((folder / "data_full.json").read_text(encoding="utf-8"))
        return {s: [(t, i) for t, i in data[s] if i != "oos"] for s in ("train", "test")}
    if dataset == "banking77":
        out = {}
        for s in ("train", "test"):
            with (folder / f"{s}.csv").open(newline="", encoding="utf-8") as f:
                out[s] = [(r["text"].strip(), r["category"].strip()) for r in csv.DictReader(f)]
        return out
    return {
        s: list(zip((folder / "split" / s / "seq.in").read_text(encoding="utf-8").splitlines(),
                    (folder / "split" / s / "label").read_text(encoding="utf-8").splitlines(), strict=True))
        for s in ("train", "test")
    }  # fmt: skip


def token_rows(minilm_dir: Path, pairs: list[tuple[str, str]], dataset: str) -> Counter[tuple[str, tuple[int, ...]]]:
    """(dataset/intent, token ids) of every pair, as a multiset: MiniLM's tokenizer, truncated at MAX_LENGTH."""
    tok = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LENGTH)
    enc = tok.encode_batch([t.strip() for t, _ in pairs])
    return Counter((f"{dataset}/{i}", tuple(e.ids)) for (_, i), e in zip(pairs, enc, strict=True))


def episode_rows(x: dict[str, np.ndarray], y: np.ndarray, labels: list[str]) -> Counter[tuple[str, tuple[int, ...]]]:
    """(intent, token ids without padding) of an episode's examples (task 0)."""
    ids, mask = x["input_ids"][0], x["attention_mask"][0]
    return Counter((labels[int(c)], tuple(int(t) for t in row[m.astype(bool)])) for row, m, c in zip(ids, mask, y[0], strict=True))


# --- --all-classes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["hwu64", "banking77", "clinc150"])
def test_all_classes_support_from_train_and_queries_are_the_whole_test_split(intents_dir: Path, minilm_dir: Path, dataset: str) -> None:
    sampler = all_classes_sampler(_meta(intents_dir, minilm_dir), f"intents:{intents_dir}", 5, f"unseen-{dataset}")
    assert isinstance(sampler, AllClassesEpisodes)
    raw = raw_splits(intents_dir, dataset)
    intents = sampler.support.labels  # label index -> intent
    assert sorted(intents) == sorted({f"{dataset}/{i}" for _, i in raw["train"]})
    assert sampler.ways == len(intents) == {"clinc150": 150, "banking77": 77, "hwu64": 64}[dataset]
    test = token_rows(minilm_dir, raw["test"], dataset)
    assert len(sampler) == sum(test.values()) == {"clinc150": 4500, "banking77": 3080, "hwu64": 1076}[dataset]
    train = token_rows(minilm_dir, raw["train"], dataset)
    for d in (0, 1):
        ep = sampler.draw(7, d)
        assert episode_rows(ep.query_x, ep.query_y, intents) == test  # every in-scope test text once, with its intent
        support = episode_rows(ep.support_x, ep.support_y, intents)
        assert sum(support.values()) == 5 * len(intents)
        assert Counter(label for label, _ in support.elements()) == Counter({i: 5 for i in intents})  # K per intent
        assert all(train[row] >= n for row, n in support.items())  # from the train split, with its own intent
        assert sum(n for row, n in support.items() if row not in test) > 0.9 * 5 * len(intents)  # not the test split


def test_all_classes_draws_repeat_by_seed_and_differ_between_draws(intents_dir: Path, minilm_dir: Path) -> None:
    meta = _meta(intents_dir, minilm_dir)
    one = all_classes_sampler(meta, f"intents:{intents_dir}", 1, "unseen-hwu64")
    two = all_classes_sampler(meta, f"intents:{intents_dir}", 1, "unseen-hwu64")
    assert [p.tolist() for p in one.picks(0, 2)] == [p.tolist() for p in two.picks(0, 2)]  # a function of (seed, d) only
    ep = one.draw(0, 2)
    assert np.array_equal(ep.support_x["input_ids"], two.draw(0, 2).support_x["input_ids"])
    assert one.picks(0, 0) != one.picks(0, 1) and [p.tolist() for p in one.picks(0, 0)] != [p.tolist() for p in one.picks(0, 1)]
    assert [p.tolist() for p in one.picks(0, 0)] != [p.tolist() for p in one.picks(1, 0)]
    two.draw(0, 5)  # drawing others first changes nothing
    assert [p.tolist() for p in two.picks(0, 2)] == [p.tolist() for p in one.picks(0, 2)]


def test_all_classes_with_precomputed_features_encodes_only_what_is_drawn(intents_dir: Path, minilm_dir: Path) -> None:
    sampler = all_classes_sampler(_meta(intents_dir, minilm_dir), f"intents:{intents_dir}", 2, "unseen-hwu64")
    tokens = sampler.draw(3, 0)
    seen: list[int] = []

    def fn(x: dict[str, np.ndarray]) -> np.ndarray:  # a stand-in body: the features are the first token ids
        seen.append(len(x["input_ids"]))
        return np.pad(x["input_ids"], ((0, 0), (0, 40)))[:, :8].astype(np.float32)

    sampler.precompute(fn)
    assert sum(seen) == 1076  # the test split once
    ep = sampler.draw(3, 0)
    assert sum(seen) == 1076 + 64 * 2  # then the draw's support texts only
    np.testing.assert_array_equal(ep.support_x["features"][0], np.pad(tokens.support_x["input_ids"][0], ((0, 0), (0, 40)))[:, :8])
    np.testing.assert_array_equal(ep.query_y, tokens.query_y)


def test_all_classes_on_the_validation_intents_never_reads_a_test_split(intents_dir: Path, minilm_dir: Path) -> None:
    meta = _meta(intents_dir, minilm_dir, "unseen-clinc150")
    sampler = all_classes_sampler(meta, None, 5, None, "val")
    assert sampler.query is None and sampler.ways == 14  # BANKING77 + HWU64 less 10 %: 14 validation intents (seed 0)
    ep = sampler.draw(0, 0)
    labels = sampler.support.labels
    sup, que = episode_rows(ep.support_x, ep.support_y, labels), episode_rows(ep.query_x, ep.query_y, labels)
    train = token_rows(minilm_dir, raw_splits(intents_dir, "banking77")["train"], "banking77") + token_rows(
        minilm_dir, raw_splits(intents_dir, "hwu64")["train"], "hwu64"
    )
    assert all(train[row] >= n for row, n in (sup + que).items())  # train split texts only
    assert sum(sup.values()) + sum(que.values()) == len(sampler.support) and len(sampler) == sum(que.values())


def test_all_classes_errors(intents_dir: Path, minilm_dir: Path) -> None:
    meta = _meta(intents_dir, minilm_dir)
    with pytest.raises(MetactlError, match=r"fewer than 40 texts for intent .*--shots 40 needs 40") as e:
        all_classes_sampler(meta, f"intents:{intents_dir}", 40, "unseen-hwu64")  # HWU64 has intents with 33 train texts
    assert e.value.hint == "Lower --shots."
    with pytest.raises(MetactlError, match=r"--split val reads the run's own data"):
        all_classes_sampler(meta, f"intents:{intents_dir / 'hwu64'}", 1, None, "val")
    with pytest.raises(MetactlError, match=r"--all-classes is for text data"):
        all_classes_sampler({"config": {}, "data": {"kind": "glyphs"}}, None, 1)


# --- --by-domain ------------------------------------------------------------------------------------


def test_by_domain_episodes_are_whole_test_domains(intents_dir: Path, minilm_dir: Path) -> None:
    sampler = domain_sampler(_meta(intents_dir, minilm_dir), None, 5, 10)
    assert isinstance(sampler, DomainEpisodes) and sampler.ways == 15 and sampler.domains == ["travel", "utility"]
    domains = json.loads((intents_dir / "clinc150" / "domains.json").read_text())
    whole = {frozenset(domains[d]) for d in ("travel", "utility")}
    test = token_rows(minilm_dir, raw_splits(intents_dir, "clinc150")["test"], "clinc150")
    ep = sampler.sample(np.random.default_rng(0), 8)
    drawn = [frozenset(sampler.pool.labels[c] for c in task) for task in ep.classes]
    assert set(drawn) == whole  # every episode one whole domain; both domains drawn
    for b in range(8):
        labels = [f"clinc150/{sampler.pool.labels[c]}" for c in ep.classes[b]]
        rows = episode_rows({k: v[b : b + 1] for k, v in ep.query_x.items()}, ep.query_y[b : b + 1], labels)
        rows += episode_rows({k: v[b : b + 1] for k, v in ep.support_x.items()}, ep.support_y[b : b + 1], labels)
        assert sum(rows.values()) == 15 * 15 and all(test[row] >= n for row, n in rows.items())  # test split, right intents
    with pytest.raises(MetactlError, match=r"--by-domain draws whole CLINC150 domains; the protocol here is unseen-hwu64") as e:
        domain_sampler(_meta(intents_dir, minilm_dir), f"intents:{intents_dir}", 5, 10, "unseen-hwu64")
    assert e.value.hint == "Add --protocol domains."
    val = domain_sampler(_meta(intents_dir, minilm_dir), None, 5, 10, None, "val")
    assert val.domains == ["work"] and set(val.pool.labels) == set(domains["work"])


# --- end to end ----------------------------------------------------------------------------------------


def _invoke(*args: Any) -> Any:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def centroid_run(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, intents_dir: Path) -> Path:
    """A nearest-centroid run on MiniLM (nothing is meta-trained; its data is a small CSV)."""
    root = tmp_path_factory.mktemp("all-classes")
    train = raw_splits(intents_dir, "banking77")["train"]
    intents = ("card_arrival", "age_limit", "atm_support", "top_up_failed", "pin_blocked", "lost_or_stolen_card")
    rows = [(t, i) for intent in intents for t, i in train if i == intent][::12]
    with (root / "texts.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    _invoke("meta-train", "--algo", "centroid", "--backbone", minilm_dir, "--adapt", "head", "--data", f"text:{root / 'texts.csv'}", "--ways", "2",
            "--shots", "1", "--query-shots", "1", "--steps", "1", "--eval-every", "0", "--eval-episodes", "1", "--out", root / "centroid")  # fmt: skip
    return root / "centroid"


def test_evaluate_all_classes_end_to_end(centroid_run: Path, intents_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    r = _invoke("evaluate", "--from", centroid_run, "--data", f"intents:{intents_dir}", "--protocol", "unseen-hwu64", "--all-classes",
                "--shots", "1", "--episodes", "2", "--steps", "1", "--json", out)  # fmt: skip
    assert "all 64 classes, 1-shot, 1076 query texts" in " ".join(r.output.split())
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert result["setting"] == "all-classes" and run["ways"] == 64 and run["query_texts"] == 1076 and run["episodes"] == 2
    per_draw = np.array(run["per_episode"])
    assert per_draw.shape == (2, 2) and np.all(per_draw[:, 0] < 0.05)  # step 0: the zero head, chance
    assert np.all(per_draw[:, 1] > 0.4) and per_draw[0, 1] != per_draw[1, 1]  # the centroid head: far above chance 1/64; draws differ
    assert run["steps"][1]["mean"] == pytest.approx(per_draw[:, 1].mean())
    for args, message in (
        (["--ways", "5"], "--all-classes sets the number of classes itself (got --ways 5). Drop --ways."),
        (["--by-domain"], "--all-classes and --by-domain are two different settings. Pass one of them."),
    ):
        bad = runner.invoke(app, ["evaluate", "--from", str(centroid_run), "--data", f"intents:{intents_dir}", "--all-classes", *args])
        assert bad.exit_code == 1 and message in " ".join(bad.output.split()) and len(bad.output.strip().splitlines()) <= 2, bad.output
