"""``metactl adapt``: fine-tune a run on a folder of labeled examples."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from metactl.cli.common import command_line, console, err_console, handle_errors


@handle_errors
def adapt(
    support: Path = typer.Option(
        ...,
        "--support",
        help="Labeled examples: images: one subfolder per label; text: <label>/*.txt, <label>.txt (one per line) or FILE.csv|.tsv|.jsonl (text, label).",
    ),
    from_: Path = typer.Option(None, "--from", help="Run dir. [default: newest under ./runs]"),
    steps: int = typer.Option(None, help="Inner steps. [default: the run's adapt_steps, chosen on validation among 0..test-inner-steps]"),
    query: Path = typer.Option(None, "--query", help="Labeled folder to measure accuracy on. [default: none]"),
    out: Path = typer.Option(Path("adapted"), "--out", help="Where to write the adapted model."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N (where the inner loop runs; the model is saved for CPU serving)."),
    label_names: bool = typer.Option(
        None, "--label-names/--no-label-names", help="Text: each label's name, made readable, is one more support example. [default: as the run trained]"
    ),
) -> None:
    """Adapt a meta-trained run to your examples with its learned per-layer learning rates."""
    from metactl.library import adapt as run_adapt

    result = run_adapt(
        support, from_, out=out, steps=steps, query=query, force=force, device=device, quiet=json_out, command=command_line(), label_names=label_names
    )
    m = result.metrics
    summary = {
        "out": str(result.path), "labels": result.labels, "support_losses": m["support_losses"],
        "support_accuracy": m["support_accuracy"], "query_accuracy": m["query_accuracy"],
        "per_class": result.per_class, "seconds": round(result.seconds, 2),
    }  # fmt: skip
    if json_out:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    if result.skipped:
        err_console.print(f"[yellow]Skipped {len(result.skipped)} hidden or non-image entries[/] (e.g. {escape(result.skipped[0])}).", highlight=False)
    table = Table(title="Support loss per inner step")
    table.add_column("step", justify="right")
    table.add_column("support loss", justify="right")
    for k, loss in enumerate(m["support_losses"]):
        table.add_row(str(k), f"{loss:.4f}")
    console.print(table)
    if m["query_accuracy"] is not None:
        per = Table(title=f"Query accuracy {m['query_accuracy']:.4f}")
        per.add_column("label")
        per.add_column("images", justify="right")
        per.add_column("accuracy", justify="right")
        for row in result.per_class:
            per.add_row(escape(row["label"]), str(row["images"]), f"{row['accuracy']:.4f}")
        console.print(per)
    console.print(f"{len(result.labels)} labels, support accuracy {m['support_accuracy']:.4f}. Adapted model written to [bold]{escape(str(result.path))}[/]")
