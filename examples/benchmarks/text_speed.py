"""Speed and memory of text meta-learning on a pretrained encoder: meta-step, adapt, ONNX serving.

    python examples/benchmarks/text_speed.py [--repeats 3] [--onnx-runs 200] [--json examples/results/text-speed.json]

On the real all-MiniLM-L6-v2 (``--backbone``) and CLINC150 (``--clinc150``), 2 threads:

1. Seconds per meta-step (median of ``--repeats`` after one warm-up; meta-gradient + optimizer step,
   task threads as ``meta-train`` runs them) and peak extra memory (VmHWM reset after set-up, minus
   the resident size before the first step), each configuration in its own subprocess: ``--adapt
   head`` with the body's features precomputed (what ``meta-train`` does: the step runs the head
   only), ``--adapt head`` with the body run per task, and ``--adapt lora`` with first- and
   second-order MAML; all 1 inner step, 5-way 5-shot, 15 queries per class, meta-batch 4. The
   episodes are those of ``--data intents:… --protocol domains`` (the 105 meta-training intents,
   ``train`` split), built with ``metactl.data.text``; the precomputed variant gets the features of
   exactly those episodes' texts (not of all 10 500 meta-training texts, an 80 s pass ``meta-train``
   makes once).
2. ``metactl.adapt.adapt`` on a 10-label x 5-text support folder (CLINC150 ``test`` split, travel and
   utility intents), 5 steps, from a head run and from a LoRA run (tiny runs made here with
   ``metactl meta-train --steps 1`` on a 10-intent CSV of meta-training texts): seconds from the call
   to the adapted folder on disk, first call in a fresh process (modules imported beforehand) and a
   second call in the same process.
3. Batch-1 latency (median over ``--onnx-runs`` calls, the query texts in turn, each unpadded) of
   the head model's float and int8 ONNX export (``export --quantize int8``) and of the same graph's
   torch module in eager mode, interleaved; the int8 model's argmax agreement with the float one and
   both accuracies on 10 query texts per label (``test`` split, disjoint from the support texts).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # peak memory measured as algorithms.py does
from algorithms import _rss_kb

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
CONFIGS = {  # name -> (--adapt, features precomputed, first order)
    "head": ("head", True, False),
    "head-no-cache": ("head", False, False),
    "lora-fo": ("lora", False, True),
    "lora-so": ("lora", False, False),
}
WAYS, SHOTS, QUERIES, META_BATCH, INNER_STEPS = 5, 5, 15, 4, 1
ADAPT_STEPS, SUPPORT_LABELS, SUPPORT_SHOTS, QUERY_SHOTS = 5, 10, 5, 10


def _reset_peak() -> None:
    """Set VmHWM back to the current resident size (Linux >= 4.0), so set-up's peak does not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def clinc_batches(backbone: Path, clinc: Path, count: int, max_length: int) -> list:
    """``count`` meta-batches of the intents ``domains`` protocol's meta-training episodes (tokens)."""
    from metactl.data.episodes import ClassificationEpisodes, training_tasks
    from metactl.data.text import TextPool, find_datasets, load_tokenizer, protocol_texts

    parts = protocol_texts(find_datasets(clinc, f"intents:{clinc}"), "domains")
    pool = TextPool.from_texts(parts["train"], load_tokenizer(backbone / "tokenizer.json", max_length), max_length)
    sampler = ClassificationEpisodes(pool, WAYS, SHOTS, QUERIES)
    return [training_tasks(sampler, 0, s, range(META_BATCH)) for s in range(count)]


def with_features(ep, fn):  # type: ignore[no-untyped-def]
    """The episodes with each text replaced by the frozen body's features, as a precomputed pool gives them."""

    def feats(x: dict) -> dict:
        b, m = x["input_ids"].shape[:2]
        f = fn({k: v.reshape(b * m, -1) for k, v in x.items()})
        return {"features": f.reshape(b, m, -1)}

    return dataclasses.replace(ep, support_x=feats(ep.support_x), query_x=feats(ep.query_x))


def child_step(name: str, backbone: Path, clinc: Path, repeats: int, threads: int) -> None:
    import torch

    from metactl.api import SetupInfo
    from metactl.config import TrainConfig
    from metactl.data.tensors import to_batch
    from metactl.evaluate import feature_fn
    from metactl.models.text import text_model_spec
    from metactl.perf import task_parallel_meta_gradient, task_workers, tune_malloc
    from metactl.registry import build_algorithm
    from metactl.train import init_learner, make_optimizer

    adapt, cached, first_order = CONFIGS[name]
    tune_malloc()
    torch.set_num_threads(threads)
    cfg = TrainConfig(
        algo="maml", data=f"intents:{clinc}", protocol="domains", backbone=str(backbone), adapt=adapt, ways=WAYS, shots=SHOTS,
        query_shots=QUERIES, meta_batch=META_BATCH, inner_steps=INNER_STEPS, threads=threads, steps=1000,
    )  # fmt: skip
    algo = build_algorithm("maml", {"first_order": first_order}, cfg)
    spec = text_model_spec(backbone, WAYS, adapt, cfg.lora_rank, False, cfg.max_length)
    learner = init_learner(spec, cfg, "classification", "cpu", algo.inner_lr_shape)
    algo.setup(learner, SetupInfo(train_classes=105))
    opt = make_optimizer(algo, learner, cfg)
    workers = task_workers(cfg, algo, "cpu", META_BATCH)  # as meta-train runs it
    episodes = clinc_batches(backbone, clinc, repeats + 1, cfg.max_length)
    if cached:
        fn = feature_fn(learner, "cpu")
        episodes = [with_features(ep, fn) for ep in episodes]
    batches = [to_batch(ep) for ep in episodes]
    trainable = sum(p.numel() for p in learner.params.values())
    gc.collect()
    _reset_peak()
    base = _rss_kb("VmRSS")
    times = []
    for step, b in enumerate(batches):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        algo.begin_step(step, cfg.steps)
        task_parallel_meta_gradient(algo, learner, b, workers)
        opt.step()
        times.append(time.perf_counter() - t)
    timed = times[1:]
    print(
        json.dumps(
            {
                "seconds": statistics.median(timed),
                "seconds_each": timed,
                "warmup_seconds": times[0],
                "peak_mb": (_rss_kb("VmHWM") - base) / 1024,
                "theta_parameters": trainable,
                "task_threads": workers,
            }
        )
    )


def child_adapt(run: Path, support: Path, out: Path, threads: int) -> None:
    import torch

    import metactl.models.text  # noqa: F401  (transformers and peft: imported by the CLI before adapt runs)
    from metactl.adapt import adapt

    torch.set_num_threads(threads)
    seconds = []
    for i in range(2):
        t = time.perf_counter()
        adapt(support, run, steps=ADAPT_STEPS, out=out / f"call{i}", force=True)
        seconds.append(time.perf_counter() - t)
    print(json.dumps({"first_call_seconds": seconds[0], "second_call_seconds": seconds[1]}))


def child_serve(adapted: Path, query: Path, out: Path, runs: int, threads: int) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    from metactl.adapt import load_adapted
    from metactl.data.tokens import encode, load_tokenizer
    from metactl.export import export

    torch.set_num_threads(threads)
    t = time.perf_counter()
    res = export(adapted, out, quantize="int8", force=True)
    export_seconds = time.perf_counter() - t
    meta, model = load_adapted(adapted)
    labels = meta["labels"]
    deployed = model.export_module(meta["preprocessing"]).eval()
    tok = load_tokenizer(out / "tokenizer.json", int(meta["preprocessing"]["max_length"]))
    texts = [(lab, line.strip()) for lab in labels for line in (query / f"{lab}.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    inputs = [encode(tok, [text])[0] for _, text in texts]
    target = np.array([labels.index(lab) for lab, _ in texts])

    def session(name: str) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads must not spin while torch runs
        return ort.InferenceSession(str(out / name), so, providers=["CPUExecutionProvider"])

    float_s, int8_s = session("model.onnx"), session("model.int8.onnx")

    def run_torch(x: dict) -> np.ndarray:
        with torch.inference_mode():
            return deployed(torch.from_numpy(x["input_ids"]), torch.from_numpy(x["attention_mask"]))[1].numpy()

    engines = {
        "torch": run_torch,
        "onnx_float": lambda x: float_s.run(["probabilities"], x)[0],
        "onnx_int8": lambda x: int8_s.run(["probabilities"], x)[0],
    }
    probs = {k: np.concatenate([fn(x) for x in inputs]) for k, fn in engines.items()}  # also the warm-up
    ms: dict[str, list[float]] = {k: [] for k in engines}
    for i in range(runs):  # interleaved: the engines see the same inputs at the same time
        x = inputs[i % len(inputs)]
        for k, fn in engines.items():
            t = time.perf_counter()
            fn(x)
            ms[k].append(1000 * (time.perf_counter() - t))
    pred = {k: p.argmax(-1) for k, p in probs.items()}
    print(
        json.dumps(
            {
                "export_seconds": export_seconds,
                "export_reported_int8_agreement": res.agreement_int8,
                "queries": len(texts),
                "tokens_median": statistics.median(int(x["attention_mask"].sum()) for x in inputs),
                "latency_ms": {k: statistics.median(v) for k, v in ms.items()},
                "int8_float_argmax_agreement": float((pred["onnx_int8"] == pred["onnx_float"]).mean()),
                "int8_float_max_abs_prob_diff": float(np.abs(probs["onnx_int8"] - probs["onnx_float"]).max()),
                "float_torch_max_abs_prob_diff": float(np.abs(probs["onnx_float"] - probs["torch"]).max()),
                "accuracy": {k: float((p == target).mean()) for k, p in pred.items()},
            }
        )
    )


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_folders(clinc: Path, work: Path) -> tuple[Path, Path, Path]:
    """A 10-intent CSV of meta-training texts (the tiny runs' data) and 10-label support / query folders
    of held-out intents (``<label>.txt``, one text a line; CLINC150 ``test`` split)."""
    import csv

    from metactl.data.text import TEST_DOMAINS, TRAIN_DOMAINS, clinc150_domains, load_clinc150

    data, domains = load_clinc150(clinc), clinc150_domains(clinc)
    train_intents = [i for d in TRAIN_DOMAINS for i in domains[d]][:10]
    csv_path = work / "train.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for intent in train_intents:
            w.writerows([text, intent] for text in data["train"][intent][:20])
    test_intents = [i for d in TEST_DOMAINS for i in domains[d]][:SUPPORT_LABELS]
    support, query = work / "support", work / "query"
    for folder, lo, hi in ((support, 0, SUPPORT_SHOTS), (query, SUPPORT_SHOTS, SUPPORT_SHOTS + QUERY_SHOTS)):
        folder.mkdir()
        for intent in test_intents:
            (folder / f"{intent}.txt").write_text("\n".join(data["test"][intent][lo:hi]) + "\n", encoding="utf-8")
    return csv_path, support, query


def tiny_run(backbone: Path, csv_path: Path, adapt: str, out: Path, threads: int) -> float:
    cmd = [
        sys.executable, "-m", "metactl", "meta-train", "--backbone", str(backbone), "--adapt", adapt, "--data", f"text:{csv_path}",
        "--ways", str(WAYS), "--shots", "5", "--query-shots", "5", "--meta-batch", "2", "--steps", "1", "--eval-every", "0",
        "--eval-episodes", "2", "--test-inner-steps", "1", "--threads", str(threads), "--out", str(out), "--force",
    ]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", type=Path, default=SHARED / "models" / "all-MiniLM-L6-v2")
    ap.add_argument("--clinc150", type=Path, default=SHARED / "datasets" / "intents" / "clinc150")
    ap.add_argument("--repeats", type=int, default=3, help="timed meta-steps per configuration (after one warm-up)")
    ap.add_argument("--onnx-runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"meta-step configurations, a subset of {','.join(CONFIGS)}")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    backbone, clinc = args.backbone.resolve(), args.clinc150.resolve()
    if args.child:
        kind, *rest = args.child
        if kind == "step":
            child_step(rest[0], backbone, clinc, args.repeats, args.threads)
        elif kind == "adapt":
            child_adapt(Path(rest[0]), Path(rest[1]), Path(rest[2]), args.threads)
        else:
            child_serve(Path(rest[0]), Path(rest[1]), Path(rest[2]), args.onnx_runs, args.threads)
        return
    t_all = time.perf_counter()
    load_start = os.getloadavg()[0]
    common = ["--backbone", str(backbone), "--clinc150", str(clinc), "--threads", str(args.threads)]
    steps: dict[str, dict] = {}
    for name in args.configs.split(","):
        t = time.perf_counter()
        steps[name] = _child(["step", name, *common, "--repeats", str(args.repeats)])
        s = steps[name]
        print(f"meta-step {name:14s} {s['seconds']:7.3f} s/step  peak +{s['peak_mb']:7.1f} MB  (subprocess {time.perf_counter() - t:.0f} s)", flush=True)
    adapt_rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv_path, support, query = write_folders(clinc, work)
        for mode in ("head", "lora"):
            run = work / f"run-{mode}"
            made = tiny_run(backbone, csv_path, mode, run, args.threads)
            adapt_rows[mode] = {**_child(["adapt", str(run), str(support), str(work / f"adapted-{mode}"), *common]), "tiny_run_seconds": made}
            a = adapt_rows[mode]
            print(f"adapt from a {mode} run: {a['first_call_seconds']:.2f} s (fresh process), {a['second_call_seconds']:.2f} s (second call)", flush=True)
        serve = _child(["serve", str(work / "adapted-head" / "call0"), str(query), str(work / "export"), *common, "--onnx-runs", str(args.onnx_runs)])
    lat = serve["latency_ms"]
    print(
        f"batch-1 latency: torch {lat['torch']:.2f} ms, onnx float {lat['onnx_float']:.2f} ms, onnx int8 {lat['onnx_int8']:.2f} ms; "
        f"int8/float agreement {100 * serve['int8_float_argmax_agreement']:.1f} % on {serve['queries']} queries",
        flush=True,
    )
    ratios: dict[str, float] = {}
    if "lora-so" in steps and "lora-fo" in steps:
        ratios["lora_so_over_fo_seconds"] = steps["lora-so"]["seconds"] / steps["lora-fo"]["seconds"]
        ratios["lora_so_over_fo_peak_mb"] = steps["lora-so"]["peak_mb"] / steps["lora-fo"]["peak_mb"]
    if "head-no-cache" in steps and "head" in steps:
        ratios["head_no_cache_over_head_seconds"] = steps["head-no-cache"]["seconds"] / steps["head"]["seconds"]
        ratios["head_no_cache_over_head_peak_mb"] = steps["head-no-cache"]["peak_mb"] / steps["head"]["peak_mb"]
    ratios["onnx_float_over_torch_latency"] = lat["onnx_float"] / lat["torch"]
    ratios["onnx_int8_over_float_latency"] = lat["onnx_int8"] / lat["onnx_float"]
    print(json.dumps(ratios, indent=2))
    result = {
        "setting": {
            "backbone": backbone.name,
            "threads": args.threads,
            "meta_step": f"CLINC150 domains protocol meta-training episodes (built with metactl.data.text), {WAYS}-way {SHOTS}-shot, "
            f"{QUERIES} queries per class, meta-batch {META_BATCH}, {INNER_STEPS} inner step, maml; median of {args.repeats} after a warm-up",
            "adapt": f"{SUPPORT_LABELS} labels x {SUPPORT_SHOTS} texts (CLINC150 test split, travel/utility intents), {ADAPT_STEPS} steps, "
            "from tiny --steps 1 runs on a 10-intent CSV",
            "onnx": f"batch 1, median of {args.onnx_runs} calls over {SUPPORT_LABELS} x {QUERY_SHOTS} query texts, head model, "
            "export --quantize int8 (dynamic)",
        },
        "meta_step": steps,
        "adapt": adapt_rows,
        "onnx": serve,
        "ratios": ratios,
        "total_seconds": time.perf_counter() - t_all,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
    }
    print(f"total {result['total_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
