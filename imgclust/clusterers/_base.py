"""The clusterer base class and its parameter table (scikit-learn style).

A clusterer stores its parameters in ``__init__`` (validated there against ``params``, so a CLI
fails before any work), checks the data in ``fit``, and leaves ``labels_`` (int64, noise = -1)
and ``n_clusters_`` behind. Subclasses implement ``_fit(X, views) -> labels``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .._progress import OnProgress
from ..errors import ParameterError, ResourceError, UsageError
from ..knn import KnnGraph, Neighbours

_log = logging.getLogger("imgclust.clusterers")

#: key of the JSON config in :meth:`Clusterer.state`'s dict, and that dict's format version
STATE_CONFIG_KEY = "__config__"
STATE_FORMAT = 1


@dataclass(frozen=True)
class Param:
    """One documented parameter: its default, type and allowed values."""

    name: str
    default: Any
    type: type
    doc: str
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    choices: tuple | None = None
    nullable: bool = False
    pattern: str | None = None  # a regular expression the whole (string) value must match

    def describe(self) -> str:
        parts = []
        if self.choices:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        if self.pattern:
            parts.append(f"matching {self.pattern}")
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else self.low
            hi = "inf" if self.high is None else self.high
            parts.append(f"in {'[' if self.low_inclusive else '('}{lo}, {hi}]")
        if self.nullable:
            parts.append("or None")
        name = self.type.__name__
        kind = f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
        return " ".join([kind, *parts])

    def validate(self, value: Any, owner: str) -> Any:
        """Coerce (strings from the CLI included) and check ``value``; return the clean value."""
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if self.nullable:
                return None
            raise self._error(owner, value)
        try:
            value = _coerce(value, self.type)
        except (TypeError, ValueError):
            raise self._error(owner, value) from None
        if self.choices is not None and value not in self.choices:
            raise self._error(owner, value)
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            raise self._error(owner, value)
        if self.low is not None and (value < self.low or (not self.low_inclusive and value == self.low)):
            raise self._error(owner, value)
        if self.high is not None and value > self.high:
            raise self._error(owner, value)
        return value

    def _error(self, owner: str, value: Any) -> ParameterError:
        return ParameterError(
            f"The '{self.name}' parameter of {owner} must be {self.describe()}. Got {value!r} instead.",
            hint=f"{self.name}: {self.doc}",
        )


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, str):
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise TypeError(value)
    if kind is int:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(value)
        if isinstance(value, str):
            return int(value)
        if float(value) != int(value):
            raise ValueError(value)
        return int(value)
    if kind is float:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(value)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    return kind(value)


def available_memory_bytes() -> int:
    """Memory the process may still use: the smaller of MemAvailable (else physical memory) and what its
    memory cgroup (v1 or v2, e.g. a container's limit) leaves."""
    machine = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    machine = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if machine is None:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    headroom = cgroup_headroom_bytes()
    return machine if headroom is None else min(machine, headroom)


#: cgroup files per version: (limit, usage, reclaimable page cache key in memory.stat)
_CGROUP_FILES = {"v2": ("memory.max", "memory.current", "inactive_file"),
                 "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}


def cgroup_headroom_bytes(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """Bytes this process's memory cgroup still allows (limit - usage + reclaimable page cache), or None
    when there is no limit (or no cgroup file can be read)."""
    try:
        with open(proc_cgroup) as fh:
            entries = [line.rstrip("\n").split(":", 2) for line in fh if line.count(":") >= 2]
    except OSError:
        return None
    candidates = []
    for _, controllers, path in entries:
        if controllers == "":  # v2: one unified hierarchy
            candidates += [("v2", os.path.join(root, path.lstrip("/"))), ("v2", root)]
        elif "memory" in controllers.split(","):
            candidates += [("v1", os.path.join(root, "memory", path.lstrip("/"))), ("v1", os.path.join(root, "memory"))]
    for version, folder in candidates:
        limit_file, usage_file, cache_key = _CGROUP_FILES[version]
        try:
            with open(os.path.join(folder, limit_file)) as fh:
                limit_text = fh.read().strip()
            with open(os.path.join(folder, usage_file)) as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 2**60:  # no limit here (v1 writes a huge number)
            return None
        reclaimable = 0
        try:
            with open(os.path.join(folder, "memory.stat")) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == cache_key:
                        reclaimable = int(value)
        except (OSError, ValueError):
            pass
        return max(0, int(limit_text) - usage + reclaimable)
    return None


def check_pairwise_memory(n_samples: int, method: str, alternative: str, bytes_per_pair: int = 8, copies: int = 3) -> None:
    """Refuse an O(N^2) method whose matrices would not fit in the memory available now."""
    needed = n_samples * n_samples * bytes_per_pair * copies
    available = available_memory_bytes()
    if needed > 0.8 * available:
        raise ResourceError(
            f"{method} needs about {needed / 2**30:.1f} GiB for {n_samples} samples "
            f"(O(N^2) memory); only {available / 2**30:.1f} GiB is available",
            hint=f"use {alternative} instead, or cluster a sample of the images",
        )


def sample_rows(n: int, size: int, random_state: int) -> np.ndarray:
    """A seeded uniform sample of ``size`` of ``n`` row indices, without replacement, sorted (so that the
    rows are read in order); the same for the same seed (the auto-K sweep's and the trained heads' sample)."""
    return np.sort(np.random.default_rng(random_state).choice(n, size=size, replace=False))


def check_embeddings(X: Any, what: str = "X") -> np.ndarray:
    """A 2-D float array with finite values, or a clear UsageError."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise UsageError(f"{what} must be a 2-D array of shape (n_samples, n_features); got shape {X.shape}")
    if X.shape[0] == 0:
        raise UsageError(f"{what} holds no samples: there is nothing to cluster")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float64)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        raise UsageError(
            f"{what} has {int(bad.sum())} row(s) with NaN or Inf (first at row {int(np.flatnonzero(bad)[0])})",
            hint="the encoder produced non-finite embeddings; check the model or its weights",
        )
    return X


class Clusterer:
    """Base class of every clustering method in the registry.

    Class attributes describe the method for the registry, the CLI and the docs:

    ``name``, ``summary``, ``paper`` (where it comes from), ``params`` (the parameter table),
    ``n_clusters_mode`` ("required", "optional" or "unused"), ``input_space`` ("reduced" or "raw":
    what the pipeline feeds it by default), ``needs_views`` (augmented-view embeddings too) and
    ``quadratic_memory`` (O(N^2) memory: checked against available memory at fit) and
    ``supports_predict`` (it learns a predictor: ``state()`` / ``from_state()`` / ``predict()``
    persist it and put new samples into the learned clusters; others raise UsageError).

    How ``--n-clusters auto`` sweeps K (:mod:`imgclust.select`): ``nested_k`` (the clusterings at
    every K are cuts of one tree, so one fit serves all K), else one fit per K on a grid of at most
    ``auto_k_fits`` values; the sweep uses at most ``auto_k_samples`` rows (a uniform sample above).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    n_clusters_mode: ClassVar[str] = "optional"
    input_space: ClassVar[str] = "reduced"
    needs_views: ClassVar[bool] = False
    quadratic_memory: ClassVar[bool] = False
    supports_predict: ClassVar[bool] = False
    nested_k: ClassVar[bool] = False
    auto_k_fits: ClassVar[int] = 40
    auto_k_samples: ClassVar[int] = 5000
    #: how the method runs at large N (shown by ``imgclust methods NAME``); empty when nothing changes with N
    at_scale: ClassVar[str] = ""

    #: optional progress callback of trained methods: ``on_epoch(epoch, epochs, loss)`` after each epoch
    #: (epoch counts from 1 to epochs). Set it on the instance; None (default) keeps training quiet.
    on_epoch: Callable[[int, int, float], None] | None = None
    #: optional progress callback of methods that fit in steps, ``on_progress(done, total)`` (agglomerative at
    #: scale: rows merged of those to merge before the chain). Set it on the instance.
    on_progress: OnProgress | None = None

    labels_: np.ndarray
    n_clusters_: int

    def __init__(self, n_clusters: int | None = None, random_state: int = 0, **params: Any):
        owner = type(self).__name__
        if n_clusters is not None:
            n_clusters = Param("n_clusters", None, int, "number of clusters", low=1).validate(n_clusters, owner)
        if self.n_clusters_mode == "required" and n_clusters is None:
            raise UsageError(f"{self.name} needs the number of clusters", hint="pass --n-clusters K")
        if self.n_clusters_mode == "unused" and n_clusters is not None:
            raise UsageError(
                f"{self.name} finds the number of clusters itself and takes no n_clusters",
                hint="drop --n-clusters, or pick a method that takes it (agglomerative, kmeans, ...)",
            )
        self.n_clusters = n_clusters
        self.random_state = int(random_state)
        table = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(table))
        if unknown:
            raise ParameterError(
                f"{self.name} has no parameter {', '.join(map(repr, unknown))}",
                hint=f"its parameters: {', '.join(table) or 'none'}",
            )
        for p in self.params:
            setattr(self, p.name, p.validate(params.get(p.name, p.default), owner))
        self._check_params()

    def _check_params(self) -> None:
        """Checks that involve several parameters at once (e.g. ward needs euclidean).

        Called at the end of ``__init__``, after each parameter was validated on its own;
        subclasses override it and raise :class:`ParameterError`.
        """

    def get_params(self) -> dict[str, Any]:
        values = {p.name: getattr(self, p.name) for p in self.params}
        return {"n_clusters": self.n_clusters, "random_state": self.random_state, **values}

    def preflight(self, n_samples: int) -> None:
        """Refuse at once what cannot run on ``n_samples`` rows here (the pipeline calls it before any
        reduction, so nothing runs for an hour and then refuses); ``fit`` calls it too."""
        if self.n_clusters is not None and self.n_clusters > n_samples:
            raise UsageError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}", hint="lower --n-clusters")
        if self.quadratic_memory:
            check_pairwise_memory(n_samples, self.name, alternative="agglomerative or kmeans")

    def fit(self, X: Any, views: np.ndarray | None = None, neighbours: "Neighbours | None" = None) -> "Clusterer":
        """Cluster the rows of ``X``; ``neighbours`` (an :class:`imgclust.knn.Neighbours` over these rows)
        shares a kNN graph computed or stored before, else the method computes the one it needs."""
        X = check_embeddings(X)
        self.preflight(X.shape[0])
        if neighbours is not None and len(neighbours) != X.shape[0]:
            raise UsageError(f"the neighbour graph holds {len(neighbours)} rows, X has {X.shape[0]}")
        self._graphs = neighbours if neighbours is not None else Neighbours(X, random_state=self.random_state)
        if self.needs_views and views is None:
            raise UsageError(
                f"{self.name} trains on augmented-view embeddings, and none are stored",
                hint="embed with --views N first (e.g. imgclust embed PATH --views 2)",
            )
        try:
            labels = np.asarray(self._fit(X, views), dtype=np.int64)
        finally:
            self._graphs = None  # the rows and their graphs are the caller's (or garbage): a fitted model keeps neither
        self.labels_ = labels
        self.n_clusters_ = int(len(np.unique(labels[labels >= 0])))
        return self

    def fit_predict(self, X: Any, views: np.ndarray | None = None, neighbours: "Neighbours | None" = None) -> np.ndarray:
        return self.fit(X, views, neighbours).labels_

    def neighbour_graph(self, k: int, metric: str = "euclidean", centred: bool = False) -> KnnGraph:
        """The ``k`` nearest other rows of each row of the data being fitted (the shared graph; during fit).

        ``centred``: neighbours among the rows minus their mean (cosine on centred rows: CDP, the trained
        heads), also computed once per space (:func:`imgclust.clusterers._neighbours.centred_neighbours`).
        """
        if centred:
            from ._neighbours import centred_neighbours

            return centred_neighbours(self._graphs).graph(k, metric)
        return self._graphs.graph(k, metric)

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    # -- training progress (trained methods) ------------------------------------------------------

    def _report_epoch(self, epoch: int, epochs: int, loss: float) -> None:
        """Called by trained methods after each epoch: logs at DEBUG and calls ``on_epoch`` if set."""
        _log.debug("%s epoch %d/%d loss %.5f", self.name, epoch, epochs, loss)
        if self.on_epoch is not None:
            self.on_epoch(epoch, epochs, loss)

    # -- persistence and assignment of new samples (methods with supports_predict) ---------------

    def state(self) -> dict[str, np.ndarray]:
        """The fitted predictor as a flat dict of numpy arrays (HDF5-friendly: one dataset per key).

        Key ``STATE_CONFIG_KEY`` holds the method name, n_clusters, random_state, the parameters and
        the format version as UTF-8 JSON in a uint8 array; the other keys are the method's weights.
        Rebuild with :meth:`Clusterer.from_state`.
        """
        self._check_predictor()
        if not hasattr(self, "n_clusters_"):
            raise UsageError(f"this {self.name} clusterer is not fitted yet", hint="call fit(X) first")
        out = {k: np.ascontiguousarray(v) for k, v in self._state().items()}
        config = {
            "format": STATE_FORMAT,
            "method": self.name,
            "n_clusters": self.n_clusters,
            "random_state": self.random_state,
            "params": {p.name: getattr(self, p.name) for p in self.params},
            "n_clusters_": int(self.n_clusters_),
        }
        out[STATE_CONFIG_KEY] = np.frombuffer(json.dumps(config).encode("utf-8"), dtype=np.uint8).copy()
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Clusterer":
        """Rebuild a fitted predictor from :meth:`state`'s dict (values may be h5py datasets).

        ``Clusterer.from_state(d)`` finds the method by the name stored in ``d``; a subclass checks
        that the name is its own.
        """
        if STATE_CONFIG_KEY not in state:
            raise UsageError(f"not a clusterer state: the key {STATE_CONFIG_KEY!r} is missing")
        config = json.loads(np.asarray(state[STATE_CONFIG_KEY], dtype=np.uint8).tobytes().decode("utf-8"))
        if config.get("format") != STATE_FORMAT:
            raise UsageError(f"clusterer state format {config.get('format')!r} is not supported (want {STATE_FORMAT})")
        if cls is Clusterer:
            from . import CLUSTERERS

            cls = CLUSTERERS.get(config["method"])
        elif config["method"] != cls.name:
            raise UsageError(f"this state belongs to {config['method']!r}, not {cls.name!r}")
        obj = cls(n_clusters=config["n_clusters"], random_state=config["random_state"], **config["params"])
        obj._check_predictor()
        obj._load_state({k: np.asarray(v) for k, v in state.items() if k != STATE_CONFIG_KEY})
        obj.n_clusters_ = int(config["n_clusters_"])
        return obj

    def predict(self, X: Any) -> np.ndarray:
        """Put new samples (same embedding space as fit's X) into the learned clusters."""
        self._check_predictor()
        if not hasattr(self, "n_clusters_"):
            raise UsageError(f"this {self.name} clusterer is not fitted yet", hint="call fit(X) first")
        return np.asarray(self._predict(check_embeddings(X)), dtype=np.int64)

    def _check_predictor(self) -> None:
        if not self.supports_predict:
            raise UsageError(
                f"{self.name} cannot assign new samples to its clusters",
                hint="use a method that learns a predictor (temi, icce, scan, unic, cc, turtle)",
            )

    def _state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _predict(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError
