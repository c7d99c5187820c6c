"""Outlier scores: how isolated each image is among the others, on the raw embeddings.

The score of row ``i`` is its cosine distance to its ``k``-th nearest other row, divided by the
median of that distance over all rows:

    score_i = d_k(i) / median_j d_k(j)

the k-nearest-neighbour distance used as an outlier score by Ramaswamy, Rastogi & Shim ("Efficient
algorithms for mining outliers from large data sets", SIGMOD 2000), normalised by its median so that
it reads the same across encoders and data sets: 1 is a typical image, 2 is twice as far from its
k-th neighbour as a typical one. The graph is :func:`imgclust.knn.knn_graph` (cosine; exact for small
sets, an inverted file tuned to a measured recall above). Images scoring at least
:data:`MARK_SCORE` are *marked* as outliers in reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ._progress import Progress, stage
from .cache import Cache
from .errors import ParameterError, ResourceError

DEFAULT_K = 10
#: Reports mark images at or above this score: with effnet-lite0 and k = 10, 1.1% of imagenette-val
#: (its 99th percentile is 1.51) and 0.04% of cifar10-test (99th percentile 1.32).
MARK_SCORE = 1.5


@dataclass
class OutlierReport:
    """Every image's outlier score (row order of the cache)."""

    cache: str
    encoder: str
    k: int
    paths: np.ndarray
    scores: np.ndarray
    kth_distance: np.ndarray
    median_distance: float
    graph: dict

    def top(self, n: int) -> np.ndarray:
        """Row numbers of the ``n`` highest scores, highest first (ties: row order)."""
        return np.argsort(-self.scores, kind="stable")[:max(0, n)]

    @property
    def marked(self) -> np.ndarray:
        """Row numbers scoring at least :data:`MARK_SCORE`, highest first."""
        order = self.top(len(self.scores))
        return order[self.scores[order] >= MARK_SCORE]

    def to_dict(self, top: int | None = None) -> dict:
        rows = self.top(len(self.scores) if top is None else top)
        return {"cache": self.cache, "encoder": self.encoder, "k": self.k, "n_images": len(self.scores),
                "median_distance": self.median_distance, "mark_score": MARK_SCORE, "n_marked": len(self.marked),
                "graph": self.graph,
                "outliers": [{"rank": r + 1, "path": str(self.paths[i]), "score": round(float(self.scores[i]), 4),
                              "kth_distance": round(float(self.kth_distance[i]), 6)} for r, i in enumerate(rows)]}


def outlier_scores(kth_distance: np.ndarray) -> tuple[np.ndarray, float]:
    """``(scores, median)``: distances to the k-th neighbour over their median (all 1 when the median is 0)."""
    kth_distance = np.asarray(kth_distance, np.float64)
    if not len(kth_distance):
        return np.zeros(0), 0.0
    median = float(np.median(kth_distance))
    if median <= 0:  # more than half the rows have k exact copies: nothing stands out by this measure
        return np.where(kth_distance > 0, np.inf, 1.0), median
    return kth_distance / median, median


def memory_shortfall(cache: str | os.PathLike, encoder: str | None = None, *, k: int = DEFAULT_K,
                     memory_budget: int | None = None) -> str | None:
    """Why :func:`find_outliers` cannot run in memory (one line), or None when it can: its graph is stored,
    or the raw embeddings fit half the memory available (``memory_budget`` in bytes, if given). Checked
    before long work (an export scores first), so that nothing runs for minutes and then stops."""
    from .clusterers._base import available_memory_bytes
    from .knn import StoredGraphs

    store = Cache(cache)
    name = store.resolve_encoder(encoder)
    rows = store.rows(name)
    if StoredGraphs(store, name, "raw", rows.fingerprint).has("cosine", min(k, len(rows) - 1)):
        return None
    budget = memory_budget or available_memory_bytes() // 2
    needed = len(rows) * rows.dim * 4
    if needed <= budget:
        return None
    return (f"outlier scores of '{name}' need its {len(rows):,} embeddings in memory ({needed / 2**30:.1f} GiB), "
            f"over the {budget / 2**30:.1f} GiB memory budget")


def find_outliers(cache: str | os.PathLike, encoder: str | None = None, *, k: int = DEFAULT_K,
                  memory_budget: int | None = None,
                  progress: Progress | None = None) -> OutlierReport:
    """Every image's outlier score (see the module docstring).

    Parameters
    ----------
    cache : the HDF5 cache written by ``imgclust embed``.
    encoder : whose embeddings (default: the only one).
    k : which neighbour's distance (the k-th nearest other image); clipped to the number of images - 1.
    memory_budget : bytes the embeddings may take in memory (default: half the memory available).
    progress : ``progress(stage, done, total)`` while the embeddings are read
        (:data:`imgclust.cache.READ_STAGE`) and the graph is searched (:data:`imgclust.knn.KNN_STAGE`);
        neither happens once the graph is stored.
    """
    from .cache import READ_STAGE
    from .knn import KNN_STAGE, Neighbours, StoredGraphs, l2_normalise

    if k < 1:
        raise ParameterError(f"k must be >= 1, got {k}", hint=f"{DEFAULT_K} is the default")
    store = Cache(cache)
    name = store.resolve_encoder(encoder)
    rows = store.rows(name)
    # the raw space's shared cosine graph: computed once, stored in the cache, reused by later runs (which
    # then never read the embeddings themselves)
    graphs = StoredGraphs(store, name, "raw", rows.fingerprint)
    k_there = min(k, len(rows) - 1)  # a row has at most this many others
    graph = graphs.load("cosine", k_there)
    if graph is not None:
        graph = graph.top(k_there)
    else:
        short = memory_shortfall(cache, name, k=k, memory_budget=memory_budget)
        if short:
            raise ResourceError(short, hint="run on a machine with more memory, or on part of the images")
        # normalised in place: the graph search then takes these rows without a second copy
        X = l2_normalise(rows.read_embeddings(on_progress=stage(progress, READ_STAGE)), copy=False)
        graph = Neighbours(X, store=graphs, on_progress=stage(progress, KNN_STAGE)).graph(k, "cosine")
    if graph.k == 0:
        raise ResourceError(f"'{name}' has {len(rows)} image(s): an outlier score needs at least two",
                            hint="embed more images")
    kth = graph.distances[:, -1]
    scores, median = outlier_scores(kth)
    return OutlierReport(str(cache), name, graph.k, rows.index().paths, scores, kth.astype(np.float64), median,
                         graph.describe())
