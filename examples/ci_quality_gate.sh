#!/usr/bin/env bash
# A CI step: cluster a labelled benchmark set and fail the build when AMI drops below a floor.
# Usage: examples/ci_quality_gate.sh DATASET_FOLDER [MIN_AMI] [K]
#   e.g. examples/ci_quality_gate.sh ../shared/data/imagenette-val 0.925 10
set -euo pipefail
data=${1:?usage: ci_quality_gate.sh DATASET_FOLDER [MIN_AMI] [K]}
floor=${2:-0.90}
k=${3:-10}
imgclust cluster "$data" --encoder effnet-lite0 --labels folder --n-clusters "$k" \
  --out ci-quality --force --formats csv,json --quiet --json > ci-quality.json
python3 - "$floor" <<'PY'
import json, sys
floor = float(sys.argv[1])
scores = json.load(open("ci-quality.json"))["scores"]
print(f"AMI {scores['ami']:.4f} (floor {floor}), accuracy {scores['accuracy']:.4f}, silhouette {scores['silhouette']:.4f}")
sys.exit(0 if scores["ami"] >= floor else 1)
PY
