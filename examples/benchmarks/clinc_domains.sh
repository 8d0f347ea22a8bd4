#!/usr/bin/env bash
# Few-shot intent classification on CLINC150's held-out domains with a pretrained sentence encoder
# (all-MiniLM-L6-v2). `--protocol domains`: meta-train on 7 domains, validate on `work`, test on
# `travel` + `utility` (their test split). Four runs:
#   head      maml on the frozen encoder's features (head adapted, learned α), MINUTES_HEAD of training
#   lora      maml adapting rank-4 LoRA adapters + head (second order, 1 inner step), MINUTES_LORA
#   centroid  baseline: nearest class centroid on the frozen encoder (no meta-training)
#   probe     baseline: logistic regression on the frozen encoder (no meta-training)
# then `metactl evaluate` 5-way 1-shot and 5-way 5-shot on the same test episodes for every run, and a
# summary of each run's training (outer steps, seconds, validation, adapt_steps).
#   bash examples/benchmarks/clinc_domains.sh [OUTDIR] [EPISODES] [LORA_EPISODES]
# The LoRA run runs the whole encoder forward and backward for every inner step, which makes its
# evaluation far slower than the others' (they adapt on features computed once): it is evaluated on
# the first LORA_EPISODES of the same episodes (episodes are drawn in seeded chunks, so the first n of
# a seed are the same whatever --episodes is), with its own test-time steps.
# Environment: MODEL (the encoder folder), CLINC (the intents folder), MINUTES_HEAD, MINUTES_LORA, RESULTS
# (where the JSON files go; default OUTDIR).
set -euo pipefail
OUT=${1:-runs/clinc-domains}
EPISODES=${2:-600}
LORA_EPISODES=${3:-40}
MODEL=${MODEL:-../shared/models/all-MiniLM-L6-v2}
CLINC=${CLINC:-../shared/datasets/intents/clinc150}
MINUTES_HEAD=${MINUTES_HEAD:-5}
MINUTES_LORA=${MINUTES_LORA:-10}
RESULTS=${RESULTS:-$OUT}
mkdir -p "$OUT" "$RESULTS"
common=(--backbone "$MODEL" --data "intents:$CLINC" --protocol domains --ways 5 --shots 5 --force)

# Long runs side by side (each gets about one core), the baselines after them.
metactl meta-train --algo maml --adapt head "${common[@]}" --query-shots 15 --meta-batch 8 --inner-steps 5 --test-inner-steps 10 \
  --inner-lr 0.5 --steps 1000000 --time-budget "$MINUTES_HEAD" --eval-every 100 --eval-episodes 100 --out "$OUT/head" > "$OUT/head.log" 2>&1 &
metactl meta-train --algo maml --adapt lora --lora-rank 4 "${common[@]}" --query-shots 5 --meta-batch 4 --inner-steps 1 --test-inner-steps 2 \
  --inner-lr 0.1 --steps 1000000 --time-budget "$MINUTES_LORA" --eval-every 0 --eval-episodes 50 --out "$OUT/lora" > "$OUT/lora.log" 2>&1 &
wait
for algo in centroid probe; do
  metactl meta-train --algo "$algo" --adapt head "${common[@]}" --steps 1 --eval-episodes 100 --out "$OUT/$algo" > "$OUT/$algo.log" 2>&1
done

# One thread per evaluation (on a busy machine, extra threads slowed the many tiny operations of adapting a head).
for k in 1 5; do
  OMP_NUM_THREADS=1 metactl evaluate --from "$OUT/head" --from "$OUT/centroid" --from "$OUT/probe" --ways 5 --shots "$k" --steps 10 \
    --episodes "$EPISODES" --json "$RESULTS/clinc-domains-5w${k}s.json" --force
  OMP_NUM_THREADS=1 metactl evaluate --from "$OUT/lora" --ways 5 --shots "$k" --steps 2 \
    --episodes "$LORA_EPISODES" --json "$RESULTS/clinc-domains-lora-5w${k}s.json" --force
done

# What each run's training was: from its metactl.json and metrics.jsonl.
python - "$OUT" "$RESULTS/clinc-domains-runs.json" <<'EOF'
import json
import sys
from pathlib import Path

out, dest = Path(sys.argv[1]), Path(sys.argv[2])
runs = {}
for name in ("head", "lora", "centroid", "probe"):
    meta = json.loads((out / name / "metactl.json").read_text())
    lines = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
    cfg = meta["config"]
    runs[name] = {
        "run": str(out / name),
        "algorithm": cfg["algo"],
        "adapt": cfg["adapt"],
        "lora_rank": cfg["lora_rank"] if cfg["adapt"] == "lora" else None,
        "inner_steps": cfg["inner_steps"],
        "test_inner_steps": cfg["test_inner_steps"],
        "inner_lr": cfg["inner_lr"],
        "meta_batch": cfg["meta_batch"],
        "outer_steps": meta["steps_done"],
        "train_seconds": meta["seconds"],  # the training loop, in-loop validation included
        "adapt_steps": meta.get("adapt_steps"),
        "validation_curve": [{"step": m["step"], "elapsed": m["elapsed"], "val": m["val"]} for m in lines if "val" in m],
        "final_validation": meta["validation"],
    }
dest.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
print(json.dumps({k: {x: v[x] for x in ("outer_steps", "train_seconds", "adapt_steps")} for k, v in runs.items()}, indent=1))
EOF
