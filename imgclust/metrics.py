"""Scores of a clustering, with and without ground-truth labels (METHODS.md §1, §2, §6).

Label-free scores (need the embeddings the clustering ran on, usually the UMAP-reduced space):

* :func:`silhouette_samples` / :func:`silhouette_analysis` -- euclidean silhouette, exact and
  chunked up to ``max_exact`` points (never an N x N matrix), estimated with a stated error bound
  beyond;
* Davies-Bouldin and Calinski-Harabasz (scikit-learn), in :func:`score_clustering`.

Scores against ground truth:

* AMI, NMI, ARI (scikit-learn);
* :func:`clustering_accuracy` -- Hungarian (one-to-one) or majority (many-to-one) matching;
* :func:`pairwise_f_score` and :func:`bcubed_f_score` -- the formulas of ES (METHODS.md §2).

:func:`score_clustering` gathers all of them in a :class:`Scores` dataclass with a JSON-safe
``to_dict()``.

Conventions, everywhere in this module:

* Predicted label ``-1`` is noise (HDBSCAN, CDP, ...). For AMI/NMI/ARI noise counts as ONE cluster,
  as in ZS; ``Scores.ami_no_noise`` gives AMI over the non-noise points beside it. For pairwise and
  BCubed F every noise point is its own singleton cluster (it claims no pair); for accuracy a noise
  point is always wrong. Noise points get no silhouette (NaN) and do not enter any label-free score.
* A ground-truth label that is ``None``, ``""`` or a float NaN means "not labelled": those rows are
  left out of every score that needs labels (and only of those).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ._json import json_safe
from .errors import ParameterError, UsageError

__all__ = [
    "ACCURACY_RULES",
    "Scores",
    "Silhouette",
    "bcubed_f_score",
    "clustering_accuracy",
    "contingency_table",
    "hoeffding_bound",
    "missing_label_mask",
    "pairwise_f_score",
    "score_clustering",
    "silhouette_analysis",
    "silhouette_samples",
]

#: The two ways :func:`clustering_accuracy` maps clusters to classes.
ACCURACY_RULES = ("one-to-one", "majority")

NOISE = -1

# Distance blocks are kept below this many float64 entries (64 MiB) when chunk_size is None.
_CHUNK_ENTRIES = 2**23
# Each cluster gets at least this many reference points on the sampled silhouette path.
_MIN_PER_CLUSTER = 10
# Up to this many clusters, sums by cluster are a matrix product with a dense one-hot (BLAS, every core).
_DENSE_ONEHOT_K = 256


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_labels(labels: Any, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise UsageError(f"{what} must be a 1-D array of labels; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise UsageError(f"{what} is empty: there is nothing to score")
    return arr


def _pair(labels_true: Any, labels_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels(labels_true, "labels_true")
    p = _as_labels(labels_pred, "labels_pred")
    if t.shape[0] != p.shape[0]:
        raise UsageError(
            f"labels_true and labels_pred differ in length: {t.shape[0]} != {p.shape[0]}",
            hint="both must hold one label per image, in the same order",
        )
    return t, p


def _codes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique labels (sorted) and each row's index into them."""
    if labels.dtype == object:
        labels = labels.astype(str)
    uniq, inv = np.unique(labels, return_inverse=True)
    return uniq, inv.reshape(-1).astype(np.int64)


def _noise_to_singletons(labels_pred: np.ndarray, noise_label: Any) -> np.ndarray:
    """Give every point labelled ``noise_label`` its own new cluster id."""
    if noise_label is None:
        return labels_pred
    noise = labels_pred == noise_label
    if not noise.any():
        return labels_pred
    _, codes = _codes(labels_pred)
    out = codes.copy()
    out[noise] = codes.max() + 1 + np.arange(int(noise.sum()))
    return out


def missing_label_mask(labels_true: Any) -> np.ndarray:
    """True where a ground-truth label is missing: ``None``, ``""`` or a float NaN."""
    arr = np.asarray(labels_true)
    if arr.dtype.kind == "f":
        return np.isnan(arr)
    if arr.dtype.kind in "US":
        return arr == arr.dtype.type()
    if arr.dtype == object:
        return np.fromiter(
            (v is None or (isinstance(v, str) and v == "") or (isinstance(v, float) and math.isnan(v)) for v in arr),
            dtype=bool,
            count=arr.shape[0],
        )
    return np.zeros(arr.shape[0], dtype=bool)


# --------------------------------------------------------------------------------------------
# scores against ground truth
# --------------------------------------------------------------------------------------------


def contingency_table(labels_true: Any, labels_pred: Any, *, sparse: bool = False):
    """Counts ``n_gc`` of points in true class ``g`` and predicted cluster ``c``.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth classes (ints or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted clusters. Noise (-1) is an ordinary column here.
    sparse : bool, default=False
        Return a ``scipy.sparse.csr_matrix`` instead of a dense array (use it when there are
        many clusters, e.g. thousands of singletons).

    Returns
    -------
    table : ndarray of shape (n_classes, n_clusters), dtype int64
        Rows follow the sorted unique values of ``labels_true``, columns those of ``labels_pred``
        (``np.unique`` order).

    Examples
    --------
    >>> contingency_table(["a", "a", "b"], [0, 1, 1])
    array([[1, 1],
           [0, 1]])
    """
    from scipy.sparse import coo_matrix

    t, p = _pair(labels_true, labels_pred)
    classes, ti = _codes(t)
    clusters, pi = _codes(p)
    table = coo_matrix(
        (np.ones(ti.shape[0], dtype=np.int64), (ti, pi)), shape=(classes.shape[0], clusters.shape[0])
    ).tocsr()
    table.sum_duplicates()
    return table if sparse else table.toarray()


def _pair_counts(labels_true: Any, labels_pred: Any):
    table = contingency_table(labels_true, labels_pred, sparse=True)
    n = int(table.sum())
    class_sizes = np.asarray(table.sum(axis=1)).ravel().astype(np.int64)
    cluster_sizes = np.asarray(table.sum(axis=0)).ravel().astype(np.int64)
    return table, n, class_sizes, cluster_sizes


def _harmonic(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def pairwise_f_score(labels_true: Any, labels_pred: Any, *, noise_label: Any = None) -> tuple[float, float, float]:
    """Pairwise precision, recall and F-score (ES; METHODS.md §2).

    From the contingency table ``n_gc``: TP = Σ n_gc² − N, predicted pairs = Σ_c |c|² − N,
    true pairs = Σ_g |g|² − N (ordered pairs of distinct points; the factor 2 cancels),
    P = TP / predicted pairs, R = TP / true pairs, F = 2PR / (P + R).

    Degenerate cases never divide by zero: with no predicted pairs (every cluster a singleton)
    precision is 1 (no pair was claimed wrongly); with no true pairs (every class a singleton)
    recall is 1; F is 0 when P + R = 0. Swapping the two labelings swaps P and R, so F is symmetric.

    Parameters
    ----------
    labels_true, labels_pred : array-like of shape (n_samples,)
        Classes and clusters (ints or strings).
    noise_label : optional
        If given, every point whose predicted label equals it is treated as its own singleton
        cluster (pass -1 for HDBSCAN noise).

    Returns
    -------
    precision, recall, f : float
        Each in [0, 1].

    Examples
    --------
    >>> pairwise_f_score([0, 0, 1, 1], [0, 0, 0, 1])
    (0.3333333333333333, 0.5, 0.4)
    """
    t, p = _pair(labels_true, labels_pred)
    p = _noise_to_singletons(p, noise_label)
    table, n, class_sizes, cluster_sizes = _pair_counts(t, p)
    tp = int((table.data.astype(np.int64) ** 2).sum()) - n
    pred_pairs = int((cluster_sizes**2).sum()) - n
    true_pairs = int((class_sizes**2).sum()) - n
    precision = 1.0 if pred_pairs == 0 else tp / pred_pairs
    recall = 1.0 if true_pairs == 0 else tp / true_pairs
    return float(precision), float(recall), float(_harmonic(precision, recall))


def bcubed_f_score(labels_true: Any, labels_pred: Any, *, noise_label: Any = None) -> tuple[float, float, float]:
    """BCubed precision, recall and F-score (ES; METHODS.md §2).

    P = (1/N) Σ_g Σ_c n_gc² / |c|, R = (1/N) Σ_g Σ_c n_gc² / |g|, F = 2PR / (P + R): the mean over
    points of the fraction of the point's cluster that shares its class (P) and of its class that
    shares its cluster (R). Both are > 0 for any non-empty input, so there is no degenerate case;
    swapping the labelings swaps P and R.

    Parameters
    ----------
    labels_true, labels_pred : array-like of shape (n_samples,)
        Classes and clusters (ints or strings).
    noise_label : optional
        If given, every point whose predicted label equals it is treated as its own singleton
        cluster (pass -1 for HDBSCAN noise).

    Returns
    -------
    precision, recall, f : float
        Each in (0, 1].

    Examples
    --------
    >>> bcubed_f_score([0, 0, 1, 1], [0, 0, 0, 1])
    (0.6666666666666666, 0.75, 0.7058823529411765)
    """
    t, p = _pair(labels_true, labels_pred)
    p = _noise_to_singletons(p, noise_label)
    table, n, class_sizes, cluster_sizes = _pair_counts(t, p)
    coo = table.tocoo()
    sq = coo.data.astype(np.float64) ** 2
    precision = float((sq / cluster_sizes[coo.col]).sum() / n)
    recall = float((sq / class_sizes[coo.row]).sum() / n)
    return precision, recall, float(_harmonic(precision, recall))


def clustering_accuracy(
    labels_true: Any, labels_pred: Any, rule: str = "one-to-one", *, noise_label: Any = None
) -> float:
    """Fraction of points whose cluster maps to their class (METHODS.md §6).

    Parameters
    ----------
    labels_true, labels_pred : array-like of shape (n_samples,)
        Classes and clusters (ints or strings).
    rule : {"one-to-one", "majority"}, default="one-to-one"
        How clusters map to classes.

        * ``"one-to-one"`` (strict, the usual "ACC" of deep-clustering papers): the Hungarian
          algorithm (``scipy.optimize.linear_sum_assignment``) on the contingency table gives each
          class at most one cluster and each cluster at most one class, maximising the points
          matched. With more clusters than classes the unmatched clusters count as wrong (so
          over-splitting is penalised); with fewer, the unmatched classes count as wrong.
        * ``"majority"`` (many-to-one): each cluster takes its most frequent class; several
          clusters may take the same class. Over-splitting is not penalised (all singletons give
          accuracy 1), so report it only beside the number of clusters.
    noise_label : optional
        If given, points with this predicted label (pass -1 for noise) are never matched: they
        count as wrong under both rules.

    Returns
    -------
    accuracy : float in [0, 1]

    Examples
    --------
    >>> clustering_accuracy([0, 0, 1, 1], [5, 5, 5, 7])
    0.75
    >>> clustering_accuracy([0, 0, 0, 0], [0, 0, 1, 1])
    0.5
    >>> clustering_accuracy([0, 0, 0, 0], [0, 0, 1, 1], rule="majority")
    1.0
    """
    if rule not in ACCURACY_RULES:
        raise ParameterError(
            f"The 'rule' parameter of clustering_accuracy must be one of {', '.join(ACCURACY_RULES)}. "
            f"Got {rule!r} instead.",
            hint="one-to-one: Hungarian matching, extra clusters count as wrong; "
            "majority: each cluster takes its majority class",
        )
    t, p = _pair(labels_true, labels_pred)
    n = t.shape[0]
    if noise_label is not None:
        keep = p != noise_label
        t, p = t[keep], p[keep]
        if t.shape[0] == 0:
            return 0.0
    table = contingency_table(t, p)
    if rule == "majority":
        return float(table.max(axis=0).sum() / n)
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / n)


# --------------------------------------------------------------------------------------------
# silhouette
# --------------------------------------------------------------------------------------------


@dataclass
class Silhouette:
    """Euclidean silhouette of one labeling (see :func:`silhouette_analysis`).

    Attributes
    ----------
    samples : ndarray of shape (n_samples,)
        Per-point silhouette; NaN for noise points and when it is undefined (fewer than 2
        clusters). Exact when ``exact``; otherwise exact on the sampled points (``sampled``) and an
        estimate elsewhere.
    mean : float
        Mean silhouette over the non-noise points (NaN if undefined).
    per_cluster : dict
        Cluster label -> mean silhouette of its points.
    exact : bool
        Whether every value was computed exactly.
    error_bound : float
        0 when exact. Otherwise the half-width ``t`` such that ``|mean - exact mean| <= t`` with
        probability at least ``confidence`` (Hoeffding; see :func:`silhouette_analysis`).
    confidence : float
        The probability that goes with ``error_bound``.
    sampled : ndarray of bool or None
        On the sampled path, the points whose silhouette is exact (the reference sample).
    """

    samples: np.ndarray
    mean: float
    per_cluster: dict
    exact: bool = True
    error_bound: float = 0.0
    confidence: float = 1.0
    sampled: np.ndarray | None = None


def _check_X_labels(X: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    if X.ndim != 2:
        raise UsageError(f"X must be a 2-D array of shape (n_samples, n_features); got shape {X.shape}")
    labels = _as_labels(labels, "labels")
    if X.shape[0] != labels.shape[0]:
        raise UsageError(
            f"X has {X.shape[0]} rows but labels has {labels.shape[0]}",
            hint="pass the embeddings the clustering ran on, one row per label",
        )
    X = X.astype(np.float64, copy=False)
    if not np.isfinite(X).all():
        raise UsageError("X holds NaN or Inf values", hint="the embeddings must be finite")
    return X, labels


def _check_positive_int(value: Any, name: str, owner: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be an int >= 1{' or None' if allow_none else ''}. "
            f"Got {value!r} instead."
        )
    return int(value)


def _auto_chunk(n_cols: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return chunk_size
    return max(1, _CHUNK_ENTRIES // max(n_cols, 1))


def _distances(A: np.ndarray, a_sq: np.ndarray, B: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows of A and B (the |a|² + |b|² − 2ab form, as sklearn)."""
    D = A @ B.T
    D *= -2.0
    D += a_sq[:, None]
    D += b_sq[None, :]
    np.maximum(D, 0.0, out=D)
    return np.sqrt(D, out=D)


def _onehot(codes: np.ndarray, k: int):
    from scipy.sparse import csr_matrix

    n = codes.shape[0]
    return csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, k))


def _a_b_to_s(a_sum: np.ndarray, a_den: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Silhouette from the own-cluster distance sum, its divisor and the nearest other mean."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = a_sum / a_den
        s = (b - a) / np.maximum(a, b)
    # a_den == 0 (singleton) or 0/0 (all points identical) -> 0, as sklearn.
    return np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)


def _exact_silhouettes(X: np.ndarray, labelings: list[np.ndarray], chunk_size: int | None = None) -> list[np.ndarray]:
    """Exact silhouettes of several labelings of the same points, sharing the distance blocks.

    Each labeling is an int array of codes 0..K-1 (K >= 2, every code used). Memory is
    O(chunk_size * (N + K)), never N x N.
    """
    n = X.shape[0]
    X = X - X.mean(axis=0)  # translation invariant; centring keeps |a|^2+|b|^2-2ab accurate
    sq = np.einsum("ij,ij->i", X, X)
    # Nested labelings (cuts of one tree) are coarsenings of the finest one: sum distances per
    # fine cluster once per block, then add up runs of fine columns (np.add.reduceat) per labeling.
    fine = max(labelings, key=lambda c: int(c.max()))
    k_fine = int(fine.max()) + 1
    prepared = []
    for codes in labelings:
        counts = np.bincount(codes).astype(np.float64)
        k = counts.shape[0]
        coarse_of_fine = np.full(k_fine, -1, dtype=np.int64)
        coarse_of_fine[fine] = codes
        nested = bool((coarse_of_fine[fine] == codes).all())
        if nested:
            # fine columns grouped by coarse cluster, then summed in runs (np.add.reduceat)
            perm = np.argsort(coarse_of_fine, kind="stable")
            starts = np.flatnonzero(np.r_[True, np.diff(coarse_of_fine[perm]) != 0])
            perm = None if np.array_equal(perm, np.arange(k_fine)) else perm
            prepared.append((codes, counts, None, (perm, starts)))
        else:
            prepared.append((codes, counts, _onehot(codes, k).T.tocsr(), None))
    fine_ET = _onehot(fine, k_fine).T.tocsr() if any(p[3] is not None for p in prepared) else None
    out = [np.empty(n) for _ in labelings]
    step = _auto_chunk(n, chunk_size)
    for start in range(0, n, step):
        stop = min(start + step, n)
        D = _distances(X[start:stop], sq[start:stop], X, sq)
        rows = np.arange(stop - start)
        D[rows, rows + start] = 0.0
        Dt = np.ascontiguousarray(D.T)
        fine_sums = None if fine_ET is None else np.ascontiguousarray(np.asarray(fine_ET @ Dt).T)
        for (codes, counts, ET, merge), res in zip(prepared, out):
            # (chunk, K): distance sums to each cluster
            if merge is None:
                sums = np.asarray(ET @ Dt).T
            else:
                perm, starts = merge
                sums = np.add.reduceat(fine_sums if perm is None else fine_sums[:, perm], starts, axis=1)
            own = codes[start:stop]
            a_sum = sums[rows, own].copy()
            sums[rows, own] = np.inf
            b = (sums / counts).min(axis=1)
            res[start:stop] = _a_b_to_s(a_sum, counts[own] - 1.0, b)
    return out


def _sampled_silhouette(
    X: np.ndarray, codes: np.ndarray, sample_size: int, chunk_size: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Silhouette with a stratified reference sample: exact on the sample, estimated elsewhere.

    Every block of work holds at most about ``_CHUNK_ENTRIES`` numbers whatever the number of
    clusters K: the exact sums of the reference points (n_ref x K in all) are built one block of
    references at a time, each block with its own pass over the rows. Returns (values, sampled
    mask, reference counts per cluster).
    """
    n = X.shape[0]
    counts = np.bincount(codes)
    k = counts.shape[0]
    want = np.ceil(sample_size * counts / n).astype(np.int64)
    # at least a few references per cluster, but never more than sample_size of them in minimums
    floor = max(1, min(_MIN_PER_CLUSTER, sample_size // k))
    m = np.minimum(counts, np.maximum(want, floor))
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    ref = np.sort(
        np.concatenate([rng.choice(order[bounds[c] : bounds[c + 1]], size=m[c], replace=False) for c in range(k)])
    )
    sampled = np.zeros(n, dtype=bool)
    sampled[ref] = True
    pos_in_ref = np.full(n, -1, dtype=np.int64)
    pos_in_ref[ref] = np.arange(ref.shape[0])
    ref_codes = codes[ref]
    X = X - X.mean(axis=0)
    R = X[ref]
    sq = np.einsum("ij,ij->i", X, X)
    ref_sq = sq[ref]
    ref_E = _onehot_for_sums(ref_codes, k)  # n_ref x K
    # the references' exact sums (their distances to every row, by cluster) come from the same distances as
    # the estimates, in the same pass, when they fit in one block; else from a pass per block of references
    single_pass = ref.shape[0] * k <= _CHUNK_ENTRIES
    exact_sums = np.zeros((ref.shape[0], k)) if single_pass else None
    est = np.empty(n)
    step = _auto_chunk(max(ref.shape[0], k), chunk_size)
    for start in range(0, n, step):  # every row's estimate from its distances to the references
        stop = min(start + step, n)
        D = _distances(X[start:stop], sq[start:stop], R, ref_sq)
        rows = np.arange(stop - start)
        in_ref = pos_in_ref[start:stop]
        hit = in_ref >= 0
        D[rows[hit], in_ref[hit]] = 0.0
        sums = np.asarray(D @ ref_E)  # (chunk, K): distance sums to each cluster's references
        own = codes[start:stop]
        a_sum = sums[rows, own].copy()
        sums[rows, own] = np.inf
        b = (sums / m).min(axis=1)
        # a point outside the sample is not one of its own references; the references' values follow
        est[start:stop] = _a_b_to_s(a_sum, m[own].astype(np.float64), b)
        if single_pass:
            _add_by_cluster(exact_sums, D, codes[start:stop], k)
    if single_pass:
        _reference_values(est, ref, ref_codes, counts, 0, exact_sums)
        return est, sampled, m
    ref_block = max(1, min(ref.shape[0], _CHUNK_ENTRIES // k))
    for r0 in range(0, ref.shape[0], ref_block):  # the references' exact values, a block of them at a time
        r1 = min(r0 + ref_block, ref.shape[0])
        exact_sums = np.zeros((r1 - r0, k))  # their distances to all N rows, summed by cluster
        inner = _auto_chunk(r1 - r0, chunk_size)
        for start in range(0, n, inner):
            stop = min(start + inner, n)
            D = _distances(X[start:stop], sq[start:stop], R[r0:r1], ref_sq[r0:r1])
            in_ref = pos_in_ref[start:stop]
            mine = (in_ref >= r0) & (in_ref < r1)
            D[np.flatnonzero(mine), in_ref[mine] - r0] = 0.0
            _add_by_cluster(exact_sums, D, codes[start:stop], k)
        _reference_values(est, ref, ref_codes, counts, r0, exact_sums)
    return est, sampled, m


def _onehot_for_sums(codes: np.ndarray, k: int):
    """The one-hot of ``codes`` that sums distances by cluster: dense for few clusters (a BLAS product on
    every core), sparse for many (its dense form would be larger than the distances)."""
    if k <= _DENSE_ONEHOT_K:
        return (codes[:, None] == np.arange(k)[None, :]).astype(np.float64)
    return _onehot(codes, k).tocsc()


def _add_by_cluster(target: np.ndarray, D: np.ndarray, row_codes: np.ndarray, k: int) -> None:
    """``target[j, c] += Σ D[i, j]`` over the rows ``i`` of cluster ``c`` (``row_codes``)."""
    target += np.asarray((_onehot_for_sums(row_codes, k).T @ D).T)


def _reference_values(est: np.ndarray, ref: np.ndarray, ref_codes: np.ndarray, counts: np.ndarray, r0: int,
                      exact_sums: np.ndarray) -> None:
    """The exact silhouettes of references ``r0 ..`` from their distance sums by cluster (changes the sums)."""
    r1 = r0 + exact_sums.shape[0]
    own = ref_codes[r0:r1]
    r_rows = np.arange(r1 - r0)
    a_sum = exact_sums[r_rows, own].copy()
    exact_sums[r_rows, own] = np.inf
    b = (exact_sums / counts).min(axis=1)
    est[ref[r0:r1]] = _a_b_to_s(a_sum, counts[own] - 1.0, b)


def hoeffding_bound(cluster_sizes: Any, sample_sizes: Any, confidence: float = 0.95) -> float:
    """Half-width of the Hoeffding interval for the stratified mean silhouette.

    The estimate is Σ_c (n_c/N) · (mean of the exact silhouettes of m_c points drawn without
    replacement from cluster c). Each term lies in [-1, 1], so by Hoeffding's inequality (which
    holds for sampling without replacement, Hoeffding 1963 §6) the estimate is within
    ``t = sqrt(2 ln(2/δ) Σ_c n_c² / (N² m_c))`` of the exact mean with probability ≥ 1 − δ, where
    δ = 1 − confidence and the sum runs over clusters not sampled whole. With proportional
    allocation (m_c = n·n_c/N) this is ``sqrt(2 ln(2/δ) / n)``: about 0.027 for n = 10,000 at 95%.
    """
    n_c = np.asarray(cluster_sizes, dtype=np.float64)
    m_c = np.asarray(sample_sizes, dtype=np.float64)
    partial = m_c < n_c
    if not partial.any():
        return 0.0
    total = n_c.sum()
    var = float((n_c[partial] ** 2 / (total**2 * m_c[partial])).sum())
    return math.sqrt(2.0 * math.log(2.0 / (1.0 - confidence)) * var)


def silhouette_analysis(
    X: Any,
    labels: Any,
    *,
    chunk_size: int | None = None,
    max_exact: int = 20000,
    sample_size: int = 10000,
    confidence: float = 0.95,
    random_state: int = 0,
    noise_label: Any = NOISE,
) -> Silhouette:
    """Euclidean silhouette per point, per cluster and overall, without an N x N matrix.

    For point i with own-cluster mean distance a(i) and smallest mean distance to another cluster
    b(i), s(i) = (b − a) / max(a, b); a point alone in its cluster gets 0 (as scikit-learn).

    **Exact path** (at most ``max_exact`` non-noise points): rows are processed in blocks of
    ``chunk_size``; each block's distances to all points are summed per cluster and discarded,
    so memory is O(chunk_size · N). Equals ``sklearn.metrics.silhouette_samples`` to rounding.

    **Sampled path** (more than ``max_exact`` points): a stratified random reference sample is
    drawn -- each cluster gets a share of ``sample_size`` proportional to its size, at least 10
    points (or the whole cluster; at least ``sample_size // K`` points, and one, when K > sample_size / 10). The reference points' silhouettes are computed *exactly*
    (their distances to all N points); every other point's a and b are *estimated* from its
    distances to the reference points of each cluster. Cost O(N · sample_size). The reported
    ``mean`` (and ``per_cluster``) is the size-weighted mean of the exact values on the reference
    sample, an unbiased estimate of the exact mean with the Hoeffding bound
    ``|mean − exact mean| ≤ sqrt(2 ln(2/δ) Σ_c n_c²/(N² m_c))`` ≈ ``sqrt(2 ln(2/δ)/sample_size)``
    with probability ≥ ``confidence`` = 1 − δ (returned as ``error_bound``; see
    :func:`hoeffding_bound`). The per-point estimates carry no guarantee of their own (their error
    shrinks like 1/sqrt(m_c)); the mean of ``samples`` is therefore not exactly ``mean``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The space the clustering ran in (usually the UMAP-reduced embeddings).
    labels : array-like of shape (n_samples,)
        Cluster labels; ``noise_label`` marks noise.
    chunk_size : int or None, default=None
        Rows per distance block; None picks a block of at most 64 MiB.
    max_exact : int, default=20000
        Largest number of non-noise points computed exactly (about 4·10⁸ distances at 20,000).
    sample_size : int, default=10000
        Total reference points on the sampled path.
    confidence : float, default=0.95
        Probability that goes with ``error_bound`` on the sampled path.
    random_state : int, default=0
        Seed of the reference sample (the result is deterministic for a given seed).
    noise_label : default=-1
        Points with this label are left out: they are neither scored (NaN) nor used as anyone's
        neighbours. Pass None to treat -1 as an ordinary cluster.

    Returns
    -------
    Silhouette
        ``samples`` is NaN for noise points. With fewer than 2 non-noise clusters the silhouette
        is undefined: every value and the mean are NaN (scikit-learn raises instead). When every
        cluster is a singleton all values are 0 (scikit-learn raises).
    """
    owner = "silhouette_analysis"
    X, labels = _check_X_labels(X, labels)
    chunk_size = _check_positive_int(chunk_size, "chunk_size", owner, allow_none=True)
    max_exact = _check_positive_int(max_exact, "max_exact", owner)
    sample_size = _check_positive_int(sample_size, "sample_size", owner)
    if not 0.0 < float(confidence) < 1.0:
        raise ParameterError(
            f"The 'confidence' parameter of {owner} must be a float in (0, 1). Got {confidence!r} instead."
        )
    n = X.shape[0]
    keep = np.ones(n, dtype=bool) if noise_label is None else labels != noise_label
    samples = np.full(n, np.nan)
    uniq, codes = _codes(labels[keep])
    if uniq.shape[0] < 2:
        per = {_py(u): math.nan for u in uniq}
        return Silhouette(samples, math.nan, per)
    Xk = X[keep]
    nk = Xk.shape[0]
    counts = np.bincount(codes)
    if nk <= max_exact:
        values = _exact_silhouettes(Xk, [codes], chunk_size)[0]
        samples[keep] = values
        per = {_py(u): float(values[codes == c].mean()) for c, u in enumerate(uniq)}
        return Silhouette(samples, float(values.mean()), per)
    rng = np.random.default_rng(random_state)
    values, sampled_k, m = _sampled_silhouette(Xk, codes, sample_size, chunk_size, rng)
    samples[keep] = values
    sampled = np.zeros(n, dtype=bool)
    sampled[np.flatnonzero(keep)[sampled_k]] = True
    per_vals = np.array([values[sampled_k & (codes == c)].mean() for c in range(uniq.shape[0])])
    mean = float((counts / nk * per_vals).sum())
    per = {_py(u): float(v) for u, v in zip(uniq, per_vals)}
    bound = hoeffding_bound(counts, m, confidence)
    return Silhouette(samples, mean, per, exact=False, error_bound=bound, confidence=float(confidence), sampled=sampled)


def silhouette_samples(
    X: Any,
    labels: Any,
    chunk_size: int | None = None,
    max_exact: int = 20000,
    sample_size: int = 10000,
    random_state: int = 0,
    *,
    noise_label: Any = NOISE,
) -> np.ndarray:
    """Euclidean silhouette of each point: exact and chunked up to ``max_exact`` points.

    A drop-in for ``sklearn.metrics.silhouette_samples(X, labels)`` that never builds an N x N
    matrix, leaves noise (-1) out (NaN) and returns NaN instead of raising when there are fewer
    than 2 clusters. Beyond ``max_exact`` points the values are exact on a stratified reference
    sample and estimated elsewhere; the error bound on their mean is given by
    :func:`silhouette_analysis`, which takes the same parameters and documents both paths.

    Returns
    -------
    ndarray of shape (n_samples,)

    Examples
    --------
    >>> X = [[0.0], [0.1], [1.0], [1.1]]
    >>> silhouette_samples(X, [0, 0, 1, 1]).round(3)
    array([0.905, 0.895, 0.895, 0.905])
    """
    return silhouette_analysis(
        X,
        labels,
        chunk_size=chunk_size,
        max_exact=max_exact,
        sample_size=sample_size,
        random_state=random_state,
        noise_label=noise_label,
    ).samples


# --------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------


def _py(value: Any) -> Any:
    """A numpy scalar as the plain Python value."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class Scores:
    """Every score of one clustering (see :func:`score_clustering`). NaN means "undefined";
    None means "not computed" (no embeddings, or no ground truth)."""

    n_samples: int
    n_clusters: int
    cluster_sizes: dict
    n_noise: int
    # label-free, need X
    silhouette: float | None = None
    silhouette_per_cluster: dict | None = None
    silhouette_samples: np.ndarray | None = field(default=None, repr=False)
    silhouette_exact: bool | None = None
    silhouette_error_bound: float | None = None
    silhouette_noise_as_cluster: float | None = None
    davies_bouldin: float | None = None
    calinski_harabasz: float | None = None
    # with ground truth
    n_labelled: int | None = None
    n_classes: int | None = None
    ami: float | None = None
    nmi: float | None = None
    ari: float | None = None
    ami_no_noise: float | None = None
    accuracy: float | None = None
    accuracy_rule: str | None = None
    pairwise_precision: float | None = None
    pairwise_recall: float | None = None
    pairwise_f: float | None = None
    bcubed_precision: float | None = None
    bcubed_recall: float | None = None
    bcubed_f: float | None = None
    f_pairwise_bcubed: float | None = None

    def to_dict(self, include_samples: bool = False) -> dict:
        """JSON-safe dict: plain floats/ints, NaN and Inf as None; the per-sample silhouette
        array only with ``include_samples=True``."""
        out = {}
        for f in fields(self):
            if f.name == "silhouette_samples" and not include_samples:
                continue
            out[f.name] = json_safe(getattr(self, f.name))
        return out


def score_clustering(
    labels_pred: Any,
    X: Any = None,
    labels_true: Any = None,
    accuracy_rule: str = "one-to-one",
    *,
    chunk_size: int | None = None,
    max_exact: int = 20000,
    sample_size: int = 10000,
    random_state: int = 0,
) -> Scores:
    """All scores of a clustering: label-free ones when ``X`` is given, labelled ones when
    ``labels_true`` is given.

    Parameters
    ----------
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids; -1 is noise.
    X : array-like of shape (n_samples, n_features), optional
        The space the clustering ran in (usually UMAP-reduced). Gives silhouette (see
        :func:`silhouette_analysis`), Davies-Bouldin and Calinski-Harabasz, all over the
        non-noise points, and NaN when undefined (fewer than 2 clusters, or as many clusters as
        points for the last two).
    labels_true : array-like of shape (n_samples,), optional
        Ground-truth classes (ints or class names). Rows whose label is missing (None, "" or NaN)
        are left out of the labelled scores; ``n_labelled`` says how many rows were used.
    accuracy_rule : {"one-to-one", "majority"}, default="one-to-one"
        See :func:`clustering_accuracy`; it is reported in ``accuracy_rule``.
    chunk_size, max_exact, sample_size, random_state
        Passed to :func:`silhouette_analysis`.

    Returns
    -------
    Scores

    Notes
    -----
    Noise (-1): one cluster for AMI, NMI and ARI, as in ZS (``ami_no_noise`` is AMI over the
    labelled non-noise points, given only when there is noise); singletons for pairwise and
    BCubed F; always wrong for accuracy; left out of silhouette, Davies-Bouldin and
    Calinski-Harabasz. ``silhouette_noise_as_cluster`` (given only when there is noise) is ZS's
    convention instead: the noise points form one more cluster and are scored (ZS Tables 4-5, where
    it makes HDBSCAN's silhouettes negative). ``n_clusters`` does not count noise.
    ``f_pairwise_bcubed`` is the harmonic mean of pairwise F and BCubed F, ES's headline figure.
    """
    from sklearn import metrics as skm

    pred = _as_labels(labels_pred, "labels_pred")
    if pred.dtype.kind not in "iu":
        try:
            as_int = pred.astype(np.int64)
        except (TypeError, ValueError):
            raise UsageError("labels_pred must hold integer cluster ids (-1 for noise)") from None
        if not np.array_equal(as_int, pred):
            raise UsageError("labels_pred must hold integer cluster ids (-1 for noise)")
        pred = as_int
    if accuracy_rule not in ACCURACY_RULES:
        raise ParameterError(
            f"The 'accuracy_rule' parameter of score_clustering must be one of {', '.join(ACCURACY_RULES)}. "
            f"Got {accuracy_rule!r} instead."
        )
    n = pred.shape[0]
    noise = pred == NOISE
    clusters, sizes = np.unique(pred[~noise], return_counts=True)
    scores = Scores(
        n_samples=n,
        n_clusters=int(clusters.shape[0]),
        cluster_sizes={int(c): int(s) for c, s in zip(clusters, sizes)},
        n_noise=int(noise.sum()),
    )

    if X is not None:
        Xa, _ = _check_X_labels(X, pred)
        sil = silhouette_analysis(
            Xa, pred, chunk_size=chunk_size, max_exact=max_exact, sample_size=sample_size, random_state=random_state
        )
        scores.silhouette = sil.mean
        scores.silhouette_per_cluster = sil.per_cluster
        scores.silhouette_samples = sil.samples
        scores.silhouette_exact = sil.exact
        scores.silhouette_error_bound = sil.error_bound
        if noise.any():
            scores.silhouette_noise_as_cluster = silhouette_analysis(
                Xa, pred, chunk_size=chunk_size, max_exact=max_exact, sample_size=sample_size,
                random_state=random_state, noise_label=None,
            ).mean
        k, m = scores.n_clusters, int((~noise).sum())
        if 1 < k < m:
            scores.davies_bouldin = float(skm.davies_bouldin_score(Xa[~noise], pred[~noise]))
            scores.calinski_harabasz = float(skm.calinski_harabasz_score(Xa[~noise], pred[~noise]))
        else:
            scores.davies_bouldin = scores.calinski_harabasz = math.nan

    if labels_true is not None:
        true, _ = _pair(labels_true, pred)
        labelled = ~missing_label_mask(true)
        t = true[labelled]
        if t.dtype == object:
            t = t.astype(str)
        p = pred[labelled]
        scores.n_labelled = int(labelled.sum())
        if scores.n_labelled == 0:
            raise UsageError(
                "labels_true has no labelled rows (all are None, empty or NaN)",
                hint="pass ground truth for at least some images, or score without it",
            )
        scores.n_classes = int(np.unique(t).shape[0])
        scores.ami = float(skm.adjusted_mutual_info_score(t, p))
        scores.nmi = float(skm.normalized_mutual_info_score(t, p))
        scores.ari = float(skm.adjusted_rand_score(t, p))
        if (p == NOISE).any():
            clean = p != NOISE
            scores.ami_no_noise = float(skm.adjusted_mutual_info_score(t[clean], p[clean])) if clean.any() else math.nan
        scores.accuracy = clustering_accuracy(t, p, accuracy_rule, noise_label=NOISE)
        scores.accuracy_rule = accuracy_rule
        scores.pairwise_precision, scores.pairwise_recall, scores.pairwise_f = pairwise_f_score(t, p, noise_label=NOISE)
        scores.bcubed_precision, scores.bcubed_recall, scores.bcubed_f = bcubed_f_score(t, p, noise_label=NOISE)
        scores.f_pairwise_bcubed = _harmonic(scores.pairwise_f, scores.bcubed_f)
    return scores
