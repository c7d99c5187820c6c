"""Deep clustering heads on frozen embeddings: temi, icce, scan, unic (imgclust.clusterers._heads), turtle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from imgclust.clusterers import CLUSTERERS, Clusterer, create_clusterer
from imgclust.clusterers import _heads as Hd
from imgclust.errors import NotFoundError, ParameterError, UsageError

METHODS = ["temi", "icce", "scan", "unic", "turtle"]

# small, quick settings that still recover well-separated blobs
FAST = {
    "temi": dict(heads=2, epochs=12, batch_size=32),
    "icce": dict(heads=3, epochs=12, batch_size=32, k=10, classifier_epochs=20),
    "scan": dict(epochs=15, batch_size=32, hidden=64),
    "unic": dict(epochs=15, batch_size=32, lr=1e-3, hidden=64),
    "turtle": dict(),  # its defaults: 300 outer steps on 220 rows (fewer merge blobs for some seeds)
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=300, n_features=32, centers=4, cluster_std=1.0, random_state=0)
    order = np.random.default_rng(0).permutation(300)
    X, y = X[order].astype(np.float32), y[order]
    return X[:220], y[:220], X[220:], y[220:]


@pytest.fixture(scope="module")
def fitted(blobs):
    X, _, _, _ = blobs
    return {m: create_clusterer(m, n_clusters=4, random_state=0, **FAST[m]).fit(X) for m in METHODS}


# -- losses on hand-checkable inputs -----------------------------------------------------------


def onehot_scores(k, idx, scale=1.0):
    s = torch.full((k,), -scale)
    s[idx] = scale
    return s


def test_temi_loss_by_hand_at_uniform_outputs():
    K, beta = 4, 0.6
    z = torch.zeros(1, 3, K)
    prior = torch.full((1, K), 1.0 / K)
    loss, per_head, mean = Hd.temi_loss(z, z, z, z, prior, beta=beta)
    # q_s = q_t = 1/K: w = 1/K; sum_k (1/K^2)^beta / (1/K) = K^(2 - 2 beta)
    expected = -(1.0 / K) * (2 - 2 * beta) * math.log(K)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert per_head.shape == (1,)
    assert torch.allclose(mean, torch.full((1, K), 1.0 / K))


def test_temi_loss_lower_when_the_pair_agrees():
    K = 3
    s = onehot_scores(K, 0).view(1, 1, K)
    t_same = onehot_scores(K, 0).view(1, 1, K)
    t_other = onehot_scores(K, 1).view(1, 1, K)
    prior = torch.full((1, K), 1.0 / K)
    agree = Hd.temi_loss(s, s, t_same, t_same, prior)[0]
    disagree = Hd.temi_loss(s, s, t_same, t_other, prior)[0]
    assert agree < disagree
    # with the pair weight fixed (teacher agrees), the student agreeing with the teacher is better
    s_other = onehot_scores(K, 1).view(1, 1, K)
    assert Hd.temi_loss(s, s, t_same, t_same, prior)[0] < Hd.temi_loss(s_other, s_other, t_same, t_same, prior)[0]


def test_temi_loss_ce_term_and_gradient():
    K = 3
    s = torch.randn(2, 5, K, requires_grad=True)
    t = torch.randn(2, 5, K)
    prior = torch.full((2, K), 1.0 / K)
    base = Hd.temi_loss(s, s, t, t, prior)[0]
    with_ce = Hd.temi_loss(s, s, t, t, prior, ce_weight=0.5)[0]
    assert with_ce > base  # cross-entropy is positive
    with_ce.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_sinkhorn_knopp_balances_the_clusters():
    torch.manual_seed(0)
    logits = torch.randn(64, 5) * 3 + torch.tensor([4.0, 0, 0, 0, 0])  # cluster 0 dominates
    Q = Hd.sinkhorn_knopp(logits, n_iters=200)
    assert torch.allclose(Q.sum(dim=1), torch.ones(64), atol=1e-5)  # rows are distributions
    assert torch.allclose(Q.sum(dim=0), torch.full((5,), 64 / 5), atol=1e-2)  # equal column sums
    soft = torch.softmax(logits, dim=1).sum(dim=0)
    Q3 = Hd.sinkhorn_knopp(logits, n_iters=3)
    assert torch.allclose(Q3.sum(dim=1), torch.ones(64), atol=1e-5)  # ends on the samples
    assert Q3.sum(dim=0).std() < 0.5 * soft.std()
    # batched over heads: each head balanced separately
    Qh = Hd.sinkhorn_knopp(torch.stack([logits, -logits]), n_iters=200)
    assert torch.allclose(Qh.sum(dim=1), torch.full((2, 5), 64 / 5), atol=1e-2)


def test_multihead_select_is_one_of_the_heads():
    torch.manual_seed(0)
    for bn in (False, True):
        m = Hd._nn().MultiHead(3, 12, 4, hidden=16, bottleneck=8, input_bn=bn).eval()
        x = torch.randn(5, 12)
        with torch.no_grad():
            full = m(x)
            for h in range(3):
                assert torch.allclose(m.select(h).eval()(x)[0], full[h], atol=1e-6)
        assert full.abs().max() <= 1 + 1e-6  # cosine scores


def test_scan_loss():
    K = 4
    a = torch.stack([onehot_scores(K, i % K, 5.0) for i in range(8)])
    same = Hd.scan_loss(a, a, entropy_weight=0.0)[0]
    shifted = Hd.scan_loss(a, a.roll(1, dims=1), entropy_weight=0.0)[0]
    assert same < shifted
    _, _, entropy = Hd.scan_loss(a, a)
    assert entropy.item() == pytest.approx(math.log(K), rel=1e-3)  # balanced batch
    collapsed = torch.stack([onehot_scores(K, 0, 5.0)] * 8)
    assert Hd.scan_loss(collapsed, collapsed)[0] > Hd.scan_loss(a, a)[0]


def test_unic_loss():
    K = 4
    a = torch.stack([onehot_scores(K, i % K, 5.0) for i in range(8)])
    other = a.roll(1, dims=1)
    good = Hd.unic_loss(a, a, other)[0]  # positives agree, negatives disagree
    bad = Hd.unic_loss(a, other, a)[0]
    assert good < bad


# -- neighbours ----------------------------------------------------------------------------------


def test_kth_similarity_matches_the_shared_cosine_graph():
    from imgclust.knn import knn_graph

    Z = Hd.neighbour_space(np.random.default_rng(0).normal(size=(50, 6)))
    graph = knn_graph(Z, 7, "cosine")
    np.testing.assert_allclose(Hd.kth_similarity(Z, 7, chunk=16), 1.0 - graph.distances[:, -1], atol=1e-5)


def test_adaptive_neighbours_threshold_with_floor_and_cap():
    # 0-5 are one tight group, 6 and 7 far away: group members get all 5 partners (>= threshold),
    # the outliers get only the floor k=2
    rng = np.random.default_rng(0)
    group = np.array([1.0, 0, 0]) + 0.01 * rng.normal(size=(6, 3))
    out = np.array([[0, 1.0, 0], [0, 0, 1.0]])
    from imgclust.knn import knn_graph

    graph = knn_graph(np.vstack([group, out]).astype(np.float32), 7, "cosine")
    idx, sim = graph.indices, 1.0 - graph.distances
    indptr, indices = Hd.adaptive_neighbours(idx, sim, k=2, threshold=0.9)
    counts = np.diff(indptr)
    assert counts.tolist() == [5, 5, 5, 5, 5, 5, 2, 2]
    assert set(indices[indptr[0] : indptr[1]]) == {1, 2, 3, 4, 5}
    indptr, _ = Hd.adaptive_neighbours(idx[:, :3], sim[:, :3], k=2, threshold=0.9)  # max_neighbours=3
    assert np.diff(indptr).tolist() == [3] * 6 + [2, 2]
    sampler = Hd.NeighbourSampler(*Hd.adaptive_neighbours(idx, sim, k=2, threshold=0.9))
    draws = sampler.sample(np.zeros(500, dtype=np.int64), np.random.default_rng(0))
    assert set(draws) == {1, 2, 3, 4, 5}


def test_unic_cleaning_drops_a_sample_with_a_spread_out_second_order_neighbourhood():
    # tau1 = 2. Samples 0,1,2 are a closed triangle: the union of their positives' positives is {0,1,2}.
    # Sample 3's positives 4 and 5 point to {0,1} and {2,6}: the union has 4 members > eta = 3.
    # Samples 4, 5, 6 reach at most 3 (e.g. 5: P(2) | P(6) = {0,1}).
    pos = np.array([[1, 2], [0, 2], [0, 1], [4, 5], [0, 1], [2, 6], [0, 1]])
    noisy = Hd.second_order_clean(pos, eta=3)
    assert noisy.tolist() == [False, False, False, True, False, False, False]
    assert not Hd.second_order_clean(pos, eta=4).any()
    assert Hd.second_order_clean(pos, eta=3, chunk=2).tolist() == noisy.tolist()


def test_euclidean_space_ranks_by_raw_euclidean_distance():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(60, 5)) * rng.uniform(0.1, 10, (60, 1))).astype(np.float32)  # very unequal norms
    Q, K = Hd.euclidean_space(X)
    ref, _ = NearestNeighbors(n_neighbors=5).fit(X).kneighbors(X)
    # q_i . k_j = |x_i|^2 - |x_i - x_j|^2: the 4th-highest is set by the 4th-nearest other row
    np.testing.assert_allclose(Hd.kth_similarity(Q, 4, keys=K, chunk=16), (X * X).sum(axis=1) - ref[:, 4] ** 2,
                               rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_unic_self_positive_and_metric_options_train(blobs, metric):
    X, y, _, _ = blobs
    c = create_clusterer("unic", n_clusters=4, tau1=5, self_positive=True, metric=metric, device="cpu",
                         **FAST["unic"]).fit(X)
    assert adjusted_rand_score(y, c.labels_) >= 0.9
    # itself and 4 others (not 5 others): the positive sets overlap more, so fewer samples are cleaned
    without = create_clusterer("unic", n_clusters=4, tau1=5, self_positive=False, metric=metric, device="cpu",
                               **FAST["unic"]).fit(X)
    assert c.noisy_.sum() < without.noisy_.sum() / 4


def test_unic_scaled_defaults():
    c = create_clusterer("unic", n_clusters=10)
    assert c._resolved(50_000) == (10, 10_000, 70)  # UNIC's CIFAR-10 values
    assert c._resolved(300) == (10, 60, 70)
    c = create_clusterer("unic", n_clusters=2, tau1=50)
    assert c._resolved(100) == (50, 98, 1750)


def test_auto_momentum():
    assert Hd.auto_momentum(100_000) == pytest.approx(0.996)
    assert Hd.auto_momentum(2000) == pytest.approx(0.99)
    assert 0 <= Hd.auto_momentum(5) < 0.996


def test_teacher_momentum_ramps_towards_one_as_in_temi_code():
    assert Hd.momentum_at(0, 1000, 0.996) == pytest.approx(0.996)
    assert Hd.momentum_at(500, 1000, 0.996) == pytest.approx(0.998)
    assert Hd.momentum_at(1000, 1000, 0.996) == pytest.approx(1.0)
    ramp = [Hd.momentum_at(s, 100, 0.99) for s in range(101)]
    assert all(a <= b for a, b in zip(ramp, ramp[1:]))
    assert Hd.momentum_at(700, 1000, 0.996, "constant") == 0.996


def test_temi_training_uses_the_ramp(fitted):
    c = fitted["temi"]
    assert c.momentum_schedule == "cosine" and c.momentum_ < c.momentum_last_ <= 1.0
    assert c.momentum_last_ > 1.0 - (1.0 - c.momentum_) * 0.01  # the last step is close to 1


# -- end to end on blobs -------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_recovers_blobs(method, fitted, blobs):
    _, y, _, _ = blobs
    c = fitted[method]
    assert c.labels_.dtype == np.int64 and c.labels_.shape == y.shape
    assert adjusted_rand_score(y, c.labels_) >= 0.9
    assert c.n_clusters_ == 4


@pytest.mark.parametrize("method", METHODS)
def test_predict_puts_held_out_points_in_their_blob(method, fitted, blobs):
    X, y, Xh, yh = blobs
    c = fitted[method]
    assert np.array_equal(c.predict(X), c.labels_)
    pred = c.predict(Xh)
    # same cluster id as the training points of the same blob
    blob_to_cluster = {b: np.bincount(c.labels_[y == b]).argmax() for b in range(4)}
    agree = np.mean([pred[i] == blob_to_cluster[yh[i]] for i in range(len(yh))])
    assert agree >= 0.95


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trip(method, fitted, blobs):
    _, _, Xh, _ = blobs
    c = fitted[method]
    state = c.state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["__config__"].dtype == np.uint8
    for rebuilt in (Clusterer.from_state(state), type(c).from_state(state)):
        assert type(rebuilt) is type(c)
        assert rebuilt.get_params() == c.get_params()
        assert np.array_equal(rebuilt.predict(Xh), c.predict(Xh))
    other = "scan" if method != "scan" else "temi"
    with pytest.raises(UsageError, match="belongs to"):
        CLUSTERERS.get(other).from_state(state)
    with pytest.raises(UsageError, match="trained on 32-d"):
        c.predict(Xh[:, :16])
    broken = {k: v for k, v in state.items() if not k.startswith(("head.", "classifier."))}
    with pytest.raises(UsageError, match="incomplete"):
        Clusterer.from_state(broken)


def test_icce_consensus_and_classifier(fitted, blobs):
    _, y, _, _ = blobs
    c = fitted["icce"]
    assert c.head_labels_.shape == (3, 220)
    mean_head = np.mean([adjusted_rand_score(y, h) for h in c.head_labels_])
    assert adjusted_rand_score(y, c.consensus_labels_) >= mean_head - 1e-9
    assert np.array_equal(c.labels_, c.classifier_labels_)
    assert set(c.consensus_scores_) == {"hbgf", "mcla", "coassoc", "vote"}
    assert (c.neighbour_counts_ >= 10).all()
    assert c.agreement_.shape == (220,) and 0 < c.classifier_train_fraction_ <= 1


def test_icce_classifier_trains_on_confident_samples():
    c = create_clusterer("icce", n_clusters=3, confidence=0.75)
    cons = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    agree = np.array([1, 0.5, 1, 1, 1, 0.75, 0.5, 0.5, 1])
    # cluster 2 has one confident sample only: it keeps all three
    assert c._confident(cons, agree).tolist() == [0, 2, 3, 4, 5, 6, 7, 8]
    assert create_clusterer("icce", n_clusters=3, confidence=0)._confident(cons, agree).size == 9


def test_temi_keeps_the_lowest_loss_head(fitted):
    c = fitted["temi"]
    assert c.best_head_ == int(np.argmin(c.head_losses_))
    assert np.array_equal(c.labels_, c.head_labels_[c.best_head_])


@pytest.mark.parametrize("method", ["temi", "scan", "unic", "turtle"])
def test_deterministic_for_a_seed(method, blobs):
    X = blobs[0][:120]
    kw = dict(FAST[method], epochs=3)
    a = create_clusterer(method, n_clusters=4, random_state=3, **kw).fit(X)
    b = create_clusterer(method, n_clusters=4, random_state=3, **kw).fit(X)
    assert np.array_equal(a.labels_, b.labels_)
    sa, sb = a.state(), b.state()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    c = create_clusterer(method, n_clusters=4, random_state=4, **kw).fit(X)
    sc = c.state()
    assert any(not np.array_equal(sa[k], sc[k]) for k in sa if sa[k].dtype.kind == "f")


def test_training_leaves_the_global_rng_alone_and_reports_epochs(blobs):
    X = blobs[0][:100]
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    c = create_clusterer("scan", n_clusters=4, epochs=4, batch_size=32, hidden=16)
    seen = []
    c.on_epoch = lambda epoch, epochs, loss: seen.append((epoch, epochs, loss))
    c.fit(X)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [(e, n) for e, n, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)] and all(math.isfinite(v) for _, _, v in seen)
    assert torch.are_deterministic_algorithms_enabled() is False


# -- training on a sample (train_rows) ----------------------------------------------------------

SAMPLED = ["temi", "icce", "scan", "unic"]


@pytest.mark.parametrize("method", SAMPLED)
def test_sample_training_labels_every_row_with_the_trained_head(method, blobs):
    X, y, _, _ = blobs
    # 100 rows are fewer steps per epoch than FAST's 220: more epochs for about as many steps; temi's 50
    # neighbours would be two blobs of 25 sampled rows each
    kw = dict(FAST[method], epochs=30, **({"k": 15} if method == "temi" else {}))
    c = create_clusterer(method, n_clusters=4, random_state=0, train_rows=100, **kw).fit(X)
    assert c.trained_on_ == 100 and c.labels_.shape == (len(X),)
    sample = c.train_indices_
    assert sample.size == 100 and np.all(np.diff(sample) > 0) and sample[-1] < len(X)
    assert "sample of 100 of 220 rows" in c.fit_path_
    rest = np.setdiff1d(np.arange(len(X)), sample)
    np.testing.assert_array_equal(c.labels_[rest], c.predict(X[rest]))  # the other rows: the trained head's labels
    np.testing.assert_array_equal(c.labels_[sample], c.predict(X[sample]))
    assert adjusted_rand_score(y, c.labels_) > 0.8
    if method in ("temi", "icce"):
        assert c.head_labels_.shape[1] == 100  # per-row fitted attributes: the training rows'


def test_every_row_trains_up_to_train_rows(blobs):
    X = blobs[0]
    c = create_clusterer("scan", n_clusters=4, random_state=0, train_rows=len(X), **FAST["scan"]).fit(X)
    assert c.trained_on_ == len(X) and c.train_indices_ is None and c.fit_path_ == "trained on all 220 rows"


@pytest.mark.parametrize("method", ["temi", "scan"])
def test_sample_training_is_reproducible_for_a_seed(method, blobs):
    X = blobs[0]
    kw = dict(FAST[method], epochs=3, train_rows=80)
    a = create_clusterer(method, n_clusters=4, random_state=3, **kw).fit(X)
    b = create_clusterer(method, n_clusters=4, random_state=3, **kw).fit(X)
    np.testing.assert_array_equal(a.train_indices_, b.train_indices_)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    c = create_clusterer(method, n_clusters=4, random_state=4, **kw).fit(X)
    assert not np.array_equal(a.train_indices_, c.train_indices_)


class _RecordingStore:
    """Stands for a cache's stored graphs of every row; records any use."""

    def __init__(self):
        self.calls = []

    def load(self, metric, k):
        self.calls.append(("load", metric, k))

    def save(self, graph):
        self.calls.append(("save", graph.metric, graph.k))


@pytest.mark.parametrize("method, params", [("scan", {}), ("unic", {"metric": "euclidean"}), ("icce", {})])
def test_the_sample_mines_its_neighbours_among_the_sample_only(method, params, blobs, monkeypatch):
    from imgclust import knn
    from imgclust.clusterers._neighbours import _CENTRED

    X = blobs[0]
    searched = []
    real_knn_graph = knn.knn_graph

    def recording_knn_graph(rows, *args, **kwargs):
        searched.append(np.array(rows, copy=True))
        return real_knn_graph(rows, *args, **kwargs)

    monkeypatch.setattr(knn, "knn_graph", recording_knn_graph)
    store = _RecordingStore()
    every = knn.Neighbours(X, store=store)  # the shared (stored) graphs of all 220 rows
    c = create_clusterer(method, n_clusters=4, random_state=0, train_rows=90, **{**FAST[method], **params})
    c.fit(X, neighbours=every)
    sample = X[c.train_indices_]
    assert searched, "the sample's neighbours were never searched"
    for rows in searched:  # each search ran over the sample's rows (centred on the sample's mean for cosine)
        assert rows.shape == sample.shape
        assert np.allclose(rows, sample, atol=1e-5) or np.allclose(rows, sample - sample.mean(axis=0), atol=1e-5)
    # the graphs of every row were neither read, nor computed, nor written: a sample's graph is not theirs
    assert store.calls == [] and every._graphs == {} and every not in _CENTRED


def test_unic_trains_on_a_sample_above_its_quadratic_limit(blobs):
    X = blobs[0]
    create_clusterer("unic", n_clusters=20).preflight(1_000_000)  # no refusal: it trains on train_rows rows
    c = create_clusterer("unic", n_clusters=4, random_state=0, train_rows=100, **FAST["unic"]).fit(X)
    assert c.trained_on_ == 100 and c.tau2_ == 50  # tau2 = 2·n/K of the rows it trained on
    assert c.noisy_.shape == (100,)
    with pytest.raises(ParameterError, match=f"'train_rows' parameter of UnicClusterer must be .* {Hd.UNIC_MAX_ROWS}"):
        create_clusterer("unic", n_clusters=4, train_rows=Hd.UNIC_MAX_ROWS + 1)


def test_batched_labelling_matches_one_batch(fitted, blobs, monkeypatch):
    X = np.concatenate([blobs[0], blobs[2]])
    c = fitted["icce"]
    whole = c.predict(X)
    monkeypatch.setattr(c, "_predict_batch", 7)
    np.testing.assert_array_equal(c.predict(X), whole)


# -- parameters and registry ---------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_registry_entry(method):
    cls = CLUSTERERS.get(method)
    assert cls.n_clusters_mode == "required" and cls.input_space == "raw"
    assert cls.supports_predict and not cls.needs_views
    with pytest.raises(UsageError, match="needs the number of clusters"):
        create_clusterer(method)


@pytest.mark.parametrize(
    "method, params, match",
    [
        ("temi", {"heads": 0}, "'heads' parameter of TemiClusterer"),
        ("temi", {"beta": 1.5}, "'beta'"),
        ("temi", {"lr": 0}, "'lr'"),
        ("temi", {"device": "tpu"}, "'device'"),
        ("icce", {"ensemble": "metis"}, "'ensemble'"),
        ("icce", {"labels_from": "teacher"}, "'labels_from'"),
        ("icce", {"confidence": 1.5}, "'confidence'"),
        ("icce", {"k": 60, "max_neighbours": 50}, "'max_neighbours'"),
        ("scan", {"entropy_weight": -1}, "'entropy_weight'"),
        ("unic", {"tau1": 0}, "'tau1'"),
        ("unic", {"epochs": "many"}, "'epochs'"),
        ("scan", {"train_rows": 1}, "'train_rows' parameter of ScanClusterer must be an int in \\[2, inf\\]"),
        ("temi", {"train_rows": 2}, "'train_rows' parameter of TemiClusterer must be >= n_clusters=3"),
        ("icce", {"train_rows": "lots"}, "'train_rows'"),
    ],
)
def test_parameter_validation(method, params, match):
    with pytest.raises(ParameterError, match=match):
        create_clusterer(method, n_clusters=3, **params)


def test_parameters_from_strings_and_unknown_names():
    c = create_clusterer("icce", n_clusters=3, heads="5", epochs="None", center="false")
    assert (c.heads, c.epochs, c.center) == (5, None, False)
    with pytest.raises(ParameterError, match="no parameter 'head'"):
        create_clusterer("temi", n_clusters=3, head=2)
    with pytest.raises(NotFoundError):
        create_clusterer("tem", n_clusters=3)


def test_data_checks(blobs):
    X = blobs[0]
    with pytest.raises(UsageError, match="n_samples=5 should be >= n_clusters=6"):
        create_clusterer("scan", n_clusters=6).fit(X[:5])
    with pytest.raises(UsageError, match="not fitted"):
        create_clusterer("scan", n_clusters=2).predict(X)
    with pytest.raises(UsageError, match="NaN"):
        bad = X.copy()
        bad[3, 0] = np.nan
        create_clusterer("temi", n_clusters=2).fit(bad)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="this machine has no such device"):
            create_clusterer("scan", n_clusters=2, device="cuda").fit(X)


def test_k_larger_than_the_data_is_clipped_with_a_warning(blobs):
    X = blobs[0][:40]
    with pytest.warns(UserWarning, match="k=50 is more than n_samples-1=39"):
        create_clusterer("scan", n_clusters=2, k=50, epochs=1, hidden=8).fit(X)


def test_methods_without_a_predictor_refuse_state():
    if "kmeans" not in CLUSTERERS:
        pytest.skip("kmeans not registered")
    c = create_clusterer("kmeans", n_clusters=2)
    if c.supports_predict:
        pytest.skip("kmeans learns a predictor")
    with pytest.raises(UsageError, match="cannot assign new samples"):
        c.state()
