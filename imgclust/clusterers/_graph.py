"""Graph methods: spectral clustering, affinity propagation, approximate rank-order (ARO) and CDP.

Spectral, ARO and CDP work on a k-nearest-neighbour graph, so their memory is O(N * k).
Affinity propagation needs the full N x N similarity matrix (``quadratic_memory``).
ARO and CDP find the number of clusters themselves; samples linked to nobody become singleton
clusters (not noise).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ImgclustError
from . import register_clusterer
from ._base import Clusterer, Param
from ._neighbours import symmetric_affinity

#: Above this many samples spectral's eigenvectors come from AMG-preconditioned LOBPCG (pyamg).
AMG_ROWS = 10_000


@register_clusterer
class Spectral(Clusterer):
    """Spectral clustering on a k-nearest-neighbour affinity graph (scikit-learn; ES).

    Embeds the samples with the leading eigenvectors of the kNN graph's Laplacian and clusters
    that embedding, so clusters may have any shape as long as they are connected in the graph.
    The affinity is the shared kNN graph, sparse and symmetrised (O(N · k) memory, no N × N matrix);
    above :data:`AMG_ROWS` samples the eigenvectors come from LOBPCG preconditioned by algebraic
    multigrid (pyamg; scikit-learn's ``eigen_solver="amg"``), below from ARPACK.

    Parameters
    ----------
    n_neighbors : int >= 2, default 15
        Neighbours per sample in the affinity graph. Too few splits clusters into islands, too
        many blurs them together; 10-50 is sensible.
    assign_labels : {"kmeans", "discretize", "cluster_qr"}, default "cluster_qr"
        How the spectral embedding becomes labels: cluster_qr is deterministic and needs no
        tuning; kmeans is the classic choice; discretize is an alternative search.
    """

    name = "spectral"
    summary = "Spectral clustering on a kNN graph; needs K"
    at_scale = ("the sparse kNN affinity from the shared graph; above 10,000 samples an AMG-preconditioned LOBPCG "
                "eigen-solver (pyamg) instead of ARPACK")
    paper = "ES (Scott et al.); Ng, Jordan & Weiss 2001"
    n_clusters_mode = "required"
    params = (
        Param("n_neighbors", 15, int, "neighbours per sample in the affinity graph (10-50)", low=2),
        Param("assign_labels", "cluster_qr", str, "how the spectral embedding becomes labels",
              choices=("kmeans", "discretize", "cluster_qr")),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        from sklearn.cluster import SpectralClustering

        n = X.shape[0]
        if self.n_clusters == 1:
            return np.zeros(n, dtype=np.int64)
        if self.n_clusters >= n:
            return np.arange(n, dtype=np.int64)
        # scikit-learn's "nearest_neighbors" affinity (each sample its own first neighbour) from the shared
        # graph, sparse; small inputs use a dense matrix (the sparse eigen-solver cannot ask for as many
        # vectors as there are samples).
        affinity = symmetric_affinity(self.neighbour_graph(min(self.n_neighbors, n - 1) - 1))
        if n <= 200:
            affinity = affinity.toarray()
        # above AMG_ROWS, ARPACK's shift-invert factorises the Laplacian (minutes at 100k): LOBPCG
        # preconditioned by algebraic multigrid (pyamg) solves the same sparse problem in O(N · k) memory
        large = n > AMG_ROWS
        self.fit_path_ = f"sparse kNN affinity, {'AMG-preconditioned LOBPCG' if large else 'ARPACK'} eigen-solver"
        model = SpectralClustering(
            n_clusters=self.n_clusters,
            affinity="precomputed",
            assign_labels=self.assign_labels,
            eigen_solver="amg" if large else None,
            random_state=self.random_state,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            return model.fit_predict(affinity)


@register_clusterer
class AffinityPropagation(Clusterer):
    """Affinity propagation (scikit-learn): samples vote for exemplars by passing messages (ZS).

    Finds the number of clusters itself: every cluster is built around one exemplar sample.
    Needs the full N x N similarity matrix, so memory grows as N^2 (about 2.4 GB for 10 000
    samples); imgclust refuses when it would not fit.

    Its default input is a 10-d PCA, not UMAP (:mod:`imgclust.spaces`): ZS's reported affinity
    results ran on a 10-d PCA because it failed to converge on UMAP (ZS §AP; METHODS.md correction 3).

    Parameters
    ----------
    damping : float in [0.5, 1), default 0.9
        How much each update keeps of the previous messages. Higher is slower but oscillates less.
        The seed paper found AP insensitive to damping (its first parameter set used 0.5); the
        per-encoder values (CLIP ViT-B 0.95, DINO ViT-B 0.85, supervised 0.9) and the 0.9 default
        come from the authors' later code (BEST_PARAMS_v3/v4).
    max_iter : int >= 1, default 1000
        Message-passing rounds at most (ZS: 1000).
    convergence_iter : int >= 1, default 15
        Stop once the exemplars have not changed for this many rounds (ZS: 15).
    preference : float or None, default None
        How readily a sample becomes an exemplar (a negative squared distance); higher gives more
        clusters. None uses the median similarity (scikit-learn's default).
    """

    name = "affinity"
    summary = "Affinity propagation: exemplar-based, finds K itself; O(N^2) memory"
    paper = "ZS (Lowe et al.) §AP; Frey & Dueck 2007"
    n_clusters_mode = "unused"
    quadratic_memory = True
    params = (
        Param("damping", 0.9, float, "share of the previous messages kept per update (0.5-0.95)", low=0.5, high=0.999),
        Param("max_iter", 1000, int, "message-passing rounds at most", low=1),
        Param("convergence_iter", 15, int, "stop after this many rounds without change", low=1),
        Param("preference", None, float, "readiness to become an exemplar (None = median similarity)",
              nullable=True),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        from sklearn.cluster import AffinityPropagation as SKAffinityPropagation
        from sklearn.exceptions import ConvergenceWarning

        n = X.shape[0]
        if n == 1:
            return np.zeros(1, dtype=np.int64)
        model = SKAffinityPropagation(
            damping=self.damping,
            max_iter=self.max_iter,
            convergence_iter=self.convergence_iter,
            preference=self.preference,
            random_state=self.random_state,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            warnings.filterwarnings("ignore", message="All samples have mutually equal similarities")
            try:
                labels = model.fit_predict(X)
            except ConvergenceWarning:
                labels = None
        if labels is None or (labels < 0).all():
            raise ImgclustError(
                f"affinity propagation did not converge in {self.max_iter} rounds",
                hint="raise damping (e.g. 0.95) or max_iter, or use agglomerative",
            )
        return labels


def _components(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph with edges (rows[e], cols[e])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=True, connection="weak")
    return labels.astype(np.int64)


def rank_order_distances(nbrs: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Approximate rank-order distances (Otto et al. 2018, as ES describes), shape (N, k).

    ``nbrs[i]`` lists i's k nearest neighbours, i itself at rank 0. For j at rank O_i(j) in i's
    list, d(i,j) = the number of i's first O_i(j) neighbours (ranks 0 .. O_i(j)-1) that are not in
    j's list, and D(i,j) = (d(i,j) + d(j,i)) / min(O_i(j), O_j(i)). The result ``D[i, r]`` is the
    distance to i's rank-r neighbour; it is ``inf`` at rank 0 and where i is not in that neighbour's
    list (no O_j(i): the pair cannot link). Memory O(N * k) plus O(chunk * k^2).
    """
    n, k = nbrs.shape
    # Membership keys j * n + m for "m is in j's list", sorted for searchsorted lookups.
    keys = (np.arange(n, dtype=np.int64)[:, None] * n + nbrs).ravel()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    ranks_of_key = np.tile(np.arange(k), n)[order]

    def lookup(owner: np.ndarray, member: np.ndarray) -> np.ndarray:
        """Rank of ``member`` in ``owner``'s list, or -1."""
        q = owner.astype(np.int64) * n + member
        pos = np.clip(np.searchsorted(sorted_keys, q), 0, len(sorted_keys) - 1)
        return np.where(sorted_keys[pos] == q, ranks_of_key[pos], -1)

    # d[i, r] = r - #(ranks q < r of i's list whose member is in the list of i's rank-r neighbour)
    d = np.empty((n, k), dtype=np.int64)
    lower = np.tril(np.ones((k, k), dtype=bool), -1)  # [r, q] with q < r
    for start in range(0, n, chunk):
        block = nbrs[start : start + chunk]  # (b, k)
        owner = np.broadcast_to(block[:, :, None], (len(block), k, k))  # rank-r neighbour
        member = np.broadcast_to(block[:, None, :], (len(block), k, k))  # rank-q neighbour
        inside = lookup(owner.ravel(), member.ravel()).reshape(len(block), k, k) >= 0
        d[start : start + chunk] = np.arange(k) - (inside & lower).sum(axis=2)
    # the reverse rank O_j(i) and d(j, i)
    i_idx = np.repeat(np.arange(n), k)
    j_idx = nbrs.ravel()
    back = lookup(j_idx, i_idx).reshape(n, k)
    mutual = back > 0
    d_ji = np.where(mutual, d[j_idx, np.maximum(back.ravel(), 0)].reshape(n, k), 0)
    rank = np.arange(k)[None, :]
    denom = np.minimum(rank, np.where(mutual, back, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        D = (d + d_ji) / denom
    D = np.where(mutual & (denom > 0), D, np.inf)
    D[:, 0] = np.inf
    return D


@register_clusterer
class ApproxRankOrder(Clusterer):
    """Approximate rank-order clustering (ARO; Otto et al. 2018; ES §2).

    Two samples are close when they share their nearest neighbours, not when their distance is
    small: for each pair of samples in each other's k-neighbour lists, the rank-order distance
    counts how many of one's closer neighbours the other does not list
    (:func:`rank_order_distances`). Pairs with distance <= ``threshold`` are linked; clusters are
    the connected components. Finds the number of clusters itself; unlinked samples are singleton
    clusters. Memory O(N * k), time O(N * k^2).

    Parameters
    ----------
    n_neighbors : int >= 2, default 80
        Length of each sample's neighbour list, itself included (ES: about 80). Longer lists link
        more pairs; clusters smaller than this are found best.
    threshold : float >= 0, default 1.0
        Link pairs whose rank-order distance is at most this. Larger gives fewer, bigger clusters;
        0-3 is sensible. An imgclust choice from effnet-lite0 UMAP-50 embeddings: on Imagenette
        0.5-1.0 gave 16-18 clusters (AMI 92), 1.5-3 gave 12 (AMI 90). On CIFAR-10, whose classes
        touch, every threshold (0 included) chained almost all samples into one cluster: ARO suits
        data made of many well-separated groups (faces, near-duplicates), not a continuum.

    ES tuned ARO per data set (ES Table 16): n_neighbors 30 with threshold 0.65, and n_neighbors 5
    with threshold 1.0, on l2-normalised raw embeddings (``--reduction l2``); ES gives no formula,
    the distance follows Otto et al. as ES describes it.
    """

    name = "aro"
    summary = "Approximate rank-order: links samples sharing neighbours; finds K itself"
    paper = "ES (Scott et al.); Otto, Wang & Jain 2018"
    n_clusters_mode = "unused"
    params = (
        Param("n_neighbors", 80, int, "neighbour-list length, self included (ES: ~80)", low=2),
        Param("threshold", 1.0, float, "link pairs with rank-order distance <= this (0.5-3)", low=0.0),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        n = X.shape[0]
        if n == 1:
            return np.zeros(1, dtype=np.int64)
        nbrs, _ = self.neighbour_graph(self.n_neighbors - 1).with_self()  # the list counts the sample itself
        D = rank_order_distances(nbrs)
        rows, ranks = np.nonzero(D <= self.threshold)
        return _components(n, rows, nbrs[rows, ranks])


def cdp_components(
    n: int, rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, threshold: float, max_size: int, step: float
) -> np.ndarray:
    """CDP's unsupervised grouping: components of the pairs with similarity > threshold; any
    component larger than ``max_size`` is split again with threshold <- threshold + (1 - threshold)
    * step, repeatedly, until it fits or the threshold reaches 1. Samples in no pair are singletons.
    """
    labels = np.full(n, -1, dtype=np.int64)
    next_label = 0
    # (member indices, their edges (index into rows/cols/sims), threshold to apply)
    stack = [(np.arange(n), np.arange(len(rows)), threshold)]
    while stack:
        members, edges, th = stack.pop()
        keep = edges[sims[edges] > th]
        local = np.full(n, -1, dtype=np.int64)
        local[members] = np.arange(len(members))
        comp = _components(len(members), local[rows[keep]], local[cols[keep]])
        order = np.argsort(comp, kind="stable")
        bounds = np.flatnonzero(np.diff(comp[order])) + 1
        for part in np.split(members[order], bounds):
            new_th = th + (1.0 - th) * step
            if len(part) > max_size and 1.0 - th > 1e-9 and new_th > th:
                in_part = np.zeros(n, dtype=bool)
                in_part[part] = True
                part_edges = keep[in_part[rows[keep]] & in_part[cols[keep]]]
                stack.append((part, part_edges, new_th))
            else:
                labels[part] = next_label
                next_label += 1
    return labels


@register_clusterer
class CDP(Clusterer):
    """CDP-style grouping (Zhan et al. 2018, unsupervised part; ES §2): link very similar pairs.

    Each sample is paired with its ``n_neighbors`` nearest neighbours by cosine similarity; pairs
    more similar than ``threshold`` are linked and clusters are the connected components. A
    component larger than ``max_cluster_fraction`` of the data is split by raising its threshold
    (th <- th + (1 - th) * 0.05) until it fits. Samples in no pair are singleton clusters. Finds
    the number of clusters itself. Memory O(N * k).

    Cosine similarity is measured after centring the input (UMAP coordinates are far from the
    origin, so raw cosine similarities would all be near 1).

    Parameters
    ----------
    n_neighbors : int >= 2, default 15
        Candidate pairs per sample (ES: about 15).
    threshold : float in [-1, 1), default 0.8
        Starting cosine similarity above which a pair links. Higher gives more, smaller clusters
        and more singletons; 0.5-0.95 is sensible. An imgclust choice: on effnet-lite0 UMAP-50
        embeddings of Imagenette any value in 0.5-0.95 gave 9-10 clusters (AMI 90.4). On CIFAR-10
        the kNN graph is one chained component, and the size cap then breaks it into ~1300 groups,
        mostly singletons (AMI 35).
    max_cluster_fraction : float in (0, 1], default 0.2
        Largest allowed component as a fraction of N before it is split; 1 disables splitting.
    step : float in (0, 1), default 0.05
        How far each split raises the threshold towards 1 (CDP: 0.05).

    ES tuned CDP per data set (ES Table 20): n_neighbors 2, threshold 0.6, step 0.01, max size 320;
    and n_neighbors 5, threshold -0.2, step 0.05, max size 10 (here max size is a fraction:
    ``max_cluster_fraction = 320 / N``). ES gives no formula; the grouping follows the CDP code.
    """

    name = "cdp"
    summary = "CDP: links cosine-similar kNN pairs, splits oversized groups; finds K itself"
    paper = "ES (Scott et al.); Zhan et al. 2018 (CDP)"
    n_clusters_mode = "unused"
    params = (
        Param("n_neighbors", 15, int, "candidate pairs per sample (ES: ~15)", low=2),
        Param("threshold", 0.8, float, "cosine similarity above which a pair links (0.5-0.95)", low=-1.0, high=0.999),
        Param("max_cluster_fraction", 0.2, float, "largest component (fraction of N) before splitting",
              low=0.0, high=1.0, low_inclusive=False),
        Param("step", 0.05, float, "how far each split raises the threshold towards 1", low=0.0, high=0.999,
              low_inclusive=False),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        n = X.shape[0]
        if n == 1:
            return np.zeros(1, dtype=np.int64)
        graph = self.neighbour_graph(self.n_neighbors, "cosine", centred=True)
        rows = np.repeat(np.arange(n), graph.k)
        cols = graph.indices.ravel()
        sims = 1.0 - graph.distances.ravel().astype(np.float64)
        max_size = n if self.max_cluster_fraction >= 1.0 else max(round(self.max_cluster_fraction * n), 1)
        return cdp_components(n, rows, cols, sims, self.threshold, max_size, self.step)
