"""Markdown table from `metactl evaluate --json` files: one row per run, one column per file.

    python examples/benchmarks/results_table.py [--best] runs/omniglot-3min/evaluate-*.json

Each cell is the mean after the last evaluated inner step (each run's test-time steps, fixed before
looking at the test episodes), ± its 95 % CI, with that step count in parentheses; accuracy in %,
or MSE. ``--best`` reports the best step instead (an optimistic, test-selected figure).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pick(run: dict, best: bool) -> tuple[float, float, int]:
    steps = run["steps"]
    chosen = (max if run.get("metric", "accuracy") == "accuracy" else min)(steps, key=lambda s: s["mean"]) if best else steps[-1]
    return chosen["mean"], chosen["ci95"], chosen["step"]


def main(files: list[str], best: bool = False) -> None:
    tables = {Path(f).stem.removeprefix("evaluate-"): json.loads(Path(f).read_text()) for f in files}
    order: list[str] = []
    cells: dict[str, dict[str, str]] = {}
    for col, data in tables.items():
        for run in data["runs"]:
            name = f"{run['algorithm']} ({Path(run['run']).name})"
            if name not in cells:
                order.append(name)
                cells[name] = {}
            m, c, k = pick(run, best)
            scale = 100.0 if run.get("metric", "accuracy") == "accuracy" else 1.0
            cells[name][col] = f"{m * scale:.1f} ± {c * scale:.1f} ({k})" if scale == 100.0 else f"{m:.3f} ± {c:.3f} ({k})"
    cols = list(tables)
    print("| run | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in order:
        print(f"| {name} | " + " | ".join(cells[name].get(c, "–") for c in cols) + " |")


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if a != "--best"], "--best" in args)
