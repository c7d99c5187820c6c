"""Tests of imgclust.select: label-free choice of the number of clusters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import AgglomerativeClustering
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, silhouette_score

from imgclust.errors import ParameterError, UsageError
from imgclust.select import _peaks, choose_from_curve, choose_n_clusters, cut_tree_labels


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
    assert sel.n_clusters == 8 and sel.rule == "finest-peak"
    assert adjusted_rand_score(y, sel.labels) == pytest.approx(1.0)
    assert choose_n_clusters(X, rule="max").n_clusters == 8
    assert sel.best_k == 8 and not sel.at_upper_bound
    # the sweep covers 2..ceil(sqrt(1200)) = 35, one row per K
    assert [k for k, _ in sel.table] == list(range(2, 36))
    assert sel.silhouette == pytest.approx(max(s for _, s in sel.table))


def test_prefers_the_finest_well_separated_level(hierarchy):
    X, y = hierarchy
    naive = choose_n_clusters(X, rule="max")
    sel = choose_n_clusters(X)
    assert naive.n_clusters == 3  # the coarse level wins the plain silhouette ...
    assert sel.n_clusters == 12  # ... the rule goes down to the 12 blobs
    assert adjusted_rand_score(y, sel.labels) == pytest.approx(1.0)
    accepted = [p["k"] for p in sel.peaks if p["accepted"]]
    assert 3 in accepted and 12 in accepted
    # demanding a finer peak as good as the best falls back to the coarse level
    assert choose_n_clusters(X, min_ratio=1.0).n_clusters == 3


def test_does_not_overshoot_two_blobs():
    X, _ = make_blobs(n_samples=800, n_features=10, centers=2, center_box=(-20, 20), random_state=1)
    assert choose_n_clusters(X).n_clusters == 2


def test_deterministic(hierarchy):
    X, _ = hierarchy
    a, b = choose_n_clusters(X), choose_n_clusters(X.copy())
    assert a.n_clusters == b.n_clusters
    np.testing.assert_array_equal(a.silhouettes, b.silhouettes)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.to_dict() == b.to_dict()


def test_sweep_matches_sklearn_agglomerative(blobs8):
    X, _ = blobs8
    X = X + np.random.default_rng(0).normal(0, 2.0, X.shape)  # overlap, so the cuts are not trivial
    sel = choose_n_clusters(X, k_max=12)
    table = dict(sel.table)
    for k in (2, 5, 8, 12):
        ref = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(X)
        assert table[k] == pytest.approx(silhouette_score(X, ref), abs=1e-9)
    ref = AgglomerativeClustering(n_clusters=sel.n_clusters).fit_predict(X)
    assert adjusted_rand_score(ref, sel.labels) == pytest.approx(1.0)
    # the reported threshold gives the chosen K in scikit-learn
    model = AgglomerativeClustering(n_clusters=None, distance_threshold=sel.distance_threshold).fit(X)
    assert model.n_clusters_ == sel.n_clusters
    assert sel.distance_threshold_zs > 0


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
    assert k == 5 and choose_from_curve(KS, CIFAR10, rule="max")[0] == 2
    assert [p["k"] for p in peaks if p["accepted"]] == [2, 5]
    # another UMAP seed: the K=5 peak is too shallow to count as prominent (0.019), so only the
    # coarse-end step avoids the collapse
    k, peaks = choose_from_curve(KS, CIFAR10_UMAP_SEED1)
    assert k == 5 and {p["k"]: p["why"] for p in peaks}[5] == "best past the coarse end"
    assert choose_from_curve(KS, CIFAR10_UMAP_SEED1, coarse_ratio=1.0)[0] == 2  # the step switched off
    # a clean two-class set keeps its top split: finer cuts keep < 55% of its silhouette
    assert choose_from_curve(KS, CIFAR_CAT_TRUCK)[0] == 2
    # Imagenette: one clear interior peak, same as the naive rule
    assert choose_from_curve(KS, IMAGENETTE)[0] == 9 == choose_from_curve(KS, IMAGENETTE, rule="max")[0]
    with pytest.raises(ParameterError):
        choose_from_curve(KS, CIFAR10, rule="elbow")
    with pytest.raises(UsageError):
        choose_from_curve(KS, CIFAR10[:-1])


def test_rule_edge_cases():
    assert choose_from_curve([2], [0.3])[0] == 2
    assert choose_from_curve([2, 3, 4], [-0.1, -0.2, -0.05])[0] == 4  # no positive silhouette: the best
    assert choose_from_curve([2, 3, 4], [0.2, 0.2, 0.2])[0] == 2  # flat: the first


def test_upper_bound_is_flagged(blobs8):
    X, _ = blobs8
    sel = choose_n_clusters(X, k_max=5)
    assert sel.n_clusters == 5 and sel.at_upper_bound


def test_subsampling_large_inputs(blobs8):
    X, y = blobs8
    sel = choose_n_clusters(X, max_samples=500, random_state=3)
    assert sel.n_clusters == 8 and sel.n_used == 500 and len(sel.sample_indices) == 500
    assert sel.labels is None and sel.distance_threshold is None
    again = choose_n_clusters(X, max_samples=500, random_state=3)
    np.testing.assert_array_equal(sel.sample_indices, again.sample_indices)
    d = sel.to_dict()
    assert d["subsampled"] is True
    json.dumps(d, allow_nan=False)


def test_to_dict_is_json_safe(hierarchy):
    d = choose_n_clusters(hierarchy[0]).to_dict()
    assert d["n_clusters"] == 12 and d["rule"] == "finest-peak"
    assert d["table"][0]["k"] == 2 and isinstance(d["table"][0]["silhouette"], float)
    assert d["params"]["coarse_ratio"] == 0.55
    json.dumps(d, allow_nan=False)


def test_parameter_errors(blobs8):
    X, _ = blobs8
    with pytest.raises(ParameterError, match="'rule'"):
        choose_n_clusters(X, rule="best")
    with pytest.raises(ParameterError, match="'linkage'"):
        choose_n_clusters(X, linkage="single")
    with pytest.raises(ParameterError, match="'min_ratio'"):
        choose_n_clusters(X, min_ratio=1.5)
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
    assert choose_n_clusters(X, linkage="average").n_clusters == 4
