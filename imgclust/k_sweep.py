"""The sweep behind :func:`imgclust.select.choose_n_clusters`: the method's clusterings at every K, and
the criteria curves read off them.

How K is swept, per family (:func:`sweep`):

* agglomerative (``Clusterer.nested_k``): one tree, cut at every K of the range (the cuts are
  nested, so one tree serves all K); the tree is built exactly as the clusterer builds it
  (scikit-learn's ``ward_tree`` / ``linkage_tree`` with its metric and kNN connectivity:
  :func:`merge_tree`, cut by :func:`cut_tree_labels`);
* every other method that takes K (k-means, GMM, spectral, the trained heads): one fit per K on
  a grid of at most ``Clusterer.auto_k_fits`` values (every K while it fits, then geometric
  steps); a trained head is trained once per K of its grid.

Criteria (one curve each, K on the x axis; ``curves`` in :class:`imgclust.select.Selection`):

``silhouette`` (:func:`silhouette_curve`)
    Mean euclidean silhouette of each cut, in the space the method clustered (as ``score``).
``merge_gap`` (:func:`merge_gap_curve`; tree families only)
    Relative gap in the merge heights around the cut: height of the first merge the cut undoes
    over the height of the last merge it keeps (for ward, the classic "elbow" of the dendrogram).
``stability`` (:func:`stability_curve`)
    Agreement of the method's clusterings of two disjoint random halves: each half is clustered
    at K, the first half's points get the label of their nearest neighbour in the second half,
    and the ARI of the two labelings is averaged over ``stability_repeats`` splits
    (Lange, Roth, Braun & Buhmann, "Stability-based validation of clustering solutions",
    Neural Computation 2004, with ARI as the agreement and 1-NN as the transfer).

:func:`gaussian_reference` is the structureless data the "no structure" test compares against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .clusterers import CLUSTERERS, create_clusterer
from .errors import UsageError
from .knn import Neighbours


def cut_tree_labels(Z: np.ndarray, ks: Any) -> dict[int, np.ndarray]:
    """Flat labels of a merge tree at several numbers of clusters.

    The cut at K undoes the last K-1 merges (as scikit-learn's ``AgglomerativeClustering`` and
    unlike ``fcluster(..., "maxclust")``), so every cut has exactly K clusters even with tied
    merge heights. Labels are 0..K-1, numbered in the order the clusters appear in the tree's
    leaf order.

    Parameters
    ----------
    Z : ndarray of shape (n_samples - 1, 4)
        A linkage matrix (``scipy.cluster.hierarchy.linkage``): children, height, size, in
        merge order.
    ks : iterable of int
        Numbers of clusters, each in [1, n_samples].

    Returns
    -------
    dict
        K -> int64 array of shape (n_samples,).
    """
    Z = np.asarray(Z)
    n = Z.shape[0] + 1
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise UsageError(f"numbers of clusters must lie in [1, {n}]; got {ks}")
    children = Z[:, :2].astype(np.int64)
    sizes = np.concatenate([np.ones(n, dtype=np.int64), Z[:, 3].astype(np.int64)])
    # each node covers a contiguous range of the leaf order: walk down from the root
    start = np.zeros(2 * n - 1, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    stack = [2 * n - 2]
    while stack:
        node = stack.pop()
        if node < n:
            order[start[node]] = node
            continue
        left, right = children[node - n]
        start[left] = start[node]
        start[right] = start[node] + sizes[left]
        stack.extend((right, left))
    # split clusters top-down: going from K to K+1 undoes merge n-1-K (0-based)
    label_of_pos = np.zeros(n, dtype=np.int64)
    out: dict[int, np.ndarray] = {}
    want = set(ks)
    for k in range(1, ks[-1] + 1):
        if k > 1:
            left, right = children[n - k]
            s, e = start[right], start[right] + sizes[right]
            label_of_pos[s:e] = k - 1
        if k in want:
            labels = np.empty(n, dtype=np.int64)
            labels[order] = label_of_pos
            # renumber by first appearance in leaf order, 0..K-1
            _, first = np.unique(label_of_pos, return_index=True)
            remap = np.empty(k, dtype=np.int64)
            remap[np.argsort(first)] = np.arange(k)
            out[k] = remap[labels]
    return out


def merge_tree(X: np.ndarray, linkage: str = "ward", metric: str = "euclidean",
               connectivity_neighbors: int | None = None, neighbours: Neighbours | None = None) -> np.ndarray:
    """The agglomerative merge tree exactly as the ``agglomerative`` clusterer builds it.

    scikit-learn's ``ward_tree`` / ``linkage_tree`` (which call scipy without connectivity), with
    the clusterer's kNN connectivity graph when it has one (from ``neighbours``, the shared graphs of
    ``X``'s rows, else computed here). Returned as a linkage matrix (children, height, size per merge,
    in merge order) for :func:`cut_tree_labels`.
    """
    from sklearn.cluster._agglomerative import linkage_tree, ward_tree

    connectivity = None
    if connectivity_neighbors is not None:
        from .clusterers._neighbours import connectivity_matrix

        graphs = neighbours if neighbours is not None else Neighbours(X)
        connectivity = connectivity_matrix(graphs.graph(connectivity_neighbors, metric))
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*number of connected components.*")
        if linkage == "ward":
            children, _, n, _, heights = ward_tree(X, connectivity=connectivity, return_distance=True)
        else:
            children, _, n, _, heights = linkage_tree(X, connectivity=connectivity, linkage=linkage, affinity=metric,
                                                      return_distance=True)
    children = np.asarray(children, dtype=np.int64)
    sizes = np.ones(2 * n - 1, dtype=np.int64)
    for i, (a, b) in enumerate(children):
        sizes[n + i] = sizes[a] + sizes[b]
    return np.column_stack([children, np.asarray(heights, dtype=np.float64), sizes[n:]]).astype(np.float64)


@dataclass
class Sweep:
    """What :func:`sweep` made."""

    labels: dict  # K -> labels of the swept rows
    heights: np.ndarray | None  # merge heights (tree families)
    estimators: dict  # K -> fitted clusterer (flat families, when kept)


def sweep(X: np.ndarray, method: str, params: dict, ks: np.ndarray, random_state: int, keep: bool = False,
          views: np.ndarray | None = None, on_fit: Callable[[int, int], None] | None = None,
          neighbours: Neighbours | None = None) -> Sweep:
    """``method``'s clusterings of ``X`` at every K of ``ks`` (see the module docs), and the tree's merge
    heights for a tree family; ``keep``: the fitted clusterers of a flat family too."""
    cls = CLUSTERERS.get(method)
    if cls.nested_k:
        probe = create_clusterer(method, n_clusters=int(ks[0]), random_state=random_state, **params)
        Z = merge_tree(X, probe.linkage, probe.metric, probe.connectivity_neighbors, neighbours)
        return Sweep(cut_tree_labels(Z, ks), Z[:, 2], {})
    labels, estimators = {}, {}
    shared = neighbours if neighbours is not None else Neighbours(X, random_state=random_state)  # one graph for every K
    for i, k in enumerate(ks):
        est = create_clusterer(method, n_clusters=int(k), random_state=random_state, **params)
        labels[int(k)] = est.fit_predict(X, views, shared)
        if on_fit is not None:
            on_fit(i + 1, len(ks))
        if keep:
            estimators[int(k)] = est
    return Sweep(labels, None, estimators)


def silhouette_curve(X: np.ndarray, labels: dict, ks: np.ndarray) -> np.ndarray:
    """Exact mean silhouette of each labelling (NaN with fewer than two clusters); noise is left out."""
    from .metrics import _exact_silhouettes

    out = np.full(len(ks), np.nan)
    usable, codes = [], []
    for i, k in enumerate(ks):
        lab = labels[int(k)]
        keep = lab >= 0
        if not keep.all():  # a method with noise: score the clustered points (as score does)
            from .metrics import silhouette_analysis

            out[i] = silhouette_analysis(X, lab).mean
            continue
        uniq, c = np.unique(lab, return_inverse=True)
        if uniq.size >= 2:
            usable.append(i)
            codes.append(c)
    if codes:
        for i, s in zip(usable, _exact_silhouettes(X, codes)):
            out[i] = float(s.mean())
    return out


def merge_gap_curve(heights: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Height of the first merge undone over the height of the last merge kept, per K."""
    h = np.asarray(heights, dtype=np.float64)
    n = h.shape[0] + 1
    lo, hi = h[n - ks - 1], h[n - ks]
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(lo > 0, hi / np.where(lo > 0, lo, 1.0), np.where(hi > 0, np.inf, 1.0))
    return gap


def stability_curve(X: np.ndarray, method: str, params: dict, ks: np.ndarray, repeats: int,
                     random_state: int, views: np.ndarray | None = None) -> np.ndarray:
    """Mean ARI between the clusterings of two random halves, one half's labels carried to the
    other by nearest neighbour (see the module docs)."""
    from sklearn.metrics import adjusted_rand_score
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(random_state + 7919)
    n = X.shape[0]
    half = n // 2
    usable = ks[ks <= half]
    total = np.zeros(len(ks))
    for r in range(repeats):
        perm = rng.permutation(n)
        a, b = perm[:half], perm[half : 2 * half]
        va, vb = (None, None) if views is None else (views[a], views[b])
        la = sweep(X[a], method, params, usable, random_state + r, views=va).labels
        lb = sweep(X[b], method, params, usable, random_state + r, views=vb).labels
        nearest = NearestNeighbors(n_neighbors=1).fit(X[b]).kneighbors(X[a], return_distance=False)[:, 0]
        for i, k in enumerate(ks):
            total[i] += adjusted_rand_score(la[int(k)], lb[int(k)][nearest]) if k <= half else np.nan
    return total / repeats


def gaussian_reference(X: np.ndarray, random_state: int = 0) -> np.ndarray:
    """A sample of one Gaussian with the mean and covariance of ``X`` (same shape): data with no clusters."""
    rng = np.random.default_rng(random_state + 104729)
    mean = X.mean(axis=0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    z = rng.standard_normal((X.shape[0], s.shape[0]))
    return mean + (z * (s / math.sqrt(max(X.shape[0] - 1, 1)))) @ vt
