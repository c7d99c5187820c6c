"""``reduce``: a lower-dimensional copy of the embeddings, stored in the cache under its settings.

Methods (chain with ``+``, e.g. ``l2+umap``):

* ``umap`` -- ZS's default: ``n_neighbors=30, min_dist=0, n_components=50``, euclidean, fixed seed.
* ``pca``  -- z-score every dimension, then PCA to ``dims`` components, or to the fewest that keep
  ``variance`` of the variance (ZS: 0.75-0.99); no whitening.
* ``l2``   -- normalise each row to unit length (ES: it helps shallow clusterers).
* ``none`` -- the raw embeddings.

A reduction is stored once under a key naming its settings and the row set it was computed from
(``<settings>@<fingerprint>``), and reused by later stages for exactly those rows. When the
embeddings would not fit the memory budget, the reducer is fitted on a random sample and applied
to all rows a chunk at a time.

**Near copies in UMAP's fit.** UMAP's fuzzy graph gives each row a fixed total membership weight
(``log2(n_neighbors)``, McInnes, Healy & Melville 2018, arXiv:1802.03426, ``smooth_knn_dist``); a row
with a few near-identical copies among its neighbours gives them nearly all of it, and the graph falls
apart into groups of copies (``benchmarks/umap_gap.py``: AMI 21.9 instead of 66.3 when every image has
about seven copies). Before fitting, rows whose embeddings are near copies are therefore collapsed to
one representative each, UMAP is fitted on the representatives and every other row is placed by
:func:`place_by_neighbours` (a copy lands beside its representative). "Near copy" means what it means
for ``imgclust duplicates``: cosine similarity at or above the encoder family's calibrated
near-duplicate threshold (:func:`imgclust.duplicates.default_rule`, its embedding arm), grouped by
:func:`imgclust.duplicates.near_groups` from the fit rows' own neighbour graph (the one UMAP takes its
neighbours from; the representatives' graph is cut from it, :func:`imgclust.knn.subset_graph`, and only
rows that lost neighbours are searched again): connected components of the pairs at or above the
threshold, each cut by complete linkage so that **every pair in a group is a near copy** (A~B and B~C
with A and C apart do not chain into one group). The representative is the group's first row.
``near_copies="none"`` fits on every row as before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .cache import Cache, Rows, now_iso, settings_key
from .clusterers._base import available_memory_bytes
from .duplicates import Rule, default_rule, near_groups
from .errors import ParameterError, UsageError
from .knn import DEFAULT_K, KNN_STAGE, KnnGraph, Neighbours, NeighbourSearch, StoredGraphs, l2_normalise, row_norms, subset_graph

METHODS = ("umap", "pca", "l2", "none")
UMAP_DEFAULTS = {"n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean"}
DEFAULT_DIMS = 50


@dataclass
class Reduction:
    """A stored reduction: where it lives and how it was made."""

    key: str
    encoder: str
    method: str
    settings: dict
    shape: tuple[int, int]
    seconds: float
    reused: bool
    fitted_on: int  # rows the reducer was fitted on (all, unless a sample was fitted or near copies collapsed)
    #: UMAP's near-copy collapse: ``threshold``, its ``source``, ``groups`` of near copies found among the rows to
    #: fit and ``collapsed`` rows placed instead of fitted; None when it was turned off (or no UMAP).
    near_copies: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_method(method: str) -> list[str]:
    steps = [s.strip() for s in method.replace(",", "+").split("+") if s.strip()]
    unknown = [s for s in steps if s not in METHODS]
    if not steps or unknown:
        raise UsageError(f"unknown reduction method '{method}'", hint=f"choose from {', '.join(METHODS)}; chain l2 first, e.g. l2+umap")
    if "none" in steps and len(steps) > 1 or steps.count("umap") + steps.count("pca") > 1 or ("l2" in steps and steps[0] != "l2"):
        raise UsageError(f"cannot chain '{method}'", hint="use one of umap/pca/l2/none, optionally with l2 first (l2+umap, l2+pca)")
    return steps


#: ``near_copies`` values: the encoder family's near-duplicate threshold, or no collapse.
NEAR_COPIES_AUTO, NEAR_COPIES_OFF = "auto", "none"
NEAR_COPIES_HINT = ("'auto' (the encoder family's near-duplicate threshold), 'none' (fit UMAP on every row), "
                    "or a cosine similarity in (0, 1], e.g. 0.95")


def parse_near_copies(value: float | str | None) -> float | str | None:
    """``near_copies`` (``--near-copy-threshold``) checked: ``"auto"``, None (from ``"none"``) or a float in (0, 1]."""
    if value is None or (isinstance(value, str) and value.strip().lower() == NEAR_COPIES_OFF):
        return None
    if isinstance(value, str) and value.strip().lower() == NEAR_COPIES_AUTO:
        return NEAR_COPIES_AUTO
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"--near-copy-threshold must be 'auto', 'none' or a number, got {value!r}",
                             hint=NEAR_COPIES_HINT) from None
    if not 0.0 < threshold <= 1.0:
        raise ParameterError(f"--near-copy-threshold must be in (0, 1], got {value!r}", hint=NEAR_COPIES_HINT)
    return threshold


def near_copy_threshold(value: float | str | None, family: str) -> tuple[float | None, str | None]:
    """The cosine similarity from which UMAP's fit collapses near copies, and where it comes from.

    ``"auto"`` takes the embedding arm of ``imgclust duplicates``' rule for the encoder ``family``
    (:func:`imgclust.duplicates.default_rule`: calibrated per family, a conservative value for the
    others), so that a near copy is the same thing in both; a number is taken as given; None is off.
    """
    value = parse_near_copies(value)
    if value is None:
        return None, None
    if value == NEAR_COPIES_AUTO:
        rule, source = default_rule(family)
        return rule.threshold, source
    return value, "given"


def reduction_settings(method: str, dims: int | None = DEFAULT_DIMS, variance: float | None = None,
                       n_neighbors: int = 30, min_dist: float = 0.0, metric: str = "euclidean",
                       random_state: int = 0, near_copies: float | None = None) -> tuple[str, dict]:
    """Validate the options of ``method`` and return ``(key, settings)``; only settings that matter are kept.

    ``near_copies`` is UMAP's resolved near-copy threshold (:func:`near_copy_threshold`); it names the
    reduction (``near_copies=0.94``), so a reduction fitted without the collapse (None: the key of
    reductions made before it existed) is never taken for one fitted with it, nor one threshold for another.
    """
    steps = parse_method(method)
    settings: dict = {}
    if "umap" in steps:
        if dims is None or dims < 1:
            raise ParameterError(f"--dims must be >= 1 for umap, got {dims}", hint="ZS found 5-100 dims all work; 50 is the default")
        if n_neighbors < 2:
            raise ParameterError(f"--n-neighbors must be >= 2, got {n_neighbors}", hint="ZS uses 30; 5-100 is the usual range")
        if min_dist < 0:
            raise ParameterError(f"--min-dist must be >= 0, got {min_dist}", hint="ZS uses 0.0 for clustering")
        settings.update(n_components=dims, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, seed=random_state)
        if near_copies is not None:
            settings.update(near_copies=float(near_copies))
    if "pca" in steps:
        if variance is not None:
            if not 0 < variance <= 1:
                raise ParameterError(f"--variance must be in (0, 1], got {variance}", hint="e.g. 0.9 keeps 90% of the variance")
            settings.update(variance=variance)
        else:
            if dims is None or dims < 1:
                raise ParameterError(f"--dims must be >= 1 for pca, got {dims}", hint="or use --variance 0.9")
            settings.update(n_components=dims)
        settings.update(seed=random_state)
    return settings_key("+".join(steps), settings), settings


def reduce(
    cache: str | os.PathLike,
    encoder: str | None = None,
    method: str = "umap",
    dims: int | None = DEFAULT_DIMS,
    *,
    variance: float | None = None,
    n_neighbors: int = 30,
    min_dist: float = 0.0,
    metric: str = "euclidean",
    random_state: int = 0,
    near_copies: float | str | None = NEAR_COPIES_AUTO,
    force: bool = False,
    memory_budget: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Reduction:
    """Reduce the cached embeddings of ``encoder`` and store the result (or reuse a stored one).

    Parameters
    ----------
    method : ``umap``, ``pca``, ``l2``, ``none`` or ``l2+umap`` / ``l2+pca``.
    dims : output dimensions for umap/pca (ZS: results are insensitive to 5-500; 50 by default).
    variance : for pca, keep the fewest components that explain this fraction of variance instead.
    n_neighbors, min_dist, metric : UMAP's knobs (ZS: 30, 0.0, euclidean).
    near_copies : UMAP only: rows at least this cosine-similar are near copies, and UMAP is fitted on one
        row of each group of them, the others placed (see the module docstring). ``"auto"`` (default):
        the encoder family's near-duplicate threshold (:func:`near_copy_threshold`); a float in (0, 1];
        ``"none"``/None: fit on every row.
    force : recompute even when a reduction with the same settings is stored.
    memory_budget : bytes of embeddings to hold at once (default: half the available memory).
    progress : ``progress(stage, done, total)`` for the stages that take long (UMAP's neighbours, its fit,
        placing rows beyond the fitted sample); see :data:`PROGRESS_UNITS`.
    """
    near_copies = parse_near_copies(near_copies)  # a bad value fails before the cache is opened
    cache = Cache(cache)
    encoder = cache.resolve_encoder(encoder)
    threshold, threshold_source = (near_copy_threshold(near_copies, str(cache.info(encoder).get("family", "")))
                                   if "umap" in parse_method(method) else (None, None))
    settings_name, settings = reduction_settings(method, dims, variance, n_neighbors, min_dist, metric, random_state,
                                                 threshold)
    rows = cache.rows(encoder)
    key = reduction_key(settings_name, rows.fingerprint)
    stored = cache.current(encoder, "reductions", rows.fingerprint)
    if key in stored and not force:
        attrs = stored[key]
        return Reduction(key, encoder, attrs["method"], attrs["settings"], tuple(attrs["shape"]), attrs["seconds"],
                         True, attrs["fitted_on"], attrs.get("near_copies"))
    cache.require_writable()  # before the work: a schema-1 or packed cache says what to run first
    n, dim = len(rows), rows.dim
    if n == 0:
        raise UsageError(f"{cache.path} holds no embeddings for '{encoder}'", hint="every image failed to embed; see imgclust info")
    steps = parse_method(method)
    started = time.perf_counter()
    budget = memory_budget or available_memory_bytes() // 2
    # UMAP on the raw rows shares its neighbour graph with every later stage of that space (stored)
    graphs = StoredGraphs(cache, encoder, "raw", rows.fingerprint) if steps == ["umap"] else None
    data, fitted_on, collapse = _compute(rows, steps, settings, n, dim, budget, progress or _silent, graphs)
    seconds = round(time.perf_counter() - started, 3)
    near = None if threshold is None else {"threshold": threshold, "source": threshold_source, **collapse}
    attrs = {"method": "+".join(steps), "settings": settings, "shape": list(data.shape), "seconds": seconds,
             "fitted_on": fitted_on, "near_copies": near, "created": now_iso()}
    cache.store_result(encoder, "reductions", key, {"data": data.astype(np.float32)}, attrs, rows.fingerprint)
    return Reduction(key, encoder, attrs["method"], settings, tuple(data.shape), seconds, False, fitted_on, near)


def reduction_key(settings_name: str, fingerprint: str) -> str:
    """The stored name of a reduction: its settings and the row set it belongs to."""
    return f"{settings_name}@{fingerprint[:8]}"


def load_reduction(cache: str | os.PathLike, encoder: str, key: str) -> np.ndarray:
    data, _ = Cache(cache).read_array(encoder, f"reductions/{key}/data")
    return data


#: Rows UMAP is fitted on; above it a seeded sample of this size is fitted and the other rows are
#: placed from their nearest sampled rows (:func:`place_by_neighbours`). UMAP's SGD runs on one core
#: when seeded (its parallel updates race, so a seed would not reproduce), about a second per
#: 1,000 rows here; the neighbour searches use every core.
UMAP_FIT_ROWS = 50000


#: What each progress stage of :func:`reduce` counts.
#: From this many rows UMAP takes its neighbours from FAISS (every core) instead of its own NN-descent.
PRECOMPUTED_KNN_ROWS = 4096
#: Rows PCA is fitted on; above it a seeded sample of this size (its components are as good; its
#: standardised copy stays small) and the other rows are projected a block at a time.
PCA_FIT_ROWS = 200000
#: Rows placed (UMAP) or projected (PCA) at once beyond the fitted sample: bounds their neighbour lists.
PLACE_BLOCK = 65536
#: The progress stage of the clustering method itself (0 then 1: the bar shows the time it takes).
CLUSTERING_STAGE = "clustering"
PROGRESS_UNITS = {"UMAP neighbours": "rows", "fitting UMAP": "fits", "placing rows": "rows", KNN_STAGE: "rows",
                  CLUSTERING_STAGE: "steps"}


def _silent(stage: str, done: int, total: int) -> None:
    return None


def _compute(rows: Rows, steps: list[str], settings: dict, n: int, dim: int, budget: int, progress,
             graphs: StoredGraphs | None = None) -> tuple[np.ndarray, int, dict]:
    """Fit on everything when it fits (UMAP: up to :data:`UMAP_FIT_ROWS` rows), else on a sample; apply to all rows.

    Returns ``(data, rows fitted, near-copy counts)``: rows UMAP did not fit on (beyond the sample, or
    collapsed as near copies) are placed. ``graphs`` keeps the neighbour graph of a fit on every row
    (a sample's graph is not the space's)."""
    fit_limit = UMAP_FIT_ROWS if "umap" in steps else PCA_FIT_ROWS if "pca" in steps else n
    if n * dim * 4 <= budget:
        x = rows.read_embeddings()
        if "l2" in steps:
            x = l2_normalise(x, copy=False)
        if n <= fit_limit:
            sample = np.arange(n)
            shared = None if graphs is None else Neighbours(
                x, random_state=settings["seed"], store=graphs,
                on_progress=lambda done, total: progress("UMAP neighbours", done, total))
            model = _fit(steps, settings, x, progress, neighbours=shared)
            if model is None:
                return x.astype(np.float32), n, {}
        else:
            rng = np.random.default_rng(settings.get("seed", 0))
            sample = np.sort(rng.choice(n, size=fit_limit, replace=False))
            model = _fit(steps, settings, x[sample], progress, n_new=n - fit_limit)
        fitted_rows = sample[model.kept]
        fitted = model(None, fitted=True)
        if len(fitted_rows) == n:
            return fitted.astype(np.float32), n, model.collapse
        out = np.empty((n, fitted.shape[1]), np.float32)
        out[fitted_rows] = fitted
        rest = np.setdiff1d(np.arange(n), fitted_rows)
        for start in range(0, len(rest), PLACE_BLOCK):  # bounded neighbour lists
            part = rest[start : start + PLACE_BLOCK]
            out[part] = model(x[part], fitted=False,
                              on_progress=lambda done, _, s=start: progress("placing rows", s + done, len(rest)))
        return out, len(fitted_rows), model.collapse
    rng = np.random.default_rng(settings.get("seed", 0))
    sample_rows = np.sort(rng.choice(n, size=min(fit_limit, max(2, budget // (dim * 4))), replace=False))
    x = rows.take(sample_rows)
    if "l2" in steps:
        x = l2_normalise(x)
    model = _fit(steps, settings, x, progress, n_new=n)
    blocks = []
    for _, block in rows.iter_embeddings():
        if "l2" in steps:
            block = l2_normalise(block)
        blocks.append(model(block, fitted=False) if model else block)
    return (np.concatenate(blocks).astype(np.float32), len(model.kept) if model else len(sample_rows),
            model.collapse if model else {})


def near_copy_groups(x: np.ndarray, graph: KnnGraph, threshold: float) -> list[np.ndarray]:
    """Groups (two rows or more, row numbers ascending) of rows of ``x`` whose every pair has cosine similarity
    at least ``threshold``, from ``graph`` (euclidean or cosine neighbours of ``x``'s rows).

    A euclidean graph's cosines come from its distances and the row norms (``cos = (|a|² + |b|² - d²) /
    2|a||b|``): no second search. Grouping is :func:`imgclust.duplicates.near_groups` with the embedding
    arm alone: components of the pairs at or above the threshold, cut by complete linkage (no chaining).
    A near copy that a euclidean graph does not list among a row's neighbours (a copy at a very different
    norm) is not found; for UMAP's neighbour weights only listed neighbours matter.
    """
    norms = row_norms(x)[:, 0].astype(np.float64)
    indices = graph.indices
    distances = graph.distances.astype(np.float64)
    if graph.metric == "cosine":
        similarities = 1.0 - distances
    else:
        other = norms[np.maximum(indices, 0)]
        product = np.maximum(norms[:, None] * other, 1e-12)
        similarities = (norms[:, None] ** 2 + other ** 2 - distances ** 2) / (2.0 * product)
    unit = l2_normalise(np.asarray(x, np.float32))
    return near_groups(unit, None, indices, np.clip(similarities, -1.0, 1.0), Rule(float(threshold)))


def place_by_neighbours(search, embedding: np.ndarray, block: np.ndarray,
                        on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Rows of ``block`` placed in a fitted UMAP: the membership-weighted mean of their neighbours' places.

    This is umap-learn's own out-of-sample initialisation (``UMAP.transform``: fuzzy membership
    strengths of each new row to its ``n_neighbors`` nearest training rows from
    ``smooth_knn_dist``, then ``init_graph_transform``), without the SGD epochs ``transform`` runs
    after it: measured on the 13,925 real effnet-lite0 rows of ``benchmarks/umap_gap.py`` (5,000
    fitted, the rest placed), its 30 epochs lowered the AMI of the 20 agglomerative clusters from
    64.5 to 62.1 and tripled the placing time (at a million rows they would cost more than the fit).
    ``search`` is an :class:`imgclust.knn.NeighbourSearch` over the
    training rows (exact, or approximate with a measured recall), built once for every block;
    ``embedding`` holds their places.
    """
    from umap.umap_ import smooth_knn_dist

    idx, dist = search(block, on_progress)
    sigmas, rhos = smooth_knn_dist(dist, float(search.k), local_connectivity=0.0)
    weights = np.exp(-np.maximum(dist - rhos[:, None], 0.0) / sigmas[:, None])
    weights = (weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return np.einsum("nk,nkd->nd", weights, embedding[idx])


def fit_umap(x: np.ndarray, **params):
    """``(reducer, embedding)`` of UMAP fitted on ``x``, without its expected warnings."""
    import warnings

    import umap

    reducer = umap.UMAP(**params)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # a fixed seed runs single-threaded
        warnings.filterwarnings("ignore", message=".*k >= N.*|.*spectral initialisation.*")
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # new rows are placed by imgclust
        return reducer, reducer.fit_transform(x)


@dataclass
class _Model:
    """A fitted reducer: ``model(None, fitted=True)`` is the output of the rows it was fitted on (``kept``,
    row numbers of the rows given to :func:`_fit`); ``model(block)`` applies it to new rows."""

    apply: Callable
    kept: np.ndarray
    collapse: dict  # UMAP's near-copy counts: groups, collapsed ({} when not asked for)

    def __call__(self, block, fitted: bool = False, on_progress=None):
        return self.apply(block, fitted, on_progress)


def _fit(steps: list[str], settings: dict, x: np.ndarray, progress=_silent, n_new: int = 0,
         neighbours: Neighbours | None = None) -> _Model | None:
    """Fit the reducer on ``x`` (None for ``l2``/``none``, which need no fit).

    ``n_new``: how many rows the model will place in all (UMAP builds its neighbour search for them once).
    ``neighbours``: the shared graphs of ``x``'s space, which UMAP takes its neighbours from.
    With ``settings["near_copies"]`` UMAP is fitted on one row of each group of near copies
    (:func:`near_copy_groups`) and the others count among the rows to place; the collapse is skipped
    when it would leave fewer rows than a full neighbourhood and the output dimensions need.
    """
    if "umap" in steps:
        n_neighbors = min(settings["n_neighbors"], max(2, len(x) - 1))
        n_components = min(settings["n_components"], max(1, len(x) - 2))
        if len(x) < 4:
            raise UsageError(f"UMAP needs at least 4 images, the cache holds {len(x)}",
                             hint="use --method none or pca for so few images")
        # precomputed neighbours (FAISS, every core) instead of UMAP's NN-descent; UMAP wants each row first
        knn_metric = settings["metric"] if settings["metric"] in ("euclidean", "cosine") else None
        kept, collapse = np.arange(len(x)), {}
        graph = None  # the fit rows' neighbour graph, once one was needed
        on_graph = lambda done, total: progress("UMAP neighbours", done, total)
        if settings.get("near_copies") is not None:
            if neighbours is None:
                neighbours = Neighbours(x, random_state=settings["seed"], on_progress=on_graph)
            graph = neighbours.graph(max(DEFAULT_K, n_neighbors - 1), knn_metric or "euclidean")
            groups = near_copy_groups(x, graph, settings["near_copies"])
            dropped = np.concatenate([g[1:] for g in groups]) if groups else np.empty(0, np.int64)
            collapse = {"groups": len(groups), "collapsed": 0}
            if len(dropped) and len(x) - len(dropped) >= max(n_neighbors + 1, n_components + 2):
                kept = np.setdiff1d(kept, dropped)
                collapse["collapsed"] = len(dropped)
                x, n_new = x[kept], n_new + len(dropped)
                # the kept rows' graph from the same lists: only rows that lost neighbours are searched again
                graph = subset_graph(graph, kept, x, n_neighbors - 1, random_state=settings["seed"], on_progress=on_graph)
        extra = {}
        if knn_metric is not None and len(x) >= PRECOMPUTED_KNN_ROWS:
            if graph is None:
                graph = (neighbours or Neighbours(x, random_state=settings["seed"], on_progress=on_graph)).graph(
                    n_neighbors - 1, knn_metric)
            extra["precomputed_knn"] = graph.top(n_neighbors - 1).with_self()
        progress("fitting UMAP", 0, 1)
        reducer, fitted = fit_umap(x, n_neighbors=n_neighbors, min_dist=settings["min_dist"], n_components=n_components,
                                   metric=settings["metric"], random_state=settings["seed"], **extra)
        progress("fitting UMAP", 1, 1)
        search = NeighbourSearch(x, n_neighbors, knn_metric or "euclidean", n_queries=max(n_new, 1),
                                 random_state=settings["seed"])
        return _Model(lambda block, fitted_=False, on_progress=None: fitted if fitted_ else place_by_neighbours(
            search, fitted, block, on_progress), kept, collapse)
    if "pca" in steps:
        from sklearn.decomposition import PCA

        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 0, std, 1.0)
        z = (x - mean) / std
        limit = min(z.shape)
        if "variance" in settings:
            pca = PCA(n_components=limit, svd_solver="full", random_state=settings["seed"]).fit(z)
            keep = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), settings["variance"]) + 1)
            keep = min(keep, limit)
        else:
            keep = min(settings["n_components"], limit)
            pca = PCA(n_components=keep, random_state=settings["seed"]).fit(z)
        components = pca.components_[:keep]
        return _Model(lambda block, fitted=False, on_progress=None: (((x if fitted else block) - mean) / std - pca.mean_)
                      @ components.T, np.arange(len(x)), {})
    return None
