"""Agglomerative clustering beyond the size where the N x N tree fits: a tree over micro-clusters.

Above :data:`EXACT_ROWS` rows, the rows are first split into ``M`` micro-clusters by k-means (FAISS; each
row to its nearest centre; k-means minimises the same within-cluster sum of squares as Ward), and
the tree is then built over the micro-clusters with their real sizes as weights:

* **ward** continues *exactly* from that partition: the Ward cost of merging groups A and B is
  ``|A||B| / (|A| + |B|) · ||μ_A − μ_B||²``, a function of sizes and centroids only, so the merges
  above the micro-clusters are those Ward would make if it had been forced through them (BIRCH,
  Zhang et al. 1996, and the "Ward on cluster features" argument of Müllner 2011 §2).
* **average / complete / single** use the distance between micro-cluster centres as the distance
  between their members (UPGMA weighted by size for average): an approximation, named as such.

The tree is built with the nearest-neighbour chain (Murtagh 1983; Müllner 2011, "Modern
hierarchical, agglomerative clustering algorithms", Fig. 4) and the Lance–Williams updates, in
O(M²) time and memory, and returned as a SciPy linkage matrix so every cut (a K, a threshold) is
SciPy's. Heights follow SciPy's convention: Ward height ``sqrt(2 |A||B|/(|A|+|B|)) ||μ_A − μ_B||``
(the distance between two single points is their euclidean distance).
"""

from __future__ import annotations

import numpy as np

#: Rows up to which the exact tree (scikit-learn, O(N²) memory) is built when memory allows.
EXACT_ROWS = 30000
#: Micro-clusters the tree is built over above :data:`EXACT_ROWS`.
MICRO_CLUSTERS = 3000


def micro_partition(X: np.ndarray, n_micro: int, random_state: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, centres, sizes)`` of a k-means partition of ``X`` into at most ``n_micro`` parts.

    FAISS's k-means (every core; trained on at most 64 rows a centre, its own cap), then each row
    to its nearest centre; centres are recomputed as their members' means, and empty parts dropped.
    """
    from ..knn import _faiss

    faiss = _faiss()
    n, dim = X.shape
    n_micro = min(n_micro, n)
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    kmeans = faiss.Kmeans(dim, n_micro, niter=20, seed=random_state, min_points_per_centroid=1,
                          max_points_per_centroid=64, verbose=False)
    kmeans.train(X32)
    _, nearest = kmeans.index.search(X32, 1)
    _, labels = np.unique(nearest[:, 0], return_inverse=True)
    sizes = np.bincount(labels).astype(np.float64)
    from scipy.sparse import csr_matrix

    members = csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(sizes.shape[0], n))
    centres = np.asarray(members @ np.asarray(X, dtype=np.float64)) / sizes[:, None]
    return labels.astype(np.int64), centres, sizes


def weighted_linkage(centres: np.ndarray, sizes: np.ndarray, linkage: str = "ward",
                     metric: str = "euclidean") -> np.ndarray:
    """SciPy linkage matrix of the groups given by ``centres`` and ``sizes`` (see the module docstring)."""
    from scipy.spatial.distance import cdist

    m = centres.shape[0]
    if m == 1:
        return np.empty((0, 4))
    if linkage == "ward":
        diff = cdist(centres, centres, "sqeuclidean")
        pair = sizes[:, None] * sizes[None, :] / (sizes[:, None] + sizes[None, :])
        D = 2.0 * pair * diff  # squared SciPy heights
    else:
        D = cdist(centres, centres, {"manhattan": "cityblock"}.get(metric, metric))
    np.fill_diagonal(D, np.inf)
    size = sizes.astype(np.float64).copy()
    active = np.ones(m, dtype=bool)
    merges = []  # (a, b, height)
    chain: list[int] = []
    while len(merges) < m - 1:
        if not chain:
            chain.append(int(np.flatnonzero(active)[0]))
        a = chain[-1]
        row = D[a]
        b = int(np.argmin(row))
        # prefer the previous chain element on ties, so the chain always terminates
        if len(chain) > 1 and row[chain[-2]] <= row[b]:
            b = chain[-2]
        if len(chain) > 1 and b == chain[-2]:
            chain.pop()
            chain.pop()
            height = D[a, b]
            merges.append((a, b, float(np.sqrt(height) if linkage == "ward" else height)))
            na, nb = size[a], size[b]
            da, db = D[a].copy(), D[b].copy()
            if linkage == "ward":
                new = ((na + size) * da + (nb + size) * db - size * height) / (na + nb + size)
            elif linkage == "average":
                new = (na * da + nb * db) / (na + nb)
            elif linkage == "complete":
                new = np.maximum(da, db)
            else:
                new = np.minimum(da, db)
            # the merged group takes a's slot; b leaves
            active[b] = False
            new[~active] = np.inf
            new[a] = np.inf
            D[a], D[:, a] = new, new
            D[b], D[:, b] = np.inf, np.inf
            size[a] = na + nb
            continue
        chain.append(b)
    return _to_scipy(merges, m)


def _to_scipy(merges: list[tuple[int, int, float]], m: int) -> np.ndarray:
    """Merges (slot a, slot b, height) in chain order -> a SciPy linkage matrix (sorted by height)."""
    order = sorted(range(len(merges)), key=lambda i: merges[i][2])
    parent = np.arange(m)
    cluster_id = np.arange(m)  # SciPy id of the group whose representative slot is i
    leaves = np.ones(m)  # SciPy's fourth column counts the tree's leaves (here micro-clusters)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    Z = np.empty((len(merges), 4))
    for step, i in enumerate(order):
        a, b, height = merges[i]
        ra, rb = find(a), find(b)
        ia, ib = cluster_id[ra], cluster_id[rb]
        Z[step] = (min(ia, ib), max(ia, ib), height, leaves[ra] + leaves[rb])
        parent[rb] = ra
        leaves[ra] += leaves[rb]
        cluster_id[ra] = m + step
    return Z


def micro_tree(X: np.ndarray, linkage: str, metric: str, n_micro: int = MICRO_CLUSTERS,
               random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(micro labels of every row, linkage matrix over the micro-clusters)``."""
    labels, centres, sizes = micro_partition(X, n_micro, random_state)
    return labels, weighted_linkage(centres, sizes, linkage, metric)
