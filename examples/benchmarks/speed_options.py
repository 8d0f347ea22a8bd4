"""Which execution options make metactl's meta-step fastest here: A/B in one process.

    python examples/benchmarks/speed_options.py [--algos maml,fomaml] [--repeats 5] [--json out.json]

Setting as throughput.py (Conv-4, 5-way 1-shot, 15 queries, meta-batch 32, one inner step, glyph
episodes built beforehand, 2 threads). Variants, run in interleaved rounds on the same batches:

- precision: fp32 | bf16 (``--precision``);
- layout: NCHW | channels-last activations (``metactl.models.conv4.CHANNELS_LAST``; applies to
  float32 only, so bf16 rows show both settings doing the same thing);
- parallelism: intra-op (both threads inside every operator) | task threads (the meta-batch split
  over two threads, one intra-op thread each: ``--task-threads 2``).

Reported: median seconds per meta-gradient, speed-up over fp32/NCHW/intra-op, and the relative
difference of each variant's meta-gradient from that baseline (float32 reassociation: ~1e-4;
bf16: ~5e-2).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from algorithms import glyph_batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algos", default="maml,fomaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from metactl.config import TrainConfig
    from metactl.models import conv4
    from metactl.perf import task_parallel_meta_gradient, tune_malloc
    from metactl.registry import load_algorithm, make_config
    from metactl.train import init_learner

    tune_malloc()
    torch.set_num_threads(args.threads)
    batches = glyph_batches(32, args.repeats + 1)
    variants = list(itertools.product(("fp32", "bf16"), ("nchw", "channels-last"), ("intra-op", "task-threads")))
    rows = {}
    for algo in args.algos.split(","):
        cls = load_algorithm(algo)
        impls = {p: cls(make_config(cls, {}), TrainConfig(algo=algo, meta_batch=32, precision=p)) for p in ("fp32", "bf16")}
        learner = init_learner({"kind": "conv4", "num_classes": 5, "width": 64}, TrainConfig(algo=algo), "classification", "cpu")
        times: dict[tuple, list[float]] = {v: [] for v in variants}
        grads: dict[tuple, torch.Tensor] = {}
        for r, batch in enumerate(batches):
            for v in variants:
                precision, layout, par = v
                conv4.CHANNELS_LAST = layout == "channels-last"
                learner.precision = precision
                for p in learner.parameters():
                    p.grad = torch.zeros_like(p)
                t = time.perf_counter()
                if par == "task-threads":
                    task_parallel_meta_gradient(impls[precision], learner, batch, args.threads)
                else:
                    impls[precision].meta_gradient(learner, batch)
                if r:  # round 0 warms up (and gives the gradients compared)
                    times[v].append(time.perf_counter() - t)
                else:
                    grads[v] = torch.cat([p.grad.flatten() for p in learner.parameters()])
        conv4.CHANNELS_LAST = True
        base = variants[0]
        med = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
        rows[algo] = {}
        print(f"\n{algo} (median of {args.repeats}, {args.threads} threads)")
        for v in variants:
            diff = float((grads[v] - grads[base]).norm() / grads[base].norm())
            rows[algo]["/".join(v)] = {"seconds": med[v], "speedup": med[base] / med[v], "grad_rel_diff": diff}
            print(f"  {'/'.join(v):32s} {med[v]:6.3f} s  {med[base] / med[v]:5.2f}x  |Δg|/|g| {diff:.1e}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"setting": "Conv-4, 5w1s, 15 queries, meta-batch 32, 1 inner step", "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
