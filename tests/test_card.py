"""The model card in every export (export/README.md): Hugging Face layout, YAML front matter parsed with
PyYAML and checked against facts computed here independently (the support folder's subfolders and file
counts, an onnxruntime run of our own on the query files, the recorded commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from metactl.card import hub_id, render
from metactl.cli import app
from tests.conftest import write_image_folder

runner = CliRunner()


def split_card(text: str) -> tuple[dict[str, Any], str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _folder(root: Path, seed: int, per_class: int) -> Path:
    """3 labels (their folder names), images of the same 3 glyph classes for support and query."""
    tree = write_image_folder(root.with_name(root.name + "-tree"), classes=3, per_class=per_class, size=20, seed=seed)
    root.mkdir()
    for i, d in enumerate(sorted(tree.glob("*/*"), key=lambda d: d.name)):
        d.rename(root / f"label-{i}")
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("card")
    run, adapted, export = root / "run", root / "adapted", root / "export"
    r = runner.invoke(app, ["meta-train", "--steps", "3", "--meta-batch", "2", "--eval-every", "0", "--eval-episodes", "3", "--width", "8",
                            "--query-shots", "2", "--threads", "1", "--out", str(run)])  # fmt: skip
    assert r.exit_code == 0, r.output
    support = _folder(root / "shots", seed=3, per_class=2)
    (support / "label-1" / "extra.png").write_bytes(sorted((support / "label-1").glob("*.png"))[0].read_bytes())  # 3 images for one label
    query = _folder(root / "queries", seed=3, per_class=4)
    r = runner.invoke(app, ["adapt", "--support", str(support), "--from", str(run), "--query", str(query), "--out", str(adapted)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "--from", str(adapted), "--quantize", "int8", "--out", str(export)])
    assert r.exit_code == 0, r.output
    return {"run": run, "adapted": adapted, "export": export, "support": support, "query": query}


def _independent_accuracy(export: Path, query: Path) -> float:
    """Query accuracy from onnxruntime alone: decode, grayscale, resize, raw 0-255, argmax."""
    sess = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    labels = json.loads(sess.get_modelmeta().custom_metadata_map["labels"])
    size = sess.get_inputs()[0].shape[-1]
    files = sorted(query.glob("*/*.png"))
    pixels = np.stack([np.asarray(Image.open(f).convert("L").resize((size, size), Image.Resampling.LANCZOS)) for f in files])[:, None].astype(np.float32)
    pred = sess.run(["probabilities"], {"pixels": pixels})[0].argmax(-1)
    return float(np.mean([labels[p] == f.parent.name for p, f in zip(pred, files, strict=True)]))


def test_card_front_matter_matches_the_facts(exported: dict[str, Path]) -> None:
    export = exported["export"]
    meta, _ = split_card((export / "README.md").read_text(encoding="utf-8"))
    assert meta["library_name"] == "metactl"
    assert meta["pipeline_tag"] == "image-classification"
    assert {"metactl", "meta-learning", "maml", "onnx"} <= set(meta["tags"])
    assert "license" not in meta and "base_model" not in meta  # not known for a Conv-4 trained here
    (index,) = meta["model-index"]
    (result,) = index["results"]
    (metric,) = result["metrics"]
    assert result["task"]["type"] == "image-classification" and metric["type"] == "accuracy"
    assert metric["value"] == pytest.approx(_independent_accuracy(export, exported["query"]), abs=1e-6)


def test_card_body_labels_support_figures_and_commands(exported: dict[str, Path]) -> None:
    export, support = exported["export"], exported["support"]
    _, body = split_card((export / "README.md").read_text(encoding="utf-8"))
    recorded = json.loads((export / "metactl.json").read_text())
    labels = sorted(d.name for d in support.iterdir() if d.is_dir())
    rows = [line for line in body.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [(int(r.split("|")[1]), r.split("|")[2].strip(), int(r.split("|")[3])) for r in rows] == [
        (i, lab, len(list((support / lab).glob("*.png")))) for i, lab in enumerate(labels)
    ]
    for heading in ("## What was adapted from what", "## Labels", "## Support set", "## Evaluation", "## How it was made", "## Intended use", "## Limitations"):
        assert heading in body
    assert f"`{exported['run'].resolve()}`" in body and "**Algorithm:** maml" in body
    assert f"{recorded['check']['max_abs_diff']:.2e}" in body
    assert f"{100 * recorded['quantization']['argmax_agreement_with_float']:.2f} %" in body
    commands = body.split("## How it was made")[1].split("```")[1].splitlines()[1:]
    train = commands[0].split()
    assert train[:2] == ["metactl", "meta-train"] and " ".join(train).count("--steps 3") == 1 and train[-2:] == ["--out", str(exported["run"])]
    assert commands[1] == f"metactl adapt --support {support} --from {exported['run']} --query {exported['query']} --out {exported['adapted']}"
    assert commands[2] == f"metactl export --from {exported['adapted']} --quantize int8 --out {export}"


def test_card_is_written_with_the_other_files(exported: dict[str, Path]) -> None:
    names = sorted(p.name for p in exported["export"].iterdir())
    assert names == ["README.md", "metactl.json", "model.int8.onnx", "model.onnx", "model.safetensors"]
    assert not list(exported["export"].parent.glob(".export*"))  # no temp folder left beside it


def test_text_backbone_card_names_licence_and_base_model(tmp_path: Path) -> None:
    backbone = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc123"
    backbone.mkdir(parents=True)
    (backbone / "README.md").write_text("---\nlanguage: en\nlicense: apache-2.0\ntags:\n- sentence-transformers\n---\n# all-MiniLM-L6-v2\n")
    assert hub_id(backbone) == "sentence-transformers/all-MiniLM-L6-v2"
    adapted = {
        "labels": ["billing", "greeting: \"hi\""], "algorithm": "protomaml", "steps": 2, "source_run": "/runs/t",
        "model": {"kind": "text-classifier", "backbone": str(backbone), "backbone_sha256": "ab" * 32, "adapt": "head"},
        "support": {"folder": "/s", "texts": 4, "per_label": {"billing": 2, "greeting: \"hi\"": 2}}, "query_accuracy": None,
        "preprocessing": {"kind": "text", "max_length": 128},
    }  # fmt: skip
    export = {"input": {"names": ["input_ids", "attention_mask"]}, "check": {"max_abs_diff": 1e-6, "texts": 4, "on": "support texts"}, "opset": 18}
    meta, body = split_card(render(adapted, None, export, "intents", ["README.md", "model.onnx"]))
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["pipeline_tag"] == "text-classification" and "model-index" not in meta  # no --query: no accuracy claimed
    assert '| 1 | greeting: "hi" | 2 |' in body and "not measured" in body


def test_card_names_the_hub_id_revision_commit_and_sha256_the_backbone_came_from(tmp_path: Path) -> None:
    """A run given ``--backbone org/name@rev`` records ``backbone_source``: the card's base_model is that hub id (the
    folder itself is not in a hub-cache layout), and the body names id, revision, commit and the whole sha256."""
    folder = tmp_path / "mirror" / "minilm"
    folder.mkdir(parents=True)
    sha, commit = "cd" * 32, "0123456789abcdef0123456789abcdef01234567"
    source = {"hub_id": "sentence-transformers/all-MiniLM-L6-v2", "revision": "v1.0", "commit": commit}
    adapted = {
        "labels": ["a", "b"], "algorithm": "anil", "steps": 1, "source_run": "/runs/t", "preprocessing": {"kind": "text"},
        "model": {"kind": "text-classifier", "backbone": str(folder), "backbone_sha256": sha, "backbone_source": source, "adapt": "head"},
        "support": {"folder": "/s", "texts": 2, "per_label": {"a": 1, "b": 1}},
    }  # fmt: skip
    export = {"check": {"max_abs_diff": 1e-6, "texts": 2, "on": "support texts"}, "opset": 18}
    meta, body = split_card(render(adapted, None, export, "x", ["model.onnx"]))
    assert hub_id(folder) is None and meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    (line,) = [line for line in body.splitlines() if "Hugging Face hub" in line]
    assert "`sentence-transformers/all-MiniLM-L6-v2`" in line and "revision `v1.0`" in line and f"commit `{commit}`" in line and f"`{sha}`" in line
    adapted["model"] = {k: v for k, v in adapted["model"].items() if k != "backbone_source"}
    meta, body = split_card(render(adapted, None, export, "x", ["model.onnx"]))
    assert "base_model" not in meta and "Hugging Face hub" not in body  # nothing claimed without the record
