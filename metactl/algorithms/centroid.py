"""Nearest class centroid on the body's features: a baseline with nothing to meta-learn.

The classic frozen-encoder baseline (the "Baseline" of Chen et al. 2019 with a distance classifier;
Snell et al. 2017's prototypes without episodic training): each label's centroid c_j is the mean of its
support examples' features f(x) at θ, and an example goes to the nearest centroid in squared Euclidean
distance. That is a linear head: −‖f − c_j‖² = 2 c_jᵀf − ‖c_j‖² − ‖f‖², and ‖f‖² is the same for every
label, so w_j = 2 c_j, b_j = −‖c_j‖² (an L2-normalised body, as sentence encoders have, makes it the
cosine-nearest centroid). The adapted model is an ordinary model with a linear head: adapt, export and
predict treat it like any other.

Usage (the run is the pretrained initialization: there is no meta-training)::

    metactl meta-train --algo centroid --backbone DIR --adapt head --data intents:DIR --steps 1
    metactl evaluate --from runs/centroid-...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from metactl.api import AlgorithmBase, Inputs, Learner, Params, TaskBatch, cat_inputs, inputs_len


@dataclass(frozen=True)
class CentroidConfig:
    pass


def centroid_head(feats: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(weight, bias) of the linear head that picks the nearest class mean of ``feats``."""
    onehot = F.one_hot(y, num_classes).to(feats.dtype)
    counts = onehot.sum(0).clamp(min=1)
    centroids = (onehot.T @ feats) / counts[:, None]
    return 2 * centroids, -centroids.pow(2).sum(-1)


def fitted_head(learner: Learner, params: Params, x: Inputs, y: Tensor, fit: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]) -> Params:
    """``params`` with the head ``fit(features, labels, num_classes)`` gives on the support set (x, y)
    at ``params`` (features without a graph: a closed-form head, nothing differentiated through it)."""
    w_name, b_name = learner.head
    with torch.no_grad():
        w, b = fit(learner.features(params, x, ref=inputs_len(x)), y, params[w_name].shape[0])
    return {**params, w_name: w.to(params[w_name].dtype), b_name: b.to(params[b_name].dtype)}


def fitted_head_metrics(learner: Learner, batch: TaskBatch, fit: Callable[[Learner, Params, Inputs, Tensor], Params]) -> dict[str, float]:
    """Mean query loss and metric when each task's head is ``fit`` on its support set at θ (no gradient):
    what a baseline with nothing to meta-learn reports as its training metrics."""
    loss = metric = 0.0
    theta = {k: v.detach() for k, v in learner.params.items()}
    for i in range(len(batch)):
        sx, sy, qx, qy = batch.task(i)
        phi = fit(learner, theta, sx, sy)
        with torch.no_grad():
            n = inputs_len(sx)
            out = learner.head_forward(phi, learner.features(phi, cat_inputs([sx, qx]), ref=n)[n:])
            loss += float(learner.loss(out, qy))
            metric += learner.metric(out, qy)
    return {"loss": loss / len(batch), "metric": metric / len(batch)}


class NearestCentroid(AlgorithmBase):
    """Baseline: nearest class centroid on the body's features (no meta-training)."""

    name: ClassVar[str] = "centroid"
    description: ClassVar[str] = "Baseline: nearest class centroid on the (frozen) body's features, no meta-training"
    Config: ClassVar[type] = CentroidConfig
    meta_learns: ClassVar[bool] = False
    task_parallel: ClassVar[bool] = True

    def __init__(self, config: CentroidConfig, train: Any) -> None:
        super().__init__(config, train)

    def _head(self, learner: Learner, params: Params, x: Inputs, y: Tensor) -> Params:
        return fitted_head(learner, params, x, y, centroid_head)

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        """The query loss and accuracy of the centroid head (logged); no gradient: nothing is meta-learned."""
        return fitted_head_metrics(learner, batch, self._head)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        """θ (step 0), then θ with the centroid head for every step 1..steps (it needs no iterations)."""
        theta = {k: v.detach() for k, v in learner.params.items()}
        fitted = self._head(learner, theta, x, y)
        return [dict(theta)] + [dict(fitted) for _ in range(steps)]
