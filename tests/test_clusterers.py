"""Tests of the shallow clustering methods (imgclust.clusterers._agglomerative/_centroid/_density/_graph)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from imgclust.clusterers import CLUSTERERS, Clusterer, create_clusterer, list_clusterers
from imgclust.clusterers._agglomerative import (
    AGGLOMERATIVE_DEFAULTS,
    UNTUNED_WARD_THRESHOLD,
    agglomerative_defaults,
    normalise_for_threshold,
)
from imgclust.clusterers._centroid import default_dpmeans_penalty, dp_means, spherical_kmeans
from imgclust.clusterers._density import default_dbscan_eps
from imgclust.clusterers._graph import cdp_components, rank_order_distances
from imgclust.errors import NotFoundError, ParameterError, ResourceError, UsageError
from imgclust.knn import knn_graph

SHALLOW = [
    "agglomerative", "kmeans", "minibatch-kmeans", "spherical-kmeans", "gmm", "dpmeans",
    "hdbscan", "dbscan", "meanshift", "spectral", "affinity", "aro", "cdp",
]
NOISY = {"hdbscan", "dbscan"}  # may label samples -1
N_BLOBS = 6


@pytest.fixture(scope="module")
def blobs():
    # 6 tight, far-apart blobs of 100 points in 5-d (ARO wants clusters larger than its 80-lists).
    X, y = make_blobs(
        n_samples=600, centers=N_BLOBS, n_features=5, cluster_std=0.5, center_box=(-20, 20), random_state=0
    )
    return X, y


def _make(name: str, **params) -> Clusterer:
    mode = CLUSTERERS.get(name).n_clusters_mode
    k = N_BLOBS if mode in ("required", "optional") else None
    return create_clusterer(name, n_clusters=k, random_state=0, **params)


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_every_shallow_method():
    names = list_clusterers()
    assert set(SHALLOW) <= set(names)
    assert names[0] == "agglomerative"  # the default method comes first in listings
    assert set(list_clusterers("*kmeans*")) >= {"kmeans", "minibatch-kmeans", "spherical-kmeans"}
    assert "hdbscan" not in list_clusterers("*kmeans*")


def test_unknown_method_lists_choices():
    with pytest.raises(NotFoundError) as err:
        create_clusterer("k-meens")
    assert "unknown clustering method 'k-meens'" in str(err.value)
    assert "kmeans" in err.value.hint


@pytest.mark.parametrize("name", SHALLOW)
def test_entry_metadata_is_complete(name):
    cls = CLUSTERERS.get(name)
    assert cls.name == name
    assert cls.summary and cls.paper
    assert cls.n_clusters_mode in ("required", "optional", "unused")
    assert cls.input_space in ("reduced", "raw")
    for p in cls.params:
        assert p.validate(p.default, cls.__name__) == p.default  # defaults obey their own table
        assert p.name in cls.__doc__, f"{name}: parameter {p.name} is not documented"


def test_every_registered_entry_has_a_valid_table():
    # Covers plugins and the deep methods too: defaults must pass their own validation.
    for name, cls in CLUSTERERS.items():
        assert cls.n_clusters_mode in ("required", "optional", "unused"), name
        for p in cls.params:
            p.validate(p.default, cls.__name__)


# --- recovery and determinism on blobs --------------------------------------------------------


@pytest.mark.parametrize("name", SHALLOW)
def test_recovers_separated_blobs(name, blobs):
    X, y = blobs
    labels = _make(name).fit_predict(X)
    assert labels.dtype == np.int64 and labels.shape == y.shape
    if name in NOISY:
        kept = labels >= 0
        assert kept.mean() >= 0.8, f"{name} declared {np.sum(~kept)} of {len(y)} samples noise"
        assert adjusted_rand_score(y[kept], labels[kept]) >= 0.95
        assert len(np.unique(labels[kept])) == N_BLOBS
    else:
        assert (labels >= 0).all()
        assert adjusted_rand_score(y, labels) >= 0.95


@pytest.mark.parametrize("name", SHALLOW)
def test_same_seed_same_labels(name, blobs):
    X, _ = blobs
    # A harder input than the blobs (overlapping clusters) so that seeds could matter.
    rng = np.random.default_rng(1)
    Xh = X + rng.normal(scale=4.0, size=X.shape)
    a = _make(name).fit_predict(Xh)
    b = _make(name).fit_predict(Xh)
    np.testing.assert_array_equal(a, b)


def test_fit_records_labels_and_cluster_count(blobs):
    X, _ = blobs
    model = create_clusterer("hdbscan").fit(X)
    assert model.n_clusters_ == len(np.unique(model.labels_[model.labels_ >= 0]))


@pytest.mark.parametrize("name", SHALLOW)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_inputs_do_not_crash(name, n, blobs):
    X, _ = blobs
    mode = CLUSTERERS.get(name).n_clusters_mode
    k = 1 if mode in ("required", "optional") else None
    labels = create_clusterer(name, n_clusters=k).fit_predict(X[:n])
    assert labels.shape == (n,)


# --- parameter validation ---------------------------------------------------------------------


def test_unknown_parameter_is_refused():
    with pytest.raises(ParameterError) as err:
        create_clusterer("kmeans", n_clusters=3, n_iter=5)
    assert "n_iter" in str(err.value) and "n_init" in err.value.hint


@pytest.mark.parametrize(
    "name, params",
    [
        ("kmeans", {"n_init": 0}),
        ("kmeans", {"init": "farthest"}),
        ("hdbscan", {"max_cluster_fraction": 1.5}),
        ("hdbscan", {"min_cluster_size": 1}),
        ("affinity", {"damping": 0.3}),
        ("agglomerative", {"linkage": "median"}),
        ("agglomerative", {"distance_threshold": 0}),
        ("agglomerative", {"distance_threshold": -1.0}),
        ("dbscan", {"eps_quantile": 0.0}),
        ("aro", {"n_neighbors": "many"}),
        ("cdp", {"threshold": 1.0}),
        ("dpmeans", {"penalty": -2.0}),
    ],
)
def test_out_of_range_values_are_refused(name, params):
    mode = CLUSTERERS.get(name).n_clusters_mode
    k = 3 if mode == "required" else None
    with pytest.raises(ParameterError) as err:
        create_clusterer(name, n_clusters=k, **params)
    (key,) = params
    assert f"The '{key}' parameter of" in str(err.value) and "Got" in str(err.value)


def test_refusal_names_the_allowed_values():
    with pytest.raises(ParameterError) as err:
        create_clusterer("kmeans", n_clusters=3, n_init=0)
    assert "must be an int in [1, inf]. Got 0 instead." in str(err.value)
    with pytest.raises(ParameterError) as err:
        create_clusterer("agglomerative", linkage="median")
    assert "must be a str one of" in str(err.value)


def test_cli_strings_are_coerced():
    model = create_clusterer("agglomerative", distance_threshold="2.5", connectivity_neighbors="10")
    assert model.distance_threshold == 2.5 and model.connectivity_neighbors == 10
    assert create_clusterer("hdbscan", min_samples="none").min_samples is None


@pytest.mark.parametrize("metric", ["cosine", "chebyshev", "manhattan"])
def test_ward_needs_euclidean(metric):
    with pytest.raises(ParameterError) as err:
        create_clusterer("agglomerative", linkage="ward", metric=metric)
    assert "ward" in str(err.value) and repr(metric) in str(err.value)
    create_clusterer("agglomerative", linkage="average", metric=metric)  # fine with average


def test_n_clusters_larger_than_n_samples(blobs):
    X, _ = blobs
    with pytest.raises(UsageError, match="n_samples=5 should be >= n_clusters=6"):
        create_clusterer("kmeans", n_clusters=6).fit(X[:5])


def test_n_clusters_required_or_unused():
    with pytest.raises(UsageError, match="needs the number of clusters"):
        create_clusterer("spectral")
    with pytest.raises(UsageError, match="takes no n_clusters"):
        create_clusterer("hdbscan", n_clusters=4)


def test_combination_without_default_threshold_asks_for_one(blobs):
    X, _ = blobs
    with pytest.raises(ParameterError, match="no default distance_threshold"):
        create_clusterer("agglomerative", linkage="complete", metric="manhattan").fit(X)
    # ... but works with K or with an explicit threshold
    create_clusterer("agglomerative", n_clusters=3, linkage="complete", metric="manhattan").fit(X)
    create_clusterer("agglomerative", linkage="complete", metric="manhattan", distance_threshold=2.0).fit(X)


# --- agglomerative: threshold normalisation and per-encoder defaults ---------------------------


def test_threshold_normalisation_by_hand():
    X = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    # centred: (+-1, +-2); per-dimension std (1, 2); mean std 1.5; euclidean: also / sqrt(2)
    expected = np.array([[-1.0, -2.0], [1.0, -2.0], [-1.0, 2.0], [1.0, 2.0]]) / 1.5
    np.testing.assert_allclose(normalise_for_threshold(X, "chebyshev"), expected)
    np.testing.assert_allclose(normalise_for_threshold(X, "euclidean"), expected / math.sqrt(2))
    # constant data is only centred
    np.testing.assert_array_equal(normalise_for_threshold(np.ones((3, 2)), "euclidean"), np.zeros((3, 2)))
    # l1 distances grow like d, so manhattan divides by d (ZS code's --ndim-correction), not sqrt(d)
    np.testing.assert_allclose(normalise_for_threshold(X, "manhattan"), expected / 2)


def test_normalisation_raw_cuts_the_raw_input_and_needs_a_threshold():
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    raw = create_clusterer("agglomerative", linkage="single", normalisation="raw", distance_threshold=0.5)
    assert raw.fit(X).n_clusters_ == 4  # raw gaps 1 and 9: nothing merges at 0.5
    assert create_clusterer("agglomerative", linkage="single", normalisation="raw", distance_threshold=2.0).fit(X).n_clusters_ == 2
    with pytest.raises(ParameterError, match="no default distance_threshold"):
        create_clusterer("agglomerative", normalisation="raw").fit(X)
    # with K the normalisation plays no part
    assert create_clusterer("agglomerative", n_clusters=2, normalisation="raw").fit(X).n_clusters_ == 2


def test_zs_parameter_version_is_named():
    from imgclust.clusterers._agglomerative import ZS_PARAMS_VERSION

    assert "BEST_PARAMS_v5" in ZS_PARAMS_VERSION
    assert all("BEST_PARAMS_v5" in e.source or "unverified" in e.source for e in AGGLOMERATIVE_DEFAULTS.values())


def test_threshold_applies_after_normalisation():
    # 1-d pairs {0, 1} and {10, 11}: std = sqrt(25.25) ~ 5.02, so the normalised gaps are ~0.2 and ~2.
    X = np.array([[0.0], [1.0], [10.0], [11.0]])

    def k(t, scale=1.0):
        model = create_clusterer("agglomerative", linkage="single", distance_threshold=t).fit(X * scale)
        return model.n_clusters_

    assert k(0.1) == 4
    assert k(0.5) == 2  # on raw distances (1 and 9) this threshold would leave 4 clusters
    assert k(3.0) == 1
    assert k(0.5, scale=1000.0) == 2  # the cut does not depend on the data's scale


def test_k_path_ignores_threshold(blobs):
    X, y = blobs
    labels = create_clusterer("agglomerative", n_clusters=6, distance_threshold=1e-3).fit_predict(X)
    assert len(np.unique(labels)) == 6


def test_default_threshold_is_the_untuned_ward_value(blobs):
    X, _ = blobs
    model = create_clusterer("agglomerative")
    assert model.resolved_threshold() == UNTUNED_WARD_THRESHOLD
    assert model.fit(X).n_clusters_ == N_BLOBS


@pytest.mark.parametrize(
    "encoder, expected",
    [
        ("clip-vitb16", ("average", "chebyshev", 1.0)),
        ("clip-vitb32", ("average", "chebyshev", 1.0)),
        ("clip-vitl14", ("average", "chebyshev", 1.0)),
        ("clip-rn50", ("average", "euclidean", 0.5)),
        ("dino-vitb16", ("average", "euclidean", 0.2)),
        ("mae-vitb16", ("average", "cosine", 0.71)),
        ("supervised-vitb16", ("ward", "euclidean", 2.0)),
        ("supervised-rn50", ("ward", "euclidean", 2.0)),
        ("dinov2-vitb14", ("ward", "euclidean", UNTUNED_WARD_THRESHOLD)),
        ("effnet-lite0", ("ward", "euclidean", UNTUNED_WARD_THRESHOLD)),
        ("some-plugin-encoder", ("ward", "euclidean", UNTUNED_WARD_THRESHOLD)),
        ("CLIP-ViTB16", ("average", "chebyshev", 1.0)),
    ],
)
def test_agglomerative_defaults(encoder, expected):
    got = agglomerative_defaults(encoder)
    assert (got["linkage"], got["metric"], got["distance_threshold"]) == expected
    create_clusterer("agglomerative", **got)  # usable as parameters as they are


def test_defaults_table_is_consistent():
    for name, entry in AGGLOMERATIVE_DEFAULTS.items():
        assert entry.source, name
        assert entry.linkage != "ward" or entry.metric == "euclidean", name
    assert agglomerative_defaults("clip-vitb16") is not agglomerative_defaults("clip-vitb16")  # fresh dicts


# --- memory refusal ---------------------------------------------------------------------------


def test_affinity_refuses_when_memory_is_short(blobs, monkeypatch):
    import imgclust.clusterers._base as base

    X, _ = blobs
    monkeypatch.setattr(base, "available_memory_bytes", lambda: 1000)
    with pytest.raises(ResourceError) as err:
        create_clusterer("affinity").fit(X)
    assert "O(N^2)" in str(err.value) and err.value.hint
    # agglomerative builds its tree in O(N·d) memory instead of refusing
    short = create_clusterer("agglomerative", n_clusters=6).fit(X)
    assert short.n_clusters_ == 6 and short.fit_path_.startswith("exact ward tree of")
    # the kNN-connectivity variant and the O(N k) methods still run
    assert create_clusterer("agglomerative", n_clusters=6, connectivity_neighbors=10).fit(X).n_clusters_ == 6
    create_clusterer("kmeans", n_clusters=6).fit(X)


def test_affinity_runs_with_enough_memory(blobs, monkeypatch):
    import imgclust.clusterers._base as base

    X, _ = blobs
    monkeypatch.setattr(base, "available_memory_bytes", lambda: 10 * 2**30)
    assert create_clusterer("affinity").fit(X).n_clusters_ == N_BLOBS


# --- hand-checked building blocks -------------------------------------------------------------


def test_rank_order_distances_by_hand():
    # Neighbour lists (self first), k = 3. Worked by hand from ES's definition:
    #   (0,1): d(0,1)=0, d(1,0)=|{1,3} - list(0)|=1, min rank 1 -> 1
    #   (0,2): d(0,2)=|{0,1} - list(2)|=1, d(2,0)=0, min rank 1 -> 1
    #   (1,3): all shared -> 0;  (2,4): d(2,4)=|{2,0} - list(4)|=0, d(4,2)=0 -> 0
    #   (1,0) rank 2: same pair as (0,1) -> 1;  (3,4), (4,0): not in each other's lists -> inf
    nbrs = np.array([[0, 1, 2], [1, 3, 0], [2, 0, 4], [3, 1, 4], [4, 2, 0]])
    inf = np.inf
    expected = np.array(
        [[inf, 1, 1], [inf, 0, 1], [inf, 1, 0], [inf, 0, inf], [inf, 0, inf]]
    )
    np.testing.assert_array_equal(rank_order_distances(nbrs, chunk=2), expected)


def test_neighbour_lists_put_each_sample_first_even_with_duplicates():
    X = np.array([[0.0], [0.0], [0.0], [5.0]])
    nbrs, dist = knn_graph(X, 2).with_self()  # ARO's lists
    np.testing.assert_array_equal(nbrs[:, 0], np.arange(4))
    assert (dist[:, 0] == 0).all()
    assert all(len(set(row)) == 3 for row in nbrs)


def test_cdp_splits_oversized_components():
    # chain 0-1-2-3 with similarities 0.9, 0.85, 0.99 and a lone sample 4
    rows, cols = np.array([0, 1, 2]), np.array([1, 2, 3])
    sims = np.array([0.9, 0.85, 0.99])
    labels = cdp_components(5, rows, cols, sims, threshold=0.8, max_size=10, step=0.05)
    assert len(np.unique(labels[:4])) == 1 and labels[4] not in labels[:4]
    # max size 2: the threshold rises (0.8, 0.81, 0.8195, ...) until the 0.85 link breaks
    labels = cdp_components(5, rows, cols, sims, threshold=0.8, max_size=2, step=0.05)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[1] != labels[2]
    assert len(np.unique(labels)) == 3  # the unpaired sample is a singleton, not noise
    assert (labels >= 0).all()


def test_dp_means_opens_clusters_by_penalty():
    X = np.array([[0.0], [0.1], [10.0], [10.1], [20.0]])
    labels, centres = dp_means(X, penalty=1.0)
    assert len(np.unique(labels)) == 3 and labels[0] == labels[1] and labels[2] == labels[3]
    labels, _ = dp_means(X, penalty=1000.0)
    assert (labels == 0).all()
    # default penalty: a fraction of the mean squared distance to the mean
    assert default_dpmeans_penalty(np.array([[0.0], [2.0]]), 0.5) == pytest.approx(0.5)


def test_spherical_kmeans_ignores_row_length(blobs):
    X, y = blobs
    X = X - X.mean(axis=0)
    a, centres = spherical_kmeans(X, 6, random_state=3)
    scales = np.random.default_rng(0).uniform(0.1, 10.0, size=(len(X), 1))
    b, _ = spherical_kmeans(X * scales, 6, random_state=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0)


def test_default_dbscan_eps_by_hand():
    X = np.array([[0.0], [1.0], [3.0], [6.0]])
    # distance to the 2nd neighbour (self first): 1, 1, 2, 3 -> median 1.5
    assert default_dbscan_eps(knn_graph(X, 1), min_samples=2, quantile=0.5) == pytest.approx(1.5)
    # cosine distances 1 - cos become the chord length sqrt(2 (1 - cos)) of the unit rows
    U = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert default_dbscan_eps(knn_graph(U, 1, "cosine"), min_samples=2, quantile=0.5) == pytest.approx(np.sqrt(2), rel=1e-6)


def test_hdbscan_max_cluster_fraction(blobs):
    X, y = blobs
    # Two blobs of 100 each hold half the data: the ZS cap (0.2 N) cannot keep them whole,
    # the cap switched off (1.0) can.
    two = np.isin(y, [0, 1])
    Xt, yt = X[two], y[two]
    capped = create_clusterer("hdbscan").fit_predict(Xt)
    free = create_clusterer("hdbscan", max_cluster_fraction=1.0).fit_predict(Xt)
    sizes = np.bincount(capped[capped >= 0]) if (capped >= 0).any() else np.zeros(1)
    assert sizes.max() <= round(0.2 * len(Xt))  # (here: everything becomes noise)
    assert adjusted_rand_score(yt, capped) < 0.5
    kept = free >= 0
    assert len(np.unique(free[kept])) == 2 and adjusted_rand_score(yt[kept], free[kept]) == 1.0


# --- dbscan metric (ES used cosine) -----------------------------------------------------------


def test_dbscan_cosine_matches_sklearn_and_ignores_the_norm():
    from sklearn.cluster import DBSCAN as SKDBSCAN

    rng = np.random.default_rng(0)
    # two directions, points at very different distances from the origin along each
    angles = np.concatenate([rng.normal(0.0, 0.05, 60), rng.normal(1.5, 0.05, 60)])
    radii = rng.uniform(1.0, 50.0, 120)
    X = np.c_[np.cos(angles), np.sin(angles)] * radii[:, None]
    ours = create_clusterer("dbscan", metric="cosine", eps=0.01, min_samples=5).fit_predict(X)
    ref = SKDBSCAN(eps=0.01, min_samples=5, metric="cosine", algorithm="brute").fit_predict(X)
    assert adjusted_rand_score(ref, ours) == 1.0 and len(set(ours) - {-1}) == 2
    # in euclidean units the same radius finds next to nothing: the rays are long
    assert (create_clusterer("dbscan", eps=0.01, min_samples=5).fit_predict(X) == -1).mean() > 0.9
    # the default eps (a quantile) is taken in cosine units too: rescaling rows changes nothing
    default = create_clusterer("dbscan", metric="cosine").fit_predict(X)
    rescaled = create_clusterer("dbscan", metric="cosine").fit_predict(X * rng.uniform(0.1, 10.0, (120, 1)))
    np.testing.assert_array_equal(default, rescaled)


def test_memory_available_reads_the_cgroup_limit_v1_and_v2(tmp_path):
    from imgclust.clusterers._base import cgroup_headroom_bytes

    proc = tmp_path / "cgroup"
    v2 = tmp_path / "v2" / "box"
    v2.mkdir(parents=True)
    (v2 / "memory.max").write_text("4294967296\n")
    (v2 / "memory.current").write_text("1073741824\n")
    (v2 / "memory.stat").write_text("anon 1\ninactive_file 536870912\n")
    proc.write_text("0::/box\n")
    assert cgroup_headroom_bytes(str(tmp_path / "v2"), str(proc)) == 4 * 2**30 - 2**30 + 2**29
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_headroom_bytes(str(tmp_path / "v2"), str(proc)) is None  # no limit
    v1 = tmp_path / "v1" / "memory" / "job"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("2147483648\n")
    (v1 / "memory.usage_in_bytes").write_text("2147483648\n")
    proc.write_text("5:cpu:/\n4:memory:/job\n")
    assert cgroup_headroom_bytes(str(tmp_path / "v1"), str(proc)) == 0
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert cgroup_headroom_bytes(str(tmp_path / "v1"), str(proc)) is None
    assert cgroup_headroom_bytes(str(tmp_path / "v1"), str(tmp_path / "missing")) is None


def test_hdbscan_min_samples_1_refuses_at_preflight_above_its_size():
    with pytest.raises(ResourceError, match="min_samples=1") as info:
        create_clusterer("hdbscan", min_samples=1).preflight(100_000)
    assert "min_samples >= 2" in info.value.hint
    create_clusterer("hdbscan").preflight(100_000)  # the Borůvka tree: no refusal


def test_hdbscan_boruvka_matches_scikit_learn():
    from sklearn.cluster import HDBSCAN as SKHDBSCAN

    X, _ = make_blobs(n_samples=1500, n_features=6, centers=8, cluster_std=2.0, random_state=1)
    for params in ({"min_cluster_size": 10, "min_samples": 3}, {"min_cluster_size": 5}):
        ours = create_clusterer("hdbscan", max_cluster_fraction=1.0, **params).fit_predict(X)
        ref = SKHDBSCAN(copy=True, **params).fit_predict(X)
        assert adjusted_rand_score(ref, ours) == pytest.approx(1.0)
        assert (ours == -1).sum() == (ref == -1).sum()
