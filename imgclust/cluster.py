"""``cluster``: run a registered clustering method on the cached (reduced) embeddings; store the run.

The input is the space the method wants (``Clusterer.input_space``): for shallow methods the
reduction named by ``reduction`` (UMAP 50 by default, computed and stored on first use), for the
trained heads the raw embeddings. ``n_clusters`` is an int, ``"auto"`` (chosen without labels by
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

from .cache import Cache, encode_attrs, encoder_key, new_run_id, now_iso
from .clusterers import CLUSTERERS, create_clusterer
from .clusterers._agglomerative import agglomerative_defaults
from .clusterers._base import available_memory_bytes
from .errors import UsageError
from .reduce import DEFAULT_DIMS, reduce

DEFAULT_METHOD = "agglomerative"
DEFAULT_REDUCTION = "umap"


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


def input_space(cache: Cache, encoder: str, method_input: str, reduction: str | None, dims: int | None,
                random_state: int, memory_budget: int | None = None) -> tuple[str, np.ndarray]:
    """The data a method clusters: ``(space name, array)``."""
    budget = memory_budget or available_memory_bytes() // 2
    if reduction is None:
        reduction = DEFAULT_REDUCTION if method_input == "reduced" else "none"
    if reduction == "none":
        return "raw", cache.read_embeddings(encoder, max_bytes=budget)
    stored = cache.list_groups(encoder, "reductions")
    if reduction in stored:  # an explicit stored key
        key = reduction
    else:
        key = reduce(cache.path, encoder, reduction, dims if dims is not None else DEFAULT_DIMS,
                     random_state=random_state, memory_budget=budget).key
    data, _ = cache.read_array(encoder, f"reductions/{key}/data")
    return key, data


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
) -> ClusterRun:
    """Cluster the cached embeddings and store the run in the cache.

    Parameters
    ----------
    method : a registered method (``imgclust.list_clusterers()``); agglomerative by default.
    n_clusters : K, ``"auto"`` (label-free choice by silhouette), or None (the method decides).
    params : method parameters (see ``imgclust methods``); agglomerative without explicit linkage,
        metric or threshold takes ZS's tuned values for the encoder.
    reduction : ``umap`` (default for shallow methods), ``pca``, ``l2+umap``, ``none`` (raw), or the key
        of a stored reduction. ``dims`` sets its dimensions (50).
    device : where a trained method runs (its ``device`` parameter); refused for methods that run on
        the CPU only, so it is never silently ignored.
    on_epoch : progress callback ``(epoch, epochs, loss)`` of trained methods, after each epoch.
    k_range : ``(k_min, k_max)`` searched by ``"auto"`` (default 2 to min(200, rows / 10)).
    on_select : progress callback ``(fits done, fits)`` of ``"auto"`` with a method fitted once per K.
    """
    cache_obj = Cache(cache)
    encoder = cache_obj.resolve_encoder(encoder)
    cls = CLUSTERERS.get(method)
    params = dict(params or {})
    if device is not None:
        if not takes_device(method):
            raise UsageError(f"--device does not apply to {method}: it runs on the CPU",
                             hint="drop --device, or choose a trained method (temi, icce, scan, unic, cc)")
        params.setdefault("device", device)
    if method == "agglomerative":
        defaults = agglomerative_defaults(encoder)
        if "linkage" not in params and "metric" not in params:
            params.update(linkage=defaults["linkage"], metric=defaults["metric"])
            if n_clusters is None and "distance_threshold" not in params:
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
    create_clusterer(method, n_clusters=probe_k, random_state=random_state, **params)
    space, X = input_space(cache_obj, encoder, cls.input_space, reduction, dims, random_state)
    started = time.perf_counter()
    selection = None
    k = n_clusters
    labels = clusterer = None
    if auto:
        from .select import choose_n_clusters

        params.pop("distance_threshold", None)
        k_min, k_max = k_range if k_range is not None else (2, None)
        views = cache_obj.read_views(encoder) if cls.needs_views else None
        choice = choose_n_clusters(X, method, params, k_min=k_min, k_max=k_max, random_state=random_state,
                                   views=views, on_fit=on_select)
        k, selection = choice.n_clusters, {**choice.to_dict(), "space": space}
        if choice.labels is not None:  # the sweep ran on every row: return the very clustering it scored
            labels, clusterer = choice.labels, choice.estimator
    if isinstance(k, int) and k > len(X):
        raise UsageError(f"--n-clusters {k} is larger than the number of images ({len(X)})", hint="lower --n-clusters")
    if labels is None:
        clusterer = create_clusterer(method, n_clusters=k, random_state=random_state, **params)
        clusterer.on_epoch = on_epoch
        views = cache_obj.read_views(encoder) if cls.needs_views else None
        labels = clusterer.fit_predict(X, views)
    elif clusterer is None:  # a tree cut: the clusterer only records the parameters
        clusterer = create_clusterer(method, n_clusters=k, random_state=random_state, **params)
    seconds = round(time.perf_counter() - started, 3)
    run = ClusterRun(
        run_id="", encoder=encoder, method=method, params=_jsonable(clusterer.get_params()),
        n_clusters=int(np.unique(labels[labels >= 0]).size), n_clusters_requested=n_clusters, space=space, n_samples=len(labels),
        n_noise=int((labels < 0).sum()), seconds=seconds, labels=labels, selection=selection, estimator=clusterer)
    if store:
        run.run_id = _store(cache_obj, run, clusterer)
    return run


def takes_device(method: str) -> bool:
    """Whether ``method`` runs on a chosen device (the trained heads do)."""
    return any(p.name == "device" for p in CLUSTERERS.get(method).params)


def _jsonable(params: dict) -> dict:
    return json.loads(json.dumps(params, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _store(cache: Cache, run: ClusterRun, clusterer) -> str:
    with cache.writer():
        with cache.transaction() as fh:
            runs = fh[f"encoders/{encoder_key(run.encoder)}"].require_group("runs")
            run_id = new_run_id(runs)
            group = runs.create_group(run_id)
            group.create_dataset("labels", data=run.labels.astype(np.int64))
            if getattr(clusterer, "supports_predict", False):
                state = group.create_group("state")
                for key, value in clusterer.state().items():
                    state.create_dataset(key, data=value)
            encode_attrs(group, {"method": run.method, "params": run.params, "n_clusters": run.n_clusters,
                                 "n_clusters_requested": run.n_clusters_requested, "space": run.space,
                                 "n_samples": run.n_samples, "n_noise": run.n_noise, "seconds": run.seconds,
                                 "selection": run.selection, "created": now_iso()})
    return run_id


def load_run(cache: str | os.PathLike, run_id: str | None = None, encoder: str | None = None) -> ClusterRun:
    """A stored run (the latest when ``run_id`` is None)."""
    cache_obj = Cache(cache)
    encoder = cache_obj.resolve_encoder(encoder)
    runs = cache_obj.list_groups(encoder, "runs")
    if not runs:
        raise UsageError(f"{cache_obj.path} has no clustering runs for '{encoder}'", hint=f"run imgclust cluster {cache_obj.path}")
    if run_id is None:
        run_id = max(runs, key=lambda name: int(name.rpartition("-")[2]))  # ids are run-1, run-2, ...
    if run_id not in runs:
        raise UsageError(f"no run '{run_id}' in {cache_obj.path}", hint=f"runs there: {', '.join(sorted(runs))}")
    attrs = runs[run_id]
    labels, _ = cache_obj.read_array(encoder, f"runs/{run_id}/labels")
    return ClusterRun(run_id=run_id, encoder=encoder, method=attrs["method"], params=attrs["params"],
                      n_clusters=int(attrs["n_clusters"]), n_clusters_requested=attrs["n_clusters_requested"],
                      space=attrs["space"], n_samples=int(attrs["n_samples"]), n_noise=int(attrs["n_noise"]),
                      seconds=float(attrs["seconds"]), labels=labels, selection=attrs.get("selection"))


def run_space(cache: str | os.PathLike, run: ClusterRun) -> np.ndarray:
    """The data a run clustered (its reduction, or the raw embeddings)."""
    cache_obj = Cache(cache)
    if run.space == "raw":
        return cache_obj.read_embeddings(run.encoder, max_bytes=available_memory_bytes() // 2)
    data, _ = cache_obj.read_array(run.encoder, f"reductions/{run.space}/data")
    return data
