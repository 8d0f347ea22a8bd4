"""``metactl predict``: classify images with an exported model (onnxruntime only, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from metactl.cli.common import console, handle_errors


@handle_errors
def predict(
    model: Path = typer.Argument(..., help="model.onnx written by `metactl export --onnx`."),
    paths: list[Path] = typer.Argument(..., help="Images or folders of images."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON: label and probability per file."),
    top_k: int = typer.Option(1, "--top-k", min=1, help="Show the k most likely labels."),
) -> None:
    """Predict labels for images with an exported ONNX model."""
    from metactl.runtime import predict as run_predict

    results = run_predict(model, paths, top_k)
    if json_out:
        typer.echo(json.dumps(results, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"Predictions ({model.name})")
    table.add_column("file")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for r in results:
        for i, t in enumerate(r["top_k"]):
            table.add_row(escape(r["file"]) if i == 0 else "", escape(t["label"]), f"{t['probability']:.4f}")
    console.print(table)
