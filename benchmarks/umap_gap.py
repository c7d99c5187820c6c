"""Where the AMI gap between the scale caches and the real rows comes from (issue 12, item 2).

``benchmarks/scale.py`` finds the default pipeline (UMAP 50 fitted on a 50,000-row sample, the other
rows placed by :func:`imgclust.reduce.place_by_neighbours`, agglomerative ward, 20 clusters) about
3.4 AMI points lower on its synthetic 100,000 and 1,000,000-row caches than on the 13,925 real
effnet-lite0 rows they are made from. Each experiment below runs the same stages in process (UMAP
through ``imgclust.reduce``, agglomerative through the clusterer registry with its defaults) on one
variable, and appends one JSON line to ``benchmarks/results/umap_gap.jsonl``:

* ``real``: the real rows, fitted on all of them (the reference).
* ``base CACHE M``: the shipped path, fit on a seeded M-row sample and place the rest; the AMI of
  all rows, of the fitted and the placed rows within that clustering, and of the fitted rows
  clustered alone (is the loss in the fit or in the placement?).
* ``full CACHE``: UMAP fitted on every row (no placement), and its time.
* ``subsample CACHE M``: UMAP fitted on all of a seeded M-row sample of a synthetic cache (its
  near-copies of each real row, no placement).
* ``real_noise``: each real row once, plus the benchmark's noise (noise without near-copies).
* ``nn K,K..``: the real rows with other ``n_neighbors`` (how UMAP answers to fewer distinct neighbours).
* ``place CACHE M E,E..``: one M-row fit, the rest placed by ``place_by_neighbours`` and then moved by
  E epochs of UMAP's own layout SGD with the fitted rows held fixed, as ``UMAP.transform`` does
  (:func:`refine_placed`; 0 = the weighted mean alone, imgclust's placement).
* ``stored CACHE M``: a cache's stored default reduction, split into its fitted and placed rows.
* ``siblings CACHE N M``: in the M-row fit sample of scale.py's N-row cache, how many of each row's 30
  nearest rows are copies of its own real row, and what share of UMAP's membership weight they get.
* ``dedup CACHE M COS``: the prototype of UMAP's near-copy collapse: the M-row fit sample with its near-copies
  collapsed (connected components of its 30-NN cosine graph over edges with similarity >= COS, one row kept
  each), UMAP fitted on the kept rows, every other row placed. The product now does this in
  :mod:`imgclust.reduce` (complete-linkage groups at the encoder family's threshold); ``benchmarks/near_copies.py``
  measures it through the CLI.
* ``recluster EMB.npy CACHE``: an embedding saved by ``base``/``full`` (``--save DIR``), clustered by
  k-means (20) and by exact ward on a seeded 20,000-row sample: is a loss in the embedding or the tree?

Usage (the caches are made by ``benchmarks/scale.py``)::

    python benchmarks/umap_gap.py real
    python benchmarks/umap_gap.py base /tmp/umap12/scale-100000.h5 50000
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_mutual_info_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclust.cache import Cache
from imgclust.clusterers import create_clusterer
from imgclust.knn import Neighbours, NeighbourSearch

R = importlib.import_module("imgclust.reduce")  # the package exports a function of that name
ENCODER = "effnet-lite0"
SETTINGS = {"n_components": 50, "n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean", "seed": 0}
REAL = "/tmp/scale/scale-13925.h5"  # scale.py's cache of the real rows


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    cache = Cache(path)
    return cache.read_embeddings(ENCODER).astype(np.float32), np.asarray(cache.read_index(ENCODER).labels)


def cluster(emb: np.ndarray) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    labels = create_clusterer("agglomerative", 20, random_state=0).fit_predict(emb)
    return labels, time.perf_counter() - started


def ami(truth: np.ndarray, labels: np.ndarray) -> float:
    return round(100 * adjusted_mutual_info_score(truth, labels), 2)


def fit_all(x: np.ndarray, settings: dict = SETTINGS) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    return R._fit(["umap"], settings, x)(None, fitted=True), time.perf_counter() - started


def refine_placed(placed: np.ndarray, embedding: np.ndarray, idx: np.ndarray, dist: np.ndarray, k: int,
                  a: float, b: float, epochs: int, seed: int = 0) -> np.ndarray:
    """``placed`` moved by ``epochs`` of UMAP's SGD towards its fitted neighbours ``idx`` and away from
    random fitted rows, the fitted rows held fixed: the second half of umap-learn's ``UMAP.transform``
    (McInnes, Healy & Melville 2018, arXiv:1802.03426): the memberships of ``smooth_knn_dist``, edges
    under 1/epochs of the strongest dropped, each edge sampled in proportion to its weight, learning
    rate 1/4, one core (seeded)."""
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import make_epochs_per_sample, smooth_knn_dist

    sigmas, rhos = smooth_knn_dist(dist, float(k), local_connectivity=0.0)
    weight = np.exp(-np.maximum(dist - rhos[:, None], 0.0) / sigmas[:, None]).ravel()
    keep = weight >= weight.max() / epochs
    head = np.repeat(np.arange(len(placed), dtype=np.int32), idx.shape[1])[keep]
    tail = idx.ravel().astype(np.int32)[keep]
    rng_state = np.random.default_rng(seed).integers(np.iinfo(np.int32).min, np.iinfo(np.int32).max, 3)
    return optimize_layout_euclidean(
        np.ascontiguousarray(placed, dtype=np.float32), np.ascontiguousarray(embedding, dtype=np.float32),
        head, tail, epochs, len(embedding), make_epochs_per_sample(weight[keep], epochs), a, b,
        rng_state.astype(np.int64), gamma=1.0, initial_alpha=0.25, negative_sample_rate=5.0, parallel=False)


def split(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted sample of ``reduce`` (seed 0) and the rows it places."""
    sample = np.sort(np.random.default_rng(0).choice(n, size=m, replace=False))
    return sample, np.setdiff1d(np.arange(n), sample)


def split_scores(y, emb, sample, rest) -> dict:
    labels, seconds = cluster(emb)
    alone, _ = cluster(emb[sample])
    return {"ami_all": ami(y, labels), "ami_all_on_fitted_rows": ami(y[sample], labels[sample]),
            "ami_all_on_placed_rows": ami(y[rest], labels[rest]), "ami_fitted_rows_clustered_alone": ami(y[sample], alone),
            "cluster_s": round(seconds, 1)}


def fit_and_place(x, fitted, rest, started):
    """UMAP fitted on rows ``fitted`` and the ``rest`` placed as the product does: ``(embedding, fit seconds,
    the time placing started)``."""
    model = R._fit(["umap"], SETTINGS, x[fitted], n_new=len(rest))
    fit_s = time.perf_counter() - started
    emb = np.empty((len(x), 50), np.float32)
    emb[fitted] = model(None, fitted=True)
    placing = time.perf_counter()
    for start in range(0, len(rest), R.PLACE_BLOCK):
        part = rest[start : start + R.PLACE_BLOCK]
        emb[part] = model(x[part], fitted=False)
    return emb, fit_s, placing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=["real", "base", "full", "subsample", "real_noise", "nn", "place", "stored",
                                               "siblings", "recluster", "dedup"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "umap_gap.jsonl")
    parser.add_argument("--save", type=Path, help="folder to save the embeddings of base and full in (for recluster)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                        help="where the real rows' caches are (as scale.py's --results)")
    a = parser.parse_args()
    name, args = a.experiment, a.args
    if name == "real":
        x, y = load(REAL)
        emb, seconds = fit_all(x)
        row = {"exp": "real rows, full fit", "n": len(x), "ami": ami(y, cluster(emb)[0]), "fit_s": round(seconds, 1)}
    elif name == "real_noise":
        x, y = load(REAL)
        x = x + np.random.default_rng(1).normal(0, 0.05, x.shape).astype(np.float32)
        emb, seconds = fit_all(x)
        row = {"exp": "real rows + noise 0.05, no copies, full fit", "n": len(x), "ami": ami(y, cluster(emb)[0]),
               "fit_s": round(seconds, 1)}
    elif name == "nn":
        x, y = load(REAL)
        for k in [int(v) for v in args[0].split(",")]:
            emb, seconds = fit_all(x, dict(SETTINGS, n_neighbors=k))
            row = {"exp": f"real rows, full fit, n_neighbors={k}", "n": len(x), "ami": ami(y, cluster(emb)[0]),
                   "fit_s": round(seconds, 1)}
            write(a.out, row)
        return
    elif name == "subsample":
        x, y = load(args[0])
        sample, _ = split(len(x), int(args[1]))
        emb, seconds = fit_all(x[sample])
        row = {"exp": f"full fit on {len(sample)}-row sample of {args[0]}", "n": len(sample),
               "ami": ami(y[sample], cluster(emb)[0]), "fit_s": round(seconds, 1)}
    elif name == "full":
        x, y = load(args[0])
        emb, seconds = fit_all(x)
        labels, cluster_s = cluster(emb)
        if a.save:
            np.save(a.save / "emb-full.npy", emb)
        row = {"exp": f"full fit on all rows of {args[0]}", "n": len(x), "ami": ami(y, labels), "fit_s": round(seconds, 1),
               "cluster_s": round(cluster_s, 1)}
    elif name == "base":
        x, y = load(args[0])
        sample, rest = split(len(x), int(args[1]))
        started = time.perf_counter()
        emb, fit_s, started = fit_and_place(x, sample, rest, started)
        if a.save:
            np.save(a.save / "emb-base.npy", emb)
        row = {"exp": f"fit {len(sample)} + place the rest of {args[0]}", "n": len(x), **split_scores(y, emb, sample, rest),
               "fit_s": round(fit_s, 1), "place_s": round(time.perf_counter() - started, 1)}
    elif name == "place":
        x, y = load(args[0])
        sample, rest = split(len(x), int(args[1]))
        started = time.perf_counter()
        xs = x[sample]
        graph = Neighbours(xs, random_state=0).graph(SETTINGS["n_neighbors"] - 1, "euclidean").with_self()
        reducer, fitted = R.fit_umap(xs, n_neighbors=30, min_dist=0.0, n_components=50, metric="euclidean",
                                     random_state=0, precomputed_knn=graph)
        fit_s = time.perf_counter() - started
        search = NeighbourSearch(xs, 30, "euclidean", n_queries=len(rest), random_state=0)
        for epochs in [int(v) for v in args[2].split(",")]:
            emb = np.empty((len(x), 50), np.float32)
            emb[sample] = fitted
            place_s = refine_s = 0.0
            for start in range(0, len(rest), R.PLACE_BLOCK):
                part = rest[start : start + R.PLACE_BLOCK]
                started = time.perf_counter()
                emb[part] = R.place_by_neighbours(search, fitted, x[part])
                place_s += time.perf_counter() - started
                if epochs:  # its own search again (place_by_neighbours keeps its neighbours to itself)
                    started = time.perf_counter()
                    idx, dist = search(x[part])
                    emb[part] = refine_placed(emb[part], fitted, idx, dist, search.k, float(reducer._a),
                                              float(reducer._b), epochs)
                    refine_s += time.perf_counter() - started
            labels, cluster_s = cluster(emb)
            write(a.out, {"exp": f"fit {len(sample)} + place the rest of {args[0]}, {epochs} SGD epochs", "n": len(x),
                          "ami_all": ami(y, labels), "ami_on_fitted_rows": ami(y[sample], labels[sample]),
                          "ami_on_placed_rows": ami(y[rest], labels[rest]), "fit_s": round(fit_s, 1),
                          "place_s": round(place_s, 1), "refine_s": round(refine_s, 1),
                          "cluster_s": round(cluster_s, 1)})
        return
    elif name == "siblings":
        from scale import real_rows
        from umap.umap_ import smooth_knn_dist

        from imgclust.knn import knn_graph

        real, _ = real_rows(a.results)
        n, m = int(args[1]), int(args[2])
        source = np.random.default_rng(0).integers(0, len(real), n)  # scale.build's first draw: each row's real row
        sample = split(n, m)[0] if m < n else np.arange(n)
        x = Cache(args[0]).rows(ENCODER).take(sample).astype(np.float32)
        graph = knn_graph(x, SETTINGS["n_neighbors"] - 1, "euclidean")
        idx = np.concatenate([np.arange(m)[:, None], graph.indices], 1)  # as UMAP's precomputed lists: self first
        dist = np.concatenate([np.zeros((m, 1), np.float32), graph.distances], 1)
        sigmas, rhos = smooth_knn_dist(dist, float(SETTINGS["n_neighbors"]), local_connectivity=1.0)
        weight = np.exp(-np.maximum(dist - rhos[:, None], 0.0) / sigmas[:, None])
        weight[:, 0] = 0.0
        sibling = source[sample][idx] == source[sample][:, None]
        sibling[:, 0] = False
        share = (weight * sibling).sum(1) / weight.sum(1)
        copies = np.bincount(source[sample])
        row = {"exp": f"copies of the same real row in the {m}-row fit sample of {args[0]}", "n": n, "fit_rows": m,
               "mean_copies_per_real_row_in_fit": round(float(copies[copies > 0].mean()), 2),
               "mean_siblings_among_30nn": round(float(sibling.sum(1).mean()), 2),
               "membership_weight_share_on_siblings": round(float(share.mean()), 3),
               "rows_with_over_99pct_weight_on_siblings": round(float((share > 0.99).mean()), 3)}
    elif name == "dedup":
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        from imgclust.knn import knn_graph

        x, y = load(args[0])
        sample, _ = split(len(x), int(args[1]))
        started = time.perf_counter()
        graph = knn_graph(x[sample], SETTINGS["n_neighbors"] - 1, "cosine")
        close = 1.0 - graph.distances >= float(args[2])
        rows = np.repeat(np.arange(len(sample)), graph.indices.shape[1])[close.ravel()]
        links = coo_matrix((np.ones(len(rows)), (rows, graph.indices.ravel()[close.ravel()])), (len(sample),) * 2)
        _, component = connected_components(links, directed=False)
        first = np.unique(component, return_index=True)[1]
        kept = np.sort(sample[first])
        rest = np.setdiff1d(np.arange(len(x)), kept)
        emb, fit_s, started = fit_and_place(x, kept, rest, started)
        row = {"exp": f"prototype: {args[1]}-row sample of {args[0]}, near-copies (cosine >= {args[2]}) collapsed",
               "n": len(x), "fitted": len(kept), **split_scores(y, emb, kept, rest), "fit_s": round(fit_s, 1),
               "place_s": round(time.perf_counter() - started, 1)}
    elif name == "recluster":
        from sklearn.cluster import KMeans

        emb = np.load(args[0])
        y = np.asarray(Cache(args[1]).read_index(ENCODER).labels)
        kmeans = KMeans(20, n_init=3, random_state=0).fit_predict(emb)
        sample = split(len(emb), min(20000, len(emb)))[0]
        row = {"exp": f"{args[0]} reclustered", "n": len(emb), "kmeans20_ami": ami(y, kmeans),
               "exact_ward_on_20k_sample_ami": ami(y[sample], cluster(emb[sample])[0])}
    else:  # stored
        cache = Cache(args[0])
        rows = cache.rows(ENCODER)
        y = np.asarray(cache.read_index(ENCODER).labels)
        key = next(k for k in cache.current(ENCODER, "reductions", rows.fingerprint) if k.startswith("umap-"))
        emb = R.load_reduction(args[0], ENCODER, key)
        sample, rest = split(len(emb), int(args[1]))
        row = {"exp": f"stored {key} of {args[0]} (fit {len(sample)}, the rest placed)", "n": len(emb),
               **split_scores(y, emb, sample, rest)}
    write(a.out, row)


def write(out: Path, row: dict) -> None:
    print(json.dumps(row), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
