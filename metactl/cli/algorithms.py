"""``metactl algorithms``: list the installed algorithms without importing any of them."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from metactl.cli.common import console, err_console, handle_errors


@handle_errors
def algorithms() -> None:
    """List installed meta-learning algorithms (entry-point group metactl.algorithms)."""
    from metactl.registry import list_algorithms

    table = Table(title="metactl algorithms")
    for col in ("name", "distribution", "version", "description"):
        table.add_column(col)
    for info in list_algorithms():
        if info.problem:
            problem = f"plugin {info.name!r} ({info.distribution}) cannot be loaded: {info.problem}"
            err_console.print(f"[yellow]Warning:[/] {escape(problem)}", highlight=False)
            continue
        table.add_row(*(escape(x) for x in (info.name, info.distribution, info.version, info.description)))
    console.print(table)
