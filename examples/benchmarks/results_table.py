"""Markdown table from `metactl evaluate --json` files: one row per run, one column per file.

    python examples/benchmarks/results_table.py runs/omniglot-3min/evaluate-*.json

Each cell is the best mean over the evaluated inner steps (accuracy in %, or MSE), ± its 95 % CI,
with the step count that gave it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def best(run: dict) -> tuple[float, float, int]:
    steps = run["steps"]
    pick = (max if run.get("metric", "accuracy") == "accuracy" else min)(steps, key=lambda s: s["mean"])
    return pick["mean"], pick["ci95"], pick["step"]


def main(files: list[str]) -> None:
    tables = {Path(f).stem.removeprefix("evaluate-"): json.loads(Path(f).read_text()) for f in files}
    order: list[str] = []
    cells: dict[str, dict[str, str]] = {}
    for col, data in tables.items():
        for run in data["runs"]:
            name = f"{run['algorithm']} ({Path(run['run']).name})"
            if name not in cells:
                order.append(name)
                cells[name] = {}
            m, c, k = best(run)
            scale = 100.0 if run.get("metric", "accuracy") == "accuracy" else 1.0
            cells[name][col] = f"{m * scale:.1f} ± {c * scale:.1f} ({k})" if scale == 100.0 else f"{m:.3f} ± {c:.3f} ({k})"
    cols = list(tables)
    print("| run | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in order:
        print(f"| {name} | " + " | ".join(cells[name].get(c, "–") for c in cols) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
