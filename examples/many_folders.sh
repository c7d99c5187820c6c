#!/usr/bin/env bash
# Cluster every sub-folder of a directory, one result folder each, and collect a one-line summary per folder.
# Usage: examples/many_folders.sh PHOTO_ROOT [ENCODER]
# Re-running is cheap: each result folder keeps its embedding cache (use --force to overwrite results).
set -euo pipefail
root=${1:?usage: many_folders.sh PHOTO_ROOT [ENCODER]}
encoder=${2:-effnet-lite0}
for folder in "$root"/*/; do
  name=$(basename "$folder")
  imgclust cluster "$folder" --encoder "$encoder" --out "results/$name" --force --quiet --json \
    > "results-$name.json" || { echo "$name: failed (exit $?)" >&2; continue; }
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], d["run"]["n_clusters"], "clusters, silhouette", round(d["scores"]["silhouette"] or 0, 3))' \
    "results-$name.json" "$name"
done
