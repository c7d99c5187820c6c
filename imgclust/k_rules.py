"""Rules that read the number of clusters off the curves of a sweep (:mod:`imgclust.select`).

Every rule is a pure function of the curves (one value per K): ``silhouette``, ``merge_gap`` and
``stability``, as :func:`imgclust.select.choose_n_clusters` computes them. :func:`apply_rule` reads
one rule's K, its runners-up and whether the curve decided; ``benchmarks/select_k.py`` reads every
rule off one sweep with it.

Rules (:data:`SELECTION_RULES`):

``silhouette``
    The finest well-separated level of the silhouette curve (:func:`choose_from_curve`): the
    largest K among the best silhouette, prominent peaks nearly as good, and the best K past a
    coarse-end maximum.
``merge-gap``
    The K with the largest relative merge-height gap.
``stability``
    The K with the highest stability.
``silhouette-gap`` (ours; the default before ``silhouette-levels``)
    The silhouette rule, corrected by the tree's merge gaps where the silhouette cannot decide:
    (1) when the silhouette's pick is the top split (K = 2) and a finer cut keeps at least 55% of
    its silhouette with a merge gap of at least 30% of the top split's (both gaps measured above 1),
    the finer cut with the largest gap wins (CIFAR-10's animals | vehicles hides its classes);
    (2) otherwise, among the K next to the silhouette's pick whose silhouette is within
    ``plateau`` (2%) of it, the best silhouette + 0.02 ln(merge gap) wins (Imagenette: 9, 10 and
    11 tie on silhouette; the tree's elbow is at 10). Without a tree it is the silhouette rule.
    Its thresholds were set on the calibration sets of ``benchmarks/select_k.py``.
``silhouette-levels`` (ours; the default before ``silhouette-tree``)
    ``silhouette-gap`` with the silhouette read level by level (:data:`LEVEL_READING`): a
    prominent finer peak is kept when it has 60% of the silhouette of the level directly above it
    (the nearest coarser peak with a better silhouette) instead of 65% of the best, and a bump
    past a falling coarse end must be a prominent peak to replace the top split (else the
    top-split step reads the tree). Two data sets side by side, one with sharp clusters and one
    with loose ones (Imagenette + CIFAR-10), have a top split far cleaner than any finer level; a
    finer level is judged against its parent.
``silhouette-tree`` (default; ours)
    ``silhouette-levels`` read closer to the tree, in three changes: (3) when a finer cut that keeps
    ``COARSE_RATIO`` (55%) of the pick's silhouette has a larger merge gap than the pick's own, and at
    least ``MIN_ELBOW_GAP`` (a 10% jump in merge height), the clearest such elbow wins, and again from
    there (:func:`elbow_below`); (1') the top split gives way to a finer elbow with a quarter of its
    gap (0.25, not 0.3); and a finer level must rise 0.03, not 0.02, above its valleys
    (:data:`TREE_READING`), so that a chain of small bumps cannot walk the pick down to the end of
    the range. Two sets side by side whose silhouette peaks with the looser set as one cluster (5
    Imagenette + 5 CIFAR-10 classes: K = 6) take the tree's elbow under it (K = 7).

``benchmarks/select_k.py`` measures every rule on four groups of sets: the calibration sets every
threshold up to ``silhouette-levels`` was chosen on, held-out sets (the first two changes of
``silhouette-tree`` were found on them), fresh sets (its prominence was found on them) and exam
sets that no rule was chosen or changed on. ``silhouette-tree`` has the smallest worst-case loss
of AMI against the true K over all of them, and is not within 2 points everywhere (``BENCHMARKS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .errors import ParameterError, UsageError

#: The coarse-end step (silhouette-gap and after): a finer cut must keep this share of the top split's
#: silhouette (the silhouette rule's coarse_ratio); the share of its merge gap is SilhouetteRule.coarse_gap.
COARSE_RATIO = 0.55
#: An elbow of the tree below a pick (elbow_below) is a jump of at least 10% in merge height: where every
#: gap is about 1 (a range of over-split cuts) there is no elbow to move to.
MIN_ELBOW_GAP = 1.1
#: silhouette-gap's plateau step: weight of ln(merge gap) added to the silhouette (a tree elbow
#: twice as high as its neighbours is worth 0.014 of silhouette).
GAP_WEIGHT = 0.02
#: silhouette-levels: how :func:`choose_from_curve` reads the silhouette (each finer level against
#: the level above it, at 60%; a coarse-end bump must be a prominent peak to beat the top split).
LEVEL_READING = {"ratio_to": "level", "min_ratio": 0.6, "coarse_prominence": 0.02}
#: silhouette-tree: the levels reading with finer levels rising at least 0.03 above their valleys (a
#: chain of 0.02 bumps walked digits' 5 classes down to K = 90 on the fresh sets of select_k.py).
TREE_READING = {**LEVEL_READING, "min_prominence": 0.03}


@dataclass(frozen=True)
class SilhouetteRule:
    """How a silhouette rule reads the curves (see the module docs for the steps)."""

    reading: dict  # choose_from_curve's parameters
    reads_tree: bool = True  # steps 1 and 2 (the coarse end and the plateau), when the sweep has a tree
    coarse_gap: float = 0.3  # step 1: share of the top split's merge gap (above 1) a finer elbow needs
    moves_to_elbow: bool = False  # step 3: to a clearer elbow of the tree below the pick


#: The silhouette rules; adding one is adding an entry.
SILHOUETTE_RULES = {
    "silhouette-tree": SilhouetteRule(TREE_READING, coarse_gap=0.25, moves_to_elbow=True),
    "silhouette-levels": SilhouetteRule(LEVEL_READING),
    "silhouette-gap": SilhouetteRule({}),
    "silhouette": SilhouetteRule({}, reads_tree=False),
}
#: Rules :func:`imgclust.select.choose_n_clusters` knows.
SELECTION_RULES = (*SILHOUETTE_RULES, "merge-gap", "stability")
DEFAULT_RULE = "silhouette-tree"

#: The curves each rule reads (the sweep computes the stability curve only for a rule that reads it).
RULE_CURVES = {
    **{name: ("silhouette", "merge_gap") if rule.reads_tree else ("silhouette",) for name, rule in SILHOUETTE_RULES.items()},
    "merge-gap": ("merge_gap",),
    "stability": ("stability",),
}


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
    if idx.size == 0:
        return np.array([0]), np.array([0.0])
    prom = peak_prominences(padded, idx)[0]
    # the padding is below every value, so a peak at an end is measured against the inner side only
    return idx - 1, prom


def choose_from_curve(
    ks: Any,
    silhouettes: Any,
    *,
    min_ratio: float = 0.65,
    min_prominence: float = 0.02,
    coarse_ratio: float = 0.55,
    ratio_to: str = "best",
    coarse_prominence: float = 0.0,
) -> tuple[int, list[dict]]:
    """The ``silhouette`` rule: the finest well-separated level of a silhouette curve.

    The local maxima ("peaks") of s(K), the two ends of the range included, mark levels of the
    hierarchy: splits up to a peak separate groups, splits past it cut through them. Candidates:

    1. the best silhouette;
    2. every peak that is *prominent* -- it rises at least ``min_prominence`` above the higher of
       its two valleys (topographic prominence, as ``scipy.signal.peak_prominences``) -- and
       *nearly as good* -- silhouette at least ``min_ratio`` times the best;
    3. when the best silhouette sits at the coarse end: the best K past the first valley of the
       curve, if its silhouette is at least ``coarse_ratio`` times the best (every hierarchy has a
       top split, and K = 2 is rarely what is wanted; on CIFAR-10 it is animals | vehicles).

    The chosen K is the largest candidate. The thresholds were calibrated on ward sweeps of
    effnet-lite0 UMAP embeddings (imagenette, CIFAR-10 and subsets) and make_blobs sets.

    Parameters
    ----------
    ks : array-like of int
        Numbers of clusters, increasing.
    silhouettes : array-like of float
        Mean silhouette at each K (NaN where undefined: never a candidate).
    min_ratio, min_prominence, coarse_ratio : float
        The thresholds of candidates 2 and 3 above.
    ratio_to : {"best", "level"}, default="best"
        What a prominent peak's silhouette is measured against: the best silhouette, or the
        *level directly above it* -- the nearest coarser K that is the best or a prominent peak
        with a higher silhouette. With ``"level"`` a fine level under a fine level under a clean
        top split is judged against its parent, not against the top split (two data sets side
        by side, one with sharp clusters and one with loose ones).
    coarse_prominence : float, default=0.0
        Candidate 3 must also be a peak at least this prominent (0: any K past the valley).

    Returns
    -------
    k : int
        The chosen number of clusters.
    candidates : list of dict
        ``k``, ``silhouette``, ``prominence`` (None if not a peak), ``ratio`` (to the best),
        ``accepted`` and ``why``, for every peak and candidate, by increasing K.

    Examples
    --------
    >>> choose_from_curve([2, 3, 4, 5, 6, 7], [0.55, 0.51, 0.37, 0.41, 0.37, 0.34])[0]
    5
    """
    ks = np.asarray(ks)
    sils = np.asarray(silhouettes, dtype=np.float64)
    if ks.ndim != 1 or ks.shape != sils.shape or ks.shape[0] == 0:
        raise UsageError("ks and silhouettes must be 1-D, of the same non-zero length")
    finite = np.isfinite(sils)
    if not finite.any():
        raise UsageError("no K gave a clustering with at least two clusters", hint="try another --k-range or method")
    ks, sils = ks[finite], sils[finite]
    best = int(np.argmax(sils))
    best_sil = float(sils[best])
    if ratio_to not in ("best", "level"):
        raise ParameterError(f"ratio_to must be 'best' or 'level'; got {ratio_to!r}")
    idx, prom = _peaks(sils)
    prominence = dict(zip(map(int, idx), map(float, prom)))
    levels = sorted({best} | {int(i) for i, p in zip(idx, prom) if p >= min_prominence})
    why: dict[int, str] = {best: "best silhouette"}
    if best_sil > 0:  # ratios mean nothing when no cut has a positive silhouette
        for i in levels:
            above = [j for j in levels if j < i and sils[j] > sils[i]]
            reference = sils[above[-1]] if ratio_to == "level" and above else best_sil
            if prominence.get(i, 0.0) >= min_prominence and sils[i] >= min_ratio * reference:
                why.setdefault(i, "prominent peak")
        if best == 0 and len(sils) > 1 and sils[1] < sils[0]:
            valley = 0
            while valley + 1 < len(sils) and sils[valley + 1] < sils[valley]:
                valley += 1
            if valley + 1 < len(sils):
                past = valley + 1 + int(np.argmax(sils[valley + 1 :]))
                if sils[past] >= coarse_ratio * best_sil and prominence.get(past, 0.0) >= coarse_prominence:
                    why.setdefault(past, "best past the coarse end")
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
    return int(ks[max(why)]), peaks


def _local_maxima(values: np.ndarray) -> np.ndarray:
    """Indices of the local maxima of a curve (ends included; NaN never), highest first."""
    v = np.where(np.isfinite(values), values, -np.inf)
    left = np.concatenate([[-np.inf], v[:-1]])
    right = np.concatenate([v[1:], [-np.inf]])
    idx = np.flatnonzero((v >= left) & (v >= right) & np.isfinite(v))
    return idx[np.argsort(-v[idx], kind="stable")]


def _plateau(s: np.ndarray, at: int, tolerance: float) -> np.ndarray:
    """Indices of the contiguous run of K around ``at`` whose silhouette is within ``tolerance``
    (relative, either way) of s[at]."""
    width = tolerance * abs(s[at])

    def near(i: int) -> bool:
        return bool(np.isfinite(s[i]) and abs(s[i] - s[at]) <= width)

    lo = hi = at
    while lo - 1 >= 0 and near(lo - 1):
        lo -= 1
    while hi + 1 < len(s) and near(hi + 1):
        hi += 1
    return np.arange(lo, hi + 1)


@dataclass
class Reading:
    """What a rule reads off the curves: the pick, its runners-up and whether the curve decided."""

    index: int  # into ks
    criterion: str  # the curve reported as the score
    score: np.ndarray
    why: str
    ranking: list  # indices into ks, best first (the pick first)
    flat: bool  # the runner-up is as good as the pick by what decided it


def _ranked(values: np.ndarray, first: list) -> list:
    """``first``, then the local maxima of ``values`` (highest first), then every other finite K by value."""
    finite = np.where(np.isfinite(values), values, -np.inf)
    rest = [int(i) for i in np.argsort(-finite, kind="stable") if np.isfinite(values[i])]
    return list(dict.fromkeys([*first, *map(int, _local_maxima(values)), *rest]))


def _gap_is_flat(gap: np.ndarray, ranking: list, gap_margin: float) -> bool:
    """The largest gap is not clearly larger than the next: (g2 - 1) >= (1 - gap_margin) (g1 - 1)."""
    if len(ranking) < 2:
        return False
    g1, g2 = gap[ranking[0]], gap[ranking[1]]
    return bool(np.isfinite(g1) and g2 - 1 >= (1 - gap_margin) * (g1 - 1))


def apply_rule(rule: str, ks: np.ndarray, curves: dict, plateau: float = 0.02, flat_tolerance: float = 0.02,
               gap_margin: float = 0.2) -> Reading:
    """Read K off computed curves (``Selection.curves``) with ``rule``.

    Lets one sweep be read by every rule whose curves it holds (``benchmarks/select_k.py``).
    ``flat``: for silhouette and stability, the best other peak is within ``flat_tolerance``
    (relative) of the pick; for a merge gap, the next gap is at least ``1 - gap_margin`` of the
    pick's (both measured above 1).
    """
    if rule == "merge-gap":
        gap = np.where(np.isfinite(curves["merge_gap"]), curves["merge_gap"], np.nan)
        ranking = _ranked(gap, [int(np.nanargmax(gap))])
        return Reading(ranking[0], "merge_gap", gap, "largest merge gap", ranking, _gap_is_flat(gap, ranking, gap_margin))
    if rule == "stability":
        stab = curves["stability"]
        ranking = _ranked(stab, [int(np.nanargmax(stab))])
        flat = len(ranking) > 1 and stab[ranking[1]] >= stab[ranking[0]] - flat_tolerance * abs(stab[ranking[0]])
        return Reading(ranking[0], "stability", stab, "most stable", ranking, bool(flat))
    settings = SILHOUETTE_RULES[rule]
    reading = _silhouette_reading(settings, ks, curves, plateau, flat_tolerance, gap_margin)
    if not settings.moves_to_elbow:
        return reading
    # silhouette-tree, step 3: a finer cut that is a clearer elbow of the tree than the pick, keeping
    # COARSE_RATIO of its silhouette, wins (again from there: each step raises the gap, so it ends)
    picked = at = reading.index
    while (below := elbow_below(curves, at)) is not None:
        at = below
    if at == picked:
        return reading
    gap = curves["merge_gap"]
    why = (f"the tree's clearest elbow below the silhouette's pick K = {int(ks[picked])} (merge gap {gap[at]:.3g} "
           f"against {gap[picked]:.3g}), with at least {COARSE_RATIO:.0%} of its silhouette")
    s = curves["silhouette"]
    return Reading(at, "silhouette", s, why, _ranked(s, [at, picked]), False)


def _silhouette_reading(settings: SilhouetteRule, ks: np.ndarray, curves: dict, plateau: float,
                        flat_tolerance: float, gap_margin: float) -> Reading:
    """The silhouette rules' reading (steps 1 and 2 of ``silhouette-gap``; see the module docs)."""
    s = curves["silhouette"]
    k, _ = choose_from_curve(ks, s, **settings.reading)
    at = int(np.flatnonzero(ks == k)[0])
    peaks = [int(i) for i in _local_maxima(s) if i != at]
    silhouette_flat = bool(peaks) and abs(s[peaks[0]] - s[at]) <= flat_tolerance * abs(s[at])
    if not settings.reads_tree or "merge_gap" not in curves:
        why = "finest well-separated silhouette peak" + ("" if not settings.reads_tree else " (no merge tree: no gap to read)")
        return Reading(at, "silhouette", s, why, _ranked(s, [at]), silhouette_flat)
    gap = curves["merge_gap"]
    # silhouette-gap, step 1: a pick at the coarse end (the top split of a hierarchy, e.g. animals |
    # vehicles) gives way to a finer cut whose merge gap is a real elbow of the tree -- at least
    # `coarse_gap` of the top split's gap (both above 1) -- and whose silhouette keeps `coarse_ratio`
    if at == 0 and ks[0] == 2 and len(ks) > 1 and np.isfinite(gap[0]):
        best = _clearest_finer_elbow(s, gap, 0, lambda g: g - 1 >= settings.coarse_gap * (gap[0] - 1))
        if best is not None:
            why = (f"largest merge gap below the top split (K = {int(ks[0])}) with at least "
                   f"{COARSE_RATIO:.0%} of its silhouette")
            return Reading(best, "silhouette", s, why, _ranked(s, [best, 0]), False)
    # step 2: among the K around the silhouette pick whose silhouette is within `plateau` of it (the
    # K the silhouette cannot tell apart), the best silhouette plus GAP_WEIGHT * ln(merge gap): the
    # tree's own elbow decides inside the plateau
    run = _plateau(s, at, plateau)
    if len(run) == 1:
        return Reading(at, "silhouette", s, "finest well-separated silhouette peak", _ranked(s, [at]), silhouette_flat)
    with np.errstate(divide="ignore", invalid="ignore"):
        combined = s[run] + GAP_WEIGHT * np.log(np.where(np.isfinite(gap[run]) & (gap[run] > 0), gap[run], 1.0))
    by_gap = [int(i) for i in run[np.argsort(-combined, kind="stable")]]
    best = by_gap[0]
    why = (f"silhouette + {GAP_WEIGHT} ln(merge gap) best among K = {int(ks[run[0]])}..{int(ks[run[-1]])}, "
           f"within {plateau:.0%} of the silhouette peak")
    outside = [i for i in peaks if i not in set(run.tolist())]
    flat = _gap_is_flat(gap, by_gap, gap_margin) or (
        bool(outside) and abs(s[outside[0]] - s[at]) <= flat_tolerance * abs(s[at]))
    # the plateau gives one runner-up: the other candidates are other levels, not the pick's neighbours
    return Reading(best, "silhouette", s, why, _ranked(s, by_gap[:2]), flat)


def elbow_below(curves: dict, chosen: int) -> int | None:
    """A finer cut that is a clearer elbow of the tree than the pick, or None.

    Among the K above the pick that keep ``COARSE_RATIO`` of its silhouette, the one with the
    largest merge gap, if that gap is larger than the pick's own and at least ``MIN_ELBOW_GAP``.
    Two sets side by side, one of them split less cleanly (Imagenette + 5 CIFAR-10 classes: the
    silhouette peaks at 6, one cluster per Imagenette class and one for CIFAR-10, while the tree's
    clearest elbow below it is CIFAR-10's animals | vehicles) look like this; at a pick on the
    data's own level no finer cut has a larger gap.
    """
    if "merge_gap" not in curves:
        return None
    s, gap = curves["silhouette"], curves["merge_gap"]
    if not (np.isfinite(s[chosen]) and np.isfinite(gap[chosen])):
        return None
    return _clearest_finer_elbow(s, gap, chosen, lambda g: g > gap[chosen] and g >= MIN_ELBOW_GAP)


def _clearest_finer_elbow(s: np.ndarray, gap: np.ndarray, at: int, clear: Callable[[float], bool]) -> int | None:
    """Among the cuts finer than index ``at`` that keep ``COARSE_RATIO`` of its silhouette and whose merge
    gap is ``clear``, the one with the largest gap; None when there is none."""
    finer = [i for i in range(at + 1, len(s)) if np.isfinite(s[i]) and s[i] >= COARSE_RATIO * s[at]
             and np.isfinite(gap[i]) and clear(gap[i])]
    return max(finer, key=lambda i: gap[i]) if finer else None
