"""Every clustering method that needs neighbours takes them from the shared kNN graph (imgclust.knn.Neighbours).

A Neighbours whose graph was computed once serves several methods (and several fits) with no further
search; the labels are those of a fit that computes its own graph.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from imgclust import knn
from imgclust.clusterers import create_clusterer
from imgclust.clusterers._neighbours import centred_neighbours, connectivity_matrix, symmetric_affinity
from imgclust.knn import Neighbours, knn_graph


@pytest.fixture(scope="module")
def X():
    X, _ = make_blobs(n_samples=240, n_features=8, centers=4, cluster_std=1.0, random_state=0)
    return X.astype(np.float32)


def _no_more_searches(monkeypatch):
    def searched(*args, **kwargs):
        raise AssertionError("a second kNN search ran: the shared graph was not used")

    monkeypatch.setattr(knn, "knn_graph", searched)


# (method, parameters, the graph it uses: metric, centred)
GRAPH_METHODS = [
    ("spectral", {"n_clusters": 4}, "euclidean", False),
    ("aro", {"n_neighbors": 20}, "euclidean", False),
    ("cdp", {}, "cosine", True),
    ("dbscan", {}, "euclidean", False),
    ("dbscan", {"metric": "cosine"}, "cosine", False),
    ("agglomerative", {"n_clusters": 4, "connectivity_neighbors": 10}, "euclidean", False),
    ("scan", {"n_clusters": 4, "epochs": 2}, "cosine", True),
    ("temi", {"n_clusters": 4, "epochs": 2, "heads": 1}, "cosine", True),
    ("icce", {"n_clusters": 4, "epochs": 2, "heads": 2, "k": 10, "max_neighbours": 40}, "cosine", True),
    ("unic", {"n_clusters": 4, "epochs": 2}, "cosine", True),
    ("unic", {"n_clusters": 4, "epochs": 2, "metric": "euclidean"}, "euclidean", False),
]


@pytest.mark.parametrize("method,params,metric,centred", GRAPH_METHODS)
def test_method_takes_its_neighbours_from_the_shared_graph(X, monkeypatch, method, params, metric, centred):
    own = create_clusterer(method, random_state=0, **params).fit_predict(X)  # computes its own graph
    neighbours = Neighbours(X)
    (centred_neighbours(neighbours) if centred else neighbours).graph(60, metric)  # the one search
    _no_more_searches(monkeypatch)
    first = create_clusterer(method, random_state=0, **params).fit_predict(X, neighbours=neighbours)
    again = create_clusterer(method, random_state=0, **params).fit_predict(X, neighbours=neighbours)
    np.testing.assert_array_equal(first, own)
    np.testing.assert_array_equal(again, own)


def test_one_graph_serves_two_methods(X, monkeypatch):
    neighbours = Neighbours(X)
    neighbours.graph(30)
    _no_more_searches(monkeypatch)
    spectral = create_clusterer("spectral", n_clusters=4).fit_predict(X, neighbours=neighbours)
    aro = create_clusterer("aro", n_neighbors=20).fit_predict(X, neighbours=neighbours)
    assert len(np.unique(spectral)) == 4 and len(aro) == len(X)


def test_centred_graph_is_computed_once_per_neighbours(X):
    neighbours = Neighbours(X)
    assert centred_neighbours(neighbours) is centred_neighbours(neighbours)
    graph = centred_neighbours(neighbours).graph(5, "cosine")
    np.testing.assert_array_equal(graph.indices, knn_graph(X - X.mean(axis=0), 5, "cosine").indices)


def test_sparse_matrices_match_scikit_learn(X):
    from sklearn.neighbors import kneighbors_graph

    graph = knn_graph(X, 6)
    np.testing.assert_array_equal(connectivity_matrix(graph).toarray(),
                                  kneighbors_graph(X, 6, include_self=False).toarray())
    A = kneighbors_graph(X, 7, include_self=True)
    np.testing.assert_allclose(symmetric_affinity(graph).toarray(), (0.5 * (A + A.T)).toarray())
