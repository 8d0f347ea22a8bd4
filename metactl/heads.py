"""The prototype heads shared by ``protomaml``, ``centroid`` and the protonet plugin, and their temperature.

Every prototype head is a linear head (weight, bias) built from the class prototypes p_j (the mean
support feature of class j) and a temperature s > 0, so that adapt, export and predict need nothing new:

- Euclidean (the classic head): logits s·(2 p_jᵀf − ‖p_j‖²) = −s‖f − p_j‖² up to a per-row constant,
  so w_j = 2 s p_j, b_j = −s‖p_j‖² (s = 1: the nearest-centroid head of Snell et al. 2017);
- cosine: logits s·cos(f, p_j). On unit-norm features f (a sentence encoder that L2-normalises its
  embedding) that is the linear head w_j = s p_j / ‖p_j‖, b_j = 0, with s carried inside w. Scale-1
  logits of unit vectors make a nearly flat softmax; s (≈ 10–30) gives probabilities one can threshold.

The temperature is either meta-learned as log s (an extra parameter named :data:`LOG_TEMPERATURE`,
kept in the run's ``theta.safetensors`` and given back by ``runs.load_run``), or fitted on validation
tasks by :func:`fit_temperature` (the NLL of s·z over a 1-D search of log s).

Also here: :func:`fitted_head` / :func:`fitted_head_metrics`, the closed-form-head helpers the
baselines (``centroid``, ``probe``) share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metactl.adapt_spec import HeadAdaptation
from metactl.api import Inputs, Learner, Params, TaskBatch, cat_inputs, inputs_len
from metactl.errors import MetactlError

LOG_TEMPERATURE = "head.log_temperature"  # an extra parameter named head.*: saved with the run (runs.RUN_EXTRA_PREFIX)
LOG_S_RANGE = (math.log(0.01), math.log(1000.0))  # where fit_temperature searches log s


def prototypes(feats: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """(num_classes, D) mean feature per class (a class without examples gets the zero vector)."""
    onehot = F.one_hot(y, num_classes).to(feats.dtype)
    counts = onehot.sum(0).clamp(min=1)
    return (onehot.T @ feats) / counts[:, None]


def euclidean_head(protos: Tensor, scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """(w, b) = (2 s p, −s‖p‖²): logits −s‖f − p_j‖² + s‖f‖² (the same per row: the softmax of −s‖f − p_j‖²)."""
    return 2 * scale * protos, -scale * protos.pow(2).sum(-1)


def cosine_head(protos: Tensor, scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """(w, b) = (s p/‖p‖, 0): logits s·cos(f, p_j) for unit-norm f (a zero prototype gives zero logits)."""
    w = scale * F.normalize(protos, dim=-1)
    return w, torch.zeros(protos.shape[0], dtype=w.dtype, device=w.device)


def prototype_head(feats: Tensor, y: Tensor, num_classes: int, cosine: bool, scale: Tensor | float = 1.0) -> tuple[Tensor, Tensor]:
    """The linear head of the prototypes of (``feats``, ``y``): cosine or Euclidean, at temperature ``scale``."""
    protos = prototypes(feats, y, num_classes)
    return cosine_head(protos, scale) if cosine else euclidean_head(protos, scale)


def cosine_logits(feats: Tensor, protos: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """s·cos(f, p_j) for each row f of ``feats`` (normalised here): (Q, N)."""
    return scale * F.normalize(feats, dim=-1) @ F.normalize(protos, dim=-1).T


def unit_norm_body(model: Any) -> bool:
    """True when the model's recorded spec says its features are L2-normalised (a sentence encoder with a
    ``Normalize`` module: the text classifier's ``spec["normalize"]``); False for any other model."""
    spec = getattr(model, "spec", None)
    return isinstance(spec, dict) and bool(spec.get("normalize"))


def resolve_cosine(cosine: bool | None, learner: Learner, algo: str) -> bool:
    """``cosine`` as given, or (None) on exactly when the body's features are unit-norm. A cosine head asked
    for on a body whose features are not unit-norm is refused: its linear head would not be s·cos."""
    unit = unit_norm_body(learner.model)
    if cosine and not unit:
        raise MetactlError(
            f"{algo}: cosine=true needs unit-norm features (a sentence encoder that normalises its embeddings); this body's are not.",
            "Drop cosine (algo_options) or use a normalised text backbone.",
        )
    return unit if cosine is None else bool(cosine)


def add_log_temperature(learner: Learner, temperature: float) -> None:
    """Add log s (s = ``temperature``) to ``learner.extra``: the outer loop then learns it."""
    weight = learner.params[learner.head[0]]
    learner.extra = {**learner.extra, LOG_TEMPERATURE: torch.tensor(math.log(temperature), dtype=weight.dtype, device=weight.device, requires_grad=True)}


def temperature(learner: Learner, fixed: float) -> Tensor | float:
    """s: exp of the learned log s when ``learner.extra`` holds one (a tensor with its graph), else ``fixed``."""
    log_s = learner.extra.get(LOG_TEMPERATURE)
    return fixed if log_s is None else log_s.exp()


def scaled_nll(logits: Tensor, y: Tensor, log_s: float) -> float:
    """Mean cross-entropy of exp(log_s)·logits."""
    return float(F.cross_entropy(math.exp(log_s) * logits.double(), y))


def fit_temperature(logits: Tensor, y: Tensor, lo: float = LOG_S_RANGE[0], hi: float = LOG_S_RANGE[1], iters: int = 60) -> float:
    """The s in [e^lo, e^hi] minimising the mean cross-entropy of s·``logits`` (scale-1 logits) against ``y``.

    The NLL is convex in s, hence unimodal in log s: a golden-section search on log s finds its minimum
    (to ~1e-12 of the interval after 60 iterations)."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = scaled_nll(logits, y, c), scaled_nll(logits, y, d)
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = scaled_nll(logits, y, c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = scaled_nll(logits, y, d)
    return math.exp((a + b) / 2)


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


def head_alphas(learner: Learner, steps: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(α of the head's weight, α of its bias) at each of ``steps`` inner steps, as float32 arrays (``export --adaptable``)."""
    w, b = learner.head
    return tuple(tuple(learner.lr(n, k).detach().cpu().float().numpy() for n in (w, b)) for k in range(steps))  # type: ignore[misc]


def head_arrays(learner: Learner) -> dict[str, np.ndarray]:
    """θ's head as float32 arrays: ``weight`` and ``bias`` of a :class:`HeadAdaptation` that starts from it."""
    w, b = learner.head
    return {"weight": learner.params[w].detach().cpu().float().numpy(), "bias": learner.params[b].detach().cpu().float().numpy()}


def closed_form_adaptation(learner: Learner, steps: int, fitted: HeadAdaptation) -> HeadAdaptation:
    """A closed-form head's adaptation (centroid, probe, protonet): θ's head at 0 steps, the fitted head at any other count."""
    return fitted if steps > 0 else HeadAdaptation("initial", **head_arrays(learner))


__all__ = [
    "LOG_TEMPERATURE",
    "add_log_temperature",
    "closed_form_adaptation",
    "cosine_head",
    "cosine_logits",
    "euclidean_head",
    "fit_temperature",
    "fitted_head",
    "fitted_head_metrics",
    "head_alphas",
    "head_arrays",
    "prototype_head",
    "prototypes",
    "resolve_cosine",
    "temperature",
    "unit_norm_body",
]  # fmt: skip
