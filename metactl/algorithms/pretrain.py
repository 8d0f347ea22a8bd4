"""The baseline: plain supervised pre-training, then fine-tuning — no inner loop.

The reference point every meta-learned θ must beat (Finn et al. 2017 compare against it; see also
Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019, https://arxiv.org/abs/1904.04232).
θ minimises the average loss over all meta-training classes: images of every episode are labelled
with their global class and classified by a head over all training classes (kept outside θ); for
regression the network fits all tasks' points at once. The N-way head in θ stays at zero, so
adaptation fine-tunes all layers from a zero head with the plain inner learning rate.

``cosine = true`` (``[algo_options]``): the all-classes classifier's logits are s·cos(w_c, f), the
class weights and the features both L2-normalised, with log s learned (initial s = ``temperature``;
:func:`metactl.heads.add_log_temperature`) — the all-intents cosine-softmax pre-training of a text
body, whose scale-1 dot products of unit vectors would otherwise give a nearly flat softmax.

``test_head = "probe"``: adapt, evaluate and export start from a logistic regression on the pretrained
body's features (its C and temperature chosen on the validation classes after training, exactly as
``--algo probe`` chooses them) instead of fine-tuning a zero head — a pre-trained body scored with the
head the meta-learned ones get (``protomaml``'s ``test_head``).

Usage::

    metactl meta-train --algo pretrain --meta-batch 8
    metactl meta-train --algo pretrain --config pretrain-cosine.toml  # [algo_options] cosine = true
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from metactl.adapt_spec import HeadAdaptation, NotAdaptable
from metactl.algorithms.probe import probe_adaptation, probe_head_start, select_probe_head
from metactl.algorithms.protomaml import head_adapts_alone
from metactl.api import AlgorithmBase, Inputs, Learner, Params, SetupInfo, TaskBatch, cat_inputs, map_inputs
from metactl.errors import MetactlError
from metactl.heads import add_log_temperature, cosine_logits, head_alphas, head_arrays, temperature
from metactl.inner import adapt_trajectory


@dataclass(frozen=True)
class PretrainConfig:
    label_smoothing: float = 0.0
    tasks_per_forward: int = 2  # episodes per forward/backward (BatchNorm batch); 0 = the whole meta-batch
    cosine: bool = False  # logits s·cos(w_c, f) (normalised class weights and features), log s learned
    temperature: float = 10.0  # the initial s of the cosine logits
    test_head: str = "finetune"  # adapt/evaluate/export: a zero head fine-tuned, or "probe" (a logistic regression, no steps)
    probe_c: float | None = None  # test_head "probe": its C; None: chosen on the validation classes after training
    probe_temperature: float | None = None  # test_head "probe": its s; None: fitted on the validation classes

    def __post_init__(self) -> None:
        if self.test_head not in ("finetune", "probe"):
            raise ValueError("test_head must be finetune or probe")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.tasks_per_forward < 0:
            raise ValueError("tasks_per_forward must be >= 0")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")


class Pretrain(AlgorithmBase):
    name: ClassVar[str] = "pretrain"
    description: ClassVar[str] = "Baseline: supervised pre-training on all training classes, then fine-tuning"
    Config: ClassVar[type] = PretrainConfig

    def __init__(self, config: PretrainConfig, train: Any) -> None:
        self.config = config

    def setup(self, learner: Learner, info: SetupInfo) -> None:
        if learner.task != "classification":
            if self.config.cosine:
                raise MetactlError("pretrain: cosine=true makes a classifier's logits cosines: classification data only.", "Drop cosine (algo_options).")
            return
        n, feat = int(info.train_classes), learner.params[learner.head[0]].shape[1]
        weight = learner.params[learner.head[0]]
        classifier = torch.nn.Linear(feat, n).to(dtype=weight.dtype, device=weight.device)  # default init, seeded
        learner.extra = {"classifier.weight": classifier.weight.detach().clone().requires_grad_(True)}
        if self.config.cosine:  # s·cos(w_c, f): no bias; log s learned
            add_log_temperature(learner, self.config.temperature)
        else:
            learner.extra["classifier.bias"] = classifier.bias.detach().clone().requires_grad_(True)
        with torch.no_grad():
            for k in learner.head:
                learner.params[k].zero_()

    def logits(self, learner: Learner, features: Tensor) -> Tensor:
        """The all-classes classifier's logits: W f + b, or with ``cosine`` s·cos(w_c, f) at the learned s."""
        w = learner.extra["classifier.weight"]
        if self.config.cosine:
            return cosine_logits(features, w, temperature(learner, self.config.temperature))
        return F.linear(features, w, learner.extra["classifier.bias"])

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        """Average loss over every image of the meta-batch, in chunks of ``tasks_per_forward`` episodes."""
        b = len(batch)
        chunk = self.config.tasks_per_forward or b
        total_loss = total_metric = 0.0
        for lo in range(0, b, chunk):
            hi = min(lo + chunk, b)
            part = batch.tasks(lo, hi)
            x = map_inputs(lambda t: t.flatten(0, 1), cat_inputs([part.support_x, part.query_x], dim=1))
            if learner.task == "regression":
                y = torch.cat([batch.support_y[lo:hi], batch.query_y[lo:hi]], dim=1).flatten(0, 1)
                loss = F.mse_loss(learner.forward(learner.params, x), y)
                metric = float(loss.detach())
            else:
                if batch.classes is None:
                    raise ValueError("pretrain needs the episodes' global class ids")
                local = torch.cat([batch.support_y[lo:hi], batch.query_y[lo:hi]], dim=1)  # labels 0..N-1
                y = torch.gather(batch.classes[lo:hi], 1, local).flatten()
                logits = self.logits(learner, learner.features(learner.params, x))
                loss = F.cross_entropy(logits, y, label_smoothing=self.config.label_smoothing)
                metric = float((logits.argmax(-1) == y).float().mean())
            (loss * ((hi - lo) / b)).backward()
            total_loss += float(loss.detach()) * (hi - lo) / b
            total_metric += metric * (hi - lo) / b
        return {"loss": total_loss, "metric": total_metric}

    def select_on_validation(self, learner: Learner, pool: Any, shots: int, seed: int) -> dict[str, Any]:
        """``test_head = "probe"``: its C and s chosen on the validation ``pool`` as ``--algo probe`` chooses them ({} otherwise)."""
        if self.config.test_head != "probe":
            return {}
        self.config, choice = select_probe_head(self.config, learner, pool, shots, seed)
        return choice

    def adaptable_head(self, learner: Learner, steps: int) -> HeadAdaptation:
        """``adapt`` as data (export --adaptable): θ's head (a zero head for another class count) or the probe, then
        ``steps`` plain head steps with their α. Refused when fine-tuning changes the body too."""
        if not head_adapts_alone(learner):
            raise NotAdaptable("its fine-tuning changes the body too (pre-train with --adapt head; the body may still train with --train-body)")
        alphas = head_alphas(learner, steps)
        if self.config.test_head == "probe":
            return probe_adaptation(self.config, alphas)
        return HeadAdaptation("initial", **head_arrays(learner), alphas=alphas)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        """Fine-tuning from θ's zero head, or with ``test_head = "probe"`` from the logistic regression fitted to
        the support features (``steps`` plain inner steps from it)."""
        if self.config.test_head == "probe":
            return adapt_trajectory(learner.replace(params=probe_head_start(self.config, learner, x, y)), x, y, steps)
        return adapt_trajectory(learner, x, y, steps)
