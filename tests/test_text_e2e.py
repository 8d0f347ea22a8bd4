"""End to end on the real pretrained sentence encoder all-MiniLM-L6-v2 (``../shared/models``) and real
CLINC150 texts (``../shared/datasets/intents``): meta-train on a small labeled-text CSV (head, and a
2-step LoRA run), adapt on a folder of ``.txt`` files, export ONNX (+ int8), then an independent client
(onnxruntime + tokenizers + config.json, nothing from metactl) gives the probabilities of a torch
reference built from transformers and the adapted head, and ``metactl predict`` names the same labels.
The body stays bit for bit the pretrained one and is never stored; a changed backbone is refused.
``metactl evaluate`` scores two text runs on the same episodes."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")

import onnxruntime as ort
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoModel
from typer.testing import CliRunner

import metactl.evaluate as evaluate_mod
from metactl.cli import app
from metactl.runs import load_run

runner = CliRunner()

TRAIN_INTENTS = ["alarm", "balance", "book_flight", "calculator", "calories", "car_rental", "cook_time", "flip_coin", "jump_start", "meaning_of_life"]
PER_INTENT = 12  # texts per training intent (CLINC150's train split)
SHOTS_AS_LINES = ["translate", "weather"]  # shots/<label>.txt, one example per line
SHOTS_AS_FILES = ["tell_joke"]  # shots/<label>/*.txt, one example per file
SHOTS = 5
EVAL_INTENTS = ["timer", "greeting", "pto_request", "todo_list"]  # neither meta-trained on nor in the support set
MAX_LENGTH = 64
COMMON = ["--ways", "3", "--shots", "2", "--query-shots", "4", "--eval-every", "0", "--max-length", str(MAX_LENGTH)]


def _clinc_train(intents_dir: Path) -> dict[str, list[str]]:
    rows = json.loads((intents_dir / "clinc150" / "data_full.json").read_text(encoding="utf-8"))["train"]
    texts: dict[str, list[str]] = {}
    for text, label in rows:
        texts.setdefault(label, []).append(text)
    return texts


def _backbone_copy(minilm: Path, root: Path) -> Path:
    """The pretrained folder as links to the real files, its weights file a copy this test may change."""
    root.mkdir()
    for entry in minilm.iterdir():
        if entry.name == "model.safetensors":
            shutil.copyfile(entry, root / entry.name)
        else:
            (root / entry.name).symlink_to(entry.resolve())
    return root


def _invoke(*args: str) -> Any:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path, intents_dir: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("text-e2e")
    texts = _clinc_train(intents_dir)
    data = root / "texts.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([t, label] for label in TRAIN_INTENTS for t in texts[label][:PER_INTENT])
    shots = root / "shots"
    shots.mkdir()
    for label in SHOTS_AS_LINES:
        (shots / f"{label}.txt").write_text("\n\n".join(texts[label][:SHOTS]) + "\n", encoding="utf-8")  # blank lines are skipped
    for label in SHOTS_AS_FILES:
        (shots / label).mkdir()
        for i, t in enumerate(texts[label][:SHOTS]):
            (shots / label / f"{i:02d}.txt").write_text(t + "\n", encoding="utf-8")
    probe = [t for label in sorted(SHOTS_AS_LINES + SHOTS_AS_FILES) for t in texts[label][SHOTS : SHOTS + 3]]  # never adapted on
    backbone = _backbone_copy(minilm_dir, root / "minilm")
    head = root / "run-head"
    _invoke("meta-train", "--backbone", backbone, "--adapt", "head", "--data", f"text:{data}", *COMMON, "--meta-batch", "4", "--steps", "3",
            "--inner-steps", "2", "--test-inner-steps", "10", "--inner-lr", "4", "--eval-episodes", "10", "--out", head)  # fmt: skip
    yield {"root": root, "data": data, "shots": shots, "probe": probe, "backbone": backbone, "minilm": minilm_dir, "head": head}


def _body_name(name: str) -> str:
    """A frozen parameter's name in the model -> its name in the backbone's model.safetensors."""
    name = name.removeprefix("encoder.").removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def _check_body(run: Path, backbone: Path) -> None:
    """The run stores no body weight; the body it trains on is bit for bit the pretrained file's."""
    original = load_file(str(backbone / "model.safetensors"))
    theta = run / "theta.safetensors"
    assert theta.stat().st_size * 50 < (backbone / "model.safetensors").stat().st_size
    stored = set(load_numpy(str(theta)))
    assert not {k for k in stored if k.startswith("encoder.") and "lora_" not in k}, sorted(stored)[:5]
    _, learner = load_run(run)
    frozen = {_body_name(k): v for k, v in learner.frozen.items()}
    assert set(frozen) == {k for k in original if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    for k, v in frozen.items():
        assert torch.equal(v.detach().cpu(), original[k]), k


def _reference(adapted: Path, backbone: Path, texts: list[str]) -> np.ndarray:
    """torch, text by text, unpadded: transformers' encoder, mean pooling, L2 normalisation, the adapted head."""
    encoder = AutoModel.from_pretrained(backbone, local_files_only=True).eval()
    head = load_file(str(adapted / "model.safetensors"))
    tok = Tokenizer.from_file(str(backbone / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LENGTH)
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok.encode(t).ids])
            hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            f = F.normalize(hidden.mean(1), dim=-1)
            out.append(torch.softmax(f @ head["head.weight"].T + head["head.bias"], -1)[0].numpy())
    return np.stack(out)


def _client(export: Path, texts: list[str], model: str = "model.onnx") -> tuple[list[str], np.ndarray]:
    """What any client does with the export folder: onnxruntime, tokenizers, config.json's labels."""
    session = ort.InferenceSession(str(export / model), providers=["CPUExecutionProvider"])
    enc = Tokenizer.from_file(str(export / "tokenizer.json")).encode_batch(texts)
    inputs = {"input_ids": np.array([e.ids for e in enc], np.int64), "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
    config = json.loads((export / "config.json").read_text(encoding="utf-8"))
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return labels, session.run(["probabilities"], inputs)[0]


def test_meta_train_adapt_export_predict_on_minilm(ws: dict[str, Any]) -> None:
    root, backbone, probe = ws["root"], ws["backbone"], ws["probe"]
    _check_body(ws["head"], backbone)

    # LoRA: two outer steps; θ holds the adapters and the head, the body is still not stored and never moves
    lora = root / "run-lora"
    _invoke("meta-train", "--backbone", backbone, "--adapt", "lora", "--lora-rank", "2", "--algo", "fomaml", "--data", f"text:{ws['data']}",
            *COMMON, "--meta-batch", "2", "--steps", "2", "--inner-steps", "1", "--test-inner-steps", "1", "--eval-episodes", "1", "--out", lora)  # fmt: skip
    assert any("lora_A" in k for k in load_numpy(str(lora / "theta.safetensors")))
    _check_body(lora, backbone)

    adapted, export = root / "adapted", root / "export"
    _invoke("adapt", "--from", ws["head"], "--support", ws["shots"], "--out", adapted)
    info = json.loads((adapted / "metactl.json").read_text(encoding="utf-8"))
    assert info["labels"] == ["tell_joke", "translate", "weather"] and info["support"]["texts"] == 3 * SHOTS, info["support"]
    assert set(load_numpy(str(adapted / "model.safetensors"))) == {"head.weight", "head.bias"}  # the body comes back from the backbone
    _invoke("export", "--from", adapted, "--onnx", "--quantize", "int8", "--out", export)

    labels, probs = _client(export, probe)
    want = _reference(adapted, backbone, probe)
    np.testing.assert_allclose(probs, want, atol=1e-4)
    assert labels == info["labels"] and probs.shape == (len(probe), 3)
    assert len(set(want.argmax(1).tolist())) > 1  # not one label for everything: the comparison below means something
    _, int8 = _client(export, probe, "model.int8.onnx")
    assert np.allclose(int8.sum(1), 1, atol=1e-5) and float((int8.argmax(1) == probs.argmax(1)).mean()) >= 0.5

    r = _invoke("predict", export, *probe, "--json")
    assert [x["label"] for x in json.loads(r.output)] == [labels[i] for i in probs.argmax(1)]

    # the pretrained file changed since meta-training: adapt refuses it in one line, writes nothing
    weights = backbone / "model.safetensors"
    saved = root / "model.safetensors.orig"
    os.replace(weights, saved)
    try:
        tensors = load_file(str(saved))
        tensors["encoder.layer.0.attention.self.query.bias"][0] += 1e-3
        save_file(tensors, str(weights), metadata={"format": "pt"})
        r = runner.invoke(app, ["adapt", "--from", str(ws["head"]), "--support", str(ws["shots"]), "--out", str(root / "adapted-changed")])
        assert r.exit_code == 1 and "is not the file this was trained on" in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (root / "adapted-changed").exists()
    finally:
        os.replace(saved, weights)


def _spy_episodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[np.ndarray, ...]]:
    """Every evaluation chunk: (classes, support labels, query labels, support features, query features)."""
    seen: list[tuple[np.ndarray, ...]] = []
    original = evaluate_mod.to_batch

    def spy(ep: Any, device: Any = "cpu") -> Any:
        seen.append((ep.classes, ep.support_y, ep.query_y, ep.support_x["features"], ep.query_x["features"]))
        return original(ep, device)

    monkeypatch.setattr(evaluate_mod, "to_batch", spy)
    return seen


def test_evaluate_two_text_runs_on_the_same_episodes(ws: dict[str, Any], intents_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A meta-learned head and the nearest-centroid baseline, on the runs' own held-out labels (``--data``
    omitted) and on ``--data text:FILE`` of other labels: both runs see the same episodes (classes,
    labels, texts), every label of the file is used."""
    centroid = ws["root"] / "run-centroid"
    _invoke("meta-train", "--backbone", ws["backbone"], "--adapt", "head", "--algo", "centroid", "--steps", "1", "--data", f"text:{ws['data']}",
            *COMMON, "--eval-episodes", "2", "--out", centroid)  # fmt: skip
    other = ws["root"] / "other.csv"
    texts = _clinc_train(intents_dir)
    with other.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *([t, label] for label in EVAL_INTENTS for t in texts[label][:8])])
    held_out = json.loads((ws["head"] / "metactl.json").read_text(encoding="utf-8"))["split"]["val"]
    seen = _spy_episodes(monkeypatch)
    for data, labels in (([], len(held_out)), (["--data", f"text:{other}"], len(EVAL_INTENTS))):
        seen.clear()
        out = ws["root"] / f"eval-{len(data)}.json"
        _invoke("evaluate", "--from", ws["head"], centroid, *data, "--query-shots", "4", "--episodes", "30", "--steps", "2", "--json", out)
        result = json.loads(out.read_text(encoding="utf-8"))
        assert [r["algorithm"] for r in result["runs"]] == ["maml", "centroid"] and result["data"] == (data[1] if data else None)
        assert [(r["episodes"], r["ways"]) for r in result["runs"]] == [(30, 3), (30, 3)]
        assert len(seen) == 4  # 30 episodes in chunks of 20, for each run
        for a, b in zip(seen[:2], seen[2:], strict=True):
            for x, y in zip(a[:3], b[:3], strict=True):
                np.testing.assert_array_equal(x, y)
            for x, y in zip(a[3:], b[3:], strict=True):
                np.testing.assert_allclose(x, y, atol=1e-6)
        assert len(np.unique(np.concatenate([s[0].ravel() for s in seen]))) == labels
        for r in result["runs"]:
            assert r["steps"][-1]["mean"] > 0.5, r  # adapted beats chance (1/3) on these intents


def test_evaluate_a_text_run_with_an_intents_protocol(ws: dict[str, Any], intents_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``metactl evaluate --data intents:DIR --protocol domains`` samples CLINC150's test domains (travel,
    utility) from the ``test`` split; an unknown protocol is one line naming every protocol."""
    clinc = ws["root"] / "intents" / "clinc150"
    clinc.mkdir(parents=True)
    shutil.copyfile(intents_dir / "clinc150" / "domains.json", clinc / "domains.json")
    full = json.loads((intents_dir / "clinc150" / "data_full.json").read_text(encoding="utf-8"))
    texts = _clinc_train(intents_dir)  # the protocol reads every domain's intents: one text each
    domains = json.loads((clinc / "domains.json").read_text(encoding="utf-8"))
    test_intents = {i for d in ("travel", "utility") for i in domains[d]}
    rows: list[list[str]] = []
    for text, intent in full["test"]:
        if sum(r[1] == intent for r in rows) < 6:  # 6 texts per intent
            rows.append([text, intent])
    (clinc / "data_full.json").write_text(json.dumps({"train": [[t[0], i] for i, t in texts.items()], "test": rows}), encoding="utf-8")
    seen = _spy_episodes(monkeypatch)
    names: list[str] = []
    monkeypatch.setattr(evaluate_mod, "held_out_sampler", _recording(evaluate_mod.held_out_sampler, names))
    _invoke("evaluate", "--from", ws["head"], "--data", f"intents:{clinc}", "--protocol", "domains", "--query-shots", "3", "--episodes", "10", "--steps", "1")
    assert len(seen) == 1 and sorted(names) == sorted(test_intents) and len(names) == 30
    for protocol, message in (("unseen-hwu64", "--protocol unseen-hwu64 needs all three datasets"), ("bogus", "--protocol bogus: unknown")):
        r = runner.invoke(app, ["evaluate", "--from", str(ws["head"]), "--data", f"intents:{clinc}", "--protocol", protocol])
        assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert "lake, vinyals, domains, unseen-clinc150, unseen-banking77, unseen-hwu64" in r.output


def _recording(held_out_sampler: Any, names: list[str]) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        sampler = held_out_sampler(*args, **kwargs)
        names.extend(sampler.pool.labels)
        return sampler

    return wrapped


def test_adapt_on_a_frozen_body_runs_it_once_and_matches_the_loop_that_runs_it_every_step(ws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """With a frozen body under the head, ``metactl adapt`` runs the body once per support text (batched by
    length) and takes its 5 inner steps on those features. The reference runs the body inside every step:
    the algorithm's own inner loop on the tokenized texts (tokenized here, padded to the longest)."""
    from metactl.config import TrainConfig
    from metactl.evaluate import algorithm_of_run
    from metactl.models.text import TextClassifier
    from metactl.runs import with_head

    calls: list[int] = []
    encode = TextClassifier.encode
    monkeypatch.setattr(TextClassifier, "encode", lambda self, ids, mask: calls.append(ids.shape[0]) or encode(self, ids, mask))
    adapted = ws["root"] / "adapted-once"
    _invoke("adapt", "--from", ws["head"], "--support", ws["shots"], "--steps", "5", "--out", adapted)
    assert calls == [3 * SHOTS], calls  # one body pass over the 15 support texts; support accuracy comes from the same features
    monkeypatch.setattr(TextClassifier, "encode", encode)

    shots = ws["shots"]
    labels = sorted(SHOTS_AS_LINES + SHOTS_AS_FILES)
    texts = {lab: [t for t in (shots / f"{lab}.txt").read_text(encoding="utf-8").splitlines() if t.strip()] for lab in SHOTS_AS_LINES}
    texts.update({lab: [p.read_text(encoding="utf-8").strip() for p in sorted((shots / lab).glob("*.txt"))] for lab in SHOTS_AS_FILES})
    tok = Tokenizer.from_file(str(ws["backbone"] / "tokenizer.json"))
    tok.enable_truncation(MAX_LENGTH)
    tok.enable_padding()
    enc = tok.encode_batch([t for lab in labels for t in texts[lab]])
    x = {"input_ids": torch.tensor([e.ids for e in enc]), "attention_mask": torch.tensor([e.attention_mask for e in enc])}
    y = torch.tensor([i for i, lab in enumerate(labels) for _ in texts[lab]])
    meta, learner = load_run(ws["head"])
    learner, _ = with_head(learner, meta["model"], len(labels))
    steps = json.loads((adapted / "metactl.json").read_text(encoding="utf-8"))["steps"]
    phi = algorithm_of_run(meta, TrainConfig(**meta["config"])).adapt(learner, x, y, steps)[-1]
    got = load_file(str(adapted / "model.safetensors"))
    assert steps == 5 and float(phi["head.weight"].abs().max()) > 1e-3  # the head moved away from zero
    for name in ("head.weight", "head.bias"):
        torch.testing.assert_close(got[name], phi[name].detach(), atol=2e-5, rtol=1e-4)
