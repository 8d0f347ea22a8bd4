"""Deployment check over many held-out episodes: adapt -> export (float + int8) -> onnxruntime.

    python examples/benchmarks/deploy_check.py --run runs/NAME \
        --zip ../shared/datasets/omniglot/images_evaluation.zip [--episodes 10] [--ways 5] [--shots 1] [--queries 19]

For each episode it writes a support and a query folder of PNGs exactly as they come in the zip,
runs the real `adapt` and `export --quantize int8` library calls, then scores, on the query files:
torch's accuracy, whether a plain onnxruntime client (decode + resize only) predicts the same labels as
torch, the batch-independence gap of the ONNX model, and int8-vs-float agreement.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--zip", type=Path, required=True)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--queries", type=int, default=19)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from metactl.adapt import adapt, load_adapted, to_input
    from metactl.data.support import read_labeled_folder
    from metactl.export import export
    from metactl.runtime import raw_pixels

    rng = random.Random(args.seed)
    z = zipfile.ZipFile(args.zip)
    classes: dict[str, list[str]] = defaultdict(list)
    for name in z.namelist():
        if name.endswith(".png"):
            classes[name.rsplit("/", 1)[0]].append(name)
    rows = []
    for e in range(args.episodes):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for cls in rng.sample(sorted(classes), args.ways):
                files = rng.sample(sorted(classes[cls]), args.shots + args.queries)
                for sub, chosen in (("support", files[: args.shots]), ("query", files[args.shots :])):
                    d = root / sub / cls.replace("/", "_")
                    d.mkdir(parents=True, exist_ok=True)
                    for f in chosen:
                        (d / f.rsplit("/", 1)[1]).write_bytes(z.read(f))
            res = adapt(root / "support", args.run, None, root / "query", root / "adapted")
            export(root / "adapted", root / "export", "int8")
            meta, model = load_adapted(root / "adapted")
            q = read_labeled_folder(root / "query", meta["preprocessing"])
            with torch.no_grad():
                torch_pred = model(to_input(q.images)).argmax(-1).numpy()
            raw = np.stack([raw_pixels(Path(f), 28) for f in q.files]).astype(np.float32)[:, None]
            f32 = ort.InferenceSession(str(root / "export" / "model.onnx"))
            i8 = ort.InferenceSession(str(root / "export" / "model.int8.onnx"))
            p = f32.run(None, {"pixels": raw})[0]
            alone = np.concatenate([f32.run(None, {"pixels": raw[i : i + 1]})[0] for i in range(len(raw))])
            p8 = i8.run(None, {"pixels": raw})[0]
            rows.append(
                {
                    "episode": e,
                    "torch_accuracy": float((torch_pred == q.targets).mean()),
                    "client_same_as_torch": float((p.argmax(-1) == torch_pred).mean()),
                    "batch_independence_max_diff": float(np.abs(p - alone).max()),
                    "int8_agreement": float((p8.argmax(-1) == p.argmax(-1)).mean()),
                    "adapt_steps": len(res.support_losses) - 1,
                }
            )
            print(json.dumps(rows[-1]))
    keys = ("torch_accuracy", "client_same_as_torch", "batch_independence_max_diff", "int8_agreement")
    summary = {k: (max if k.startswith("batch") else np.mean)([r[k] for r in rows]) for k in keys}
    summary = {k: float(v) for k, v in summary.items()}
    summary["queries"] = int(args.episodes * args.ways * args.queries)
    print("summary", json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"episodes": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
