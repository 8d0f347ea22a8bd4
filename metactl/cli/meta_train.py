"""``metactl meta-train``: learn θ and per-layer inner learning rates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from metactl.cli.common import console, handle_errors


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
    backbone: str = typer.Option(None, help="Pretrained body: a local Hugging Face folder (text) or a metactl run dir (images)."),
    adapt: str = typer.Option(None, help="What the inner loop adapts: head | lora | all. [default: head with --backbone, all without]"),
    lora_rank: int = typer.Option(None, help="Rank of the LoRA adapters (--adapt lora). [default: 8]"),
    train_body: bool = typer.Option(None, "--train-body/--no-train-body", help="Let the outer loop update the pretrained body too. [default: off]"),
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
    time_budget: float = typer.Option(None, help="Minutes; stop cleanly and save when spent."),
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
    config: Path = typer.Option(None, "--config", help="TOML file with the same keys as these flags; flags override it."),
    out: Path = typer.Option(None, "--out", help="Run directory. [default: runs/ALGO-DATA-NwKs-TIMESTAMP]"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    nproc: int = typer.Option(None, "--nproc", help="Launch N local workers (torch.distributed elastic launcher; gloo on CPU, nccl on CUDA)."),
) -> None:
    """Meta-train an initialization θ and per-layer inner learning rates α."""
    from metactl.config import load_toml, resolve
    from metactl.errors import MetactlError

    if resume and force:
        raise MetactlError("--resume and --force contradict each other (continue the run, or replace it?).", "Pass only one of them.")

    flags = dict(
        algo=algo, data=data, protocol=protocol, ways=ways, shots=shots, query_shots=query_shots, inner_steps=inner_steps,
        test_inner_steps=test_inner_steps, inner_lr=inner_lr, learn_inner_lr=learn_inner_lr, meta_batch=meta_batch,
        meta_lr=meta_lr, steps=steps, seed=seed, device=device, time_budget=time_budget, eval_every=eval_every,
        eval_episodes=eval_episodes, checkpoint_every=checkpoint_every, snapshot_every=snapshot_every, max_bad_steps=max_bad_steps, rotations=rotations,
        width=width, image_size=image_size, threads=threads, task_threads=task_threads,
        precision=precision, checkpoint_inner=checkpoint_inner, backbone=backbone, adapt=adapt, lora_rank=lora_rank,
        train_body=train_body, max_length=max_length,
    )  # fmt: skip
    file_values = load_toml(config) if config else {}
    if resume and out is not None and (out / "metactl.json").is_file():
        from metactl.runs import read_meta

        # a resumed run keeps its own recorded settings unless a flag or --config says otherwise
        recorded = {k: v for k, v in read_meta(out).get("config", {}).items() if k != "device"}
        file_values = {**recorded, **file_values}
    cfg = resolve(file_values, flags)
    if resume and out is None:
        raise MetactlError("--resume needs --out RUN_DIR (the run to continue).", "Pass --out runs/NAME.")
    if nproc is not None and nproc < 1:
        raise MetactlError(f"--nproc must be >= 1 (got {nproc}).", "Pass the number of worker processes.")
    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        if cfg.meta_batch % nproc:
            raise MetactlError(f"--meta-batch {cfg.meta_batch} does not split evenly over --nproc {nproc} workers.", "Use a meta-batch divisible by --nproc.")
        from metactl.launch import launch_local
        from metactl.train import default_run_dir

        run_dir = out or default_run_dir(cfg)
        launch_local(cfg, nproc, run_dir, force, resume, json_out)
        if not json_out:
            console.print(f"{nproc} workers finished. Run written to [bold]{escape(str(run_dir))}[/]")
        return
    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 reports

    from metactl.train import Reporter
    from metactl.train import meta_train as run_meta_train

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False, disable=json_out or quiet,
    )  # fmt: skip
    state = {"val": "", "task": None, "load": None}
    metric_name = "mse" if cfg.data == "sinusoid" else "acc"

    def on_load(done: int, total: int) -> None:
        if state["load"] is None:
            state["load"] = progress.add_task("decoding images", total=total, info="")
        progress.update(state["load"], completed=done)

    def on_start(first: int, total: int) -> None:
        state["task"] = progress.add_task(f"{cfg.algo} meta-train", total=total, completed=first, info="")

    def on_step(step: int, rec: dict) -> None:
        if "val" in rec:
            state["val"] = f" val {metric_name} {rec['val'][0]:.3f}→{rec['val'][-1]:.3f}"
        progress.update(state["task"], completed=step, info=f"loss {rec['loss']:.3f}{state['val']}")

    with progress:
        result = run_meta_train(cfg, out=out, force=force, resume=resume, report=Reporter(message=console.print, start=on_start, step=on_step, load=on_load))

    if quiet:
        return
    summary = {
        "run_dir": str(result.run_dir), "steps": result.steps_done, "seconds": round(result.seconds, 1),
        "stopped_by": result.stopped_by, "skipped_steps": result.skipped_steps,
        "validation": result.val_curve, "validation_at_start": result.val_curve_start, "inner_lr": result.inner_lr,
    }  # fmt: skip
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"Validation {metric_name} after k inner steps ({cfg.eval_episodes} episodes, held-out classes)")
    table.add_column("inner step", justify="right")
    if result.val_curve_start:
        table.add_column("before training", justify="right")
    table.add_column("after training", justify="right")
    for k, c in enumerate(result.val_curve):
        row = [str(k)]
        if result.val_curve_start:
            s = result.val_curve_start[k]
            row.append(f"{s['mean']:.4f} ± {s['ci95']:.4f}")
        row.append(f"{c['mean']:.4f} ± {c['ci95']:.4f}")
        table.add_row(*row)
    console.print(table)
    console.print(
        f"{result.steps_done} steps in {result.seconds:.0f} s (stopped by {result.stopped_by}"
        + (f", {result.skipped_steps} non-finite steps skipped" if result.skipped_steps else "")
        + f"). Run written to [bold]{escape(str(result.run_dir))}[/]"
    )
