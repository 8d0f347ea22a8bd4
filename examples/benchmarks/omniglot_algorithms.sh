#!/usr/bin/env bash
# Every algorithm and the pretrain baseline, meta-trained on Omniglot images_background for the same
# CPU budget, then evaluated on the same 400 held-out images_evaluation episodes (5-way 1-shot).
#   bash examples/benchmarks/omniglot_algorithms.sh [MINUTES] [OUTDIR]
set -euo pipefail
MINUTES=${1:-3}
OUT=${2:-runs/omniglot-${MINUTES}min}
OMNI=${OMNIGLOT:-../shared/datasets/omniglot}
mkdir -p "$OUT"
common=(--data "$OMNI/images_background.zip" --rotations --time-budget "$MINUTES" --steps 1000000 --eval-every 0 --force)
printf 'algo_options = {inner_optimizer = "adam"}\n' > "$OUT/reptile.toml"
printf 'algo_options = {lam = 1.0, cg_steps = 5, cg_damping = 1.0}\n' > "$OUT/imaml.toml"
metactl meta-train --algo maml     --meta-batch 8 --inner-lr 0.4 "${common[@]}" --out "$OUT/maml"
metactl meta-train --algo fomaml   --meta-batch 8 --inner-lr 0.4 "${common[@]}" --out "$OUT/fomaml"
metactl meta-train --algo metasgd  --meta-batch 8 --inner-lr 0.4 "${common[@]}" --out "$OUT/metasgd"
metactl meta-train --algo anil     --meta-batch 8 --inner-lr 0.4 --inner-steps 3 "${common[@]}" --out "$OUT/anil"
metactl meta-train --algo imaml    --meta-batch 8 --inner-lr 0.1 --inner-steps 5 --test-inner-steps 5 --config "$OUT/imaml.toml" "${common[@]}" --out "$OUT/imaml"
metactl meta-train --algo reptile  --meta-batch 8 --inner-lr 0.001 --inner-steps 5 --test-inner-steps 10 --no-learn-inner-lr --config "$OUT/reptile.toml" "${common[@]}" --out "$OUT/reptile"
metactl meta-train --algo pretrain --meta-batch 8 --inner-lr 0.1 --test-inner-steps 10 "${common[@]}" --out "$OUT/pretrain"
metactl meta-train --algo protonet --meta-batch 8 --test-inner-steps 1 "${common[@]}" --out "$OUT/protonet"
metactl evaluate --data "$OMNI/images_evaluation.zip" --episodes 400 --json "$OUT/evaluate.json" \
  --from "$OUT/maml" --from "$OUT/fomaml" --from "$OUT/metasgd" --from "$OUT/anil" --from "$OUT/imaml" \
  --from "$OUT/reptile" --from "$OUT/pretrain" --from "$OUT/protonet"
