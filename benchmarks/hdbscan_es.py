"""ES-style HDBSCAN (l2-normalised raw embeddings, no UMAP) on the shared sets, with a dense distance matrix.

``clustering_table.py --es-style`` runs ``hdbscan`` through imgclust, whose scikit-learn HDBSCAN picks a
KD-tree for euclidean data; in 1,280 dimensions the tree prunes nothing, and the CIFAR-10 run (10,000 rows)
was stopped after 27 minutes. This script fits the same estimator with the same parameters as imgclust's
``hdbscan`` clusterer (min_cluster_size 5, max_cluster_size round(0.2 N), excess of mass) but
``algorithm="brute"``: one N x N distance matrix (0.8 GB at N = 10,000), then the minimum spanning tree on
it. The algorithm changes how the mutual-reachability MST is found, not which tree it is, so the clusters are
the same; ``--check`` verifies that on the first set by running imgclust's clusterer too and comparing labels.

    python benchmarks/hdbscan_es.py --check       # imagenette-val (checked against imgclust's path), cifar10-test

Reads the caches ``benchmarks/results/<set>-effnet-lite0.h5`` (``clustering_table.py`` makes them); writes
``benchmarks/results/hdbscan_es.json``. Scores as ``clustering_table.py --es-style``: AMI, ES's harmonic mean of
pairwise and BCubed F, silhouette with noise left out and as one cluster (ZS), in the l2 space.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import HDBSCAN as SKHDBSCAN

from imgclust.cache import Cache
from imgclust.clusterers import create_clusterer
from imgclust.metrics import score_clustering
from imgclust.knn import l2_normalise

HERE = Path(__file__).resolve().parent


def brute_hdbscan(X: np.ndarray) -> np.ndarray:
    """imgclust's ``hdbscan`` defaults, with the MST found on a dense distance matrix."""
    defaults = create_clusterer("hdbscan").get_params()
    return SKHDBSCAN(min_cluster_size=defaults["min_cluster_size"], min_samples=defaults["min_samples"],
                     max_cluster_size=max(round(defaults["max_cluster_fraction"] * X.shape[0]), 1),
                     cluster_selection_method=defaults["cluster_selection_method"], algorithm="brute",
                     copy=True).fit_predict(X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", default=["imagenette-val", "cifar10-test"])
    parser.add_argument("--encoder", default="effnet-lite0")
    parser.add_argument("--check", action="store_true",
                        help="on the first set, also run imgclust's hdbscan clusterer and require the same labels")
    args = parser.parse_args()
    rows = []
    for i, name in enumerate(args.sets):
        cache = Cache(HERE / "results" / f"{name}-{args.encoder}.h5")
        truth = cache.read_index(args.encoder).labels
        X = l2_normalise(cache.read_embeddings(args.encoder))  # as `--reduction l2` gives it
        started = time.perf_counter()
        labels = brute_hdbscan(X)
        seconds = time.perf_counter() - started
        row = {"set": name, "method": "hdbscan", "style": "ES", "space": "l2", "algorithm": "brute",
               "seconds": round(seconds, 1)}
        if args.check and i == 0:
            started = time.perf_counter()
            same = create_clusterer("hdbscan").fit_predict(X)
            row.update(imgclust_seconds=round(time.perf_counter() - started, 1),
                       same_labels_as_imgclust=bool(np.array_equal(same, labels)))
            if not row["same_labels_as_imgclust"]:
                raise SystemExit(f"{name}: the dense-matrix HDBSCAN differs from imgclust's ({row})")
        s = score_clustering(labels, X, truth)
        row.update(ami=s.ami, f_pairwise_bcubed=s.f_pairwise_bcubed, silhouette=s.silhouette,
                   silhouette_noise_as_cluster=s.silhouette_noise_as_cluster,
                   clusters=int(len(set(labels.tolist()) - {-1})), noise=int((labels == -1).sum()))
        print(row, flush=True)
        rows.append(row)
    (HERE / "results" / "hdbscan_es.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
