"""Where a meta-step's time goes: torch.profiler over metactl's meta-step, grouped by kind of work.

    python examples/benchmarks/profile_step.py [--algos maml,fomaml] [--precision fp32,bf16] [--json out.json] [--top 12]

Setting as throughput.py: Conv-4 (64 filters), 5-way 1-shot, 15 queries per class, meta-batch 32,
one inner step, 2 threads, glyph episodes built beforehand. One warm-up step, then ``--steps``
profiled steps. Operator self-time is grouped (convolution forward / backward, BatchNorm, pooling,
ReLU, element-wise arithmetic, allocation and copies, other); "outside operators" is the step's
wall time minus all operator self-time: Python, ``functional_call``'s re-parametrisation and the
autograd engine's bookkeeping. The convolution work is also given as achieved GFLOP/s (forward
FLOPs from the recorded shapes; each backward call is counted as two products, input and weight
gradient, an upper bound for the first layer, whose input needs no gradient).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from algorithms import glyph_batches

GROUPS = [
    ("conv backward", ("convolution_backward",)),
    ("conv forward", ("mkldnn_convolution", "_convolution", "convolution", "conv2d", "_mkldnn_convolution")),
    ("batch-norm", ("batch_norm", "var_mean", "rsqrt", "addcmul")),
    ("pooling", ("max_pool2d",)),
    ("relu", ("relu", "threshold_backward", "threshold")),
    ("linear / loss", ("addmm", "mm", "linear", "cross_entropy", "log_softmax", "nll_loss", "_log_softmax")),
    ("element-wise", ("mul", "add", "sub", "div", "neg", "sum", "mean", "where", "pow", "sqrt", "lerp", "addcdiv")),
    ("allocation / copies", ("empty", "zeros", "zero_", "fill_", "copy_", "clone", "cat", "to", "_to_copy", "contiguous", "ones", "new_")),
]


def group_of(name: str) -> str:
    base = name.removeprefix("aten::").lower()
    for group, keys in GROUPS:
        if any(base == k or base.startswith(k + "_") or base.startswith(k + ".") for k in keys):
            return group
    if "backward" in base:
        return "other backward"
    return "other"


def profile_one(algo: str, precision: str, steps: int, top: int) -> dict:
    from metactl.config import TrainConfig
    from metactl.registry import load_algorithm, make_config
    from metactl.train import init_learner

    cfg = TrainConfig(algo=algo, meta_batch=32, precision=precision)
    cls = load_algorithm(algo)
    impl = cls(make_config(cls, {}), cfg)
    learner = init_learner({"kind": "conv4", "num_classes": 5, "width": 64}, cfg, "classification", "cpu", getattr(impl, "inner_lr_shape", "layer"))
    batches = glyph_batches(32, steps + 1)
    impl.meta_gradient(learner, batches[0])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t = time.perf_counter()
        for b in batches[1:]:
            for p in learner.parameters():
                p.grad = None
            impl.meta_gradient(learner, b)
        wall = (time.perf_counter() - t) / steps
    groups: dict[str, float] = {}
    ops = []
    for e in prof.key_averages():
        self_s = e.self_cpu_time_total / 1e6 / steps
        if self_s > 0:
            groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + self_s
            ops.append((e.key, self_s, e.count / steps))
    conv_flops = 0.0  # from the shapes: 2·N·Cout·Cin·k²·H·W per forward; a backward computes up to two such products
    for e in prof.key_averages(group_by_input_shape=True):
        shapes = e.input_shapes
        if e.key == "aten::mkldnn_convolution" and len(shapes) >= 2 and len(shapes[0]) == 4:
            (n, cin, h, w), (cout, _, kh, kw) = shapes[0], shapes[1]
            conv_flops += e.count * 2 * n * cout * cin * kh * kw * h * w / steps
        elif e.key == "aten::convolution_backward" and len(shapes) >= 3 and len(shapes[0]) == 4:
            (n, cout, h, w), (_, cin, kh, kw) = shapes[0], shapes[2]
            conv_flops += e.count * 2 * 2 * n * cout * cin * kh * kw * h * w / steps
    inside = sum(groups.values())
    groups["outside operators"] = max(wall - inside, 0.0)
    conv_time = groups.get("conv forward", 0.0) + groups.get("conv backward", 0.0)
    ops.sort(key=lambda r: -r[1])
    return {
        "algo": algo,
        "precision": precision,
        "seconds_per_step": wall,
        "groups_seconds": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "conv_gflop": conv_flops / 1e9,
        "conv_gflops_per_s": conv_flops / conv_time / 1e9 if conv_time else None,
        "top_ops": [{"op": k, "seconds": s, "calls": c} for k, s, c in ops[:top]],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algos", default="maml,fomaml")
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from metactl.perf import tune_malloc

    tune_malloc()
    torch.set_num_threads(args.threads)
    results = []
    for algo in args.algos.split(","):
        for precision in args.precision.split(","):
            r = profile_one(algo, precision, args.steps, args.top)
            results.append(r)
            print(f"\n## {algo}, {precision}: {r['seconds_per_step']:.3f} s per meta-step (profiled)")
            for g, s in r["groups_seconds"].items():
                print(f"  {g:22s} {s:7.3f} s  {100 * s / r['seconds_per_step']:5.1f} %")
            if r["conv_gflops_per_s"]:
                print(f"  convolutions: ~{r['conv_gflop']:.0f} GFLOP per step at ~{r['conv_gflops_per_s']:.0f} GFLOP/s")
            for o in r["top_ops"]:
                print(f"    {o['op']:45s} {o['seconds']:7.3f} s  {o['calls']:7.0f} calls")
    if args.json:
        setting = "Conv-4, 5w1s, 15 queries, meta-batch 32, 1 inner step"
        args.json.write_text(json.dumps({"setting": setting, "threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
