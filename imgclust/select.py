"""Label-free choice of the number of clusters (METHODS.md §1, "Going beyond ZS").

ZS found that the silhouette in the UMAP space tracks AMI, so K can be chosen without labels by
sweeping it and reading the silhouette. The naive rule -- keep the K with the best silhouette --
collapses on data with a hierarchy: on CIFAR-10 (effnet-lite0, UMAP-50) the best silhouette is
at K = 2 (animals | vehicles, AMI 29) while every K from 5 to 16 gives AMI 41-43.

:func:`choose_n_clusters` builds one agglomerative tree (ward by default) on the reduced
embeddings, cuts it at every K in a range (the cuts are nested, so one tree serves all K), and
computes the exact mean silhouette of each cut. Then a rule reads the curve s(K):

``"finest-peak"`` (default)
    The local maxima ("peaks") of s(K), the two ends of the range included, mark levels of the
    hierarchy: splits up to a peak separate groups, splits past it cut through them. Candidates:

    1. the best silhouette;
    2. every peak that is *prominent* -- it rises at least ``min_prominence`` above the higher of
       its two valleys (topographic prominence, as ``scipy.signal.peak_prominences``) -- and
       *nearly as good* -- silhouette at least ``min_ratio`` times the best;
    3. when the best silhouette sits at the coarse end (K = ``k_min``): the best K past the first
       valley of the curve, if its silhouette is at least ``coarse_ratio`` times the best. Every
       hierarchy has a top split, and K = 2 is rarely what is wanted: if the finer levels keep
       more than about half of its silhouette, the data is "messy" (several classes under each
       top branch, as CIFAR-10) and the finer level is taken; if they keep less, the top split is
       clean and kept (two-class sets, well-separated blobs).

    The chosen K is the largest candidate: the finest level of structure that is still well
    separated. With a single peak this is the naive rule.
``"max"``
    The K with the best silhouette (the naive rule; ties go to the smaller K).

Evidence for the defaults (``min_ratio=0.65``, ``min_prominence=0.02``, ``coarse_ratio=0.55``):
25 sweeps -- imagenette-val and cifar10-test (effnet-lite0, UMAP-50; three UMAP seeds for
CIFAR-10, two for Imagenette), 14 class subsets of them (2 to 7 classes) and six make_blobs sets
(2, 5, 6, 8, 20 blobs; 3 groups of 4). Every setting in [0.6, 0.75] x [0.015, 0.02] x [0.5, 0.55]
made the same choices. Chosen K / AMI at it / AMI at the true K:

* imagenette-val: 9 / 90.4 / 93.1 (the naive rule: the same);
* cifar10-test, UMAP seeds 0, 1, 2: 5 / 42.9, 42.6, 41.7 / 42.4, 44.3, 43.9 (naive: K = 2, AMI 29);
* clean two-class subsets (imagenette pairs, cat-truck, deer-truck) and every make_blobs set:
  the true K;
* the price: weakly separated two-class subsets are over-split -- CIFAR-10 airplane-automobile
  K = 5 (AMI 37.7 vs 58.1 at K = 2), cat-dog K = 10 (11.1 vs 18.8). From the silhouette curve
  alone such a set cannot be told from CIFAR-10 itself (both: a peak at K = 5 with 0.73-0.75 of
  the K = 2 silhouette). Pass ``rule="max"`` or an explicit K when two groups are expected.

The thresholds were set on these sweeps (ward linkage only), so treat them as a calibrated
heuristic, not a law. The silhouette cannot say "one cluster": the smallest answer is ``k_min``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .clusterers._base import check_embeddings
from .errors import ParameterError, UsageError

__all__ = ["LINKAGES", "SELECTION_RULES", "Selection", "choose_from_curve", "choose_n_clusters", "cut_tree_labels"]

#: Rules :func:`choose_n_clusters` knows.
SELECTION_RULES = ("finest-peak", "max")
#: Linkages of the tree (euclidean distance).
LINKAGES = ("ward", "average", "complete")

_DEFAULT_K_CAP = 100


@dataclass
class Selection:
    """The outcome of :func:`choose_n_clusters`.

    Attributes
    ----------
    n_clusters : int
        The chosen K.
    rule : str
        The rule that chose it (``"finest-peak"`` or ``"max"``).
    silhouette : float
        Mean silhouette of the cut at the chosen K.
    ks, silhouettes : ndarray
        The sweep: every K tried and the mean silhouette of its cut (see :attr:`table`).
    best_k : int
        The K with the best silhouette (what the naive rule would pick).
    peaks : list of dict
        Every local maximum of the curve, and every candidate of the rule: ``k``, ``silhouette``,
        ``prominence`` (None if not a peak), ``ratio`` (to the best silhouette), ``accepted``
        (a candidate of "finest-peak") and ``why`` (which step made it one).
    linkage : str
        Tree linkage (euclidean distance).
    params : dict
        The rule's thresholds and the K range.
    n_used : int
        Points the tree was built on (fewer than the input when it was subsampled).
    sample_indices : ndarray or None
        Rows of the input that were used, when subsampled.
    labels : ndarray or None
        Labels (0..K-1) of the chosen cut, for every input row; None when subsampled.
    distance_threshold : float or None
        A ``distance_threshold`` for ``sklearn.cluster.AgglomerativeClustering(linkage=...)``
        on the same input that yields exactly the chosen K (midway between the two merge
        heights around the cut); None when subsampled.
    distance_threshold_zs : float or None
        The same threshold in ZS's normalised space (input centred, divided by its mean
        per-dimension std and by sqrt(d); METHODS.md §1).
    at_upper_bound : bool
        The chosen K is the top of the range while the curve still rises there: try a larger
        ``k_max``.
    """

    n_clusters: int
    rule: str
    silhouette: float
    ks: np.ndarray
    silhouettes: np.ndarray
    best_k: int
    peaks: list
    linkage: str
    params: dict
    n_used: int
    sample_indices: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    distance_threshold: float | None = None
    distance_threshold_zs: float | None = None
    at_upper_bound: bool = False

    @property
    def table(self) -> list[tuple[int, float]]:
        """The sweep as ``[(K, mean silhouette), ...]``."""
        return [(int(k), float(s)) for k, s in zip(self.ks, self.silhouettes)]

    def to_dict(self) -> dict:
        """JSON-safe summary (no per-point arrays; NaN as None)."""

        def num(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return {
            "n_clusters": self.n_clusters,
            "rule": self.rule,
            "silhouette": num(self.silhouette),
            "best_k": self.best_k,
            "linkage": self.linkage,
            "params": dict(self.params),
            "n_used": self.n_used,
            "subsampled": self.sample_indices is not None,
            "distance_threshold": self.distance_threshold,
            "distance_threshold_zs": self.distance_threshold_zs,
            "at_upper_bound": self.at_upper_bound,
            "peaks": [{k: (num(v) if isinstance(v, float) else v) for k, v in p.items()} for p in self.peaks],
            "table": [{"k": k, "silhouette": num(s)} for k, s in self.table],
        }


def cut_tree_labels(Z: np.ndarray, ks: Any) -> dict[int, np.ndarray]:
    """Flat labels of a scipy linkage matrix at several numbers of clusters.

    Unlike ``fcluster(..., "maxclust")`` every cut has exactly K clusters, even with tied merge
    heights (duplicate points): the cut at K undoes the last K-1 merges. Labels are 0..K-1,
    numbered in the order the clusters appear in the tree's leaf order.

    Parameters
    ----------
    Z : ndarray of shape (n_samples - 1, 4)
        A linkage matrix (``scipy.cluster.hierarchy.linkage``).
    ks : iterable of int
        Numbers of clusters, each in [1, n_samples].

    Returns
    -------
    dict
        K -> int64 array of shape (n_samples,).
    """
    Z = np.asarray(Z)
    n = Z.shape[0] + 1
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise UsageError(f"numbers of clusters must lie in [1, {n}]; got {ks}")
    children = Z[:, :2].astype(np.int64)
    sizes = np.concatenate([np.ones(n, dtype=np.int64), Z[:, 3].astype(np.int64)])
    # each node covers a contiguous range of the leaf order: walk down from the root
    start = np.zeros(2 * n - 1, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    stack = [2 * n - 2]
    while stack:
        node = stack.pop()
        if node < n:
            order[start[node]] = node
            continue
        left, right = children[node - n]
        start[left] = start[node]
        start[right] = start[node] + sizes[left]
        stack.extend((right, left))
    # split clusters top-down: going from K to K+1 undoes merge n-1-K (0-based)
    label_of_pos = np.zeros(n, dtype=np.int64)
    out: dict[int, np.ndarray] = {}
    want = set(ks)
    for k in range(1, ks[-1] + 1):
        if k > 1:
            left, right = children[n - k]
            s, e = start[right], start[right] + sizes[right]
            label_of_pos[s:e] = k - 1
        if k in want:
            labels = np.empty(n, dtype=np.int64)
            labels[order] = label_of_pos
            # renumber by first appearance in leaf order, 0..K-1
            _, first = np.unique(label_of_pos, return_index=True)
            remap = np.empty(k, dtype=np.int64)
            remap[np.argsort(first)] = np.arange(k)
            out[k] = remap[labels]
    return out


def _peaks(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of s (ends included) and their topographic prominence."""
    from scipy.signal import find_peaks, peak_prominences

    if s.shape[0] == 1:
        return np.array([0]), np.array([np.inf])
    if np.ptp(s) == 0:  # a flat curve has no peak: report its first point, prominence 0
        return np.array([0]), np.array([0.0])
    low = float(np.min(s)) - 1.0
    padded = np.concatenate([[low], s, [low]])
    idx, _ = find_peaks(padded)
    if idx.size == 0:  # a flat curve: its first point
        return np.array([0]), np.array([0.0])
    prom = peak_prominences(padded, idx)[0]
    # the padding is below every value, so a peak at an end is measured against the inner side only
    return idx - 1, prom


def choose_from_curve(
    ks: Any,
    silhouettes: Any,
    *,
    rule: str = "finest-peak",
    min_ratio: float = 0.65,
    min_prominence: float = 0.02,
    coarse_ratio: float = 0.55,
) -> tuple[int, list[dict]]:
    """Apply a selection rule to a silhouette curve (see the module docs for the rules).

    Parameters
    ----------
    ks : array-like of int
        Numbers of clusters, increasing.
    silhouettes : array-like of float
        Mean silhouette at each K.
    rule, min_ratio, min_prominence, coarse_ratio
        As in :func:`choose_n_clusters`.

    Returns
    -------
    k : int
        The chosen number of clusters.
    peaks : list of dict
        The local maxima and the candidates, as ``Selection.peaks``.

    Examples
    --------
    >>> choose_from_curve([2, 3, 4, 5, 6, 7], [0.55, 0.51, 0.37, 0.41, 0.37, 0.34])[0]
    5
    >>> choose_from_curve([2, 3, 4, 5, 6, 7], [0.55, 0.51, 0.37, 0.41, 0.37, 0.34], rule="max")[0]
    2
    """
    if rule not in SELECTION_RULES:
        raise ParameterError(
            f"The 'rule' parameter must be one of {', '.join(SELECTION_RULES)}. Got {rule!r} instead.",
            hint="finest-peak: finest well-separated level of the hierarchy; max: best silhouette",
        )
    ks = np.asarray(ks)
    sils = np.asarray(silhouettes, dtype=np.float64)
    if ks.ndim != 1 or ks.shape != sils.shape or ks.shape[0] == 0:
        raise UsageError("ks and silhouettes must be 1-D, of the same non-zero length")
    if not np.isfinite(sils).all():
        raise UsageError("silhouettes must be finite")
    best = int(np.argmax(sils))
    best_sil = float(sils[best])
    idx, prom = _peaks(sils)
    why: dict[int, str] = {best: "best silhouette"}
    if best_sil > 0:  # ratios mean nothing when no cut has a positive silhouette
        for i, p in zip(idx, prom):
            if p >= min_prominence and sils[i] >= min_ratio * best_sil:
                why.setdefault(int(i), "prominent peak")
        if best == 0 and len(sils) > 1 and sils[1] < sils[0]:
            valley = 0
            while valley + 1 < len(sils) and sils[valley + 1] < sils[valley]:
                valley += 1
            if valley + 1 < len(sils):
                past = valley + 1 + int(np.argmax(sils[valley + 1 :]))
                if sils[past] >= coarse_ratio * best_sil:
                    why.setdefault(past, "best past the coarse end")
    prominence = dict(zip(map(int, idx), map(float, prom)))
    peaks = [
        {
            "k": int(ks[i]),
            "silhouette": float(sils[i]),
            "prominence": prominence.get(i),
            "ratio": float(sils[i] / best_sil) if best_sil > 0 else None,
            "accepted": i in why,
            "why": why.get(i),
        }
        for i in sorted(set(prominence) | set(why))
    ]
    chosen = best if rule == "max" else max(why)
    return int(ks[chosen]), peaks


def _check_int(value: Any, name: str, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ParameterError(
            f"The '{name}' parameter of choose_n_clusters must be an int >= {low}"
            f"{' or None' if allow_none else ''}. Got {value!r} instead."
        )
    return int(value)


def _check_fraction(value: Any, name: str, hint: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not 0.0 <= v <= 1.0 or isinstance(value, bool):
        raise ParameterError(
            f"The '{name}' parameter of choose_n_clusters must be a float in [0, 1]. Got {value!r} instead.",
            hint=hint,
        )
    return v


def choose_n_clusters(
    X_reduced: Any,
    *,
    k_min: int = 2,
    k_max: int | None = None,
    rule: str = "finest-peak",
    linkage: str = "ward",
    min_ratio: float = 0.65,
    min_prominence: float = 0.02,
    coarse_ratio: float = 0.55,
    max_samples: int = 10000,
    random_state: int = 0,
    chunk_size: int | None = None,
) -> Selection:
    """Choose the number of clusters without labels, from the silhouette of nested tree cuts.

    Parameters
    ----------
    X_reduced : array-like of shape (n_samples, n_features)
        The embeddings to cluster, normally UMAP-reduced (ZS: silhouette in the UMAP space).
        The choice is invariant to translating or scaling them.
    k_min : int, default=2
        Smallest K tried (the silhouette needs 2).
    k_max : int or None, default=None
        Largest K tried; None means ``min(ceil(sqrt(n)), 100)`` (at least ``k_min``, at most
        n - 1). Every K in between is tried: cost O(n^2 * (k_max - k_min + 1)) arithmetic,
        about 10 s for n = 10,000 and K up to 100 on two cores.
    rule : {"finest-peak", "max"}, default="finest-peak"
        "finest-peak": the largest K among the candidates of the module docs (the best
        silhouette, prominent peaks nearly as good, and the best level past a coarse-end
        maximum); "max": the best silhouette (collapses to coarse levels of a hierarchy, e.g.
        K=2 on CIFAR-10).
    linkage : {"ward", "average", "complete"}, default="ward"
        Linkage of the tree, euclidean distance (ZS's most common choice is ward). The rule's
        thresholds were calibrated with ward.
    min_ratio : float in [0, 1], default=0.65
        A finer peak must reach this fraction of the best silhouette. 1 keeps only peaks as good
        as the best; 0 accepts any prominent peak.
    min_prominence : float in [0, 1], default=0.02
        A peak must rise this much (in silhouette units) above the higher of its two valleys;
        it screens out the wiggles of a flat curve.
    coarse_ratio : float in [0, 1], default=0.55
        When the best silhouette is at ``k_min``, the best K past the first valley is taken if it
        reaches this fraction of the best. 1 turns this step off (K = ``k_min`` stays).
    max_samples : int, default=10000
        Above this many points the tree and the silhouettes use a uniform random sample of this
        size (the tree needs O(n^2) memory: about 0.4 GB at 10,000). The chosen K is then meant
        for the whole set; ``labels`` and the thresholds are not given.
    random_state : int, default=0
        Seed of that sample. Everything else is deterministic.
    chunk_size : int or None
        Rows per distance block in the silhouette (see :func:`imgclust.metrics.silhouette_analysis`).

    Returns
    -------
    Selection
        The chosen K, the sweep table, the peaks and the rule.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(600, centers=4, cluster_std=0.5, random_state=0)
    >>> choose_n_clusters(X).n_clusters
    4
    """
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    from .metrics import _exact_silhouettes

    if rule not in SELECTION_RULES:
        raise ParameterError(
            f"The 'rule' parameter of choose_n_clusters must be one of {', '.join(SELECTION_RULES)}. "
            f"Got {rule!r} instead.",
            hint="finest-peak: finest well-separated level of the hierarchy; max: best silhouette",
        )
    if linkage not in LINKAGES:
        raise ParameterError(
            f"The 'linkage' parameter of choose_n_clusters must be one of {', '.join(LINKAGES)}. "
            f"Got {linkage!r} instead."
        )
    k_min = _check_int(k_min, "k_min", 2)
    k_max = _check_int(k_max, "k_max", 2, allow_none=True)
    max_samples = _check_int(max_samples, "max_samples", 3)
    chunk_size = _check_int(chunk_size, "chunk_size", 1, allow_none=True)
    min_ratio = _check_fraction(min_ratio, "min_ratio", "fraction of the best silhouette a finer peak must reach")
    min_prominence = _check_fraction(min_prominence, "min_prominence", "rise of a peak above its valleys")
    coarse_ratio = _check_fraction(
        coarse_ratio, "coarse_ratio", "fraction of the best silhouette a level past the coarse end must reach"
    )

    X = check_embeddings(X_reduced, "X_reduced").astype(np.float64, copy=False)
    n_all = X.shape[0]
    if n_all < 3:
        raise UsageError(
            f"choosing the number of clusters needs at least 3 samples; got {n_all}",
            hint="pass --n-clusters explicitly",
        )
    sample_indices = None
    if n_all > max_samples:
        rng = np.random.default_rng(random_state)
        sample_indices = np.sort(rng.choice(n_all, size=max_samples, replace=False))
        X = X[sample_indices]
    n = X.shape[0]
    if k_max is None:
        k_max = min(max(math.ceil(math.sqrt(n)), k_min), _DEFAULT_K_CAP)
    k_max = min(k_max, n - 1)
    if k_min > k_max:
        raise UsageError(
            f"no K to try: k_min={k_min} > k_max={k_max} (n_samples={n}; the silhouette needs K <= n - 1)",
            hint="lower --k-min or raise --k-max",
        )

    tree = scipy_linkage(X, method=linkage, metric="euclidean")
    ks = np.arange(k_min, k_max + 1)
    cuts = cut_tree_labels(tree, ks)
    sils = np.array([s.mean() for s in _exact_silhouettes(X, [cuts[int(k)] for k in ks], chunk_size)])

    k, peaks = choose_from_curve(
        ks, sils, rule=rule, min_ratio=min_ratio, min_prominence=min_prominence, coarse_ratio=coarse_ratio
    )
    chosen = int(np.flatnonzero(ks == k)[0])
    best = int(np.argmax(sils))
    k = int(ks[chosen])
    at_upper = bool(chosen == len(ks) - 1 and len(ks) > 1 and sils[-1] > sils[-2])

    labels = threshold = threshold_zs = None
    if sample_indices is None:
        labels = cuts[k]
        heights = tree[:, 2]
        lo, hi = heights[n - k - 1], heights[n - k]  # last merge kept, first merge undone
        if hi > lo:  # a tie leaves no threshold that gives exactly K
            threshold = float((lo + hi) / 2.0)
            scale = float(X.std(axis=0).mean() * math.sqrt(X.shape[1]))
            threshold_zs = threshold / scale if scale > 0 else None
    return Selection(
        n_clusters=k,
        rule=rule,
        silhouette=float(sils[chosen]),
        ks=ks,
        silhouettes=sils,
        best_k=int(ks[best]),
        peaks=peaks,
        linkage=linkage,
        params={
            "k_min": k_min,
            "k_max": k_max,
            "min_ratio": min_ratio,
            "min_prominence": min_prominence,
            "coarse_ratio": coarse_ratio,
        },
        n_used=n,
        sample_indices=sample_indices,
        labels=labels,
        distance_threshold=threshold,
        distance_threshold_zs=threshold_zs,
        at_upper_bound=at_upper,
    )
