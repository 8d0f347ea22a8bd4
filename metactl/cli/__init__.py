"""The command line: one module per command, combined here. Nothing here imports torch;
each command imports the library it needs inside its body."""

from __future__ import annotations

import os
import platform
import sys

import typer

from metactl.cli import adapt, algorithms, common, evaluate, export, meta_train, predict

app = typer.Typer(
    name="metactl",
    help="Meta-learning turned into deployable models: meta-train an initialization, adapt it to your few examples, export it to ONNX.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: their [default: ...] notes are text, not markup
)
app.command("meta-train")(meta_train.meta_train)
app.command("adapt")(adapt.adapt)
app.command("export")(export.export)
app.command("predict")(predict.predict)
app.command("evaluate")(evaluate.evaluate)
app.command("algorithms")(algorithms.algorithms)


VERSIONS_OF = ("torch", "onnxruntime", "onnx", "numpy", "transformers", "tokenizers", "tensorboard", "mlflow-skinny", "mlflow")


def versions() -> list[tuple[str, str]]:
    """(name, version) of metactl, Python and the installed packages a bug report needs, read from
    package metadata (nothing is imported: torch stays unloaded)."""
    from importlib.metadata import PackageNotFoundError, version

    from metactl._version import __version__

    found = [("metactl", __version__), ("python", platform.python_version())]
    for name in VERSIONS_OF:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            if name in ("torch", "onnxruntime"):
                found.append((name, "not installed"))
    return found


def _print_version(value: bool) -> None:
    if value:
        items = versions()
        typer.echo(f"{items[0][0]} {items[0][1]}")
        typer.echo(", ".join(f"{name} {v}" for name, v in items[1:]) + f" ({platform.platform(terse=True)})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the versions of metactl, Python, torch, onnxruntime (and other installed packages a bug report needs) and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Meta-learning turned into deployable models."""


def main() -> None:
    common.PROGRAM["argv"] = True  # the metactl program (or python -m metactl), not a CliRunner in a test
    try:
        app()
    except SystemExit as exc:
        if exc.code == 130:
            # Interrupted: the checkpoint and every file are written and closed by now. Leave at once, as
            # the shell expects of Ctrl-C: an interpreter shut down while torch's worker threads were cut
            # off mid-operation can abort ("terminate called without an active exception", exit -6).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise
