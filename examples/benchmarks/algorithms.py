"""Seconds per meta-step and peak memory for every registered algorithm, same task setting.

    python examples/benchmarks/algorithms.py [--meta-batch 32] [--repeats 2] [--json out.json]

Conv-4, 5-way 1-shot, 15 queries per class, 2 threads. Each (algorithm, inner steps) runs in its own
subprocess so that peak memory (VmHWM − resident size before the first step) is that configuration's
alone; the same glyph episodes are used everywhere. Reported: median seconds per meta-step
(meta-gradient + optimizer step) and peak extra memory in MB; and the ratios the issue asks for
(ANIL vs MAML at 5 inner steps; iMAML and MAML memory at 10 vs 1 inner steps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CONFIGS = [
    ("maml", 1), ("maml", 5), ("maml", 10), ("fomaml", 1), ("fomaml", 10), ("imaml", 1), ("imaml", 10),
    ("anil", 1), ("anil", 5), ("metasgd", 1), ("reptile", 5), ("pretrain", 1), ("protonet", 1),
]  # fmt: skip


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def glyph_batches(meta_batch: int, count: int) -> list:
    """``count`` meta-batches of the benchmarks' setting: glyph episodes, 5-way 1-shot, 15 queries per class."""
    from metactl.data import glyphs
    from metactl.data.episodes import ClassificationEpisodes, training_tasks
    from metactl.evaluate import to_batch

    sampler = ClassificationEpisodes(glyphs.GlyphPool(*glyphs.TRAIN), 5, 1, 15)
    return [to_batch(training_tasks(sampler, 0, s, range(meta_batch))) for s in range(count)]


def child(algo: str, steps: int, meta_batch: int, repeats: int, threads: int, checkpoint_inner: bool = False, task_threads: int = 0) -> None:
    import torch

    from metactl.api import SetupInfo
    from metactl.config import TrainConfig
    from metactl.data import glyphs
    from metactl.perf import task_parallel_meta_gradient, task_workers, tune_malloc
    from metactl.registry import load_algorithm, make_config
    from metactl.train import init_learner, make_optimizer

    tune_malloc()
    torch.set_num_threads(threads)
    cfg = TrainConfig(algo=algo, inner_steps=steps, meta_batch=meta_batch, steps=1000, checkpoint_inner=checkpoint_inner, task_threads=task_threads)
    cls = load_algorithm(algo)
    impl = cls(make_config(cls, {}), cfg)
    batches = glyph_batches(meta_batch, repeats + 1)
    learner = init_learner({"kind": "conv4", "num_classes": 5, "width": 64}, cfg, "classification", "cpu", impl.inner_lr_shape)
    impl.setup(learner, SetupInfo(train_classes=glyphs.TRAIN[1]))
    opt = make_optimizer(impl, learner, cfg)
    workers = task_workers(cfg, impl, "cpu", meta_batch)  # as meta-train runs it
    base = _rss_kb("VmRSS")
    times = []
    for b in batches:
        t = time.perf_counter()
        opt.zero_grad()
        task_parallel_meta_gradient(impl, learner, b, workers)
        opt.step()
        times.append(time.perf_counter() - t)
    times = sorted(times[1:])
    print(json.dumps({"seconds": times[len(times) // 2], "peak_mb": (_rss_kb("VmHWM") - base) / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--configs", default=None, help="comma-separated ALGO@STEPS subset, e.g. maml@1,maml@10")
    ap.add_argument("--checkpoint-inner", action="store_true", help="meta-train with --checkpoint-inner")
    ap.add_argument("--task-threads", type=int, default=0, help="as meta-train's --task-threads (0 = auto: one per thread)")
    ap.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.meta_batch, args.repeats, args.threads, args.checkpoint_inner, args.task_threads)
        return
    from metactl.registry import available_names

    names = set(available_names())
    rows = {}
    wanted = set(args.configs.split(",")) if args.configs else None
    configs = [(a, int(k)) for a, k in (c.split("@") for c in wanted)] if wanted else CONFIGS
    for algo, steps in configs:
        if algo not in names:
            continue
        cmd = [
            sys.executable,
            __file__,
            "--child",
            algo,
            str(steps),
            "--meta-batch",
            str(args.meta_batch),
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
            "--task-threads",
            str(args.task_threads),
        ] + (["--checkpoint-inner"] if args.checkpoint_inner else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows[f"{algo}@{steps}"] = json.loads(out)
        print(
            f"{algo:9s} inner steps {steps:2d}: {rows[f'{algo}@{steps}']['seconds']:7.3f} s/step  peak +{rows[f'{algo}@{steps}']['peak_mb']:8.1f} MB",
            flush=True,
        )
    ratios = {}
    if "anil@5" in rows and "maml@5" in rows:
        ratios["anil_speedup_vs_maml_at_5_steps"] = rows["maml@5"]["seconds"] / rows["anil@5"]["seconds"]
    for algo in ("imaml", "maml", "fomaml"):
        if f"{algo}@10" in rows and f"{algo}@1" in rows:
            ratios[f"{algo}_memory_10_vs_1_steps"] = rows[f"{algo}@10"]["peak_mb"] / max(rows[f"{algo}@1"]["peak_mb"], 1e-9)
    print(json.dumps(ratios, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"setting": f"Conv-4, 5-way 1-shot, 15 queries, meta-batch {args.meta_batch}, {args.threads} threads", "rows": rows, "ratios": ratios},
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
