"""Two cores, two ways: intra-op threads inside each task's ops, or one task per core.

    python examples/benchmarks/task_threads.py [--repeats 5] [--json out.json]

The per-task loop's operations are small (5 support images; 80 support+query images of 28x28),
so two OpenMP threads inside each convolution spend much of their time synchronising. The
alternative splits the meta-batch: each of ``--threads`` Python threads runs its half of the tasks
with one intra-op thread (PyTorch releases the GIL inside operators and backward), and the partial
meta-gradients are summed in a fixed order. Same episodes, same process, alternating A/B runs;
the meta-gradients of both ways are compared (they differ only by float summation order).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--algos", default="maml,fomaml")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from metactl.config import TrainConfig
    from metactl.data import glyphs
    from metactl.data.episodes import ClassificationEpisodes, training_tasks
    from metactl.evaluate import to_batch
    from metactl.perf import task_parallel_meta_gradient, tune_malloc
    from metactl.registry import load_algorithm, make_config
    from metactl.train import init_learner

    tune_malloc()
    torch.set_num_threads(args.threads)
    sampler = ClassificationEpisodes(glyphs.GlyphPool(*glyphs.TRAIN), 5, 1, 15)
    batches = [to_batch(training_tasks(sampler, 0, s, range(args.meta_batch))) for s in range(args.repeats + 1)]
    rows = {}
    for algo in args.algos.split(","):
        cfg = TrainConfig(algo=algo, meta_batch=args.meta_batch, precision=args.precision)
        cls = load_algorithm(algo)
        impl = cls(make_config(cls, {}), cfg)
        learner = init_learner({"kind": "conv4", "num_classes": 5, "width": 64}, cfg, "classification", "cpu")

        def intra(batch: object) -> None:
            impl.meta_gradient(learner, batch)

        def tasks(batch: object) -> None:
            task_parallel_meta_gradient(impl, learner, batch, args.threads)

        grads = {}
        times: dict[str, list[float]] = {"intra-op threads": [], "task threads": []}
        for r, batch in enumerate(batches):
            for name, fn in (("intra-op threads", intra), ("task threads", tasks)):
                for p in learner.parameters():
                    p.grad = None
                t = time.perf_counter()
                fn(batch)
                if r:  # the first batch warms up
                    times[name].append(time.perf_counter() - t)
                elif name not in grads:
                    grads[name] = torch.cat([p.grad.flatten() for p in learner.parameters()])
                if r == 0 and name == "task threads":
                    grads[name] = torch.cat([p.grad.flatten() for p in learner.parameters()])
        a, b = grads["intra-op threads"], grads["task threads"]
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        rows[algo] = {**med, "speedup": med["intra-op threads"] / med["task threads"], "grad_rel_diff": float((a - b).norm() / a.norm())}
        print(f"{algo}: intra-op {med['intra-op threads']:.3f} s, task threads {med['task threads']:.3f} s, "
              f"speedup {rows[algo]['speedup']:.2f}x, |Δg|/|g| {rows[algo]['grad_rel_diff']:.1e}", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"setting": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
