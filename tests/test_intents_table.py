"""The unseen-intents table in docs/results.md renders from whatever rows ``examples/benchmarks/intents.py``
wrote (rows not run, K values missing, the ONNX row), says "not run yet" without a JSON, and the docs
match the JSON files in ``examples/results``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _results_docs():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("results_docs", ROOT / "examples" / "benchmarks" / "results_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_intents_table_renders_whatever_rows_the_json_has(tmp_path: Path) -> None:
    docs = _results_docs()
    assert docs.intents(tmp_path)[0].startswith("Not run yet")
    result = {
        "unseen": "hwu64", "intents": 64, "test_texts": 1076, "shots": [1, 5],
        "rows": [
            {"row": "centroid", "description": "nearest class centroid", "model_mb": 86.7,
             "cells": {"1": {"mean": 0.6123, "ci95": 0.0101, "adapt_seconds": 3.2}, "5": {"mean": 0.8, "ci95": 0.0, "adapt_seconds": 4.0}}},
            {"row": "setfit", "status": "not installed (setfit)", "cells": {}},
            {"row": "onnx", "description": "exported", "model_mb": {"float": 86.8, "int8": 21.9},
             "cells": {"5": {"mean": 0.8, "ci95": 0.0, "int8": {"mean": 0.79}, "latency_ms": {"float": 4.21, "int8": 2.05}}}},
        ],
    }  # fmt: skip
    (tmp_path / "intents-hwu64.json").write_text(json.dumps(result))
    lines = docs.intents(tmp_path)
    assert lines[0] == "| unseen (intents, test texts) | row | 1-shot | 5-shot | adaptation s (1 / 5-shot) | ONNX batch-1 ms (float / int8) | model MB |"
    assert lines[2] == "| hwu64 (64, 1076) | nearest class centroid | 61.2 ± 1.0 | 80.0 ± 0.0 | 3 / 4 | – | 87 |"
    assert lines[3] == "| hwu64 (64, 1076) | setfit | not installed (setfit) |  |  |  |  |"
    assert lines[4] == "| hwu64 (64, 1076) | exported | – | 80.0 ± 0.0 (int8 79.0) | – / – | 4.2 / 2.0 | 87 / 22 |"


def test_docs_tables_match_the_results() -> None:
    assert _results_docs().main(["--check"]) == 0


def test_rows_computed_later_are_merged_into_the_json() -> None:
    """``intents.py --rows``: a new row with figures replaces its namesake, a skipped one does not, the
    other rows are kept in the table's order, the K columns are the union, and a row computed at some K
    (``--shots``) keeps its namesake's cells at the other K."""
    spec = importlib.util.spec_from_file_location("intents_bench", ROOT / "examples" / "benchmarks" / "intents.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = {"5": {"mean": 0.8, "ci95": 0.01}}
    old = {
        "shots": [1, 5],
        "seconds": 10.0,
        "rows": [
            {"row": "centroid", "cells": {"1": {"mean": 0.5, "ci95": 0.0}}},
            {"row": "setfit", "cells": figures},
            {"row": "metactl:a", "cells": figures},
            {"row": "onnx", "status": "not run", "cells": {}},
        ],
    }
    new = {
        "shots": [10],
        "seconds": 5.0,
        "rows": [
            {"row": "setfit", "status": "skipped (--skip-setfit)", "cells": {}},
            {"row": "finetune", "cells": {"10": {"mean": 0.9, "ci95": 0.0}}},
            {"row": "metactl:a", "run": "new", "cells": {"10": {"mean": 0.7, "ci95": 0.0}}},
        ],
    }
    merged = bench.merge(old, new)
    assert [r["row"] for r in merged["rows"]] == ["centroid", "finetune", "setfit", "metactl:a", "onnx"]
    assert merged["rows"][2]["cells"] == figures  # not replaced by a row without figures
    assert merged["shots"] == [1, 5, 10] and merged["seconds"] == 15.0
    assert merged["rows"][3]["run"] == "new" and list(merged["rows"][3]["cells"]) == ["5", "10"]
    assert merged["rows"][3]["cells"]["10"]["mean"] == 0.7
    again = bench.merge(merged, {"shots": [5], "seconds": 0.0, "rows": [{"row": "metactl:a", "cells": {"5": {"mean": 0.1, "ci95": 0.0}}}]})
    assert again["rows"][3]["cells"]["5"]["mean"] == 0.1 and again["rows"][3]["cells"]["10"]["mean"] == 0.7


def test_goal_table_compares_the_recipe_with_the_best_baseline(tmp_path: Path) -> None:
    docs = _results_docs()
    c = lambda m: {"mean": m, "ci95": 0.01}  # noqa: E731
    result = {
        "unseen": "hwu64", "intents": 64, "test_texts": 1076, "shots": [5, 10],
        "rows": [
            {"row": "centroid", "cells": {"5": c(0.75), "10": c(0.80)}},
            {"row": "probe+names", "cells": {"5": c(0.77), "10": c(0.83)}},
            {"row": "metactl:intents-hwu64:no-names", "cells": {"5": c(0.99), "10": c(0.99)}},  # not a baseline, not the recipe
            {"row": "metactl:intents-hwu64", "cells": {"5": c(0.80), "10": c(0.84)}},
        ],
    }  # fmt: skip
    (tmp_path / "intents-hwu64.json").write_text(json.dumps(result))
    lines = docs.intents_goal(tmp_path)
    assert lines[2] == "| hwu64 | 5 | probe+names: 77.0 ± 1.0 | 80.0 ± 1.0 | +3.0 | met |"
    assert lines[3] == "| hwu64 | 10 | probe+names: 83.0 ± 1.0 | 84.0 ± 1.0 | +1.0 | short by 1.0 |"


def test_an_ablation_run_is_described_by_what_it_changes_in_the_preset() -> None:
    """``intents.py --ablation``: the description names each setting that differs from
    examples/configs/intents-<unseen>.toml (an algorithm option the preset leaves unset included), and
    nothing for the preset itself or for the budget."""
    import tomllib

    spec = importlib.util.spec_from_file_location("intents_bench", ROOT / "examples" / "benchmarks" / "intents.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    preset = tomllib.loads((ROOT / "examples" / "configs" / "intents-hwu64.toml").read_text(encoding="utf-8"))
    assert bench.ablation_changes({**preset, "steps": 133, "time_budget": 60, "threads": 1}, "hwu64") == ["as the preset"]
    changed = {**preset, "ways": 10, "body_l2sp": 0.0, "algo_options": {**preset["algo_options"], "cosine": False}}
    assert bench.ablation_changes(changed, "hwu64") == [
        "no L2-SP", "Euclidean prototypes at scale 1 (recipe: cosine, learned temperature)", "10-way episodes (recipe 64)",
    ]  # fmt: skip
    pretrain = {**preset, "algo": "pretrain", "meta_lr": 0.01, "algo_options": {"cosine": True, "test_head": "probe"}}
    assert bench.ablation_changes(pretrain, "hwu64") == ["all-intents cosine-softmax pre-training instead of episodes"]
