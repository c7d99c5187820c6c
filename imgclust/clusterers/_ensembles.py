"""Cluster ensembles: one consensus labelling from many (Strehl & Ghosh 2002; ICCE stage 2).

Given H labellings of the same N samples, find one labelling with K clusters that shares as much
information as possible with all of them: the objective is the average normalised mutual information
(ANMI) to the ensemble. Three solvers, all written here in numpy/scipy/scikit-learn:

``hbgf``
    Hybrid bipartite graph formulation (Fern & Brodley 2004): a bipartite graph between the N samples
    and the C = sum of the ensemble's cluster counts, an edge where a sample is in a cluster. It is
    partitioned spectrally (Dhillon 2001 co-clustering, NJW row-normalised embedding, k-means) rather
    than with METIS. The graph's normalised biadjacency is N x C with N*H non-zeros; its top singular
    vectors come from the C x C Gram matrix, so time and memory are O(N*H*K + C^3): it scales to
    millions of samples.
``mcla``
    Meta-clustering (Strehl & Ghosh): cluster the C clusters themselves by the Jaccard similarity of
    their member sets (average linkage here, METIS in the paper), then give each sample to the
    meta-cluster it is most associated with. O(N*C) time and memory.
``coassoc``
    Evidence accumulation (Fred & Jain 2005): the co-association matrix (fraction of labellings that
    put two samples together), cut by average-linkage agglomerative clustering. O(N^2) memory: only
    for small N (refused above ``COASSOC_MAX_N``).
``vote``
    Relabel and vote (Dudoit & Fridlyand 2003; Zhou & Tang 2006): match every member's clusters one-to-one
    to a reference labelling (Hungarian method on the contingency table), give each sample the cluster
    most members vote for (a tie keeps the reference's), and repeat with the result as the reference
    until it stops changing (at most ``VOTE_ROUNDS``). The first reference is the member with K clusters
    and the highest ANMI (hbgf's output when no member has K). O(N*H) per round. Measured on ICCE's 8
    heads (effnet-lite0, CIFAR-10, seed 2): ANMI 0.806 against hbgf's 0.799, and AMI 40.0 against
    hbgf's 39.3 and the heads' mean of 39.9.
``auto``
    Strehl & Ghosh's "supra-consensus": run the solvers that fit (coassoc only up to
    ``COASSOC_AUTO_MAX_N`` samples) and keep the labelling with the highest ANMI to the ensemble.

Labels of -1 in an input labelling mean "not labelled by this member" (no edge, no vote).
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError, ResourceError, UsageError
from ._base import check_pairwise_memory

METHODS = ("auto", "hbgf", "mcla", "coassoc", "vote")
COASSOC_MAX_N = 20_000
COASSOC_AUTO_MAX_N = 5_000
VOTE_ROUNDS = 10

__all__ = ["METHODS", "agreement", "anmi", "coassociation", "consensus", "hbgf", "mcla", "vote"]


def _check_labelings(labelings) -> np.ndarray:
    L = np.asarray(labelings)
    if L.ndim == 1:
        L = L[None, :]
    if L.ndim != 2 or L.shape[0] == 0 or L.shape[1] == 0:
        raise UsageError(f"labelings must be a 2-D array (n_labelings, n_samples); got shape {L.shape}")
    if not np.issubdtype(L.dtype, np.integer):
        if not np.all(np.equal(np.mod(L, 1), 0)):
            raise UsageError("labelings must hold integer cluster ids")
        L = L.astype(np.int64)
    return L.astype(np.int64, copy=False)


def _indicator(L: np.ndarray, dtype=np.float64):
    """Sparse N x C membership matrix over all clusters of all labellings (-1 = no membership)."""
    from scipy import sparse

    H, N = L.shape
    rows, cols = [], []
    offset = 0
    for h in range(H):
        lab = L[h]
        ok = lab >= 0
        _, inv = np.unique(lab[ok], return_inverse=True)
        rows.append(np.flatnonzero(ok))
        cols.append(inv + offset)
        offset += int(inv.max()) + 1 if inv.size else 0
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    data = np.ones(rows.size, dtype=dtype)
    return sparse.csr_matrix((data, (rows, cols)), shape=(N, offset))


def _check_k(n_clusters: int, n: int) -> int:
    if int(n_clusters) < 1:
        raise ParameterError(f"n_clusters must be >= 1. Got {n_clusters!r} instead.")
    if int(n_clusters) > n:
        raise UsageError(f"n_samples={n} should be >= n_clusters={n_clusters}")
    return int(n_clusters)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 0..k-1 in order of first appearance (so equal partitions give equal arrays)."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inv].astype(np.int64)


def anmi(labels, labelings) -> float:
    """Average NMI of ``labels`` to each labelling of the ensemble (the consensus objective).

    NMI is normalised by sqrt(H(a) * H(b)), Strehl & Ghosh's definition (2002, Eq. 2) and that of the
    Cluster_Ensembles package ICCE used, not scikit-learn's default arithmetic mean.
    """
    from sklearn.metrics import normalized_mutual_info_score

    L = _check_labelings(labelings)
    labels = np.asarray(labels)
    scores = []
    for lab in L:
        ok = lab >= 0
        scores.append(normalized_mutual_info_score(lab[ok], labels[ok], average_method="geometric") if ok.any() else 0.0)
    return float(np.mean(scores))


def hbgf(labelings, n_clusters: int, random_state: int = 0) -> np.ndarray:
    """Consensus by spectral partition of the sample-cluster bipartite graph (see module doc)."""
    from scipy import sparse
    from sklearn.cluster import KMeans

    L = _check_labelings(labelings)
    K = _check_k(n_clusters, L.shape[1])
    A = _indicator(L)
    N, C = A.shape
    if K == 1:
        return np.zeros(N, dtype=np.int64)
    d1 = np.asarray(A.sum(axis=1)).ravel()
    d2 = np.asarray(A.sum(axis=0)).ravel()
    r1 = 1.0 / np.sqrt(np.maximum(d1, 1e-12))
    r2 = 1.0 / np.sqrt(np.maximum(d2, 1e-12))
    An = sparse.diags(r1) @ A @ sparse.diags(r2)
    # singular vectors of An from the small C x C Gram matrix
    G = np.asarray((An.T @ An).todense())
    evals, evecs = np.linalg.eigh(G)
    top = np.argsort(evals)[::-1][: min(K, C)]
    sig = np.sqrt(np.maximum(evals[top], 0.0))
    V = evecs[:, top]
    U = np.asarray(An @ V) / np.maximum(sig, 1e-12)
    # deterministic sign for each vector (eigh's sign is arbitrary)
    signs = np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(V.shape[1])])
    signs[signs == 0] = 1.0
    U, V = U * signs, V * signs
    Z = np.vstack([U, V])
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    km = KMeans(n_clusters=K, n_init=10, random_state=random_state)
    labels = km.fit_predict(Z)[:N]
    return _relabel(labels)


def mcla(labelings, n_clusters: int, random_state: int = 0) -> np.ndarray:
    """Consensus by meta-clustering the clusters (Jaccard, average linkage; see module doc).

    May return fewer than ``n_clusters`` clusters when a meta-cluster wins no sample.
    """
    from sklearn.cluster import AgglomerativeClustering

    L = _check_labelings(labelings)
    K = _check_k(n_clusters, L.shape[1])
    A = _indicator(L).tocsc()
    N, C = A.shape
    if K == 1 or C <= K:
        # nothing to merge: fall back to the graph formulation
        return hbgf(L, K, random_state=random_state)
    inter = np.asarray((A.T @ A).todense())
    size = np.diag(inter)
    union = size[:, None] + size[None, :] - inter
    jac = inter / np.maximum(union, 1e-12)
    meta = AgglomerativeClustering(n_clusters=K, metric="precomputed", linkage="average").fit_predict(1.0 - jac)
    # association of each sample with each meta-cluster: mean membership over its clusters
    M = np.zeros((C, K))
    M[np.arange(C), meta] = 1.0
    M /= M.sum(axis=0, keepdims=True)
    assoc = np.asarray(A @ M)
    labels = np.argmax(assoc, axis=1)
    return _relabel(labels)


def coassociation(labelings, n_clusters: int, random_state: int = 0) -> np.ndarray:
    """Consensus by average linkage on the co-association matrix (O(N^2) memory; small N only)."""
    from sklearn.cluster import AgglomerativeClustering

    L = _check_labelings(labelings)
    N = L.shape[1]
    K = _check_k(n_clusters, N)
    if N > COASSOC_MAX_N:
        raise ResourceError(
            f"coassoc consensus needs an N x N matrix; {N} samples is over its limit of {COASSOC_MAX_N}",
            hint="use the hbgf or mcla consensus instead",
        )
    check_pairwise_memory(N, "the coassoc consensus", "the hbgf consensus", bytes_per_pair=4, copies=3)
    if K == 1:
        return np.zeros(N, dtype=np.int64)
    A = _indicator(L, dtype=np.float32)
    votes = np.maximum(np.asarray(A.sum(axis=1)).ravel(), 1.0)
    co = (A @ A.T).toarray()
    # fraction of the members that labelled both samples is approximated by the mean vote count
    co /= np.sqrt(votes[:, None] * votes[None, :]).astype(np.float32)
    dist = 1.0 - co
    np.fill_diagonal(dist, 0.0)
    labels = AgglomerativeClustering(n_clusters=K, metric="precomputed", linkage="average").fit_predict(dist)
    return _relabel(labels)


def _matched(lab: np.ndarray, ref: np.ndarray, k_ref: int) -> np.ndarray:
    """``lab`` with its clusters renamed to the clusters of ``ref`` (ids 0..k_ref-1) they are matched to,
    one-to-one by the Hungarian method on the contingency table; -1 where unmatched or unlabelled."""
    from scipy.optimize import linear_sum_assignment

    ok = lab >= 0
    out = np.full(lab.shape, -1, dtype=np.int64)
    if not ok.any():
        return out
    ids, inv = np.unique(lab[ok], return_inverse=True)
    table = np.zeros((ids.size, k_ref))
    np.add.at(table, (inv, ref[ok]), 1)
    rows, cols = linear_sum_assignment(-table)
    match = np.full(ids.size, -1)
    match[rows] = cols
    out[ok] = match[inv]
    return out


def agreement(labelings, labels) -> np.ndarray:
    """Per sample, the fraction of labellings that agree with ``labels`` once matched to it.

    Each labelling's clusters are matched one-to-one to the clusters of ``labels`` (Hungarian
    matching on the contingency table); a sample agrees when its matched cluster is its label.
    Unmatched clusters and -1 never agree. 1.0 = every member puts the sample where ``labels`` does.
    """
    L = _check_labelings(labelings)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (L.shape[1],):
        raise UsageError(f"labels must have shape ({L.shape[1]},); got {labels.shape}")
    _, ref = np.unique(labels, return_inverse=True)
    k_ref = int(ref.max()) + 1
    return sum(_matched(lab, ref, k_ref) == ref for lab in L) / L.shape[0]


def vote(labelings, n_clusters: int, random_state: int = 0) -> np.ndarray:
    """Consensus by matching every member to a reference and a majority vote per sample (module doc)."""
    L = _check_labelings(labelings)
    K = _check_k(n_clusters, L.shape[1])
    with_k = [h for h, lab in enumerate(L) if np.unique(lab[lab >= 0]).size == K]
    if with_k:
        ref = _relabel(L[max(with_k, key=lambda h: (anmi(L[h], L), -h))])
    else:
        ref = hbgf(L, K, random_state=random_state)
    rows = np.arange(L.shape[1])
    for _ in range(VOTE_ROUNDS):
        k_ref = int(ref.max()) + 1
        votes = np.zeros((L.shape[1], k_ref))
        votes[rows, ref] = 0.5  # a tie keeps the reference's cluster
        for lab in L:
            m = _matched(lab, ref, k_ref)
            np.add.at(votes, (rows[m >= 0], m[m >= 0]), 1.0)
        new = votes.argmax(axis=1)
        if np.array_equal(new, ref):
            break
        ref = new
    return _relabel(ref)


_SOLVERS = {"hbgf": hbgf, "mcla": mcla, "coassoc": coassociation, "vote": vote}


def consensus(labelings, n_clusters: int, method: str = "auto", random_state: int = 0, return_scores: bool = False):
    """One labelling with ``n_clusters`` clusters that agrees best with all of ``labelings``.

    Parameters
    ----------
    labelings : int array (n_labelings, n_samples)
        The ensemble; -1 marks samples a member did not label.
    n_clusters : int
        Clusters of the consensus.
    method : "auto", "hbgf", "mcla", "coassoc" or "vote"
        Solver (module doc); "auto" keeps the solver output with the highest ANMI.
    return_scores : bool
        Also return ``{solver: ANMI}`` of every solver that ran.
    """
    if method not in METHODS:
        raise ParameterError(
            f"The 'method' parameter of consensus must be one of {', '.join(METHODS)}. Got {method!r} instead."
        )
    L = _check_labelings(labelings)
    if method == "auto":
        names = ["hbgf", "mcla", "vote"] + (["coassoc"] if L.shape[1] <= COASSOC_AUTO_MAX_N else [])
    else:
        names = [method]
    results = {name: _SOLVERS[name](L, n_clusters, random_state=random_state) for name in names}
    scores = {name: anmi(lab, L) for name, lab in results.items()}
    best = max(names, key=lambda n: (scores[n], -names.index(n)))
    return (results[best], scores) if return_scores else results[best]
