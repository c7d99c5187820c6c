"""``cluster``: run a registered clustering method on the cached (reduced) embeddings; store the run.

The input is the space of the (encoder, method) table in :mod:`imgclust.spaces` (UMAP 50 for most
shallow methods, PCA for MAE and for affinity propagation as in ZS, the raw embeddings for the
trained heads), computed and stored on first use; ``reduction`` overrides it. ``n_clusters`` is an int, ``"auto"`` (chosen without labels by
:func:`imgclust.select.choose_n_clusters`) or None (the method finds it; agglomerative then cuts
its tree at ZS's per-encoder distance threshold).
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


def input_space(cache: Cache, encoder: str, method: str, reduction: str | None, dims: int | None,
                random_state: int, memory_budget: int | None = None) -> tuple[str, np.ndarray, str]:
    """The data a method clusters: ``(space key, array, why this space)``.

    Without ``reduction`` the (encoder, method) table of :func:`imgclust.spaces.default_space`
    decides (``dims`` then resizes its reduction); ``reduction`` overrides it.
    """
    budget = memory_budget or available_memory_bytes() // 2
    variance = None
    if reduction is None:
        choice = default_space(encoder, method)
        reduction, source = choice.reduction, choice.source
        if dims is None:
            dims, variance = choice.dims, choice.variance
    else:
        source = "--reduction"
    if reduction == "none":
        return "raw", cache.read_embeddings(encoder, max_bytes=budget), source
    stored = cache.list_groups(encoder, "reductions")
    if reduction in stored:  # an explicit stored key
        key = reduction
    else:
        key = reduce(cache.path, encoder, reduction, dims if dims is not None or variance is not None else DEFAULT_DIMS,
                     variance=variance, random_state=random_state, memory_budget=budget).key
    data, _ = cache.read_array(encoder, f"reductions/{key}/data")
    return key, data, source


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
) -> ClusterRun:
    """Cluster the cached embeddings and store the run in the cache.

    Parameters
    ----------
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
            if n_clusters is None and "distance_threshold" not in params and params.get("normalisation") != "raw":
                params["distance_threshold"] = defaults["distance_threshold"]
    auto = isinstance(n_clusters, str)
    if auto and n_clusters != "auto":
        raise UsageError(f"--n-clusters must be a positive integer or 'auto', got {n_clusters!r}",
                         hint="e.g. --n-clusters 10, or --n-clusters auto")
    if auto and cls.n_clusters_mode == "unused":
        raise UsageError(f"{method} finds the number of clusters itself; 'auto' does not apply", hint="drop --n-clusters")
    if cls.n_clusters_mode == "required" and n_clusters is None:
        raise UsageError(f"{method} needs the number of clusters", hint="pass --n-clusters K or --n-clusters auto")
    # Build once now so bad parameters fail before any heavy work ('auto' is validated with a stand-in K).
    probe_k = n_clusters if not auto else (2 if cls.n_clusters_mode == "required" else None)
    create_clusterer(method, n_clusters=probe_k, random_state=random_state, **params)
    space, X, space_source = input_space(cache_obj, encoder, method, reduction, dims, random_state)
    started = time.perf_counter()
    selection = None
    k = n_clusters
    if auto:
        from .select import choose_n_clusters

        choice = choose_n_clusters(X, random_state=random_state)
        k, selection = choice.n_clusters, choice.to_dict()
        params.pop("distance_threshold", None)
    if isinstance(k, int) and k > len(X):
        raise UsageError(f"--n-clusters {k} is larger than the number of images ({len(X)})", hint="lower --n-clusters")
    clusterer = create_clusterer(method, n_clusters=k, random_state=random_state, **params)
    clusterer.on_epoch = on_epoch
    views = cache_obj.read_views(encoder) if cls.needs_views else None
    labels = clusterer.fit_predict(X, views)
    seconds = round(time.perf_counter() - started, 3)
    run = ClusterRun(
        run_id="", encoder=encoder, method=method, params=_jsonable(clusterer.get_params()),
        n_clusters=clusterer.n_clusters_, n_clusters_requested=n_clusters, space=space, n_samples=len(labels),
        n_noise=int((labels < 0).sum()), seconds=seconds, labels=labels, selection=selection, estimator=clusterer,
        space_source=space_source)
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
                                 "selection": run.selection, "space_source": run.space_source, "created": now_iso()})
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
                      seconds=float(attrs["seconds"]), labels=labels, selection=attrs.get("selection"),
                      space_source=attrs.get("space_source"))


def run_space(cache: str | os.PathLike, run: ClusterRun) -> np.ndarray:
    """The data a run clustered (its reduction, or the raw embeddings)."""
    cache_obj = Cache(cache)
    if run.space == "raw":
        return cache_obj.read_embeddings(run.encoder, max_bytes=available_memory_bytes() // 2)
    data, _ = cache_obj.read_array(run.encoder, f"reductions/{run.space}/data")
    return data
