"""Adaptation as ONNX graphs against ``metactl adapt`` (torch): time, graph sizes and install size, side by side.

For each run (an Omniglot image run, a text run on all-MiniLM-L6-v2) the run is exported once with
``export --adaptable``; then for supports of 5 × 1, 20 × 5 and 150 × 5 (ways × shots; held-out Omniglot
characters of ``images_evaluation``, or CLINC150 intents' training texts) the same support folder is adapted

- with onnxruntime (``metactl adapt --from ADAPTABLE_DIR``, torch-free): embed and adapt seconds, and the whole call;
- with torch (``metactl adapt --from RUN``): the whole call;
- in the web page (examples/web, headless Chromium through onnxruntime-web), with ``--page``: embed + adapt.

Two kinds of whole call: in this one process (``adapt_onnx`` / ``metactl.adapt``: torch keeps the text body it loaded
once in memory, onnxruntime opens its sessions at each call), and as a fresh ``metactl adapt`` process each (what a
user waits for: interpreter, imports, loading the model, the work, writing the export). Each figure is the median of
``--repeats`` calls, the two paths one after another, so their ratio is what the machine's load leaves.
The two heads are compared too (max |Δ|): the ONNX path must compute what torch does. ``--install-size`` makes
two fresh virtual environments (the torch-free client: onnxruntime, numpy, tokenizers, pillow; and the CPU torch
wheel alone) and reports their size on disk.

    python examples/benchmarks/adapt_onnx.py --image-run runs/omniglot-anil --text-run runs/intents-clinc150 \\
        --page --install-size --json examples/results/adapt-onnx.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
SIZES = ((5, 1), (20, 5), (150, 5))
METACTL = str(Path(sys.executable).parent / "metactl")


def omniglot_support(dest: Path, ways: int, shots: int, zip_path: Path) -> Path:
    """``ways`` held-out Omniglot characters (images_evaluation, in archive order), ``shots`` drawings each, as class folders."""
    with zipfile.ZipFile(zip_path) as z:
        by_char: dict[str, list[str]] = {}
        for name in sorted(n for n in z.namelist() if n.endswith(".png")):
            by_char.setdefault(str(Path(name).parent), []).append(name)
        for char in list(by_char)[:ways]:
            folder = dest / char.replace("/", "__")
            folder.mkdir(parents=True)
            for name in by_char[char][:shots]:
                (folder / Path(name).name).write_bytes(z.read(name))
    return dest


def clinc_support(dest: Path, ways: int, shots: int, data: Path) -> Path:
    """``ways`` CLINC150 intents (sorted), ``shots`` training texts each, as ``<intent>.txt``."""
    texts: dict[str, list[str]] = {}
    for text, label in json.loads(data.read_text(encoding="utf-8"))["train"]:
        texts.setdefault(label, []).append(text)
    dest.mkdir(parents=True)
    for label in sorted(texts)[:ways]:
        (dest / f"{label}.txt").write_text("\n".join(texts[label][:shots]) + "\n", encoding="utf-8")
    return dest


def _baked(export: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(export / "model.onnx")).graph.initializer if t.name in ("weight", "bias")}


def _page_support(modality: str, support: Path, size: int) -> dict[str, Any]:
    """The support folder as the page's test API takes it: one class id per example, and raw 0-255 pixels or texts."""
    from metactl.modalities.image import raw_pixels

    if modality == "text":
        files = sorted(support.glob("*.txt"))
        per = [[t for t in f.read_text(encoding="utf-8").splitlines() if t.strip()] for f in files]
        return {"labels": [i for i, ts in enumerate(per) for _ in ts], "texts": [t for ts in per for t in ts]}
    dirs = sorted(d for d in support.iterdir() if d.is_dir())
    per_dir = [sorted(d.glob("*.png")) for d in dirs]
    pixels = np.stack([raw_pixels(f, size) for fs in per_dir for f in fs]).astype(np.float32)
    return {"labels": [i for i, fs in enumerate(per_dir) for _ in fs], "pixels": pixels}


def measure_run(run: Path, modality: str, work: Path, repeats: int, page: bool) -> dict[str, Any]:
    from metactl.adaptable import export_adaptable
    from metactl.library import adapt as torch_adapt
    from metactl.runtime_adapt import adapt_onnx

    t0 = time.perf_counter()
    folder = export_adaptable(run, work / "adaptable").path
    export_seconds = time.perf_counter() - t0
    meta = json.loads((folder / "metactl.json").read_text(encoding="utf-8"))
    rows = []
    for ways, shots in SIZES:
        support = work / f"support-{ways}x{shots}"
        if modality == "image":
            omniglot_support(support, ways, shots, SHARED / "datasets" / "omniglot" / "images_evaluation.zip")
        else:
            clinc_support(support, ways, shots, SHARED / "datasets" / "intents" / "clinc150" / "data_full.json")
        onnx_calls, torch_calls = [], []
        for r in range(repeats):
            onnx_calls.append(adapt_onnx(folder, support, work / f"onnx-{ways}x{shots}", force=True))
            t = time.perf_counter()
            ref = torch_adapt(support, run, out=work / f"torch-{ways}x{shots}", force=True, quiet=True)
            torch_calls.append(time.perf_counter() - t)
            print(f"  {modality} {ways}x{shots} repeat {r + 1}: onnx {onnx_calls[-1].seconds['total']:.2f} s, torch {torch_calls[-1]:.2f} s", flush=True)
        cli = {kind: [] for kind in ("onnx", "torch")}
        for _ in range(repeats):  # what a user waits for: a fresh process each (python, imports, model loading, the work)
            for kind, source in (("onnx", folder), ("torch", run)):
                t = time.perf_counter()
                subprocess.run([METACTL, "adapt", "--from", str(source), "--support", str(support), "--out", str(work / f"cli-{kind}"), "--force", "--json"],
                               check=True, capture_output=True)  # fmt: skip
                cli[kind].append(time.perf_counter() - t)
        expected, got = load_file(str(ref.path / "model.safetensors")), _baked(onnx_calls[-1].path)
        row: dict[str, Any] = {
            "ways": ways, "shots": shots, "examples": ways * shots,
            "onnx_embed_seconds": statistics.median(c.seconds["embed"] for c in onnx_calls),
            "onnx_adapt_seconds": statistics.median(c.seconds["adapt"] for c in onnx_calls),
            "onnx_call_seconds": statistics.median(c.seconds["total"] for c in onnx_calls),
            "torch_call_seconds": statistics.median(torch_calls),
            "head_max_abs_diff": max(float(np.abs(got["weight"] - expected["head.weight"]).max()), float(np.abs(got["bias"] - expected["head.bias"]).max())),
        }  # fmt: skip
        row["torch_over_onnx"] = row["torch_call_seconds"] / row["onnx_call_seconds"]
        row["onnx_cli_seconds"], row["torch_cli_seconds"] = statistics.median(cli["onnx"]), statistics.median(cli["torch"])
        row["torch_cli_over_onnx_cli"] = row["torch_cli_seconds"] / row["onnx_cli_seconds"]
        if page:
            sys.path.insert(0, str(ROOT / "tests"))
            from web_support import page_adapt_ms  # type: ignore[import-not-found]

            given = _page_support(modality, support, int(meta["preprocessing"].get("size", 0)))
            timing = page_adapt_ms(folder, given.pop("labels"), repeats=repeats, **given)
            row["page_embed_adapt_seconds"] = timing.total_ms / 1000
            row["page_first_call_seconds"] = timing.first_total_ms / 1000
            row["page_load_seconds"] = timing.load_ms / 1000
        rows.append(row)
    sizes = {name: (folder / name).stat().st_size for name in ("embed.onnx", "adapt.onnx", "classify.onnx")}
    return {
        "run": str(run), "algorithm": meta["algorithm"], "modality": modality, "adaptation": meta["adaptation"],
        "export_seconds": export_seconds, "graph_bytes": sizes, "rows": rows,
    }  # fmt: skip


def venv_size(packages: list[str], work: Path, name: str) -> dict[str, Any]:
    """Megabytes on disk of a fresh venv's site-packages after ``pip install PACKAGES`` (pip itself excluded)."""
    env = work / name
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = env / "bin" / "pip"
    base = _du(next((env / "lib").glob("python*/site-packages")))
    subprocess.run([str(pip), "install", "-q", *packages], check=True)
    site = next((env / "lib").glob("python*/site-packages"))
    return {"packages": packages, "megabytes": (_du(site) - base) / 1e6}


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-run", type=Path)
    ap.add_argument("--text-run", type=Path, action="append", default=[])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--page", action="store_true", help="also time embed + adapt in the web page (headless Chromium)")
    ap.add_argument("--install-size", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "examples" / "results" / "adapt-onnx.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    out: dict[str, Any] = {
        "command": "python examples/benchmarks/adapt_onnx.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__, "load_average_1min_start": os.getloadavg()[0]},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        todo = ([("image", args.image_run)] if args.image_run else []) + [("text", r) for r in args.text_run]
        for i, (modality, run) in enumerate(todo):
            print(f"{modality}: {run}", flush=True)
            (work / str(i)).mkdir()
            out["runs"].append(measure_run(run, modality, work / str(i), args.repeats, args.page))
        if args.install_size:
            client = venv_size(["onnxruntime", "numpy", "tokenizers", "pillow"], work, "client")
            torch_only = venv_size(["torch==2.13.0"], work, "torch")
            out["install"] = {"torch_free_client": client, "torch_cpu": torch_only, "ratio": torch_only["megabytes"] / client["megabytes"]}
    out["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
