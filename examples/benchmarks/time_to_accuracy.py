"""Time to reach a target accuracy on held-out Omniglot characters, per algorithm (5-way 1-shot).

    python examples/benchmarks/time_to_accuracy.py --out runs/tta --json examples/results/time-to-95.json \\
        --plot examples/results/time-to-95.png [--target 0.95] [--episodes 300] [--only maml,anil]

Each setting is meta-trained by ``metactl meta-train`` alone on the machine (``--threads``, all cores
by default; one run at a time so that no two compete for the cores), for at most its minutes, with
``--snapshot-every`` keeping θ every few steps and no validation inside the loop. Every snapshot is
then evaluated with ``metactl``'s own evaluation on the same episodes of the protocol's *test*
characters (Lake: the 659 ``images_evaluation`` characters), adapting for the run's test-time
inner steps. The time to the target is the training time (setup excluded) of the first snapshot
whose mean accuracy reaches it; the curve is reported too, with 95 % intervals.

The settings are the ``omniglot-5way-1shot`` preset's (meta-batch 8, rotations, learned per-layer
α) per algorithm, as in ``omniglot_algorithms.sh``; ``maml-fp32`` repeats MAML without bf16 so that
the two runs' accuracy can be compared at equal steps (does bf16 lose accuracy?).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

OMNI = os.environ.get("OMNIGLOT", "../shared/datasets/omniglot")
COMMON = ["--data", f"omniglot:{OMNI}", "--protocol", "lake", "--rotations", "--ways", "5", "--shots", "1", "--meta-batch", "8",
          "--steps", "1000000", "--eval-every", "0", "--force"]  # fmt: skip
# name: (minutes, snapshot every N steps, extra flags)
# fmt: off
SETTINGS: dict[str, tuple[float, int, list[str]]] = {
    "maml": (8, 200, ["--algo", "maml", "--inner-lr", "0.4", "--precision", "bf16"]),
    "anil": (8, 200, ["--algo", "anil", "--inner-lr", "0.4", "--inner-steps", "3", "--precision", "bf16"]),
    "metasgd": (8, 200, ["--algo", "metasgd", "--inner-lr", "0.4", "--precision", "bf16"]),
    "fomaml": (5, 250, ["--algo", "fomaml", "--inner-lr", "0.4", "--precision", "bf16"]),
    "imaml": (5, 100, ["--algo", "imaml", "--inner-lr", "0.1", "--inner-steps", "5", "--test-inner-steps", "5", "--precision", "bf16",
                      "--config", "{out}/imaml.toml"]),
    "reptile": (5, 50, ["--algo", "reptile", "--inner-lr", "0.001", "--inner-steps", "5", "--test-inner-steps", "10", "--no-learn-inner-lr",
                        "--precision", "bf16", "--config", "{out}/reptile.toml"]),
    "pretrain": (5, 500, ["--algo", "pretrain", "--inner-lr", "0.1", "--test-inner-steps", "10", "--precision", "bf16"]),
    "protonet": (5, 500, ["--algo", "protonet", "--test-inner-steps", "1", "--precision", "bf16"]),
    "maml-fp32": (4, 200, ["--algo", "maml", "--inner-lr", "0.4"]),
}
# fmt: on
TOMLS = {"imaml.toml": "algo_options = {lam = 1.0, cg_steps = 5, cg_damping = 1.0}\n", "reptile.toml": 'algo_options = {inner_optimizer = "adam"}\n'}


def train(name: str, out: Path, threads: int | None, scale: float, minutes_override: float | None = None) -> Path:
    minutes, every, flags = SETTINGS[name]
    minutes = minutes_override or minutes
    run = out / name
    cmd = ["metactl", "meta-train", *[f.format(out=out) for f in flags], *COMMON, "--time-budget", f"{minutes * scale:g}",
           "--snapshot-every", str(every), "--out", str(run)]  # fmt: skip
    if threads:
        cmd += ["--threads", str(threads)]
    print("$", " ".join(cmd), flush=True)
    with (out / f"{name}.log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return run


def curve(run: Path, episodes: int, seed: int) -> list[dict]:
    from metactl.config import EvaluateOptions
    from metactl.evaluate import evaluate_runs
    from metactl.runs import SNAPSHOTS, read_meta

    snaps = sorted((run / SNAPSHOTS).iterdir()) if (run / SNAPSHOTS).is_dir() else []
    if not snaps:
        sys.exit(f"{run}: no snapshots (the run was shorter than its --snapshot-every)")
    points = []
    for snap, result in zip(snaps, evaluate_runs(snaps, EvaluateOptions(episodes=episodes, seed=seed)), strict=True):
        meta, last = read_meta(snap), result["steps"][-1]
        points.append({"snapshot": snap.name, "steps": meta["steps_done"], "seconds": meta["seconds"], "inner_steps": last["step"],
                       "mean": last["mean"], "ci95": last["ci95"], "by_inner_step": [round(s["mean"], 4) for s in result["steps"]]})  # fmt: skip
    return points


def plot(results: dict[str, dict], target: float, path: Path) -> None:
    import io

    from metactl.plot import check_plot_target
    from metactl.runs import atomic_write_bytes

    plt = check_plot_target(path)
    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=120)
    for name, r in results.items():
        x = [p["seconds"] / 60 for p in r["curve"]]
        m = [100 * p["mean"] for p in r["curve"]]
        c = [100 * p["ci95"] for p in r["curve"]]
        (line,) = ax.plot(x, m, marker=".", label=name)
        ax.fill_between(x, [a - b for a, b in zip(m, c, strict=True)], [a + b for a, b in zip(m, c, strict=True)], color=line.get_color(), alpha=0.15)
    ax.axhline(100 * target, color="k", lw=0.8, ls="--")
    ax.set_xlabel("training time (minutes, this machine)")
    ax.set_ylabel("5-way 1-shot accuracy, held-out characters (%)")
    ax.set_ylim(60, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/time-to-accuracy"))
    ap.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings: " + ", ".join(SETTINGS))
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--episodes", type=int, default=200, help="test episodes per snapshot")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=None, help="one time budget for every setting (default: each setting's own)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every time budget (e.g. 0.05 for a smoke run)")
    ap.add_argument("--skip-training", action="store_true", help="evaluate the snapshots already in --out")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--merge", type=Path, help="an earlier --json whose settings are kept (table, plot, JSON) unless rerun")
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        sys.exit(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    if "protonet" in names and subprocess.run(["metactl", "algorithms"], capture_output=True, text=True).stdout.find("protonet") < 0:
        print("protonet plugin not installed (pip install -e plugins/metactl-protonet): skipped")
        names.remove("protonet")
    args.out.mkdir(parents=True, exist_ok=True)
    for file, text in TOMLS.items():
        (args.out / file).write_text(text)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results: dict[str, dict] = {}
    if args.merge:
        import json

        results = {k: v for k, v in json.loads(args.merge.read_text())["results"].items() if k not in names}
    for name in names:
        t = time.perf_counter()
        run = args.out / name if args.skip_training else train(name, args.out, args.threads, args.scale, args.minutes)
        trained = time.perf_counter() - t
        points = curve(run, args.episodes, seed=0)
        hit = next((p for p in points if p["mean"] >= args.target), None)
        best = max(points, key=lambda p: p["mean"])
        results[name] = {"budget_minutes": (args.minutes or SETTINGS[name][0]) * args.scale, "episodes": args.episodes,
                         "time_to_target_seconds": hit["seconds"] if hit else None,
                         "at_target": hit, "best": best, "curve": points}  # fmt: skip
        reached = f"{hit['seconds'] / 60:.1f} min ({hit['steps']} steps, {100 * hit['mean']:.1f} ± {100 * hit['ci95']:.1f} %)" if hit else "not reached"
        print(f"{name}: {reached}; best {100 * best['mean']:.1f} ± {100 * best['ci95']:.1f} % at {best['seconds'] / 60:.1f} min; "
              f"wall {trained / 60:.1f} min training + {(time.perf_counter() - t - trained) / 60:.1f} min evaluating", flush=True)  # fmt: skip
        if args.json:  # after every setting, so a long benchmark leaves its figures behind as it goes
            from metactl.runs import atomic_write_json

            atomic_write_json(args.json, {"target": args.target, "episodes": args.episodes, "ways": 5, "shots": 1, "protocol": "lake",
                                          "threads": args.threads, "command": " ".join(sys.argv), "results": results})  # fmt: skip
    print(f"\n| setting | time to {100 * args.target:.0f} % | steps | accuracy then | best (at min) |\n|---|---|---|---|---|")
    for name, r in results.items():
        h, b = r["at_target"], r["best"]
        when = f"{h['seconds'] / 60:.1f} min" if h else f"> {r['budget_minutes']:g} min"
        then = f"{100 * h['mean']:.1f} ± {100 * h['ci95']:.1f}" if h else "–"
        print(f"| {name} | {when} | {h['steps'] if h else '–'} | {then} | {100 * b['mean']:.1f} ± {100 * b['ci95']:.1f} ({b['seconds'] / 60:.1f}) |")
    if args.plot:
        plot(results, args.target, args.plot)


if __name__ == "__main__":
    main()
