import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from imgclust.cache import Cache
from imgclust.cluster import cluster, load_run, parse_params
from imgclust.errors import NotFoundError, ParameterError, UsageError
from imgclust.reduce import reduce
from imgclust.score import score

from .stage_fixtures import ENCODER, blob_cache


@pytest.fixture
def cache(tmp_path):
    return blob_cache(tmp_path / "blobs.h5")


def truth(cache):
    return Cache(cache.path).read_index(ENCODER).labels


def test_reduce_stores_under_its_settings_and_reuses(cache):
    first = reduce(cache.path, method="umap", dims=5)
    again = reduce(cache.path, method="umap", dims=5)
    assert not first.reused and again.reused and first.key == again.key
    assert first.shape == (120, 5) and "n_components=5" in first.key and "n_neighbors=30" in first.key
    assert first.key in Cache(cache.path).list_groups(ENCODER, "reductions")


def test_pca_by_variance_and_l2_chaining(cache):
    pca = reduce(cache.path, method="pca", variance=0.9)
    assert 1 <= pca.shape[1] < 16
    l2 = reduce(cache.path, method="l2")
    data, _ = Cache(cache.path).read_array(ENCODER, f"reductions/{l2.key}/data")
    assert np.allclose(np.linalg.norm(data, axis=1), 1, atol=1e-5)
    assert reduce(cache.path, method="l2+pca", dims=3).shape == (120, 3)


def test_memory_budget_fits_on_a_sample_and_transforms_in_chunks(cache):
    small = reduce(cache.path, method="pca", dims=4, memory_budget=16 * 4 * 50)
    assert small.fitted_on == 50 and small.shape == (120, 4)


@pytest.mark.parametrize("kwargs, error", [
    ({"method": "tsne"}, UsageError), ({"method": "umap+l2"}, UsageError), ({"method": "pca", "variance": 1.5}, ParameterError),
    ({"method": "umap", "dims": 0}, ParameterError),
])
def test_reduce_rejects_bad_options(cache, kwargs, error):
    with pytest.raises(error):
        reduce(cache.path, **kwargs)


def test_cluster_with_k_and_auto_recover_the_blobs(cache):
    run = cluster(cache.path, n_clusters=4)
    assert run.run_id == "run-1" and run.n_clusters == 4
    assert adjusted_rand_score(truth(cache), run.labels) == 1.0
    auto = cluster(cache.path, n_clusters="auto")
    assert auto.n_clusters == 4 and auto.selection is not None
    stored = load_run(cache.path)
    assert stored.run_id == "run-2" and np.array_equal(stored.labels, auto.labels)


def test_cluster_without_k_uses_the_threshold_path(cache):
    run = cluster(cache.path)
    assert run.params["distance_threshold"] is not None
    assert adjusted_rand_score(truth(cache), run.labels) > 0.9


def test_run_keeps_its_fitted_estimator_but_not_in_its_dict(cache):
    run = cluster(cache.path, method="kmeans", n_clusters=4, store=False)
    assert np.array_equal(run.estimator.labels_, run.labels)
    assert "estimator" not in run.to_dict() and "labels" in run.to_dict(include_labels=True)
    assert cluster(cache.path, method="kmeans", n_clusters=4).to_dict()["run_id"] == "run-1"
    assert load_run(cache.path).estimator is None


def test_cluster_is_deterministic(cache):
    a = cluster(cache.path, method="kmeans", n_clusters=4, random_state=3, store=False)
    b = cluster(cache.path, method="kmeans", n_clusters=4, random_state=3, store=False)
    assert np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"n_clusters": 500}, UsageError, "larger than the number of images"),
    ({"method": "nope"}, NotFoundError, "unknown clustering method"),
    ({"params": {"bogus": "1"}}, ParameterError, "no parameter"),
    ({"method": "kmeans"}, UsageError, "needs the number of clusters"),
    ({"method": "hdbscan", "n_clusters": "auto"}, UsageError, "auto"),
    ({"encoder": "clip-vitb16"}, NotFoundError, "no embeddings for encoder"),
])
def test_cluster_rejects_bad_input(cache, kwargs, error, message):
    with pytest.raises(error, match=message):
        cluster(cache.path, **kwargs)


def test_params_parse_key_value_pairs():
    assert parse_params(["linkage=average", "distance_threshold=0.5"]) == {"linkage": "average", "distance_threshold": "0.5"}
    with pytest.raises(UsageError, match="key=value"):
        parse_params(["linkage"])


def test_score_with_stored_and_csv_labels(cache, tmp_path):
    cluster(cache.path, n_clusters=4)
    report = score(cache.path)
    assert report.labels_source == "cache"
    assert report.scores.ami == pytest.approx(1.0) and report.scores.accuracy == pytest.approx(1.0)
    assert report.scores.silhouette > 0.5
    index = Cache(cache.path).read_index(ENCODER)
    csv = tmp_path / "labels.csv"
    csv.write_text("".join(f"{p},{'even' if i % 2 == 0 else 'odd'}\n" for i, p in enumerate(index.paths)))
    other = score(cache.path, labels=str(csv))
    assert other.labels_source == str(csv) and other.scores.ami < 0.1
    (tmp_path / "none.csv").write_text("/elsewhere/x.jpg,a\n")
    with pytest.raises(UsageError, match="no label"):
        score(cache.path, labels=str(tmp_path / "none.csv"))
    with pytest.raises(UsageError, match="no run 'run-9'"):
        score(cache.path, run="run-9")


def test_label_free_scores_are_stored_with_the_run_and_not_computed_again(cache, monkeypatch):
    import dataclasses
    import importlib

    from imgclust.cache_admin import remove

    score_module = importlib.import_module("imgclust.score")  # the package's `score` is the function

    run = cluster(cache.path, n_clusters=4, reduction="none")
    first = score(cache.path)
    stored = Cache(cache.path).list_groups(ENCODER, "scores")
    assert list(stored) == [run.run_id] and not stored[run.run_id]["stale"]
    # later scores (other labels too) neither read the run's space nor compute a silhouette
    monkeypatch.setattr(score_module, "run_space", lambda *a: pytest.fail("the space should not be read"))
    again = score(cache.path)
    for field in dataclasses.fields(first.scores):
        a, b = getattr(first.scores, field.name), getattr(again.scores, field.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b or (a != a and b != b), field.name  # NaN equals NaN here
    assert set(again.scores.silhouette_per_cluster) == set(first.scores.silhouette_per_cluster)
    monkeypatch.undo()
    # a new run of the same id (the old one removed) is scored afresh, never given the old run's scores
    remove(cache.path, [run.run_id])
    assert Cache(cache.path).list_groups(ENCODER, "scores") == {}
    again_run = cluster(cache.path, n_clusters=2, reduction="none")
    assert again_run.run_id == run.run_id
    assert score(cache.path).scores.silhouette_per_cluster.keys() == {0, 1}


def test_score_without_runs_is_a_clear_error(cache):
    with pytest.raises(UsageError, match="no clustering runs"):
        score(cache.path)


# --- the (encoder, method) -> space table (ZS) and its override -----------------------------------


def test_default_space_table_follows_zs():
    from imgclust.spaces import default_space

    assert default_space("clip-vitb16", "agglomerative").describe() == "UMAP 50-d"
    assert default_space("mae-vitb16", "agglomerative").describe() == "PCA (98% of variance)"
    assert default_space("MAE-ViTB16", "hdbscan").describe() == "PCA (98% of variance)"
    assert default_space("clip-vitb16", "affinity").describe() == "PCA 10-d"
    assert default_space("mae-vitb16", "affinity").describe() == "PCA 10-d"  # the method's entry wins
    assert default_space("mae-vitb16", "temi").describe() == "raw embeddings"


def test_cluster_uses_the_table_and_records_why(cache, monkeypatch):
    import imgclust.spaces as spaces

    run = cluster(cache.path, method="affinity")
    assert run.space.startswith("pca-") and "n_components=10" in run.space
    assert "affinity propagation" in run.space_source and load_run(cache.path).space_source == run.space_source
    assert score(cache.path).silhouette_space == "PCA 10-d"
    # an encoder entry (as MAE's) sends every shallow method to PCA by variance
    monkeypatch.setitem(spaces.SPACE_TABLE, (ENCODER, "*"), spaces.MAE_PCA)
    kmeans = cluster(cache.path, method="kmeans", n_clusters=4)
    assert kmeans.space.startswith("pca-") and "variance=0.98" in kmeans.space
    # --reduction overrides the table: ES style is l2-normalised raw embeddings, no UMAP
    es = cluster(cache.path, method="kmeans", n_clusters=4, reduction="l2")
    assert es.space.split("@")[0] == "l2" and es.space_source == "--reduction"
    data, _ = Cache(cache.path).read_array(ENCODER, f"reductions/{es.space}/data")
    assert data.shape == (120, 16) and np.allclose(np.linalg.norm(data, axis=1), 1, atol=1e-5)
    assert adjusted_rand_score(truth(cache), es.labels) == 1.0
