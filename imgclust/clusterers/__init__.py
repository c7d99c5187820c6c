"""The clusterer registry: every clustering method is a named entry (``CLUSTERERS``).

Add a method by subclassing :class:`Clusterer` in a module of this package and registering it
with ``@register_clusterer``.
"""

from __future__ import annotations

from .._registry import Registry
from ._base import Clusterer, Param, check_embeddings, check_pairwise_memory

CLUSTERERS: Registry[type[Clusterer]] = Registry("clustering method")


def register_clusterer(cls: type[Clusterer]) -> type[Clusterer]:
    CLUSTERERS.register(cls.name, cls)
    return cls


def create_clusterer(name: str, n_clusters: int | None = None, random_state: int = 0, **params) -> Clusterer:
    """Build the clusterer ``name`` with validated parameters (like ``timm.create_model``)."""
    return CLUSTERERS.get(name)(n_clusters=n_clusters, random_state=random_state, **params)


def list_clusterers(pattern: str | None = None) -> list[str]:
    return CLUSTERERS.names(pattern)


__all__ = [
    "CLUSTERERS",
    "Clusterer",
    "Param",
    "check_embeddings",
    "check_pairwise_memory",
    "create_clusterer",
    "list_clusterers",
    "register_clusterer",
]

from . import _agglomerative, _centroid, _density, _graph  # noqa: E402,F401  (registers the built-ins)
from . import _heads, _contrastive, _turtle  # noqa: E402,F401  (deep heads on frozen embeddings)
