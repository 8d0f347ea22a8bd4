"""Regenerate the results tables in docs/*.md from examples/results/*.json.

    python examples/benchmarks/results_docs.py            # rewrite the tables in docs/*.md
    python examples/benchmarks/results_docs.py --check    # exit 1 if a table is out of date

Each table sits in a docs page between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``;
everything outside the markers is hand-written and left alone. Every measured number in a table
comes from a JSON file written by the command the page gives next to it (``metactl evaluate --json``
or one of the scripts in examples/benchmarks/); what the script adds is only labels and the
published reference figures of the papers. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"(<!-- results:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)

Json = dict[str, Any]
Builder = Callable[[Path], list[str]]


# ---------------------------------------------------------------------------------------------
# formatting helpers


def load(results: Path, name: str) -> Json:
    return json.loads((results / name).read_text())


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def header(*cells: str) -> list[str]:
    return [row(*cells), "|" + "---|" * len(cells)]


def pct(mean: float, ci: float | None = None) -> str:
    return f"{100 * mean:.1f}" if ci is None else f"{100 * mean:.1f} ± {100 * ci:.1f}"


def mse(step: Json) -> str:
    return f"{step['mean']:.2f} ± {step['ci95']:.2f} [{step['median']:.2f}]"


def sci(x: float) -> str:
    """One significant digit, ``2e-7`` style; 0 stays 0."""
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def step_of(run: Json, k: int) -> Json:
    return next(s for s in run["steps"] if s["step"] == k)


def final(run: Json) -> Json:
    return run["steps"][-1]


def best(run: Json) -> Json:
    return max(run["steps"], key=lambda s: s["mean"])


def adapts(run: Json) -> bool:
    """Whether the accuracy depends on the number of steps (not so for prototype heads)."""
    return len({round(s["mean"], 6) for s in run["steps"]}) > 1


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


# ---------------------------------------------------------------------------------------------
# docs/results.md

PRESETS = {  # file stem -> (setting, published MAML / best of the MAML family)
    "preset-5w1s": ("5-way 1-shot", "98.7 / 99.5"),
    "preset-20w1s": ("20-way 1-shot", "95.8 / 97.7"),
    "preset-5w5s": ("5-way 5-shot", "99.9 / 99.9"),
    "preset-20w5s": ("20-way 5-shot", "98.9 / 99.3"),
}


def presets(results: Path) -> list[str]:
    out = header("setting", "algorithm", "test episodes", "after 1 step", "**after the preset's test steps** (steps)", "published (MAML / best of the family)")
    for stem, (setting, published) in PRESETS.items():
        run = load(results, f"{stem}.json")["runs"][0]
        last = final(run)
        one = step_of(run, 1)
        tested = f"**{pct(last['mean'], last['ci95'])}** ({last['step']})"
        out.append(row(setting, run["algorithm"], run["episodes"], pct(one["mean"], one["ci95"]), tested, published))
    return out


ONESHOT_LABELS = {
    "omniglot-20w1s": "20-way 1-shot preset",
    "omniglot-5w1s": "5-way 1-shot preset, evaluated 20-way",
}


def oneshot(results: Path) -> list[str]:
    data = load(results, "oneshot-runs.json")
    ks = [1, 2, 5, 10]
    out = header("run", "head", *(f"error after {k} step{'s' if k > 1 else ''}" for k in ks))
    for run in data["runs"]:
        name = Path(run["run"]).name
        cells = [f"{100 * (1 - step_of(run, k)['mean']):.1f} ± {100 * step_of(run, k)['ci95']:.1f} %" for k in ks]
        out.append(row(ONESHOT_LABELS.get(name, name), run["head"], *cells))
    return out


ALGO_FILES = {setting: f"algorithms-4min-{setting}.json" for setting in ("5w1s", "5w5s", "20w1s", "20w5s")}
ALGO_LABELS = {
    "anil": "anil, 3 inner steps",
    "imaml": "imaml, 5 inner steps",
    "reptile": "reptile, 5 Adam steps",
    "pretrain": "**pretrain** baseline",
    "protonet": "protonet plugin",
}
ALGO_PUBLISHED = {  # 5w1s / 5w5s / 20w1s / 20w5s as published for each method
    "maml": "98.7 / 99.9 / 95.8 / 98.9",
    "fomaml": "98.3 / 99.2 / 89.4 / 97.9",
    "metasgd": "99.5 / 99.9 / 95.9 / 99.0",
    "anil": "– / – / 96.2 / 98.0",
    "imaml": "99.5 / 99.7 / 96.2 / 99.1",
    "reptile": "95.4 / 98.9 / 88.1 / 96.7",
    "pretrain": "–",
    "protonet": "(Snell et al.: 98.8 / 99.7 / 96.0 / 98.9)",
}


def algorithm_grid(results: Path, pick: Callable[[Json], Json], published: bool) -> list[str]:
    columns = {col: {r["algorithm"]: r for r in load(results, f)["runs"]} for col, f in ALGO_FILES.items()}
    order = list(next(iter(columns.values())))
    top = {col: max(pick(r)["mean"] for r in runs.values()) for col, runs in columns.items()}
    extra = ["published 5w1s / 5w5s / 20w1s / 20w5s"] if published else []
    out = header("algorithm", *columns, *extra)
    for algo in order:
        cells = []
        for col, runs in columns.items():
            run = runs.get(algo)
            if run is None:
                cells.append("–")
                continue
            s = pick(run)
            text = pct(s["mean"], s["ci95"])
            if s["mean"] == top[col]:
                text = f"**{text}**"
            cells.append(f"{text} ({s['step']})" if adapts(run) else text)
        out.append(row(ALGO_LABELS.get(algo, algo), *cells, *([ALGO_PUBLISHED.get(algo, "–")] if published else [])))
    return out


def algorithms_fixed(results: Path) -> list[str]:
    return algorithm_grid(results, final, published=True)


def algorithms_best(results: Path) -> list[str]:
    return algorithm_grid(results, best, published=False)


def meta_vs_pretrain(results: Path) -> list[str]:
    data = load(results, "meta-vs-pretrain.json")
    ks = [0, 1, 2, 3, 5, 10]
    out = header("θ", *(f"{k} step{'s' if k != 1 else ''}" for k in ks))
    for run in data["runs"]:
        out.append(row(run["algorithm"], *(pct(step_of(run, k)["mean"], step_of(run, k)["ci95"]) for k in ks)))
    return out


def pipeline(results: Path) -> list[str]:
    """Omniglot: the presets (meta-learned from scratch) against pre-train -> meta-train and the
    standard practice on the pre-trained body, on the same test episodes (600, seed 0)."""
    settings = {
        "5-way 1-shot": ("preset-5w1s.json", "pipeline-5w1s.json", "pipe-5w1s"),
        "20-way 1-shot": ("preset-20w1s.json", "pipeline-20w1s.json", "pipe-20w1s"),
    }
    cells: dict[str, list[str]] = {}
    labels = {
        "preset": "**maml preset** from a random init, 30 min",
        "pipe": "pre-train 10 min → maml 20 min (`--backbone pre --adapt all --train-body`)",
        "centroid": "pre-trained body (frozen) + nearest centroid",
        "probe": "pre-trained body (frozen) + logistic-regression probe",
        "fine-tuning": "pre-trained body + zero head, all layers fine-tuned, α and steps chosen on validation characters",
    }
    for preset_file, pipe_file, pipe_name in settings.values():
        preset = load(results, preset_file)["runs"][0]
        data = load(results, pipe_file)
        test = data["test"]
        last = final(preset)
        cells.setdefault("preset", []).append(f"{pct(last['mean'], last['ci95'])} ({last['step']})")
        run = test[pipe_name]
        outer = data["training"][pipe_name]["outer_steps"]
        cells.setdefault("pipe", []).append(f"{pct(final(run)['mean'], final(run)['ci95'])} ({final(run)['step']}) [{outer} outer steps]")
        for key in ("centroid", "probe"):
            cells.setdefault(key, []).append(pct(step_of(test[key], 1)["mean"], step_of(test[key], 1)["ci95"]))
        choice = data["fine_tuning_choice"]
        ft = final(test["fine-tuning"])
        cells.setdefault("fine-tuning", []).append(f"{pct(ft['mean'], ft['ci95'])} ({ft['step']}) [α = {choice['inner_lr']:g}]")
    out = header("θ and adaptation", *settings)
    for key, label in labels.items():
        out.append(row(label, *cells[key]))
    return out


def clinc_contrast(results: Path) -> list[str]:
    """MiniLM on CLINC150's held-out domains: the meta-learned heads against the standard practice on the frozen body."""
    ft = load(results, "clinc-domains-finetune.json")
    evs = {k: load(results, f"clinc-domains-5w{k}s.json")["runs"] for k in (1, 5)}
    proto = {k: load(results, f"clinc-domains-protomaml-5w{k}s.json")["runs"][0] for k in (1, 5)}

    def by_name(k: int, name: str) -> Json:
        return next(r for r in evs[k] if Path(r["run"]).name == name)

    rows = [
        ("nearest centroid on frozen MiniLM", lambda k: step_of(by_name(k, "centroid"), 1)),
        ("logistic-regression probe on frozen MiniLM", lambda k: step_of(by_name(k, "probe"), 1)),
        ("pre-trained head (7 domains' intents), zero 5-way head fine-tuned, α and steps chosen on `work`", lambda k: final(ft[f"5w{k}s"]["test"])),
        ("**maml**, meta-learned head + α (10 steps)", lambda k: final(by_name(k, "head"))),
        ("**protomaml**, prototype head + meta-learned α (5 steps)", lambda k: final(proto[k])),
    ]
    out = header("θ and adaptation", "5-way 1-shot", "5-way 5-shot")
    for label, pick in rows:
        out.append(row(label, *(pct(pick(k)["mean"], pick(k)["ci95"]) for k in (1, 5))))
    return out


SINUSOID_LABELS = {
    "sinusoid-A": "**preset** `sinusoid.toml`: maml, α = 0.01 fixed, 5 inner steps trained with the MAML++ multi-step loss",
    "sinusoid-maml-fixed": "maml as in the paper: α = 0.01 fixed, 1 inner step (`--inner-steps 1 --no-learn-inner-lr`)",
    "sinusoid-pretrain": "**pretrain** baseline (α = 0.01, 1 step, the paper's setting)",
}


def sinusoid(results: Path) -> list[str]:
    data = load(results, "sinusoid.json")
    ks = [1, 5, 10]
    out = header("run", *(f"{k} step{'s' if k > 1 else ''}" for k in ks))
    for run in data["runs"]:
        name = Path(run["run"]).name
        out.append(row(SINUSOID_LABELS.get(name, f"{run['algorithm']} ({name})"), *(mse(step_of(run, k)) for k in ks)))
    out.append(row("published (Finn et al. 2017): MAML / pre-training", "0.67 / 2.41", "0.38 / 2.23", "0.35 / 2.19"))
    return out


CLINC_LABELS = {  # run name in clinc-domains-runs.json -> label
    "centroid": "**nearest centroid** on frozen MiniLM (baseline)",
    "probe": "logistic-regression probe on frozen MiniLM (baseline)",
    "head": "maml, head on frozen MiniLM",
    "lora": "maml, LoRA rank {lora_rank} + head",
}
CLINC_SETTINGS = {"5-way 1-shot": "5w1s", "5-way 5-shot": "5w5s"}


def clinc_runs(results: Path) -> dict[str, tuple[Json, dict[str, Json]]]:
    """Run name -> (its training summary, setting -> its evaluation), in CLINC_LABELS order."""
    info = load(results, "clinc-domains-runs.json")["runs"]
    evals: dict[str, dict[str, Json]] = {name: {} for name in info}
    for setting, tag in CLINC_SETTINGS.items():
        for name in (f"clinc-domains-{tag}.json", f"clinc-domains-lora-{tag}.json"):
            for run in load(results, name)["runs"]:
                evals[Path(run["run"]).name][setting] = run
    return {name: (info[name], evals[name]) for name in CLINC_LABELS if name in info}


def clinc_label(name: str, info: Json) -> str:
    return CLINC_LABELS[name].format(**info)


def clinc_own_steps(info: Json) -> int:
    """The run's own test-time steps: adapt_steps (chosen on the validation domain), else its test steps."""
    return int(info["adapt_steps"] or info["test_inner_steps"])


def clinc_domains(results: Path) -> list[str]:
    data = clinc_runs(results)
    bar = {s: step_of(ev[s], clinc_own_steps(info))["mean"] for name, (info, ev) in data.items() if name == "centroid" for s in CLINC_SETTINGS}
    out = header("run", "training time (outer steps)", *(f"{s}: accuracy (steps) [vs centroid]" for s in CLINC_SETTINGS), "test episodes (1-shot / 5-shot)")
    for name, (info, ev) in data.items():
        k = clinc_own_steps(info)
        trained = "none (`--steps 1`)" if info["algorithm"] in ("centroid", "probe") else f"{minutes(info['train_seconds'])} ({info['outer_steps']})"
        cells = []
        for s in CLINC_SETTINGS:
            st = step_of(ev[s], k)
            steps_matter = len({round(x["mean"], 6) for x in ev[s]["steps"][1:]}) > 1  # closed-form heads: the same after any step
            text = pct(st["mean"], st["ci95"]) + (f" ({k})" if steps_matter else "")
            if bar and name != "centroid":
                text += f" [{100 * (st['mean'] - bar[s]):+.1f}]"
            cells.append(text)
        out.append(row(clinc_label(name, info), trained, *cells, " / ".join(str(ev[s]["episodes"]) for s in CLINC_SETTINGS)))
    return out


def clinc_domains_curve(results: Path) -> list[str]:
    data = clinc_runs(results)
    ks = [0, 1, 2, 5, 10]
    out = header("run", "setting", *(f"{k} step{'s' if k != 1 else ''}" for k in ks))
    for name, (info, ev) in data.items():
        for s in CLINC_SETTINGS:
            steps = {st["step"]: st for st in ev[s]["steps"]}
            out.append(row(clinc_label(name, info), s, *(pct(steps[k]["mean"], steps[k]["ci95"]) if k in steps else "–" for k in ks)))
    return out


# ---------------------------------------------------------------------------------------------
# docs/speed.md

TTA_LABELS = {
    "maml": "maml (bf16)",
    "maml-fp32": "maml (fp32)",
    "pretrain": "pretrain + fine-tuning (10 steps)",
    "protonet": "protonet (plugin; not a learned initialization)",
}
TTA_ORDER = ["maml", "maml-fp32", "fomaml", "metasgd", "anil", "imaml", "reptile", "pretrain", "protonet"]


def nearest(curve: list[Json], seconds: float) -> Json:
    return min(curve, key=lambda p: abs(p["seconds"] - seconds))


def time_to_95(results: Path) -> list[str]:
    data = load(results, "time-to-95.json")
    target = f"{100 * data['target']:.0f} %"
    runs = data["results"]
    order = [k for k in TTA_ORDER if k in runs] + [k for k in runs if k not in TTA_ORDER]
    out = header("algorithm", f"time to {target}", "accuracy at ~2.5 / ~4.5 min", "best within budget")
    for name in order:
        r = runs[name]
        t = r["time_to_target_seconds"]
        reached = f"**{minutes(t)}**" if t is not None else f"not reached in {r['budget_minutes']:g} min"
        early, late = nearest(r["curve"], 150), nearest(r["curve"], 270)
        at = f"{pct(early['mean'])} ({minutes(early['seconds'])}) / {pct(late['mean'])} ({minutes(late['seconds'])})"
        b = r["best"]
        out.append(row(TTA_LABELS.get(name, name), reached, at, f"{pct(b['mean'], b['ci95'])} % at {minutes(b['seconds'])}"))
    return out


def bf16_vs_fp32(results: Path) -> list[str]:
    runs = load(results, "time-to-95.json")["results"]
    bf16 = {p["steps"]: p for p in runs["maml"]["curve"]}
    fp32 = {p["steps"]: p for p in runs["maml-fp32"]["curve"]}
    common = sorted(set(bf16) & set(fp32))
    out = header("outer steps", "maml bf16: accuracy (training time)", "maml fp32: accuracy (training time)", "bf16 − fp32")
    for k in common:
        a, b = bf16[k], fp32[k]
        cells = [f"{pct(p['mean'], p['ci95'])} ({minutes(p['seconds'])})" for p in (a, b)]
        out.append(row(k, *cells, f"{100 * (a['mean'] - b['mean']):+.1f}"))
    mean_diff = sum(bf16[k]["mean"] - fp32[k]["mean"] for k in common) / len(common)
    out.append(row("mean", "", "", f"{100 * mean_diff:+.1f}"))
    return out


def throughput_table(results: Path, name: str) -> list[str]:
    data = load(results, name)

    def cell(r: Json, impl: str) -> str:
        m = r.get(impl)
        return f"{m['seconds']:.2f} s, {m['peak_mb']:.0f} MB" if m else "–"

    out = header("algorithm (inner steps)", "metactl fp32", "metactl `--precision bf16`", "hand-written loop", "higher", "fp32 / bf16 speed-up vs hand")
    for r in data["rows"]:
        hand = r["hand"]["seconds"]
        speedup = f"{hand / r['metactl']['seconds']:.2f}× / {hand / r['metactl-bf16']['seconds']:.2f}×"
        out.append(row(f"{r['algorithm']} ({r['inner_steps']})", cell(r, "metactl"), cell(r, "metactl-bf16"), cell(r, "hand"), cell(r, "higher"), speedup))
    return out


def throughput(results: Path) -> list[str]:
    return throughput_table(results, "throughput.json")


def throughput_rerun(results: Path) -> list[str]:
    return throughput_table(results, "throughput-maml-fomaml.json")


VARIANT_NOTES = {
    "fp32/nchw/intra-op": " (baseline)",
    "fp32/channels-last/task-threads": " (**default**)",
    "bf16/nchw/task-threads": " (**`--precision bf16`**)",
}
LAYOUT = {"nchw": "NCHW", "channels-last": "channels-last"}
PARALLEL = {"intra-op": "intra-op threads", "task-threads": "task threads"}


def speed_options(results: Path) -> list[str]:
    data = load(results, "speed-options.json")["rows"]
    algos = list(data)
    out = header("variant", *(f"{a} (1)" for a in algos), f"\\|Δg\\|/\\|g\\| ({algos[0]})")
    for variant in data[algos[0]]:
        precision, layout, parallel = variant.split("/")
        if precision == "bf16" and layout == "channels-last":
            continue  # channels-last applies to float32 only: these rows repeat the NCHW ones
        label = f"{precision}, {LAYOUT[layout] if precision == 'fp32' else 'NCHW'}, {PARALLEL[parallel]}{VARIANT_NOTES.get(variant, '')}"
        cells = []
        for a in algos:
            v = data[a][variant]
            cells.append(f"{v['seconds']:.2f} s" + ("" if v["speedup"] == 1.0 else f" ({v['speedup']:.2f}×)"))
        out.append(row(label, *cells, sci(data[algos[0]][variant]["grad_rel_diff"])))
    return out


PROFILE_GROUPS = [  # (row label, operator groups of profile_step.py)
    ("convolution backward", ["conv backward"]),
    ("other backward (BatchNorm backward, …)", ["other backward"]),
    ("convolution forward", ["conv forward"]),
    ("max-pool (forward + backward)", ["pooling"]),
    ("element-wise, copies, ReLU, BatchNorm forward, loss, other", ["element-wise", "allocation / copies", "relu", "batch-norm", "linear / loss", "other"]),
    ("outside operators", ["outside operators"]),
]


def profile_step(results: Path) -> list[str]:
    data = load(results, "profile-step.json")["results"]
    out = header("share of a meta-step (profiled s/step)", *(f"{r['algo']} {r['precision']} ({r['seconds_per_step']:.2f})" for r in data))
    for label, groups in PROFILE_GROUPS:
        out.append(row(label, *(f"{100 * sum(r['groups_seconds'].get(g, 0.0) for g in groups) / r['seconds_per_step']:.0f} %" for r in data)))
    out.append(row("convolution GFLOP per step / achieved GFLOP/s", *(f"{r['conv_gflop']:.0f} / {r['conv_gflops_per_s']:.0f}" for r in data)))
    return out


MEMORY_FILES = {  # column -> (file, algorithms the option applies to; None = all)
    "default (2 task threads)": ("memory-inner-steps.json", None),
    "`--checkpoint-inner`": ("memory-inner-steps-checkpoint.json", {"maml"}),
    "`--task-threads 1`": ("memory-inner-steps-1thread.json", None),
}
NOT_APPLIED = {"fomaml": "(ignored: first order)", "imaml": "(not applicable)"}


def memory(results: Path) -> list[str]:
    cols = {label: (load(results, f)["rows"], only) for label, (f, only) in MEMORY_FILES.items()}
    first = next(iter(cols.values()))[0]
    algos = list(dict.fromkeys(k.split("@")[0] for k in first))
    algos.sort(key=lambda a: ["maml", "fomaml", "imaml"].index(a) if a in ("maml", "fomaml", "imaml") else 99)
    steps = sorted({int(k.split("@")[1]) for k in first})
    out = header(f"inner steps {' / '.join(map(str, steps))}", *cols)
    for algo in algos:
        for metric, unit, fmt in (("peak_mb", "peak MB", "{:.0f}"), ("seconds", "s/step", "{:.2f}")):
            cells = []
            for rows, only in cols.values():
                if only is not None and algo not in only:
                    cells.append(NOT_APPLIED.get(algo, "–"))
                else:
                    cells.append(" / ".join(fmt.format(rows[f"{algo}@{k}"][metric]) for k in steps))
            out.append(row(f"{algo}, {unit}", *cells))
    return out


TEXT_STEP_LABELS = {
    "head": "`--adapt head`, features precomputed (as meta-train runs it)",
    "head-no-cache": "`--adapt head`, the body run per task",
    "lora-fo": "`--adapt lora`, first order",
    "lora-so": "`--adapt lora`, second order",
}
TEXT_STEP_RATIOS = {"head-no-cache": ("head_no_cache_over_head", "× head"), "lora-so": ("lora_so_over_fo", "× first order")}


def text_speed(results: Path) -> list[str]:
    data = load(results, "text-speed.json")
    ratios = data["ratios"]
    out = header("measurement", "time", "peak memory / check", "ratio")
    for name, s in data["meta_step"].items():
        ratio = ""
        if name in TEXT_STEP_RATIOS and f"{TEXT_STEP_RATIOS[name][0]}_seconds" in ratios:
            key, unit = TEXT_STEP_RATIOS[name]
            ratio = f"{ratios[key + '_seconds']:.1f}{unit} (memory {ratios[key + '_peak_mb']:.1f}{unit})"
        out.append(row(f"meta-step, {TEXT_STEP_LABELS.get(name, name)}", f"{s['seconds']:.3f} s", f"+{s['peak_mb']:.0f} MB", ratio))
    for mode, a in data["adapt"].items():
        out.append(row(f"`adapt` from a {mode} run", f"{a['first_call_seconds']:.2f} s (second call {a['second_call_seconds']:.2f} s)", "", ""))
    onnx = data["onnx"]
    lat = onnx["latency_ms"]
    out.append(row("batch 1, torch eager", f"{lat['torch']:.2f} ms", "", ""))
    out.append(
        row(
            "batch 1, onnxruntime float",
            f"{lat['onnx_float']:.2f} ms",
            f"max \\|Δp\\| vs torch {sci(onnx['float_torch_max_abs_prob_diff'])}",
            f"{ratios['onnx_float_over_torch_latency']:.2f}× torch",
        )
    )
    out.append(
        row(
            "batch 1, onnxruntime int8",
            f"{lat['onnx_int8']:.2f} ms",
            f"argmax agreement with float {pct(onnx['int8_float_argmax_agreement'])} % ({onnx['queries']} queries)",
            f"{ratios['onnx_int8_over_float_latency']:.2f}× float",
        )
    )
    return out


BODY_SPEED_LABELS = {
    "whole-padded": "whole encoder, padded to the batch's longest (before bucketing)",
    "whole-bucketed": "whole encoder, length-bucketed",
    "top2-cached": "`--train-layers 2`, lower 4 layers cached",
    "top1-cached": "`--train-layers 1`, lower 5 layers cached",
}


BODY_SPEED_FILES = ("body-speed.json", "body-speed-1thread.json")  # the second (--threads 1) only where it was run


def body_speed(results: Path) -> list[str]:
    """examples/benchmarks/body_speed.py: forward + backward of one 640-text batch per way of training the body."""
    runs = [load(results, name) for name in BODY_SPEED_FILES if name == BODY_SPEED_FILES[0] or (results / name).is_file()]
    out = header("threads", "path", "layers run", "tokens run", "s per 640 texts", "texts/s", "speed-up", "GFLOP/s", "of matmul limit")
    for data in runs:
        limit = data["matmul_gflops_per_second"]
        for name, r in data["paths"].items():
            out.append(
                row(
                    data["threads"], BODY_SPEED_LABELS.get(name, name), r["layers_run"], r["tokens_run"], f"{r['seconds']:.2f}",
                    f"{r['texts_per_second']:.0f}", f"{r['speedup_vs_whole_padded']:.1f}×", f"{r['gflops_per_second']:.1f}",
                    f"{100 * r['gflops_per_second'] / limit:.0f} %",
                )
            )  # fmt: skip
    out.append("")
    for data in runs:
        cli = data.get("meta_train_top2")
        implied = f"{data['steps_per_30min_top2_from_forward_backward']:.0f} from the `--train-layers 2` forward + backward alone"
        steps = f"{cli['steps_per_30min']:.0f} ({cli['step_seconds']:.2f} s per step, median of `meta-train`'s own step times); {implied}" if cli else implied
        load_avg = data["load_average_1min"]
        out.append(
            f"{data['threads']} thread(s): torch {data['torch']}, {data['cpu_count']} CPUs, float32 matmul limit {data['matmul_gflops_per_second']:.1f} "
            f"GFLOP/s, 1-minute load average {load_avg['start']:.1f} at the start and {load_avg['end']:.1f} at the end. "
            f"64-way (5+5) outer steps per 30 minutes with `--train-layers 2`: {steps}."
        )
        out.append("")
    return out[:-1]


# ---------------------------------------------------------------------------------------------


def _seconds(x: float | None) -> str:
    return "–" if x is None else (f"{1000 * x:.0f} ms" if x < 1 else f"{x:.2f} s")


def _megabytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def adapt_onnx(results: Path) -> list[str]:
    """examples/benchmarks/adapt_onnx.py: the same support adapted with onnxruntime, with torch and in the page; graph sizes; install size."""
    data = load(results, "adapt-onnx.json")
    out = header(
        "run", "support (ways × shots)", "onnxruntime: embed + adapt", "page: embed + adapt", "in process: onnxruntime", "in process: torch",
        "`metactl adapt` process: onnxruntime", "`metactl adapt` process: torch", "torch ÷ onnxruntime (process)", "head max abs diff",
    )  # fmt: skip
    for run in data["runs"]:
        name = f"{run['modality']}, {run['algorithm']}"
        for r in run["rows"]:
            out.append(
                row(
                    name, f"{r['ways']} × {r['shots']}", f"{_seconds(r['onnx_embed_seconds'])} + {_seconds(r['onnx_adapt_seconds'])}",
                    _seconds(r.get("page_embed_adapt_seconds")), _seconds(r["onnx_call_seconds"]), _seconds(r["torch_call_seconds"]),
                    _seconds(r["onnx_cli_seconds"]), _seconds(r["torch_cli_seconds"]), f"{r['torch_cli_over_onnx_cli']:.1f}×", sci(r["head_max_abs_diff"]),
                )
            )  # fmt: skip
    out += ["", *header("run", "embed.onnx", "adapt.onnx", "classify.onnx", "start (trained count / other counts)", "steps")]
    for run in data["runs"]:
        sizes, ad = run["graph_bytes"], run["adaptation"]
        steps = f"{ad['trained_classes']['steps']} / {ad['other']['steps']}"
        out.append(
            row(
                f"{run['modality']}, {run['algorithm']}", _megabytes(sizes["embed.onnx"]), _megabytes(sizes["adapt.onnx"]),
                _megabytes(sizes["classify.onnx"]), f"{ad['trained_classes']['start']} / {ad['other']['start']}", steps,
            )
        )  # fmt: skip
    machine = data["machine"]
    out += ["", f"{machine['cpu_count']} CPUs, torch {machine['torch']}; 1-minute load average {machine['load_average_1min_start']:.1f} at the start, "
            f"{machine['load_average_1min_end']:.1f} at the end. Command: `{data['command']}`."]  # fmt: skip
    install = data.get("install")
    if install:
        client, torch_cpu = install["torch_free_client"], install["torch_cpu"]
        out += ["", f"Install size (a fresh virtual environment's site-packages): the torch-free client ({', '.join(client['packages'])}) "
                f"{client['megabytes']:.0f} MB; the CPU torch wheel alone ({', '.join(torch_cpu['packages'])}) {torch_cpu['megabytes']:.0f} MB, "
                f"{install['ratio']:.1f}× more."]  # fmt: skip
    return out


def gpu(results: Path) -> list[str]:
    """examples/benchmarks/gpu_check.sh on one GPU: each run's steps in its budget and its validation (and test) accuracy."""
    device = load(results, "gpu-omniglot-device.json")
    out = header("run (--device cuda)", "device", "outer steps", "training s", "s / step", "validation, after k steps", "test (600 episodes)")
    evaluated = load(results, "gpu-omniglot-evaluate-5w1s.json")["runs"][0]["steps"]
    for name, label in (
        ("omniglot-o5w1s", "omniglot-5way-1shot preset (maml)"),
        ("text-head", "MiniLM `--adapt head`, 5w5s"),
        ("text-lora", "MiniLM `--adapt lora` r8, 5w5s"),
    ):
        run = load(results, f"gpu-{name}-run.json")
        k = int(run.get("adapt_steps", len(run["validation"]["curve"]) - 1))
        val = run["validation"]["curve"][k]
        test = pct(evaluated[-1]["mean"], evaluated[-1]["ci95"]) + f" ({evaluated[-1]['step']})" if name == "omniglot-o5w1s" else "not run"
        out.append(
            row(
                label,
                device["device"],
                run["steps_done"],
                f"{run['seconds']:.0f}",
                f"{run['seconds'] / run['steps_done']:.3f}",
                f"{pct(val['mean'], val['ci95'])} ({k})",
                test,
            )
        )
    return out


INTENTS_UNSEEN = ("clinc150", "banking77", "hwu64")


def intents(results: Path) -> list[str]:
    """``examples/benchmarks/intents.py``'s rows for each unseen dataset whose JSON exists."""
    found = [load(results, f"intents-{u}.json") for u in INTENTS_UNSEEN if (results / f"intents-{u}.json").is_file()]
    if not found:
        return ["Not run yet: `examples/benchmarks/intents.py` writes `examples/results/intents-<unseen>.json`, and this table is made from them."]
    shots = sorted({int(k) for res in found for k in res["shots"]})
    lines = header(
        "unseen (intents, test texts)", "row", *(f"{k}-shot" for k in shots), "adaptation s (" + " / ".join(f"{k}" for k in shots) + "-shot)",
        "ONNX batch-1 ms (float / int8)", "model MB",
    )  # fmt: skip
    for res in found:
        where = f"{res['unseen']} ({res['intents']}, {res['test_texts']})"
        for r in res["rows"]:
            cells = r.get("cells", {})
            if not cells:
                lines.append(row(where, r["row"], r.get("status", "not run"), *[""] * (len(shots) + 2)))
                continue
            acc = []
            for k in shots:
                c = cells.get(str(k))
                acc.append("–" if c is None else pct(c["mean"], c["ci95"]) + (f" (int8 {pct(c['int8']['mean'])})" if "int8" in c else ""))
            secs = " / ".join(f"{cells[str(k)]['adapt_seconds']:.0f}" if str(k) in cells and "adapt_seconds" in cells[str(k)] else "–" for k in shots)
            lat = next((f"{c['latency_ms']['float']:.1f} / {c['latency_ms']['int8']:.1f}" for c in cells.values() if "latency_ms" in c), "–")
            size = r.get("model_mb")
            size_text = f"{size['float']:.0f} / {size['int8']:.0f}" if isinstance(size, dict) else ("–" if size is None else f"{size:.0f}")
            lines.append(row(where, r.get("description") or r["row"], *acc, secs, lat, size_text))
    return lines


BASELINES = ("centroid", "centroid+names", "probe", "probe+names", "pretrain", "finetune", "setfit")


def intents_goal(results: Path) -> list[str]:
    """Per unseen dataset and K: the best baseline row, the recipe's row (``metactl:intents-<unseen>``, the
    preset's run) and the difference against the goal of +2 points."""
    found = [load(results, f"intents-{u}.json") for u in INTENTS_UNSEEN if (results / f"intents-{u}.json").is_file()]
    lines = header("unseen", "K", "best baseline", "recipe (intents-<unseen>.toml)", "recipe − best baseline (points)", "goal +2")
    for res in found:
        rows = {r["row"]: r for r in res["rows"] if r.get("cells")}
        recipe = rows.get(f"metactl:intents-{res['unseen']}")
        for k in res["shots"]:
            base = [(r["cells"][str(k)]["mean"], r) for n, r in rows.items() if n in BASELINES and str(k) in r["cells"]]
            if not base or recipe is None or str(k) not in recipe["cells"]:
                continue
            best, r = max(base, key=lambda br: br[0])
            mine = recipe["cells"][str(k)]
            delta = 100 * (mine["mean"] - best)
            met = "met" if delta >= 2 else f"short by {2 - delta:.1f}"
            lines.append(row(res["unseen"], k, f"{r['row']}: {pct(best, r['cells'][str(k)]['ci95'])}", pct(mine["mean"], mine["ci95"]), f"{delta:+.1f}", met))
    return lines


def intents_calibration(results: Path) -> list[str]:
    """Per unseen dataset and row at 5 shots: expected calibration error on the test split, and on CLINC150
    out-of-scope detection by thresholding the top probability (AUROC; in-scope accuracy and out-of-scope
    recall at the threshold chosen on CLINC150's validation split)."""
    found = [load(results, f"intents-{u}.json") for u in INTENTS_UNSEEN if (results / f"intents-{u}.json").is_file()]
    lines = header("unseen", "row", "accuracy (5-shot)", "ECE", "OOS AUROC", "in-scope accuracy / OOS recall at the validation threshold")
    for res in found:
        for r in res["rows"]:
            c = r.get("cells", {}).get("5")
            if not c or "ece" not in c:
                continue
            oos = c.get("oos") or {}
            au = f"{oos['auroc']:.3f}" if oos else "–"
            at = f"{pct(oos['in_scope_accuracy'])} / {pct(oos['oos_recall'])}" if oos else "–"
            lines.append(row(res["unseen"], r.get("description") or r["row"], pct(c["mean"], c["ci95"]), f"{c['ece']:.3f}", au, at))
    return lines


def intents_ablation(results: Path) -> list[str]:
    """The recipe with one ingredient off in turn, from the unseen-intents rows (5 / 10 shots): the names at
    adaptation (``metactl:intents-<u>:no-names``), the probe head (``metactl:intents-<u>:prototype-head``: the
    same run adapted from its prototypes) and the body training (``probe+names``: the frozen encoder); then
    the runs of the recipe with settings changed (``ablation:<run>`` rows, ``intents.py --ablation``)."""
    found = [load(results, f"intents-{u}.json") for u in INTENTS_UNSEEN if (results / f"intents-{u}.json").is_file()]
    lines = header("unseen", "variant", "1-shot", "5-shot", "10-shot")
    for res in found:
        u = res["unseen"]
        rows = {r["row"]: r for r in res["rows"] if r.get("cells")}
        variants = (
            (f"metactl:intents-{u}", "the recipe"),
            (f"metactl:intents-{u}:no-names", "label names off at adaptation"),
            (f"metactl:intents-{u}:prototype-head", "prototype head instead of the probe head (the same run)"),
            ("probe+names", "body training off (frozen encoder, probe head, label names)"),
        )
        runs = sorted((n for n in rows if n.startswith("ablation:")), key=lambda n: ("as the preset" not in rows[n]["description"], n))
        variants += tuple((n, rows[n]["description"]) for n in runs)  # the recipe at the ablations' budget first
        for name, label in variants:
            if name in rows:
                cells = rows[name]["cells"]
                lines.append(row(u, label, *(pct(cells[k]["mean"], cells[k]["ci95"]) if k in cells else "–" for k in ("1", "5", "10"))))
    return lines


TABLES: dict[str, tuple[str, Builder]] = {
    "presets": ("results.md", presets),
    "oneshot-runs": ("results.md", oneshot),
    "algorithms-4min": ("results.md", algorithms_fixed),
    "algorithms-4min-best": ("results.md", algorithms_best),
    "meta-vs-pretrain": ("results.md", meta_vs_pretrain),
    "sinusoid": ("results.md", sinusoid),
    "clinc-domains": ("results.md", clinc_domains),
    "clinc-domains-curve": ("results.md", clinc_domains_curve),
    "pipeline": ("results.md", pipeline),
    "clinc-contrast": ("results.md", clinc_contrast),
    "intents": ("results.md", intents),
    "intents-goal": ("results.md", intents_goal),
    "intents-calibration": ("results.md", intents_calibration),
    "intents-ablation": ("results.md", intents_ablation),
    "time-to-95": ("speed.md", time_to_95),
    "time-to-95-bf16": ("speed.md", bf16_vs_fp32),
    "throughput": ("speed.md", throughput),
    "throughput-maml-fomaml": ("speed.md", throughput_rerun),
    "speed-options": ("speed.md", speed_options),
    "profile-step": ("speed.md", profile_step),
    "memory-inner-steps": ("speed.md", memory),
    "text-speed": ("speed.md", text_speed),
    "body-speed": ("speed.md", body_speed),
    "gpu": ("gpu.md", gpu),
    "adapt-onnx": ("adaptable.md", adapt_onnx),
}


def render(text: str, page: str, results: Path) -> tuple[str, list[str]]:
    """The page with every marked table regenerated, and the names of the tables found."""
    found: list[str] = []

    def replace(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in TABLES or TABLES[name][0] != page:
            raise SystemExit(f"{page}: no table named {name!r} belongs to this page")
        found.append(name)
        return m.group(1) + "\n".join(TABLES[name][1](results)) + "\n" + m.group(4)

    return MARKER.sub(replace, text), found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs from what the JSON files give")
    parser.add_argument("--results", type=Path, default=ROOT / "examples" / "results", help="folder of the JSON files")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="folder of the markdown pages")
    args = parser.parse_args(argv)

    stale: list[str] = []
    seen: set[str] = set()
    for page in sorted({p for p, _ in TABLES.values()}):
        path = args.docs / page
        text = path.read_text()
        new, found = render(text, page, args.results)
        seen.update(found)
        if new != text:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    missing = sorted(set(TABLES) - seen)
    if missing:
        print(f"markers missing in docs/ for: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)} (run python examples/benchmarks/results_docs.py)", file=sys.stderr)
            return 1
        print(f"{len(TABLES)} tables up to date")
    else:
        print(f"{len(TABLES)} tables; rewrote: {', '.join(stale) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
