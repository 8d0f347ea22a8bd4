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
from typing import Any

from metactl._callable import serve_api
from metactl._version import __version__
from metactl.errors import MetactlError

API = ("meta_train", "adapt", "export", "evaluate", "predict")
_MODULES = ("adapt", "export", "evaluate")  # API names that are also submodules (made callable)
_TYPES = ("TrainResult", "AdaptResult", "ExportResult", "EvaluateResult", "RunCurve")


def _api_function(name: str) -> Any:
    """The Python API's function or result type ``name`` (calling ``metactl.adapt`` and the others runs these)."""
    from metactl import library  # lazy: the library imports torch

    return getattr(library, name)


serve_api(_api_function)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"metactl.{name}")
    if name in API or name in _TYPES:
        return _api_function(name)
    raise AttributeError(f"module 'metactl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API, *_TYPES})


__all__ = ["API", "MetactlError", "__version__", "adapt", "evaluate", "export", "meta_train", "predict"]
