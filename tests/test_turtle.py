"""TURTLE (imgclust.clusterers._turtle): its loss by hand, several spaces, progress, the joint space."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from imgclust.clusterers import create_clusterer
from imgclust.clusterers._turtle import turtle_loss
from imgclust.errors import ParameterError, UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loss_by_hand_one_space():
    # labelling one-hot on 2 samples: its mean (0.5, 0.5) has entropy log 2; inner logits 0: CE = log 2
    probs = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    loss, error, entropy = turtle_loss(probs, [torch.zeros(2, 2)], gamma=10.0)
    assert error.item() == pytest.approx(math.log(2))
    assert entropy.item() == pytest.approx(math.log(2))
    assert loss.item() == pytest.approx(math.log(2) - 10 * math.log(2))


def test_loss_by_hand_two_spaces_averages_the_labelling_and_sums_per_space_terms():
    # space 1 says class 0, space 2 class 1: the labelling is (0.5, 0.5)
    probs = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    logits = torch.tensor([[math.log(3.0), 0.0]])  # softmax (0.75, 0.25)
    loss, error, entropy = turtle_loss(probs, [logits, logits], gamma=2.0)
    one = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    assert error.item() == pytest.approx(2 * one, rel=1e-6)
    assert entropy.item() == pytest.approx(0.0, abs=1e-7)  # each space's own mean labelling is one-hot
    assert loss.item() == pytest.approx(2 * one, rel=1e-6)


def test_loss_gradient_reaches_the_task_encoder_only():
    scores = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], requires_grad=True)
    inner = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    loss, _, _ = turtle_loss([torch.softmax(scores, dim=1)], [inner], gamma=1.0)
    loss.backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    assert inner.grad is None  # first-order hypergradient: no gradient through the inner classifiers


def test_entropy_weight_prefers_balanced_labellings():
    balanced = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    collapsed = [torch.tensor([[1.0, 0.0], [1.0, 0.0]])]
    logits = [torch.zeros(2, 2)]
    assert turtle_loss(balanced, logits, gamma=10.0)[0] < turtle_loss(collapsed, logits, gamma=10.0)[0]


def two_views_of_blobs(n_per=60, seed=0):
    """4 blobs seen through two random linear maps (two 'encoders' of the same images)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(4, 8))
    y = np.repeat(np.arange(4), n_per)
    latent = centres[y] + rng.normal(size=(len(y), 8))
    a = latent @ rng.normal(size=(8, 24)) + rng.normal(scale=0.5, size=(len(y), 24))
    b = latent @ rng.normal(size=(8, 40)) + rng.normal(scale=0.5, size=(len(y), 40))
    return a.astype(np.float32), b.astype(np.float32), y


def test_several_spaces_recover_blobs_with_one_linear_task_encoder_each():
    a, b, y = two_views_of_blobs()
    seen = []
    c = create_clusterer("turtle", n_clusters=4, space_dims="24,40", epochs=60, batch_size=120)
    c.on_epoch = lambda epoch, epochs, loss: seen.append((epoch, epochs, loss))
    c.fit(np.hstack([a, b]))
    assert adjusted_rand_score(y, c.labels_) >= 0.9
    assert [tuple(v.shape) for v in c._model.v] == [(4, 24), (4, 40)]
    assert [e for e, _, _ in seen] == list(range(1, 61)) and all(n == 60 and math.isfinite(v) for _, n, v in seen)
    assert np.array_equal(c.predict(np.hstack([a, b])), c.labels_)


def test_space_dims_must_add_up():
    a, b, _ = two_views_of_blobs(n_per=5)
    with pytest.raises(UsageError, match="does not add up to the input's 64 dimensions"):
        create_clusterer("turtle", n_clusters=2, space_dims="24,30", epochs=1).fit(np.hstack([a, b]))
    with pytest.raises(ParameterError, match="'space_dims'"):
        create_clusterer("turtle", n_clusters=2, space_dims="24;40")


def test_default_schedule_is_about_400_outer_steps():
    c = create_clusterer("turtle", n_clusters=10)
    assert c._batch_size(10_000) == 1024 and c._n_epochs(10_000) == math.ceil(400 / 9)
    assert c._batch_size(220) == 220 and c._n_epochs(220) == 300  # clipped
