"""Tests of imgclust.select: label-free choice of the number of clusters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, silhouette_score

from imgclust.clusterers import create_clusterer
from imgclust.errors import ParameterError, UsageError
from imgclust.k_rules import _peaks
from imgclust.select import (DEFAULT_RULE, SELECTION_RULES, apply_rule, choose_from_curve, choose_n_clusters, cut_tree_labels,
                             k_grid, parse_k_range)


@pytest.fixture(scope="module")
def blobs8():
    return make_blobs(n_samples=1200, n_features=10, centers=8, cluster_std=1.0, center_box=(-20, 20), random_state=0)


@pytest.fixture(scope="module")
def hierarchy():
    """3 well-separated groups of 4 tight blobs: the best silhouette is at K=3, the finest
    level that is almost as good is K=12."""
    rng = np.random.default_rng(0)
    groups = rng.normal(0, 30, (3, 10))
    centres = np.concatenate([g + rng.normal(0, 6, (4, 10)) for g in groups])
    return make_blobs(n_samples=1200, n_features=10, centers=centres, cluster_std=1.0, random_state=3)


def test_finds_eight_well_separated_blobs(blobs8):
    X, y = blobs8
    sel = choose_n_clusters(X)
    assert sel.n_clusters == 8 and sel.rule == DEFAULT_RULE and sel.confident
    assert adjusted_rand_score(y, sel.labels) == pytest.approx(1.0)
    # the default range is 2..min(200, rows / 10), every K for a tree
    assert sel.k_range == (2, 120) and list(sel.ks) == list(range(2, 121))
    assert sel.silhouette == pytest.approx(np.nanmax(sel.curves["silhouette"]))
    for rule in SELECTION_RULES:
        if rule != "stability":  # stability prefers the coarsest stable split of blobs (BENCHMARKS.md)
            assert choose_n_clusters(X, rule=rule).n_clusters == 8, rule


def test_progress_shows_from_the_start_of_a_tree_sweep_and_per_fit_of_a_flat_method(blobs8):
    X, _ = blobs8
    tree, flat = [], []
    choose_n_clusters(X, on_fit=lambda *call: tree.append(call))
    assert tree == [(0, 1), (1, 1)]  # one tree for every K: the bar shows from the start to the end
    choose_n_clusters(X, method="kmeans", k_min=2, k_max=5, on_fit=lambda *call: flat.append(call))
    assert flat == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_silhouette_rule_prefers_the_finest_well_separated_level(hierarchy):
    X, y = hierarchy
    sel = choose_n_clusters(X, rule="silhouette")
    assert sel.n_clusters == 12  # the coarse level (K=3) has the best silhouette; the rule goes down to the blobs
    assert adjusted_rand_score(y, sel.labels) == pytest.approx(1.0)
    assert choose_n_clusters(X).n_clusters == 12


def test_does_not_overshoot_two_blobs():
    X, _ = make_blobs(n_samples=800, n_features=10, centers=2, center_box=(-20, 20), random_state=1)
    sel = choose_n_clusters(X)
    assert sel.n_clusters == 2 and "edge" not in sel.flags  # K=2 at the default start is no doubt


def test_deterministic(hierarchy):
    X, _ = hierarchy
    a, b = choose_n_clusters(X), choose_n_clusters(X.copy())
    assert a.n_clusters == b.n_clusters
    np.testing.assert_array_equal(a.curves["silhouette"], b.curves["silhouette"])
    np.testing.assert_array_equal(a.labels, b.labels)
    da, db = a.to_dict(), b.to_dict()
    da.pop("seconds"), db.pop("seconds")
    assert da == db


# -- consistency: the K chosen is scored on exactly the clustering that is returned ---------------


def _returned(X, method, params, k):
    return create_clusterer(method, n_clusters=k, random_state=0, **params).fit_predict(X)


@pytest.mark.parametrize("params", [
    {"linkage": "ward", "metric": "euclidean"},
    {"linkage": "average", "metric": "chebyshev"},  # clip-vitb16's ZS default
    {"linkage": "average", "metric": "cosine"},  # mae-vitb16's
    {"linkage": "complete", "metric": "manhattan"},
    {"linkage": "ward", "metric": "euclidean", "connectivity_neighbors": 10},
])
def test_agglomerative_sweep_is_the_clusterer_itself(blobs8, params):
    X, _ = blobs8
    X = X + np.random.default_rng(0).normal(0, 2.0, X.shape)  # overlap, so the cuts are not trivial
    sel = choose_n_clusters(X, "agglomerative", params, k_max=12)
    for k in (2, 5, sel.n_clusters, 12):
        labels = _returned(X, "agglomerative", params, k)
        i = int(np.flatnonzero(sel.ks == k)[0])
        assert sel.curves["silhouette"][i] == pytest.approx(silhouette_score(X, labels), abs=1e-9)
    assert adjusted_rand_score(_returned(X, "agglomerative", params, sel.n_clusters), sel.labels) == 1.0


@pytest.mark.parametrize("method, params", [
    ("kmeans", {"n_init": 2}), ("minibatch-kmeans", {}), ("spherical-kmeans", {}), ("gmm", {}), ("spectral", {}),
])
def test_flat_methods_sweep_the_method_itself(method, params):
    X, y = make_blobs(n_samples=300, n_features=5, centers=5, cluster_std=0.6, center_box=(-15, 15), random_state=2)
    sel = choose_n_clusters(X, method, params, k_max=9)
    if method != "gmm":  # (gmm's curve has a second peak at 8 here; the point is which clustering is scored)
        assert sel.n_clusters == 5 and adjusted_rand_score(y, sel.labels) == pytest.approx(1.0)
    np.testing.assert_array_equal(sel.labels, _returned(X, method, params, sel.n_clusters))  # the very clustering returned
    assert sel.estimator is not None and np.array_equal(sel.estimator.labels_, sel.labels)
    assert sel.silhouette == pytest.approx(silhouette_score(X, sel.labels), abs=1e-9)
    assert "merge_gap" not in sel.curves  # no tree: the gap does not apply


def test_trained_heads_sweep_the_head_itself_on_a_coarse_grid(one_torch_thread):
    X, y = make_blobs(n_samples=240, n_features=8, centers=3, cluster_std=0.5, center_box=(-10, 10), random_state=4)
    params = {"epochs": 3, "heads": 1, "device": "cpu"}
    sel = choose_n_clusters(X, "temi", params, k_max=4)
    assert list(sel.ks) == [2, 3, 4]
    labels = _returned(X, "temi", params, sel.n_clusters)
    np.testing.assert_array_equal(sel.labels, labels)  # the head trained at the chosen K is the head returned
    assert sel.silhouette == pytest.approx(silhouette_score(X, labels), abs=1e-9)
    assert k_grid(2, 200, 8).size == 8  # a head's grid over the default range: 8 trainings


def test_merge_gap_needs_a_tree():
    X, _ = make_blobs(n_samples=200, centers=3, random_state=0)
    with pytest.raises(UsageError, match="merge tree"):
        choose_n_clusters(X, "kmeans", rule="merge-gap")
    with pytest.raises(UsageError, match="itself"):
        choose_n_clusters(X, "hdbscan")


# -- doubt ----------------------------------------------------------------------------------------


def test_no_structure_is_said():
    X = np.random.default_rng(0).standard_normal((1000, 10))
    sel = choose_n_clusters(X)
    assert "no-structure" in sel.flags and not sel.confident
    assert sel.summary.startswith("no cluster structure found")
    assert sel.reference_silhouette > 0


def test_edge_of_the_range_and_candidates(blobs8):
    X, _ = blobs8
    sel = choose_n_clusters(X, k_max=5)
    assert sel.n_clusters == 5 and "edge" in sel.flags
    assert "no clear number of clusters" in sel.summary and "--k-range" in sel.summary
    assert sel.candidates[0]["k"] == 5 and len(sel.candidates) == 3
    assert len({c["k"] for c in sel.candidates}) == 3
    # the start of the range, when it is not 2: every cut over-splits the 8 blobs and every merge gap is
    # about 1, so there is no elbow of the tree to move to (without MIN_ELBOW_GAP silhouette-tree walked to 13)
    assert "edge" in choose_n_clusters(X, k_min=9, k_max=20).flags


def test_k_range_and_grid():
    assert parse_k_range("2:200") == (2, 200)
    for bad in ("1:5", "5:2", "2-9", "a:b", "7"):
        with pytest.raises(UsageError, match="--k-range"):
            parse_k_range(bad)
    assert k_grid(2, 8).tolist() == list(range(2, 9))
    grid = k_grid(2, 200, 40)
    assert grid.size == 40 and grid[0] == 2 and grid[-1] == 200 and (np.diff(grid) > 0).all()
    assert grid[:10].tolist() == list(range(2, 12))  # every small K


def test_cut_tree_labels_exact_k_even_with_ties():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    Z = linkage(X, "ward")
    cuts = cut_tree_labels(Z, [1, 2, 7, 60])
    assert (cuts[1] == 0).all() and sorted(set(cuts[60])) == list(range(60))
    for k in (2, 7):
        assert sorted(set(cuts[k])) == list(range(k))
        assert adjusted_rand_score(fcluster(Z, k, "maxclust"), cuts[k]) == pytest.approx(1.0)
    # duplicate points tie at height 0: maxclust cannot give 59 clusters, the cut can
    Xd = np.repeat(X[:30], 2, axis=0)
    Zd = linkage(Xd, "ward")
    assert len(set(cut_tree_labels(Zd, [59])[59])) == 59
    with pytest.raises(UsageError):
        cut_tree_labels(Z, [61])


def test_peaks_and_prominence():
    s = np.array([0.55, 0.50, 0.37, 0.41, 0.36, 0.34, 0.35, 0.30])
    idx, prom = _peaks(s)
    assert list(idx) == [0, 3, 6]
    # K index 3 rises 0.04 above its higher valley (0.37); index 6 rises 0.01 above 0.34
    assert prom[1] == pytest.approx(0.04) and prom[2] == pytest.approx(0.01)
    idx, prom = _peaks(np.array([0.2, 0.3, 0.4]))  # rising to the end: the end is the peak
    assert list(idx) == [2]


# Real silhouette curves, K = 2..31, of ward cuts of effnet-lite0 embeddings reduced with UMAP-50
# (n_neighbors=30, min_dist=0, seed 0), rounded to 3 decimals.
CIFAR10 = [0.553, 0.509, 0.370, 0.414, 0.366, 0.339, 0.343, 0.323, 0.326, 0.318, 0.311, 0.311, 0.320, 0.321, 0.310,
           0.286, 0.279, 0.273, 0.277, 0.279, 0.275, 0.277, 0.281, 0.284, 0.282, 0.286, 0.287, 0.289, 0.289, 0.291]
CIFAR10_UMAP_SEED1 = [0.557, 0.501, 0.355, 0.374, 0.365, 0.332, 0.342, 0.336, 0.327, 0.331, 0.317, 0.324, 0.329, 0.324,
                      0.307, 0.314, 0.312, 0.315, 0.310, 0.315, 0.291, 0.285, 0.291, 0.279, 0.281, 0.276, 0.277, 0.275,
                      0.276, 0.276]
CIFAR_CAT_TRUCK = [0.711, 0.557, 0.365, 0.354, 0.294, 0.301, 0.316, 0.303, 0.307, 0.292, 0.277, 0.281, 0.275, 0.278,
                   0.275, 0.265, 0.268, 0.261, 0.260, 0.258, 0.259, 0.260, 0.258, 0.246, 0.248, 0.251, 0.253, 0.253,
                   0.254, 0.250]
IMAGENETTE = [0.587, 0.571, 0.565, 0.644, 0.721, 0.788, 0.825, 0.863, 0.857, 0.861, 0.849, 0.814, 0.777, 0.752, 0.699,
              0.669, 0.644, 0.587, 0.526, 0.526, 0.459, 0.462, 0.464, 0.468, 0.468, 0.456, 0.445, 0.437, 0.435, 0.435]
KS = list(range(2, 32))


def test_rule_on_real_curves():
    # CIFAR-10: the best silhouette is the animals|vehicles split; the rule goes past it
    k, peaks = choose_from_curve(KS, CIFAR10)
    assert k == 5
    assert [p["k"] for p in peaks if p["accepted"]] == [2, 5]
    # another UMAP seed: the K=5 peak is too shallow to count as prominent (0.019), so only the
    # coarse-end step avoids the collapse
    k, peaks = choose_from_curve(KS, CIFAR10_UMAP_SEED1)
    assert k == 5 and {p["k"]: p["why"] for p in peaks}[5] == "best past the coarse end"
    assert choose_from_curve(KS, CIFAR10_UMAP_SEED1, coarse_ratio=1.0)[0] == 2  # the step switched off
    # a clean two-class set keeps its top split: finer cuts keep < 55% of its silhouette
    assert choose_from_curve(KS, CIFAR_CAT_TRUCK)[0] == 2
    # Imagenette: one clear interior peak
    assert choose_from_curve(KS, IMAGENETTE)[0] == 9
    with pytest.raises(UsageError):
        choose_from_curve(KS, CIFAR10[:-1])


def test_silhouette_gap_reads_the_gap_inside_the_plateau():
    # Imagenette's silhouette plateau 9..11 (within 3% of the peak at 9): the merge gap is largest at 10
    ks = np.array(KS)
    gap = np.ones(len(KS))
    gap[KS.index(10)] = 2.5
    gap[KS.index(20)] = 9.0  # outside the plateau: ignored
    curves = {"silhouette": np.array(IMAGENETTE), "merge_gap": gap}
    reading = apply_rule("silhouette-gap", ks, curves)
    assert ks[reading.index] == 10 and reading.criterion == "silhouette" and "merge gap" in reading.why
    assert not reading.flat and [int(ks[i]) for i in reading.ranking[:3]] == [10, 9, 11]
    silhouette = apply_rule("silhouette", ks, curves)
    assert ks[silhouette.index] == 9 and silhouette.flat  # 9 and 11 are 0.006 apart
    assert ks[apply_rule("merge-gap", ks, curves).index] == 20


# cifar10-test, 5 of its classes (effnet-lite0, UMAP-50, ward), K = 2..10: the silhouette falls from the
# top split on; the merge gap has a second elbow at the true K = 5
CIFAR5_SIL = [0.569, 0.546, 0.472, 0.462, 0.444, 0.438, 0.409, 0.404, 0.398]
CIFAR5_GAP = [2.58, 1.00, 1.36, 1.80, 1.01, 1.06, 1.32, 1.10, 1.05]


def test_silhouette_gap_looks_below_a_clean_top_split():
    ks = np.arange(2, 11)
    curves = {"silhouette": np.array(CIFAR5_SIL), "merge_gap": np.array(CIFAR5_GAP)}
    assert ks[apply_rule("silhouette", ks, curves).index] == 2
    reading = apply_rule("silhouette-gap", ks, curves)
    assert ks[reading.index] == 5 and "below the top split" in reading.why
    # a top split that is the tree's only real elbow (two clean groups) stays
    clean = {"silhouette": np.array(CIFAR5_SIL), "merge_gap": np.array([20.0] + CIFAR5_GAP[1:])}
    assert ks[apply_rule("silhouette-gap", ks, clean).index] == 2
    # so does one whose finer cuts lose too much silhouette (< 55% of the top split's)
    weak = {"silhouette": np.array([0.9] + CIFAR5_SIL[1:]), "merge_gap": np.array(CIFAR5_GAP)}
    assert ks[apply_rule("silhouette-gap", ks, weak).index] == 2


def test_rule_edge_cases():
    assert choose_from_curve([2], [0.3])[0] == 2
    assert choose_from_curve([2, 3, 4], [-0.1, -0.2, -0.05])[0] == 4  # no positive silhouette: the best
    assert choose_from_curve([2, 3, 4], [0.2, 0.2, 0.2])[0] == 2  # flat: the first
    assert choose_from_curve([2, 3, 4], [np.nan, 0.2, 0.3])[0] == 4  # undefined K are skipped
    with pytest.raises(UsageError):
        choose_from_curve([2, 3], [np.nan, np.nan])


def test_subsampling_large_inputs(blobs8):
    X, y = blobs8
    sel = choose_n_clusters(X, max_samples=500, random_state=3)
    assert sel.n_clusters == 8 and sel.n_used == 500 and len(sel.sample_indices) == 500
    assert sel.labels is None and sel.estimator is None and sel.k_range == (2, 50)
    again = choose_n_clusters(X, max_samples=500, random_state=3)
    np.testing.assert_array_equal(sel.sample_indices, again.sample_indices)
    d = sel.to_dict()
    assert d["subsampled"] is True
    json.dumps(d, allow_nan=False)


def test_to_dict_is_json_safe(hierarchy):
    d = choose_n_clusters(hierarchy[0]).to_dict()
    assert d["n_clusters"] == 12 and d["rule"] == DEFAULT_RULE and d["method"] == "agglomerative"
    assert d["table"][0]["k"] == 2 and isinstance(d["table"][0]["silhouette"], float)
    assert {"silhouette", "merge_gap"} <= set(d["table"][0])
    assert [c["k"] for c in d["candidates"]][0] == 12 and len(d["candidates"]) == 3
    json.dumps(d, allow_nan=False)


def test_parameter_errors(blobs8):
    X, _ = blobs8
    with pytest.raises(ParameterError, match="'rule'"):
        choose_n_clusters(X, rule="best")
    with pytest.raises(ParameterError, match="'linkage'"):
        choose_n_clusters(X, params={"linkage": "median"})
    with pytest.raises(ParameterError, match="'plateau'"):
        choose_n_clusters(X, plateau=1.5)
    with pytest.raises(ParameterError, match="'k_min'"):
        choose_n_clusters(X, k_min=1)
    with pytest.raises(UsageError, match="k_min"):
        choose_n_clusters(X, k_min=30, k_max=10)
    with pytest.raises(UsageError, match="at least 3"):
        choose_n_clusters(X[:2])
    with pytest.raises(UsageError):
        choose_n_clusters(np.full((5, 2), np.nan))


def test_tiny_input_and_other_linkages():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    sel = choose_n_clusters(X)
    assert sel.n_clusters == 2 and list(sel.ks) == [2]
    X, y = make_blobs(n_samples=300, centers=4, cluster_std=0.5, random_state=0)
    assert choose_n_clusters(X, params={"linkage": "average", "metric": "euclidean"}).n_clusters == 4


# -- through imgclust.cluster: the stored run is the clustering that was scored, per family ---------


@pytest.mark.parametrize("method, params", [
    ("agglomerative", {}),  # the encoder's defaults (ward here)
    ("agglomerative", {"linkage": "average", "metric": "chebyshev"}),
    ("kmeans", {"n_init": 1}),
    ("scan", {"epochs": 2, "device": "cpu"}),  # a trained head: raw space
])
def test_cluster_auto_returns_the_clustering_it_scored(tmp_path, one_torch_thread, method, params):
    from imgclust.cluster import cluster, run_space
    from imgclust.clusterers import CLUSTERERS

    from .stage_fixtures import blob_cache

    cache = blob_cache(tmp_path / "blobs.h5")
    run = cluster(cache.path, method=method, n_clusters="auto", params=params, k_range=(2, 6))
    sel = run.selection
    assert sel["method"] == method and sel["space"] == run.space and sel["k_range"] == [2, 6]
    assert (run.space == "raw") == (CLUSTERERS.get(method).input_space == "raw")  # heads select in the raw space
    X = run_space(cache.path, run)
    row = next(r for r in sel["table"] if r["k"] == run.n_clusters)
    assert row["silhouette"] == pytest.approx(silhouette_score(X, run.labels), abs=1e-6)
    assert [c["k"] for c in sel["candidates"]][0] == run.n_clusters
    with pytest.raises(UsageError, match="k-range"):
        cluster(cache.path, method=method, n_clusters=3, params=params, k_range=(2, 6))


# effnet-lite0 UMAP-50 ward curves from benchmarks/select_k.py (rounded), K = 2..31.
# Imagenette + CIFAR-10 side by side (20 classes): the top split into 3 is far cleaner than any finer level
UNION_SIL = [0.758, 0.779, 0.581, 0.582, 0.55, 0.563, 0.526, 0.543, 0.433, 0.462, 0.482, 0.491, 0.475, 0.458, 0.451,
             0.455, 0.453, 0.462, 0.467, 0.472, 0.451, 0.456, 0.448, 0.453, 0.452, 0.452, 0.449, 0.438, 0.434, 0.437]
UNION_GAP = [3.23, 1.38, 1.02, 1.53, 1.73, 1.02, 1.01, 1.11, 1.05, 1.03, 1.3, 1.44, 1.01, 1.04, 1.0, 1.05, 1.04, 1.01,
             1.14, 1.23, 1.05, 1.15, 1.0, 1.02, 1.04, 1.04, 1.1, 1.02, 1.02, 1.02]
# 5 CIFAR-10 classes: the silhouette falls from the top split with a shallow bump at K = 10 (prominence 0.012)
CIFAR5_FULL_SIL = [0.568, 0.55, 0.467, 0.452, 0.431, 0.399, 0.395, 0.387, 0.399, 0.355, 0.351, 0.338, 0.333, 0.324,
                   0.318, 0.305, 0.308, 0.296, 0.287, 0.284, 0.281, 0.281, 0.272, 0.27, 0.268, 0.263, 0.262, 0.264,
                   0.261, 0.263]
CIFAR5_FULL_GAP = [2.56, 1.02, 1.36, 1.54, 1.27, 1.11, 1.12, 1.08, 1.08, 1.32, 1.11, 1.07, 1.01, 1.04, 1.05, 1.02,
                   1.17, 1.01, 1.02, 1.0, 1.06, 1.01, 1.05, 1.01, 1.15, 1.02, 1.0, 1.04, 1.0, 1.04]


def test_levels_judge_a_finer_level_against_the_level_above_it():
    from imgclust.k_rules import LEVEL_READING

    ks = np.array(KS)
    # against the best (the top split, 0.779) the K = 13 peak has 0.63 < 0.65 and the pick stays at 3;
    # against the level above it, 13 keeps 0.63 of K = 3 and 21 keeps 0.96 of K = 13
    assert choose_from_curve(ks, UNION_SIL)[0] == 3
    k, peaks = choose_from_curve(ks, UNION_SIL, **LEVEL_READING)
    assert k == 21 and [p["k"] for p in peaks if p["accepted"]] == [3, 13, 21]
    curves = {"silhouette": np.array(UNION_SIL), "merge_gap": np.array(UNION_GAP)}
    assert ks[apply_rule("silhouette-gap", ks, curves).index] == 3
    assert ks[apply_rule("silhouette-levels", ks, curves).index] == 21
    # a shallow bump past a falling coarse end no longer replaces the top split, so the tree's elbow
    # below the top split (K = 5, gap 1.54) is read
    cifar5 = {"silhouette": np.array(CIFAR5_FULL_SIL), "merge_gap": np.array(CIFAR5_FULL_GAP)}
    assert ks[apply_rule("silhouette-gap", ks, cifar5).index] == 10
    reading = apply_rule("silhouette-levels", ks, cifar5)
    assert ks[reading.index] == 5 and "below the top split" in reading.why
    # the levels reading leaves the calibrated single-set curves where they were
    for curve, expected in ((CIFAR10, 5), (CIFAR_CAT_TRUCK, 2), (IMAGENETTE, 9)):
        assert choose_from_curve(KS, curve, **LEVEL_READING)[0] == expected
    with pytest.raises(ParameterError, match="ratio_to"):
        choose_from_curve(KS, CIFAR10, ratio_to="parent")


def test_default_rule_is_silhouette_tree():
    assert DEFAULT_RULE == "silhouette-tree" and DEFAULT_RULE in SELECTION_RULES


def tight_beside_loose() -> np.ndarray:
    """5 tight, far-apart blobs beside one group of 5 looser blobs close together (two sets side by side)."""
    rng = np.random.default_rng(1)
    tight = [rng.normal(c, 0.3, (150, 10)) for c in rng.normal(0, 40, (5, 10))]
    loose_centre = rng.normal(0, 40, 10)
    loose = [rng.normal(loose_centre + rng.normal(0, 2.5, 10), 0.8, (150, 10)) for _ in range(5)]
    return np.concatenate(tight + loose)


def test_a_clearer_elbow_below_the_pick_is_flagged_and_named():
    # silhouette-levels stops at 9, merging two of the loose blobs, while the tree's clearest elbow
    # below the pick is the true K = 10
    sel = choose_n_clusters(tight_beside_loose(), k_max=20, rule="silhouette-levels")
    assert sel.n_clusters == 9 and "elbow-below" in sel.flags and not sel.confident
    assert [c["k"] for c in sel.candidates][:2] == [9, 10]
    assert "the tree's clearest elbow is finer, at K = 10 (merge gap" in sel.summary
    gap = dict(zip(sel.ks.tolist(), sel.curves["merge_gap"]))
    assert gap[10] > gap[9]
    # well-separated blobs at their own level: no finer elbow
    Xb, _ = make_blobs(900, n_features=10, centers=6, cluster_std=1.0, center_box=(-20, 20), random_state=2)
    assert "elbow-below" not in choose_n_clusters(Xb).flags


# cifar10-test-imbalanced-s20 (held-out in benchmarks/select_k.py): a clean top split (animals | vehicles,
# gap 2.99) and the tree's next elbow at K = 4 (gap 1.58), K = 2..31
IMBALANCED_SIL = [0.62, 0.493, 0.408, 0.379, 0.372, 0.351, 0.334, 0.329, 0.323, 0.324, 0.328, 0.317, 0.315, 0.288,
                  0.289, 0.281, 0.284, 0.286, 0.282, 0.278, 0.263, 0.267, 0.26, 0.263, 0.262, 0.261, 0.261, 0.255,
                  0.255, 0.256]
IMBALANCED_GAP = [2.99, 1.26, 1.58, 1.06, 1.21, 1.03, 1.24, 1.07, 1.17, 1.04, 1.05, 1.07, 1.11, 1.11, 1.08, 1.07, 1.02,
                  1.01, 1.11, 1.01, 1.01, 1.06, 1.0, 1.03, 1.01, 1.02, 1.08, 1.02, 1.02, 1.1]


def test_tree_rule_moves_to_the_clearer_elbow_below_the_silhouette_pick():
    sel = choose_n_clusters(tight_beside_loose(), k_max=20, rule="silhouette-tree")
    assert sel.n_clusters == 10 and [c["k"] for c in sel.candidates][:2] == [10, 9]
    assert "the tree's clearest elbow below the silhouette's pick K = 9" in sel.candidates[0]["why"]
    # the doubt stays visible: a coarser cut (the loose blobs as one) has a better silhouette
    assert "elbow-below" not in sel.flags and "hierarchy" in sel.flags
    assert "finer level under a cleaner split into 6" in sel.summary
    # where the silhouette's pick is the tree's clearest elbow, the rules agree
    Xb, _ = make_blobs(900, n_features=10, centers=6, cluster_std=1.0, center_box=(-20, 20), random_state=2)
    assert choose_n_clusters(Xb, rule="silhouette-tree").n_clusters == 6


def test_tree_rule_takes_an_elbow_below_the_top_split_at_a_quarter_of_its_gap():
    ks = np.array(KS)
    curves = {"silhouette": np.array(IMBALANCED_SIL), "merge_gap": np.array(IMBALANCED_GAP)}
    # K = 4 has (1.58 - 1) / (2.99 - 1) = 0.29 of the top split's gap: under silhouette-levels' 0.3
    assert ks[apply_rule("silhouette-levels", ks, curves).index] == 2
    reading = apply_rule("silhouette-tree", ks, curves)
    assert ks[reading.index] == 4 and "below the top split" in reading.why
    # an elbow under a quarter of the top split's gap (above 1) is not one
    weaker = dict(curves, merge_gap=np.where(ks == 4, 1.49, curves["merge_gap"]))
    assert ks[apply_rule("silhouette-tree", ks, weaker).index] == 2


# digits-5cls-s23 (fresh in benchmarks/select_k.py), K = 2..90: K = 5 is unmistakable (silhouette 0.916, merge
# gap 7.84), then bumps of 0.021-0.032 lead the levels reading down a chain to K = 90
DIGITS5_SIL = [0.528, 0.655, 0.802, 0.916, 0.86, 0.762, 0.668, 0.555, 0.576, 0.454, 0.471, 0.482, 0.46, 0.451, 0.46,
               0.446, 0.453, 0.453, 0.458, 0.446, 0.439, 0.432, 0.426, 0.425, 0.409, 0.414, 0.409, 0.406, 0.397,
               0.399, 0.4, 0.4, 0.397, 0.389, 0.384, 0.38, 0.38, 0.381, 0.383, 0.378, 0.379, 0.377, 0.372, 0.372,
               0.373, 0.375, 0.371, 0.372, 0.369, 0.368, 0.368, 0.368, 0.361, 0.362, 0.362, 0.365, 0.366, 0.367,
               0.368, 0.364, 0.366, 0.366, 0.369, 0.371, 0.371, 0.369, 0.37, 0.37, 0.372, 0.375, 0.377, 0.378, 0.38,
               0.379, 0.38, 0.381, 0.381, 0.382, 0.385, 0.386, 0.385, 0.388, 0.389, 0.39, 0.389, 0.391, 0.391, 0.392,
               0.393]
DIGITS5_GAP = [1.19, 1.2, 1.51, 7.84, 1.56, 1.05, 1.15, 1.14, 1.14, 1.04, 1.0, 1.01, 1.06, 1.07, 1.12, 1.07, 1.29,
               1.03, 1.01, 1.05, 1.0, 1.06, 1.12, 1.01, 1.12, 1.07, 1.04, 1.04, 1.01, 1.01, 1.02, 1.02, 1.05, 1.02,
               1.01, 1.01, 1.04, 1.02, 1.02, 1.02, 1.03, 1.02, 1.03, 1.08, 1.04, 1.03, 1.01, 1.0, 1.02, 1.01, 1.02,
               1.02, 1.03, 1.0, 1.02, 1.01, 1.04, 1.0, 1.01, 1.01, 1.0, 1.0, 1.02, 1.02, 1.01, 1.0, 1.0, 1.01, 1.01,
               1.01, 1.04, 1.0, 1.01, 1.04, 1.01, 1.0, 1.01, 1.0, 1.02, 1.01, 1.0, 1.0, 1.02, 1.02, 1.01, 1.01, 1.0,
               1.0, 1.0]


def test_tree_rule_needs_a_finer_level_to_rise_three_hundredths():
    ks = np.arange(2, 91)
    curves = {"silhouette": np.array(DIGITS5_SIL), "merge_gap": np.array(DIGITS5_GAP)}
    assert ks[apply_rule("silhouette-levels", ks, curves).index] == 90
    assert ks[apply_rule("silhouette-tree", ks, curves).index] == 5
    # the calibrated union keeps a level under its top split (K = 13, prominence 0.058)
    union = {"silhouette": np.array(UNION_SIL), "merge_gap": np.array(UNION_GAP)}
    assert np.array(KS)[apply_rule("silhouette-tree", np.array(KS), union).index] == 13


def test_a_plateau_gives_one_runner_up_so_the_candidates_reach_another_level():
    # silhouette-levels walks the digits curve to K = 90, on a plateau of the fine end (K within 2% of the pick):
    # its neighbours on the plateau are one runner-up, and the third candidate is the clean level, K = 5
    ks = np.arange(2, 91)
    curves = {"silhouette": np.array(DIGITS5_SIL), "merge_gap": np.array(DIGITS5_GAP)}
    reading = apply_rule("silhouette-levels", ks, curves)
    top = [int(ks[i]) for i in reading.ranking[:3]]
    assert top[0] == 90 and abs(DIGITS5_SIL[top[1] - 2] - DIGITS5_SIL[-1]) <= 0.02 * DIGITS5_SIL[-1] and top[2] == 5
