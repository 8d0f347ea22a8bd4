"""The MLP of Finn et al. 2017 for sinusoid regression: 1 -> 40 -> 40 -> 1 with ReLU."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metactl.models import ModelBase


class MLP(ModelBase):
    def __init__(self, in_features: int = 1, out_features: int = 1, hidden: tuple[int, ...] = (40, 40)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        last = in_features
        for h in hidden:
            layers += [nn.Linear(last, h), nn.ReLU()]
            last = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(last, out_features)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> MLP:
        return cls(
            in_features=int(spec.get("in_features", 1)),
            out_features=int(spec.get("out_features", 1)),
            hidden=tuple(int(h) for h in spec.get("hidden", (40, 40))),
        )

    def features(self, x: torch.Tensor, ref: int | None = None, tasks: int = 1) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor, ref: int | None = None, tasks: int = 1, return_features: bool = False) -> torch.Tensor:
        f = self.body(x)
        return f if return_features else self.head(f)
