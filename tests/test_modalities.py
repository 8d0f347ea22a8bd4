"""The modality seam and the plugin contract: a run's preprocessing picks the modality (image for runs that
name no kind), an unknown kind names the installed ones, a third modality is one module plus one entry
point (and adapt's reader, the card's words follow it), ``contract.hook`` refuses undeclared names, the
built-in plugins have every required member, and docs/plugins.md's reference is the generator's output."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from metactl import contract, modalities
from metactl.card import render
from metactl.errors import MetactlError
from metactl.modalities import modality_of, read_support
from metactl.modalities.image import Image
from metactl.testing import make_image_folder, register_plugin

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_image_and_text_are_chosen_from_the_runs_preprocessing() -> None:
    assert type(modality_of({"kind": "image", "size": 28})) is Image
    assert type(modality_of({"size": 28})) is Image  # a run from before text support names no kind
    text = pytest.importorskip("metactl.modalities.text")
    chosen = modality_of({"kind": "text", "max_length": 64})
    assert type(chosen) is text.Text and (chosen.unit, chosen.quantization) == ("texts", "dynamic")
    assert (Image.unit, Image.quantization) == ("images", "static")


def test_the_image_reader_detects_ink_the_way_adapt_asks(tmp_path: Path) -> None:
    """adapt reads with ``invert: None`` (detect); the folder here has dark ink on white, so it is inverted."""
    folder = make_image_folder(tmp_path / "shots", classes=2, per_class=2, seed=1)
    image = Image()
    prep = image.support_preprocessing({"kind": "image", "size": 28, "invert": False})
    assert prep["invert"] is None
    data = read_support(folder, prep)
    assert data.labels == sorted(d.name for d in folder.iterdir()) and len(data) == 4
    assert data.preprocessing["invert"] in (True, False)


def test_an_unknown_kind_names_the_installed_modalities() -> None:
    with pytest.raises(MetactlError) as err:
        modality_of({"kind": "video"})
    assert "'video'" in err.value.message and "image" in err.value.hint and "text" in err.value.hint


TOY = '''
from pathlib import Path

import numpy as np

from metactl.data.examples import LabeledExamples


class Toy:
    """Vectors: one .npy file per example in a folder per label."""

    name = "toy"
    unit = "vectors"
    quantization = "dynamic"
    normalization = "none"
    example_input = "vector.npy"
    setting = "vectors of the same length"

    def read_support(self, path, preprocessing, what="--support"):
        labels = sorted(d.name for d in Path(path).iterdir() if d.is_dir())
        files = [(f, i) for i, lab in enumerate(labels) for f in sorted((Path(path) / lab).glob("*.npy"))]
        x = np.stack([np.load(f) for f, _ in files]).astype(np.float32)
        return LabeledExamples(x, np.array([i for _, i in files]), labels, [str(f) for f, _ in files], preprocessing=dict(preprocessing))

    def support_preprocessing(self, recorded):
        return recorded

    def served_preprocessing(self, preprocessing):
        return preprocessing

    def describe_input(self, preprocessing):
        return "vectors: float32 [batch, dim]"

    def io_contract(self, module, preprocessing, labels):
        return {"input": {"name": "vectors"}, "output": {"name": "probabilities", "shape": ["batch", len(labels)]}}

    def export_assets(self, model, labels, preprocessing):
        return {}

    def fallback_inputs(self, module, preprocessing):
        return {"vectors": np.zeros((2, 3), np.float32)}, "zeros"

    def batch_independence(self, run, inputs, batched):
        return None

    def predict_inputs(self, model, session, items):
        raise NotImplementedError
'''


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third modality: one module and one entry point, nothing else."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_modality.py").write_text(textwrap.dedent(TOY), encoding="utf-8")
    monkeypatch.syspath_prepend(str(register_plugin(site, {"toy": "toy_modality:Toy"}, distribution="metactl-toy", group=modalities.GROUP)))
    modalities.refresh()
    yield
    modalities.refresh()
    sys.modules.pop("toy_modality", None)


def test_a_third_modality_is_one_module_and_one_entry_point(toy: None, tmp_path: Path) -> None:
    chosen = modality_of({"kind": "toy"})
    assert type(chosen).__module__ == "toy_modality" and contract.missing(chosen, contract.Modality) == []
    rng = np.random.default_rng(0)
    for label, n in (("b", 2), ("a", 3)):
        (tmp_path / "shots" / label).mkdir(parents=True)
        for i in range(n):
            np.save(tmp_path / "shots" / label / f"{i}.npy", rng.normal(size=3))
    data = read_support(tmp_path / "shots", {"kind": "toy"})  # what adapt and export's check call
    assert data.labels == ["a", "b"] and data.counts() == {"a": 3, "b": 2} and data.examples.shape == (5, 3)
    adapted = {"labels": ["a", "b"], "preprocessing": {"kind": "toy"}, "support": {"folder": "/s", "vectors": 5, "per_label": {"a": 3, "b": 2}}}
    export = {"check": {"max_abs_diff": 1e-7, "vectors": 5, "on": "support vectors"}, "opset": 18}
    head, body = render(adapted, None, export, "toy-export", ["model.onnx"])[4:].split("\n---\n", 1)
    front = yaml.safe_load(head)
    assert front["pipeline_tag"] == "toy-classification"
    assert "| index | label | support vectors |" in body and "metactl predict toy-export/ vector.npy" in body and "on 5 support vectors" in body


def test_hook_returns_a_declared_optional_hook_or_none_and_refuses_other_names() -> None:
    class WithAssets:
        def export_assets(self, labels: list[str]) -> dict[str, bytes]:
            return {"labels.txt": "\n".join(labels).encode()}

    found = contract.hook(WithAssets(), "export_assets")
    assert found is not None and found(["x", "y"]) == {"labels.txt": b"x\ny"}
    assert contract.hook(object(), "export_assets") is None
    for name in ("export_module", "meta_gradient", "no_such_hook"):  # required members and unknown names are not optional hooks
        with pytest.raises(ValueError, match=rf"'{name}' is not an optional hook declared in metactl.contract"):
            contract.hook(WithAssets(), name)


def test_built_in_plugins_have_every_required_member() -> None:
    from metactl import data, loggers
    from metactl.registry import load_algorithm

    for name in ("image", "text"):
        if name == "text":
            pytest.importorskip("tokenizers")
        assert contract.missing(modality_of({"kind": name}), contract.Modality) == [], name
    for name in sorted(data.SOURCES.entry_points()):
        assert contract.missing(data.SOURCES.load(name), contract.TaskSource) == [], name
    for name in ("tensorboard", "mlflow"):
        assert contract.missing(loggers.LOGGERS.load(name), contract.MetricLogger) == [], name
    assert contract.missing(load_algorithm("maml"), contract.Algorithm, [n for n in contract.required(contract.Algorithm) if n != "config"]) == []


def test_missing_names_each_absent_member() -> None:
    class HalfLogger:
        def log_params(self, params: dict) -> None: ...

    assert contract.missing(HalfLogger, contract.MetricLogger) == ["log_metrics", "finish"]


def test_plugins_doc_reference_is_the_generators_output() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.count(contract.DOC_BEGIN) == 1 and text.count(contract.DOC_END) == 1
    section = text.split(contract.DOC_BEGIN + "\n", 1)[1].split(contract.DOC_END, 1)[0]
    assert section == contract.reference_markdown(), "docs/plugins.md is stale: regenerate it with metactl.contract.update_doc"
    for point in contract.POINTS:
        assert f"`{point.group}`" in section
        for name in contract.members(point.protocol):
            assert f"- `{name}" in section, f"{point.protocol.__name__}.{name} is not in the reference"
