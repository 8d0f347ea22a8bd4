"""``metactl export``: write a self-contained ONNX model (plus safetensors) and check it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from metactl.cli.common import command_line, console, handle_errors


@handle_errors
def export(
    from_: Path = typer.Option(Path("adapted"), "--from", help="Adapted model folder."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Write model.onnx (the only format so far)."),
    quantize: str = typer.Option(None, "--quantize", help="int8: also write a quantized model.int8.onnx. [default: none, float only]"),
    out: Path = typer.Option(Path("export"), "--out", help="Output folder."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
) -> None:
    """Export an adapted model to ONNX; checks onnxruntime against torch."""
    from metactl.library import export as run_export

    result = run_export(from_, onnx=onnx, quantize=quantize, out=out, force=force, command=command_line())
    table = Table(title="Export")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_row("onnxruntime vs torch, max abs diff", f"{result.parity:.2e}")
    table.add_row("opset", str(result.opset))
    if result.agreement is not None:
        table.add_row("int8 vs float, same prediction", f"{result.agreement:.2%}")
    console.print(table)
    console.print(f"Wrote {', '.join(result.files)} to [bold]{escape(str(result.path))}[/]")
