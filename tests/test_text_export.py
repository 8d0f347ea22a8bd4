"""Text export and predict, against a stand-in text model written here (a randomly initialised tiny
``transformers.BertModel`` + mean pooling + L2 normalisation + linear head) that speaks only the
interface export relies on: ``export_module(prep)`` (``input_names``, ``output_names``,
``example_inputs()``, ``client_inputs(examples)``) and ``export_assets(labels)``.

The references are independent of metactl's serving code: a plain ``onnxruntime.InferenceSession``
fed by ``tokenizers.Tokenizer`` loaded from the exported tokenizer.json, labels from the exported
config.json's id2label, compared with torch on the same texts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn
from transformers import BertConfig, BertModel
from typer.testing import CliRunner

import metactl.models
from metactl.cli import app
from metactl.models import ModelBase
from tests.conftest import drift_the_exported_graph
from tests.test_text_support import EXAMPLES, WORDS, write_tokenizer

runner = CliRunner()
MAX_LENGTH = 8
LABELS = sorted(EXAMPLES)
QUERY = {"music": ["play music", "some music please"], "travel": ["a flight to paris", "book flight"], "weather": ["weather today", "what weather"]}
PROBE = ["play some music please", "book a flight to paris please thanks hello the weather today tomorrow", "hello", "what is the weather tomorrow"]


class TextExport(nn.Module):
    input_names = ["input_ids", "attention_mask"]  # noqa: RUF012
    output_names = ["logits", "probabilities"]  # noqa: RUF012

    def __init__(self, model: TinyText) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model({"input_ids": input_ids, "attention_mask": attention_mask})
        return logits, torch.softmax(logits, -1)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])

    def client_inputs(self, examples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(examples[k], dtype=np.int64) for k in self.input_names}


class TinyText(ModelBase):
    """Tiny BERT (hidden 32, 2 layers), mean pooling over the mask, L2 normalised, linear head."""

    masked_pooling = True  # a mutant sets False: pooling over padding too

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        config = BertConfig(
            vocab_size=len(WORDS) + 4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
            attn_implementation="eager",
        )  # fmt: skip
        self.body = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(32, int(spec["num_classes"]))

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TinyText:
        return cls(spec)

    def forward(self, x: Any, ref: int | None = None, tasks: int = 1, return_features: bool = False) -> torch.Tensor:
        h = self.body(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        m = x["attention_mask"].unsqueeze(-1).to(h.dtype) if self.masked_pooling else torch.ones_like(h[..., :1])
        f = F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
        return f if return_features else self.head(f)

    def export_module(self, preprocessing: dict[str, Any]) -> TextExport:
        return TextExport(self)

    def export_assets(self, labels: list[str]) -> dict[str, bytes]:
        config = {
            **self.body.config.to_dict(),
            "architectures": ["BertForSequenceClassification"],
            "id2label": dict(enumerate(labels)),
            "label2id": {lab: i for i, lab in enumerate(labels)},
        }
        return {"tokenizer.json": Path(self.spec["tokenizer"]).read_bytes(), "config.json": json.dumps(config).encode()}


class _EntryPoint:
    def __init__(self, cls: type) -> None:
        self.cls, self.value = cls, f"{__name__}:{cls.__name__}"

    def load(self) -> type:
        return self.cls


def _register(mp: pytest.MonkeyPatch, cls: type = TinyText) -> None:
    real = metactl.models.MODELS.entry_points()
    mp.setattr(metactl.models.MODELS, "_found", {**real, "tiny-text": _EntryPoint(cls)})


def _write_lines(root: Path, examples: dict[str, list[str]]) -> Path:
    root.mkdir(parents=True)
    for label, texts in examples.items():
        (root / f"{label}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return root


def _adapted(root: Path, tokenizer: Path, seed: int = 0) -> Path:
    """An adapted folder as `metactl adapt` writes one (metactl.json + model.safetensors) for the stand-in model."""
    spec = {"kind": "tiny-text", "num_classes": len(LABELS), "tokenizer": str(tokenizer)}
    torch.manual_seed(seed)
    model = TinyText(spec)
    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()
    with torch.no_grad():  # a head that tells the labels apart: rows towards each label's mean feature (a prototype head)
        for i, label in enumerate(LABELS):
            ids = [torch.tensor([e.ids]) for e in tok.encode_batch(EXAMPLES[label])]
            feats = torch.cat([model({"input_ids": x, "attention_mask": torch.ones_like(x)}, return_features=True) for x in ids])
            model.head.weight[i] = feats.mean(0)
        model.head.weight.sub_(model.head.weight.mean(0)).mul_(300.0)
    root.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"))
    meta = {
        "metactl_version": "0.1.0",
        "kind": "adapted",
        "labels": LABELS,
        "model": spec,
        "preprocessing": {"kind": "text", "tokenizer": str(tokenizer), "max_length": MAX_LENGTH},
        "support": {"folder": str(_write_lines(root.parent / "shots", EXAMPLES))},
        "query": {"folder": str(_write_lines(root.parent / "query", QUERY))},
        "source_run": "",
    }
    (root / "metactl.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("text-export")
    with pytest.MonkeyPatch.context() as mp:
        _register(mp)
        tokenizer = write_tokenizer(root / "backbone" / "tokenizer.json")
        adapted = _adapted(root / "adapted", tokenizer)
        r = runner.invoke(app, ["export", "--from", str(adapted), "--quantize", "int8", "--out", str(root / "export")])
        assert r.exit_code == 0, r.output
        yield {"root": root, "adapted": adapted, "export": root / "export", "tokenizer": tokenizer}


def _torch_probs(adapted: Path, tokenizer: Path, texts: list[str]) -> np.ndarray:
    """torch, text by text (no padding at all), tokenized by the backbone's own tokenizer truncated at max_length."""
    from safetensors.torch import load_file

    model = TinyText(json.loads((adapted / "metactl.json").read_text())["model"])
    model.load_state_dict(load_file(str(adapted / "model.safetensors")))
    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()
    tok.enable_truncation(MAX_LENGTH)
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok.encode(t).ids])
            out.append(torch.softmax(model.eval()({"input_ids": ids, "attention_mask": torch.ones_like(ids)}), -1)[0].numpy())
    return np.stack(out)


class Client:
    """What an ecosystem client does with the export folder: nothing from metactl."""

    def __init__(self, folder: Path, model: str = "model.onnx") -> None:
        self.session = ort.InferenceSession(str(folder / model), providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))  # used as exported: its own padding and truncation
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]

    def inputs(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer.encode_batch(texts)
        return {"input_ids": np.array([e.ids for e in enc], np.int64), "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}

    def probabilities(self, texts: list[str], inputs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return self.session.run(["probabilities"], inputs or self.inputs(texts))[0]


def test_an_independent_client_gets_torchs_probabilities(ws: dict[str, Path]) -> None:
    """onnxruntime + tokenizers (+ config.json's labels) on the export folder == torch on the same texts,
    a text longer than max_length included (the exported tokenizer truncates where training did)."""
    client = Client(ws["export"])
    assert client.labels == LABELS
    got, want = client.probabilities(PROBE), _torch_probs(ws["adapted"], ws["tokenizer"], PROBE)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert len({int(i) for i in want.argmax(1)}) > 1  # the texts get different labels: the check is not vacuous
    logits = client.session.run(["logits"], client.inputs(PROBE))[0]
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), got, atol=1e-6)


def test_prediction_is_independent_of_batch_and_padding(ws: dict[str, Path]) -> None:
    client = Client(ws["export"])
    together = client.probabilities(PROBE)
    alone = np.concatenate([client.probabilities([t]) for t in PROBE])
    reordered = client.probabilities(PROBE[::-1])[::-1]
    inputs = client.inputs(PROBE)
    padded = client.probabilities(PROBE, {k: np.pad(v, [(0, 0), (0, 20)]) for k, v in inputs.items()})
    for other in (alone, reordered, padded):
        np.testing.assert_allclose(other, together, atol=1e-5)
    assert inputs["input_ids"].shape[1] == MAX_LENGTH  # padded to the batch's longest (truncated) text, not to 128
    info = json.loads((ws["export"] / "metactl.json").read_text())
    assert info["check"]["batch_and_padding_max_abs_diff"] <= 1e-4


def test_export_folder_layout_and_graph_signature(ws: dict[str, Path]) -> None:
    out = ws["export"]
    files = ["README.md", "config.json", "metactl.json", "model.int8.onnx", "model.onnx", "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in out.iterdir()) == files
    graph = onnx.load(str(out / "model.onnx")).graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64 and all(d.dim_param for d in dims) and len(dims) == 2, value
    assert [v.name for v in graph.input] == ["input_ids", "attention_mask"] and [v.name for v in graph.output] == ["logits", "probabilities"]
    info = json.loads((out / "metactl.json").read_text())
    assert info["labels"] == LABELS and info["preprocessing"] == {"kind": "text", "tokenizer": "tokenizer.json", "max_length": MAX_LENGTH}
    assert info["check"]["texts"] == 7 + 6 and info["check"]["on"] == "support texts and query texts" and info["check"]["max_abs_diff"] <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["label2id"] == {lab: i for i, lab in enumerate(LABELS)} and config["architectures"] == ["BertForSequenceClassification"]


def test_int8_is_dynamic_quantization_and_its_agreement_is_measured_on_the_queries(ws: dict[str, Path]) -> None:
    ops = {n.op_type for n in onnx.load(str(ws["export"] / "model.int8.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops, sorted(ops)
    assert "QuantizeLinear" not in ops  # not static QDQ (which would need calibration)
    assert quant_layout(ws["export"] / "model.int8.onnx") == {"float": [(64, 32), (64, 32)], "int8": {(32, 32): 8, (32, 64): 2, (32, 3): 1}}
    queries = [t for texts in QUERY.values() for t in texts]
    float_client, int8_client = Client(ws["export"]), Client(ws["export"], "model.int8.onnx")
    inputs = float_client.inputs(queries)
    expected = float((int8_client.probabilities(queries, inputs).argmax(1) == float_client.probabilities(queries, inputs).argmax(1)).mean())
    quant = json.loads((ws["export"] / "metactl.json").read_text())["quantization"]
    assert quant["argmax_agreement_with_float"] == expected and quant["agreement_on"] == "query texts"


def quant_layout(path: Path) -> dict[str, Any]:
    """The weight shapes of the float MatMuls, and of the int8 ones (MatMulInteger), each checked to carry one
    scale per output column (per channel)."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    out: dict[str, Any] = {"float": [], "int8": {}}
    for node in graph.node:
        w = next((inits[i] for i in node.input if i in inits), None)
        if node.op_type == "MatMul" and w is not None and len(w.dims) == 2:
            out["float"].append(tuple(w.dims))
        elif node.op_type == "MatMulInteger":
            w = inits[node.input[1]]
            scale = inits[node.input[1].removesuffix("_quantized") + "_scale"]
            assert tuple(scale.dims) == (w.dims[1],), (node.name, scale.dims, w.dims)
            out["int8"][tuple(w.dims)] = out["int8"].get(tuple(w.dims), 0) + 1
    out["float"].sort()
    return out


def _export_fails(ws: dict[str, Path], name: str, mp: pytest.MonkeyPatch) -> str:
    out = ws["root"] / name
    before = set(out.parent.iterdir())
    r = runner.invoke(app, ["export", "--from", str(ws["adapted"]), "--out", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert set(out.parent.iterdir()) == before  # nothing written
    return r.output


def test_export_refuses_a_graph_that_differs_from_torch(ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch)
    drift_the_exported_graph(monkeypatch)
    assert "ONNX check failed: onnxruntime differs from torch by" in _export_fails(ws, "export-drifted", monkeypatch)


def test_export_refuses_a_model_whose_prediction_depends_on_padding(ws: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    class PadPooling(TinyText):
        masked_pooling = False

    _register(monkeypatch, PadPooling)
    assert "with the batch's other texts or its padding" in _export_fails(ws, "export-padding", monkeypatch)


def test_predict_text_labels_and_probabilities(ws: dict[str, Path], tmp_path: Path) -> None:
    """`metactl predict export/ TEXT... FILE.txt --json`: one result per text and per non-empty line,
    labels and probabilities of the independent client."""
    lines = tmp_path / "texts.txt"
    lines.write_text(f"{PROBE[2]}\n\n{PROBE[3]}\n", encoding="utf-8")
    r = runner.invoke(app, ["predict", str(ws["export"]), PROBE[0], PROBE[1], str(lines), "--json", "--top-k", "2"])
    assert r.exit_code == 0, r.output
    results = json.loads(r.output)
    assert [x["text"] for x in results] == PROBE
    assert [x["source"] for x in results] == ["argument 1", "argument 2", f"{lines}:1", f"{lines}:3"]
    probs = Client(ws["export"]).probabilities(PROBE)
    for x, p in zip(results, probs, strict=True):
        order = np.argsort(-p)[:2]
        assert [t["label"] for t in x["top_k"]] == [LABELS[i] for i in order] and x["label"] == LABELS[order[0]]
        np.testing.assert_allclose([t["probability"] for t in x["top_k"]], p[order], atol=1e-6)
    table = runner.invoke(app, ["predict", str(ws["export"] / "model.onnx"), PROBE[0]])
    assert table.exit_code == 0 and results[0]["label"] in table.output and "probability" in table.output, table.output


def test_predict_text_errors_are_one_line(ws: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"hello\ncaf\xe9\n")
    for args, message in [([str(bad)], f"{bad}:2: not UTF-8"), (["missing.txt"], "missing.txt: no such file"), ([""], "text 1 is empty")]:
        r = runner.invoke(app, ["predict", str(ws["export"]), *args])
        assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_predict_text_never_imports_torch_or_transformers(ws: dict[str, Path]) -> None:
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Block())
from typer.testing import CliRunner
from metactl.cli import app
r = CliRunner().invoke(app, ["predict", {str(ws["export"])!r}, {PROBE[0]!r}, {PROBE[3]!r}, "--json"])
assert r.exit_code == 0, r.output
print(r.output)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    probs = Client(ws["export"]).probabilities([PROBE[0], PROBE[3]])
    assert [r["label"] for r in json.loads(out.stdout)] == [LABELS[i] for i in probs.argmax(1)]
