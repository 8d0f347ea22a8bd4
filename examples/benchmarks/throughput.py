"""metactl's meta-step next to the loop a user would write by hand (and next to ``higher``).

For each algorithm: seconds per meta-step (median) and peak memory of

- ``metactl``: the registered algorithm's ``meta_gradient`` + its outer optimizer step, as
  ``metactl meta-train`` runs it (its allocator tuning, ``metactl.perf.tune_malloc``; the meta-batch
  split over one thread per core, ``--task-threads`` auto; channels-last activations in float32);
- ``hand``: a hand-written per-task ``torch.func.functional_call`` loop doing the same arithmetic
  (Conv-4 with ``nn.BatchNorm2d(track_running_stats=False)``, ``autograd.grad`` per task, a fixed
  scalar α), run as a user would run it (glibc's default allocator settings);
- ``higher``: ``higher.innerloop_ctx`` with a differentiable SGD (maml / fomaml only), when the
  ``higher`` package is installed.

Setting: Conv-4 (64 filters), 5-way 1-shot, 15 queries per class, meta-batch 32, the same glyph
episodes for every implementation, batches built beforehand (data loading is off the clock in all:
metactl's trainer prefetches on a background thread). Every (algorithm, implementation) runs in its
own subprocess so peak memory (VmHWM above the resident size before the first step) is its own.

    python examples/benchmarks/throughput.py [--repeats 3] [--threads 2] [--json throughput.json]
        [--algos maml,fomaml,...] [--same-allocator]

``--same-allocator`` applies metactl's allocator tuning to the hand-written loop and ``higher`` too.
Absolute times vary on shared machines: read the ratios, which are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# (algorithm, inner steps during meta-training)
CONFIGS = [("maml", 1), ("maml", 5), ("fomaml", 1), ("metasgd", 1), ("anil", 5), ("imaml", 5), ("reptile", 5)]
LR = 0.4

sys.path.insert(0, str(Path(__file__).resolve().parent))
from algorithms import _rss_kb, glyph_batches  # noqa: E402  (peak memory and batches as algorithms.py)
from meta_step import hand_written_model as hand_model  # noqa: E402  (the same reference Conv-4)


# ---------------------------------------------------------------- hand-written reference loops
def hand_step(algo: str, steps: int, model: Any, params: dict, lrs: dict, batch: Any) -> None:
    """One meta-gradient, accumulated into ``.grad`` (the outer optimizer step is outside)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    b = len(batch)
    names = list(params)
    for i in range(b):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        if algo in ("maml", "fomaml", "metasgd"):
            second = algo != "fomaml"
            phi = dict(params)
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(model, phi, (sx,)), sy)
                grads = torch.autograd.grad(loss, list(phi.values()), create_graph=second)
                phi = {k: phi[k] - (lrs[k] if algo == "metasgd" else LR) * g for k, g in zip(names, grads, strict=True)}
            (F.cross_entropy(functional_call(model, phi, (qx,)), qy) / b).backward()
        elif algo == "anil":
            last = f"{len(model) - 1}."  # the linear head
            body = {k: v for k, v in params.items() if not k.startswith(last)}
            feats = functional_call(model[:-1], body, (torch.cat([sx, qx]),))
            fs, fq = feats[: len(sx)], feats[len(sx) :]
            w, bias = params[last + "weight"], params[last + "bias"]
            for _ in range(steps):
                loss = F.cross_entropy(F.linear(fs, w, bias), sy)
                gw, gb = torch.autograd.grad(loss, [w, bias], create_graph=True)
                w, bias = w - LR * gw, bias - LR * gb
            (F.cross_entropy(F.linear(fq, w, bias), qy) / b).backward()
        elif algo == "imaml":
            lam, cg_steps = 1.0, 5
            phi = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(model, phi, (sx,)), sy)
                reg = sum(((phi[k] - params[k].detach()) ** 2).sum() for k in names) * (lam / 2)
                grads = torch.autograd.grad(loss + reg, list(phi.values()))
                phi = {k: (phi[k] - 0.1 * g).detach().requires_grad_(True) for k, g in zip(names, grads, strict=True)}
            gq = torch.autograd.grad(F.cross_entropy(functional_call(model, phi, (qx,)), qy), list(phi.values()))
            gs = torch.autograd.grad(F.cross_entropy(functional_call(model, phi, (sx,)), sy), list(phi.values()), create_graph=True)

            def matvec(v: list, gs: tuple = gs, phi: dict = phi, lam: float = lam) -> list:
                hv = torch.autograd.grad(gs, list(phi.values()), grad_outputs=v, retain_graph=True)
                return [vi + h / lam for vi, h in zip(v, hv, strict=True)]

            x = [torch.zeros_like(g) for g in gq]
            r = [g.clone() for g in gq]
            p = [g.clone() for g in gq]
            rr = sum((ri * ri).sum() for ri in r)
            for _ in range(cg_steps):
                ap = matvec(p)
                alpha = rr / sum((pi * ai).sum() for pi, ai in zip(p, ap, strict=True))
                x = [xi + alpha * pi for xi, pi in zip(x, p, strict=True)]
                r = [ri - alpha * ai for ri, ai in zip(r, ap, strict=True)]
                rr_new = sum((ri * ri).sum() for ri in r)
                p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p, strict=True)]
                rr = rr_new
            for k, xi in zip(names, x, strict=True):
                params[k].grad = xi / b if params[k].grad is None else params[k].grad + xi / b
        elif algo == "reptile":
            x_all, y_all = torch.cat([sx, qx]), torch.cat([sy, qy])
            phi = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(model, phi, (x_all,)), y_all)
                grads = torch.autograd.grad(loss, list(phi.values()))
                phi = {k: (phi[k] - 0.001 * g).detach().requires_grad_(True) for k, g in zip(names, grads, strict=True)}
            for k in names:
                d = (params[k].detach() - phi[k].detach()) / b
                params[k].grad = d if params[k].grad is None else params[k].grad + d
        else:
            raise ValueError(algo)


def higher_step(algo: str, steps: int, model: Any, inner_opt: Any, batch: Any) -> None:
    import higher
    import torch.nn.functional as F

    b = len(batch)
    for i in range(b):
        sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False, track_higher_grads=algo != "fomaml") as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(sx), sy))
            loss = F.cross_entropy(fmodel(qx), qy) / b
            if algo == "fomaml":  # first order: the query gradient at ϕ lands on θ
                import torch

                grads = torch.autograd.grad(loss, list(fmodel.parameters()))
                for p, g in zip(model.parameters(), grads, strict=True):
                    p.grad = g if p.grad is None else p.grad + g
            else:
                loss.backward()


# ---------------------------------------------------------------- one configuration, in a subprocess
def child(impl: str, algo: str, steps: int, meta_batch: int, repeats: int, threads: int, same_allocator: bool, precision: str) -> dict[str, float]:
    import torch

    from metactl.config import TrainConfig
    from metactl.data import glyphs

    if impl.startswith("metactl") or same_allocator:
        from metactl.perf import tune_malloc

        tune_malloc()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    batches = glyph_batches(meta_batch, repeats + 1)

    if impl.startswith("metactl"):
        from metactl.api import SetupInfo
        from metactl.registry import load_algorithm, make_config
        from metactl.train import init_learner, make_optimizer

        options: dict[str, Any] = {"imaml": {"cg_steps": 5}, "reptile": {"use_query": True}}.get(algo, {})
        cfg = TrainConfig(algo=algo, inner_steps=steps, meta_batch=meta_batch, steps=1000, precision=precision)
        cls = load_algorithm(algo)
        impl_obj = cls(make_config(cls, options), cfg)
        learner = init_learner({"kind": "conv4", "num_classes": 5, "width": 64}, cfg, "classification", "cpu", impl_obj.inner_lr_shape)
        impl_obj.setup(learner, SetupInfo(train_classes=glyphs.TRAIN[1]))
        opt = make_optimizer(impl_obj, learner, cfg)

        from metactl.perf import task_parallel_meta_gradient, task_workers

        workers = task_workers(cfg, impl_obj, "cpu", meta_batch)  # as meta-train runs it (auto: one per thread)

        def step(batch: Any) -> None:
            opt.zero_grad()
            task_parallel_meta_gradient(impl_obj, learner, batch, workers)
            opt.step()

    elif impl == "hand":
        model = hand_model()
        params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
        lrs = {k: torch.full_like(v, LR, requires_grad=True) for k, v in params.items()}
        outer = torch.optim.Adam(list(params.values()) + (list(lrs.values()) if algo == "metasgd" else []), lr=1e-3)

        def step(batch: Any) -> None:
            outer.zero_grad()
            hand_step(algo, steps, model, params, lrs, batch)
            outer.step()

    elif impl == "higher":
        model = hand_model()
        inner_opt = torch.optim.SGD(model.parameters(), lr=LR)
        outer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(batch: Any) -> None:
            outer.zero_grad()
            higher_step(algo, steps, model, inner_opt, batch)
            outer.step()

    else:
        raise ValueError(impl)
    base = _rss_kb("VmRSS")
    times = []
    for batch in batches:
        t = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - t)
    times = sorted(times[1:])  # the first step warms up
    return {"seconds": times[len(times) // 2], "peak_mb": (_rss_kb("VmHWM") - base) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--meta-batch", type=int, default=32)
    ap.add_argument("--algos", default=None, help="comma-separated subset of: " + ", ".join(sorted({a for a, _ in CONFIGS})))
    ap.add_argument("--precision", default="fp32", help="also run metactl with this precision (bf16) as 'metactl-bf16'")
    ap.add_argument("--same-allocator", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, algo, steps, precision = args.child
        print(json.dumps(child(impl, algo, int(steps), args.meta_batch, args.repeats, args.threads, args.same_allocator, precision)))
        return
    try:
        import higher  # noqa: F401

        have_higher = True
    except ImportError:
        have_higher = False
    wanted = set(args.algos.split(",")) if args.algos else None
    rows: list[dict[str, Any]] = []
    for algo, steps in CONFIGS:
        if wanted is not None and algo not in wanted:
            continue
        impls = [("metactl", "fp32"), ("hand", "fp32")]
        if args.precision != "fp32":
            impls.insert(1, (f"metactl-{args.precision}", args.precision))
        if have_higher and algo in ("maml", "fomaml"):
            impls.append(("higher", "fp32"))
        row: dict[str, Any] = {"algorithm": algo, "inner_steps": steps}
        for impl, precision in impls:
            cmd = [sys.executable, __file__, "--child", impl, algo, str(steps), precision, "--meta-batch", str(args.meta_batch),
                   "--repeats", str(args.repeats), "--threads", str(args.threads)] + (["--same-allocator"] if args.same_allocator else [])  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                row[impl] = {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
            else:
                row[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        ours = row["metactl"].get("seconds")
        for impl, _ in impls[1:]:
            if ours and "seconds" in row[impl]:
                row[f"speedup_vs_{impl}"] = row[impl]["seconds"] / ours
        if args.precision != "fp32" and "seconds" in row.get(f"metactl-{args.precision}", {}) and "seconds" in row.get("hand", {}):
            row[f"speedup_{args.precision}_vs_hand"] = row["hand"]["seconds"] / row[f"metactl-{args.precision}"]["seconds"]
        rows.append(row)
        cells = "  ".join(
            f"{impl} {row[impl]['seconds']:.3f} s {row[impl]['peak_mb']:.0f} MB" if "seconds" in row[impl] else f"{impl} {row[impl]['error']}"
            for impl, _ in impls
        )
        print(f"{algo:8s} K={steps:2d}  {cells}", flush=True)
    result = {
        "setting": f"Conv-4, 5-way 1-shot, 15 queries, meta-batch {args.meta_batch}, {args.threads} threads",
        "allocator": "metactl's tuning for all" if args.same_allocator else "metactl tuned, others glibc defaults",
        "rows": rows,
    }
    print(json.dumps([{k: v for k, v in r.items() if k.startswith(("algorithm", "inner", "speedup"))} for r in rows], indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
