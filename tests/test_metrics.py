"""Tests of imgclust.metrics: hand-computed tables, scikit-learn parity, properties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.datasets import make_blobs

from imgclust.errors import ParameterError, UsageError
from imgclust.metrics import (
    bcubed_f_score,
    clustering_accuracy,
    contingency_table,
    hoeffding_bound,
    missing_label_mask,
    pairwise_f_score,
    score_clustering,
    silhouette_analysis,
    silhouette_samples,
)

# A hand-computed case. Classes g1 (4 points) and g2 (2 points); cluster c1 holds 3 of g1,
# cluster c2 holds 1 of g1 and both of g2:
#            c1  c2
#     g1      3   1
#     g2      0   2
# Pairwise (ordered pairs): TP = 9+1+4-6 = 8, predicted = 9+9-6 = 12, true = 16+4-6 = 14
#   -> P = 2/3, R = 4/7, F = 8/13.
# BCubed: P = (9/3 + 1/3 + 4/3)/6 = 7/9, R = (9/4 + 1/4 + 4/2)/6 = 3/4, F = 42/55.
TRUE = ["g1", "g1", "g1", "g1", "g2", "g2"]
PRED = [7, 7, 7, 3, 3, 3]


def test_contingency_table_hand_computed():
    table = contingency_table(TRUE, PRED)
    # columns follow sorted cluster ids: 3 then 7
    np.testing.assert_array_equal(table, [[1, 3], [2, 0]])
    np.testing.assert_array_equal(contingency_table(TRUE, PRED, sparse=True).toarray(), table)


def test_pairwise_f_hand_computed():
    p, r, f = pairwise_f_score(TRUE, PRED)
    assert p == pytest.approx(2 / 3)
    assert r == pytest.approx(4 / 7)
    assert f == pytest.approx(8 / 13)


def test_bcubed_f_hand_computed():
    p, r, f = bcubed_f_score(TRUE, PRED)
    assert p == pytest.approx(7 / 9)
    assert r == pytest.approx(3 / 4)
    assert f == pytest.approx(42 / 55)


def test_pair_scores_degenerate_cases_do_not_divide_by_zero():
    # every predicted cluster a singleton: no predicted pair -> precision 1 (vacuous), recall 0
    assert pairwise_f_score([0, 0, 1, 1], [0, 1, 2, 3]) == (1.0, 0.0, 0.0)
    # every class a singleton too: perfect agreement
    assert pairwise_f_score([0, 1, 2], [5, 6, 7]) == (1.0, 1.0, 1.0)
    # no true pair but predicted pairs: recall 1 (vacuous), precision 0
    assert pairwise_f_score([0, 1, 2, 3], [0, 0, 0, 0]) == (0.0, 1.0, 0.0)
    assert bcubed_f_score([0, 1, 2], [5, 6, 7]) == (1.0, 1.0, 1.0)
    assert pairwise_f_score([4], [9]) == (1.0, 1.0, 1.0)


def test_noise_label_makes_singletons_in_pair_scores():
    true = [0, 0, 0, 1, 1, 1]
    pred = [0, 0, -1, 1, 1, -1]
    as_singletons = [0, 0, 10, 1, 1, 11]
    assert pairwise_f_score(true, pred, noise_label=-1) == pairwise_f_score(true, as_singletons)
    assert bcubed_f_score(true, pred, noise_label=-1) == bcubed_f_score(true, as_singletons)
    # without noise_label, -1 is an ordinary cluster holding one point of each class
    assert pairwise_f_score(true, pred)[0] < 1.0


def test_accuracy_more_clusters_than_classes_both_rules():
    true = [0, 0, 0, 1, 1, 1]
    pred = [0, 0, 1, 2, 2, 3]  # 4 clusters, 2 classes
    # one-to-one: 0->0 (2 points), 2->1 (2 points); clusters 1 and 3 unmatched, their points wrong
    assert clustering_accuracy(true, pred) == pytest.approx(4 / 6)
    assert clustering_accuracy(true, pred, rule="one-to-one") == pytest.approx(4 / 6)
    # majority: every cluster takes its majority class -> all right
    assert clustering_accuracy(true, pred, rule="majority") == pytest.approx(1.0)


def test_accuracy_fewer_clusters_and_noise():
    assert clustering_accuracy([0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 1, 1]) == pytest.approx(4 / 6)
    # noise points are always wrong, even where they would match
    true, pred = [0, 0, 0, 1, 1, 1], [0, 0, -1, 1, 1, 1]
    assert clustering_accuracy(true, pred, noise_label=-1) == pytest.approx(5 / 6)
    assert clustering_accuracy(true, pred, rule="majority", noise_label=-1) == pytest.approx(5 / 6)
    assert clustering_accuracy([0, 1], [-1, -1], noise_label=-1) == 0.0


def test_accuracy_rejects_unknown_rule():
    with pytest.raises(ParameterError) as err:
        clustering_accuracy([0, 1], [0, 1], rule="greedy")
    assert "one-to-one" in err.value.message and err.value.hint


def test_length_mismatch_and_empty_are_usage_errors():
    with pytest.raises(UsageError):
        pairwise_f_score([0, 1, 2], [0, 1])
    with pytest.raises(UsageError):
        bcubed_f_score([], [])
    with pytest.raises(UsageError):
        silhouette_samples(np.zeros((3, 2)), [0, 1])


# ------------------------------------------------------------------ silhouette


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=600, n_features=5, centers=4, cluster_std=2.5, random_state=1)
    return X, y


@pytest.mark.parametrize("chunk_size", [1, 7, 100, None])
def test_chunked_silhouette_equals_sklearn(blobs, chunk_size):
    X, y = blobs
    ours = silhouette_samples(X, y, chunk_size=chunk_size)
    np.testing.assert_allclose(ours, skm.silhouette_samples(X, y), atol=1e-6)


def test_silhouette_singletons_duplicates_and_float32(blobs):
    X, y = blobs
    y = y.copy()
    y[:3] = [50, 51, 52]  # three singleton clusters -> 0, as sklearn
    X = X.copy()
    X[10] = X[11]  # duplicate points
    ours = silhouette_samples(X.astype(np.float32), y, chunk_size=64)
    ref = skm.silhouette_samples(X.astype(np.float32).astype(np.float64), y)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert (ours[:3] == 0).all()


def test_silhouette_exact_far_from_the_origin():
    # groups of three small, close clusters, the groups 1e4 apart: rounding in |a|^2+|b|^2-2ab
    # would give each point a self-distance of ~1e-4 unless it is zeroed, and the silhouette
    # here (a ~ 1, b ~ 3) feels it
    rng = np.random.default_rng(0)
    parts, labels = [], []
    for g in range(4):
        corner = np.zeros(3)
        corner[g % 3] = 1e4 * (1 + g)
        for c in range(3):
            parts.append(corner + 3.0 * c + rng.normal(0, 0.5, (3, 3)))
            labels += [3 * g + c] * 3
    X, y = np.concatenate(parts), np.array(labels)
    from scipy.spatial.distance import cdist

    exact = skm.silhouette_samples(cdist(X, X), y, metric="precomputed")
    for chunk in (4, None):
        np.testing.assert_allclose(silhouette_samples(X, y, chunk_size=chunk), exact, atol=1e-7)


def test_silhouette_noise_is_excluded(blobs):
    X, y = blobs
    y = y.copy()
    y[::5] = -1
    keep = y != -1
    res = silhouette_analysis(X, y, chunk_size=50)
    assert np.isnan(res.samples[~keep]).all()
    np.testing.assert_allclose(res.samples[keep], skm.silhouette_samples(X[keep], y[keep]), atol=1e-6)
    assert res.mean == pytest.approx(skm.silhouette_score(X[keep], y[keep]), abs=1e-9)
    assert set(res.per_cluster) == {0, 1, 2, 3}
    assert res.exact and res.error_bound == 0.0
    # noise_label=None: -1 is an ordinary cluster
    np.testing.assert_allclose(silhouette_samples(X, y, noise_label=None), skm.silhouette_samples(X, y), atol=1e-6)


def test_silhouette_one_cluster_is_nan_not_a_crash(blobs):
    X, _ = blobs
    one = np.zeros(len(X), dtype=int)
    res = silhouette_analysis(X, one)
    assert np.isnan(res.samples).all() and math.isnan(res.mean)
    one[:5] = -1  # one cluster plus noise
    assert np.isnan(silhouette_samples(X, one)).all()
    s = score_clustering(np.zeros(len(X), dtype=int), X)
    assert math.isnan(s.silhouette) and math.isnan(s.davies_bouldin) and math.isnan(s.calinski_harabasz)


def test_silhouette_all_singletons_is_zero():
    X = np.arange(10, dtype=float).reshape(5, 2)
    assert (silhouette_samples(X, np.arange(5)) == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_silhouette_within_stated_bound(seed):
    # overlapping, unequal clusters so the silhouettes spread over [-1, 1]
    X, y = make_blobs(
        n_samples=[900, 500, 300, 200, 100], n_features=4, cluster_std=[3.0, 2.0, 4.0, 1.0, 2.0], random_state=seed
    )
    exact = skm.silhouette_samples(X, y)
    res = silhouette_analysis(X, y, max_exact=500, sample_size=300, random_state=seed)
    assert not res.exact
    counts = np.bincount(y)
    # stratified: proportional share (at least 10 a cluster) -> the bound of hoeffding_bound
    m = np.minimum(counts, np.maximum(np.ceil(300 * counts / len(y)), 10))
    assert res.error_bound == pytest.approx(hoeffding_bound(counts, m, 0.95))
    assert 0 < res.error_bound < 0.25
    assert abs(res.mean - exact.mean()) <= res.error_bound
    # reference points are exact; the rest are estimates that should still be close
    np.testing.assert_allclose(res.samples[res.sampled], exact[res.sampled], atol=1e-9)
    assert res.sampled.sum() == m.sum()
    assert np.abs(res.samples - exact).mean() < 0.05
    # deterministic for a seed
    again = silhouette_analysis(X, y, max_exact=500, sample_size=300, random_state=seed)
    np.testing.assert_array_equal(again.samples, res.samples)


def test_sampled_silhouette_with_noise_and_tiny_cluster():
    X, y = make_blobs(n_samples=[400, 300, 5], n_features=3, random_state=3)
    y = y.copy()
    y[::9] = -1
    res = silhouette_analysis(X, y, max_exact=100, sample_size=50)
    keep = y != -1
    assert np.isnan(res.samples[~keep]).all() and np.isfinite(res.samples[keep]).all()
    assert not res.sampled[~keep].any()
    ref = skm.silhouette_samples(X[keep], y[keep])
    assert abs(res.mean - ref.mean()) <= res.error_bound


def test_hoeffding_bound_formula():
    assert hoeffding_bound([100, 100], [100, 100]) == 0.0  # everything sampled: exact
    # proportional allocation: sqrt(2 ln(2/delta) / n)
    assert hoeffding_bound([500, 500], [50, 50], 0.95) == pytest.approx(math.sqrt(2 * math.log(40) / 100))


# ------------------------------------------------------------------ score_clustering


def test_score_clustering_labelled_scores_by_hand():
    # classes {0,1,2} {3,4,5}; clusters {0,1} {2,3} {4,5}
    s = score_clustering([0, 0, 1, 1, 2, 2], None, ["a", "a", "a", "b", "b", "b"])
    assert s.n_classes == 2 and s.n_labelled == 6
    assert s.ari == pytest.approx(8 / 33)  # (2 - 6*3/15) / ((6 + 3)/2 - 6*3/15)
    assert s.nmi == pytest.approx((2 / 3) * math.log(2) / (math.log(6) / 2))  # MI / mean of the entropies
    assert s.accuracy == pytest.approx(4 / 6)  # {0,1}->a, {4,5}->b; {2,3} unmatched
    assert (s.pairwise_precision, s.pairwise_recall, s.pairwise_f) == pytest.approx((2 / 3, 1 / 3, 4 / 9))
    assert (s.bcubed_precision, s.bcubed_recall, s.bcubed_f) == pytest.approx((5 / 6, 5 / 9, 2 / 3))
    assert s.f_pairwise_bcubed == pytest.approx(2 * (4 / 9) * (2 / 3) / (4 / 9 + 2 / 3))  # ES's headline: 8/15
    perfect = score_clustering([7, 7, 3, 3, 5, 5], None, ["x", "x", "y", "y", "z", "z"])
    assert perfect.ami == pytest.approx(1.0) and perfect.ari == pytest.approx(1.0) and perfect.accuracy == 1.0


def test_score_clustering_matches_sklearn(blobs):
    # Only what score_clustering computes itself is checked against sklearn; the labelled scores are
    # checked by hand below (comparing a wrapper with the function it calls could never fail).
    X, y = blobs
    rng = np.random.default_rng(0)
    pred = y.copy()
    flip = rng.random(len(y)) < 0.2
    pred[flip] = rng.integers(0, 5, flip.sum())
    s = score_clustering(pred, X, y)
    assert s.n_clusters == len(np.unique(pred)) and s.n_noise == 0 and s.n_samples == len(y)
    assert sum(s.cluster_sizes.values()) == len(y)
    assert s.silhouette == pytest.approx(skm.silhouette_score(X, pred), abs=1e-9)
    assert s.ami_no_noise is None and s.accuracy_rule == "one-to-one"
    per = s.silhouette_per_cluster
    ref = skm.silhouette_samples(X, pred)
    for c in per:
        assert per[c] == pytest.approx(ref[pred == c].mean(), abs=1e-9)


def test_score_clustering_noise_conventions(blobs):
    X, y = blobs
    pred = y.copy()
    pred[::4] = -1
    s = score_clustering(pred, X, y, accuracy_rule="majority")
    keep = pred != -1
    assert s.n_noise == int((~keep).sum()) and s.n_clusters == 4
    # noise is ONE cluster for AMI/NMI/ARI (ZS) ...
    assert s.ami == pytest.approx(skm.adjusted_mutual_info_score(y, pred))
    assert s.ari == pytest.approx(skm.adjusted_rand_score(y, pred))
    # ... and left out for the noise-free AMI, silhouette, DB and CH
    assert s.ami_no_noise == pytest.approx(skm.adjusted_mutual_info_score(y[keep], pred[keep]))
    assert s.silhouette == pytest.approx(skm.silhouette_score(X[keep], pred[keep]), abs=1e-9)
    assert s.davies_bouldin == pytest.approx(skm.davies_bouldin_score(X[keep], pred[keep]))
    assert s.accuracy == pytest.approx(keep.mean()) and s.accuracy_rule == "majority"
    assert s.pairwise_precision == pytest.approx(1.0)
    # ZS's silhouette convention beside it: the noise is one more cluster, and is scored
    assert s.silhouette_noise_as_cluster == pytest.approx(skm.silhouette_score(X, pred), abs=1e-9)
    assert s.silhouette_noise_as_cluster < s.silhouette
    assert score_clustering(y, X).silhouette_noise_as_cluster is None  # no noise: nothing to add


def test_score_clustering_string_and_missing_labels():
    true = np.array(["cat", "cat", None, "dog", "", "dog", "cat", "dog"], dtype=object)
    pred = np.array([0, 0, 1, 1, 0, 1, 1, 1])
    s = score_clustering(pred, labels_true=true)
    use = np.array([0, 1, 3, 5, 6, 7])
    assert s.n_labelled == 6 and s.n_classes == 2
    t = true[use].astype(str)
    assert s.ami == pytest.approx(skm.adjusted_mutual_info_score(t, pred[use]))
    assert s.accuracy == pytest.approx(5 / 6)
    assert s.silhouette is None and s.davies_bouldin is None  # no X given
    np.testing.assert_array_equal(missing_label_mask([1.0, np.nan]), [False, True])
    np.testing.assert_array_equal(missing_label_mask(np.array(["a", ""])), [False, True])
    with pytest.raises(UsageError):
        score_clustering([0, 1], labels_true=[None, ""])


def test_score_clustering_to_dict_is_json_safe(blobs):
    X, y = blobs
    pred = np.zeros(len(y), dtype=np.int64)
    pred[:3] = -1
    s = score_clustering(pred, X, y)
    d = s.to_dict()
    text = json.dumps(d, allow_nan=False)  # NaN would raise here
    assert d["silhouette"] is None and d["davies_bouldin"] is None
    assert "silhouette_samples" not in d
    assert isinstance(d["ami"], float) and d["n_noise"] == 3
    assert json.loads(text)["cluster_sizes"] == {"0": len(y) - 3}
    full = s.to_dict(include_samples=True)
    assert len(full["silhouette_samples"]) == len(y) and full["silhouette_samples"][0] is None
    json.dumps(full, allow_nan=False)


def test_score_clustering_rejects_bad_input():
    with pytest.raises(ParameterError):
        score_clustering([0, 1], labels_true=[0, 1], accuracy_rule="best")
    with pytest.raises(UsageError):
        score_clustering([0.5, 1.0])
    with pytest.raises(UsageError):
        score_clustering([0, 1, 1], X=np.zeros((2, 2)))


# ------------------------------------------------------------------ properties

labelings = st.integers(min_value=1, max_value=30).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 4), min_size=n, max_size=n),
        st.lists(st.integers(-1, 5), min_size=n, max_size=n),
    )
)


def _relabel(labels, seed):
    """The same partition under a random injective renaming of the ids."""
    uniq = np.unique(labels)
    new = np.random.default_rng(seed).permutation(100)[: len(uniq)] + 7
    return new[np.searchsorted(uniq, labels)]


@settings(max_examples=150, deadline=None)
@given(labelings)
def test_pair_scores_bounds_and_symmetry(pair):
    t, p = pair
    for fn in (pairwise_f_score, bcubed_f_score):
        prec, rec, f = fn(t, p)
        assert 0.0 <= prec <= 1.0 and 0.0 <= rec <= 1.0 and 0.0 <= f <= 1.0
        assert f <= max(prec, rec) + 1e-12
        # swapping the labelings swaps precision and recall; F is symmetric
        prec2, rec2, f2 = fn(p, t)
        assert prec2 == pytest.approx(rec) and rec2 == pytest.approx(prec) and f2 == pytest.approx(f)
    acc = clustering_accuracy(t, p)
    assert 0.0 <= acc <= clustering_accuracy(t, p, rule="majority") <= 1.0
    assert clustering_accuracy(p, t) == pytest.approx(acc)  # one-to-one matching is symmetric


@settings(max_examples=150, deadline=None)
@given(labelings, st.integers(0, 2**16))
def test_label_scores_invariant_to_renaming_and_order(pair, seed):
    t, p = np.array(pair[0]), np.array(pair[1])
    order = np.random.default_rng(seed).permutation(len(t))
    t2, p2 = _relabel(t, seed)[order], _relabel(p, seed + 1)[order]
    assert pairwise_f_score(t2, p2) == pytest.approx(pairwise_f_score(t, p))
    assert bcubed_f_score(t2, p2) == pytest.approx(bcubed_f_score(t, p))
    for rule in ("one-to-one", "majority"):
        assert clustering_accuracy(t2, p2, rule) == pytest.approx(clustering_accuracy(t, p, rule))
    # exact equality: one pass of hypothesis strings as class names
    assert pairwise_f_score(t.astype(str), p) == pairwise_f_score(t, p)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(3, 40),
    st.integers(1, 6),
    st.integers(0, 2**16),
    st.integers(1, 50),
)
def test_silhouette_bounds_and_renaming(n, k, seed, chunk):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = rng.integers(0, k, n)
    s = silhouette_samples(X, y, chunk_size=chunk)
    if len(np.unique(y)) < 2:
        assert np.isnan(s).all()
        return
    assert np.all((s >= -1 - 1e-12) & (s <= 1 + 1e-12))
    order = rng.permutation(n)
    s2 = silhouette_samples(X[order], _relabel(y, seed)[order], chunk_size=chunk)
    np.testing.assert_allclose(s2, s[order], atol=1e-12)
    if len(np.unique(y)) < n:
        np.testing.assert_allclose(s, skm.silhouette_samples(X, y), atol=1e-6)


def test_sampled_silhouette_is_exact_on_its_references_with_many_clusters_in_small_blocks(monkeypatch):
    """Many clusters (each gets one or two references) and tiny work blocks: the references' values
    are still sklearn's exact silhouettes, whatever the blocking over references and rows."""
    import imgclust.metrics as metrics_module
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_samples as sk_samples

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6000, 4))
    labels = KMeans(n_clusters=400, n_init=1, random_state=0).fit_predict(X)
    monkeypatch.setattr(metrics_module, "_CHUNK_ENTRIES", 2**12)
    result = metrics_module.silhouette_analysis(X, labels, max_exact=1000, sample_size=600)
    assert not result.exact and result.sampled.sum() <= 600 + 400
    expected = sk_samples(X, labels)
    np.testing.assert_allclose(result.samples[result.sampled], expected[result.sampled], atol=1e-9)
    assert abs(result.mean - expected.mean()) <= result.error_bound
