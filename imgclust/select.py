"""Label-free choice of the number of clusters (METHODS.md §1, "Going beyond ZS").

:func:`choose_n_clusters` sweeps K with *the method that will return the clustering* -- same
clusterer, same parameters (agglomerative: its linkage and metric), same space (the UMAP
reduction for shallow methods, the raw embeddings for the trained heads) -- and reads a
criterion off the clusterings it made. The K it picks is therefore scored on exactly the
clustering :func:`imgclust.cluster` returns (the same labels when the sweep ran on every row).

K is swept, and the criteria curves (``silhouette``, ``merge_gap``, ``stability``) read off the
clusterings, by :mod:`imgclust.k_sweep`. Above ``Clusterer.auto_k_samples`` rows (10,000 for
agglomerative) the sweep runs on a uniform random sample of that size and the chosen K is then
applied to all rows.

Rules (:data:`SELECTION_RULES`, :mod:`imgclust.k_rules`) read K off those curves; the
default, ``silhouette-tree``, and the others are described and compared there and in
``BENCHMARKS.md``.

Doubt is reported, never hidden (:attr:`Selection.flags`): a pick at the edge of the searched
range (``edge``), a curve that does not decide (``flat``: the runner-up within ``flat_tolerance``),
a finer level chosen under a coarser split with a better silhouette (``hierarchy``), a finer cut
that is a clearer elbow of the merge tree than the pick (``elbow-below``: the largest merge gap
among the K that keep 55% of the pick's silhouette is above the pick's own and at least 1.1; the
default rule moves there, so only the other silhouette rules raise it), and data
with no cluster structure (``no-structure``): the best silhouette of the ward cuts of the swept
rows is less than ``structure_margin`` above that of one Gaussian sample with the same mean and
covariance, cut the same way (the reference distribution of the gap statistic: Tibshirani,
Walther & Hastie, JRSS B 2001). That test is about the data, so it uses ward for every method.

Cost: the tree needs O(m^2) memory and time (m = rows swept, at most 10,000: about 0.4 GB); the
silhouettes of every cut O(m^2 d + m K_max^2); the Gaussian reference doubles that, the stability
adds two trees on m/2 rows per repeat. For flat methods: one fit per grid value (three with the
stability). Nothing grows with the number of rows beyond the sample: at 1M rows selection costs
what it costs at 10,000 (``benchmarks/select_k.py`` reports the seconds).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .clusterers import CLUSTERERS, create_clusterer
from .clusterers._base import check_embeddings, sample_rows
from .errors import ParameterError, UsageError
from .k_rules import (DEFAULT_RULE, RULE_CURVES, SELECTION_RULES, Reading, apply_rule, choose_from_curve,
                      elbow_below)
from .k_sweep import (cut_tree_labels, gaussian_reference, merge_gap_curve, merge_tree, silhouette_curve,
                      stability_curve, sweep)
from .knn import Neighbours

__all__ = [
    "DEFAULT_RULE",
    "SELECTION_RULES",
    "Selection",
    "apply_rule",
    "choose_from_curve",
    "choose_n_clusters",
    "cut_tree_labels",
    "k_grid",
    "parse_k_range",
]

#: Largest K tried by default (the range is 2..min(DEFAULT_K_MAX, rows / MIN_CLUSTER_SIZE)).
DEFAULT_K_MAX = 200
#: Smallest mean cluster size the default range allows: K_max = rows / 10.
MIN_CLUSTER_SIZE = 10



@dataclass
class Selection:
    """The outcome of :func:`choose_n_clusters`.

    Attributes
    ----------
    n_clusters : int
        The chosen K.
    rule : str
        The rule that chose it.
    criterion : str
        The curve the rule reads first (``silhouette``, ``merge_gap`` or ``stability``).
    method, params : str, dict
        The clusterer swept and its parameters (the same that return the clustering).
    ks : ndarray
        Every K tried.
    curves : dict of str to ndarray
        One value per K of ``ks`` for each criterion computed (NaN where undefined, e.g. a
        clustering that came out with fewer than two clusters).
    candidates : list of dict
        The top three K by the rule, best first: ``k``, ``score`` (the criterion's value),
        ``silhouette``, ``stability`` (when computed) and ``why``.
    flags : list of str
        ``"edge"`` (the pick is an end of the searched range), ``"flat"`` (the candidates are
        within ``flat_tolerance`` of each other), ``"hierarchy"`` (a coarser cut has a better
        silhouette), ``"elbow-below"`` (a finer cut is a clearer elbow of the tree),
        ``"no-structure"`` (no better than a Gaussian).
    summary : str
        One line for people: the pick, or the doubt ("no clear number of clusters; candidates
        8, 12, 20").
    reference_silhouette : float
        Best silhouette of the Gaussian reference (NaN when not computed).
    n_used : int
        Rows the sweep ran on (fewer than the input when it was subsampled).
    sample_indices : ndarray or None
        Rows of the input that were used, when subsampled.
    labels : ndarray or None
        The labels of the chosen clustering for every input row; None when subsampled.
    estimator : Clusterer or None
        The fitted clusterer behind ``labels`` (None when subsampled); not serialised.
    seconds : float
        Wall time of the selection.
    """

    n_clusters: int
    rule: str
    criterion: str
    method: str
    params: dict
    ks: np.ndarray
    curves: dict
    candidates: list
    flags: list
    summary: str
    reference_silhouette: float
    k_range: tuple[int, int]
    n_used: int
    seconds: float
    sample_indices: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    estimator: Any = field(default=None, repr=False, compare=False)

    @property
    def confident(self) -> bool:
        """No flag was raised."""
        return not self.flags

    @property
    def silhouette(self) -> float:
        """Mean silhouette of the chosen clustering (on the swept rows)."""
        return float(self.curves["silhouette"][int(np.flatnonzero(self.ks == self.n_clusters)[0])])

    def curve(self, name: str | None = None) -> list[tuple[int, float | None]]:
        """``[(K, value), ...]`` of a criterion (the rule's own by default)."""
        values = self.curves[name or self.criterion]
        return [(int(k), _num(v)) for k, v in zip(self.ks, values)]

    def to_dict(self) -> dict:
        """JSON-safe summary (no per-point arrays; NaN and inf as None)."""
        return {
            "n_clusters": self.n_clusters,
            "rule": self.rule,
            "criterion": self.criterion,
            "method": self.method,
            "params": dict(self.params),
            "k_range": list(self.k_range),
            "confident": self.confident,
            "flags": list(self.flags),
            "summary": self.summary,
            "candidates": [{k: (_num(v) if isinstance(v, float) else v) for k, v in c.items()} for c in self.candidates],
            "reference_silhouette": _num(self.reference_silhouette),
            "n_used": self.n_used,
            "subsampled": self.sample_indices is not None,
            "seconds": round(self.seconds, 3),
            "table": [
                {"k": int(k), **{name: _num(values[i]) for name, values in self.curves.items()}}
                for i, k in enumerate(self.ks)
            ],
        }


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------------------------------
# the range of K


def parse_k_range(text: str) -> tuple[int, int]:
    """``"2:200"`` -> ``(2, 200)`` (the CLI's ``--k-range``)."""
    lo, sep, hi = str(text).partition(":")
    try:
        k_min, k_max = int(lo), int(hi)
    except ValueError:
        k_min = k_max = -1
    if not sep or k_min < 2 or k_max < k_min:
        raise UsageError(f"--k-range must be MIN:MAX with 2 <= MIN <= MAX, got {text!r}", hint="e.g. --k-range 2:200")
    return k_min, k_max


def k_grid(k_min: int, k_max: int, max_points: int | None = None) -> np.ndarray:
    """The K values of a sweep: every K in [k_min, k_max], or at most ``max_points`` of them.

    A thinned grid is geometric, ends included, with duplicates after rounding replaced by more
    points: so it holds every small K while the geometric step is below 1 (with 40 points over
    2..200: every K from 2 to 11).

    >>> k_grid(2, 8).tolist()
    [2, 3, 4, 5, 6, 7, 8]
    >>> k_grid(2, 200, 12).tolist()
    [2, 3, 5, 7, 11, 16, 25, 37, 57, 87, 132, 200]
    """
    every = np.arange(k_min, k_max + 1)
    if max_points is None or every.size <= max_points:
        return every
    if max_points < 2:
        raise ParameterError(f"a K grid needs at least 2 points; got {max_points}")
    for extra in range(0, every.size):
        ks = np.unique(np.round(np.geomspace(k_min, k_max, max_points + extra)).astype(np.int64))
        if ks.size >= max_points:
            break
    ks = np.unique(np.concatenate([ks[: max_points - 1], [k_max]]))
    return ks


def _candidates(ks: np.ndarray, reading: Reading, curves: dict, n: int = 3) -> list[dict]:
    """The top ``n`` K of a reading, with every curve's value there."""
    out = []
    for rank, i in enumerate(reading.ranking[:n]):
        entry = {"k": int(ks[i]), "score": float(reading.score[i])}
        entry.update({name: float(values[i]) for name, values in curves.items()})
        entry["why"] = reading.why if rank == 0 else "runner-up"
        out.append(entry)
    return out


def _summary(k: int, candidates: list[dict], flags: list[str], criterion: str, k_range: tuple[int, int],
             data_best: float, reference_best: float, hierarchy: tuple | None = None,
             elbow: tuple | None = None) -> str:
    others = ", ".join(str(c["k"]) for c in candidates)
    if "no-structure" in flags:
        return (f"no cluster structure found: best silhouette {data_best:.2f}, a single Gaussian with the same "
                f"covariance gives {reference_best:.2f}; K = {k} is arbitrary (candidates {others})")
    if flags:
        why = []
        if "edge" in flags:
            why.append(f"the pick is at the edge of the searched range {k_range[0]}:{k_range[1]}; try a wider --k-range")
        if "flat" in flags:
            why.append(f"the {criterion.replace('_', ' ')} curve is flat between them")
        if "hierarchy" in flags and hierarchy is not None:
            why.append(f"K = {k} is a finer level under a cleaner split into {hierarchy[0]} "
                       f"(silhouette {hierarchy[1]:.2f} against {hierarchy[2]:.2f})")
        if "elbow-below" in flags and elbow is not None:
            why.append(f"the tree's clearest elbow is finer, at K = {elbow[0]} (merge gap {elbow[1]:.2f} against "
                       f"{elbow[2]:.2f} at K = {k})")
        return f"no clear number of clusters; candidates {others} ({'; '.join(why)})"
    runners_up = ", ".join(str(c["k"]) for c in candidates[1:]) or "none"
    return f"K = {k} ({criterion.replace('_', ' ')} {candidates[0]['score']:.3g}; runners-up {runners_up})"


def _check_fraction(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not 0.0 <= v <= 1.0:
        raise ParameterError(f"The '{name}' parameter of choose_n_clusters must be a float in [0, 1]. Got {value!r} instead.")
    return v


def _check_int(value: Any, name: str, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ParameterError(
            f"The '{name}' parameter of choose_n_clusters must be an int >= {low}"
            f"{' or None' if allow_none else ''}. Got {value!r} instead."
        )
    return int(value)


def choose_n_clusters(
    X: Any,
    method: str = "agglomerative",
    params: dict | None = None,
    *,
    k_min: int = 2,
    k_max: int | None = None,
    rule: str = DEFAULT_RULE,
    max_samples: int | None = None,
    plateau: float = 0.02,
    flat_tolerance: float = 0.02,
    structure_margin: float = 0.1,
    stability_repeats: int = 2,
    random_state: int = 0,
    keep_estimator: bool = True,
    views: np.ndarray | None = None,
    on_fit: Callable[[int, int], None] | None = None,
    neighbours: Neighbours | None = None,
) -> Selection:
    """Choose the number of clusters without labels, on the method's own clusterings.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The data the method clusters: the UMAP reduction for shallow methods, the raw embeddings
        for trained heads (``Clusterer.input_space``). Silhouettes are euclidean in this space.
    method : str, default="agglomerative"
        A registered method that takes K (``imgclust methods``).
    params : dict or None
        The method's parameters, exactly as for the clustering that is returned.
    k_min, k_max : int
        The searched range. ``k_max=None``: ``min(200, rows / 10)``, at least ``k_min``.
    rule : str, default="silhouette-tree"
        One of :data:`SELECTION_RULES` (``silhouette-tree``, ``silhouette-levels``, ``silhouette-gap``,
        ``silhouette``, ``merge-gap``, ``stability``); see :mod:`imgclust.k_rules`. ``BENCHMARKS.md``
        compares them.
    max_samples : int or None
        Rows the sweep may use (a uniform random sample above it); None: the method's
        ``auto_k_samples`` (10,000 for agglomerative, 5,000 for other shallow methods, 2,000 for
        trained heads).
    plateau : float in [0, 1], default=0.02
        silhouette-gap: K whose silhouette is within this fraction of the silhouette pick, in one
        run around it, compete on silhouette + 0.02 ln(merge gap).
    flat_tolerance : float in [0, 1], default=0.02
        The curve is "flat" when the runner-up's score is within this fraction of the pick's.
    structure_margin : float, default=0.1
        "no structure" when the best silhouette is less than this above the Gaussian reference's.
    stability_repeats : int, default=2
        Random half-splits per K for the stability curve (rules that read it).
    random_state : int, default=0
        Seed of the sample, of the method and of the references.
    keep_estimator : bool, default=True
        Keep the fitted clusterer of the chosen K (when the sweep used every row), so that the
        caller returns exactly that clustering without fitting again.
    views : ndarray of shape (n_samples, n_views, n_features) or None
        Augmented-view embeddings, for methods that train on them (``cc``).
    on_fit : callable(done, total) or None
        Called after each fit of a method fitted once per K (progress); with ``(0, 1)`` before and ``(1, 1)``
        after the sweep of a tree method, which fits once for every K.
    neighbours : imgclust.knn.Neighbours or None
        The kNN graphs of ``X``'s rows, shared with the caller (used when the sweep takes every row).

    Returns
    -------
    Selection

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> X, _ = make_blobs(600, centers=4, cluster_std=0.5, random_state=0)
    >>> choose_n_clusters(X).n_clusters
    4
    """
    started = time.perf_counter()
    if rule not in SELECTION_RULES:
        raise ParameterError(
            f"The 'rule' parameter of choose_n_clusters must be one of {', '.join(SELECTION_RULES)}. Got {rule!r} instead.",
            hint=f"{DEFAULT_RULE} is the measured default (BENCHMARKS.md)",
        )
    cls = CLUSTERERS.get(method)
    if cls.n_clusters_mode == "unused":
        raise UsageError(f"{method} finds the number of clusters itself; 'auto' does not apply", hint="drop --n-clusters")
    params = dict(params or {})
    params.pop("distance_threshold", None)  # K replaces the threshold
    k_min = _check_int(k_min, "k_min", 2)
    k_max = _check_int(k_max, "k_max", 2, allow_none=True)
    max_samples = _check_int(max_samples, "max_samples", 3, allow_none=True) or cls.auto_k_samples
    plateau = _check_fraction(plateau, "plateau")
    flat_tolerance = _check_fraction(flat_tolerance, "flat_tolerance")
    stability_repeats = _check_int(stability_repeats, "stability_repeats", 1)
    create_clusterer(method, n_clusters=k_min, random_state=random_state, **params)  # bad parameters fail first
    if rule == "merge-gap" and not cls.nested_k:
        raise UsageError(f"the merge-gap rule needs a merge tree; {method} has none",
                         hint=f"use rule {DEFAULT_RULE}, silhouette or stability")

    X = check_embeddings(X, "X")
    n_all = X.shape[0]
    if n_all < 3:
        raise UsageError(f"choosing the number of clusters needs at least 3 samples; got {n_all}",
                         hint="pass --n-clusters explicitly")
    sample_indices = None
    if n_all > max_samples:
        sample_indices = sample_rows(n_all, max_samples, random_state)
        X = X[sample_indices]
        views = None if views is None else views[sample_indices]
    X = X.astype(np.float64, copy=False)  # only the rows swept: never a float64 copy of every row
    n = X.shape[0]
    if k_max is None:
        k_max = max(k_min, min(DEFAULT_K_MAX, n // MIN_CLUSTER_SIZE))
    k_max = min(k_max, n - 1)
    if k_min > k_max:
        raise UsageError(f"no K to try: k_min={k_min} > k_max={k_max} ({n} rows; the silhouette needs K <= rows - 1)",
                         hint="lower the start of --k-range")
    ks = k_grid(k_min, k_max, None if cls.nested_k else cls.auto_k_fits)

    if cls.nested_k and on_fit is not None:
        on_fit(0, 1)  # one tree serves every K: the bar shows from the start, and the time the sweep takes
    swept = sweep(X, method, params, ks, random_state, keep=keep_estimator and sample_indices is None,
                  views=views, on_fit=on_fit, neighbours=neighbours if sample_indices is None else None)
    curves = {"silhouette": silhouette_curve(X, swept.labels, ks)}
    if swept.heights is not None:
        curves["merge_gap"] = merge_gap_curve(swept.heights, ks)
    if "stability" in RULE_CURVES[rule]:
        curves["stability"] = stability_curve(X, method, params, ks, stability_repeats, random_state, views)
    if not np.isfinite(curves["silhouette"]).any():
        raise UsageError(f"{method} made fewer than two clusters at every K in {k_min}:{k_max}",
                         hint="try another --k-range or method")

    # no structure: the best ward silhouette is no better than that of one Gaussian with the same covariance
    if cls.nested_k and params.get("linkage", "ward") == "ward" and params.get("connectivity_neighbors") is None:
        data_curve = curves["silhouette"]
    else:
        data_curve = silhouette_curve(X, cut_tree_labels(merge_tree(X), ks), ks)
    reference = gaussian_reference(X, random_state)
    reference_curve = silhouette_curve(reference, cut_tree_labels(merge_tree(reference), ks), ks)
    data_best, reference_best = float(np.nanmax(data_curve)), float(np.nanmax(reference_curve))
    if cls.nested_k and on_fit is not None:
        on_fit(1, 1)

    reading = apply_rule(rule, ks, curves, plateau, flat_tolerance)
    chosen, criterion = reading.index, reading.criterion
    k = int(ks[chosen])
    below = elbow_below(curves, chosen) if criterion == "silhouette" else None
    if below is not None and below not in reading.ranking[:3]:
        reading.ranking.insert(1, below)  # the doubt is named among the candidates
    candidates = _candidates(ks, reading, curves)
    flags = []
    if data_best < reference_best + structure_margin:
        flags.append("no-structure")
    if len(ks) > 1 and (chosen == len(ks) - 1 or (chosen == 0 and k_min > 2)):
        flags.append("edge")
    if reading.flat:
        flags.append("flat")
    sil = curves["silhouette"]
    coarser = [i for i in range(chosen) if np.isfinite(sil[i]) and sil[i] > sil[chosen] + flat_tolerance * abs(sil[chosen])]
    if coarser:  # a finer level was preferred over a cleaner coarse split (CIFAR-10: 5 over animals | vehicles)
        flags.append("hierarchy")
        top = max(coarser, key=lambda i: sil[i])
        hierarchy = (int(ks[top]), float(sil[top]), float(sil[chosen]))
    else:
        hierarchy = None
    elbow = None
    if below is not None:
        flags.append("elbow-below")
        gap = curves["merge_gap"]
        elbow = (int(ks[below]), float(gap[below]), float(gap[chosen]))
    labels = estimator = None
    if sample_indices is None:
        labels = swept.labels[k]
        estimator = swept.estimators.get(k)
    return Selection(
        n_clusters=k, rule=rule, criterion=criterion, method=method, params=params, ks=ks, curves=curves,
        candidates=candidates, flags=flags,
        summary=_summary(k, candidates, flags, criterion, (k_min, k_max), data_best, reference_best, hierarchy, elbow),
        reference_silhouette=reference_best, k_range=(k_min, k_max), n_used=n,
        seconds=time.perf_counter() - started, sample_indices=sample_indices, labels=labels, estimator=estimator)
