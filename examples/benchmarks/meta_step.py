"""Seconds per meta-step: metactl's maml/fomaml next to a hand-written per-task loop, one process.

Setting: Conv-4, 5-way 1-shot, 15 queries per class, meta-batch 32,
one inner step, 2 threads, glyph episodes sampled beforehand (data loading is off the clock in
both, as the trainer's prefetch thread keeps it off the critical path).

    python examples/benchmarks/meta_step.py [--repeats 5] [--json out.json]

The hand-written loop is the reference a user would write: torch.func.functional_call with
torch.nn.BatchNorm2d (batch statistics) + autograd.grad(create_graph=...) per task, plain SGD-free
gradient accumulation. Absolute times vary on shared machines: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metactl.algorithms.fomaml import FOMAML, FOMAMLConfig
from metactl.algorithms.maml import MAML, MAMLConfig
from metactl.config import TrainConfig
from metactl.data import glyphs
from metactl.data.episodes import ClassificationEpisodes, episode_rng
from metactl.evaluate import to_batch
from metactl.train import init_learner


def hand_written_model() -> nn.Module:
    layers: list[nn.Module] = []
    c = 1
    for _ in range(4):
        layers += [nn.Conv2d(c, 64, 3, padding=1), nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
        c = 64
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, 5))


def hand_written_step(model: nn.Module, params: dict[str, torch.Tensor], batch, second_order: bool, lr: float = 0.4) -> None:
    b = len(batch)
    for i in range(b):
        loss = F.cross_entropy(functional_call(model, params, (batch.support_x[i],)), batch.support_y[i])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=second_order)
        phi = {k: v - lr * g for (k, v), g in zip(params.items(), grads, strict=True)}
        (F.cross_entropy(functional_call(model, phi, (batch.query_x[i],)), batch.query_y[i]) / b).backward()


def timeit(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-malloc-tuning", action="store_true", help="measure with glibc's default allocator settings")
    args = ap.parse_args()
    if not args.no_malloc_tuning:
        from metactl.perf import tune_malloc

        print(f"malloc tuning applied: {tune_malloc()}")
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(meta_batch=32, ways=5, shots=1, query_shots=15, inner_steps=1)
    sampler = ClassificationEpisodes(glyphs.GlyphPool(*glyphs.TRAIN), 5, 1, 15)
    batches = [to_batch(sampler.sample(episode_rng(0, s, 0), 32)) for s in range(args.repeats + 1)]
    it = iter(range(10**9))

    def next_batch():
        return batches[next(it) % len(batches)]

    learner = init_learner({"kind": "conv4", "num_classes": 5, "width": 64}, cfg, "classification", "cpu")
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    ref_model = hand_written_model()
    ref_params = {k: v.detach().clone().requires_grad_(True) for k, v in ref_model.named_parameters()}
    ref_opt = torch.optim.Adam(ref_params.values(), lr=1e-3)

    def ours(algo) -> Callable[[], None]:
        def step() -> None:
            opt.zero_grad()
            algo.meta_gradient(learner, next_batch())
            opt.step()

        return step

    def hand(second_order: bool) -> Callable[[], None]:
        def step() -> None:
            ref_opt.zero_grad()
            hand_written_step(ref_model, ref_params, next_batch(), second_order)
            ref_opt.step()

        return step

    rows = {
        "maml (metactl)": timeit(ours(MAML(MAMLConfig(), cfg)), args.repeats),
        "maml (hand-written loop)": timeit(hand(True), args.repeats),
        "fomaml (metactl)": timeit(ours(FOMAML(FOMAMLConfig(), cfg)), args.repeats),
        "fomaml (hand-written loop)": timeit(hand(False), args.repeats),
    }
    result = {
        "setting": "Conv-4, 5-way 1-shot, 15 queries, meta-batch 32, 1 inner step",
        "threads": args.threads,
        "seconds_per_step": rows,
        "speedup_vs_hand_written": {
            "maml": rows["maml (hand-written loop)"] / rows["maml (metactl)"],
            "fomaml": rows["fomaml (hand-written loop)"] / rows["fomaml (metactl)"],
        },
    }
    for name, s in rows.items():
        print(f"{name:28s} {s:6.3f} s/step")
    print(json.dumps(result["speedup_vs_hand_written"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
