"""The evaluate options are declared once (:class:`metactl.config.EvaluateOptions`): the command's flags,
the Python API's keywords and ``evaluate_runs`` take the same names and defaults, and every option is checked
in one place."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer

from metactl.cli import app
from metactl.config import EvaluateOptions
from metactl.errors import MetactlError
from metactl.library import evaluate

FIELDS = {f.name: f.default for f in dataclasses.fields(EvaluateOptions)}


def _flag_defaults() -> dict[str, object]:
    """``metactl evaluate``'s options: parameter name -> default, as click parsed the command."""
    command = typer.main.get_command(app).commands["evaluate"]  # type: ignore[attr-defined]
    return {p.name: p.default for p in command.params if p.param_type_name == "option"}


def test_api_keywords_are_the_options_with_their_defaults() -> None:
    params = inspect.signature(evaluate).parameters
    assert {name: params[name].default for name in FIELDS} == FIELDS
    extra = [p for p in params if p not in FIELDS]
    assert extra == ["runs", "json", "plot", "force", "quiet", "command"]  # where results go, not what is scored


def test_flags_are_the_options_with_their_defaults() -> None:
    flags = _flag_defaults()
    assert {name: flags[name] for name in FIELDS} == FIELDS
    assert "queries" not in flags and FIELDS["query_shots"] == 15  # --query-shots, as docs/python-api.md writes it


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"episodes": 0}, "--episodes must be >= 1 (got 0)."),
        ({"protocol": "nope"}, "--protocol nope: unknown."),
        ({"inner_lr": 0.0}, "--inner-lr must be > 0 (got 0.0)."),
        ({"all_classes": True, "by_domain": True}, "--all-classes and --by-domain are two different settings."),
        ({"by_domain": True, "ways": 5}, "--by-domain sets the number of classes itself (got --ways 5)."),
    ],
)
def test_options_are_checked_where_they_are_declared(options: dict[str, object], message: str) -> None:
    with pytest.raises(MetactlError) as caught:
        EvaluateOptions(**options)  # type: ignore[arg-type]
    assert caught.value.message == message


def test_the_setting_follows_the_flags() -> None:
    assert [EvaluateOptions().setting, EvaluateOptions(all_classes=True).setting, EvaluateOptions(by_domain=True).setting] == [
        "episodes", "all-classes", "by-domain",
    ]  # fmt: skip
