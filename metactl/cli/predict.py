"""``metactl predict``: classify images or texts with an exported model (onnxruntime only, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from metactl.cli.common import console, handle_errors

SHOWN_CHARS = 60  # a long text is cut in the table (never in --json)


@handle_errors
def predict(
    model: Path = typer.Argument(..., help="model.onnx or the folder written by `metactl export`."),
    inputs: list[str] = typer.Argument(..., help="Image model: images or folders of images. Text model: texts, or .txt files with one text per line."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON: label and probability per input."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Show the k most likely labels."),
) -> None:
    """Predict labels for images or texts with an exported ONNX model."""
    from metactl.runtime import predict as run_predict

    results = run_predict(model, inputs, top_k)
    if json_out:
        typer.echo(json.dumps(results, indent=2, ensure_ascii=False))
        return
    text = bool(results) and "text" in results[0]
    table = Table(title=f"Predictions ({model.name})")
    table.add_column("text" if text else "file")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for r in results:
        shown = r["file"] if not text else r["text"] if len(r["text"]) <= SHOWN_CHARS else r["text"][: SHOWN_CHARS - 1] + "…"
        for i, t in enumerate(r["top_k"]):
            table.add_row(escape(shown) if i == 0 else "", escape(t["label"]), f"{t['probability']:.4f}")
    console.print(table)
