"""``metactl evaluate``: adaptation curves (metric after each inner step) on held-out classes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from metactl.cli.common import console, handle_errors


@handle_errors
def evaluate(
    from_: list[Path] = typer.Option(None, "--from", help="Run dir(s) to compare. [default: newest under ./runs]"),
    data: str = typer.Option(None, help="Held-out data (e.g. images_evaluation.zip). [default: the run's own held-out classes]"),
    ways: int = typer.Option(None, help="N. [default: the run's]"),
    shots: int = typer.Option(None, help="K. [default: the run's]"),
    query_shots: int = typer.Option(15, help="Queries per class."),
    episodes: int = typer.Option(600, help="Episodes (the same for every run)."),
    steps: int = typer.Option(None, help="Inner steps. [default: the run's test-inner-steps]"),
    seed: int = typer.Option(0, help="Episode seed."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    json_file: Path = typer.Option(None, "--json", help="Write the results as JSON to this file."),
) -> None:
    """Evaluate runs on episodes from classes never seen in meta-training."""
    from metactl.errors import MetactlError

    if episodes < 1:
        raise MetactlError(f"--episodes must be >= 1 (got {episodes}).", "Pass a positive number.")
    from metactl.evaluate import evaluate_runs
    from metactl.runs import atomic_write_json, latest_run

    run_dirs = list(from_) if from_ else [latest_run()]
    with console.status(f"evaluating {len(run_dirs)} run(s) on {episodes} episodes"):
        results = evaluate_runs(run_dirs, data, ways, shots, query_shots, episodes, steps, seed, device)
    table = Table(title=f"{results[0]['metric']} after k inner steps (mean ± 95 % CI, {episodes} episodes)")
    table.add_column("run")
    table.add_column("algorithm")
    width = max(len(r["steps"]) for r in results)
    for k in range(width):
        table.add_column(f"step {k}", justify="right")
    for r in results:
        table.add_row(escape(Path(r["run"]).name), escape(r["algorithm"]), *[f"{s['mean']:.4f} ± {s['ci95']:.4f}" for s in r["steps"]])
    console.print(table)
    if json_file:
        atomic_write_json(json_file, {"episodes": episodes, "seed": seed, "data": data, "runs": results})
        console.print(f"Results written to [bold]{escape(str(json_file))}[/]")
