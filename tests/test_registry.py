"""Entry-point discovery (metactl/registry.py) through real entry points: a temporary distribution
(a ``.dist-info`` folder on ``sys.path``) declaring ``metactl.algorithms`` plugins, good and broken."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metactl.cli import app
from metactl.errors import MetactlError
from metactl.registry import ENV, available_names, list_algorithms, load_algorithm
from metactl.testing import check_algorithm, register_plugin

BUILTINS = {"anil", "centroid", "fomaml", "imaml", "maml", "metasgd", "pretrain", "probe", "protomaml", "reptile"}

PLUGINS = '''"""Plugins for tests/test_registry.py."""
from dataclasses import dataclass
from typing import ClassVar

from metactl.algorithms.maml import MAML


class NoAdapt:
    """A plugin that forgot adapt() and its description."""

    name: ClassVar[str] = "no-adapt"
    meta_learns: ClassVar[bool] = True
    task_parallel: ClassVar[bool] = False

    @dataclass
    class Config:
        pass

    def __init__(self, config, train):
        self.config = config
        self.inner_lr_shape = "layer"

    def setup(self, learner, info):
        pass

    def make_optimizer(self, groups, train):
        raise NotImplementedError

    def begin_step(self, step, total):
        pass

    def meta_gradient(self, learner, batch):
        return {}


class PlainConfig(MAML):
    name: ClassVar[str] = "plain-config"
    description: ClassVar[str] = "Config is a plain class"

    class Config:
        pass
'''

IMPORT_FAILS = '''"""A plugin module that must never be imported just to list it."""
from typing import ClassVar


class Algo:
    """Docstring, not the description."""

    description: ClassVar[str] = "read from the source, not imported"


raise RuntimeError("metactl imported a plugin just to list it")
'''

UNPARSABLE = '"""A plugin whose source does not parse."""\n\nclass Algo(:\n    pass\n'

ENTRY_POINTS = {
    "no-adapt": "metactl_test_plugins:NoAdapt",
    "plain-config": "metactl_test_plugins:PlainConfig",
    "import-fails": "metactl_test_import_fails:Algo",
    "unparsable": "metactl_test_unparsable:Algo",
    "in-a-package": "metactl_test_package.algo:Algo",
}
MODULES = {
    "metactl_test_plugins": PLUGINS,
    "metactl_test_import_fails": IMPORT_FAILS,
    "metactl_test_unparsable": UNPARSABLE,
    "metactl_test_package/__init__": 'raise RuntimeError("metactl imported a plugin package just to list it")\n',
    "metactl_test_package/algo": IMPORT_FAILS,
}


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    site.mkdir()
    for module, source in MODULES.items():
        (site / f"{module}.py").parent.mkdir(exist_ok=True)
        (site / f"{module}.py").write_text(source, encoding="utf-8")
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.syspath_prepend(str(register_plugin(site, ENTRY_POINTS, "metactl-test-plugins")))
    yield site
    for module in ("metactl_test_plugins", "metactl_test_import_fails", "metactl_test_unparsable", "metactl_test_package", "metactl_test_package.algo"):
        sys.modules.pop(module, None)


def test_plugins_are_found_through_their_entry_points(plugins: Path) -> None:
    assert set(available_names()) >= BUILTINS | set(ENTRY_POINTS)
    info = {i.name: i for i in list_algorithms()}
    assert info["no-adapt"].distribution == "metactl-test-plugins" and info["no-adapt"].version == "0.0"
    assert info["no-adapt"].description == "A plugin that forgot adapt() and its description."  # no attribute: first docstring line
    assert info["plain-config"].description == "Config is a plain class" and info["plain-config"].problem is None


@pytest.mark.parametrize(("name", "module"), [("import-fails", "metactl_test_import_fails"), ("in-a-package", "metactl_test_package.algo")])
def test_listing_reads_the_description_without_importing(name: str, module: str, plugins: Path) -> None:
    """Neither the module nor its package is imported to list it (a package whose __init__ raises once crashed `metactl algorithms`)."""
    info = {i.name: i for i in list_algorithms()}[name]
    assert info.description == "read from the source, not imported" and info.problem is None
    assert module not in sys.modules and module.split(".")[0] not in sys.modules
    result = CliRunner().invoke(app, ["algorithms"])
    assert result.exit_code == 0 and name in result.output, result.output
    with pytest.raises(MetactlError, match=rf"'{name}' \({re.escape(module)}:Algo\) failed to import: RuntimeError"):
        load_algorithm(name)


def test_a_plugin_that_cannot_be_parsed_is_a_warning_when_listing_and_an_error_when_chosen(plugins: Path) -> None:
    info = {i.name: i for i in list_algorithms()}["unparsable"]
    assert info.problem is not None and info.problem.startswith(f"cannot parse {plugins / 'metactl_test_unparsable.py'} (")
    result = CliRunner().invoke(app, ["algorithms"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert output.count("Warning:") == 1 and "Warning: plugin 'unparsable' (metactl-test-plugins) cannot be loaded: cannot parse" in output, output
    assert "maml" in result.output and "no-adapt" in result.output  # the other plugins are still listed
    with pytest.raises(MetactlError, match=r"'unparsable' .* failed to import: SyntaxError"):
        load_algorithm("unparsable")


def test_a_plugin_missing_a_method_and_an_attribute_breaks_the_contract(plugins: Path, tmp_path: Path) -> None:
    expected = re.escape(
        "Algorithm 'no-adapt' (metactl_test_plugins:NoAdapt) breaks the plugin contract: missing class attribute 'description'; missing method adapt()."
    )
    with pytest.raises(MetactlError, match=expected):
        load_algorithm("no-adapt")
    with pytest.raises(MetactlError, match=expected):  # the contract suite refuses it the same way
        check_algorithm("no-adapt", tmp_path / "check")
    result = CliRunner().invoke(app, ["meta-train", "--algo", "no-adapt", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "breaks the plugin contract" in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_a_plugin_whose_config_is_not_a_dataclass_breaks_the_contract(plugins: Path) -> None:
    with pytest.raises(MetactlError, match=r"'plain-config' .* breaks the plugin contract: Config must be a dataclass"):
        load_algorithm("plain-config")


def test_unknown_algorithm_lists_the_installed_ones(plugins: Path) -> None:
    with pytest.raises(MetactlError) as err:
        load_algorithm("no-such-algorithm")
    assert err.value.message == "Unknown algorithm 'no-such-algorithm'."
    installed = sorted(BUILTINS | set(ENTRY_POINTS) | ({"protonet"} if "protonet" in available_names() else set()))
    assert err.value.hint == f"Installed algorithms: {', '.join(installed)}."


def test_metactl_algorithms_restricts_the_entry_points_seen(plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, " maml, no-adapt ,")
    assert available_names() == ["maml", "no-adapt"]
    with pytest.raises(MetactlError, match=r"Installed algorithms: maml, no-adapt\."):
        load_algorithm("anil")
