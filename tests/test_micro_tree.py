"""Agglomerative at scale: the weighted nearest-neighbour-chain tree, the exact ward tree in O(N·d) memory
and the micro-cluster path of the other linkages."""

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from imgclust.clusterers import create_clusterer
from imgclust.clusterers import _tree
from imgclust.clusterers._tree import ward_tree, weighted_linkage
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


@pytest.mark.parametrize("scan_parts,candidates", [(_tree.SCAN_PARTS, _tree.CANDIDATES), (300, 8), (300, 1)])
def test_the_reciprocal_ward_tree_is_scipys_exact_tree(monkeypatch, scan_parts, candidates):
    # 300: the rounds above 300 groups take their neighbours from the k-d tree's candidates; with one
    # candidate most groups cannot be settled by it and ask again, or are scanned
    monkeypatch.setattr(_tree, "SCAN_PARTS", scan_parts)
    monkeypatch.setattr(_tree, "CANDIDATES", candidates)
    X, _ = make_blobs(3000, centers=12, n_features=5, cluster_std=2.0, random_state=3)
    exact = linkage(X, "ward")
    ours, record = ward_tree(X, n_parts=40)
    np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(exact[:, 2]), rtol=1e-9)
    for k in (2, 12, 50, 400):
        assert adjusted_rand_score(fcluster(ours, k, "maxclust"), fcluster(exact, k, "maxclust")) == 1.0
    assert record["rounds"] > 3 and record["chain_parts"] <= 40
    calls = []
    ward_tree(X, n_parts=40, on_progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == record["rounds"] and {total for _, total in calls} == {3000 - 40}
    assert [done for done, _ in calls] == sorted({done for done, _ in calls}) and calls[-1][0] >= 3000 - 40


def test_identical_rows_merge_first_at_height_zero():
    X = np.repeat(np.random.default_rng(4).normal(size=(200, 3)), 50, axis=0)  # every row fifty times
    ours, record = ward_tree(X, n_parts=5)
    exact = linkage(X, "ward")
    assert record["identical_rows"] == 9800 and record["rounds"] < 20
    assert ours.shape == (9999, 4) and ours[-1, 3] == 10000
    np.testing.assert_allclose(np.sort(ours[:, 2]), np.sort(exact[:, 2]), rtol=1e-9, atol=1e-12)
    assert adjusted_rand_score(fcluster(ours, 200, "maxclust"), fcluster(exact, 200, "maxclust")) == 1.0
    constant, record = ward_tree(np.zeros((300, 4)), n_parts=5)
    assert record == {"identical_rows": 299, "rounds": 0, "chain_parts": 1} and constant[:, 2].max() == 0.0


def test_rows_tied_on_a_grid_still_pair_up_in_parallel():
    # every inner point of a line of equally spaced points has two neighbours at the same cost: ties broken by
    # row index would let one pair merge a round; the random order lets about a quarter of them pair up
    X = np.repeat(np.arange(2000.0)[:, None], 2, axis=1)
    Z, record = ward_tree(X, n_parts=20)
    assert record["rounds"] < 60
    labels = fcluster(Z, 8, "maxclust")
    assert np.unique(labels).size == 8 and np.count_nonzero(np.diff(labels)) == 7  # Ward cuts a line into runs


def test_ward_at_scale_gives_the_exact_tree_and_says_which_path_ran():
    X, _ = make_blobs(4000, centers=8, n_features=10, cluster_std=3.0, random_state=0)
    exact = create_clusterer("agglomerative", n_clusters=8)
    scalable = create_clusterer("agglomerative", n_clusters=8, exact_rows=1000, micro_clusters=300)
    a, b = exact.fit_predict(X), scalable.fit_predict(X)
    assert exact.fit_path_ == "exact"
    assert scalable.fit_path_.startswith("exact ward tree of 4000 samples in O(N·d) memory: ")
    assert "then the chain over" in scalable.fit_path_
    assert adjusted_rand_score(a, b) == 1.0


def test_other_linkages_at_scale_use_micro_cluster_centres():
    X, _ = make_blobs(4000, centers=8, n_features=10, cluster_std=1.5, random_state=0)
    exact = create_clusterer("agglomerative", n_clusters=8, linkage="average")
    micro = create_clusterer("agglomerative", n_clusters=8, linkage="average", exact_rows=1000, micro_clusters=300)
    a, b = exact.fit_predict(X), micro.fit_predict(X)
    assert micro.fit_path_ == "micro-clusters: 300 k-means parts of 4000 samples, average tree on their centres"
    assert adjusted_rand_score(a, b) > 0.95


@pytest.mark.parametrize("linkage_name", ["ward", "average"])
def test_the_scalable_paths_cut_at_a_threshold_too(linkage_name):
    X, _ = make_blobs(3000, centers=5, n_features=6, cluster_std=0.5, random_state=1)
    labels = create_clusterer("agglomerative", linkage=linkage_name, exact_rows=500,
                              micro_clusters=200).fit_predict(X)
    assert np.unique(labels).size == 5


def test_more_clusters_than_micro_clusters_is_refused_where_the_tree_stops_at_them():
    X = np.random.default_rng(0).normal(size=(600, 3))
    with pytest.raises(ParameterError, match="average tree over 20 micro-clusters, fewer than n_clusters=50"):
        create_clusterer("agglomerative", n_clusters=50, linkage="average", exact_rows=100,
                         micro_clusters=20).fit_predict(X)
    # ward's tree reaches every row: any K is a cut of it
    labels = create_clusterer("agglomerative", n_clusters=50, exact_rows=100, micro_clusters=20).fit_predict(X)
    assert np.unique(labels).size == 50


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
    # agglomerative takes its tree in O(N·d) memory instead, and the run records it; its rounds show as progress
    reports = []
    run = cluster(cache.path, n_clusters=4, params={"exact_rows": 100, "micro_clusters": 40},
                  progress=lambda stage, done, total: reports.append((stage, done, total)))
    rounds = [(done, total) for stage, done, total in reports if stage == "clustering" and total == 160]
    assert rounds and rounds[-1][0] >= 160 and reports[-1] == ("clustering", 1, 1)
    assert run.fit_path.startswith("exact ward tree of 200 samples in O(N·d) memory")
    from imgclust.cluster import load_run

    assert load_run(cache.path, run.run_id).fit_path == run.fit_path
