"""What a command-line user gets besides the commands: `--version` with the versions a bug report
needs (torch never imported), shell completion (Typer's), and `--help` texts that show every option's
default and its unit."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest
import typer

from metactl.cli import app

ROOT_ONLY = (
    "import sys\nfrom metactl.cli import main\nsys.argv = ['metactl', *{args!r}]\n"
    "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
    "print('torch imported:', 'torch' in sys.modules, 'exit:', code)\n"
)


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", ROOT_ONLY.format(args=args)], capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **(env or {})}
    )


def test_version_names_python_torch_and_onnxruntime_without_importing_torch() -> None:
    out = _run(["--version"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "metactl 0.1.0"
    assert f"python {sys.version.split()[0]}" in lines[1]
    assert f"torch {version('torch')}" in lines[1] and f"onnxruntime {version('onnxruntime')}" in lines[1]
    assert f"transformers {version('transformers')}" in lines[1]  # installed with the test extra
    assert lines[-1] == "torch imported: False exit: 0"


def test_bash_completion_script_and_completions_without_importing_torch() -> None:
    script = _run([], {"_METACTL_COMPLETE": "source_bash"})
    assert "complete" in script.stdout and "_METACTL_COMPLETE" in script.stdout, script.stderr
    assert script.stdout.splitlines()[-1] == "torch imported: False exit: 0"
    words = _run([], {"_METACTL_COMPLETE": "complete_bash", "COMP_WORDS": "metactl meta-tr", "COMP_CWORD": "1"})
    assert "meta-train" in words.stdout.split(), words.stderr
    options = _run([], {"_METACTL_COMPLETE": "complete_bash", "COMP_WORDS": "metactl meta-train --log", "COMP_CWORD": "2"})
    assert "--log-to" in options.stdout.split()
    assert "torch imported: False" in options.stdout


def test_completion_options_are_offered() -> None:
    names = {o for p in typer.main.get_command(app).params for o in p.opts}
    assert {"--install-completion", "--show-completion", "--version"} <= names


def _options() -> list[tuple[str, typer.core.TyperOption]]:
    group = typer.main.get_command(app)
    return [(name, p) for name, cmd in group.commands.items() for p in cmd.params if p.param_type_name == "option"]  # type: ignore[attr-defined]


def test_every_option_shows_its_default() -> None:
    """Required, or Typer prints the default, or the help text says it ([default: ...]): None alone shows nothing."""
    silent = [
        f"{name} {p.opts[0]}"
        for name, p in _options()
        if not (p.required or (p.default is not None and p.show_default is not False) or "[default:" in (p.help or ""))
    ]
    assert not silent, "options whose --help shows no default: " + ", ".join(silent)


def test_the_rendered_help_prints_the_defaults_the_help_texts_state() -> None:
    """What a user reads: every ``[default: ...]`` note of a help text appears in ``--help``'s output
    (rich markup would swallow it as a tag)."""
    from typer.testing import CliRunner

    runner = CliRunner()
    for name, cmd in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        out = "".join(runner.invoke(app, [name, "--help"]).output.split())  # wrapped lines rejoined, spaces dropped
        for p in cmd.params:
            note = (p.help or "")[(p.help or "").find("[default:") :] if "[default:" in (p.help or "") else ""
            if note:
                assert "".join(note.split()) in out, (name, p.opts[0], note)


UNITS = {
    ("meta-train", "--time-budget"): "minutes",
    ("meta-train", "--image-size"): "pixels",
    ("meta-train", "--max-length"): "tokens",
    ("meta-train", "--steps"): "steps",
    ("meta-train", "--eval-every"): "steps",
    ("meta-train", "--checkpoint-every"): "steps",
    ("meta-train", "--snapshot-every"): "steps",
    ("meta-train", "--inner-steps"): "steps",
    ("meta-train", "--meta-batch"): "tasks",
    ("meta-train", "--eval-episodes"): "episodes",
    ("adapt", "--steps"): "steps",
    ("evaluate", "--steps"): "steps",
    ("evaluate", "--episodes"): "episodes",
}


@pytest.mark.parametrize("command, option", sorted(UNITS))
def test_options_with_a_unit_name_it(command: str, option: str) -> None:
    (p,) = [p for name, p in _options() if name == command and option in p.opts]
    assert UNITS[command, option] in (p.help or "").lower(), f"{command} {option}: {p.help}"
