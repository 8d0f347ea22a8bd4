"""``meta-train``: the outer loop shared by every algorithm, as a recipe.

The algorithm computes the meta-gradient of a meta-batch (``Algorithm.meta_gradient``); this
module owns everything around it, in four parts a reader can take one at a time:

1. :func:`setup` — the output folder (new, ``--force`` or ``--resume``), the data, θ and α, the
   algorithm's set-up, the optimizer, the checkpoint to resume from, the run's metadata;
2. :func:`outer_step` — one meta-step: the meta-gradient, its all-reduce across workers
   (:func:`reduce_gradients`), the NaN/inf guard (:func:`gradients_finite`) and the update;
3. :func:`train_loop` — the loop and its periodic hooks (validation, metrics, snapshots,
   checkpoints), stopping at the step count, the time budget (:func:`budget_spent`), Ctrl-C or too
   many non-finite steps in a row;
4. :func:`finish` — the last checkpoint, θ, the final validation and the ``adapt_steps`` it
   chooses, and the swap of a ``--force`` run into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from metactl import contract, runs
from metactl._version import __version__
from metactl.api import Learner, SetupInfo
from metactl.backbones import resolve_backbone
from metactl.config import TrainConfig
from metactl.data import TaskData, open_data
from metactl.data.episodes import EpisodeBatch, prefetch, training_tasks
from metactl.data.tensors import to_batch
from metactl.distributed import World, init_from_env, shutdown
from metactl.errors import MetactlError
from metactl.evaluate import adaptation_curve, feature_fn, summarise
from metactl.loggers import MetricLogger, flat_params, scalars
from metactl.models import build_model
from metactl.perf import check_device, task_parallel_meta_gradient, task_workers, tune_malloc
from metactl.registry import build_algorithm
from metactl.results import TrainResult

TRAIN_STREAM = 0


@dataclass
class Reporter:
    """Callbacks the CLI fills in (rich progress); all optional."""

    message: Callable[[str], None] = lambda s: None
    start: Callable[[int, int], None] = lambda first, total: None
    step: Callable[[int, dict[str, float]], None] = lambda step, m: None
    load: Callable[[int, int], None] = lambda done, total: None


def default_run_dir(cfg: TrainConfig) -> Path:
    data = cfg.data if cfg.data in ("glyphs", "sinusoid") else Path(cfg.data.split(":", 1)[-1]).stem
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.algo}-{data}-{cfg.ways}w{cfg.shots}s-{stamp}"


def _prepare_out(out: Path, force: bool, resume: bool) -> Path:
    """Check ``--out`` and return the folder to write into.

    With ``--force`` over an existing run, training writes into a hidden ``.NAME.partial`` folder
    beside it, and the old run is replaced only when the new one is complete (``runs.replace_dir``).
    """
    if out.exists() and not out.is_dir():
        raise MetactlError(f"--out {out} exists and is not a directory.", "Choose another --out.")
    existing = out.is_dir() and any(out.iterdir())
    if resume:
        if not (out / runs.CHECKPOINT).is_file():
            raise MetactlError(f"--resume: no checkpoint in {out}.", "Pass --out of an interrupted run, or drop --resume.")
        return out
    if existing and not force:
        raise MetactlError(f"--out {out} already holds files.", "Pass --force to replace it, --resume to continue it, or choose another --out.")
    if existing:
        if not (out / runs.META).is_file():
            raise MetactlError(f"--out {out} is not a metactl run; refusing to replace it even with --force.", "Choose another --out.")
        work = out.parent / f".{out.name}.partial"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        return work
    out.mkdir(parents=True, exist_ok=True)
    return out


def init_learner(model_spec: dict[str, Any], cfg: TrainConfig, task: str, device: str, inner_lr_shape: str = "layer") -> Learner:
    """θ from the seed (the model's meta-learned parameters; its frozen ones stay out of θ), and
    α = ``inner_lr`` per parameter tensor ("layer"), per element ("element", Meta-SGD) or per
    parameter tensor and inner step ("step", MAML++ LSLR)."""
    torch.manual_seed(cfg.seed)
    return learner_for_model(build_model(model_spec), cfg, task, device, inner_lr_shape)


def learner_for_model(model: Any, cfg: TrainConfig, task: str, device: str, inner_lr_shape: str = "layer") -> Learner:
    """θ and α (as :func:`init_learner`) for a model already built. Parameters the model keeps for the
    outer loop only get α = 0, not learned."""
    model = model.to(device)
    learned, frozen = runs.split_model_parameters(model)
    outer_only = frozenset(model.outer_only_parameter_names())
    params = {k: v.detach().clone().requires_grad_(True) for k, v in learned.items()}
    if inner_lr_shape == "element":
        lr = {k: torch.full_like(v, float(cfg.inner_lr)).requires_grad_(cfg.learn_inner_lr) for k, v in params.items()}
    elif inner_lr_shape == "step":
        lr = {k: torch.full((max(1, cfg.inner_steps),), float(cfg.inner_lr), device=device).requires_grad_(cfg.learn_inner_lr) for k in params}
    else:
        lr = {k: torch.tensor(float(cfg.inner_lr), device=device, requires_grad=cfg.learn_inner_lr) for k in params}
    for k in outer_only:
        lr[k] = torch.zeros_like(lr[k]).requires_grad_(False)
    return Learner(
        model=model, params=params, inner_lr=lr, task=task, per_step_lr=inner_lr_shape == "step", precision=cfg.precision, frozen=frozen,
        outer_only=outer_only,
    )  # fmt: skip


def model_spec_for(data: TaskData, cfg: TrainConfig) -> dict[str, Any]:
    """The data's model, on the pretrained body ``--backbone`` names when it is a metactl run (an image
    body: all its θ but the head initialises the model; ``--adapt head`` freezes it). A text source
    builds its own spec on its Hugging Face backbone. Both ask :func:`resolve_backbone`."""
    spec = data.model_spec
    if not cfg.backbone or spec.get("kind") == "text-classifier":
        return spec
    found = resolve_backbone(cfg.backbone)
    if found.kind != "run":
        raise MetactlError(
            f"--backbone {cfg.backbone} is a pretrained text encoder, but --data {cfg.data} is not text.",
            "Use --data intents:DIR or text:FILE with it, or pass a metactl run dir as an image --backbone.",
        )
    meta = runs.read_meta(found.folder)
    if meta.get("kind") != "run":
        raise MetactlError(f"--backbone {cfg.backbone}: not a finished metactl run.", "Pass a run dir written by metactl meta-train.")
    body = meta["model"]
    if body.get("kind") != spec.get("kind") or any(body.get(k) != spec.get(k) for k in ("in_channels", "image_size")):
        raise MetactlError(
            f"--backbone {found.folder}: its model ({body.get('kind')}, {body.get('in_channels')}×{body.get('image_size')}) does not take this data's "
            f"inputs ({spec.get('kind')}, {spec.get('in_channels')}×{spec.get('image_size')}).",
            "Use a run trained on data of the same kind and size.",
        )
    if cfg.adapt == "lora":
        raise MetactlError("--adapt lora adds adapters to a transformer's projections; this backbone is a Conv-4.", "Use --adapt head or --adapt all.")
    return {
        **body, "num_classes": spec["num_classes"], "init_from": {"run": str(found.folder), "theta_sha256": found.sha256},
        "adapt": cfg.adapt, "train_body": cfg.train_body,
    }  # fmt: skip


def make_optimizer(algo: Any, learner: Learner, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The algorithm's outer optimizer (Adam by default) on θ, α (if learned) and its extra parameters.
    With ``body_lr`` (or ``body_warmup``), the pretrained body's weights (trained by the outer loop only) are a
    group of their own at that learning rate (else ``meta_lr``): a pretrained transformer is fine-tuned at a far
    smaller rate than a new head. With ``body_warmup`` the group records its ``initial_lr``, which
    :func:`warm_up_body` ramps to."""
    body = set(learner.outer_only) if cfg.body_lr is not None or cfg.body_warmup > 0 else set()
    groups: list[dict[str, Any]] = [{"params": [v for k, v in learner.params.items() if k not in body], "name": "theta"}]
    if body:
        groups.append({"params": [v for k, v in learner.params.items() if k in body], "name": "body", **({"lr": cfg.body_lr} if cfg.body_lr else {})})
    if cfg.learn_inner_lr:
        groups.append({"params": [a for a in learner.inner_lr.values() if a.requires_grad], "name": "inner_lr"})
    if learner.extra:
        groups.append({"params": list(learner.extra.values()), "name": "extra"})
    opt = algo.make_optimizer(groups, cfg)
    if cfg.body_warmup > 0:
        for group in opt.param_groups:
            if group.get("name") == "body":
                group.setdefault("initial_lr", group["lr"])
    return opt


def warm_up_body(opt: torch.optim.Optimizer, step: int, warmup: int) -> None:
    """The body group's learning rate for outer step ``step`` (0-based): ``initial_lr · min(1, (step + 1) / warmup)``."""
    if warmup <= 0:
        return
    for group in opt.param_groups:
        if group.get("name") == "body":
            group["lr"] = group["initial_lr"] * min(1.0, (step + 1) / warmup)


def guard_gradients(learner: Learner, cfg: TrainConfig, anchor: dict[str, torch.Tensor]) -> float | None:
    """The outer gradient's guards, in order: L2-SP (Li et al. 2018) adds ``body_l2sp · (θ − θ⁰)`` to the
    gradient of each trained body tensor (``anchor``: θ⁰, the pretrained weights), the gradient of
    ``λ/2·‖θ_body − θ_body⁰‖²``; then ``clip_grad`` clips the global norm of every gradient (θ, α, extras).
    Returns the norm before clipping (None without clipping)."""
    if cfg.body_l2sp > 0:
        with torch.no_grad():
            for name, start in anchor.items():
                p = learner.params[name]
                pull = cfg.body_l2sp * (p.detach() - start)
                p.grad = pull if p.grad is None else p.grad.add_(pull)
    if cfg.clip_grad is None:
        return None
    grads = [p for p in learner.parameters() if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(grads, cfg.clip_grad)) if grads else 0.0


def _save_checkpoint(out: Path, learner: Learner, opt: torch.optim.Optimizer, step: int, elapsed: float, bad: int) -> None:
    tensors = runs.join_theta(learner.params, learner.inner_lr)
    tensors.update({f"extra.{k}": v for k, v in learner.extra.items()})
    state = opt.state_dict()
    for i, s in state["state"].items():
        for key, value in s.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{i}.{key}"] = value
    runs.save_tensors(out / runs.CHECKPOINT, tensors, {"format": "metactl-checkpoint", "step": str(step)})
    runs.atomic_write_json(
        out / runs.CHECKPOINT_META,
        {
            "step": step,
            "elapsed_seconds": elapsed,
            "bad_steps_in_a_row": bad,
            "param_groups": state["param_groups"],
            "metactl_version": __version__,
        },
    )


def _save_theta(run: Path, learner: Learner) -> None:
    tensors = {**runs.join_theta(learner.params, learner.inner_lr), **runs.run_extras(learner.extra)}
    runs.save_tensors(run / runs.THETA, tensors, {"format": "metactl-theta", "metactl_version": __version__})


def _save_snapshot(out: Path, learner: Learner, meta: dict[str, Any], step: int, elapsed: float) -> None:
    """θ and α at this step as a small run of its own (``metactl evaluate`` / ``adapt`` read it).

    ``seconds`` is the training time so far: setup and any validation are not in it."""
    snap = out / runs.SNAPSHOTS / f"step-{step:07d}"
    snap.mkdir(parents=True, exist_ok=True)
    _save_theta(snap, learner)
    runs.atomic_write_json(snap / runs.META, {**meta, "status": "snapshot", "steps_done": step, "seconds": round(elapsed, 3)})


def _load_checkpoint(out: Path, learner: Learner, opt: torch.optim.Optimizer) -> tuple[int, float, int]:
    tensors = runs.load_tensors(out / runs.CHECKPOINT)
    try:
        meta = json.loads((out / runs.CHECKPOINT_META).read_text(encoding="utf-8"))
        runs.check_version(meta.get("metactl_version"), out / runs.CHECKPOINT_META)
        int(meta["step"]), meta["param_groups"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MetactlError(f"{out / runs.CHECKPOINT_META}: missing or damaged.", "The checkpoint cannot be resumed; start a new run.") from None
    theta, lr = runs.split_theta({k: v for k, v in tensors.items() if not k.startswith(("optimizer.", "extra."))})
    if set(theta) != set(learner.params) or any(theta[k].shape != learner.params[k].shape for k in theta):
        raise MetactlError(f"{out / runs.CHECKPOINT}: weights do not match this model.", "Resume with the same model settings the run was started with.")
    with torch.no_grad():
        for k, v in theta.items():
            learner.params[k].copy_(v)
        for k, v in lr.items():
            learner.inner_lr[k].copy_(v)
        for k, v in learner.extra.items():
            v.copy_(tensors[f"extra.{k}"])
    state: dict[str, Any] = {"state": {}, "param_groups": meta["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, i, name = key.split(".", 2)
            state["state"].setdefault(int(i), {})[name] = value
    opt.load_state_dict(state)
    return int(meta["step"]), float(meta["elapsed_seconds"]), int(meta.get("bad_steps_in_a_row", 0))


def _check_resume_config(out: Path, cfg: TrainConfig) -> None:
    old = runs.read_meta(out).get("config", {})
    keys = ("algo", "data", "ways", "shots", "query_shots", "inner_steps", "meta_batch", "seed", "width", "rotations")
    diff = [f"{k} ({old.get(k)!r} -> {getattr(cfg, k)!r})" for k in keys if k in old and old[k] != getattr(cfg, k)]
    if diff:
        raise MetactlError(f"--resume with settings that differ from the run in {out}: " + ", ".join(diff) + ".", "Resume with the run's own settings.")


BEST = "best"  # RUN/best/: the best-scoring θ so far (a run `metactl evaluate` reads) and every validation score
BEST_EXTRA = "extra.safetensors"  # RUN/best/'s copy of every extra parameter (resume restores them)


@dataclass
class BestTheta:
    """Every validation score of the run so far and, with ``keep_best``, a copy of the θ, α and extra
    parameters that scored best. A score is the best validation mean over inner steps 0..K (the step
    count ``adapt`` then chooses): the highest accuracy, or the lowest mean squared error."""

    higher: bool  # accuracy (True) or mean squared error (False)
    scores: list[dict[str, float]] = field(default_factory=list)  # {"step", "score"} per validation, in order
    step: int | None = None  # the best step so far
    score: float | None = None
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # params | inner_lr | extra -> copies

    def score_of(self, curve: list[dict[str, float]]) -> float:
        means = [c["mean"] for c in curve]
        return max(means) if self.higher else min(means)

    def better(self, score: float) -> bool:
        """Strictly better than every earlier score (ties keep the earlier step, as argmax does)."""
        return self.score is None or (score > self.score if self.higher else score < self.score)

    def record(self) -> dict[str, Any]:
        return {"step": self.step, "score": self.score, "scores": list(self.scores)}


@dataclass
class Session:
    """Everything one meta-training holds, from :func:`setup` to :func:`finish`."""

    cfg: TrainConfig
    algo: Any
    world: World
    report: Reporter
    device: str
    out: Path  # the folder being written (a hidden .partial folder under --force)
    replaces: str | None  # the run a --force run replaces when complete
    data: TaskData
    learner: Learner
    opt: torch.optim.Optimizer
    meta: dict[str, Any]
    step: int = 0
    bad: int = 0  # non-finite steps in a row
    skipped: int = 0
    elapsed_before: float = 0.0  # training seconds before a resume
    t0: float = 0.0
    val_seconds: float = 0.0  # validation inside the loop; snapshots report training time without it
    stopped_by: str = "steps"
    val_start: list[dict[str, float]] = field(default_factory=list)
    critical: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext  # θ's update and the step count, never cut in half
    loggers: list[MetricLogger] = field(default_factory=list)  # --log-to: rank 0 only, fed what metrics.jsonl gets
    anchor: dict[str, torch.Tensor] = field(default_factory=dict)  # θ_body⁰, the pretrained body L2-SP pulls toward
    val_sampler: Any = None  # what validation samples: data.val, or every validation class at once (--val-all-classes)
    best: BestTheta | None = None  # the validation scores so far and the best-scoring θ (--keep-best)

    @property
    def main(self) -> bool:
        return self.world.main

    @property
    def validate(self) -> bool:
        return self.data.val is not None and self.main

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def val_curve(self) -> list[dict[str, float]]:
        """The validation curve at the current θ: ``eval_episodes`` ways-way episodes, or with
        ``val_all_classes`` that many draws of every validation class at once, on a zero-initialised head
        of that many classes (as ``metactl evaluate --all-classes --split val`` and ``adapt`` start one)."""
        assert self.data.val is not None
        cfg, sampler, learner = self.cfg, self.val_sampler or self.data.val, self.learner
        n = int(getattr(sampler, "ways", cfg.ways))
        if learner.task == "classification" and n != cfg.ways:
            learner, _ = runs.with_head(learner, self.data.model_spec, n)
        return summarise(adaptation_curve(self.algo, learner, sampler, cfg.eval_episodes, cfg.test_inner_steps, cfg.seed, self.device))


def setup(
    cfg: TrainConfig,
    algo: Any,
    world: World,
    out: Path | None,
    force: bool,
    resume: bool,
    report: Reporter,
    log_to: Sequence[Callable[..., MetricLogger]] = (),
    command: str | None = None,
) -> Session:
    """Output folder, data, θ and α, the algorithm's set-up, optimizer, checkpoint, metadata and loggers."""
    device = cfg.device
    if world.size > 1:
        if cfg.meta_batch % world.size:
            raise MetactlError(f"--meta-batch {cfg.meta_batch} does not split evenly over {world.size} workers.", "Use a meta-batch divisible by --nproc.")
        if device == "cuda":
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    out = out or default_run_dir(cfg)
    replaces: str | None = None
    if resume:
        _prepare_out(out, force, resume)
        _check_resume_config(out, cfg)
        replaces = runs.read_meta(out).get("replaces")
    data = open_data(cfg, report.load)
    if cfg.label_names and (data.preprocessing or {}).get("kind") != "text":
        raise MetactlError(f"--label-names adds each class's name as a text example: text data only (--data {cfg.data}).", "Drop --label-names.")
    centroids = contract.hook(data.train, "precompute_centroids")
    if cfg.episode_classes != "random" and centroids is None:
        raise MetactlError(
            f"--episode-classes {cfg.episode_classes} chooses training episodes' intents: text data only (--data {cfg.data}).",
            "Drop --episode-classes, or use intents:DIR or text:PATH data.",
        )
    if not resume and world.main:
        work = _prepare_out(out, force, resume)
        replaces = str(out) if work != out else None
        out = work
    data.model_spec = model_spec_for(data, cfg)
    learner = init_learner(data.model_spec, cfg, data.kind, device, algo.inner_lr_shape)
    pool = getattr(data.train, "pool", None)
    algo.setup(learner, SetupInfo(train_classes=pool.num_classes if pool is not None else 0))
    precompute_body(data, learner, device, report, examples_seen(cfg))
    if cfg.episode_classes == "nearest":  # the starting body's centroid of each training class: episodes of near classes
        report.message("Computing the starting body's centroid of each training class once (--episode-classes nearest).")
        centroids(feature_fn(learner, device))
    opt = make_optimizer(algo, learner, cfg)
    s = Session(cfg, algo, world, report, device, out, replaces, data, learner, opt, meta={}, val_sampler=validation_sampler(data, cfg))
    if cfg.body_l2sp > 0:  # θ_body⁰: the pretrained weights, before any checkpoint is loaded
        s.anchor = {k: learner.params[k].detach().clone() for k in learner.outer_only}
    if resume:
        s.step, s.elapsed_before, s.bad = _load_checkpoint(out, learner, opt)
        if world.main:
            _truncate_metrics(out / runs.METRICS, s.step)
            report.message(f"Resuming {out} from step {s.step}.")
    world.broadcast_([t.data for t in learner.parameters()])
    s.meta = _run_meta(cfg, algo, data, world, command)
    if replaces:
        s.meta["replaces"] = replaces
    if world.main:
        runs.atomic_write_json(out / runs.META, s.meta)
        s.loggers = [factory(out, start_step=s.step) for factory in log_to]
        params = flat_params({"algorithm": cfg.algo, "task": data.kind, **cfg.to_dict(), "metactl_version": __version__})
        for logger in s.loggers:
            logger.log_params(params)
        if s.validate and cfg.eval_every > 0:
            s.best = BestTheta(higher=data.kind == "classification")
            if resume:
                _load_best(s)
        if s.validate and cfg.eval_every > 0 and s.step == 0:
            s.val_start = s.val_curve()
            record_validation(s, s.val_start)
    return s


def validation_sampler(data: TaskData, cfg: TrainConfig) -> Any:
    """What validation samples: the data's validation episodes, or with ``val_all_classes`` every
    validation class at once (:func:`metactl.data.text.all_classes_validation`; text data only)."""
    if not cfg.val_all_classes or data.val is None:
        return data.val
    if (data.preprocessing or {}).get("kind") != "text":
        raise MetactlError(f"--val-all-classes validates on every validation intent at once: text data only (--data {cfg.data}).", "Drop --val-all-classes.")
    from metactl.data.text import all_classes_validation

    return all_classes_validation(data.val, cfg.shots)


def hidden_fn(model: Any, device: str) -> Callable[[dict[str, Any]], Any]:
    """Padded token arrays -> the frozen lower layers' hidden states (n, L, D) as numpy (``--train-layers``)."""

    def fn(x: dict[str, Any]) -> Any:
        with torch.no_grad():
            ids, mask = (torch.from_numpy(x[k]).to(device) for k in ("input_ids", "attention_mask"))
            return model.lower_hidden(ids, mask).float().cpu().numpy()

    return fn


def examples_seen(cfg: TrainConfig) -> int:
    """At most how many examples the training steps run the body on (``--steps`` bounds a time-budgeted run)."""
    return cfg.steps * cfg.meta_batch * cfg.ways * (cfg.shots + cfg.query_shots)


def precompute_body(data: TaskData, learner: Learner, device: str, report: Reporter, seen: int | None = None) -> None:
    """What of the body never changes, computed once per example of the training and validation data: a
    frozen body's features (a head on a frozen body), or with ``--train-layers K`` the hidden states its
    frozen lower layers give (only the top K layers then run in each step). The training examples are
    skipped when the steps will run the body on fewer examples (``seen``) than there are (a baseline's
    ``--steps 1`` run on a dataset of 25,000 texts): the validation examples are always computed."""
    model = learner.model
    cached = data.model_spec.get("train_layers") is not None  # a text model with --train-layers K
    for sampler in (data.train, data.val):
        if sampler is None:
            continue
        pool = contract.hook(sampler, "pool")
        if sampler is data.train and seen is not None and pool is not None and seen < sum(pool.count(c) for c in range(pool.num_classes)):
            continue
        what = getattr(sampler, "what", "data")
        if model.features_fixed() and contract.hook(sampler, "precompute") is not None:
            report.message(f"Computing the frozen body's features of the {what} examples once.")
            sampler.precompute(feature_fn(learner, device))
        elif cached and contract.hook(sampler, "precompute_hidden") is not None:
            report.message(f"Computing the frozen lower {model.cached_layers()} layers' hidden states of the {what} examples once.")
            sampler.precompute_hidden(hidden_fn(model, device), model.body_tag())


def _run_meta(cfg: TrainConfig, algo: Any, data: TaskData, world: World, command: str | None = None) -> dict[str, Any]:
    """The run's ``metactl.json`` as training starts."""
    meta = {
        "metactl_version": __version__,
        "kind": "run",
        "algorithm": {"name": cfg.algo, "config": dataclasses.asdict(algo.config) if dataclasses.is_dataclass(algo.config) else {}},
        "config": cfg.to_dict(),
        "task": data.kind,
        "model": data.model_spec,
        "data": data.spec,
        "preprocessing": data.preprocessing,
        "split": data.split,
        "seed": cfg.seed,
        "budget": {"steps": cfg.steps, "time_budget_minutes": cfg.time_budget},
        "workers": world.size,
        "inner_lr_shape": algo.inner_lr_shape,
        "status": "running",
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    if command:
        meta["command"] = command  # the command line (or Python call) that made the run
    return meta


def reduce_gradients(world: World, learner: Learner, metrics: dict[str, float], device: str) -> dict[str, float]:
    """The mean meta-gradient (and logged loss and metric) over all workers, identical on every rank.
    A parameter a worker's tasks left without a gradient counts as zero there."""
    if world.size <= 1:
        return metrics
    for p in learner.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    stats = torch.tensor([metrics["loss"], metrics["metric"]], dtype=torch.float64, device=device)
    world.average_([p.grad for p in learner.parameters()] + [stats])
    return {"loss": float(stats[0]), "metric": float(stats[1])}


def gradients_finite(metrics: dict[str, float], learner: Learner) -> bool:
    """The NaN/inf guard: a step whose loss or any gradient is not finite is skipped."""
    return math.isfinite(metrics["loss"]) and all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in learner.parameters())


def outer_step(s: Session, episodes: EpisodeBatch, workers: int) -> dict[str, Any]:
    """One meta-step on ``episodes``; returns its metrics record (``skipped`` when non-finite)."""
    ts = time.perf_counter()
    s.opt.zero_grad(set_to_none=False)
    s.algo.begin_step(s.step, s.cfg.steps)
    metrics = task_parallel_meta_gradient(s.algo, s.learner, to_batch(episodes, s.device), workers)
    metrics = reduce_gradients(s.world, s.learner, metrics, s.device)
    finite = gradients_finite(metrics, s.learner)
    norm: float | None = None
    with s.critical():
        if finite:
            norm = guard_gradients(s.learner, s.cfg, s.anchor)
            warm_up_body(s.opt, s.step, s.cfg.body_warmup)
            s.opt.step()
            s.bad = 0
        else:
            s.skipped += 1
            s.bad += 1
        s.step += 1
    record: dict[str, Any] = {
        "step": s.step,
        "loss": metrics["loss"],
        "train_metric": metrics["metric"],
        "seconds": time.perf_counter() - ts,
        "elapsed": s.elapsed(),
    }
    if norm is not None:
        record["grad_norm"] = norm  # before clipping
    if s.cfg.body_warmup > 0:
        record["body_lr"] = next(g["lr"] for g in s.opt.param_groups if g.get("name") == "body")
    if not finite:
        record["skipped"] = True
    return record


def budget_spent(s: Session) -> bool:
    return s.cfg.time_budget is not None and s.cfg.time_budget > 0 and s.elapsed() >= s.cfg.time_budget * 60


def _after_step(s: Session, record: dict[str, Any]) -> None:
    """The periodic hooks: validation, the metrics line, snapshots and checkpoints."""
    cfg = s.cfg
    if s.validate and cfg.eval_every > 0 and s.step % cfg.eval_every == 0:
        tv = time.perf_counter()
        curve = s.val_curve()
        record["val"] = [c["mean"] for c in curve]
        record_validation(s, curve)
        s.val_seconds += time.perf_counter() - tv
    if s.main:
        runs.append_jsonl(s.out / runs.METRICS, record)
        if s.loggers:
            values = scalars(record, s.data.kind)
            for logger in s.loggers:
                logger.log_metrics(s.step, values)
        s.report.step(s.step, record)
    if s.bad >= cfg.max_bad_steps:
        return
    if s.main and cfg.snapshot_every and s.step % cfg.snapshot_every == 0:
        _save_snapshot(s.out, s.learner, s.meta, s.step, s.elapsed() - s.val_seconds)
    if s.main and s.step % cfg.checkpoint_every == 0:
        _save_checkpoint(s.out, s.learner, s.opt, s.step, s.elapsed(), s.bad)


def train_loop(s: Session) -> None:
    """Meta-steps until the step count, the time budget, Ctrl-C (checkpoint, then KeyboardInterrupt)
    or ``max_bad_steps`` non-finite steps in a row."""
    cfg = s.cfg
    s.t0 = time.perf_counter() - s.elapsed_before
    s.report.start(s.step, cfg.steps)
    mine = s.world.slice(cfg.meta_batch)
    workers = task_workers(cfg, s.algo, s.device, len(mine))
    ctrl_c = _DeferredInterrupt()
    s.critical = ctrl_c.critical
    batches: Iterator[EpisodeBatch] = prefetch(lambda k: training_tasks(s.data.train, cfg.seed, k, mine, TRAIN_STREAM), range(s.step, cfg.steps))
    try:
        for episodes in batches:
            # a safe point: Ctrl-C and the time budget take effect here, on every rank at the same step
            if s.world.any(budget_spent(s) or ctrl_c.is_set()):
                if s.world.any(ctrl_c.is_set()):
                    raise KeyboardInterrupt
                s.stopped_by = "time-budget"
                break
            record = outer_step(s, episodes, workers)
            _after_step(s, record)
            if s.bad >= cfg.max_bad_steps:
                s.stopped_by = "non-finite"
                break
    except KeyboardInterrupt:
        # Ctrl-C: keep what was learned, resumable with --resume, then exit 130 (the CLI does).
        if s.main:
            _save_checkpoint(s.out, s.learner, s.opt, s.step, s.elapsed(), s.bad)
            s.report.message(f"Interrupted at step {s.step}; checkpoint saved. Continue with: metactl meta-train --out {s.out} --resume")
        raise
    finally:
        batches.close()  # type: ignore[attr-defined]
        ctrl_c.restore()
        s.critical = contextlib.nullcontext


def finish(s: Session) -> TrainResult:
    """Last checkpoint and θ, final validation and ``adapt_steps``, the run's metadata, the --force swap."""
    cfg, seconds = s.cfg, s.elapsed()
    if not s.main:
        s.world.barrier()  # wait for rank 0 to finish writing, then leave together
        return TrainResult(Path(s.replaces or s.out), s.step, seconds, s.stopped_by, skipped_steps=s.skipped, config=cfg.to_dict())
    _save_checkpoint(s.out, s.learner, s.opt, s.step, seconds, s.bad)  # the last θ: --resume continues from it
    keep_best_theta(s)
    _save_theta(s.out, s.learner)
    meta = s.meta
    select_on_validation(s)  # before the final validation, which then scores the chosen setting
    val_curve = s.val_curve() if s.data.val is not None else []
    if val_curve:  # the step count 0..K that adapted best on validation classes: adapt's default
        after = [c["mean"] for c in val_curve]
        meta["adapt_steps"] = after.index(max(after) if s.data.kind == "classification" else min(after))
        meta["adapt_steps_ways"] = int(getattr(s.val_sampler, "ways", cfg.ways))  # the N it was chosen at (see metactl.adapt)
    meta.update(
        status="complete" if s.stopped_by != "non-finite" else "stopped-non-finite",
        finished=datetime.now().isoformat(timespec="seconds"),
        steps_done=s.step,
        seconds=round(seconds, 2),
        stopped_by=s.stopped_by,
        skipped_steps=s.skipped,
        validation={
            "episodes": cfg.eval_episodes,
            "inner_steps": cfg.test_inner_steps,
            "curve": val_curve,
            "setting": "all-classes" if cfg.val_all_classes else "episodes",
        },
    )
    out = s.out
    meta.pop("replaces", None)
    runs.atomic_write_json(out / runs.META, meta)
    close_loggers(s, meta["status"])
    if s.replaces:
        runs.replace_dir(out, Path(s.replaces))
        out = Path(s.replaces)
    s.world.barrier()
    if s.stopped_by == "non-finite":
        raise MetactlError(
            f"Training stopped: {cfg.max_bad_steps} meta-steps in a row had a non-finite loss or gradient (each was skipped). "
            f"The last good θ is saved in {out}.",
            f"Try a lower --meta-lr (now {cfg.meta_lr:g}) or --inner-lr (now {cfg.inner_lr:g}).",
        )
    return TrainResult.of_curve(
        out, s.step, seconds, s.stopped_by, val_curve, s.data.kind,
        validation_at_start=s.val_start,
        inner_lr={k: float(v.detach().mean()) for k, v in s.learner.inner_lr.items()},
        skipped_steps=s.skipped,
        config=cfg.to_dict(),
    )  # fmt: skip


def select_on_validation(s: Session) -> None:
    """The algorithm's choice of a setting on the run's validation classes (its optional hook
    ``select_on_validation``; the test classes are never opened), recorded in the run's metadata:
    the resolved config as ``algorithm.config``, the choice as ``algorithm.selection``."""
    select = contract.hook(s.algo, "select_on_validation")
    pool = contract.hook(s.data.val, "pool") if s.data.val is not None else None
    if select is None or pool is None:
        return
    tv = time.perf_counter()
    choice = select(s.learner, pool, s.cfg.shots, s.cfg.seed)
    if choice:
        algorithm = s.meta["algorithm"]
        algorithm["config"] = dataclasses.asdict(s.algo.config) if dataclasses.is_dataclass(s.algo.config) else {}
        algorithm["selection"] = {**choice, "seconds": round(time.perf_counter() - tv, 3)}
        shown = ", ".join(f"{k}={v}" for k, v in choice.items() if not isinstance(v, dict))
        s.report.message(f"Chosen on the validation classes: {shown}.")


def record_validation(s: Session, curve: list[dict[str, float]]) -> None:
    """Score the θ just validated (at step ``s.step``); with ``keep_best``, when it beats every earlier
    score, copy θ, α and the extras and write them to RUN/best/ (a folder swapped in whole), else only
    update the scores there."""
    b = s.best
    if b is None:
        return
    score = b.score_of(curve)
    b.scores.append({"step": s.step, "score": score})
    if not s.cfg.keep_best:
        return
    improved = b.better(score)
    if improved:
        groups = {"params": s.learner.params, "inner_lr": s.learner.inner_lr, "extra": s.learner.extra}
        b.step, b.score, b.tensors = s.step, score, {g: {k: v.detach().clone() for k, v in t.items()} for g, t in groups.items()}
    info = {**s.meta, "status": "best", "steps_done": b.step, "best": b.record()}
    folder = s.out / BEST
    if not improved and folder.is_dir():
        runs.atomic_write_json(folder / runs.META, info)
        return
    work = s.out / f".{BEST}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _save_theta(work, s.learner)
    if s.learner.extra:
        runs.save_tensors(work / BEST_EXTRA, s.learner.extra)
    runs.atomic_write_json(work / runs.META, info)
    runs.replace_dir(work, folder)


def _load_best(s: Session) -> None:
    """On --resume: the scores and best θ of RUN/best/ up to the checkpoint's step (a best found after
    the checkpoint was lost with the steps that made it, which run again)."""
    b, folder = s.best, s.out / BEST
    if b is None or not (folder / runs.META).is_file():
        return
    saved = runs.read_meta(folder).get("best") or {}
    b.scores = [x for x in saved.get("scores", []) if x["step"] <= s.step]
    if saved.get("step") is None or saved["step"] > s.step or not s.cfg.keep_best:
        return
    theta, lr = runs.split_theta(runs.load_tensors(folder / runs.THETA))
    extra = runs.load_tensors(folder / BEST_EXTRA) if (folder / BEST_EXTRA).is_file() else {}
    b.step, b.score, b.tensors = int(saved["step"]), float(saved["score"]), {"params": theta, "inner_lr": lr, "extra": extra}


def keep_best_theta(s: Session) -> None:
    """At the end of training: score the last θ if it was not validated, then, with ``keep_best``, put
    the best-scoring θ, α and extras back into the learner (the run's θ); record the choice and every
    score in the run's metadata (``best_theta``)."""
    b = s.best
    if b is None:
        return
    if not b.scores or b.scores[-1]["step"] != s.step:
        tv = time.perf_counter()
        record_validation(s, s.val_curve())
        s.val_seconds += time.perf_counter() - tv
    last = b.scores[-1]["score"]
    kept = s.step
    if s.cfg.keep_best and b.step is not None and b.step != s.step:
        groups = {"params": s.learner.params, "inner_lr": s.learner.inner_lr, "extra": s.learner.extra}
        with torch.no_grad():
            for g, tensors in groups.items():
                for k, v in tensors.items():
                    v.copy_(b.tensors[g][k])
        kept = b.step
        s.report.message(f"Keeping θ of step {b.step} (validation score {b.score:.4f}; the last step, {s.step}, scored {last:.4f}).")
    s.meta["best_theta"] = {
        "keep_best": s.cfg.keep_best, "step": kept, "score": next(x["score"] for x in reversed(b.scores) if x["step"] == kept),
        "metric": "accuracy" if b.higher else "mse", "setting": "all-classes" if s.cfg.val_all_classes else "episodes", "scores": b.scores,
    }  # fmt: skip


def close_loggers(s: Session, status: str) -> None:
    """Tell every logger the run ended (once), with the folder that holds its files."""
    done, s.loggers = s.loggers, []
    for logger in done:
        logger.finish(s.out, status)


def meta_train(
    cfg: TrainConfig,
    out: Path | None = None,
    force: bool = False,
    resume: bool = False,
    report: Reporter | None = None,
    log_to: Sequence[Callable[..., MetricLogger]] = (),
    command: str | None = None,
) -> TrainResult:
    """Meta-train as ``cfg`` says; returns where the run is and how it went. ``log_to``: logger
    factories (:func:`metactl.loggers.resolve`); ``command``: what made the run, recorded in it."""
    report = report or Reporter()
    tune_malloc()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    check_device(cfg.device)
    algo = build_algorithm(cfg.algo, cfg.algo_options, cfg)
    world = init_from_env(cfg.device)
    s: Session | None = None
    try:
        s = setup(cfg, algo, world, out, force, resume, report, log_to, command)
        train_loop(s)
        return finish(s)
    except BaseException as exc:
        if s is not None:
            close_loggers(s, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    finally:
        shutdown(world)


class _DeferredInterrupt:
    """The first Ctrl-C only sets a flag, so the step in flight completes (θ, optimizer state, step
    count and metrics stay consistent) and the loop stops at its next safe point; a second Ctrl-C
    interrupts at once — except inside :meth:`critical` (the optimizer's update of θ and the step
    count), which it lets finish first, so a checkpoint never holds a half-updated θ."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._critical = False
        self._pending = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self._flag.is_set():
            if self._critical:
                self._pending = True
                return
            raise KeyboardInterrupt
        self._flag.set()

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """A second Ctrl-C inside this block takes effect when the block ends."""
        self._critical = True
        try:
            yield
        finally:
            self._critical = False
            if self._pending:
                self._pending = False
                raise KeyboardInterrupt

    def is_set(self) -> bool:
        return self._flag.is_set()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    runs.atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode("utf-8"))


__all__ = ["Reporter", "Session", "TrainResult", "finish", "meta_train", "outer_step", "setup", "train_loop"]
