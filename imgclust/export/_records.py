"""The per-image and per-cluster records every export format writes."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ImageRecord:
    """One image of a clustering run."""

    path: str
    cluster: int  # -1 = noise
    silhouette: float | None  # None where undefined (noise, a single cluster)
    distance: float  # euclidean distance to its cluster centre, in the space that was clustered
    label: str | None = None  # ground truth when known

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClusterSummary:
    """One cluster of a run: its size, quality and the image nearest its centre."""

    cluster: int
    size: int
    mean_silhouette: float | None
    representative: str  # path of the image nearest to the centre
    label_counts: dict[str, int] | None = None  # ground-truth mix when labels are known

    def to_dict(self) -> dict:
        return asdict(self)
