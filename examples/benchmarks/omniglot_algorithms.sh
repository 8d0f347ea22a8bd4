#!/usr/bin/env bash
# Every algorithm and the pretrain baseline, meta-trained on Omniglot for the same CPU budget (Lake
# protocol: images_background + rotations), then evaluated in one `metactl evaluate` call per setting
# on the same held-out images_evaluation episodes: 5-way 1-shot, 5-way 5-shot, 20-way 1-shot,
# 20-way 5-shot (the runs are trained 5-way 1-shot; for 20-way their head starts at zero, as
# `metactl adapt` does for another number of labels).
#   bash examples/benchmarks/omniglot_algorithms.sh [MINUTES] [OUTDIR] [EPISODES] [EPISODES_20WAY]
# (20-way episodes use 5 queries per class; 5-way ones 15.)
# PARALLEL=2 trains two runs at a time, each pinned to its own core with one thread (same budget
# per run, half the wall time; every run gets the same treatment).
set -euo pipefail
MINUTES=${1:-3}
OUT=${2:-runs/omniglot-${MINUTES}min}
EPISODES=${3:-400}
EPISODES20=${4:-100}
OMNI=${OMNIGLOT:-../shared/datasets/omniglot}
PARALLEL=${PARALLEL:-1}
mkdir -p "$OUT"
common=(--data "omniglot:$OMNI" --protocol lake --rotations --meta-batch 8 --time-budget "$MINUTES" --steps 1000000 --eval-every 0 --force)
printf 'algo_options = {inner_optimizer = "adam"}\n' > "$OUT/reptile.toml"
printf 'algo_options = {lam = 1.0, cg_steps = 5, cg_damping = 1.0}\n' > "$OUT/imaml.toml"
jobs_=(
  "maml     --inner-lr 0.4"
  "fomaml   --inner-lr 0.4"
  "metasgd  --inner-lr 0.4"
  "anil     --inner-lr 0.4 --inner-steps 3"
  "imaml    --inner-lr 0.1 --inner-steps 5 --test-inner-steps 5 --config $OUT/imaml.toml"
  "reptile  --inner-lr 0.001 --inner-steps 5 --test-inner-steps 10 --no-learn-inner-lr --config $OUT/reptile.toml"
  "pretrain --inner-lr 0.1 --test-inner-steps 10"
)
if metactl algorithms | grep -q protonet; then jobs_+=("protonet --test-inner-steps 1"); fi
names=()
i=0
for job in "${jobs_[@]}"; do
  read -r algo rest <<<"$job"
  names+=("$algo")
  # shellcheck disable=SC2086
  if [ "$PARALLEL" -gt 1 ]; then
    taskset -c $((i % PARALLEL)) metactl meta-train --algo "$algo" $rest --threads 1 "${common[@]}" --out "$OUT/$algo" > "$OUT/$algo.log" 2>&1 &
    i=$((i + 1))
    if [ $((i % PARALLEL)) -eq 0 ]; then wait; fi
  else
    metactl meta-train --algo "$algo" $rest "${common[@]}" --out "$OUT/$algo" > "$OUT/$algo.log" 2>&1
  fi
done
wait
from=()
for n in "${names[@]}"; do from+=(--from "$OUT/$n"); done
for setting in "5 1 15 $EPISODES" "5 5 15 $EPISODES" "20 1 5 $EPISODES20" "20 5 5 $EPISODES20"; do
  read -r w k q e <<<"$setting"
  metactl evaluate "${from[@]}" --data "omniglot:$OMNI" --protocol lake --ways "$w" --shots "$k" --query-shots "$q" \
    --episodes "$e" --json "$OUT/evaluate-${w}w${k}s.json" --force
done
metactl evaluate --from "$OUT/maml" --from "$OUT/pretrain" --data "omniglot:$OMNI" --ways 5 --shots 1 --steps 10 \
  --episodes "$EPISODES" --json "$OUT/meta-vs-pretrain.json" --plot "$OUT/meta-vs-pretrain.png" --force || true  # --plot needs the plot extra
python "$(dirname "$0")/results_table.py" "$OUT"/evaluate-*.json
