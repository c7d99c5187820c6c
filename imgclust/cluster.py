"""``cluster``: run a registered clustering method on the cached (reduced) embeddings; store the run.

Every run records the row set it was computed from; a run of other rows is stale: it is kept and
listed, but :func:`load_run` never hands it to a stage. The input is the space of the (encoder, method)
table in :mod:`imgclust.spaces` (UMAP 50 for most shallow methods, PCA for MAE and for affinity
propagation as in ZS, the raw embeddings for the trained heads), computed and stored on first use;
``reduction`` overrides it. ``n_clusters`` is an int, ``"auto"`` (chosen without labels by
:func:`imgclust.select.choose_n_clusters`, which sweeps K with this very method, parameters and
space, so the K chosen was scored on the clustering returned) or None (the method finds it;
agglomerative then cuts its tree at ZS's per-encoder distance threshold).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np

from ._progress import stage
from .cache import Cache, Rows, now_iso
from .clusterers import CLUSTERERS, create_clusterer
from .clusterers._agglomerative import agglomerative_defaults
from .clusterers._base import available_memory_bytes
from .errors import UsageError
from .joint import part_dims, resolve_table
from .knn import KNN_STAGE, Neighbours, StoredGraphs
from .reduce import CLUSTERING_STAGE, DEFAULT_DIMS, NEAR_COPIES_AUTO, parse_near_copies, reduce
from .spaces import default_space

DEFAULT_METHOD = "agglomerative"


@dataclass
class ClusterRun:
    """One stored clustering run."""

    run_id: str
    encoder: str
    method: str
    params: dict
    n_clusters: int  # found (noise not counted)
    n_clusters_requested: int | str | None
    space: str  # the reduction key, or "raw"
    n_samples: int
    n_noise: int
    seconds: float
    labels: np.ndarray = field(repr=False)
    selection: dict | None = None  # the label-free sweep when n_clusters="auto"
    space_source: str | None = None  # why this space: the (encoder, method) table's reason, or "--reduction"
    fit_path: str | None = None  # how the method ran at this size (e.g. agglomerative's exact or micro-cluster tree)
    # how the space's reduction was fitted: rows fitted on and UMAP's near-copy collapse (None: raw embeddings)
    reduction_fit: dict | None = None
    # The fitted clusterer, for its extra attributes (e.g. icce's ``head_labels_``); None for loaded runs.
    estimator: Any = field(default=None, repr=False, compare=False)

    def to_dict(self, include_labels: bool = False) -> dict:
        # Not asdict(): it would deep-copy the estimator and the labels only to drop them.
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in ("labels", "estimator")}
        if include_labels:
            out["labels"] = self.labels.tolist()
        return out


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` from ``--param`` into a dict (values are coerced by the method's table)."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {item!r} is not key=value", hint="e.g. --param linkage=average")
        params[key.strip()] = value.strip()
    return params


def input_space(cache: Cache, rows: Rows, method: str, reduction: str | None, dims: int | None,
                random_state: int, memory_budget: int | None = None,
                progress: Callable[[str, int, int], None] | None = None,
                near_copies: float | str | None = NEAR_COPIES_AUTO) -> tuple[str, np.ndarray, str]:
    """The data a method clusters, for exactly ``rows``: ``(space key, array, why this space)``.

    Without ``reduction`` the (encoder, method) table of :func:`imgclust.spaces.default_space`
    decides (``dims`` then resizes its reduction); ``reduction`` overrides it. ``near_copies`` is
    UMAP's near-copy threshold (see :func:`imgclust.reduce.reduce`).
    """
    budget = memory_budget or available_memory_bytes() // 2
    variance = None
    if reduction is None:
        choice = default_space(rows.encoder, method)
        reduction, source = choice.reduction, choice.source
        if dims is None:
            dims, variance = choice.dims, choice.variance
    else:
        source = "--reduction"
    if reduction == "none":
        return "raw", rows.read_embeddings(max_bytes=budget), source
    if reduction in cache.list_groups(rows.encoder, "reductions"):  # an explicit stored key
        key = reduction
    else:
        key = reduce(cache.path, rows.encoder, reduction, dims if dims is not None or variance is not None else DEFAULT_DIMS,
                     variance=variance, random_state=random_state, near_copies=near_copies, memory_budget=budget,
                     progress=progress).key
    return key, cache.read_result(rows.encoder, "reductions", key, rows.fingerprint)["data"], source


def cluster(
    cache: str | os.PathLike,
    encoder: str | None = None,
    method: str = DEFAULT_METHOD,
    n_clusters: int | str | None = None,
    params: dict[str, Any] | None = None,
    *,
    reduction: str | None = None,
    dims: int | None = None,
    random_state: int = 0,
    device: str | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    store: bool = True,
    k_range: tuple[int, int] | None = None,
    on_select: Callable[[int, int], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    near_copies: float | str | None = NEAR_COPIES_AUTO,
) -> ClusterRun:
    """Cluster the cached embeddings and store the run in the cache.

    Parameters
    ----------
    encoder : the cache's encoder table (None: its only one), or several joined by ``+`` (``A+B``): the
        joint space of :mod:`imgclust.joint`, on the images every one of them embedded.
    method : a registered method (``imgclust.list_clusterers()``); agglomerative by default.
    n_clusters : K, ``"auto"`` (label-free choice by silhouette), or None (the method decides).
    params : method parameters (see ``imgclust methods``); agglomerative without explicit linkage,
        metric or threshold takes ZS's tuned values for the encoder.
    reduction : ``umap``, ``pca``, ``l2`` (ES style: l2-normalised raw embeddings, no UMAP), ``l2+umap``,
        ``none`` (raw), or the key of a stored reduction; None: the (encoder, method) table of
        :func:`imgclust.spaces.default_space`. ``dims`` sets its dimensions.
    device : where a trained method runs (its ``device`` parameter); refused for methods that run on
        the CPU only, so it is never silently ignored.
    on_epoch : progress callback ``(epoch, epochs, loss)`` of trained methods, after each epoch.
    k_range : ``(k_min, k_max)`` searched by ``"auto"`` (default 2 to min(200, rows / 10)).
    on_select : progress callback ``(fits done, fits)`` of ``"auto"`` with a method fitted once per K.
    progress : ``progress(stage, done, total)`` of the reduction when it is computed here
        (:data:`imgclust.reduce.PROGRESS_UNITS`).
    near_copies : when UMAP is fitted here, the cosine similarity from which rows are near copies fitted
        once (``"auto"``: the encoder family's near-duplicate threshold; ``"none"``: every row fitted);
        see :func:`imgclust.reduce.reduce`. The run records it (``reduction_fit``).
    """
    cache_obj = Cache(cache)
    encoder = resolve_table(cache_obj, encoder)  # a joint space (A+B) is built or refreshed here
    cls = CLUSTERERS.get(method)
    params = dict(params or {})
    spaces = part_dims(cache_obj, encoder)
    if spaces and any(p.name == "space_dims" for p in cls.params):  # one space per encoder (turtle)
        params.setdefault("space_dims", ",".join(map(str, spaces)))
    near_copies = parse_near_copies(near_copies)  # a bad value fails before any work
    if device is not None:
        if not takes_device(method):
            raise UsageError(f"--device does not apply to {method}: it runs on the CPU",
                             hint="drop --device, or choose a trained method (temi, icce, scan, unic, cc, turtle)")
        params.setdefault("device", device)
    if method == "agglomerative":
        defaults = agglomerative_defaults(encoder)
        if "linkage" not in params and "metric" not in params:
            params.update(linkage=defaults["linkage"], metric=defaults["metric"])
            if n_clusters is None and "distance_threshold" not in params and params.get("normalisation") != "raw":
                params["distance_threshold"] = defaults["distance_threshold"]
    auto = isinstance(n_clusters, str)
    if auto and n_clusters != "auto":
        raise UsageError(f"--n-clusters must be a positive integer or 'auto', got {n_clusters!r}",
                         hint="e.g. --n-clusters 10, or --n-clusters auto")
    if auto and cls.n_clusters_mode == "unused":
        raise UsageError(f"{method} finds the number of clusters itself; 'auto' does not apply", hint="drop --n-clusters")
    if k_range is not None and not auto:
        raise UsageError("--k-range is the range searched by --n-clusters auto", hint="add --n-clusters auto, or drop --k-range")
    if cls.n_clusters_mode == "required" and n_clusters is None:
        raise UsageError(f"{method} needs the number of clusters", hint="pass --n-clusters K or --n-clusters auto")
    # Build once now so bad parameters fail before any heavy work ('auto' is validated with a stand-in K).
    probe_k = n_clusters if not auto else (2 if cls.n_clusters_mode == "required" else None)
    probe = create_clusterer(method, n_clusters=probe_k, random_state=random_state, **params)
    if store:
        cache_obj.require_writable()  # before the work: a schema-1 or packed cache says what to run first
    rows = cache_obj.rows(encoder)
    if isinstance(n_clusters, int) and n_clusters > len(rows):
        raise UsageError(f"--n-clusters {n_clusters} is larger than the number of images ({len(rows)})",
                         hint="lower --n-clusters")
    probe.preflight(len(rows))  # before the reduction: a method that cannot run at this size says so now
    space, X, space_source = input_space(cache_obj, rows, method, reduction, dims, random_state, progress=progress,
                                         near_copies=near_copies)
    reduction_fit = None
    if space != "raw":
        made = cache_obj.current(encoder, "reductions", rows.fingerprint)[space]
        reduction_fit = {"fitted_on": int(made["fitted_on"]), "near_copies": made.get("near_copies")}
    started = time.perf_counter()
    # One kNN graph per space, shared by the method (and by later runs: it is stored with the results)
    neighbours = Neighbours(X, random_state=random_state,
                            store=StoredGraphs(cache_obj, encoder, space, rows.fingerprint) if store else None,
                            on_progress=stage(progress, KNN_STAGE))
    selection = None
    k = n_clusters
    labels = clusterer = None
    views = cache_obj.read_views(encoder) if cls.needs_views else None
    if views is not None and len(views) != len(rows):
        views = None  # views of other rows (the rows changed meanwhile): the method says what to run
    if auto:
        from .select import choose_n_clusters

        params.pop("distance_threshold", None)
        k_min, k_max = k_range if k_range is not None else (2, None)
        choice = choose_n_clusters(X, method, params, k_min=k_min, k_max=k_max, random_state=random_state,
                                   views=views, on_fit=on_select, neighbours=neighbours)
        k, selection = choice.n_clusters, {**choice.to_dict(), "space": space}
        if choice.labels is not None:  # the sweep ran on every row: return the very clustering it scored
            labels, clusterer = choice.labels, choice.estimator
    if labels is None:
        clusterer = create_clusterer(method, n_clusters=k, random_state=random_state, **params)
        clusterer.on_epoch = on_epoch
        clusterer.on_progress = stage(progress, CLUSTERING_STAGE)
        if progress:  # a bar with the elapsed time while the method runs (trained methods also report epochs)
            progress(CLUSTERING_STAGE, 0, 1)
        labels = clusterer.fit_predict(X, views, neighbours)
        if progress:
            progress(CLUSTERING_STAGE, 1, 1)
    elif clusterer is None:  # a tree cut: the clusterer only records the parameters
        clusterer = create_clusterer(method, n_clusters=k, random_state=random_state, **params)
    seconds = round(time.perf_counter() - started, 3)
    run = ClusterRun(
        run_id="", encoder=encoder, method=method, params=_jsonable(clusterer.get_params()),
        n_clusters=int(np.unique(labels[labels >= 0]).size), n_clusters_requested=n_clusters, space=space, n_samples=len(labels),
        n_noise=int((labels < 0).sum()), seconds=seconds, labels=labels, selection=selection, estimator=clusterer,
        space_source=space_source, fit_path=getattr(clusterer, "fit_path_", None), reduction_fit=reduction_fit)
    if store:
        run.run_id = _store(cache_obj, run, clusterer, rows.fingerprint)
    return run


def takes_device(method: str) -> bool:
    """Whether ``method`` runs on a chosen device (the trained heads do)."""
    return any(p.name == "device" for p in CLUSTERERS.get(method).params)


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _store(cache: Cache, run: ClusterRun, clusterer, fingerprint: str) -> str:
    arrays = {"labels": run.labels.astype(np.int64)}
    if getattr(clusterer, "supports_predict", False):
        arrays["state"] = dict(clusterer.state())
    return cache.store_result(run.encoder, "runs", None, arrays, {
        "method": run.method, "params": run.params, "n_clusters": run.n_clusters,
        "n_clusters_requested": run.n_clusters_requested, "space": run.space, "n_samples": run.n_samples,
        "n_noise": run.n_noise, "seconds": run.seconds, "selection": run.selection, "space_source": run.space_source,
        "fit_path": run.fit_path, "reduction_fit": run.reduction_fit, "created": now_iso()}, fingerprint)


def load_run(cache: str | os.PathLike, run_id: str | None = None, encoder: str | None = None) -> ClusterRun:
    """A stored run of the cache's current rows (the latest when ``run_id`` is None).

    A stale run (computed from other rows) is refused: its labels do not belong to these rows.
    """
    cache_obj = Cache(cache)
    encoder = cache_obj.resolve_encoder(encoder)
    runs = cache_obj.list_groups(encoder, "runs")
    current = {name: attrs for name, attrs in runs.items() if not attrs["stale"]}
    hint = f"cluster them again: imgclust cluster {cache_obj.path}"
    if not runs:
        raise UsageError(f"{cache_obj.path} has no clustering runs for '{encoder}'", hint=f"run imgclust cluster {cache_obj.path}")
    if run_id is not None and run_id not in runs:
        raise UsageError(f"no run '{run_id}' in {cache_obj.path}", hint=f"runs there: {', '.join(sorted(runs))}")
    if run_id is not None and run_id not in current:
        raise UsageError(f"run '{run_id}' in {cache_obj.path} is stale: the images changed after it was computed",
                         hint=hint)
    if not current:
        raise UsageError(f"every clustering run in {cache_obj.path} was computed from other images than it holds now",
                         hint=hint)
    if run_id is None:
        run_id = max(current, key=lambda name: int(name.rpartition("-")[2]))  # ids are run-1, run-2, ...
    attrs = runs[run_id]
    labels = cache_obj.read_result(encoder, "runs", run_id, attrs["fingerprint"])["labels"]
    return ClusterRun(run_id=run_id, encoder=encoder, method=attrs["method"], params=attrs["params"],
                      n_clusters=int(attrs["n_clusters"]), n_clusters_requested=attrs["n_clusters_requested"],
                      space=attrs["space"], n_samples=int(attrs["n_samples"]), n_noise=int(attrs["n_noise"]),
                      seconds=float(attrs["seconds"]), labels=labels, selection=attrs.get("selection"),
                      space_source=attrs.get("space_source"), fit_path=attrs.get("fit_path"),
                      reduction_fit=attrs.get("reduction_fit"))


def run_space(cache: str | os.PathLike, run: ClusterRun) -> np.ndarray:
    """The data a run clustered (its reduction, or the raw embeddings)."""
    cache_obj = Cache(cache)
    rows = cache_obj.rows(run.encoder)
    if run.space == "raw":
        return rows.read_embeddings(max_bytes=available_memory_bytes() // 2)
    return cache_obj.read_result(run.encoder, "reductions", run.space, rows.fingerprint)["data"]
