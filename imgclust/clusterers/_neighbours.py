"""The clustering methods' views of the shared kNN graph (:class:`imgclust.knn.Neighbours`).

Every method that needs neighbours asks ``Clusterer.neighbour_graph`` (one graph per space and metric,
computed once and stored with the results); these helpers turn a :class:`~imgclust.knn.KnnGraph` into
what each method consumes: neighbour lists with the row first (ARO, CDP), a binary connectivity
matrix (agglomerative's kNN connectivity), a symmetric sparse affinity (spectral). Memory O(N · k).

Methods that rank neighbours by cosine on *mean-centred* rows (CDP, the trained heads: UMAP
coordinates and non-negative CNN features are far from the origin) use :func:`centred_neighbours`:
the graphs of the centred rows of the same space, also computed once per space and stored beside the
space's own (space name ``<space>-centred``).
"""

from __future__ import annotations

import weakref

import numpy as np

from ..knn import KnnGraph, Neighbours, StoredGraphs

#: the centred twin of each shared Neighbours (kept while the Neighbours lives)
_CENTRED: "weakref.WeakKeyDictionary[Neighbours, Neighbours]" = weakref.WeakKeyDictionary()


def centred_neighbours(neighbours: Neighbours) -> Neighbours:
    """The graphs of ``neighbours``' rows minus their mean (one twin per Neighbours, so one search per metric)."""
    twin = _CENTRED.get(neighbours)
    if twin is None:
        X = np.asarray(neighbours.X, dtype=np.float32)
        store = neighbours.store
        if store is not None:
            store = StoredGraphs(store.cache, store.encoder, f"{store.space}-centred", store.fingerprint)
        twin = Neighbours(X - X.mean(axis=0, keepdims=True), random_state=neighbours.random_state, store=store,
                          on_progress=neighbours.on_progress)
        _CENTRED[neighbours] = twin
    return twin


def _binary(indices: np.ndarray):
    """A binary CSR matrix with a 1 at (row, each listed neighbour); -1 entries (missing) left out."""
    from scipy.sparse import csr_matrix

    n = indices.shape[0]
    found = indices >= 0
    indptr = np.concatenate([[0], np.cumsum(found.sum(axis=1))])
    return csr_matrix((np.ones(int(found.sum())), indices[found], indptr), shape=(n, n))


def connectivity_matrix(graph: KnnGraph):
    """The directed kNN graph as a binary CSR matrix (self excluded), as ``kneighbors_graph(mode="connectivity")``."""
    return _binary(graph.indices)


def symmetric_affinity(graph: KnnGraph):
    """``(A + Aᵀ) / 2`` of the kNN connectivity A with each row its own neighbour (scikit-learn's
    ``affinity="nearest_neighbors"``), as a sparse CSR matrix: O(N · k) memory."""
    A = _binary(graph.with_self()[0])
    return (0.5 * (A + A.T)).tocsr()
