"""Modules that are also functions: ``metactl.adapt`` is the module that does the work and, called, the
Python API function of its name (``metactl.adapt("shots", run=...)`` is :func:`metactl.library.adapt`).

A leaf module: it imports nothing of metactl. The package root, which every submodule's import runs
first, tells it where the API functions are (:func:`serve_api`), so ``adapt``, ``export`` and
``evaluate`` never import the root or the library that sits above them.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import Any

_lookup: list[Callable[[str], Callable[..., Any]]] = []  # set once, by the package root


def serve_api(lookup: Callable[[str], Callable[..., Any]]) -> None:
    """Where calls of a callable module go: ``lookup(name)`` is the API function ``name``."""
    _lookup[:] = [lookup]


def api_function(name: str) -> Callable[..., Any]:
    """The API function ``name`` (the package root's lookup; importing any submodule runs the root first)."""
    if not _lookup:
        raise RuntimeError("metactl's package root did not set the API lookup (import metactl first)")
    return _lookup[0](name)


class _APIModule(types.ModuleType):
    """A submodule that is also the API function of its name (``metactl.adapt(...)``)."""

    __api_name__: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return api_function(self.__api_name__)(*args, **kwargs)

    @property
    def __signature__(self) -> Any:  # what help() and notebooks show for metactl.adapt(
        return inspect.signature(api_function(self.__api_name__))


def callable_module(module_name: str, api_name: str) -> None:
    """Make the module ``module_name`` callable as the API function ``api_name``."""
    module = sys.modules[module_name]
    module.__class__ = _APIModule
    module.__api_name__ = api_name  # type: ignore[attr-defined]
