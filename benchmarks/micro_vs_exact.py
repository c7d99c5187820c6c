"""Agglomerative's tree at scale against the exact tree, and the exact tree against itself.

For each cache, on its UMAP 50 reduction (computed and stored when missing) and at its number of
classes K, this fits:

* the exact ward tree (scikit-learn, every row);
* the same exact tree on the reduction plus Gaussian noise of ``--jitter`` x its standard deviation
  (1e-4: far below anything that distinguishes two images): the agreement of the exact method with
  itself, the ceiling any approximation can be held to;
* the tree agglomerative builds above ``exact_rows`` (``--param exact_rows=2``; ward: reciprocal
  nearest neighbours down to ``--micro`` groups, then the chain, ``imgclust.clusterers._tree``).

It prints and writes (``benchmarks/results/micro_vs_exact.json``) the ARI of each against the exact
tree and every AMI against the labels::

    python benchmarks/micro_vs_exact.py CACHE [CACHE ...] --micro 3000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclust.cache import Cache  # noqa: E402
from imgclust.clusterers import create_clusterer  # noqa: E402
from imgclust.reduce import load_reduction, reduce  # noqa: E402


def compare(path: Path, n_micro: int, jitter: float, seed: int) -> dict:
    cache = Cache(path)
    encoder = cache.encoders()[0]
    reduction = reduce(path, encoder, random_state=seed)
    X = load_reduction(path, encoder, reduction.key).astype(np.float64)
    truth = cache.read_index(encoder).labels
    k = len(np.unique(truth))
    started = time.perf_counter()
    exact = AgglomerativeClustering(k).fit_predict(X)
    exact_s = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    jittered = AgglomerativeClustering(k).fit_predict(X + rng.normal(0.0, jitter * X.std(), X.shape))
    started = time.perf_counter()
    scalable = create_clusterer("agglomerative", n_clusters=k, exact_rows=2, micro_clusters=n_micro,
                                random_state=seed).fit_predict(X)
    scalable_s = time.perf_counter() - started
    ami = lambda labels: round(float(adjusted_mutual_info_score(truth, labels)), 4)  # noqa: E731
    return {"cache": path.name, "rows": len(X), "k": k, "micro_clusters": n_micro, "jitter": jitter,
            "exact_seconds": round(exact_s, 1), "scalable_seconds": round(scalable_s, 1),
            "ari_exact_vs_jittered_exact": round(float(adjusted_rand_score(exact, jittered)), 4),
            "ari_scalable_vs_exact": round(float(adjusted_rand_score(exact, scalable)), 4),
            "ami_exact": ami(exact), "ami_jittered_exact": ami(jittered), "ami_scalable": ami(scalable)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caches", type=Path, nargs="+")
    parser.add_argument("--micro", type=int, default=3000)
    parser.add_argument("--jitter", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "micro_vs_exact.json")
    args = parser.parse_args()
    rows = []
    for path in args.caches:
        rows.append(compare(path, args.micro, args.jitter, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
