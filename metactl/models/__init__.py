"""Models: registered in the ``metactl.models`` entry-point group, rebuilt from the spec in ``metactl.json``.

A model spec is a JSON dict whose ``kind`` names an entry point (``conv4``, ``mlp``, or a third
party's); the class's ``from_spec(spec)`` builds it. Everything else metactl needs from a model is a
method of the model, declared in :class:`Model`, so the trainer, adapt and export never ask which
kind of model they hold.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from torch import Tensor, nn

from metactl.api import Inputs, Params
from metactl.errors import MetactlError
from metactl.registry import EntryPointGroup

GROUP = "metactl.models"


class ExportModule(Protocol):
    """What ``export --onnx`` traces: the client's raw inputs in, class probabilities out."""

    input_names: list[str]
    output_names: list[str]

    def example_inputs(self) -> tuple[Tensor, ...]:
        """Inputs to trace with (their first dimension is the dynamic batch)."""
        ...

    def client_inputs(self, examples: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed examples (as the support reader returns them) -> the graph's inputs, as a client sends them."""
        ...

    def __call__(self, *inputs: Tensor) -> Tensor: ...


class Model(Protocol):
    """The members of a metactl model (an ``nn.Module``)."""

    head: nn.Linear  # the classifier/regressor head; its parameters are ``head.weight``, ``head.bias``

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Model:
        """Build the model from its recorded spec (``spec["kind"]`` is the entry point's name)."""
        ...

    def forward(self, x: Inputs, ref: int | None = None, tasks: int = 1, return_features: bool = False) -> Tensor:
        """Outputs (or the body's features). ``ref``: normalise with statistics of the first ``ref`` rows only;
        ``tasks`` > 1: the batch is that many task-major blocks, each normalised on its own."""
        ...

    def frozen_parameter_names(self) -> list[str]:
        """Parameters that are not meta-learned (a pretrained body): not in θ, α, the optimizer or the run dir."""
        ...

    def outer_only_parameter_names(self) -> list[str]:
        """Meta-learned parameters the inner loop leaves alone (their inner learning rate is fixed at 0)."""
        ...

    def features_fixed(self) -> bool:
        """True when the body's output never changes during meta-training (a frozen body under a head that
        alone adapts): the trainer then computes each example's features once (``forward`` takes
        ``{"features": ...}``)."""
        ...

    def adapts_head_only(self) -> bool:
        """True when the inner loop adapts the head alone and the body's output for an example does not
        depend on the rest of its batch: adaptation and evaluation then run the body once per example and
        take the inner steps on its features (a body trained by the outer loop is fixed by then)."""
        ...

    def deployment_buffers(self, params: Params, x: Inputs) -> dict[str, Tensor]:
        """Tensors to freeze into the adapted model so that one prediction never depends on the rest of a batch
        (the normalisation statistics of the support set ``x`` at the adapted ``params``)."""
        ...

    def prepare_deployment(self) -> None:
        """Make room for the tensors of ``deployment_buffers`` before the adapted weights are loaded."""
        ...

    def export_module(self, preprocessing: dict[str, Any]) -> ExportModule:
        """The module ``export --onnx`` traces, with all of ``preprocessing`` inside it."""
        ...


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
