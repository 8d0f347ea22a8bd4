#!/usr/bin/env bash
# A short CUDA check: meta-train an Omniglot preset and the MiniLM text path with --device "$DEVICE", evaluate
# both on held-out classes, and keep the figures as JSON.
#
#   bash examples/benchmarks/gpu_check.sh omniglot DATA OUT   # DATA/omniglot/images_{background,evaluation}.zip
#   bash examples/benchmarks/gpu_check.sh text DATA OUT       # DATA/minilm (a sentence-transformers folder), DATA/intents/clinc150
#
# Each phase writes OUT/<phase>-*.json (evaluate --json, run metadata and the device's name).
# Budgets are minutes of training, not steps: figures are what a few minutes of one GPU buy.
set -euo pipefail
phase=$1 data=$2 out=$3
OMNI_MINUTES=${OMNI_MINUTES:-3} HEAD_MINUTES=${HEAD_MINUTES:-1} LORA_MINUTES=${LORA_MINUTES:-2.5} EPISODES=${EPISODES:-600} DEVICE=${DEVICE:-cuda}
mkdir -p "$out"
work=$(mktemp -d)
python3 -c "import json, torch; print(json.dumps({'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'torch': torch.__version__}))" > "$out/$phase-device.json"
keep() {  # the run's metadata and metrics, flattened into OUT
    cp "$work/$1/metactl.json" "$out/$phase-$1-run.json"
}
if [ "$phase" = omniglot ]; then
    python3 -m metactl meta-train --config examples/configs/omniglot-5way-1shot.toml --data "omniglot:$data/omniglot" \
        --device "$DEVICE" --time-budget "$OMNI_MINUTES" --eval-every 1000 --out "$work/o5w1s"
    keep o5w1s
    python3 -m metactl evaluate --from "$work/o5w1s" --data "omniglot:$data/omniglot" --episodes "$EPISODES" --device "$DEVICE" \
        --json "$out/omniglot-evaluate-5w1s.json"
else
    common=(--backbone "$data/minilm" --data "intents:$data/intents/clinc150" --protocol domains --ways 5 --shots 5
            --query-shots 15 --device "$DEVICE" --eval-every 0 --eval-episodes 100)
    python3 -m metactl meta-train "${common[@]}" --adapt head --inner-steps 5 --test-inner-steps 10 --inner-lr 0.5 \
        --meta-batch 16 --steps 1000000 --time-budget "$HEAD_MINUTES" --out "$work/head"
    keep head
    python3 -m metactl meta-train "${common[@]}" --adapt lora --lora-rank 8 --inner-steps 1 --test-inner-steps 5 --inner-lr 0.5 \
        --meta-batch 4 --steps 1000000 --time-budget "$LORA_MINUTES" --out "$work/lora"
    keep lora
    for shots in 1 5; do
        python3 -m metactl evaluate --from "$work/head" --from "$work/lora" --ways 5 --shots "$shots" --episodes "$EPISODES" --steps 10 \
            --device "$DEVICE" --json "$out/text-evaluate-5w${shots}s.json"
    done
fi
