"""Episodes (numpy) to the tensors algorithms see (:class:`metactl.api.TaskBatch`).

Kept apart from the samplers so that reading data (``metactl predict``'s image decoding) never imports torch.
"""

from __future__ import annotations

import numpy as np
import torch

from metactl.api import Inputs, TaskBatch
from metactl.data.episodes import EpisodeBatch


def to_batch(ep: EpisodeBatch, device: str | torch.device = "cpu") -> TaskBatch:
    """numpy episodes -> tensors on ``device``; images uint8 (ink = 255) become float in [0, 1];
    a dict of arrays (several tensors per example) becomes a dict of tensors."""

    def tensor(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.float() / 255.0 if t.dtype == torch.uint8 else t).to(device)

    def x(a: np.ndarray | dict[str, np.ndarray]) -> Inputs:
        return {k: tensor(v) for k, v in a.items()} if isinstance(a, dict) else tensor(a)

    classes = None if ep.classes is None else torch.from_numpy(np.ascontiguousarray(ep.classes)).to(device)
    return TaskBatch(
        x(ep.support_x),
        torch.from_numpy(np.ascontiguousarray(ep.support_y)).to(device),
        x(ep.query_x),
        torch.from_numpy(np.ascontiguousarray(ep.query_y)).to(device),
        classes,
    )
