"""Agglomerative clustering beyond the size where the N x N tree fits, in O(N · d) memory.

**ward: the exact tree, by reciprocal nearest neighbours.** Ward's linkage is *reducible*: two
groups that are each other's nearest neighbour are merged with each other in the exact tree,
whatever else merges first. So every reciprocal pair can be merged at once, round after round,
and the tree that results is the exact one (the "reciprocal agglomerative clustering" argument of
Sumengen et al. 2021, "Scaling hierarchical agglomerative clustering to billion-sized datasets",
and of Müllner 2011 §3 for the chain). The Ward cost of merging groups A and B,
``|A||B| / (|A| + |B|) · ||μ_A − μ_B||²``, depends only on their sizes and centroids, so a round
needs only the groups' centroids (BIRCH, Zhang et al. 1996). Each round finds every group's
Ward-nearest group exactly (:class:`_WardNeighbours`): up to :data:`SCAN_PARTS` groups by a scan
in float64, above among each group's nearest centres from a k-d tree, with a bound that sends any
group whose answer could lie outside them to the scan. After a round only the merged groups and
those whose neighbour merged look again. Once at most ``n_parts`` groups are left, the
nearest-neighbour chain finishes the tree over them.

**average / complete / single** are not functions of centroids, so above the exact size the rows
are first split into ``M`` micro-clusters by k-means (FAISS; each row to its nearest centre), and
the tree is built over the micro-clusters with the distance between their centres as the distance
between their members (UPGMA weighted by size for average): an approximation, named as such.

The chain is the nearest-neighbour chain (Murtagh 1983; Müllner 2011, "Modern hierarchical,
agglomerative clustering algorithms", Fig. 4) with the Lance–Williams updates, in O(M²) time and
memory. Trees are returned as SciPy linkage matrices so every cut (a K, a threshold) is SciPy's.
Heights follow SciPy's convention: Ward height ``sqrt(2 |A||B|/(|A|+|B|)) ||μ_A − μ_B||`` (the
distance between two single points is their euclidean distance).
"""

from __future__ import annotations

import logging

import numpy as np

from .._progress import OnProgress

_log = logging.getLogger(__name__)

#: Rows up to which the exact tree (scikit-learn, O(N²) memory) is built when memory allows.
EXACT_ROWS = 30000
#: Groups the last stage of the tree is built over above :data:`EXACT_ROWS`: the parts left when the
#: reciprocal rounds stop (ward), or the k-means micro-clusters (other linkages).
MICRO_CLUSTERS = 3000
#: Live groups up to which a round finds every Ward-nearest neighbour by an exact scan (above: a k-d tree).
SCAN_PARTS = 8192
#: Candidates a group takes from the k-d tree, nearest centres first, before the Ward cost picks among them
#: (a group they cannot settle asks again for eight times as many, then is scanned).
CANDIDATES = 8


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
    return _to_scipy(_chain(centres, sizes, linkage, metric), centres.shape[0])


def _chain(centres: np.ndarray, sizes: np.ndarray, linkage: str, metric: str) -> list[tuple[int, int, float]]:
    """The nearest-neighbour chain's merges ``(slot a, slot b, height)``; the merged group keeps slot a."""
    from scipy.spatial.distance import cdist

    m = centres.shape[0]
    if m == 1:
        return []
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
    return merges


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


def ward_tree(X: np.ndarray, n_parts: int = MICRO_CLUSTERS, random_state: int = 0,
              on_progress: OnProgress | None = None) -> tuple[np.ndarray, dict]:
    """``(SciPy linkage matrix over every row, how it was built)``: the exact Ward tree in O(N · d) memory.

    Identical rows merge first (at height 0, as in the exact tree). Then reciprocal Ward-nearest
    groups merge round after round until at most ``n_parts`` groups are left, and the
    nearest-neighbour chain finishes the tree over them (module docstring). After a round only the
    merged groups, and the groups whose nearest neighbour merged, look again: the others keep theirs,
    since Ward is reducible (a merged group is never nearer to a third group than the nearer of its
    two parts). Equal costs go to a random but fixed order of the rows (``random_state``), so that
    groups tied with many others (points on a grid) still pair up in parallel; a tie changes no
    height. The record says how many rows were identical to an earlier one, how many rounds ran and
    how many groups the chain started from. ``on_progress(rows merged, rows to merge)`` after each round.
    """
    n = X.shape[0]
    order = np.random.default_rng(random_state).permutation(n)  # slot i holds row order[i]
    # centred, so that the float64 scans lose as little as they can to cancellation
    sums = np.asarray(X, dtype=np.float64)[order]
    sums -= sums.mean(axis=0)
    _, first, inverse, counts = np.unique(sums, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    copies = np.flatnonzero(first[inverse] != np.arange(n))
    merges: list[tuple[int, int, float]] = [(int(first[inverse[i]]), int(i), 0.0) for i in copies]
    size = np.ones(n)
    size[first] = counts
    sums[first] *= counts[:, None]
    alive = np.ones(n, dtype=bool)
    alive[copies] = False
    groups = _WardNeighbours(sums, size, alive)
    nearest = np.arange(n)
    cost = np.full(n, np.inf)
    live = look = np.flatnonzero(alive)
    m, rounds = live.size, 0
    while m > max(n_parts, 1):
        nearest[look], cost[look] = groups.nearest(look)
        a = live[(nearest[nearest[live]] == live) & (live < nearest[live])]
        if a.size == 0:  # only float ties can leave no reciprocal pair: the cheapest merge is always the exact tree's
            a = live[[np.argmin(cost[live])]]
        b = nearest[a]
        merges.extend(zip(a.tolist(), b.tolist(), np.sqrt(2.0 * cost[a]).tolist()))
        sums[a] += sums[b]
        size[a] += size[b]
        alive[b] = False
        m -= a.size
        rounds += 1
        groups.merged()
        moved = np.zeros(n, dtype=bool)
        moved[a] = moved[b] = True
        live = np.flatnonzero(alive)
        look = live[moved[live] | moved[nearest[live]]]
        _log.debug("ward round %d: %d groups of %d rows left, %d look again", rounds, m, n, look.size)
        if on_progress is not None:
            on_progress(n - m, n - n_parts)
    chain = _chain(sums[live] / size[live, None], size[live], "ward", "euclidean")
    merges.extend((int(live[i]), int(live[j]), height) for i, j, height in chain)
    merges = [(int(order[a]), int(order[b]), height) for a, b, height in merges]
    record = {"identical_rows": int(copies.size), "rounds": rounds, "chain_parts": int(live.size)}
    return _to_scipy(merges, n), record


class _WardNeighbours:
    """The Ward-nearest live group of any live group, as groups merge (the state of :func:`ward_tree`).

    Exact, with ties going to the lower slot. Up to :data:`SCAN_PARTS` live groups every pair is
    scanned in float64. Above, each group's :data:`CANDIDATES` nearest centres come from a k-d tree
    over the live centres (scikit-learn's, exact, rebuilt after each round, queried on every core),
    and the Ward cost picks among them; a group whose best candidate could still be beaten by one
    outside its candidates (a smaller group further away: the cost grows with the other group's
    size) is scanned exactly.
    """

    def __init__(self, sums: np.ndarray, size: np.ndarray, alive: np.ndarray):
        self.sums, self.size, self.alive = sums, size, alive
        self.tree = None  # (k-d tree, the live rows it holds), built when a round first needs it

    def _centres(self, rows: np.ndarray) -> np.ndarray:
        return self.sums[rows] / self.size[rows, None]

    def merged(self) -> None:
        """Groups merged: the next search needs a new tree."""
        self.tree = None

    def nearest(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(nearest, cost)``: for each of ``rows``, its Ward-nearest live group and the Ward cost of merging them."""
        if np.count_nonzero(self.alive) <= SCAN_PARTS:
            return self._scan(rows)
        from concurrent.futures import ThreadPoolExecutor

        from sklearn.neighbors import KDTree

        from ..runtimes import default_threads

        if self.tree is None:
            live = np.flatnonzero(self.alive)
            self.tree = KDTree(self._centres(live), leaf_size=16), live
        smallest = self.size[self.alive].min()
        nearest = np.empty(rows.size, dtype=np.int64)
        cost = np.empty(rows.size)
        unsure = np.arange(rows.size)
        for k in (CANDIDATES, 8 * CANDIDATES):
            blocks = [unsure[start:start + 16384] for start in range(0, unsure.size, 16384)]
            with ThreadPoolExecutor(default_threads()) as pool:  # the tree's queries release the GIL
                found = list(pool.map(lambda b: self._candidates(rows[b], smallest, k), blocks))
            for b, (best, best_cost, open_) in zip(blocks, found):
                nearest[b], cost[b] = best, best_cost
            unsure = np.concatenate([b[open_] for b, (_, _, open_) in zip(blocks, found)] or [unsure[:0]])
        if unsure.size:
            nearest[unsure], cost[unsure] = self._scan(rows[unsure])
        _log.debug("ward: %d of %d groups scanned exactly", unsure.size, rows.size)
        return nearest, cost

    def _candidates(self, q: np.ndarray, smallest: float, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best of each group's ``k`` tree candidates, its cost, and whether a group outside them could beat it."""
        tree, live = self.tree
        centres = self._centres(q)
        distance, position = tree.query(centres, k=min(k + 1, live.size))
        ids = live[position]
        by_slot = np.argsort(ids, axis=1)  # lower slot first, so that argmin breaks ties by slot
        ids, d2 = np.take_along_axis(ids, by_slot, 1), np.take_along_axis(distance, by_slot, 1) ** 2
        other = self.size[ids]
        c = self.size[q, None] * other / (self.size[q, None] + other) * d2
        c[ids == q[:, None]] = np.inf
        best = np.argmin(c, axis=1)
        cost = c[np.arange(q.size), best]
        # a group outside the candidates is at least as far as the furthest one, and at least the smallest
        floor = self.size[q] * smallest / (self.size[q] + smallest) * distance[:, -1] ** 2
        return ids[np.arange(q.size), best], cost, cost > floor

    def _scan(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The exact Ward-nearest live group of each of ``rows`` (float64, in blocks of about 256 MB)."""
        live = np.flatnonzero(self.alive)
        centres, sizes = self._centres(live), self.size[live]
        norms = np.einsum("ij,ij->i", centres, centres)
        nearest = np.empty(rows.size, dtype=np.int64)
        cost = np.empty(rows.size)
        block = max(1, 2**25 // live.size)
        for start in range(0, rows.size, block):
            q = rows[start:start + block]
            query, qsize = self._centres(q), self.size[q, None]
            c = query @ centres.T
            c *= -2.0
            c += norms
            c += np.einsum("ij,ij->i", query, query)[:, None]
            np.maximum(c, 0.0, out=c)
            c *= qsize * sizes / (qsize + sizes)
            c[np.arange(q.size), np.searchsorted(live, q)] = np.inf
            best = np.argmin(c, axis=1)
            nearest[start:start + q.size] = live[best]
            cost[start:start + q.size] = c[np.arange(q.size), best]
        return nearest, cost
