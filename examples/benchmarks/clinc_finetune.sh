#!/usr/bin/env bash
# The standard-practice contrast on CLINC150's held-out domains (see clinc_domains.sh for the
# meta-learned runs and the frozen-encoder baselines on the same episodes):
#   pre   `--algo pretrain` on the frozen all-MiniLM-L6-v2's features: a classifier over the 7
#         training domains' intents, trained for MINUTES; then adaptation fine-tunes a zero 5-way head
#   the fine-tuning learning rate and step count chosen on the validation domain (`work`, --split val)
#   from a grid, separately for 1-shot and 5-shot; then the test domains (`travel`, `utility`),
#   600 episodes, seed 0: the episodes of clinc-domains-5w{1,5}s.json.
#   bash examples/benchmarks/clinc_finetune.sh [OUTDIR]
# Environment: MODEL, CLINC, MINUTES (default 3), LRS, VAL_EPISODES (default 200), FT_STEPS (default 20), RESULTS.
set -euo pipefail
OUT=${1:-runs/clinc-finetune}
MODEL=${MODEL:-../shared/models/all-MiniLM-L6-v2}
CLINC=${CLINC:-../shared/datasets/intents/clinc150}
MINUTES=${MINUTES:-3}
LRS=${LRS:-"0.3 1 3 10 30"}
VAL_EPISODES=${VAL_EPISODES:-200}
FT_STEPS=${FT_STEPS:-20}
RESULTS=${RESULTS:-examples/results}
mkdir -p "$OUT" "$RESULTS"
if [ ! -f "$OUT/pre/theta.safetensors" ]; then
  metactl meta-train --algo pretrain --backbone "$MODEL" --adapt head --data "intents:$CLINC" --protocol domains --ways 5 --shots 5 \
    --query-shots 15 --meta-batch 8 --steps 1000000 --time-budget "$MINUTES" --eval-every 0 --out "$OUT/pre" --force > "$OUT/pre.log" 2>&1
fi
for k in 1 5; do
  for lr in $LRS; do
    OMP_NUM_THREADS=1 metactl evaluate --from "$OUT/pre" --split val --ways 5 --shots "$k" --steps "$FT_STEPS" --inner-lr "$lr" \
      --episodes "$VAL_EPISODES" --json "$OUT/val-5w${k}s-lr$lr.json" --force > /dev/null
  done
done
python - "$OUT" "$RESULTS" "$LRS" "$CLINC" <<'PY'
import json
import os
import subprocess
import sys
from pathlib import Path

out, results, lrs, clinc = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
summary = {}
for k in (1, 5):
    val = {lr: json.loads((out / f"val-5w{k}s-lr{lr}.json").read_text())["runs"][0]["steps"] for lr in lrs}
    lr, step = max(((lr, s["step"]) for lr in lrs for s in val[lr] if s["step"] > 0), key=lambda t: val[t[0]][t[1]]["mean"])
    dest = out / f"test-5w{k}s.json"
    cmd = ["metactl", "evaluate", "--from", str(out / "pre"), "--ways", "5", "--shots", str(k), "--steps", str(step), "--inner-lr", lr,
           "--episodes", "600", "--json", str(dest), "--force"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    summary[f"5w{k}s"] = {
        "grid": {g: [s["mean"] for s in val[g]] for g in lrs},
        "choice": {"inner_lr": float(lr), "steps": step, "val_accuracy": val[lr][step]["mean"]},
        "command": " ".join(cmd[:-4]),
        "test": json.loads(dest.read_text())["runs"][0],
    }
lines = [json.loads(x) for x in (out / "pre" / "metrics.jsonl").read_text().splitlines() if x.strip()]
summary["pretrain_outer_steps"] = max((x["step"] for x in lines if "loss" in x and "step" in x), default=0)
(results / "clinc-domains-finetune.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps({k: v["choice"] | {"test": v["test"]["steps"][v["choice"]["steps"]]["mean"]} for k, v in summary.items() if k != "pretrain_outer_steps"}))
PY
