"""Serving speed: onnxruntime vs torch eager on an exported model, and `metactl adapt` wall time.

    python examples/benchmarks/serving.py --export export --adapted adapted \
        [--support shots-5w5s --run runs/NAME] [--threads 2] [--json out.json]

Latency is the median over repeated calls at batch 1 and batch 64, both engines in this one
process with the same thread count. The adapt timing runs the real command in a subprocess
(start-up included) with 5 inner steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=Path, default=Path("export"))
    ap.add_argument("--adapted", type=Path, default=Path("adapted"))
    ap.add_argument("--support", type=Path, default=None, help="a 5-way 5-shot folder to time `metactl adapt` on")
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from metactl.adapt import load_adapted

    torch.set_num_threads(args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    meta, model = load_adapted(args.adapted)
    size = int(meta["preprocessing"]["size"])
    deployed = model.export_module(meta["preprocessing"]).eval()
    sessions = {"onnxruntime float": ort.InferenceSession(str(args.export / "model.onnx"), opts, providers=["CPUExecutionProvider"])}
    if (args.export / "model.int8.onnx").is_file():
        sessions["onnxruntime int8"] = ort.InferenceSession(str(args.export / "model.int8.onnx"), opts, providers=["CPUExecutionProvider"])
    result: dict[str, object] = {"threads": args.threads, "latency_ms": {}}
    for batch in (1, 64):
        x = np.random.default_rng(0).integers(0, 256, (batch, 1, size, size)).astype(np.float32)
        xt = torch.from_numpy(x)
        repeats = 300 if batch == 1 else 40

        def eager(xt: torch.Tensor = xt) -> object:
            with torch.inference_mode():
                return deployed(xt)

        row = {"torch eager": median_seconds(eager, repeats) * 1000}
        for name, sess in sessions.items():
            row[name] = median_seconds(lambda sess=sess, x=x: sess.run(["probabilities"], {"pixels": x}), repeats) * 1000
        result["latency_ms"][f"batch {batch}"] = row  # type: ignore[index]
        for name, ms in row.items():
            print(f"batch {batch:3d}  {name:20s} {ms:8.3f} ms   ({row['torch eager'] / ms:4.1f}x vs torch eager)")
    if args.support is not None:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "metactl", "adapt", "--support", str(args.support), "--steps", "5", "--out", f"{tmp}/a"]
            if args.run is not None:
                cmd += ["--from", str(args.run)]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            result["adapt_seconds_5w5s_5_steps"] = time.perf_counter() - t
        print(f"metactl adapt (5-way 5-shot, 5 steps, start-up included): {result['adapt_seconds_5w5s_5_steps']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
