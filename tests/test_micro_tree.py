"""Agglomerative at scale: the weighted nearest-neighbour-chain tree and the micro-cluster path."""

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from imgclust.clusterers import create_clusterer
from imgclust.clusterers._tree import weighted_linkage
from imgclust.errors import ParameterError


@pytest.mark.parametrize("method,metric", [("ward", "euclidean"), ("average", "euclidean"),
                                           ("complete", "chebyshev"), ("single", "cosine")])
def test_unit_weights_give_scipys_tree(method, metric):
    X = np.random.default_rng(0).normal(size=(200, 4))
    ours, scipy_tree = weighted_linkage(X, np.ones(200), method, metric), linkage(X, method=method, metric=metric)
    np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(scipy_tree[:, 2]), rtol=1e-9)
    assert adjusted_rand_score(fcluster(ours, 6, "maxclust"), fcluster(scipy_tree, 6, "maxclust")) == 1.0


def test_ward_weights_equal_repeated_points():
    X = np.random.default_rng(1).normal(size=(40, 3))
    weights = np.random.default_rng(2).integers(1, 5, 40)
    repeated = linkage(np.repeat(X, weights, axis=0), "ward")
    ours = weighted_linkage(X, weights.astype(float), "ward")
    # above the merges of identical copies (height 0), both trees make the same merges
    np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(repeated[:, 2])[-39:], rtol=1e-9)
    assert ours[-1, 3] == 40  # SciPy's count column counts the weighted leaves


def test_micro_cluster_path_agrees_with_the_exact_tree_and_says_which_ran():
    X, _ = make_blobs(4000, centers=8, n_features=10, cluster_std=1.5, random_state=0)
    exact = create_clusterer("agglomerative", n_clusters=8)
    micro = create_clusterer("agglomerative", n_clusters=8, exact_rows=1000, micro_clusters=300)
    a, b = exact.fit_predict(X), micro.fit_predict(X)
    assert exact.fit_path_ == "exact"
    assert micro.fit_path_.startswith("micro-clusters: 300 k-means parts of 4000 samples, ward tree continued exactly")
    assert adjusted_rand_score(a, b) > 0.95
    assert np.unique(b).size == 8


def test_micro_cluster_path_cuts_at_a_threshold_too():
    X, _ = make_blobs(3000, centers=5, n_features=6, cluster_std=0.5, random_state=1)
    labels = create_clusterer("agglomerative", exact_rows=500, micro_clusters=200).fit_predict(X)
    assert np.unique(labels).size == 5


def test_more_clusters_than_micro_clusters_is_refused():
    X = np.random.default_rng(0).normal(size=(600, 3))
    with pytest.raises(ParameterError, match="over 20 micro-clusters, fewer than n_clusters=50"):
        create_clusterer("agglomerative", n_clusters=50, exact_rows=100, micro_clusters=20).fit_predict(X)


def test_a_method_that_cannot_run_at_this_size_is_refused_before_the_reduction(tmp_path, monkeypatch):
    import imgclust.clusterers._base as base
    from imgclust.cache import Cache
    from imgclust.cluster import cluster
    from imgclust.errors import ResourceError

    from .stage_fixtures import blob_cache

    cache = blob_cache(tmp_path / "c.h5", n_per=50, centers=4)
    monkeypatch.setattr(base, "available_memory_bytes", lambda: 1000)
    with pytest.raises(ResourceError, match="O\\(N\\^2\\)"):
        cluster(cache.path, method="affinity")
    encoder = cache.encoders()[0]
    assert Cache(cache.path).list_groups(encoder, "reductions") == {}  # no UMAP ran before the refusal
    # agglomerative takes its micro-cluster tree instead, and the run records it
    run = cluster(cache.path, n_clusters=4, params={"exact_rows": 100, "micro_clusters": 40})
    assert run.fit_path.startswith("micro-clusters: 40 k-means parts of 200 samples")
    from imgclust.cluster import load_run

    assert load_run(cache.path, run.run_id).fit_path == run.fit_path
