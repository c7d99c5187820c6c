"""The shared kNN graph: exact against brute force, approximate with a measured recall, and neighbours of new rows."""

from unittest.mock import ANY

import numpy as np
import pytest

from imgclust.errors import ParameterError
from imgclust.knn import knn_graph, neighbours_of


def brute(X, k, metric="euclidean"):
    if metric == "cosine":
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        D = 1 - Xn @ Xn.T
    else:
        from sklearn.metrics import pairwise_distances

        D = pairwise_distances(X)
    np.fill_diagonal(D, np.inf)
    return np.argsort(D, axis=1, kind="stable")[:, :k], np.sort(D, axis=1)[:, :k]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_graph_equals_brute_force_and_never_lists_a_row_as_its_own_neighbour(metric):
    X = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    graph = knn_graph(X, 5, metric)
    idx, dist = brute(X.astype(np.float64), 5, metric)
    assert graph.method == "exact" and graph.recall == 1.0
    assert (graph.indices == idx).mean() > 0.99  # float32 ties may swap neighbours
    np.testing.assert_allclose(graph.distances, dist, atol=1e-4)
    assert not (graph.indices == np.arange(300)[:, None]).any()


def test_exact_duplicates_still_exclude_the_row_itself():
    X = np.repeat(np.random.default_rng(1).normal(size=(50, 4)), 3, axis=0).astype(np.float32)
    graph = knn_graph(X, 4)
    assert not (graph.indices == np.arange(150)[:, None]).any()
    assert (graph.distances[:, :2] < 1e-3).all()  # the two copies come first


def test_approximate_graph_reports_the_recall_it_measured():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(20, 200)) * 5
    X = (centres[rng.integers(0, 20, 6000)] + rng.normal(size=(6000, 200))).astype(np.float32)
    graph = knn_graph(X, 10, exact_work_limit=1e6)
    truth, _ = brute(X.astype(np.float64), 10)
    measured = np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(graph.indices, truth)])
    assert graph.method == "ivf" and graph.recall_queries == 1000 and graph.nprobe >= 8
    assert graph.recall >= 0.9
    assert abs(measured - graph.recall) < 0.05  # the sampled recall describes the whole graph


def test_top_and_with_self_give_umaps_layout():
    X = np.random.default_rng(3).normal(size=(100, 3)).astype(np.float32)
    graph = knn_graph(X, 6)
    idx, dist = graph.top(4).with_self()
    assert idx.shape == (100, 5) and (idx[:, 0] == np.arange(100)).all() and (dist[:, 0] == 0).all()
    with pytest.raises(ParameterError, match="6 neighbours per row"):
        graph.top(7)


def test_neighbours_of_new_rows_among_a_base():
    rng = np.random.default_rng(4)
    base, queries = rng.normal(size=(400, 5)).astype(np.float32), rng.normal(size=(30, 5)).astype(np.float32)
    idx, dist, recall = neighbours_of(base, queries, 3)
    D = np.linalg.norm(queries[:, None] - base[None], axis=2)
    assert recall == 1.0
    np.testing.assert_array_equal(idx, np.argsort(D, axis=1)[:, :3])
    np.testing.assert_allclose(dist, np.sort(D, axis=1)[:, :3], atol=1e-4)


def test_bad_metric_and_k_are_refused():
    X = np.zeros((10, 2), np.float32)
    with pytest.raises(ParameterError, match="unknown kNN metric"):
        knn_graph(X, 3, "hamming")
    with pytest.raises(ParameterError, match=">= 1"):
        knn_graph(X, 0)


def test_umap_above_its_fit_size_fits_a_sample_and_places_the_rest_by_their_neighbours(tmp_path, monkeypatch):
    import importlib

    from sklearn.metrics import adjusted_mutual_info_score

    from imgclust.clusterers import create_clusterer

    from .stage_fixtures import blob_cache

    reduce_module = importlib.import_module("imgclust.reduce")  # the package exports a function of that name
    cache = blob_cache(tmp_path / "c.h5", n_per=150, centers=4, dim=16)
    monkeypatch.setattr(reduce_module, "UMAP_FIT_ROWS", 200)
    result = reduce_module.reduce(cache.path, dims=5)
    assert result.fitted_on == 200 and result.shape == (600, 5)
    data = reduce_module.load_reduction(cache.path, result.encoder, result.key)
    truth = cache.read_index(result.encoder).labels
    labels = create_clusterer("agglomerative", n_clusters=4).fit_predict(data)
    assert adjusted_mutual_info_score(truth, labels) > 0.95  # placed rows land in their blob's cluster


def test_neighbours_compute_each_metric_once_and_serve_smaller_k_from_it(monkeypatch):
    import imgclust.knn as knn

    calls = []
    real = knn.knn_graph
    monkeypatch.setattr(knn, "knn_graph", lambda X, k, metric, **kw: calls.append((k, metric)) or real(X, k, metric, **kw))
    X = np.random.default_rng(2).normal(size=(200, 6)).astype(np.float32)
    shared = knn.Neighbours(X)
    ten = shared.graph(10)
    assert ten.k == 10 and calls == [(knn.DEFAULT_K, "euclidean")]  # computed once, at the default size
    np.testing.assert_array_equal(shared.graph(5).indices, ten.indices[:, :5])
    shared.graph(knn.DEFAULT_K)
    assert calls == [(knn.DEFAULT_K, "euclidean")]
    shared.graph(40)
    shared.graph(5, "cosine")
    assert calls[1:] == [(40, "euclidean"), (knn.DEFAULT_K, "cosine")]


def test_a_stored_graph_is_reused_by_the_next_process_and_never_for_other_rows(tmp_path, monkeypatch):
    import imgclust.knn as knn

    from .stage_fixtures import blob_cache

    cache = blob_cache(tmp_path / "c.h5", n_per=40, centers=3, dim=8)
    encoder = cache.encoders()[0]
    rows = cache.rows(encoder)
    X = rows.read_embeddings()
    first = knn.Neighbours(X, store=knn.StoredGraphs(cache, encoder, "raw", rows.fingerprint)).graph(12)
    assert list(cache.current(encoder, "knn", rows.fingerprint)) == [f"raw:euclidean@{rows.fingerprint[:8]}"]
    monkeypatch.setattr(knn, "knn_graph", lambda *a, **kw: pytest.fail("the stored graph should have been read"))
    again = knn.Neighbours(X, store=knn.StoredGraphs(cache, encoder, "raw", rows.fingerprint)).graph(12)
    np.testing.assert_array_equal(again.indices, first.indices)
    np.testing.assert_allclose(again.distances, first.distances)
    assert again.method == "exact" and again.recall == 1.0
    assert knn.StoredGraphs(cache, encoder, "raw", "0" * 32).load("euclidean", 12) is None  # other rows: not used
    name = f"raw:euclidean@{rows.fingerprint[:8]}"
    assert cache.remove_results([name]) == [{"encoder": encoder, "kind": "knn", "name": name, "nbytes": ANY}]
    assert not knn.StoredGraphs(cache, encoder, "raw", rows.fingerprint).has("euclidean", 12)  # as imgclust cache rm NAME


def test_umap_on_the_raw_rows_stores_its_graph_for_the_stages_after_it(tmp_path, monkeypatch):
    import importlib

    import imgclust.knn as knn

    from .stage_fixtures import blob_cache

    reduce_module = importlib.import_module("imgclust.reduce")
    monkeypatch.setattr(reduce_module, "PRECOMPUTED_KNN_ROWS", 50)
    cache = blob_cache(tmp_path / "c.h5", n_per=40, centers=3, dim=8)
    result = reduce_module.reduce(cache.path, dims=3, n_neighbors=10)
    rows = cache.rows(result.encoder)
    stored = knn.StoredGraphs(cache, result.encoder, "raw", rows.fingerprint).load("euclidean", 9)
    assert stored is not None and stored.k == knn.DEFAULT_K and stored.method == "exact"
    np.testing.assert_array_equal(stored.indices, knn.knn_graph(rows.read_embeddings(), knn.DEFAULT_K).indices)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_reranking_keeps_each_querys_k_nearest_candidates_by_exact_distance(metric):
    import imgclust.knn as knn

    rng = np.random.default_rng(3)
    base = knn._prepared(rng.normal(size=(500, 160)).astype(np.float32), metric)
    queries = knn._prepared(rng.normal(size=(40, 160)).astype(np.float32), metric)
    candidates = np.stack([rng.choice(500, size=30, replace=False) for _ in queries])
    candidates[0, 4:] = -1  # a short list: only 4 candidates for 6 places
    raw, idx = knn.rerank(knn._faiss(), queries, base, candidates, 6, metric)
    for q, (cand, found, scores) in enumerate(zip(candidates, idx, raw)):
        cand = cand[cand >= 0]
        exact = base[cand] @ queries[q] if metric == "cosine" else ((base[cand] - queries[q]) ** 2).sum(axis=1)
        order = np.argsort(-exact if metric == "cosine" else exact)[:6]
        np.testing.assert_array_equal(found[: len(order)], cand[order])
        np.testing.assert_allclose(scores[: len(order)], exact[order], rtol=1e-4, atol=1e-4)
    assert (idx[0, 4:] == -1).all() and np.isinf(raw[0, 4:]).all()
    distances = knn._to_distances(raw, metric)
    assert np.isinf(distances[0, 4:]).all() if metric == "euclidean" else (distances[0, 4:] == 2.0).all()


def test_pca_above_its_fit_size_fits_a_sample_and_projects_every_row(tmp_path, monkeypatch):
    import importlib

    from sklearn.metrics import adjusted_mutual_info_score

    from imgclust.clusterers import create_clusterer

    from .stage_fixtures import blob_cache

    reduce_module = importlib.import_module("imgclust.reduce")
    cache = blob_cache(tmp_path / "c.h5", n_per=150, centers=4, dim=16)
    monkeypatch.setattr(reduce_module, "PCA_FIT_ROWS", 200)
    monkeypatch.setattr(reduce_module, "PLACE_BLOCK", 64)  # several blocks
    result = reduce_module.reduce(cache.path, method="pca", dims=4)
    assert result.fitted_on == 200 and result.shape == (600, 4)
    data = reduce_module.load_reduction(cache.path, result.encoder, result.key)
    truth = cache.read_index(result.encoder).labels
    labels = create_clusterer("kmeans", n_clusters=4).fit_predict(data)
    assert adjusted_mutual_info_score(truth, labels) > 0.95


def test_cluster_reports_each_long_stage_on_its_progress_callback(tmp_path, monkeypatch):
    import importlib

    from imgclust.cluster import cluster

    from .stage_fixtures import blob_cache

    monkeypatch.setattr(importlib.import_module("imgclust.reduce"), "PRECOMPUTED_KNN_ROWS", 50)
    cache = blob_cache(tmp_path / "c.h5", n_per=40, centers=3, dim=8)
    seen = []
    cluster(cache.path, n_clusters=3, dims=3, progress=lambda stage, done, total: seen.append((stage, done, total)))
    stages = [stage for stage, _, _ in seen]
    assert stages.index("UMAP neighbours") < stages.index("fitting UMAP") < stages.index("clustering")
    assert [s for s in seen if s[0] == "clustering"] == [("clustering", 0, 1), ("clustering", 1, 1)]
    assert seen[stages.index("UMAP neighbours")][2] == 120  # rows searched
    # the graph's stage shows from its start, before the index is built and the first rows are searched
    assert seen[stages.index("UMAP neighbours")] == ("UMAP neighbours", 0, 120)


def test_cosine_search_takes_unit_rows_without_a_copy():
    from imgclust.knn import _prepared

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 8)).astype(np.float32)
    copied = _prepared(X, "cosine")
    assert not np.shares_memory(copied, X) and np.allclose(np.linalg.norm(copied, axis=1), 1.0, atol=1e-6)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    assert np.shares_memory(_prepared(X, "cosine"), X)  # already unit: the caller's rows serve as they are
    X[3] = 0.0  # a zero row stays zero and does not force a copy
    assert np.shares_memory(_prepared(X, "cosine"), X)


def test_unit_rows_are_made_without_a_temporary_as_large_as_the_rows():
    import tracemalloc

    from imgclust.knn import _prepared, l2_normalise, row_norms

    X = np.random.default_rng(1).normal(size=(20000, 256)).astype(np.float32)
    expected = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(row_norms(X)[:, 0], np.linalg.norm(X, axis=1), rtol=1e-5)
    tracemalloc.start()
    try:
        out = l2_normalise(X, copy=False)  # in place: per-row values only (a copy of X would be 20 MB)
        _, peak = tracemalloc.get_traced_memory()
        assert out is X and peak < X.nbytes / 10
        tracemalloc.reset_peak()
        assert np.shares_memory(_prepared(X, "cosine"), X)  # the check that the rows are unit copies nothing
        _, peak = tracemalloc.get_traced_memory()
        assert peak < X.nbytes / 10
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_a_subset_graph_is_the_subsets_own_graph_and_searches_only_rows_that_lost_neighbours(metric, monkeypatch):
    import imgclust.knn as knn

    rng = np.random.default_rng(4)
    X = rng.normal(size=(1500, 12)).astype(np.float32)
    whole = knn.knn_graph(X, 12, metric)
    for rows in (np.sort(rng.choice(1500, 700, replace=False)), np.delete(np.arange(1500), [7, 300])):
        queried = []
        real = knn.NeighbourSearch.__call__
        monkeypatch.setattr(knn.NeighbourSearch, "__call__", lambda self, q, p=None: queried.append(len(q)) or real(self, q, p))
        sub = knn.subset_graph(whole, rows, X[rows], 10)
        monkeypatch.undo()
        own = knn.knn_graph(X[rows], 10, metric)
        np.testing.assert_array_equal(sub.indices, own.indices)
        np.testing.assert_allclose(sub.distances, own.distances, rtol=1e-5, atol=1e-5)
        lost = (np.isin(whole.indices[rows], rows).sum(axis=1) < 10).sum()
        assert queried == ([lost] if lost else [])  # only the rows left with fewer than 10 are searched again


def test_the_approximate_graph_searches_rows_by_inverted_list_with_the_same_result():
    import imgclust.knn as knn

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(40, 160)).astype(np.float32)
    X = knn._prepared(centres[rng.integers(0, 40, 3000)] + 0.5 * rng.normal(size=(3000, 160)).astype(np.float32),
                      "cosine")
    index = knn._Approximate(knn._faiss(), X, "cosine", 0)  # 160 dims: the projected search and re-ranking
    index.index.nprobe = 4
    order = index.list_order()
    assert sorted(order.tolist()) == list(range(3000)) and not np.array_equal(order, np.arange(3000))
    raw_plain, idx_plain = knn._search(index, X, 11, None, block=500)
    raw_listed, idx_listed = knn._search(index, X, 11, None, block=500, order=order)
    np.testing.assert_array_equal(idx_listed, idx_plain)
    np.testing.assert_array_equal(raw_listed, raw_plain)
    graph = knn.knn_graph(X, 10, "cosine", exact_work_limit=0)
    assert graph.method == "ivf" and graph.recall >= 0.95
