"""ProtoMAML: MAML whose inner loop starts each task from the prototype head.

Triantafillou et al., "Meta-Dataset: A Dataset of Datasets for Learning to Learn from Few Examples",
ICLR 2020, Sec. 4, https://arxiv.org/abs/1903.03096.

For each task: p_c = mean support feature of class c at θ (the body's features, support statistics),
the head becomes the prototype head (:mod:`metactl.heads`), and ϕ₀ = θ with that head:

- cosine (the default on a body with unit-norm features, e.g. a normalised sentence encoder):
  logits s·cos(f, p_c), i.e. w_c = s p_c/‖p_c‖, b_c = 0, with log s meta-learned (``learn_temperature``;
  initial s = ``temperature``). Scale-1 dot products of unit vectors give a nearly flat softmax whose
  loss keeps asking the body for more spread; s lets the loss saturate instead. The learned s is kept
  in the run (``theta.safetensors``). It is learned on training tasks, whose classes the trained body
  separates better than new ones, so it is overconfident on new classes; by default (``calibrate``)
  the trainer then refits s on the run's validation classes (:meth:`ProtoMAML.select_on_validation`:
  every validation class at once, the NLL of their queries, as the centroid fits its s), and adapt,
  evaluate and export use that ``fitted_temperature`` (it sits inside w);
- Euclidean (any other body, e.g. Conv-4, whose features are not unit-norm): the nearest-prototype
  head w_c = 2 p_c, b_c = −‖p_c‖².

 Then the MAML inner steps with the learned per-layer α on every adapted
entry, head included: ϕₖ₊₁ = ϕₖ − α ∇ϕ L_support(ϕₖ). The outer loss (1/B) Σᵢ L_query(ϕᵢ) is
differentiated w.r.t. θ and α through the inner steps *and* through the prototypes (they depend on
the body / LoRA entries of θ) and log s.

- Second order (default): the inner gradients keep their graph (Hessian terms), as in MAML.
- ``first_order``: the inner gradients gₖ are constants (∂ϕ_K/∂ϕ₀ = I, ∂ϕ_K/∂α = −Σₖ gₖ), but the
  prototypes' dependence on θ is kept: the meta-gradient of θ is the query gradient at ϕ_K for the
  body plus the head part of it pulled back through the prototype head, ∂L/∂ϕ_body + (∂(w, b)/∂θ)ᵀ
  ∂L/∂ϕ_head. This is the paper's fo-Proto-MAML ("gradients flow through the prototype init").

The meta-learned head init of θ is unused: the head entries of θ are replaced by the prototype head
at the start of every task (in training and in ``adapt``), so they receive no meta-gradient and the
run's stored head is the untouched initialization. On a frozen body (``--adapt head``) the prototypes
are constants, so what is meta-learned there is α alone. Classification only.

When the inner loop adapts the head alone (``--adapt head``, the body frozen or trained by the outer loop
only: ``--train-body`` / ``--train-layers K``), the body's entries of ϕ are θ's at every inner step, so
each task's body runs ONCE, on support and query together: the support features give the prototypes and
the head's inner steps (second order unless ``first_order``), the query features the logits — the same
meta-gradient as running the body for the prototypes, each inner step and the query.

Usage::

    metactl meta-train --algo protomaml --backbone DIR --adapt head --data intents:DIR --inner-steps 3 --inner-lr 0.5
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from metactl.adapt_spec import HeadAdaptation, NotAdaptable
from metactl.algorithms.anil import head_step
from metactl.algorithms.centroid import validation_ece, validation_logits
from metactl.algorithms.probe import probe_adaptation, probe_head_start, select_probe_head
from metactl.api import AlgorithmBase, Inputs, Learner, Params, SetupInfo, TaskBatch, cat_inputs, inputs_len
from metactl.errors import MetactlError
from metactl.heads import add_log_temperature, fit_temperature, head_alphas, prototype_head, resolve_cosine, scaled_nll, temperature
from metactl.inner import adapt_trajectory, inner_step

TEST_HEADS = ("prototype", "probe")


@dataclass(frozen=True)
class ProtoMAMLConfig:
    first_order: bool = False  # constant inner gradients; the prototypes still depend on θ (see the module docstring)
    cosine: bool | None = None  # s·cos(f, p) head; None: meta-train's setup turns it on exactly when the body's features are unit-norm
    temperature: float = 10.0  # s of the cosine head: its initial value when learned
    learn_temperature: bool = True  # meta-learn log s (cosine head only)
    calibrate: bool = True  # after training, refit s on the validation classes for adapt/evaluate/export (cosine head only)
    fitted_temperature: float | None = None  # the refit s (set by select_on_validation, recorded in metactl.json)
    calibration_draws: int = 3  # seeded draws of the all-validation-classes task the refit pools
    test_head: str = "prototype"  # the head adapt/evaluate/export start from: the prototypes, or "probe" (see ProtoMAML.adapt)
    probe_c: float | None = None  # test_head "probe": its C; None: chosen on the validation classes after training
    probe_temperature: float | None = None  # test_head "probe": its s; None: fitted on the validation classes

    def __post_init__(self) -> None:
        if self.temperature <= 0 or (self.fitted_temperature is not None and self.fitted_temperature <= 0) or self.calibration_draws < 1:
            raise ValueError("temperature and fitted_temperature must be > 0, calibration_draws >= 1")
        if self.test_head not in TEST_HEADS:
            raise ValueError(f"test_head must be one of {', '.join(TEST_HEADS)}")


def prototype_head_params(learner: Learner, params: Params, feats: Tensor, y: Tensor, cosine: bool = False, scale: Tensor | float = 1.0) -> Params:
    """The head entries (weight, bias) of the prototype head (cosine or Euclidean, temperature ``scale``) of the
    support features ``feats`` with labels ``y``, in the dtype of ``params``' head. Differentiable through
    ``feats`` and ``scale``; a constant head (frozen body, fixed s) is made a leaf that requires grad, since
    the inner loop still differentiates it."""
    wname, bname = learner.head
    w, b = prototype_head(feats, y, params[wname].shape[0], cosine, scale)
    head = {wname: w.to(params[wname].dtype), bname: b.to(params[bname].dtype)}
    if torch.is_grad_enabled():
        head = {k: v if v.requires_grad else v.requires_grad_(True) for k, v in head.items()}
    return head


def prototype_init(learner: Learner, params: Params, x: Inputs, y: Tensor, cosine: bool = False, scale: Tensor | float = 1.0) -> Params:
    """``params`` with the head replaced by the prototype head (cosine or Euclidean, temperature ``scale``)
    of the support set (x, y) at ``params``. Differentiable: the head depends on the body's entries of
    ``params`` and on ``scale``."""
    feats = learner.features(params, x, ref=inputs_len(x))
    return {**params, **prototype_head_params(learner, params, feats, y, cosine, scale)}


def _first_order_step(learner: Learner, phi: Params, x: Inputs, y: Tensor, step: int) -> Params:
    """ϕ − α g with g the support gradient taken at a detached copy of ϕ: a constant, and the graph from ϕ
    back to the prototypes (which ``inner_step`` would free with its gradient) is left for the outer pass."""
    names = learner.inner_names()
    leaf = {k: v.detach().requires_grad_(k in names) for k, v in phi.items()}
    grads = torch.autograd.grad(learner.loss(learner.forward(leaf, x), y), [leaf[n] for n in names])
    return {**phi, **{n: phi[n] - learner.lr(n, step) * g for n, g in zip(names, grads, strict=True)}}


def head_adapts_alone(learner: Learner) -> bool:
    """True when the inner loop adapts the head's entries alone (``--adapt head``, with or without a body the
    outer loop trains): the body's entries of ϕ stay θ's through every inner step, so a task's body features
    are the same at each step and are computed once."""
    return set(learner.inner_names()) <= set(learner.head)


def _first_order_head_step(learner: Learner, head: Params, feats: Tensor, y: Tensor, step: int) -> Params:
    """The head alone: ϕ − α g with g the support gradient at detached copies of the head and the features (a
    constant), the graph from ϕ back to the prototypes left for the outer pass (as ``_first_order_step``)."""
    leaf = {k: v.detach().requires_grad_(True) for k, v in head.items()}
    grads = torch.autograd.grad(learner.loss(learner.head_forward(leaf, feats.detach()), y), list(leaf.values()))
    return {k: head[k] - learner.lr(k, step) * g for k, g in zip(leaf, grads, strict=True)}


class ProtoMAML(AlgorithmBase):
    """ProtoMAML (Triantafillou et al. 2020): MAML from the prototype head, learned per-layer α."""

    name: ClassVar[str] = "protomaml"
    description: ClassVar[str] = "ProtoMAML (Triantafillou et al. 2020): MAML inner loop from the prototype head, second order, learned per-layer α"
    task_parallel: ClassVar[bool] = True  # meta-gradient and metrics are means over independent tasks
    Config: ClassVar[type] = ProtoMAMLConfig

    def __init__(self, config: ProtoMAMLConfig, train: Any) -> None:
        self.config = config
        self.inner_steps = int(train.inner_steps)

    def setup(self, learner: Learner, info: SetupInfo) -> None:
        """Check the task, resolve ``cosine`` for this body (recorded in the run) and add log s when it is learned."""
        if learner.task != "classification":
            raise MetactlError(f"protomaml needs a classification task, not {learner.task}.", "Use --algo maml for regression.")
        self.config = dataclasses.replace(self.config, cosine=resolve_cosine(self.config.cosine, learner, self.name))
        if self.config.cosine and self.config.learn_temperature:
            add_log_temperature(learner, self.config.temperature)

    def head_of(self, learner: Learner) -> tuple[bool, Tensor | float]:
        """(cosine?, s): the refit s once there is one (after training), else the learned s where ``learner.extra``
        holds log s, else ``temperature``; 1 for the Euclidean head. ``cosine`` unresolved (None: no ``setup``,
        or a run recorded before the cosine head) is the Euclidean head."""
        cosine, fitted = bool(self.config.cosine), self.config.fitted_temperature
        if not cosine:
            return False, 1.0
        return True, fitted if fitted is not None else temperature(learner, self.config.temperature)

    def _query(self, learner: Learner, sx: Inputs, sy: Tensor, qx: Inputs, second_order: bool) -> Tensor:
        """One task's query outputs at ϕ_K: the body runs on the support set for the prototypes and at every inner
        step, then on support and query (any inner loop, body entries included)."""
        phi = prototype_init(learner, learner.params, sx, sy, *self.head_of(learner))  # s per task: each backward frees its graph
        for k in range(self.inner_steps):
            phi = inner_step(learner, phi, sx, sy, second_order=True, step=k)[0] if second_order else _first_order_step(learner, phi, sx, sy, k)
        return learner.predict_query(phi, sx, qx)

    def _one_pass_query(self, learner: Learner, sx: Inputs, sy: Tensor, qx: Inputs, second_order: bool) -> Tensor:
        """One task's query outputs at ϕ_K when the inner loop adapts the head alone (:func:`head_adapts_alone`): ONE
        body pass over support and query together (normalisation statistics of the support set: ``ref``), whose
        support features give the prototypes and every inner step of the head, and whose query features the logits.
        Differentiable to the body entries of θ (through prototypes, inner gradients and query features) and to s."""
        n = inputs_len(sx)
        feats = learner.features(learner.params, cat_inputs([sx, qx]), ref=n)
        support = feats[:n]
        head = prototype_head_params(learner, learner.params, support, sy, *self.head_of(learner))
        for k in range(self.inner_steps):
            head = head_step(learner, head, support, sy, True, k)[0] if second_order else _first_order_head_step(learner, head, support, sy, k)
        return learner.head_forward(head, feats[n:])

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        """Per task: ϕ_K from the prototype head, the query loss at ϕ_K, its backward / B. The body runs once per task
        when the inner loop adapts the head alone, else once per inner step as well."""
        b = len(batch)
        second_order = not self.config.first_order
        query = self._one_pass_query if head_adapts_alone(learner) else self._query
        total_loss = total_metric = 0.0
        for i in range(b):
            sx, sy, qx, qy = batch.task(i)
            out = query(learner, sx, sy, qx, second_order)
            loss = learner.loss(out, qy)
            (loss / b).backward()
            total_loss += float(loss.detach())
            total_metric += learner.metric(out.detach(), qy)
        return {"loss": total_loss / b, "metric": total_metric / b}

    def select_on_validation(self, learner: Learner, pool: Any, shots: int, seed: int) -> dict[str, Any]:
        """Refit s of a cosine head (``calibrate``) on the validation ``pool`` after training: every class with
        more than ``shots`` examples at once, ``shots`` support examples each and the rest as queries,
        ``calibration_draws`` seeded draws pooled (the centroid's fit); s minimises the queries' mean NLL.
        Sets ``config.fitted_temperature``; returns it with the NLL and ECE at the trained s and at the
        refit one ({} for a Euclidean head, ``calibrate`` off, or nothing to fit on)."""
        cfg = self.config
        if cfg.test_head == "probe":  # C and s of the probe head, chosen as --algo probe chooses them
            self.config, choice = select_probe_head(cfg, learner, pool, shots, seed)
            return choice
        classes = [c for c in range(pool.num_classes) if pool.count(c) > shots]
        if not (cfg.cosine and cfg.calibrate) or len(classes) < 2:
            return {}
        z, y = validation_logits(learner, pool, classes, shots, seed, cfg.calibration_draws, True)
        trained = float(torch.as_tensor(temperature(learner, cfg.temperature)).detach())
        s = fit_temperature(z, y)
        self.config = dataclasses.replace(cfg, fitted_temperature=s)
        return {
            "fitted_temperature": s,
            "trained_temperature": trained,
            "validation_nll": {"trained": scaled_nll(z, y, math.log(trained)), "fitted": scaled_nll(z, y, math.log(s))},
            "validation_ece": {"trained": validation_ece(z, y, trained), "fitted": validation_ece(z, y, s)},
            "classes": len(classes),
            "shots": shots,
            "draws": cfg.calibration_draws,
        }

    def adaptable_head(self, learner: Learner, steps: int) -> HeadAdaptation:
        """``adapt`` as data (export --adaptable): the starting head (prototypes at s, or the probe at C times s),
        then ``steps`` head steps with the learned α of each. Refused when the inner loop adapts the body too."""
        if not head_adapts_alone(learner):
            raise NotAdaptable("its inner loop adapts the body too (meta-train with --adapt head; the body may still train in the outer loop)")
        alphas = head_alphas(learner, steps)
        if self.config.test_head == "probe":
            return probe_adaptation(self.config, alphas)
        cosine, s = self.head_of(learner)
        return HeadAdaptation("prototype", cosine=cosine, scale=float(torch.as_tensor(s).detach()), alphas=alphas)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        """θ with the starting head (step 0), then ``steps`` first-order inner steps from it (detached). The
        starting head is the prototype head, or with ``test_head = "probe"`` the logistic regression fitted to
        the support features (C and s chosen on the validation classes): on a body the outer loop trained, at
        10 texts per intent the prototypes leave accuracy that a fitted linear head recovers."""
        if self.config.test_head == "probe":
            start = probe_head_start(self.config, learner, x, y)
        else:
            with torch.no_grad():
                theta = {k: v.detach() for k, v in learner.params.items()}
                start = prototype_init(learner.replace(precision="fp32"), theta, x, y, *self.head_of(learner))
        return adapt_trajectory(learner.replace(params=start), x, y, steps)
