"""UMAP's near-copy collapse (``--near-copy-threshold``) on real and synthetic caches: AMI, time, memory.

For each ``CACHE:K`` it runs, as separate processes exactly as a user would (``scale.py``'s
:func:`~scale.run_size`: ``imgclust cluster CACHE --n-clusters K --json`` then ``imgclust score``,
timed, peak RSS of the process from ``/usr/bin/time``), the default pipeline (UMAP 50, agglomerative)
once per ``--modes`` value of ``--near-copy-threshold`` (``auto``: the default; ``none``: every row
fitted, the pipeline before the collapse). It records the rows UMAP was fitted on and the rows it
collapsed (the run's ``reduction_fit``) and the load average before and after, and appends one JSON line
per run to ``benchmarks/results/near_copies.jsonl``. The caches are written to (reductions, runs):
pass copies::

    python benchmarks/near_copies.py /tmp/nearcopy12/real/imagenette-val-effnet-lite0.h5:10 --modes auto none
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import run_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", nargs="+", help="CACHE:K, a cache (a copy: it is written to) and its number of classes")
    parser.add_argument("--modes", nargs="+", default=["auto", "none"], help="values of --near-copy-threshold to run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "near_copies.jsonl")
    args = parser.parse_args()
    for item in args.caches:
        cache, _, k = item.rpartition(":")
        for mode in args.modes:
            load_before = os.getloadavg()
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            result = run_size(Path(cache), k, ["--near-copy-threshold", mode])
            row = {"cache": cache, "n_clusters": int(k), "near_copy_threshold": mode, "started": started,
                   "load_before": [round(v, 2) for v in load_before],
                   "load_after": [round(v, 2) for v in os.getloadavg()], **result}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
