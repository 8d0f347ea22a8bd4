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
    from_: Path = typer.Option(
        None, "--from", help="Run dir, or a folder from `export --adaptable` (adapts with onnxruntime, no torch). [default: newest under ./runs]"
    ),
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
    """Adapt a meta-trained run to your examples with its learned per-layer learning rates (or, with --from an
    adaptable export, with onnxruntime alone)."""
    from metactl.runtime_adapt import is_adaptable

    if from_ is not None and is_adaptable(from_):
        _adapt_onnx(from_, support, query, out, force, json_out, steps, device, label_names)
        return
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


def _adapt_onnx(
    folder: Path, support: Path, query: Path | None, out: Path, force: bool, json_out: bool, steps: int | None, device: str, label_names: bool | None
) -> None:
    """``--from`` an adaptable export: onnxruntime and numpy only (torch is never imported)."""
    from metactl.runtime_adapt import adapt_onnx

    result = adapt_onnx(folder, support, out, force=force, query=query, label_names=label_names, command=command_line(), steps=steps, device=device)
    summary = {
        "out": str(result.path), "labels": result.labels, "support_accuracy": result.support_accuracy,
        "query_accuracy": result.query_accuracy, "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }  # fmt: skip
    if json_out:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    table = Table(title="Adapted with onnxruntime")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("labels", str(len(result.labels)))
    table.add_row("support accuracy", f"{result.support_accuracy:.4f}")
    if result.query_accuracy is not None:
        table.add_row("query accuracy", f"{result.query_accuracy:.4f}")
    for k, v in result.seconds.items():
        table.add_row(f"{k} seconds", f"{v:.3f}")
    console.print(table)
    console.print(f"Export (model.onnx, ready for `metactl predict`) written to [bold]{escape(str(result.path))}[/]")
