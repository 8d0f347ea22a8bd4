#!/usr/bin/env bash
# meta-train -> a small support folder from held-out characters -> adapt -> export -> predict.
# Run from an empty directory; OMNIGLOT points at the folder holding the official zips.
set -euo pipefail
OMNIGLOT=${OMNIGLOT:-../shared/datasets/omniglot}
HERE=$(cd "$(dirname "$0")" && pwd)

metactl meta-train --data "$OMNIGLOT/images_background.zip" --rotations --meta-batch 8 --time-budget ${MINUTES:-5} --steps 100000 --out runs/omniglot
python "$HERE/make_support_folder.py" "$OMNIGLOT/images_evaluation.zip" shots --ways 5 --shots 1 --queries 5
metactl adapt --support shots --query shots-query --from runs/omniglot --force
metactl export --onnx --quantize int8 --force
metactl predict export/model.onnx shots-query --top-k 2
python "$HERE/onnx_client.py" export/model.onnx shots-query/*/*.png
