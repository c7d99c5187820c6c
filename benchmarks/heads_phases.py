"""Where a trained head's time goes on a large cache: reading the rows, each kNN search, each epoch, the whole fit.

Fits ``METHOD`` (20 clusters, seed 0, ``KEY=VALUE`` parameters) on every row of ``CACHE`` in this process and
prints the seconds of each phase as it ends (a diagnostic: run it under ``OMP_NUM_THREADS=1`` and without to
compare torch's thread counts on a busy machine)::

    OMP_NUM_THREADS=1 python benchmarks/heads_phases.py /tmp/heads12/scale-100000.h5 scan
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imgclust.knn as knn  # noqa: E402
from imgclust.cache import Cache  # noqa: E402
from imgclust.clusterers import create_clusterer  # noqa: E402


def main() -> None:
    cache, method, *pairs = sys.argv[1:]
    started = time.time()
    X = Cache(cache).read_embeddings("effnet-lite0")
    print("read", X.shape, X.dtype, round(time.time() - started, 1), "s", flush=True)
    est = create_clusterer(method, n_clusters=20, random_state=0, **dict(p.split("=", 1) for p in pairs))
    fit_start = time.time()
    est.on_epoch = lambda e, n, loss: print(f"epoch {e}/{n} loss {loss:.4f} at {time.time() - fit_start:.1f} s", flush=True)
    search = knn.knn_graph

    def timed_search(rows, *args, **kwargs):
        begun = time.time()
        graph = search(rows, *args, **kwargs)
        print("knn graph of", rows.shape, round(time.time() - begun, 1), "s", flush=True)
        return graph

    knn.knn_graph = timed_search
    est.fit(X)
    print("fit", round(time.time() - fit_start, 1), "s:", est.fit_path_, flush=True)


if __name__ == "__main__":
    main()
