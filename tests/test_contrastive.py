"""Contrastive clustering (cc) on synthetic augmented-view embeddings (imgclust.clusterers._contrastive)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from imgclust.clusterers import CLUSTERERS, Clusterer, create_clusterer
from imgclust.clusterers._contrastive import cluster_contrastive_loss, nt_xent
from imgclust.errors import ParameterError, UsageError

FAST = dict(epochs=25, batch_size=32, lr=1e-3, hidden=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_views(X: np.ndarray, n_views: int, noise: float, seed: int = 0) -> np.ndarray:
    """Stand-in for embeddings of augmented crops: the embedding plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    return (X[:, None, :] + rng.normal(0.0, noise, (X.shape[0], n_views, X.shape[1]))).astype(np.float32)


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=300, n_features=32, centers=4, cluster_std=1.0, random_state=1)
    X = X.astype(np.float32)
    return X[:220], y[:220], X[220:], y[220:]


@pytest.fixture(scope="module")
def fitted(blobs):
    X, _, _, _ = blobs
    return create_clusterer("cc", n_clusters=4, **FAST).fit(X, with_views(X, 3, 1.0))


def test_nt_xent_lower_for_matched_views():
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    b = a + 0.05 * torch.randn(16, 8)
    matched = nt_xent(a, b, 0.5)
    shuffled = nt_xent(a, b[torch.randperm(16)], 0.5)
    assert matched < shuffled
    # by hand: two orthogonal pairs, perfectly matched. Each row: positive cos 1, negatives cos 0 (x2)
    e = torch.eye(2)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert nt_xent(e, e, 0.5).item() == pytest.approx(expected, rel=1e-5)


def test_cluster_loss_entropy_term():
    K = 3
    balanced = torch.eye(K).repeat(4, 1)  # every cluster used equally, confidently
    loss, contrast, ent = cluster_contrastive_loss(balanced, balanced, 1.0)
    assert float(ent) == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.zeros(12, K)
    collapsed[:, 0] = 1.0
    _, _, ent_c = cluster_contrastive_loss(collapsed, collapsed, 1.0)
    assert float(ent_c) == pytest.approx(2 * math.log(K), rel=1e-4)  # log K per view
    # clusters that agree across the views contrast better than shuffled ones
    shuffled = balanced[:, [1, 2, 0]]
    assert contrast < cluster_contrastive_loss(balanced, shuffled, 1.0)[1]


def test_recovers_blobs_from_noisy_views(fitted, blobs):
    _, y, _, _ = blobs
    assert adjusted_rand_score(y, fitted.labels_) >= 0.9
    assert fitted.n_clusters_ == 4


def test_predict_and_state_round_trip(fitted, blobs):
    X, y, Xh, yh = blobs
    assert np.array_equal(fitted.predict(X), fitted.labels_)
    pred = fitted.predict(Xh)
    blob_to_cluster = {b: np.bincount(fitted.labels_[y == b]).argmax() for b in range(4)}
    assert np.mean([pred[i] == blob_to_cluster[yh[i]] for i in range(len(yh))]) >= 0.95
    state = fitted.state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    rebuilt = Clusterer.from_state(state)
    assert rebuilt.name == "cc" and np.array_equal(rebuilt.predict(Xh), pred)


def test_deterministic_for_a_seed(blobs):
    X = blobs[0][:120]
    V = with_views(X, 2, 1.0)
    kw = dict(FAST, epochs=3)
    a = create_clusterer("cc", n_clusters=4, random_state=5, **kw).fit(X, V)
    b = create_clusterer("cc", n_clusters=4, random_state=5, **kw).fit(X, V)
    assert np.array_equal(a.labels_, b.labels_)
    assert all(np.array_equal(v, b.state()[k]) for k, v in a.state().items())


def test_views_are_required_and_checked(blobs):
    X = blobs[0][:40]
    c = create_clusterer("cc", n_clusters=2, epochs=1)
    with pytest.raises(UsageError, match="augmented-view embeddings") as err:
        c.fit(X)
    assert "--views" in err.value.hint
    with pytest.raises(UsageError, match="at least 2 views"):
        create_clusterer("cc", n_clusters=2, epochs=1, plain_view=False).fit(X, with_views(X, 1, 0.1))
    create_clusterer("cc", n_clusters=2, epochs=1).fit(X, with_views(X, 1, 0.1))  # the plain embedding is the second view
    with pytest.raises(UsageError, match="shape"):
        c.fit(X, with_views(X, 2, 0.1)[:30])
    with pytest.raises(UsageError, match="shape"):
        c.fit(X, with_views(X, 2, 0.1)[:, :, :8])
    bad = with_views(X, 2, 0.1)
    bad[0, 1, 0] = np.inf
    with pytest.raises(UsageError, match="NaN or Inf"):
        c.fit(X, bad)


def test_registry_entry_and_parameters():
    cls = CLUSTERERS.get("cc")
    assert cls.needs_views and cls.supports_predict
    assert cls.n_clusters_mode == "required" and cls.input_space == "raw"
    with pytest.raises(ParameterError, match="'instance_temperature'"):
        create_clusterer("cc", n_clusters=2, instance_temperature=0)
    with pytest.raises(ParameterError, match="'feature_dim'"):
        create_clusterer("cc", n_clusters=2, feature_dim=0)
    assert create_clusterer("cc", n_clusters=2).cluster_temperature == 1.0
