"""``metactl meta-train``: learn θ and per-layer inner learning rates."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from metactl.cli.common import command_line, console, handle_errors

if TYPE_CHECKING:
    from metactl.library import TrainResult

COMMAND_OPTIONS = ("config", "out", "resume", "force", "json_out", "nproc", "log_to")  # meta_train's parameters that are not settings


@handle_errors
def meta_train(
    algo: str = typer.Option(None, help="Algorithm (see `metactl algorithms`). [default: maml]"),
    data: str = typer.Option(
        None, help="glyphs | sinusoid | FOLDER | FILE.zip | omniglot:DIR | intents:DIR | text:FILE.csv|.tsv|.jsonl|DIR. [default: glyphs]"
    ),
    protocol: str = typer.Option(
        None,
        help="omniglot:DIR: lake | vinyals; intents:DIR: domains (CLINC150 by domain) | unseen-clinc150 | unseen-banking77 | unseen-hwu64. [default: lake]",
    ),
    backbone: str = typer.Option(
        None,
        help="Pretrained body: a local Hugging Face folder or a hub id org/name[@revision] from the Hugging Face cache (text; downloaded "
        "only when missing, online and HF_HUB_OFFLINE unset), or a metactl run dir (images). [default: none, the model starts from scratch]",
    ),
    adapt: str = typer.Option(None, help="What the inner loop adapts: head | lora | all. [default: head with --backbone, all without]"),
    lora_rank: int = typer.Option(None, help="Rank of the LoRA adapters (--adapt lora). [default: 8]"),
    train_body: bool = typer.Option(None, "--train-body/--no-train-body", help="Let the outer loop update the pretrained body too. [default: off]"),
    body_lr: float = typer.Option(None, help="Outer learning rate of the pretrained body (--train-body). [default: --meta-lr]"),
    train_layers: int = typer.Option(None, help="Text: train only the top K layers (1..depth; implies --train-body); lower ones run once. [default: all]"),
    body_warmup: int = typer.Option(None, help="Outer steps of linear warmup of the body's learning rate (--train-body). [default: 0, none]"),
    body_l2sp: float = typer.Option(None, "--body-l2sp", help="L2-SP: pull the trained body toward its pretrained weights, λ/2·‖θ−θ⁰‖². [default: 0, off]"),
    clip_grad: float = typer.Option(None, help="Clip the outer gradient's global norm to this. [default: none]"),
    keep_best: bool = typer.Option(None, "--keep-best/--no-keep-best", help="The θ best on validation becomes the run's θ. [default: keep]"),
    val_all_classes: bool = typer.Option(
        None, "--val-all-classes/--no-val-all-classes", help="Text: validate on all validation intents at once. [default: no]"
    ),
    label_names: bool = typer.Option(None, "--label-names/--no-label-names", help="Text: each readable class name is one more support example. [default: no]"),
    episode_classes: str = typer.Option(None, help="Text: episode classes: random | nearest (intent + nearest by centroid) | domain. [default: random]"),
    max_length: int = typer.Option(None, help="Text: tokens per example; longer texts are truncated. [default: 64]"),
    ways: int = typer.Option(None, help="Classes per episode (N). [default: 5]"),
    shots: int = typer.Option(None, help="Support examples per class (K). [default: 1]"),
    query_shots: int = typer.Option(None, help="Query examples per class. [default: 15]"),
    inner_steps: int = typer.Option(None, help="Inner steps during meta-training. [default: 1]"),
    test_inner_steps: int = typer.Option(None, help="Inner steps at validation/adapt time. [default: 3]"),
    inner_lr: float = typer.Option(None, help="Initial inner learning rate α (per layer). [default: 0.4]"),
    learn_inner_lr: bool = typer.Option(None, "--learn-inner-lr/--no-learn-inner-lr", help="Learn α in the outer loop. [default: learn]"),
    meta_batch: int = typer.Option(None, help="Tasks per outer step. [default: 32]"),
    meta_lr: float = typer.Option(None, help="Outer (Adam) learning rate. [default: 0.001]"),
    steps: int = typer.Option(None, help="Outer steps. [default: 100]"),
    seed: int = typer.Option(None, help="Seed for weights and episodes. [default: 0]"),
    device: str = typer.Option(None, help="cpu | cuda. [default: cpu]"),
    time_budget: float = typer.Option(None, help="Time budget in minutes; stop cleanly and save when spent. [default: none, --steps decides]"),
    eval_every: int = typer.Option(None, help="Validate every N steps (0 disables). [default: 50]"),
    eval_episodes: int = typer.Option(None, help="Validation episodes. [default: 100]"),
    checkpoint_every: int = typer.Option(None, help="Checkpoint every N steps. [default: 25]"),
    snapshot_every: int = typer.Option(
        None, help="Keep θ every N steps in RUN/snapshots/ (learning curves: metactl evaluate --from RUN/snapshots/*). [default: 0, off]"
    ),
    max_bad_steps: int = typer.Option(None, help="Stop after N non-finite steps in a row (each is skipped). [default: 10]"),
    rotations: bool = typer.Option(None, "--rotations/--no-rotations", help="Add 90/180/270° rotations as new classes. [default: off]"),
    width: int = typer.Option(None, help="Conv-4 filters / MLP hidden width. [default: 64]"),
    image_size: int = typer.Option(None, help="Image side in pixels (0 = automatic: 28 for grayscale, 84 for color folders, read in RGB). [default: 0]"),
    threads: int = typer.Option(None, help="torch threads. [default: all cores]"),
    task_threads: int = typer.Option(
        None, help="Split the meta-batch over N threads, threads/N intra-op threads each (0 = auto: one per thread on CPU; 1 = off). [default: 0]"
    ),
    precision: str = typer.Option(None, help="fp32 | bf16 (autocast forward passes; weights and optimizer stay fp32). [default: fp32]"),
    checkpoint_inner: bool = typer.Option(
        None,
        "--checkpoint-inner/--no-checkpoint-inner",
        help="Recompute inner-step activations in the backward pass: memory flat in --inner-steps. [default: off]",
    ),
    config: Path = typer.Option(None, "--config", help="TOML file with the same keys as these flags; flags override it. [default: none]"),
    out: Path = typer.Option(None, "--out", help="Run directory. [default: runs/ALGO-DATA-NwKs-TIMESTAMP]"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    nproc: int = typer.Option(
        None, "--nproc", help="Launch N local workers (torch.distributed elastic launcher; gloo on CPU, nccl on CUDA). [default: 1, this process]"
    ),
    log_to: list[str] = typer.Option(
        None,
        "--log-to",
        help="Also log to tensorboard | mlflow | an installed logger plugin (repeatable); metrics.jsonl is always written. [default: none]",
        show_default=False,
    ),
) -> None:
    """Meta-train an initialization θ and per-layer inner learning rates α."""
    settings = {name: value for name, value in locals().items() if name not in COMMAND_OPTIONS}  # every other parameter is a setting
    _run(settings, config, out, resume, force, json_out, nproc, log_to or [])


def _run(
    settings: dict[str, Any], config: Path | None, out: Path | None, resume: bool, force: bool, json_out: bool, nproc: int | None, log_to: list[str]
) -> None:
    """Meta-train with the flags' settings (:func:`metactl.library.meta_train`) and print the result."""
    from metactl.library import meta_train as run_meta_train

    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports
    result = run_meta_train(
        config, out=out, resume=resume, force=force, log_to=log_to, nproc=nproc, quiet=json_out or quiet, command=command_line(), **settings
    )
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:  # the workers reported; rank 0 printed the summary
        if not json_out:
            console.print(f"{nproc} workers finished. Run written to [bold]{escape(str(result.path))}[/]")
        return
    if quiet:
        return
    if json_out:
        summary = {
            "run_dir": str(result.path), "steps": result.steps, "seconds": round(result.seconds, 1),
            "stopped_by": result.stopped_by, "skipped_steps": result.skipped_steps,
            "validation": result.validation, "validation_at_start": result.validation_at_start, "inner_lr": result.inner_lr,
        }  # fmt: skip
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_summary(result)


def _print_summary(result: TrainResult) -> None:
    """The validation curve before and after training as a table, then where the run went."""
    metric_name = "mse" if result.config.get("data") == "sinusoid" else "acc"
    table = Table(title=f"Validation {metric_name} after k inner steps ({result.config.get('eval_episodes')} episodes, held-out classes)")
    table.add_column("inner step", justify="right")
    if result.validation_at_start:
        table.add_column("before training", justify="right")
    table.add_column("after training", justify="right")
    for k, c in enumerate(result.validation):
        row = [str(k)]
        if result.validation_at_start:
            s = result.validation_at_start[k]
            row.append(f"{s['mean']:.4f} ± {s['ci95']:.4f}")
        row.append(f"{c['mean']:.4f} ± {c['ci95']:.4f}")
        table.add_row(*row)
    console.print(table)
    console.print(
        f"{result.steps} steps in {result.seconds:.0f} s (stopped by {result.stopped_by}"
        + (f", {result.skipped_steps} non-finite steps skipped" if result.skipped_steps else "")
        + f"). Run written to [bold]{escape(str(result.path))}[/]"
    )
