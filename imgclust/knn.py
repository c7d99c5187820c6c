"""k-nearest-neighbour graphs: one per space, computed once, shared by every stage that needs neighbours.

:func:`knn_graph` returns each row's ``k`` nearest other rows (self excluded), nearest first, with
FAISS (Johnson, Douze & Jégou, "Billion-scale similarity search with GPUs", 2019):

* **exact** (``IndexFlat``: every distance, in BLAS blocks) while the work ``N² · d`` stays under
  :data:`EXACT_WORK` (about a minute on two cores; e.g. 40,000 rows of 1,280 dims, 280,000 of 50);
* **approximate** above it: an inverted file (``IndexIVFFlat``, ``nlist ≈ 4 √N`` lists trained by
  k-means on a sample), searched in ``nprobe`` lists. ``nprobe`` starts at 8 and doubles until the
  recall measured against exact search on :data:`RECALL_QUERIES` sampled rows reaches
  :data:`TARGET_RECALL`; the graph records the recall it reached (``KnnGraph.recall``).

Both are deterministic for a seed on a given machine (the k-means sample and FAISS's own seed are
fixed; ties between equal distances may order differently across FAISS builds). Metrics:
``euclidean`` and ``cosine`` (rows normalised, inner product; the distance is ``1 - cos``) on either
path; ``manhattan`` and ``chebyshev`` exactly only. :func:`neighbours_of` finds, for new rows, their
nearest rows of a base set (``assign``'s k-NN vote, UMAP's out-of-sample placement).

:class:`Neighbours` holds the graphs of one space and computes each metric's once, at the largest ``k``
asked; with a :class:`StoredGraphs` it keeps them in the cache (result kind ``knn``, keyed by space,
metric and row set), so UMAP, the density and graph methods, the trained heads and ``assign`` share it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import ImgclustError, ParameterError, UsageError

_log = logging.getLogger("imgclust.knn")

METRICS = ("euclidean", "cosine", "manhattan", "chebyshev")
APPROXIMATE_METRICS = ("euclidean", "cosine")
#: Multiply-adds ``N² · d`` below which the graph is exact (about a minute on this 2-core machine).
EXACT_WORK = 4e12
#: Recall of the approximate graph against exact search, measured on a sample of rows.
TARGET_RECALL = 0.95
RECALL_QUERIES = 1000
#: Rows used to train the inverted file's centroids (FAISS advises 30-256 per list).
TRAIN_PER_LIST = 64
#: Above this many dimensions the inverted file searches a PCA projection and re-ranks exactly.
PROJECTED_DIMS = 128
#: Candidates per wanted neighbour taken from the projection before the exact re-ranking.
CANDIDATES = 4
#: Most lists one search visits: beyond it an approximate search costs more than it saves, and the
#: recall reached is reported as it is.
MAX_NPROBE = 64
DEFAULT_K = 30
#: The progress stage of a graph being computed (rows searched).
KNN_STAGE = "kNN graph"


@dataclass
class KnnGraph:
    """The ``k`` nearest other rows of every row, nearest first.

    Attributes
    ----------
    indices : ndarray of shape (n_samples, k), int64
        Neighbour row numbers (never the row itself; -1 where fewer than k others exist).
    distances : ndarray of shape (n_samples, k), float32
        Their distances in ``metric`` (``1 - cos`` for cosine).
    method : ``"exact"`` or ``"ivf"``.
    recall : fraction of the exact k nearest found, measured on ``recall_queries`` rows (1.0 exact).
    """

    indices: np.ndarray
    distances: np.ndarray
    metric: str
    method: str
    recall: float
    seconds: float = 0.0
    nprobe: int | None = None
    nlist: int | None = None
    recall_queries: int = 0

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def top(self, k: int) -> "KnnGraph":
        """The same graph keeping each row's ``k`` nearest."""
        if k > self.k:
            raise ParameterError(f"the stored graph has {self.k} neighbours per row, {k} were asked",
                                 hint="compute a larger graph")
        return KnnGraph(self.indices[:, :k], self.distances[:, :k], self.metric, self.method, self.recall,
                        self.seconds, self.nprobe, self.nlist, self.recall_queries)

    def with_self(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, distances)`` with each row first in its own list (UMAP's precomputed_knn layout)."""
        n = self.indices.shape[0]
        idx = np.concatenate([np.arange(n, dtype=np.int64)[:, None], self.indices], axis=1)
        dist = np.concatenate([np.zeros((n, 1), np.float32), self.distances], axis=1)
        return idx, dist

    def describe(self) -> dict:
        return {"k": self.k, "metric": self.metric, "method": self.method, "recall": round(float(self.recall), 4),
                "recall_queries": self.recall_queries, "nprobe": self.nprobe, "nlist": self.nlist,
                "seconds": round(self.seconds, 3)}


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # a core dependency; only a broken install gets here
        raise UsageError("the kNN graph needs faiss, which is not installed", hint="pip install faiss-cpu") from exc
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return faiss


def _check(metric: str, k: int) -> None:
    if metric not in METRICS:
        raise ParameterError(f"unknown kNN metric {metric!r}", hint=f"choose from {', '.join(METRICS)}")
    if k < 1:
        raise ParameterError(f"the number of neighbours must be >= 1, got {k}", hint=f"{DEFAULT_K} is the default")


def row_norms(X: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row, shape ``(n, 1)``, holding one value per row: ``np.linalg.norm``
    squares every element into a temporary as large as ``X`` (4.8 GiB for 1,000,000 x 1,280 rows)."""
    return np.sqrt(np.einsum("ij,ij->i", X, X))[:, None]


def l2_normalise(x: np.ndarray, copy: bool = True) -> np.ndarray:
    """Rows scaled to unit length (zero rows left as they are); ``copy=False`` scales ``x`` in place
    with no temporary as large as ``x``."""
    norms = row_norms(x)
    norms = np.where(norms > 0, norms, 1.0).astype(x.dtype)
    if copy:
        return x / norms
    x /= norms
    return x


def _prepared(X: np.ndarray, metric: str) -> np.ndarray:
    """``X`` as contiguous float32, unit rows for cosine: rows already of unit norm are not copied (a
    caller holding a million rows normalises them in place instead of paying for a second copy)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if metric == "cosine":
        norms = row_norms(X)
        if not np.allclose(norms[norms > 0], 1.0, atol=1e-5):
            X = X / np.where(norms > 0, norms, 1.0)
    return X


def _faiss_metric(faiss, metric: str):
    return {"euclidean": faiss.METRIC_L2, "cosine": faiss.METRIC_INNER_PRODUCT, "manhattan": faiss.METRIC_L1,
            "chebyshev": faiss.METRIC_Linf}[metric]


def _to_distances(raw: np.ndarray, metric: str) -> np.ndarray:
    """FAISS's scores as distances: squared L2 -> L2, inner product of unit rows -> 1 - cos."""
    if metric == "euclidean":
        return np.sqrt(np.maximum(raw, 0.0))
    if metric == "cosine":
        return np.clip(1.0 - raw, 0.0, 2.0)
    return raw


def exact_work(n_base: int, n_query: int, dim: int) -> float:
    return float(n_base) * n_query * dim


def rerank(faiss, queries: np.ndarray, base: np.ndarray, candidates: np.ndarray, k: int,
           metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each query's ``candidates`` (rows of ``base``; -1 pads a short list) by exact
    distance: ``(raw scores, indices)`` as ``faiss.Index.search``, -1 where fewer than ``k`` were found.

    FAISS's ``knn_*_by_idx`` reads each candidate row in place and keeps a heap per query, in C++ across
    all cores: ten times faster than gathering the rows into a NumPy block (0.21 s against 2.2 s for
    20,000 queries of 124 candidates in 1,280 dims here), with no memory beyond the results.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    n_queries, n_candidates = candidates.shape
    raw = np.empty((n_queries, k), np.float32)
    idx = np.empty((n_queries, k), np.int64)
    by_idx = faiss.knn_inner_products_by_idx if metric == "cosine" else faiss.knn_L2sqr_by_idx
    by_idx(faiss.swig_ptr(queries), faiss.swig_ptr(base), faiss.swig_ptr(candidates), base.shape[1], n_queries,
           base.shape[0], n_candidates, k, faiss.swig_ptr(raw), faiss.swig_ptr(idx), n_candidates)
    raw[idx < 0] = -np.inf if metric == "cosine" else np.inf  # FAISS leaves its heap's sentinel there
    return raw, idx


class _Approximate:
    """An inverted file over ``base`` (Jégou et al. 2011's IVF, as FAISS's ``IndexIVFFlat``).

    Above :data:`PROJECTED_DIMS` dimensions the lists hold a PCA projection of the rows (FAISS's
    ``PCAMatrix``, trained on the same sample as the lists) and each search takes
    :data:`CANDIDATES` × k candidates there, then re-ranks them by their exact distance in the
    full space: scanning lists does not use BLAS, so a 1,280-d scan costs ten times a 128-d one.
    """

    def __init__(self, faiss, base: np.ndarray, metric: str, random_state: int):
        n, dim = base.shape
        self.faiss, self.base, self.metric = faiss, base, metric
        self.nlist = int(max(1, min(round(4 * math.sqrt(n)), n // 39)))  # FAISS wants >= 39 rows a list
        rng = np.random.default_rng(random_state)
        train = base[np.sort(rng.choice(n, size=min(n, self.nlist * TRAIN_PER_LIST), replace=False))]
        self.pca = None
        if dim > PROJECTED_DIMS:
            self.pca = faiss.PCAMatrix(dim, PROJECTED_DIMS)
            self.pca.train(train)
            train = self.pca.apply(train)
        # projected rows are compared by L2 (for unit rows, the same order as cosine)
        space = faiss.METRIC_L2 if self.pca is not None else _faiss_metric(faiss, metric)
        quantizer = faiss.IndexFlat(train.shape[1], space)
        self.index = faiss.IndexIVFFlat(quantizer, train.shape[1], self.nlist, space)
        self.index.cp.seed = random_state
        self.index.cp.niter = 10
        self.index.train(train)
        for start in range(0, n, 65536):  # projected a block at a time: no second full copy
            self.index.add(self._project(base[start : start + 65536]))

    def _project(self, rows: np.ndarray) -> np.ndarray:
        return rows if self.pca is None else self.pca.apply(rows)

    def list_order(self) -> np.ndarray:
        """The base rows grouped by inverted list: searched in this order, neighbouring queries probe the
        same lists and re-rank the same candidate rows, which then come from the CPU's caches instead of
        memory (1.7 times faster on 200,000 x 1,280 rows here; the results are the same)."""
        lists = self.index.invlists
        # views of FAISS's id arrays, copied once by the concatenation
        return np.concatenate([self.faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i))
                               for i in range(self.nlist) if lists.list_size(i)]).astype(np.int64, copy=False)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(raw scores, indices)`` of the k nearest rows of ``base``, as ``faiss.Index.search``."""
        if self.pca is None:
            return self.index.search(queries, k)
        kc = min(max(CANDIDATES * k, k + 10), len(self.base))
        _, candidates = self.index.search(self._project(queries), kc)
        return rerank(self.faiss, queries, self.base, candidates, k, self.metric)

    def tune(self, queries: np.ndarray, truth: np.ndarray, k: int, target: float) -> tuple[int, float]:
        """The smallest ``nprobe`` (8, 16, ...) whose recall on ``queries`` reaches ``target``."""
        nprobe = 8
        while True:
            self.index.nprobe = min(nprobe, self.nlist)
            _, found = self.search(queries, k)
            recall = _recall(found, truth)
            if recall >= target or nprobe >= min(self.nlist, MAX_NPROBE):
                return self.index.nprobe, recall
            nprobe *= 2


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(np.intersect1d(f[f >= 0], t[t >= 0]).size for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


class _Exact:
    """Every distance, in BLAS blocks, without copying ``base`` (``faiss.knn``)."""

    def __init__(self, faiss, base: np.ndarray, metric: str):
        self.faiss, self.base, self.metric = faiss, base, _faiss_metric(faiss, metric)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.faiss.knn(queries, self.base, k, metric=self.metric)


def _index(faiss, base: np.ndarray, queries: np.ndarray, k: int, metric: str, random_state: int,
           exact_work_limit: float, target_recall: float, n_queries: int | None = None):
    """An exact index, or an approximate one tuned on a sample of ``queries``: ``(index, recall, sampled)``.

    ``n_queries`` is how many queries the index will answer in all (default: ``len(queries)``).
    """
    exact = _Exact(faiss, base, metric)
    n_queries = len(queries) if n_queries is None else n_queries
    if (exact_work(len(base), n_queries, base.shape[1]) <= exact_work_limit or metric not in APPROXIMATE_METRICS
            or len(base) < 1024):
        return exact, 1.0, 0
    rng = np.random.default_rng(random_state)
    probe = queries[np.sort(rng.choice(len(queries), size=min(RECALL_QUERIES, len(queries)), replace=False))]
    _, truth = exact.search(probe, k)
    index = _Approximate(faiss, base, metric, random_state)
    _, recall = index.tune(probe, truth, k, target_recall)
    return index, recall, len(probe)


def _search(index, queries: np.ndarray, k: int, on_progress: Callable[[int, int], None] | None,
            block: int = 8192, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` in blocks of queries, reporting ``(rows done, rows)`` after each; ``order``: the
    queries' positions in the order to search them (each query's result does not depend on it)."""
    raw = np.empty((len(queries), k), np.float32)
    idx = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), block):
        stop = min(start + block, len(queries))
        part = slice(start, stop) if order is None else order[start:stop]
        raw[part], idx[part] = index.search(queries[part], k)
        if on_progress is not None:
            on_progress(stop, len(queries))
    return raw, idx


def _drop_self(idx: np.ndarray, raw: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest others from a search for k+1 that usually returns the row itself first
    (query ``i`` is base row ``rows[i]``; all rows in order when None)."""
    n = idx.shape[0]
    is_self = idx == (np.arange(n) if rows is None else rows)[:, None]
    # rows whose self was not returned (duplicates tie with it, or an approximate miss) drop the last hit
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return idx[keep].reshape(n, k), raw[keep].reshape(n, k)


def knn_graph(X: np.ndarray, k: int = DEFAULT_K, metric: str = "euclidean", *, random_state: int = 0,
              exact_work_limit: float = EXACT_WORK, target_recall: float = TARGET_RECALL,
              on_progress: Callable[[int, int], None] | None = None) -> KnnGraph:
    """The k-nearest-neighbour graph of the rows of ``X`` (self excluded); see the module docstring.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    k : neighbours per row (clipped to n_samples - 1).
    metric : euclidean, cosine (exact or approximate), manhattan or chebyshev (exact only).
    exact_work_limit : ``N² · d`` above which the graph is approximate.
    target_recall : recall the approximate search must reach on the measured sample.
    on_progress : ``(rows done, rows)`` after each block of queries.
    """
    _check(metric, k)
    started = time.perf_counter()
    X = _prepared(X, metric)
    n = X.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return KnnGraph(np.empty((n, 0), np.int64), np.empty((n, 0), np.float32), metric, "exact", 1.0)
    if on_progress is not None:  # the stage shows while the index is built (about 30 s at 1,000,000 x 1,280)
        on_progress(0, n)
    index, recall, probed = _index(_faiss(), X, X, k + 1, metric, random_state, exact_work_limit, target_recall)
    approximate = isinstance(index, _Approximate)
    raw, idx = _search(index, X, k + 1, on_progress, order=index.list_order() if approximate else None)
    idx, raw = _drop_self(idx, raw, k)
    return KnnGraph(idx, _to_distances(raw, metric).astype(np.float32), metric, "ivf" if approximate else "exact",
                    recall, time.perf_counter() - started, index.index.nprobe if approximate else None,
                    index.nlist if approximate else None, probed)


class NeighbourSearch:
    """The ``k`` nearest rows of a fixed ``base`` for queries that come in batches.

    The index is built once, at the first batch (exact, or approximate as :func:`knn_graph` and tuned to
    ``target_recall`` on a sample of that batch), and answers every later batch; ``n_queries`` (all
    batches together) decides between exact and approximate. ``recall`` is the measured recall.
    """

    def __init__(self, base: np.ndarray, k: int, metric: str = "euclidean", *, n_queries: int, random_state: int = 0,
                 exact_work_limit: float = EXACT_WORK, target_recall: float = TARGET_RECALL):
        _check(metric, k)
        self.base = _prepared(base, metric)
        self.k, self.metric, self.n_queries = min(k, len(self.base)), metric, n_queries
        self.random_state, self.exact_work_limit, self.target_recall = random_state, exact_work_limit, target_recall
        self.index, self.recall = None, 1.0

    def __call__(self, queries: np.ndarray,
                 on_progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, distances)`` of each query's ``k`` nearest rows of the base."""
        queries = _prepared(queries, self.metric)
        if self.index is None:
            self.index, self.recall, _ = _index(_faiss(), self.base, queries, self.k, self.metric, self.random_state,
                                                self.exact_work_limit, self.target_recall, self.n_queries)
        raw, idx = _search(self.index, queries, self.k, on_progress)
        return idx, _to_distances(raw, self.metric).astype(np.float32)


def neighbours_of(base: np.ndarray, queries: np.ndarray, k: int, metric: str = "euclidean", *,
                  random_state: int = 0, exact_work_limit: float = EXACT_WORK, target_recall: float = TARGET_RECALL,
                  on_progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """For each row of ``queries``, its ``k`` nearest rows of ``base``: ``(indices, distances, recall)``.

    Exact while ``len(base) · len(queries) · d`` stays under ``exact_work_limit``, else approximate
    as :func:`knn_graph`, tuned to ``target_recall`` on a sample of the queries (see :class:`NeighbourSearch`).
    """
    search = NeighbourSearch(base, k, metric, n_queries=len(queries), random_state=random_state,
                             exact_work_limit=exact_work_limit, target_recall=target_recall)
    idx, dist = search(queries, on_progress)
    return idx, dist, search.recall


def subset_graph(graph: KnnGraph, rows: np.ndarray, base: np.ndarray, k: int, *, random_state: int = 0,
                 on_progress: Callable[[int, int], None] | None = None) -> KnnGraph:
    """The ``k``-nearest-neighbour graph of ``base = X[rows]`` (numbered in ``rows``' order) from ``graph``, X's.

    Each row keeps its listed neighbours that are among ``rows``, nearest first; only a row left with
    fewer than ``k`` is searched again, among ``base`` (exact or approximate as :func:`knn_graph`). From an
    exact graph the result is exact: a row's listed neighbours are nearer than every row it does not list.
    """
    started = time.perf_counter()
    k = min(k, len(rows) - 1)
    position = np.full(graph.indices.shape[0], -1, np.int64)
    position[rows] = np.arange(len(rows))
    listed = graph.indices[rows]
    mapped = np.where(listed >= 0, position[np.maximum(listed, 0)], -1)
    order = np.argsort(mapped < 0, axis=1, kind="stable")[:, :k]  # the rows still there, in their order
    indices = np.take_along_axis(mapped, order, 1)
    distances = np.take_along_axis(graph.distances[rows], order, 1).astype(np.float32)
    short = np.flatnonzero((mapped >= 0).sum(axis=1) < k)
    recall = graph.recall
    if len(short):
        search = NeighbourSearch(base, k + 1, graph.metric, n_queries=len(short), random_state=random_state)
        found, found_distances = search(base[short], on_progress)
        found, found_distances = _drop_self(found, found_distances, k, short)
        indices[short], distances[short] = found, found_distances
        recall = min(recall, search.recall)
    return KnnGraph(indices, distances, graph.metric, graph.method, recall, time.perf_counter() - started,
                    graph.nprobe, graph.nlist, graph.recall_queries)


class StoredGraphs:
    """The kNN graphs of one space kept in a cache (result kind ``knn``), for one row set.

    A graph is stored as ``<space>:<metric>@<fingerprint[:8]>`` with its indices (int32 below 2³¹ rows)
    and distances, and the attributes of :meth:`KnnGraph.describe`; rows that change make it stale
    like every other result, so a graph is never used for other rows.
    """

    def __init__(self, cache, encoder: str, space: str, fingerprint: str):
        self.cache, self.encoder, self.space, self.fingerprint = cache, encoder, space, fingerprint

    def name(self, metric: str) -> str:
        return f"{self.space}:{metric}@{self.fingerprint[:8]}"

    def _attrs(self, metric: str, k: int) -> dict | None:
        attrs = self.cache.current(self.encoder, "knn", self.fingerprint).get(self.name(metric))
        return attrs if attrs is not None and int(attrs.get("k", 0)) >= k else None

    def has(self, metric: str, k: int) -> bool:
        """Whether a graph of ``metric`` with at least ``k`` neighbours per row is stored (nothing is read)."""
        return self._attrs(metric, k) is not None

    def load(self, metric: str, k: int) -> KnnGraph | None:
        """The stored graph of ``metric`` with at least ``k`` neighbours per row, or None."""
        attrs = self._attrs(metric, k)
        if attrs is None:
            return None
        arrays = self.cache.read_result(self.encoder, "knn", self.name(metric), self.fingerprint)
        return KnnGraph(arrays["indices"].astype(np.int64), arrays["distances"], metric, attrs["method"],
                        float(attrs["recall"]), float(attrs.get("seconds", 0.0)), attrs.get("nprobe"),
                        attrs.get("nlist"), int(attrs.get("recall_queries", 0)))

    def save(self, graph: KnnGraph) -> None:
        """Store ``graph``; a cache that cannot take it (read-only, packed, rows changed meanwhile) keeps
        the graph out and the caller goes on with it in memory: it is a shortcut, not a result."""
        small = graph.indices.shape[0] < 2**31
        indices = graph.indices.astype(np.int32) if small else graph.indices
        try:
            self.cache.store_result(self.encoder, "knn", self.name(graph.metric),
                                    {"indices": indices, "distances": graph.distances.astype(np.float32)},
                                    {**graph.describe(), "space": self.space}, self.fingerprint)
        except ImgclustError as exc:
            _log.info("kNN graph not stored in %s: %s", self.cache.path, exc)


class Neighbours:
    """The neighbour graphs of one space (the rows of ``X``), each computed once and shared.

    Every stage that needs neighbours asks :meth:`graph` for ``k`` and a metric: the first request of a
    metric takes the graph from ``store`` (a :class:`StoredGraphs`) when one with enough neighbours is
    there, else computes it with :func:`knn_graph` at ``max(k, DEFAULT_K)`` and stores it; later requests
    with no larger ``k`` take its nearest ``k`` (:meth:`KnnGraph.top`) without any search.
    """

    def __init__(self, X: np.ndarray, *, random_state: int = 0, store: StoredGraphs | None = None,
                 on_progress: Callable[[int, int], None] | None = None):
        self.X, self.random_state, self.store, self.on_progress = X, random_state, store, on_progress
        self._graphs: dict[str, KnnGraph] = {}

    def __len__(self) -> int:
        return len(self.X)

    def graph(self, k: int, metric: str = "euclidean") -> KnnGraph:
        """Each row's ``k`` nearest other rows in ``metric`` (clipped to the rows there are)."""
        _check(metric, k)
        k = min(k, len(self.X) - 1)
        kept = self._graphs.get(metric)
        if kept is None or kept.k < k:
            kept = self.store.load(metric, k) if self.store is not None else None
            if kept is None:
                kept = knn_graph(self.X, max(k, DEFAULT_K), metric, random_state=self.random_state,
                                 on_progress=self.on_progress)
                if self.store is not None:
                    self.store.save(kept)
            self._graphs[metric] = kept
        return kept if kept.k == k else kept.top(k)

    def share(self, graph: KnnGraph) -> None:
        """Keep (and store) a graph another stage computed over these very rows (e.g. UMAP's)."""
        if graph.indices.shape[0] != len(self.X):
            raise ValueError("a graph of other rows cannot be shared")
        kept = self._graphs.get(graph.metric)
        if kept is None or kept.k < graph.k:
            self._graphs[graph.metric] = graph
            if self.store is not None:
                self.store.save(graph)
