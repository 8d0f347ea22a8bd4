"""Models: registered in the ``metactl.models`` entry-point group, rebuilt from the spec in ``metactl.json``.

A model spec is a JSON dict whose ``kind`` names an entry point (``conv4``, ``mlp``, or a third
party's); the class's ``from_spec(spec)`` builds it. Everything else metactl needs from a model is a
method of the model, declared in :class:`Model` (:mod:`metactl.contract`), so the trainer, adapt and export never ask which
kind of model they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from metactl.api import Inputs, Params
from metactl.contract import ExportModule, Model
from metactl.errors import MetactlError
from metactl.registry import EntryPointGroup

GROUP = "metactl.models"


@dataclass
class AdaptableModules:
    """What ``export --adaptable`` traces (a model's ``adaptable_modules`` hook). ``embed``: the model's inputs ->
    ``features`` [B, D] and the ``state`` its batch normalises with (support statistics), as ``output_names``;
    ``body``: the model's inputs and that ``state`` -> ``features`` (the body of ``classify.onnx``), None when
    there is no state (``embed`` is the body). Both have ``input_names``, ``output_names``, ``example_inputs()``."""

    embed: nn.Module
    body: nn.Module | None = None
    state: tuple[str, ...] = ()


class ModelBase(nn.Module):
    """Defaults for the optional members of :class:`Model`: everything meta-learned, nothing to freeze, no export."""

    def frozen_parameter_names(self) -> list[str]:
        return []

    def outer_only_parameter_names(self) -> list[str]:
        return []

    def features_fixed(self) -> bool:
        return False

    def adapts_head_only(self) -> bool:
        return False

    def deployment_buffers(self, params: Params, x: Inputs) -> dict[str, Tensor]:
        return {}

    def prepare_deployment(self) -> None:
        return None

    def export_module(self, preprocessing: dict[str, Any]) -> ExportModule:
        raise MetactlError(f"{type(self).__name__} models cannot be exported to ONNX.", "Export a classification run's adapted model.")


MODELS = EntryPointGroup(GROUP, "Model", "Unknown model kind {name!r} in the run's model spec.", "Installed models")
refresh = MODELS.refresh


def model_class(kind: str) -> Any:
    return MODELS.load(kind)


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from the spec recorded in ``metactl.json``."""
    return model_class(str(spec.get("kind"))).from_spec(spec)


__all__ = ["GROUP", "ExportModule", "Model", "ModelBase", "build_model", "model_class"]
