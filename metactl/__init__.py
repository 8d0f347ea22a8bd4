"""metactl: meta-learning turned into deployable models.

The Python API (docs/python-api.md)::

    import metactl

    run = metactl.meta_train(algo="maml", data="glyphs", steps=100, out="runs/x")
    adapted = metactl.adapt("shots/", run=run.path, out="adapted")
    exported = metactl.export(adapted.path, onnx=True, out="export")
    curves = metactl.evaluate([run.path], episodes=100)

Each function is :mod:`metactl.library`'s, imported on first use: importing this package stays
cheap and never imports torch. Errors a user can cause raise :class:`MetactlError`.

``metactl.adapt``, ``metactl.export`` and ``metactl.evaluate`` are also the names of the modules that
do the work; those modules are callable, and calling one calls the API function of the same name.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Any

__version__ = "0.1.0"

API = ("meta_train", "adapt", "export", "evaluate", "predict")
_MODULES = ("adapt", "export", "evaluate")  # API names that are also submodules (made callable)
_TYPES = ("TrainResult", "AdaptResult", "ExportResult", "EvaluateResult", "RunCurve")


class _APIModule(types.ModuleType):
    """A submodule that is also the API function of its name (``metactl.adapt(...)``)."""

    __api_name__: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from metactl import library  # lazy: the library imports torch

        return getattr(library, self.__api_name__)(*args, **kwargs)

    @property
    def __signature__(self) -> Any:  # what help() and notebooks show for metactl.adapt(
        from metactl import library  # lazy: the library imports torch

        return inspect.signature(getattr(library, self.__api_name__))


def callable_module(module_name: str, api_name: str) -> None:
    """Make the module ``module_name`` callable as the API function ``api_name``."""
    module = sys.modules[module_name]
    module.__class__ = _APIModule
    module.__api_name__ = api_name  # type: ignore[attr-defined]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"metactl.{name}")
    if name == "MetactlError":
        from metactl.errors import MetactlError  # lazy: errors sits above the package root in the layering

        return MetactlError
    if name in API or name in _TYPES:
        from metactl import library  # lazy: the library imports torch

        return getattr(library, name)
    raise AttributeError(f"module 'metactl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "MetactlError", *API, *_TYPES})


__all__ = ["API", "MetactlError", "__version__", "adapt", "evaluate", "export", "meta_train", "predict"]
