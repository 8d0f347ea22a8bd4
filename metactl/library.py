"""The Python API: what each command does, for notebooks and scripts (docs/python-api.md).

    import metactl

    run = metactl.meta_train(data="glyphs", steps=20, out="runs/x")
    adapted = metactl.adapt("shots", run=run.path, query="queries")
    exported = metactl.export(adapted.path, quantize="int8")

Keyword arguments are named like the command-line flags (``--from`` is ``run=`` for adapt, since ``from``
is a Python keyword; ``--from`` of export is its first argument, ``adapted``). A path may be a ``str``,
a :class:`~pathlib.Path` or the result of the previous step. Each function returns a frozen dataclass
with the folder it wrote (``.path``) and its figures. Every problem a user can cause raises
:class:`metactl.errors.MetactlError` (an unknown keyword too), never ``SystemExit``. The command line
(``metactl.cli``) parses its flags, calls these functions and prints their results.

``quiet=False`` shows rich progress (in a terminal and in Jupyter); ``command`` is what the run, the
adapted folder or the model card records as the command that made it (default: this call, written as
Python).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from metactl import adapt as adapt_module
from metactl import adaptable as adaptable_module
from metactl import evaluate as evaluate_module
from metactl import export as export_module
from metactl import loggers, runtime, runtime_adapt, train
from metactl import plot as plotting
from metactl import runs as rundirs
from metactl.config import EvaluateOptions, TrainConfig, check_types, load_toml, resolve
from metactl.data import check_split
from metactl.errors import MetactlError
from metactl.perf import check_device
from metactl.results import AdaptResult, ExportResult, TrainResult

console = Console()
F = TypeVar("F", bound=Callable[..., Any])
COMMAND_ENV = "METACTL_COMMAND"  # the command a worker of `meta-train --nproc` records (its own argv is internal)
TRAIN_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunCurve:
    """One run's adaptation curve on held-out episodes."""

    run: Path
    algorithm: str
    metric: str  # accuracy | mse
    ways: int | None
    episodes: int
    head: str  # meta-learned | zero-initialised (evaluated with another N than it trained with)
    steps: list[dict[str, float]]  # per inner step k: mean, ci95, median
    split: str = "test"  # test: held-out classes | val: the run's validation classes
    inner_lr: float | None = None  # the one fine-tuning rate that replaced the run's α, if any
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # setting, shots, queries, query_texts, seconds, per_episode

    @property
    def mean(self) -> list[float]:
        """The metric after k = 0, 1, ... inner steps."""
        return [s["mean"] for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "details"}
        return {**out, **self.details, "run": str(self.run)}


@dataclass(frozen=True)
class EvaluateResult:
    runs: list[RunCurve]
    episodes: int
    seed: int
    data: str | None
    protocol: str | None
    json: Path | None = None
    plot: Path | None = None
    split: str = "test"
    inner_lr: float | None = None
    setting: str = "episodes"  # episodes | all-classes | by-domain

    def to_dict(self) -> dict[str, Any]:
        """What ``--json FILE`` writes."""
        return {
            "episodes": self.episodes, "seed": self.seed, "data": self.data, "protocol": self.protocol,
            "split": self.split, "inner_lr": self.inner_lr, "setting": self.setting, "runs": [r.to_dict() for r in self.runs],
        }  # fmt: skip


# --- keyword checking and the recorded command -----------------------------------------------------


def _python_call(name: str, args: dict[str, Any]) -> str:
    shown = [f"{k}={(str(_path_of(v)) if isinstance(v, Path) or hasattr(v, 'path') else v)!r}" for k, v in args.items()]
    return f"metactl.{name}({', '.join(shown)})"


def api(fn: F) -> F:
    """An API function: an unknown or missing argument is a MetactlError naming the valid keywords, and
    ``command`` defaults to this call as Python (``metactl.adapt('shots', run='runs/x')``)."""
    sig = inspect.signature(fn)
    names = [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "command"]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as exc:
            extra = " and the meta-training settings " + ", ".join(TRAIN_OPTIONS) if fn.__name__ == "meta_train" else ""
            raise MetactlError(f"metactl.{fn.__name__}(): {exc}.", f"Valid keywords: {', '.join(names)}{extra}.") from None
        given = {k: v for k, v in bound.arguments.items() if k != "command"}
        given.update(given.pop("options", {}))
        if "command" in sig.parameters and bound.arguments.get("command") is None:
            bound.arguments["command"] = os.environ.get(COMMAND_ENV) or _python_call(fn.__name__, given)
        return fn(*bound.args, **bound.kwargs)

    return wrapper  # type: ignore[return-value]


def _path_of(value: Any) -> Path:
    """A path given as str, Path or a previous step's result (its ``.path``)."""
    if hasattr(value, "path"):
        return Path(value.path)
    if isinstance(value, str | os.PathLike):
        return Path(value)
    raise MetactlError(f"Expected a folder path, got {type(value).__name__} {value!r}.", "Pass a str or pathlib.Path.")


def _optional_path(value: Any) -> Path | None:
    return None if value is None else _path_of(value)


@contextmanager
def _status(message: str, quiet: bool) -> Iterator[None]:
    with nullcontext() if quiet else console.status(message):
        yield


# --- meta-train ------------------------------------------------------------------------------------


class BudgetRemainingColumn(TimeRemainingColumn):
    """Time remaining: for a task with a ``budget`` field (seconds), the sooner of the step-rate estimate
    and what is left of the budget (``--time-budget`` ends a run whose step count is only a ceiling)."""

    def render(self, task: Task) -> Text:
        budget = task.fields.get("budget")
        if not budget or task.elapsed is None or task.finished:
            return super().render(task)
        left = max(0.0, budget - task.elapsed)
        if task.time_remaining is not None:
            left = min(left, task.time_remaining)
        minutes, seconds = divmod(int(left), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


def _train_progress(cfg: TrainConfig, quiet: bool) -> tuple[Progress, train.Reporter]:
    """A rich progress bar for decoding and the outer steps, and the trainer's callbacks that drive it."""
    budget = cfg.time_budget * 60 if cfg.time_budget else None
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), BudgetRemainingColumn(), console=console, transient=False, disable=quiet,
    )  # fmt: skip
    state: dict[str, Any] = {"val": "", "task": None, "load": None}
    metric_name = "mse" if cfg.data == "sinusoid" else "acc"

    def on_load(done: int, total: int) -> None:
        if state["load"] is None:
            state["load"] = progress.add_task("decoding images", total=total, info="")
        progress.update(state["load"], completed=done)

    def on_start(first: int, total: int) -> None:
        state["task"] = progress.add_task(f"{cfg.algo} meta-train", total=total, completed=first, info="", budget=budget)

    def on_step(step: int, rec: dict[str, Any]) -> None:
        if "val" in rec:
            state["val"] = f" val {metric_name} {rec['val'][0]:.3f}→{rec['val'][-1]:.3f}"
        progress.update(state["task"], completed=step, info=f"loss {rec['loss']:.3f}{state['val']}")

    message = (lambda s: None) if quiet else console.print
    return progress, train.Reporter(message=message, start=on_start, step=on_step, load=on_load)


@api
def meta_train(
    config: str | Path | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    log_to: Sequence[str] = (),
    nproc: int | None = None,
    quiet: bool = False,
    command: str | None = None,
    **options: Any,
) -> TrainResult:
    """Meta-train an initialization θ and per-layer inner learning rates α (``metactl meta-train``).

    ``options`` are the meta-training settings, named like the flags (``algo``, ``data``, ``ways``,
    ``shots``, ``steps``, ``time_budget`` in minutes, ...; see :class:`metactl.config.TrainConfig`);
    ``config`` a TOML file with the same keys (the options override it). ``log_to``: logger names
    (``tensorboard``, ``mlflow``, a plugin's), checked before training starts. ``nproc``: local workers."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        names = [p for p in inspect.signature(meta_train).parameters if p not in ("options", "command")]
        raise MetactlError(f"metactl.meta_train(): unknown keyword(s) {', '.join(unknown)}.", f"Valid keywords: {', '.join([*names, *TRAIN_OPTIONS])}.")
    flags, problems = check_types({k: v for k, v in options.items() if v is not None})
    if problems:
        raise MetactlError("metactl.meta_train(): " + "; ".join(problems) + ".", "Pass values of the types the flags take.")
    out_path = _optional_path(out)
    if resume and force:
        raise MetactlError("--resume and --force contradict each other (continue the run, or replace it?).", "Pass only one of them.")
    if isinstance(log_to, str):
        log_to = [log_to]
    file_values = load_toml(_path_of(config)) if config is not None else {}
    if resume and out_path is not None and (out_path / rundirs.META).is_file():
        # a resumed run keeps its own recorded settings unless an option or the config file says otherwise
        recorded = {k: v for k, v in rundirs.read_meta(out_path).get("config", {}).items() if k != "device"}
        file_values = {**recorded, **file_values}
    cfg = resolve(file_values, flags)
    if resume and out_path is None:
        raise MetactlError("--resume needs --out RUN_DIR (the run to continue).", "Pass --out runs/NAME.")
    if nproc is not None and nproc < 1:
        raise MetactlError(f"--nproc must be >= 1 (got {nproc}).", "Pass the number of worker processes.")
    factories = loggers.resolve(log_to)  # a missing package fails here, before any work
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(cfg, nproc, out_path, force, resume, list(log_to), quiet, command)
    quiet = quiet or os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports
    progress, report = _train_progress(cfg, quiet)
    with progress:
        return train.meta_train(cfg, out=out_path, force=force, resume=resume, report=report, log_to=factories, command=command)


def _launch(cfg: TrainConfig, nproc: int, out: Path | None, force: bool, resume: bool, log_to: list[str], quiet: bool, command: str | None) -> TrainResult:
    if cfg.meta_batch % nproc:
        raise MetactlError(f"--meta-batch {cfg.meta_batch} does not split evenly over --nproc {nproc} workers.", "Use a meta-batch divisible by --nproc.")
    from metactl.launch import launch_local  # lazy: torch.distributed's launcher, only for --nproc

    run_dir = out or train.default_run_dir(cfg)
    previous = os.environ.get(COMMAND_ENV)
    os.environ[COMMAND_ENV] = command or ""
    try:
        launch_local(cfg, nproc, run_dir, force, resume, quiet, log_to)
    finally:
        if previous is None:
            os.environ.pop(COMMAND_ENV, None)
        else:
            os.environ[COMMAND_ENV] = previous
    meta = rundirs.read_meta(run_dir)
    curve = meta.get("validation", {}).get("curve", [])
    return TrainResult.of_curve(
        run_dir,
        int(meta.get("steps_done", 0)),
        float(meta.get("seconds", 0.0)),
        str(meta.get("stopped_by", "steps")),
        curve,
        meta.get("task", ""),
        config=meta.get("config", {}),
    )


# --- adapt, export ---------------------------------------------------------------------------------


@api
def adapt(
    support: str | Path,
    run: str | Path | TrainResult | None = None,
    *,
    out: str | Path = "adapted",
    steps: int | None = None,
    query: str | Path | None = None,
    force: bool = False,
    device: str = "cpu",
    quiet: bool = False,
    command: str | None = None,
    label_names: bool | None = None,
) -> AdaptResult:
    """Adapt a meta-trained run (``run``, the CLI's ``--from``; default: the newest under ./runs; or an adaptable
    export, adapted with onnxruntime alone and returning a ``RuntimeAdaptResult``) to the
    labeled examples in ``support`` with its learned per-layer learning rates (``metactl adapt``).
    ``label_names``: each label's readable name is one more support example (text; None: as the run trained)."""
    source = _optional_path(run)
    if source is not None and runtime_adapt.is_adaptable(source):  # an adaptable export: onnxruntime alone
        with _status("adapting with onnxruntime", quiet):
            return runtime_adapt.adapt_onnx(source, _path_of(support), _path_of(out), force, _optional_path(query), label_names, command, steps, device)  # type: ignore[return-value]
    with _status("adapting", quiet):
        return adapt_module.adapt(_path_of(support), _optional_path(run), steps, _optional_path(query), _path_of(out), force, device, command, label_names)


@api
def export(
    adapted: str | Path | AdaptResult = "adapted",
    *,
    onnx: bool = True,
    quantize: str | None = None,
    out: str | Path = "export",
    force: bool = False,
    quiet: bool = False,
    command: str | None = None,
) -> ExportResult:
    """Export an adapted model folder to ONNX, checked in onnxruntime against torch, with its model card
    (``metactl export``). ``quantize="int8"`` adds ``model.int8.onnx``."""
    if not onnx:
        raise MetactlError("--no-onnx leaves nothing to export.", "Drop --no-onnx.")
    with _status("exporting and checking", quiet):
        return export_module.export(_path_of(adapted), _path_of(out), quantize, force, command)


@api
def export_adaptable(
    run: str | Path | TrainResult | None = None, *, out: str | Path = "adaptable", force: bool = False, quiet: bool = False, command: str | None = None
) -> Any:
    """Export a run whose inner loop adapts only the head as embed/adapt/classify ONNX graphs (``metactl export
    --adaptable``): adaptation then runs wherever onnxruntime does (``adapt`` with that folder, no torch)."""
    with _status("exporting the adaptable graphs and checking them", quiet):
        return adaptable_module.export_adaptable(_optional_path(run), _path_of(out), force, command)


# --- evaluate, predict -----------------------------------------------------------------------------


def check_run(run: Path) -> None:
    """A MetactlError unless ``run`` is a meta-training run dir."""
    meta = rundirs.read_meta(run)
    if meta.get("kind") != "run":
        raise MetactlError(f"{run}: not a meta-training run (kind={meta.get('kind')!r}).", "Pass a directory written by metactl meta-train.")


@api
def evaluate(
    runs: str | Path | TrainResult | Sequence[str | Path | TrainResult] | None = None,
    *,
    data: str | None = EvaluateOptions.data,
    protocol: str | None = EvaluateOptions.protocol,
    ways: int | None = EvaluateOptions.ways,
    shots: int | None = EvaluateOptions.shots,
    query_shots: int = EvaluateOptions.query_shots,
    episodes: int = EvaluateOptions.episodes,
    steps: int | None = EvaluateOptions.steps,
    seed: int = EvaluateOptions.seed,
    split: str = EvaluateOptions.split,
    inner_lr: float | None = EvaluateOptions.inner_lr,
    all_classes: bool = EvaluateOptions.all_classes,
    by_domain: bool = EvaluateOptions.by_domain,
    label_names: bool | None = EvaluateOptions.label_names,
    device: str = EvaluateOptions.device,
    json: str | Path | None = None,
    plot: str | Path | None = None,
    force: bool = False,
    quiet: bool = False,
    command: str | None = None,
) -> EvaluateResult:
    """Adaptation curves (the metric after each inner step) of one or more runs on the same episodes from
    classes never seen in meta-training (``metactl evaluate``); ``runs`` (the CLI's ``--from``) defaults to
    the newest run under ./runs. ``json``/``plot``: also write the results / a PNG of the curves.
    ``split="val"``: the runs' own validation classes; ``inner_lr``: fine-tune at that one rate instead
    of each run's α (a grid of rates on ``split="val"`` chooses a fine-tuning baseline's rate).
    ``all_classes``: every held-out class at once, ``episodes`` draws of ``shots`` examples per class,
    scored on the whole test split (``label_names``: each class's readable name one more support text;
    None: as the run trained); ``by_domain``: CLINC150 episodes of one whole test domain.
    The keywords before ``json`` are :class:`metactl.config.EvaluateOptions`' fields."""
    check_split(split)  # before minutes are spent on the first run
    options = EvaluateOptions(
        data=data, protocol=protocol, ways=ways, shots=shots, query_shots=query_shots, episodes=episodes, steps=steps, seed=seed,
        split=split, inner_lr=inner_lr, all_classes=all_classes, by_domain=by_domain, label_names=label_names, device=device,
    )  # fmt: skip
    json_path, plot_path = _optional_path(json), _optional_path(plot)
    for target in (json_path, plot_path):
        if target is not None and target.exists() and not force:
            raise MetactlError(f"{target} already exists.", "Choose another file name, or pass --force to overwrite it.")
    if plot_path is not None:
        plotting.check_plot_target(plot_path)  # fail before the evaluation, not after it
    check_device(device)  # before reading any run
    given = [runs] if isinstance(runs, str | os.PathLike) or hasattr(runs, "path") else list(runs or [])  # type: ignore[arg-type]
    run_dirs = [_path_of(r) for r in given] or [rundirs.latest_run()]
    for run in run_dirs:  # every run readable before minutes are spent on the first
        check_run(run)
    with _status(f"evaluating {len(run_dirs)} run(s) on {episodes} episodes", quiet):
        results = evaluate_module.evaluate_runs(run_dirs, options)
    core = ("run", "algorithm", "metric", "ways", "episodes", "head", "steps", "split", "inner_lr")
    curves = [
        RunCurve(Path(r["run"]), r["algorithm"], r["metric"], r["ways"], r["episodes"], r["head"], r["steps"], r["split"], r["inner_lr"],
                 {k: v for k, v in r.items() if k not in core})
        for r in results
    ]  # fmt: skip
    result = EvaluateResult(curves, curves[0].episodes, seed, data, protocol, json_path, plot_path, split, inner_lr, options.setting)
    if json_path is not None:
        rundirs.atomic_write_json(json_path, result.to_dict())
    if plot_path is not None:
        plotting.plot_curves(results, plot_path, curve_title(results))
    return result


def curve_title(results: list[dict[str, Any]]) -> str:
    first = results[0]
    setting = f"{first['ways']}-way, " if first.get("ways") else ""
    if first.get("setting") == "all-classes":
        setting = f"all {first['ways']} classes, {first['shots']}-shot, {first['query_texts']} query texts, "
    elif first.get("setting") == "by-domain":
        setting += "whole domains, "
    metric = "accuracy (%)" if first["metric"] == "accuracy" else first["metric"].upper()
    unit = "draws" if first.get("setting") == "all-classes" else "episodes"
    return f"{metric} after k inner steps ({setting}mean ± 95 % CI, {first['episodes']} {unit})"


@api
def predict(model: str | Path | ExportResult, inputs: str | Path | Sequence[str | Path], *, top_k: int = 1) -> list[dict[str, Any]]:
    """Labels and probabilities for images (files or folders) or texts with an exported model, through
    onnxruntime only (``metactl predict``)."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    return runtime.predict(_path_of(model), [str(i) for i in inputs], top_k)


__all__ = [
    "AdaptResult", "EvaluateResult", "ExportResult", "RunCurve", "TrainResult", "adapt", "evaluate", "export", "export_adaptable", "meta_train", "predict",
]  # fmt: skip
