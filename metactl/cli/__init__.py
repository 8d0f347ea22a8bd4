"""The command line: one module per command, combined here. Nothing here imports torch;
each command imports the library it needs inside its body."""

from __future__ import annotations

import typer

from metactl.cli import adapt, algorithms, evaluate, export, meta_train, predict

app = typer.Typer(
    name="metactl",
    help="Meta-learning turned into deployable models: meta-train an initialization, adapt it to your few examples, export it to ONNX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("meta-train")(meta_train.meta_train)
app.command("adapt")(adapt.adapt)
app.command("export")(export.export)
app.command("predict")(predict.predict)
app.command("evaluate")(evaluate.evaluate)
app.command("algorithms")(algorithms.algorithms)


def _print_version(value: bool) -> None:
    if value:
        from metactl import __version__

        typer.echo(f"metactl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
) -> None:
    """Meta-learning turned into deployable models."""


def main() -> None:
    app()
