"""Cluster-ensemble consensus (imgclust.clusterers._ensembles) on hand-made labellings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from imgclust.clusterers import _ensembles as E
from imgclust.errors import ParameterError, ResourceError, UsageError

SOLVERS = ["hbgf", "mcla", "coassoc", "vote", "auto"]


def noisy_copies(truth: np.ndarray, k: int, n_members: int, noise: float, seed: int = 0) -> np.ndarray:
    """Members = the truth with permuted ids and a fraction ``noise`` of random labels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_members):
        lab = rng.permutation(k)[truth]
        flip = rng.random(truth.size) < noise
        lab[flip] = rng.integers(0, k, flip.sum())
        out.append(lab)
    return np.array(out)


@pytest.mark.parametrize("method", SOLVERS)
def test_identical_partitions_up_to_renaming_are_the_consensus(method):
    truth = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    members = np.array([truth, (truth + 1) % 3, np.array([2, 1, 0])[truth]])
    out = E.consensus(members, 3, method)
    assert adjusted_rand_score(truth, out) == 1.0
    # ids are consecutive in order of first appearance
    assert out.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("method", SOLVERS)
def test_majority_wins_on_a_disputed_sample(method):
    # sample 3 is with {0,1,2} in two members, with {4,5,6} in one
    a = [0, 0, 0, 0, 1, 1, 1]
    b = [5, 5, 5, 5, 7, 7, 7]
    c = [1, 1, 1, 0, 0, 0, 0]
    out = E.consensus(np.array([a, b, c]), 2, method)
    assert adjusted_rand_score(a, out) == 1.0


@pytest.mark.parametrize("method", SOLVERS)
def test_consensus_of_noisy_members_beats_the_members(method):
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 6, 600)
    members = noisy_copies(truth, 6, n_members=9, noise=0.35)
    member_ari = np.mean([adjusted_rand_score(truth, m) for m in members])
    out = E.consensus(members, 6, method)
    assert member_ari < 0.6
    assert adjusted_rand_score(truth, out) > 0.9
    assert E.anmi(out, members) >= max(E.anmi(m, members) for m in members) - 0.02


def test_auto_keeps_the_solver_with_the_best_anmi():
    truth = np.repeat(np.arange(4), 30)
    members = noisy_copies(truth, 4, n_members=5, noise=0.3, seed=3)
    out, scores = E.consensus(members, 4, "auto", return_scores=True)
    assert set(scores) == {"hbgf", "mcla", "coassoc", "vote"}
    assert E.anmi(out, members) == pytest.approx(max(scores.values()))


def test_anmi_by_hand():
    a = np.array([0, 0, 1, 1])
    assert E.anmi(a, np.array([a, 1 - a])) == pytest.approx(1.0)
    # independent split: NMI 0 to that member, 1 to the other -> 0.5
    b = np.array([0, 1, 0, 1])
    assert E.anmi(a, np.array([a, b])) == pytest.approx(0.5)
    # Strehl & Ghosh's sqrt(H*H) normalisation: MI ln2, entropies ln2 and ln4 -> 1/sqrt(2) (arithmetic: 2/3)
    assert E.anmi(a, np.array([[0, 1, 2, 3]])) == pytest.approx(1 / math.sqrt(2))


def test_unlabelled_samples_are_ignored_by_a_member():
    truth = np.array([0, 0, 0, 1, 1, 1])
    m1 = truth.copy()
    m2 = np.array([-1, -1, 1, 0, 0, -1])  # labels only three samples
    for method in ("hbgf", "mcla", "coassoc", "vote"):
        out = E.consensus(np.array([m1, m2]), 2, method)
        assert adjusted_rand_score(truth, out) == 1.0


def test_one_cluster():
    members = np.array([[0, 1, 0, 1], [1, 1, 0, 0]])
    for method in ("hbgf", "mcla", "coassoc", "vote"):
        assert E.consensus(members, 1, method).tolist() == [0, 0, 0, 0]


def test_errors():
    members = np.array([[0, 1, 0, 1]])
    with pytest.raises(ParameterError, match="'method'"):
        E.consensus(members, 2, "metis")
    with pytest.raises(UsageError, match="n_samples=4 should be >= n_clusters=5"):
        E.consensus(members, 5, "hbgf")
    with pytest.raises(UsageError, match="2-D"):
        E.consensus(np.zeros((2, 2, 2), dtype=int), 2, "hbgf")
    with pytest.raises(UsageError, match="integer"):
        E.consensus(np.array([[0.5, 1.0]]), 1, "hbgf")


def test_coassociation_refuses_what_does_not_fit(monkeypatch):
    monkeypatch.setattr(E, "COASSOC_MAX_N", 10)
    with pytest.raises(ResourceError) as err:
        E.coassociation(np.zeros((2, 11), dtype=int), 2)
    assert "hbgf" in err.value.hint
    # auto leaves coassoc out on large inputs
    monkeypatch.setattr(E, "COASSOC_AUTO_MAX_N", 10)
    _, scores = E.consensus(np.array([[0] * 6 + [1] * 6] * 2), 2, "auto", return_scores=True)
    assert "coassoc" not in scores


@pytest.mark.parametrize("method", ["hbgf", "vote"])
def test_large_n_solvers_take_100k_samples(method):
    # an O(N^2) solver would need 80 GB here; these are O(N*H)
    truth = np.random.default_rng(0).integers(0, 10, 100_000)
    members = noisy_copies(truth, 10, n_members=10, noise=0.3)
    assert adjusted_rand_score(truth, E.consensus(members, 10, method)) > 0.99


def test_deterministic_for_a_seed():
    members = noisy_copies(np.repeat(np.arange(3), 50), 3, 4, 0.4, seed=5)
    assert np.array_equal(E.hbgf(members, 3, random_state=7), E.hbgf(members, 3, random_state=7))


def test_vote_by_hand():
    # members 1 and 2 put sample 3 with the first group, member 3 with the second: the vote follows 2 of 3
    members = np.array([[0, 0, 0, 0, 1, 1, 1], [4, 4, 4, 4, 2, 2, 2], [1, 1, 1, 0, 0, 0, 0]])
    assert E.vote(members, 2).tolist() == [0, 0, 0, 0, 1, 1, 1]
    # a 1-1 tie on sample 3 keeps the reference's cluster; the reference is the member of highest ANMI
    tie = np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
    ref = max(tie, key=lambda m: E.anmi(m, tie))
    assert np.array_equal(E.vote(tie, 2), E._relabel(ref))


def test_vote_starts_from_hbgf_when_no_member_has_k_clusters():
    truth = np.repeat(np.arange(3), 20)
    members = np.array([np.where(truth == 2, 1, truth), np.where(truth == 0, 1, truth)])  # 2 clusters each
    out = E.vote(members, 3)
    assert np.array_equal(out, E.vote(members, 3)) and np.unique(out).size <= 3
    assert adjusted_rand_score(E.hbgf(members, 3), out) > 0.5


def test_agreement_by_hand():
    cons = np.array([0, 0, 0, 1, 1, 1])
    members = np.array(
        [
            [5, 5, 5, 7, 7, 7],  # same partition, other ids: all agree
            [1, 1, 0, 0, 0, 0],  # sample 2 moved to the other cluster
            [0, 0, 0, 1, 1, -1],  # sample 5 not labelled: no vote
        ]
    )
    agree = E.agreement(members, cons)
    assert agree.tolist() == pytest.approx([1, 1, 2 / 3, 1, 1, 2 / 3])
    with pytest.raises(UsageError, match="shape"):
        E.agreement(members, cons[:4])
