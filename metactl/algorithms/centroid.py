"""Nearest class centroid on the body's features: a baseline with nothing to meta-learn.

The classic frozen-encoder baseline (the "Baseline" of Chen et al. 2019 with a distance classifier;
Snell et al. 2017's prototypes without episodic training): each label's centroid c_j is the mean of its
support examples' features f(x) at θ, and an example goes to the nearest centroid. That is a linear
head (:mod:`metactl.heads`):

- Euclidean: −‖f − c_j‖² = 2 c_jᵀf − ‖c_j‖² − ‖f‖², and ‖f‖² is the same for every label, so
  w_j = 2 s c_j, b_j = −s‖c_j‖²;
- cosine (the default on a body with unit-norm features, as sentence encoders have): s·cos(f, c_j),
  w_j = s c_j/‖c_j‖, b_j = 0.

Neither changes which label wins, but the temperature s decides the probabilities: scale-1 logits of
unit vectors make a nearly flat softmax, which no confidence threshold can use. So by default
(``temperature`` unset) the run fits s: after training the trainer calls
:meth:`NearestCentroid.select_on_validation` with the run's validation classes (never its test classes),
which builds the head on ``--shots`` support examples of every validation class at once, takes the
other examples as queries over ``temperature_draws`` seeded draws (the probe's draws), and keeps the s
minimising their mean negative log-likelihood. The choice is recorded in ``metactl.json``
(``algorithm.config.temperature``, ``algorithm.selection``), and adapt, evaluate and export use it: the
exported model carries s inside its head. The adapted model is an ordinary model with a linear head.

Usage (the run is the pretrained initialization: there is no meta-training)::

    metactl meta-train --algo centroid --backbone DIR --adapt head --data intents:DIR --steps 1
    metactl evaluate --from runs/centroid-...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metactl.adapt_spec import HeadAdaptation
from metactl.algorithms.probe import _draw_features, validation_draw, validation_picks
from metactl.api import AlgorithmBase, Inputs, Learner, Params, SetupInfo, TaskBatch
from metactl.calibration import expected_calibration_error
from metactl.data.tensors import to_batch
from metactl.heads import closed_form_adaptation, fit_temperature, fitted_head, fitted_head_metrics, prototype_head, resolve_cosine, scaled_nll

FALLBACK_TEMPERATURE = 1.0  # a run that could not fit s (no validation classes), or one recorded before the fit


@dataclass(frozen=True)
class CentroidConfig:
    cosine: bool | None = None  # s·cos(f, c) head; None: meta-train's setup turns it on exactly when the body's features are unit-norm
    temperature: float | None = None  # s; None: fitted on the validation classes (FALLBACK_TEMPERATURE without any)
    temperature_draws: int = 3  # seeded draws of the all-validation-classes task the fit pools

    def __post_init__(self) -> None:
        if (self.temperature is not None and self.temperature <= 0) or self.temperature_draws < 1:
            raise ValueError("temperature must be > 0 and temperature_draws >= 1")


def centroid_head(feats: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(weight, bias) of the linear head that picks the nearest class mean of ``feats`` (Euclidean, s = 1)."""
    return prototype_head(feats, y, num_classes, cosine=False)


def validation_logits(learner: Learner, pool: Any, classes: list[int], shots: int, seed: int, draws: int, cosine: bool) -> tuple[Tensor, Tensor]:
    """Scale-1 query logits and labels of ``draws`` all-classes tasks on the validation ``pool`` (the probe's draws), pooled."""
    device = next(iter(learner.params.values())).device
    theta = {k: v.detach() for k, v in learner.params.items()}
    logits, labels = [], []
    for d in range(draws):
        picks = validation_picks([pool.count(c) for c in classes], shots, seed, d)
        sx, sy, qx, qy = to_batch(validation_draw(pool, classes, picks), device).task(0)
        sf, qf = _draw_features(learner, theta, sx, qx)
        w, b = prototype_head(sf, sy, len(classes), cosine)
        logits.append(F.linear(qf, w, b).double().cpu())
        labels.append(qy.cpu())
    return torch.cat(logits), torch.cat(labels)


def validation_ece(logits: Tensor, y: Tensor, s: float) -> float:
    """Expected calibration error of softmax(s · ``logits``) against ``y``."""
    probs = (s * logits).softmax(-1).numpy()
    return expected_calibration_error(probs.max(-1), probs.argmax(-1) == y.numpy())


class NearestCentroid(AlgorithmBase):
    """Baseline: nearest class centroid on the body's features (no meta-training), its temperature fitted on validation."""

    name: ClassVar[str] = "centroid"
    description: ClassVar[str] = "Baseline: nearest class centroid on the (frozen) body's features, temperature fitted on validation, no meta-training"
    Config: ClassVar[type] = CentroidConfig
    meta_learns: ClassVar[bool] = False
    task_parallel: ClassVar[bool] = True

    def __init__(self, config: CentroidConfig, train: Any) -> None:
        super().__init__(config, train)

    def setup(self, learner: Learner, info: SetupInfo) -> None:
        """Resolve ``cosine`` for this body (recorded in the run)."""
        self.config = dataclasses.replace(self.config, cosine=resolve_cosine(self.config.cosine, learner, self.name))

    @property
    def temperature(self) -> float:
        """The s in use: the given or fitted one, else :data:`FALLBACK_TEMPERATURE`."""
        return self.config.temperature if self.config.temperature is not None else FALLBACK_TEMPERATURE

    def _head(self, learner: Learner, params: Params, x: Inputs, y: Tensor) -> Params:
        cosine, s = bool(self.config.cosine), self.temperature
        return fitted_head(learner, params, x, y, lambda f, t, n: prototype_head(f, t, n, cosine, s))

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        """The query loss and accuracy of the centroid head (logged); no gradient: nothing is meta-learned."""
        return fitted_head_metrics(learner, batch, self._head)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        """θ (step 0), then θ with the centroid head for every step 1..steps (it needs no iterations)."""
        theta = {k: v.detach() for k, v in learner.params.items()}
        fitted = self._head(learner, theta, x, y)
        return [dict(theta)] + [dict(fitted) for _ in range(steps)]

    def adaptable_head(self, learner: Learner, steps: int) -> HeadAdaptation:
        """The centroid head at s (θ's head at 0 steps), as ``adapt`` builds it (export --adaptable)."""
        return closed_form_adaptation(learner, steps, HeadAdaptation("prototype", cosine=bool(self.config.cosine), scale=self.temperature))

    def select_on_validation(self, learner: Learner, pool: Any, shots: int, seed: int) -> dict[str, Any]:
        """Fit s (when ``temperature`` is unset) on the validation ``pool``: every class with more than ``shots``
        examples at once, ``shots`` support examples each and the rest as queries, ``temperature_draws``
        seeded draws pooled; s minimises the queries' mean NLL. Sets ``config.temperature``; returns the
        choice, the NLL and ECE at s = 1 and at s ({} when ``temperature`` was given or there is nothing to fit on)."""
        cfg = self.config
        classes = [c for c in range(pool.num_classes) if pool.count(c) > shots]
        if cfg.temperature is not None or len(classes) < 2:
            return {}
        z, y = validation_logits(learner, pool, classes, shots, seed, cfg.temperature_draws, bool(cfg.cosine))
        s = fit_temperature(z, y)
        self.config = dataclasses.replace(cfg, temperature=s)
        return {
            "temperature": s,
            "validation_nll": {"1": scaled_nll(z, y, 0.0), "fitted": scaled_nll(z, y, float(np.log(s)))},
            "validation_ece": {"1": validation_ece(z, y, 1.0), "fitted": validation_ece(z, y, s)},
            "classes": len(classes),
            "shots": shots,
            "draws": cfg.temperature_draws,
        }
