"""Models and the spec dict that rebuilds them from a run dir."""

from __future__ import annotations

from typing import Any

from torch import nn

from metactl.errors import MetactlError
from metactl.models.conv4 import Conv4
from metactl.models.mlp import MLP


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from the spec recorded in ``metactl.json``."""
    kind = spec.get("kind")
    if kind == "conv4":
        return Conv4(
            num_classes=int(spec["num_classes"]),
            in_channels=int(spec.get("in_channels", 1)),
            image_size=int(spec.get("image_size", 28)),
            width=int(spec.get("width", 64)),
        )
    if kind == "mlp":
        return MLP(
            in_features=int(spec.get("in_features", 1)),
            out_features=int(spec.get("out_features", 1)),
            hidden=tuple(int(h) for h in spec.get("hidden", (40, 40))),
        )
    raise MetactlError(f"Unknown model kind {kind!r} in the run's model spec.", "Use a run written by metactl.")


__all__ = ["MLP", "Conv4", "build_model"]
