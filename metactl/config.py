"""Typed, frozen configuration; TOML load, merge and validation.

Precedence: built-in defaults < ``--config FILE.toml`` < command-line flags.
Every problem in a config is reported at once, in one error.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from metactl.errors import MetactlError

# --protocol: Omniglot's splits (omniglot:DIR), then the intents protocols (intents:DIR, see metactl.data.text)
PROTOCOLS = ("lake", "vinyals", "domains", "unseen-clinc150", "unseen-banking77", "unseen-hwu64")
EPISODE_CLASSES = ("random", "nearest", "domain")  # --episode-classes: how a text training episode's classes are chosen


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``metactl meta-train`` needs; recorded in the run's ``metactl.json``."""

    algo: str = "maml"  # algorithm name in the metactl.algorithms entry-point group
    data: str = "glyphs"  # glyphs | sinusoid | folder | .zip | omniglot:DIR
    protocol: str = "lake"  # omniglot:DIR: lake | vinyals; intents:DIR: domains | unseen-clinc150 | unseen-banking77 | unseen-hwu64
    ways: int = 5  # N classes per episode (ignored for sinusoid)
    shots: int = 1  # K support examples per class (sinusoid: K points)
    query_shots: int = 15  # queries per class (sinusoid: query points)
    inner_steps: int = 1  # inner gradient steps during meta-training
    test_inner_steps: int = 3  # inner steps used by validation, adapt and evaluate
    inner_lr: float = 0.4  # initial per-layer inner learning rate alpha
    learn_inner_lr: bool = True  # learn alpha in the outer loop (per layer, Meta-SGD/MAML++ style)
    meta_batch: int = 32  # tasks per outer step
    meta_lr: float = 1e-3  # Adam learning rate of the outer loop
    steps: int = 100  # outer steps (the time budget may stop earlier)
    seed: int = 0
    device: str = "cpu"  # cpu | cuda
    time_budget: float | None = None  # minutes; stop cleanly and save when spent
    eval_every: int = 50  # validate every N steps; 0 disables validation during training
    eval_episodes: int = 100  # validation episodes per evaluation
    checkpoint_every: int = 25  # write a resumable checkpoint every N steps
    snapshot_every: int = 0  # keep θ every N steps in RUN/snapshots/step-NNNNNNN/ (each a run `metactl evaluate` reads); 0 = off
    max_bad_steps: int = 10  # stop after this many non-finite meta-steps in a row (each is skipped)
    rotations: bool = False  # add 90/180/270 degree rotations as new classes (image data)
    val_classes: float = 0.1  # fraction of classes (folder/zip data) held out for validation
    width: int = 64  # Conv-4 filters per layer / MLP hidden width
    image_size: int = 0  # image side in pixels; 0 = automatic: 28 for grayscale data, 84 for color folders (three channels)
    threads: int | None = None  # torch intra-op threads; None = all cores
    task_threads: int = 0  # split the meta-batch over N threads (threads/N intra-op each); 0 = auto (CPU: one per thread), 1 = off
    precision: str = "fp32"  # fp32 | bf16 (autocast of the model's forward passes; θ, α and the optimizer stay fp32)
    checkpoint_inner: bool = False  # recompute each inner step's activations in the backward pass (memory flat in inner steps)
    backbone: str | None = None  # a pretrained body: a Hugging Face folder or hub id org/name[@revision] (text), or a metactl run dir (images)
    adapt: str = "auto"  # what the inner loop adapts: head | lora | all; auto = head on a --backbone, all without one
    lora_rank: int = 8  # rank of the LoRA adapters (--adapt lora)
    train_body: bool = False  # let the outer loop update the pretrained body too (inner learning rate 0)
    body_lr: float | None = None  # outer learning rate of the pretrained body's weights (--train-body); None = meta_lr
    max_length: int = 64  # text: tokens per example (longer texts are truncated; recorded)
    # guards of the outer loop (issue 25): the best θ on validation kept, body warmup, L2-SP, clipping; label names
    keep_best: bool = True  # the θ (α, extras) that scored best on validation becomes the run's θ (RUN/best/ while training)
    val_all_classes: bool = False  # text: validate on every validation class at once (eval_episodes draws), not ways-way episodes
    body_warmup: int = 0  # outer steps of linear warmup of the trained body's learning rate (--train-body); 0 = none
    body_l2sp: float = 0.0  # L2-SP: add λ(θ_body − θ_body⁰) to the body's outer gradient (a pull toward the pretrained weights)
    clip_grad: float | None = None  # clip the outer gradient's global norm (θ, α, extras) to this; None = no clipping
    label_names: bool = False  # text: each class's readable name is one more support example (meta-train; adapt's default)
    # fast body training (issue 25): only the top K layers train, the lower ones' hidden states cached once per text
    train_layers: int | None = None  # --train-layers K: train the top K transformer layers of the text body (implies train_body); None = all
    # harder many-way episodes (issue 25): each training episode's classes chosen by similarity or within a domain
    episode_classes: str = "random"  # text: random | nearest (an intent + its nearest by class centroid) | domain (one domain's intents)
    algo_options: dict[str, Any] = field(default_factory=dict)  # the algorithm's own Config keys

    def __post_init__(self) -> None:
        if self.adapt == "auto":  # recorded resolved, so a run says what it adapted
            object.__setattr__(self, "adapt", "head" if self.backbone else "all")
        if self.train_layers is not None:  # the top K layers train in the outer loop: recorded as train_body too
            object.__setattr__(self, "train_body", True)
        problems = validate(dataclasses.asdict(self))
        if problems:
            raise MetactlError(
                "Invalid configuration: " + "; ".join(problems) + ".",
                "Fix these values (flags or --config file) and run again.",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(values: dict[str, Any]) -> list[str]:
    """Problems with the values (defaults filled in for missing keys); empty when all is well."""
    cfg = SimpleNamespace(**{**_DEFAULTS, **values})
    p: list[str] = []
    if cfg.train_layers is not None:  # --train-layers implies --train-body
        cfg.train_body = True
        if cfg.train_layers < 1:
            p.append(f"train-layers must be >= 1 (got {cfg.train_layers})")
        if not cfg.backbone:
            p.append("train-layers trains the top layers of a pretrained text body (--backbone)")
        elif cfg.adapt not in ("head", "auto"):
            p.append(f"train-layers trains the top layers under a head-adapting inner loop (--adapt head), not --adapt {cfg.adapt}")

    def positive(name: str) -> None:
        value = getattr(cfg, name)
        if value <= 0:
            p.append(f"{name.replace('_', '-')} must be > 0 (got {value})")

    for name in ("shots", "query_shots", "meta_batch", "steps", "width", "eval_episodes", "meta_lr", "max_bad_steps"):
        positive(name)
    if cfg.ways < 2:
        p.append(f"ways must be >= 2 (got {cfg.ways})")
    for name in ("inner_steps", "test_inner_steps", "eval_every", "snapshot_every"):
        if getattr(cfg, name) < 0:
            p.append(f"{name.replace('_', '-')} must be >= 0 (got {getattr(cfg, name)})")
    if cfg.inner_lr < 0:
        p.append(f"inner-lr must be >= 0 (got {cfg.inner_lr})")
    if cfg.checkpoint_every < 1:
        p.append(f"checkpoint-every must be >= 1 (got {cfg.checkpoint_every})")
    if cfg.time_budget is not None and cfg.time_budget <= 0:
        p.append(f"time-budget must be > 0 minutes (got {cfg.time_budget})")
    if not 0 < cfg.val_classes < 1:
        p.append(f"val-classes must be a fraction in (0, 1) (got {cfg.val_classes})")
    if cfg.device not in ("cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        p.append(f"device must be 'cpu' or 'cuda' (got {cfg.device!r})")
    if cfg.task_threads < 0:
        p.append(f"task-threads must be >= 0 (got {cfg.task_threads})")
    if cfg.threads is not None and cfg.threads < 1:
        p.append(f"threads must be >= 1 (got {cfg.threads})")
    if not isinstance(cfg.algo_options, dict):
        p.append("algo-options must be a table")
    if cfg.precision not in ("fp32", "bf16"):
        p.append(f"precision must be 'fp32' or 'bf16' (got {cfg.precision!r})")
    if cfg.episode_classes not in EPISODE_CLASSES:
        p.append(f"episode-classes must be one of {', '.join(EPISODE_CLASSES)} (got {cfg.episode_classes!r})")
    if cfg.protocol not in PROTOCOLS:
        p.append(f"protocol must be one of {', '.join(PROTOCOLS)} (got {cfg.protocol!r})")
    if cfg.adapt not in ("head", "lora", "all", "auto"):
        p.append(f"adapt must be 'head', 'lora' or 'all' (got {cfg.adapt!r})")
    if cfg.lora_rank < 1:
        p.append(f"lora-rank must be >= 1 (got {cfg.lora_rank})")
    if cfg.body_lr is not None and cfg.body_lr <= 0:
        p.append(f"body-lr must be > 0 (got {cfg.body_lr})")
    if cfg.body_lr is not None and not cfg.train_body:
        p.append("body-lr applies to a body the outer loop trains (--train-body)")
    if cfg.body_warmup < 0 or cfg.body_l2sp < 0:
        p.append(f"body-warmup and body-l2sp must be >= 0 (got {cfg.body_warmup}, {cfg.body_l2sp})")
    if (cfg.body_warmup > 0 or cfg.body_l2sp > 0) and not cfg.train_body:
        p.append("body-warmup and body-l2sp apply to a body the outer loop trains (--train-body)")
    if cfg.clip_grad is not None and not cfg.clip_grad > 0:
        p.append(f"clip-grad must be > 0 (got {cfg.clip_grad})")
    if cfg.max_length < 2:
        p.append(f"max-length must be >= 2 tokens (got {cfg.max_length})")
    if cfg.adapt not in ("all", "auto") and not cfg.backbone:
        p.append(f"adapt {cfg.adapt!r} needs a pretrained body (--backbone)")
    if cfg.backbone is not None and not str(cfg.backbone).strip():
        p.append("backbone must be a folder, a run dir or a Hugging Face id org/name[@revision]")
    if cfg.data == "sinusoid" and cfg.rotations:
        p.append("rotations apply to image data, not to sinusoid")
    if cfg.image_size != 0 and cfg.image_size < 16:
        p.append(f"image-size must be 0 (automatic) or >= 16, what Conv-4's four 2x poolings need (got {cfg.image_size})")
    if cfg.data == "sinusoid" and cfg.image_size:
        p.append("image-size applies to image data, not to sinusoid")
    return p


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_DEFAULTS = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default) for f in fields(TrainConfig)}


def _expected_type(name: str) -> tuple[type, ...]:
    default = TrainConfig.__dataclass_fields__[name].default
    if name in ("time_budget", "body_lr", "clip_grad"):
        return (int, float)
    if name == "backbone":
        return (str,)
    if name in ("threads", "train_layers"):
        return (int,)
    if name == "algo_options":
        return (dict,)
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (int, float)
    return (type(default),)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file; keys may use dashes or underscores, as the flags do.

    Unknown keys, wrong types and invalid values are all reported in one error.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetactlError(f"Config file not found: {path}.", "Check the path given to --config.") from None
    except IsADirectoryError:
        raise MetactlError(f"--config {path} is a directory.", "Pass a .toml file.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MetactlError(f"Config file {path} is not valid TOML: {exc}.", "Fix the syntax.") from None
    return check_keys(raw, str(path))


def _check(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    out, problems = check_types(raw)
    return out, problems + validate(out)


def check_types(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Keys normalised (dashes -> underscores) and checked for name and type, not yet for value:
    (the values, every problem)."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            problems.append(f"unknown key {key!r}")
            continue
        types = _expected_type(name)
        if isinstance(value, bool) and bool not in types:
            problems.append(f"{key} must be {types[0].__name__}, got a boolean")
            continue
        if not isinstance(value, types):
            problems.append(f"{key} must be {types[0].__name__}, got {type(value).__name__} {value!r}")
            continue
        out[name] = float(value) if float in types and not isinstance(value, bool) else value
    return out, problems


def check_keys(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Normalise keys and check names, types and values; every problem reported at once."""
    out, problems = _check(raw)
    if problems:
        known = ", ".join(sorted(k.replace("_", "-") for k in _FIELDS))
        raise MetactlError(f"Config {source}: " + "; ".join(problems) + ".", f"Known keys: {known}.")
    return out


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainConfig:
    """Defaults < file < flags (flags given as None are 'not set')."""
    merged = dict(file_values)
    merged.update({k: v for k, v in flag_values.items() if v is not None})
    return TrainConfig(**merged)


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``metactl evaluate`` scores runs on, declared once: the command's flags, the Python API's
    keywords (:func:`metactl.evaluate`) and :func:`metactl.evaluate.evaluate_runs` all take these names.
    ``None`` means the run's own value (its data, protocol, N, K, test inner steps)."""

    data: str | None = None  # --data SPEC; None: the run's held-out classes
    protocol: str | None = None  # the test split's protocol (see PROTOCOLS)
    ways: int | None = None  # N
    shots: int | None = None  # K support examples per class
    query_shots: int = 15  # queries per class
    episodes: int = 600  # episodes (the same for every run); --all-classes: draws
    steps: int | None = None  # inner steps; None: the run's test_inner_steps
    seed: int = 0  # the episodes' seed
    split: str = "test"  # test: the held-out classes | val: the run's validation classes
    inner_lr: float | None = None  # fine-tune at this one rate instead of the run's α
    all_classes: bool = False  # every held-out class in each episode (text data)
    by_domain: bool = False  # --protocol domains: each episode is every intent of one test domain
    label_names: bool | None = None  # --all-classes, text: each class's readable name is one more support text; None: as the run trained
    device: str = "cpu"  # cpu | cuda

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise MetactlError(f"--episodes must be >= 1 (got {self.episodes}).", "Pass a positive number.")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise MetactlError(f"--protocol {self.protocol}: unknown.", f"Use one of: {', '.join(PROTOCOLS)}.")
        if self.label_names and not self.all_classes:
            raise MetactlError("--label-names adds each intent's name to the support of --all-classes draws.", "Add --all-classes, or drop --label-names.")
        if self.inner_lr is not None and not self.inner_lr > 0:
            raise MetactlError(f"--inner-lr must be > 0 (got {self.inner_lr}).", "Pass a positive learning rate.")
        if self.all_classes and self.by_domain:
            raise MetactlError("--all-classes and --by-domain are two different settings.", "Pass one of them.")
        if (self.all_classes or self.by_domain) and self.ways is not None:
            flag = "--all-classes" if self.all_classes else "--by-domain"
            raise MetactlError(f"{flag} sets the number of classes itself (got --ways {self.ways}).", "Drop --ways.")

    @property
    def setting(self) -> str:
        """episodes | all-classes | by-domain."""
        return "all-classes" if self.all_classes else "by-domain" if self.by_domain else "episodes"
