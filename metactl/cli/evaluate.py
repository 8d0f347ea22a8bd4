"""``metactl evaluate``: adaptation curves (metric after each inner step) on held-out classes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from metactl.cli.common import command_line, console, handle_errors
from metactl.config import EvaluateOptions

DEFAULT = EvaluateOptions()  # the flags' defaults: metactl.evaluate()'s and evaluate_runs'


def _check_run_dir(run: Path, positional: bool) -> None:
    """A MetactlError (one line) unless ``run`` is a meta-training run dir."""
    from metactl.errors import MetactlError
    from metactl.library import check_run

    try:
        check_run(run)
    except MetactlError as exc:
        if not positional:
            raise
        raise MetactlError(
            f"{exc.message} (arguments after the options are read as more run dirs, as --from RUN/snapshots/* expands)",
            "Pass only run directories there.",
        ) from None


@handle_errors
def evaluate(
    from_: list[Path] = typer.Option(None, "--from", help="Run dir(s) to compare. [default: newest under ./runs]"),
    more: list[Path] = typer.Argument(None, metavar="RUN", help="More run dirs: what a shell glob expands to (--from RUN/snapshots/*).", show_default=False),
    data: str = typer.Option(
        None,
        help="FOLDER | FILE.zip | omniglot:DIR | oneshot:PATH (Lake's 20 runs) | intents:DIR | text:FILE|DIR. [default: the run's held-out classes]",
    ),
    protocol: str = typer.Option(
        None,
        help="Test split: omniglot:DIR: lake | vinyals; intents:DIR: domains | unseen-clinc150 | unseen-banking77 | unseen-hwu64. [default: the run's]",
    ),
    ways: int = typer.Option(None, help="N. [default: the run's]"),
    shots: int = typer.Option(None, help="K. [default: the run's]"),
    query_shots: int = typer.Option(DEFAULT.query_shots, help="Queries per class."),
    episodes: int = typer.Option(DEFAULT.episodes, help="Episodes (the same for every run)."),
    steps: int = typer.Option(None, help="Inner steps. [default: the run's test-inner-steps]"),
    seed: int = typer.Option(DEFAULT.seed, help="Episode seed."),
    all_classes: bool = typer.Option(
        DEFAULT.all_classes,
        "--all-classes",
        help="Every held-out class in each episode (text data): --shots support texts per class from the train split, "
        "the whole test split as queries; --episodes draws.",
    ),
    label_names: bool = typer.Option(
        None, "--label-names/--no-label-names", help="--all-classes, text: each intent's readable name is one more support text. [default: as the run trained]"
    ),
    by_domain: bool = typer.Option(DEFAULT.by_domain, "--by-domain", help="--protocol domains: each episode is every intent of one test domain (15-way)."),
    split: str = typer.Option(DEFAULT.split, help="test: the held-out classes | val: the run's own validation classes (to choose a setting, e.g. --inner-lr)."),
    inner_lr: float = typer.Option(None, help="Fine-tune at this inner learning rate for every adapted tensor. [default: the run's α]"),
    device: str = typer.Option(DEFAULT.device, help="cpu | cuda."),
    json_file: Path = typer.Option(None, "--json", help="Write the results as JSON to this file. [default: none]"),
    plot: Path = typer.Option(None, "--plot", help="Write the adaptation curves as a PNG (needs the plot extra). [default: none]"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --json/--plot files."),
) -> None:
    """Evaluate runs on episodes from classes never seen in meta-training."""
    from metactl.library import curve_title
    from metactl.library import evaluate as run_evaluate

    named = list(from_ or [])
    run_dirs = [*named, *(more or [])]
    for i, run in enumerate(run_dirs):  # every run readable before minutes are spent on the first
        _check_run_dir(run, positional=i >= len(named) and bool(more))
    result = run_evaluate(
        run_dirs, data=data, protocol=protocol, ways=ways, shots=shots, query_shots=query_shots, episodes=episodes, steps=steps,
        seed=seed, split=split, inner_lr=inner_lr, all_classes=all_classes, by_domain=by_domain, device=device, json=json_file, label_names=label_names,
        plot=plot, force=force, command=command_line(),
    )  # fmt: skip
    results = [r.to_dict() for r in result.runs]
    title = curve_title(results)
    table = Table(title=title)
    table.add_column("run")
    table.add_column("algorithm")
    width = max(len(r["steps"]) for r in results)
    for k in range(width):
        table.add_column(f"step {k}", justify="right")
    for r in results:
        if r["metric"] == "accuracy":
            cells = [f"{100 * s['mean']:.1f} ± {100 * s['ci95']:.1f}" for s in r["steps"]]
        else:
            cells = [f"{s['mean']:.3f} ± {s['ci95']:.3f}" for s in r["steps"]]
        table.add_row(escape(Path(r["run"]).name), escape(r["algorithm"]), *cells)
    console.print(table)
    for r in results:
        if r.get("ece"):
            ece = "  ".join(f"step {c['step']}: {c['mean']:.3f}" for c in r["ece"])
            console.print(f"{escape(Path(r['run']).name)}: expected calibration error (15 bins, top probability) {ece}")
        if r.get("head") == "zero-initialised":
            console.print(f"[dim]{escape(Path(r['run']).name)}: trained with another N, so its head starts at zero (as metactl adapt does).[/]")
    if json_file:
        console.print(f"Results written to [bold]{escape(str(json_file))}[/]")
    if plot:
        console.print(f"Plot written to [bold]{escape(str(plot))}[/]")
