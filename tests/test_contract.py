"""The contract suite over every registered algorithm (plugins run the same suite on themselves)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metactl.registry import available_names
from metactl.testing import check_algorithm


@pytest.mark.parametrize("name", available_names())
def test_algorithm_contract(name: str, tmp_path: Path) -> None:
    check_algorithm(name, tmp_path)


@pytest.mark.parametrize(
    ("name", "options"),
    [("maml", {"per_step_inner_lr": True, "multi_step_loss": True, "second_order_after": 1}), ("anil", {"tasks_per_forward": 0})],
)
def test_algorithm_options_keep_the_contract(name: str, options: dict, tmp_path: Path) -> None:
    check_algorithm(name, tmp_path, algo_options=options)
