"""How fast the body of a text model trains: whole encoder vs ``--train-layers K`` on cached states.

    python examples/benchmarks/body_speed.py [--repeats 3] [--cli-steps 6] [--threads 2] [--json examples/results/body-speed.json]

On the real all-MiniLM-L6-v2 (``--backbone``) and real intent texts (``--intents``: CLINC150 and HWU64
``train`` splits, read with ``metactl.data.text.load_clinc150`` / ``load_hwu64``), one 640-text batch,
``--ways`` 64 intents x (5 support + 5 query) texts drawn with ``--seed``, the same texts for every path:

1. Seconds (median of ``--repeats`` after one warm-up) of forward + backward through metactl's own model
   (``metactl.models.text.TextClassifier`` built by ``init_learner`` from ``metactl.data.text.text_model_spec``,
   run through ``Learner.features``) with a prototype loss (support means, cosine logits x 10, cross-entropy
   on the queries), for four paths:

   - ``whole-padded``: every layer trains (``--train-body``), the batch padded to its longest text in one
     chunk (the path before length bucketing: ``bucketed(..., size=640)``);
   - ``whole-bucketed``: every layer trains, texts sorted by length, ``BUCKET`` at a time (today's path);
   - ``top2-cached`` / ``top1-cached``: ``--train-layers 2`` / ``1``, the lower layers' hidden states cached
     once (``TextPool.precompute_hidden``, not timed), only the top K layers run.

2. Achieved GFLOP/s of each: 2 x (parameters of the layers run) x (tokens run, padding included) per
   forward, plus the attention scores (4 x width² x hidden per text per layer), x3 for forward + backward;
   against the float32 matmul limit measured here (``torch.matmul`` of two 2048 x 2048 matrices).
3. Outer steps per 30 minutes of a 64-way (5+5) episode with ``--train-layers 2``: from the per-step
   ``seconds`` that a real ``metactl meta-train --algo protomaml --train-layers 2 --inner-steps 0
   --meta-batch 1`` run on ``intents:`` ``--protocol unseen-banking77`` writes to ``metrics.jsonl``
   (``--cli-steps``, the first step not counted; the hidden-state cache is built before step 1), and as
   implied by part 1's ``top2-cached`` time alone.

Ratios (speed-ups over ``whole-padded``) matter more than absolute times on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
PATHS = ("whole-padded", "whole-bucketed", "top2-cached", "top1-cached")
SHOTS, QUERIES = 5, 5


def intent_texts(root: Path, ways: int, seed: int) -> dict[str, list[str]]:
    """``ways`` intents of the CLINC150 and HWU64 ``train`` splits (about half from each) and
    ``SHOTS + QUERIES`` of their texts each, picked by ``seed``."""
    from metactl.data.text import load_clinc150, load_hwu64

    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    sources = (("clinc150", load_clinc150(root / "clinc150")["train"]), ("hwu64", load_hwu64(root / "hwu64")["train"]))
    for n, (name, texts) in enumerate(sources):
        labels = sorted(lab for lab, rows in texts.items() if len(rows) >= SHOTS + QUERIES)
        take = ways // 2 if n == 0 else ways - len(out)
        for lab in rng.choice(labels, take, replace=False):
            rows = texts[str(lab)]
            out[f"{name}:{lab}"] = [rows[int(i)] for i in rng.choice(len(rows), SHOTS + QUERIES, replace=False)]
    return out


def make_learner(backbone: Path, intents: Path, ways: int, k: int | None) -> Any:
    """metactl's learner for ``--train-body`` (``k`` None) or ``--train-layers k``."""
    from metactl.config import TrainConfig
    from metactl.data.text import text_model_spec
    from metactl.train import init_learner

    cfg = TrainConfig(
        algo="protomaml", backbone=str(backbone), data=f"intents:{intents}", ways=ways, shots=SHOTS, query_shots=QUERIES, train_body=True, train_layers=k
    )
    return init_learner(text_model_spec(cfg), cfg, "classification", "cpu")


def proto_loss(f: Any, ways: int) -> Any:
    """Prototype loss of features ``f`` (ways * (SHOTS + QUERIES), D) in class-major order."""
    import torch
    import torch.nn.functional as F

    f = f.reshape(ways, SHOTS + QUERIES, -1)
    protos = F.normalize(f[:, :SHOTS].mean(1), dim=-1)
    logits = 10.0 * F.normalize(f[:, SHOTS:].reshape(ways * QUERIES, -1), dim=-1) @ protos.T
    return F.cross_entropy(logits, torch.arange(ways).repeat_interleave(QUERIES))


def time_path(learner: Any, x: dict, ways: int, repeats: int) -> list[float]:
    """Seconds of forward + backward through ``learner.features``, one warm-up then ``repeats`` timed."""
    times = []
    for _ in range(repeats + 1):
        for p in learner.params.values():
            p.grad = None
        t = time.perf_counter()
        proto_loss(learner.features(learner.params, x), ways).backward()
        times.append(time.perf_counter() - t)
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for k, p in learner.params.items() if k.startswith("encoder.")), "no body gradient"
    return times[1:]


def work_of(lengths: np.ndarray, chunk: int) -> tuple[int, int]:
    """(tokens run, sum of width² over texts) when texts are sorted by length and run ``chunk`` at a time,
    each chunk padded to its longest (``chunk`` >= the count: one chunk padded to the longest)."""
    order = np.sort(lengths, kind="stable")
    tokens = squares = 0
    for lo in range(0, len(order), chunk):
        part = order[lo : lo + chunk]
        width = max(int(part.max()), 1)
        tokens += len(part) * width
        squares += len(part) * width * width
    return tokens, squares


def matmul_gflops(repeats: int) -> float:
    """Best GFLOP/s of float32 ``torch.matmul`` of two 2048 x 2048 matrices over ``repeats`` calls."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * 2048**3 / best / 1e9


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cli_steps(backbone: Path, intents: Path, ways: int, steps: int, threads: int) -> dict[str, Any]:
    """A real ``metactl meta-train --train-layers 2`` run of ``steps`` outer steps: its per-step seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "metactl", "meta-train", "--algo", "protomaml", "--backbone", str(backbone), "--data", f"intents:{intents}",
            "--protocol", "unseen-banking77", "--train-layers", "2", "--ways", str(ways), "--shots", str(SHOTS), "--query-shots", str(QUERIES),
            "--inner-steps", "0", "--test-inner-steps", "0", "--meta-batch", "1", "--steps", str(steps), "--eval-every", "0", "--eval-episodes", "1",
            "--threads", str(threads), "--out", str(out), "--force",
        ]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    seconds = [float(r["seconds"]) for r in rows if "seconds" in r and "step" in r and "loss" in r]
    timed = seconds[1:] or seconds
    return {
        "command": " ".join(["python", "-m", "metactl", *cmd[3:-3], "--out", "RUN"]),
        "step_seconds_each": seconds,
        "step_seconds": statistics.median(timed),
        "wall_seconds": wall,
        "steps_per_30min": 1800 / statistics.median(timed),
    }


def measure(args: argparse.Namespace, texts: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Part 1 and 2: every path's seconds, tokens run and achieved GFLOP/s."""
    import torch

    from metactl.data.text import TextPool, load_tokenizer
    from metactl.models.text import BUCKET, _layer_list, bucketed
    from metactl.train import hidden_fn

    tok = load_tokenizer(args.backbone / "tokenizer.json", args.max_length)
    pool = TextPool.from_texts(texts, tok, args.max_length)
    picks = [(c, np.arange(pool.count(c))) for c in range(pool.num_classes)]
    tokens = {k: torch.from_numpy(v) for k, v in pool.take(picks).items()}
    lengths = tokens["attention_mask"].sum(-1).numpy()
    n = len(lengths)
    rows: dict[str, dict[str, Any]] = {}
    for name in PATHS:
        k = None if name.startswith("whole") else int(name[3])
        learner = make_learner(args.backbone, args.intents, args.ways, k)
        model = learner.model
        x, chunk = tokens, BUCKET
        if name == "whole-padded":  # one chunk padded to the batch's longest text, as before bucketing
            model.encode = lambda ids, mask, m=model: bucketed(m._encode_chunk, mask, ids, size=ids.shape[0])  # type: ignore[method-assign]
            chunk = n
        elif k is not None:
            cached = TextPool.from_texts(texts, tok, args.max_length)
            cached.precompute_hidden(hidden_fn(model, "cpu"), model.body_tag())
            x = {key: torch.from_numpy(v) for key, v in cached.take(picks).items()}
        layers = _layer_list(model.encoder)[1]
        run = list(layers) if k is None else list(layers)[len(layers) - k :]
        layer_params = sum(p.numel() for layer in run for p in layer.parameters())
        hidden = int(model.spec["hidden"])
        run_tokens, squares = work_of(lengths, chunk)
        flops = 3 * (2 * layer_params * run_tokens + len(run) * 4 * squares * hidden)
        seconds = time_path(learner, x, args.ways, args.repeats)
        s = statistics.median(seconds)
        rows[name] = {
            "train_layers": k, "layers_run": len(run), "layer_parameters": layer_params, "tokens_run": run_tokens,
            "seconds": s, "seconds_each": seconds, "texts_per_second": n / s, "gflop": flops / 1e9, "gflops_per_second": flops / s / 1e9,
        }  # fmt: skip
        print(f"{name:15s} {s:7.3f} s  {n / s:7.1f} texts/s  {flops / s / 1e9:6.1f} GFLOP/s  ({len(run)} layers, {run_tokens} tokens)", flush=True)
        del learner, model
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", type=Path, default=SHARED / "models" / "all-MiniLM-L6-v2")
    ap.add_argument("--intents", type=Path, default=SHARED / "datasets" / "intents")
    ap.add_argument("--ways", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed forward + backward passes per path (after one warm-up)")
    ap.add_argument("--matmul-repeats", type=int, default=5)
    ap.add_argument("--cli-steps", type=int, default=6, help="outer steps of the real meta-train run (0: skip it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "examples" / "results" / "body-speed.json"))
    args = ap.parse_args()
    args.backbone, args.intents = args.backbone.resolve(), args.intents.resolve()
    import torch

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    t_all = time.perf_counter()
    texts = intent_texts(args.intents, args.ways, args.seed)
    limit = matmul_gflops(args.matmul_repeats)
    print(f"matmul 2048x2048 float32: {limit:.1f} GFLOP/s", flush=True)
    rows = measure(args, texts)
    base = rows["whole-padded"]["seconds"]
    for r in rows.values():
        r["speedup_vs_whole_padded"] = base / r["seconds"]
        r["fraction_of_matmul_limit"] = r["gflops_per_second"] / limit
    cli = cli_steps(args.backbone, args.intents, args.ways, args.cli_steps, args.threads) if args.cli_steps > 0 else None
    if cli:
        print(f"meta-train --train-layers 2: {cli['step_seconds']:.3f} s/step, {cli['steps_per_30min']:.0f} steps per 30 min", flush=True)
    load_end = os.getloadavg()[0]
    notes = []
    if load_start > 1.5:
        busy = f"the machine was busy: 1-minute load average {load_start:.2f} at the start ({os.cpu_count()} CPUs)"
        small = "the paths of many small operations (bucketed, cached) lose more than the padded one"
        notes.append(f"{busy}: absolute times are pessimistic, and with --threads near the idle cores {small}")
    result = {
        "setting": {
            "backbone": args.backbone.name,
            "texts": f"{args.ways} intents x ({SHOTS}+{QUERIES}) = {args.ways * (SHOTS + QUERIES)} texts, CLINC150 + HWU64 train splits, seed {args.seed}",
            "max_length": args.max_length,
            "repeats": args.repeats,
            "loss": "prototypes of the support texts, cosine logits x 10, cross-entropy on the queries",
            "flops": "3 x (2 x layer parameters x tokens run + 4 x width^2 x hidden per text) per layer run",
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "matmul_gflops_per_second": limit,
        "paths": rows,
        "ratios": {f"{k}_speedup_vs_whole_padded": r["speedup_vs_whole_padded"] for k, r in rows.items() if k != "whole-padded"},
        "steps_per_30min_top2_from_forward_backward": 1800 / rows["top2-cached"]["seconds"],
        "meta_train_top2": cli,
        "total_seconds": time.perf_counter() - t_all,
        "load_average_1min": {"start": load_start, "end": load_end},
        "notes": notes,
    }
    print(json.dumps(result["ratios"], indent=2))
    print(f"total {result['total_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
