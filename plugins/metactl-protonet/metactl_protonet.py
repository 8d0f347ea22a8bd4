"""Prototypical Networks (ProtoNet), a metactl algorithm plugin.

Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017,
https://arxiv.org/abs/1703.05175.

For each task i, with f_θ the model's body (``model.features``, BatchNorm statistics from the
support set only, as everywhere in metactl):

    p_c = mean of f_θ(x) over the support examples of class c          (the class prototypes)
    p(y = c | x) = softmax_c(−‖f_θ(x) − p_c‖²)                         (squared Euclidean distance)
    outer objective: (1/B) Σᵢ cross-entropy over task i's queries, w.r.t. θ (body only).

With the cosine head (``cosine``; the default on a body whose features are unit-norm, such as a
normalised sentence encoder) the logits are s·cos(f_θ(x), p_c) instead, with log s meta-learned
(``learn_temperature``, initial s = ``temperature``): the head arithmetic is :mod:`metactl.heads`, and
the learned s is kept in the run and carried into the adapted head (w_c = s p_c/‖p_c‖, b_c = 0).

There is no inner loop: the inner learning rates α and the meta-learned linear head are unused.
At adapt time the prototypes become the linear head (paper, Sec. 2.4): w_c = 2 p_c,
b_c = −‖p_c‖², since −‖f − p_c‖² = 2 p_cᵀf − ‖p_c‖² − ‖f‖² and ‖f‖² is the same for every class,
so the softmax is unchanged. The adapted model is therefore an ordinary Conv-4 with a linear head,
and ``metactl adapt`` / ``metactl export --onnx`` work on it unchanged.

Usage::

    pip install -e plugins/metactl-protonet
    metactl meta-train --algo protonet --ways 5 --shots 1
    metactl adapt --support ./shots && metactl export --onnx
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from metactl.adapt_spec import HeadAdaptation
from metactl.api import AlgorithmBase, Inputs, Learner, Params, SetupInfo, TaskBatch, cat_inputs, inputs_len
from metactl.errors import MetactlError
from metactl.heads import add_log_temperature, cosine_head, cosine_logits, resolve_cosine, temperature

__version__ = "0.1.0"


@dataclass(frozen=True)
class ProtoNetConfig:
    cosine: bool | None = None  # s·cos(f, p) logits; None: meta-train's setup turns them on exactly when the body's features are unit-norm
    temperature: float = 10.0  # s of the cosine logits: its initial value when learned
    learn_temperature: bool = True  # meta-learn log s (cosine logits only)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")


def embed(learner: Learner, params: Params, x: Inputs, ref: int | None = None) -> Tensor:
    """f_θ(x): the body's features at ``params``, normalised with the statistics of ``x[:ref]``
    (``Learner.features``: bf16 autocast and frozen weights as everywhere in metactl)."""
    return learner.features(params, x, ref=ref)


def prototypes(emb: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """(num_classes, D) mean embedding per class; every class needs at least one example."""
    onehot = F.one_hot(y, num_classes).to(emb.dtype)  # (M, N)
    counts = onehot.sum(0)
    if bool((counts == 0).any()):
        missing = [int(c) for c in torch.nonzero(counts == 0).flatten()]
        raise ValueError(f"ProtoNet needs at least one support example per class; none for label(s) {missing}")
    return (onehot.T @ emb) / counts[:, None]


def distance_logits(emb: Tensor, protos: Tensor) -> Tensor:
    """−‖f − p_c‖² for each row f of ``emb`` and prototype p_c: (Q, N)."""
    return -(emb[:, None, :] - protos[None, :, :]).pow(2).sum(-1)


def prototype_head(protos: Tensor) -> tuple[Tensor, Tensor]:
    """The linear head whose logits equal −‖f − p_c‖² up to the per-row constant ‖f‖²: (2 p, −‖p‖²)."""
    return 2 * protos, -protos.pow(2).sum(-1)


def _require_classification(learner: Learner) -> None:
    if learner.task != "classification":
        raise MetactlError(f"protonet needs a classification task (this one is {learner.task}).", "Choose image data, or another --algo.")


class ProtoNet(AlgorithmBase):
    """Prototypical Networks: class prototypes in embedding space, squared Euclidean distance."""

    name: ClassVar[str] = "protonet"
    description: ClassVar[str] = "Prototypical Networks (Snell et al. 2017), squared Euclidean distance"
    Config: ClassVar[type] = ProtoNetConfig
    task_parallel: ClassVar[bool] = True  # the meta-gradient and metrics are means over independent tasks

    def __init__(self, config: ProtoNetConfig, train: Any) -> None:
        self.config = config

    def setup(self, learner: Learner, info: SetupInfo) -> None:
        """Fail early on regression; resolve ``cosine`` for this body (recorded) and add log s when it is learned."""
        _require_classification(learner)  # fail at the start of meta-train, not at the first step
        self.config = dataclasses.replace(self.config, cosine=resolve_cosine(self.config.cosine, learner, self.name))
        if self.config.cosine and self.config.learn_temperature:
            add_log_temperature(learner, self.config.temperature)

    def task_logits(self, learner: Learner, params: Params, sx: Inputs, sy: Tensor, qx: Inputs) -> Tensor:
        """Query logits of one task (−‖f(q) − p_c‖², or s·cos(f(q), p_c)), support and queries embedded together with support statistics."""
        n = inputs_len(sx)
        num_classes = learner.params[learner.head[0]].shape[0]
        emb = embed(learner, params, cat_inputs([sx, qx]), ref=n)
        protos = prototypes(emb[:n], sy, num_classes)
        if self.config.cosine:  # unresolved (None: no setup, or a run recorded before the cosine head): Euclidean
            return cosine_logits(emb[n:], protos, temperature(learner, self.config.temperature))
        return distance_logits(emb[n:], protos)

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        _require_classification(learner)
        b = len(batch)
        total_loss = 0.0
        total_metric = 0.0
        for i in range(b):
            sx, sy, qx, qy = batch.task(i)
            out = self.task_logits(learner, learner.params, sx, sy, qx)
            loss = learner.loss(out, qy)
            (loss / b).backward()
            total_loss += float(loss.detach())
            total_metric += learner.metric(out.detach(), qy)
        return {"loss": total_loss / b, "metric": total_metric / b}

    def adaptable_head(self, learner: Learner, steps: int) -> HeadAdaptation:
        """The prototype head ``adapt`` builds (at every step count), as data for ``metactl export --adaptable``."""
        if self.config.cosine:
            return HeadAdaptation("prototype", cosine=True, scale=float(torch.as_tensor(temperature(learner, self.config.temperature)).detach()))
        return HeadAdaptation("prototype", cosine=False, scale=1.0)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        """θ with the prototype head, for every step 0..steps (there are no gradient steps)."""
        _require_classification(learner)
        w_name, b_name = learner.head
        params = {k: v.detach() for k, v in learner.params.items()}
        with torch.no_grad():
            emb = embed(learner, params, x, ref=inputs_len(x))
            protos = prototypes(emb, y, params[w_name].shape[0])
            weight, bias = cosine_head(protos, temperature(learner, self.config.temperature)) if self.config.cosine else prototype_head(protos)
        params[w_name] = weight.to(params[w_name].dtype)
        params[b_name] = bias.to(params[b_name].dtype)
        return [dict(params) for _ in range(steps + 1)]
