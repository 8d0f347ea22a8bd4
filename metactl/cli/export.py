"""``metactl export``: write a self-contained ONNX model (plus safetensors) and check it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from metactl.cli.common import command_line, console, handle_errors


@handle_errors
def export(
    from_: Path = typer.Option(None, "--from", help="Adapted model folder; with --adaptable, a run dir. [default: adapted; with --adaptable the newest run]"),
    adaptable: bool = typer.Option(
        False, "--adaptable", help="Export the run itself as embed/adapt/classify ONNX graphs that adapt without torch (head-only algorithms)."
    ),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Write model.onnx (the only format so far)."),
    quantize: str = typer.Option(None, "--quantize", help="int8: also write a quantized model.int8.onnx. [default: none, float only]"),
    out: Path = typer.Option(Path("export"), "--out", help="Output folder."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
) -> None:
    """Export an adapted model to ONNX (or, with --adaptable, a run as graphs that adapt anywhere); checks onnxruntime against torch."""
    from metactl.library import export as run_export
    from metactl.library import export_adaptable

    if adaptable:
        _adaptable(export_adaptable, from_, out, force, quantize)
        return
    from_ = from_ or Path("adapted")

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


def _adaptable(export_adaptable: Any, run: Path | None, out: Path, force: bool, quantize: str | None) -> None:
    from metactl.errors import MetactlError

    if quantize:
        raise MetactlError("--quantize applies to an adapted model's export, not to --adaptable.", "Drop --quantize.")
    result = export_adaptable(run, out=out, force=force, command=command_line())
    table = Table(title=f"Adaptable export ({result.algorithm}, {result.modality})")
    table.add_column("file")
    table.add_column("size", justify="right")
    for name, size in result.sizes.items():
        table.add_row(name, f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB")
    console.print(table)
    console.print(f"Checked against torch: head max |Δ| {result.head_parity:.1e}, probabilities {result.parity:.1e}.")
    console.print(f"Wrote {', '.join(result.files)} to [bold]{escape(str(result.path))}[/]")
