"""Linear probe: L2-regularised logistic regression on the body's features (no meta-training).

The standard frozen-encoder baseline: the head is fitted to the support examples' features f(x) at θ
by minimising (1/n) Σ cross-entropy + (λ/2)‖W‖² (the bias unregularised) with L-BFGS from a zero head,
which for this convex objective reaches its unique optimum. ``c`` is scikit-learn's C, λ = 1/(C·n).

C is the probe's one setting, and what suits unit-norm sentence features (C ≈ 10) is far from
scikit-learn's default of 1. So by default (``c`` unset) the run chooses it: after training the trainer
calls :meth:`LinearProbe.select_on_validation` with the run's validation classes (never its test
classes), which fits the probe for each C of ``c_grid`` on ``--shots`` support examples of every
validation class at once, scores it on those classes' other examples, averages over ``c_draws`` seeded
draws and keeps the best C. A logistic regression fitted to 5 examples per class is far from calibrated
(its top probability is ~0.1 where it is right 80 % of the time), so the same draws then fit a temperature
s that multiplies its logits (minimising the validation queries' NLL, as the centroid fits its s): the
probabilities can be thresholded, the predictions do not change. The choices and the accuracy of every C
are recorded in the run (``metactl.json``: ``algorithm.config.c``, ``algorithm.config.temperature`` and
``algorithm.selection``); ``adapt``, ``evaluate`` and ``export`` of the run use them (the exported head
carries s). A ``c`` or ``temperature`` given in ``algo_options`` is used as is.

Usage::

    metactl meta-train --algo probe --backbone DIR --adapt head --data intents:DIR --steps 1
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metactl.adapt_spec import HeadAdaptation
from metactl.api import AlgorithmBase, Inputs, Learner, Params, TaskBatch, cat_inputs, inputs_len, map_inputs
from metactl.data.episodes import EpisodeBatch
from metactl.data.tensors import to_batch
from metactl.heads import closed_form_adaptation, fit_temperature, fitted_head, fitted_head_metrics, scaled_nll

C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
FALLBACK_C = 1.0  # scikit-learn's default: a run that could not choose (no validation classes), or a snapshot taken before the choice
VALIDATION_STREAM = 3  # the random stream of the choice's draws (0: training, 1: evaluation episodes, 2: --all-classes draws)
QUERY_CHUNK = 256
GRAD_TOLERANCE = 1e-9  # fit_logistic stops when no entry of the objective's gradient is larger
MAX_ROUNDS = 50  # L-BFGS rounds of max_iter iterations fit_logistic may take to get there  # validation queries whose features are computed at once


@dataclass(frozen=True)
class ProbeConfig:
    c: float | None = None  # inverse regularisation strength (scikit-learn's C); None: chosen on the validation classes from c_grid
    c_grid: tuple[float, ...] = C_GRID  # the Cs tried when c is None
    c_draws: int = 3  # seeded draws of the all-validation-classes task the choice averages over
    max_iter: int = 100  # L-BFGS iterations per round (fit_logistic runs rounds until the gradient is ≤ GRAD_TOLERANCE)
    temperature: float | None = None  # s multiplying the fitted head's logits; None: fitted on the validation classes (1 without any)

    def __post_init__(self) -> None:
        object.__setattr__(self, "c_grid", tuple(float(c) for c in self.c_grid))  # a TOML list, or metactl.json's
        if (self.c is not None and self.c <= 0) or self.max_iter < 1 or self.c_draws < 1:
            raise ValueError("c must be > 0, max_iter >= 1 and c_draws >= 1")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ValueError("c_grid must hold at least one C, each > 0")


def fit_logistic(feats: Tensor, y: Tensor, num_classes: int, c: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """(weight, bias) minimising mean cross-entropy + ‖W‖² / (2 C n) on ``feats``: float64 L-BFGS in rounds of
    ``max_iter`` iterations until the gradient's largest entry is at most :data:`GRAD_TOLERANCE` (at most
    :data:`MAX_ROUNDS` rounds). A stop on a small change of the loss alone would leave a weakly regularised
    probe (large C, separable features) far from its optimum; the adaptable export's graph
    (:mod:`metactl.adapt_probe`) reaches the same optimum."""
    f = feats.detach().double()
    n = f.shape[0]
    w = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=GRAD_TOLERANCE / 10, tolerance_change=1e-16, history_size=100, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(F.linear(f, w, b), y) + w.pow(2).sum() / (2 * c * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        for _ in range(MAX_ROUNDS):
            opt.step(closure)
            closure()
            if max(float(w.grad.abs().max()), float(b.grad.abs().max())) <= GRAD_TOLERANCE:  # type: ignore[union-attr]
                break
    return w.detach(), b.detach()


def validation_picks(counts: Sequence[int], shots: int, seed: int, d: int) -> list[np.ndarray]:
    """Draw ``d`` of the choice: per class (``counts``: its examples), the sorted indices of its ``shots``
    support examples; the class's other examples are its queries. A function of the seed and ``d`` only."""
    rng = np.random.default_rng([seed, VALIDATION_STREAM, d])
    return [np.sort(rng.choice(n, size=shots, replace=False)) for n in counts]


def validation_draw(pool: Any, classes: Sequence[int], picks: Sequence[np.ndarray]) -> EpisodeBatch:
    """The all-classes task of ``picks`` on ``pool`` (a class pool): labels 0..len(classes)-1 in the order of ``classes``."""
    rest = [np.setdiff1d(np.arange(pool.count(c)), p) for c, p in zip(classes, picks, strict=True)]
    sx, qx = pool.take(list(zip(classes, picks, strict=True))), pool.take(list(zip(classes, rest, strict=True)))
    sy = np.concatenate([np.full(len(p), i) for i, p in enumerate(picks)]).astype(np.int64)
    qy = np.concatenate([np.full(len(r), i) for i, r in enumerate(rest)]).astype(np.int64)
    return EpisodeBatch(_one_task(sx), sy[None], _one_task(qx), qy[None])


def _one_task(x: Any) -> Any:
    """A pool's examples as a batch of one task (grayscale images (M, H, W) get their channel axis)."""
    if isinstance(x, dict):
        return {k: v[None] for k, v in x.items()}
    return x[None, :, None] if x.ndim == 3 else x[None]


def _draw_features(learner: Learner, theta: Params, sx: Inputs, qx: Inputs) -> tuple[Tensor, Tensor]:
    """Support and query features at θ, queries normalised with the support's statistics, ``QUERY_CHUNK`` at a time."""
    n, m = inputs_len(sx), inputs_len(qx)
    with torch.no_grad():
        sf = learner.features(theta, sx, ref=n)
        chunks = [map_inputs(lambda t, lo=lo: t[lo : lo + QUERY_CHUNK], qx) for lo in range(0, m, QUERY_CHUNK)]
        qf = torch.cat([learner.features(theta, cat_inputs([sx, q]), ref=n)[n:] for q in chunks])
    return sf, qf


def validation_logits(feats: tuple[Tensor, Tensor, Tensor, Tensor], num_classes: int, c: float, max_iter: int) -> Tensor:
    """Query logits (float64, s = 1) of the probe fitted at ``c`` on one draw's (support features, labels, query features, labels)."""
    sf, sy, qf, _ = feats
    w, b = fit_logistic(sf, sy, num_classes, c, max_iter)
    return F.linear(qf.double(), w, b)


class LinearProbe(AlgorithmBase):
    """Baseline: logistic regression on the body's features (no meta-training), its C chosen on validation classes."""

    name: ClassVar[str] = "probe"
    description: ClassVar[str] = "Baseline: logistic regression (linear probe) on the (frozen) body's features, C chosen on validation, no meta-training"
    Config: ClassVar[type] = ProbeConfig
    meta_learns: ClassVar[bool] = False
    task_parallel: ClassVar[bool] = True

    def __init__(self, config: ProbeConfig, train: Any) -> None:
        super().__init__(config, train)

    @property
    def c(self) -> float:
        """The C in use: the given or chosen one, else :data:`FALLBACK_C`."""
        return self.config.c if self.config.c is not None else FALLBACK_C

    @property
    def temperature(self) -> float:
        """The s in use: the given or fitted one, else 1."""
        return self.config.temperature if self.config.temperature is not None else 1.0

    def _head(self, learner: Learner, params: Params, x: Inputs, y: Tensor) -> Params:
        c, s = self.c, self.temperature

        def fit(f: Tensor, t: Tensor, n: int) -> tuple[Tensor, Tensor]:
            w, b = fit_logistic(f, t, n, c, self.config.max_iter)
            return s * w, s * b

        return fitted_head(learner, params, x, y, fit)

    def meta_gradient(self, learner: Learner, batch: TaskBatch) -> dict[str, float]:
        """The query loss and accuracy of the fitted probe (logged); no gradient: nothing is meta-learned."""
        return fitted_head_metrics(learner, batch, self._head)

    def adapt(self, learner: Learner, x: Inputs, y: Tensor, steps: int) -> list[Params]:
        """θ (step 0), then θ with the fitted probe for every step 1..steps (L-BFGS runs to convergence once)."""
        theta = {k: v.detach() for k, v in learner.params.items()}
        fitted = self._head(learner, theta, x, y)
        return [dict(theta)] + [dict(fitted) for _ in range(steps)]

    def adaptable_head(self, learner: Learner, steps: int) -> HeadAdaptation:
        """The probe at C, times s (θ's head at 0 steps), as ``adapt`` fits it (export --adaptable)."""
        return closed_form_adaptation(learner, steps, HeadAdaptation("probe", probe_c=self.c, scale=self.temperature))

    def select_on_validation(self, learner: Learner, pool: Any, shots: int, seed: int) -> dict[str, Any]:
        """Choose C (when ``c`` is unset) and fit s (when ``temperature`` is unset) on the validation ``pool``:
        every class with more than ``shots`` examples at once, ``shots`` support examples each and the rest
        as queries, ``c_draws`` seeded draws; the best mean query accuracy wins (ties: the first in
        ``c_grid``), and s minimises the pooled queries' NLL at that C. Sets ``config.c`` and
        ``config.temperature``; returns the choices, each C's accuracy and the NLL at s = 1 and at s ({}
        when both were given or there is nothing to choose on)."""
        cfg = self.config
        classes = [c for c in range(pool.num_classes) if pool.count(c) > shots]
        if (cfg.c is not None and cfg.temperature is not None) or len(classes) < 2:
            return {}
        device = next(iter(learner.params.values())).device
        theta = {k: v.detach() for k, v in learner.params.items()}
        grid = cfg.c_grid if cfg.c is None else (cfg.c,)
        logits: list[list[Tensor]] = [[] for _ in grid]  # per C, each draw's query logits (one fit per C and draw)
        labels = []
        for d in range(cfg.c_draws):
            picks = validation_picks([pool.count(c) for c in classes], shots, seed, d)
            sx, sy, qx, qy = to_batch(validation_draw(pool, classes, picks), device).task(0)
            sf, qf = _draw_features(learner, theta, sx, qx)
            for per_c, c in zip(logits, grid, strict=True):
                per_c.append(validation_logits((sf, sy, qf, qy), len(classes), c, cfg.max_iter))
            labels.append(qy)
        scores = np.array([np.mean([float((z.argmax(-1) == y).double().mean()) for z, y in zip(per_c, labels, strict=True)]) for per_c in logits])
        i = int(np.argmax(scores))
        best, z, y = grid[i], torch.cat(logits[i]), torch.cat(labels)
        s = cfg.temperature if cfg.temperature is not None else fit_temperature(z, y)
        self.config = dataclasses.replace(cfg, c=best, temperature=s)
        return {
            "c": best,
            "validation_accuracy": {f"{c:g}": float(v) for c, v in zip(grid, scores, strict=True)},
            "temperature": s,
            "validation_nll": {"1": scaled_nll(z, y, 0.0), "fitted": scaled_nll(z, y, float(np.log(s)))},
            "classes": len(classes),
            "shots": shots,
            "draws": cfg.c_draws,
        }


# --- the probe as another algorithm's test-time head (protomaml, pretrain: ``test_head = "probe"``) ------------


def probe_head_start(config: Any, learner: Learner, x: Inputs, y: Tensor) -> Params:
    """θ with the probe at ``config.probe_c`` / ``config.probe_temperature`` fitted to the support (x, y) as its head."""
    with torch.no_grad():
        return LinearProbe(ProbeConfig(c=config.probe_c, temperature=config.probe_temperature), None).adapt(learner, x, y, 1)[-1]


def probe_adaptation(config: Any, alphas: tuple[tuple[np.ndarray, np.ndarray], ...]) -> HeadAdaptation:
    """The head ``probe_head_start`` fits (C and s of ``config.probe_c`` / ``config.probe_temperature``) followed by the
    steps of ``alphas``, as data for ``export --adaptable``."""
    probe = LinearProbe(ProbeConfig(c=config.probe_c, temperature=config.probe_temperature), None)
    return HeadAdaptation("probe", probe_c=probe.c, scale=probe.temperature, alphas=alphas)


def select_probe_head(config: Any, learner: Learner, pool: Any, shots: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """The probe head's C and s chosen on the validation ``pool`` exactly as ``--algo probe`` chooses them: ``config``
    with ``probe_c`` and ``probe_temperature`` set, and the choice to record (``c``, ``temperature`` as ``probe_*``)."""
    probe = LinearProbe(ProbeConfig(c=config.probe_c, temperature=config.probe_temperature), None)
    choice = probe.select_on_validation(learner, pool, shots, seed)
    chosen = dataclasses.replace(config, probe_c=probe.config.c, probe_temperature=probe.config.temperature)
    return chosen, {f"probe_{k}" if k in ("c", "temperature") else k: v for k, v in choice.items()}
