"""The trained heads on a sample: AMI of training on every row against training on ``train_rows`` of them.

Reads the embeddings and labels of ``--cache`` (e.g. a copy of the effnet-lite0 cache of cifar10-test), or
builds (or reuses) a cache of N rows as :mod:`benchmarks.scale` does (``imgclust import`` of real
effnet-lite0 embeddings of imagenette-val and cifar10-test plus Gaussian noise, 20 classes; its
:func:`scale.build`), then fits each trained head (``temi``, ``icce``, ``scan``, ``unic``) in this process
with each ``--train-rows`` value (a value >= N trains on every row; the heads above it train on a seeded
sample and label the other rows with the trained head) and reports its wall time, AMI against the
imported classes and ARI against the labels of the largest training set of the same method. It measured the
trade-off behind the heads' default ``train_rows`` (BENCHMARKS.md, "The trained heads at scale"). Writes
``benchmarks/results/<out>.json`` after every fit::

    python benchmarks/heads_sample.py --cache /tmp/heads12/src/cifar10-test-effnet-lite0.h5 --n-clusters 10 \
        --train-rows 10000 5000 --workdir /tmp/heads12 --out heads_sample_cifar10
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import ENCODER, ROOT, build, real_rows, write_report  # noqa: E402

from imgclust.cache import Cache  # noqa: E402
from imgclust.clusterers import create_clusterer  # noqa: E402
from imgclust.clusterers._heads import UNIC_MAX_ROWS  # noqa: E402


def main() -> None:
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30000)
    parser.add_argument("--methods", nargs="+", default=["scan", "temi", "unic", "icce"])
    parser.add_argument("--train-rows", type=int, nargs="+", default=[30000, 20000, 10000])
    parser.add_argument("--n-clusters", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise per dimension")
    parser.add_argument("--sources", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder with the effnet-lite0 caches of imagenette-val and cifar10-test")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help="a labelled cache to read instead of building a synthetic one")
    parser.add_argument("--seed", type=int, default=0,
                        help="the heads' random_state; also the noise of a cache this run builds (an existing one is reused)")
    parser.add_argument("--out", default="heads_sample")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.cache is None:
        x, y = real_rows(args.sources)
        cache, _ = build(args.workdir, args.n, x, y, args.noise, args.seed)
    else:
        cache = args.cache
    store = Cache(cache)
    X = store.read_embeddings(ENCODER).astype(np.float32)
    truth = store.read_index(ENCODER).labels
    args.n = len(X)
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "cache": str(cache),
              "n": args.n, "noise": None if args.cache else args.noise, "seed": args.seed, "rows": []}
    for method in args.methods:
        sizes = sorted({min(t, args.n) for t in args.train_rows
                        if method != "unic" or min(t, args.n) <= UNIC_MAX_ROWS}, reverse=True)
        reference = None
        for size in sizes:
            load = os.getloadavg()[0]
            started = time.perf_counter()
            est = create_clusterer(method, n_clusters=args.n_clusters, random_state=args.seed, train_rows=size)
            labels = est.fit_predict(X)
            seconds = time.perf_counter() - started
            if reference is None:
                reference = labels
            row = {"method": method, "train_rows": size, "trained_on": est.trained_on_, "seconds": round(seconds, 1),
                   "ami": round(float(adjusted_mutual_info_score(truth, labels)), 4),
                   "ari_to_largest": round(float(adjusted_rand_score(reference, labels)), 4),
                   "largest": sizes[0], "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}
            print(row, flush=True)
            report["rows"].append(row)
            write_report(args.results, args.out, report)


if __name__ == "__main__":
    main()
