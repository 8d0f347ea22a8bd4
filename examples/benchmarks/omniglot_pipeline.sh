#!/usr/bin/env bash
# Pre-train -> meta-train -> fine-tune on Omniglot (Lake protocol), at the presets' 30-minute budget,
# and the standard-practice contrasts on the same held-out episodes:
#   pre        `--algo pretrain` for PRE_MINUTES: supervised pre-training on all training characters
#   pipe-5w1s  maml from the pre-trained body (`--backbone pre --adapt all --train-body`), the 5-way
#              1-shot preset's settings, for 30 - PRE_MINUTES minutes (same for pipe-20w1s, 20-way)
#   centroid / probe   the pre-trained body frozen, with a nearest-centroid head / a logistic-regression probe
#   fine-tuning        the pre-trained body and a zero head, every layer fine-tuned (`metactl evaluate
#              --from pre --inner-lr LR`), LR and the step count chosen on the validation characters
# then `metactl evaluate` on the Lake test characters (600 episodes, seed 0: the presets' episodes).
#   bash examples/benchmarks/omniglot_pipeline.sh [OUTDIR]
# Environment: OMNIGLOT (the dataset folder), PRE_MINUTES (default 10), RESULTS (default examples/results),
# LRS (the fine-tuning grid), VAL_EPISODES (default 200), FT_STEPS (default 10).
set -euo pipefail
OUT=${1:-runs/pipeline}
OMNIGLOT=${OMNIGLOT:-../shared/datasets/omniglot}
PRE_MINUTES=${PRE_MINUTES:-10}
RESULTS=${RESULTS:-examples/results}
LRS=${LRS:-"0.01 0.03 0.1 0.3 1.0"}
VAL_EPISODES=${VAL_EPISODES:-200}
FT_STEPS=${FT_STEPS:-10}
META_MINUTES=$(python -c "print(30 - $PRE_MINUTES)")
mkdir -p "$OUT" "$RESULTS"
data=(--data "omniglot:$OMNIGLOT")

# 1. pre-training (kept if it is already there: both pipelines start from the same run)
if [ ! -f "$OUT/pre/theta.safetensors" ]; then
  metactl meta-train --config examples/configs/omniglot-5way-1shot.toml "${data[@]}" --algo pretrain \
    --time-budget "$PRE_MINUTES" --out "$OUT/pre" --force > "$OUT/pre.log" 2>&1  # shared by both pipelines
fi
# 2. meta-training from the pre-trained body: the two settings side by side, one pinned core and one
#    thread each, as the presets were run (docs/results.md)
core=0
for setting in 5way-1shot 20way-1shot; do
  name=pipe-$(echo "$setting" | sed 's/way-/w/; s/shot/s/')
  taskset -c "$core" metactl meta-train --config "examples/configs/omniglot-$setting.toml" "${data[@]}" --backbone "$OUT/pre" --adapt all \
    --train-body --threads 1 --time-budget "$META_MINUTES" --out "$OUT/$name" --force > "$OUT/$name.log" 2>&1 &
  core=$((core + 1))
done
wait
# 3. the frozen pre-trained body with a nearest-centroid head and with a linear probe (nothing to train)
for ways in 5 20; do
  for algo in centroid probe; do
    metactl meta-train --algo "$algo" "${data[@]}" --protocol lake --backbone "$OUT/pre" --adapt head --ways "$ways" --shots 1 \
      --steps 1 --eval-every 0 --out "$OUT/$algo-${ways}w" --force > "$OUT/$algo-${ways}w.log" 2>&1
  done
done
# 4. fine-tuning: the learning rate (and step count) chosen on the validation characters
for ways in 5 20; do
  q=15; [ "$ways" = 20 ] && q=5
  for lr in $LRS; do
    metactl evaluate --from "$OUT/pre" --split val --ways "$ways" --shots 1 --query-shots "$q" --steps "$FT_STEPS" \
      --inner-lr "$lr" --episodes "$VAL_EPISODES" --json "$OUT/ft-val-${ways}w-lr$lr.json" --force > /dev/null
  done
done
# 5. the test characters: every row on the same episodes as the presets
python - "$OUT" "$RESULTS" "$LRS" "$FT_STEPS" "$OMNIGLOT" <<'PY'
import json
import subprocess
import sys
from pathlib import Path

out, results, lrs, ft_steps, omniglot = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(), int(sys.argv[4]), sys.argv[5]
summary = {"pre_minutes": None, "settings": {}}
for ways, q, name in ((5, 15, "pipe-5w1s"), (20, 5, "pipe-20w1s")):
    val = {lr: json.loads((out / f"ft-val-{ways}w-lr{lr}.json").read_text())["runs"][0]["steps"] for lr in lrs}
    best_lr, best_step = max(((lr, s["step"]) for lr in lrs for s in val[lr] if s["step"] > 0), key=lambda t: val[t[0]][t[1]]["mean"])
    steps_of = {name: None, f"centroid-{ways}w": 1, f"probe-{ways}w": 1}
    dest = results / f"pipeline-{ways}w1s.json"
    common = ["--data", f"omniglot:{omniglot}", "--protocol", "lake", "--ways", str(ways), "--shots", "1", "--query-shots", str(q), "--episodes", "600"]
    for run, steps in steps_of.items():
        cmd = ["metactl", "evaluate", "--from", str(out / run), *common, "--json", str(out / f"test-{run}.json"), "--force"]
        if steps:
            cmd += ["--steps", str(steps)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    cmd = ["metactl", "evaluate", "--from", str(out / "pre"), *common, "--steps", str(best_step), "--inner-lr", best_lr,
           "--json", str(out / f"test-ft-{ways}w.json"), "--force"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = {}
    for key, file in ((name, f"test-{name}.json"), ("centroid", f"test-centroid-{ways}w.json"), ("probe", f"test-probe-{ways}w.json"), ("fine-tuning", f"test-ft-{ways}w.json")):
        rows[key] = json.loads((out / file).read_text())["runs"][0]
    train = {}
    for run in ("pre", name):
        lines = [json.loads(x) for x in (out / run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        meta = json.loads((out / run / "metactl.json").read_text())
        steps = [x for x in lines if "loss" in x and "step" in x]
        train[run] = {"outer_steps": max((x["step"] for x in steps), default=0), "config": {k: meta["config"][k] for k in ("algo", "ways", "shots", "time_budget", "adapt", "train_body", "backbone") if k in meta["config"]}}
    summary["settings"][f"{ways}w1s"] = {
        "fine_tuning_grid": {lr: [s["mean"] for s in val[lr]] for lr in lrs},
        "fine_tuning_choice": {"inner_lr": float(best_lr), "steps": best_step, "val_accuracy": val[best_lr][best_step]["mean"]},
        "training": train,
        "test": rows,
    }
    dest.write_text(json.dumps(summary["settings"][f"{ways}w1s"], indent=1) + "\n")
    print(f"written {dest}")
PY
