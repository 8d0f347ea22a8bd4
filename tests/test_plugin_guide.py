"""The algorithm in docs/plugins.md, installed as a plugin from the page itself, passes the contract suite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metactl.testing import check_algorithm, register_plugin

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_the_guides_algorithm_passes_the_contract_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
    source = next(b for b in blocks if "class ClippedFOMAML" in b)
    assert len(source.strip().splitlines()) <= 60, "the guide promises an algorithm in about 50 lines"
    site = tmp_path / "site"
    site.mkdir()
    (site / "metactl_clipped.py").write_text(source, encoding="utf-8")
    register_plugin(site, {"clipped-fomaml": "metactl_clipped:ClippedFOMAML"}, distribution="metactl-clipped")
    monkeypatch.syspath_prepend(str(site))
    check_algorithm("clipped-fomaml", tmp_path / "check")
