"""What every command shares: the rich console and turning MetactlError into one line + exit 1."""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
import typer.models
from rich.console import Console
from rich.markup import escape

from metactl.errors import MetactlError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def handle_errors(fn: F) -> F:
    """User errors -> one line on stderr, exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _rebuilt.set(_rebuild(fn, kwargs))
        try:
            return fn(*args, **kwargs)
        except MetactlError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]Interrupted.[/]")
            raise typer.Exit(130) from None
        finally:
            _rebuilt.reset(token)

    return wrapper  # type: ignore[return-value]


def command_line() -> str:
    """The command line a run, an adapted folder or a model card records: the process's own arguments
    when it is the ``metactl`` program (``python -m metactl`` too); otherwise (a test's CliRunner) the
    command rebuilt from its parsed options, each one that differs from its default."""
    recorded = os.environ.get("METACTL_COMMAND")  # a worker of --nproc records its launcher's command
    if recorded:
        return recorded
    if PROGRAM["argv"] and len(sys.argv) > 1:
        return shlex.join(["metactl", *sys.argv[1:]])
    return _rebuilt.get()


PROGRAM = {"argv": False}  # True once ``metactl.cli.main`` runs: sys.argv is then metactl's own command line


_rebuilt: contextvars.ContextVar[str] = contextvars.ContextVar("metactl_command", default="metactl")


def _rebuild(fn: Callable[..., Any], values: dict[str, Any]) -> str:
    """``metactl COMMAND`` and every option given a value other than its default, from the command's signature."""
    words = ["metactl", fn.__name__.replace("_", "-")]
    for name, param in inspect.signature(fn).parameters.items():
        info, value = param.default, values.get(name)
        decls = [d for d in getattr(info, "param_decls", None) or () if d.startswith("--")] or [f"--{name.replace('_', '-')}"]
        on, _, off = decls[0].partition("/")
        if value is None or value == getattr(info, "default", None) or (isinstance(value, list | tuple) and not value):
            continue
        if isinstance(info, typer.models.ArgumentInfo):
            words += [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
        elif isinstance(value, bool):
            words += [on] if value else [off] if off else []
        else:
            for v in value if isinstance(value, list | tuple) else [value]:
                words += [on, str(v)]
    return shlex.join(words)
