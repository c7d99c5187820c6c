"""The per-image and per-cluster records every export format writes.

A run's images are held as columns (:class:`RunTable`, one array per field), never as one Python
object per image: the writers stream them a block of rows at a time, so an export's memory does
not grow with the run beyond those arrays. :class:`ImageRecord` is one row, made only for the rows
being written or shown.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass(frozen=True)
class ImageRecord:
    """One image of a clustering run."""

    path: str
    cluster: int  # -1 = noise
    silhouette: float | None  # None where undefined (noise, a single cluster)
    distance: float  # euclidean distance to its cluster centre, in the space that was clustered
    label: str | None = None  # ground truth when known
    outlier_score: float | None = None  # imgclust.outliers: k-th neighbour distance over its median

    def to_dict(self) -> dict:
        return asdict(self)


IMAGE_FIELDS = tuple(f.name for f in fields(ImageRecord))


@dataclass(frozen=True)
class ClusterSummary:
    """One cluster of a run: its size, quality and the image nearest its centre."""

    cluster: int
    size: int
    mean_silhouette: float | None
    representative: str  # path of the image nearest to the centre
    label_counts: dict[str, int] | None = None  # ground-truth mix when labels are known
    names: str | None = None  # CLIP encoders: "word (similarity), ..." (imgclust.names)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunTable:
    """Every image of a run as columns: ``paths``, ``clusters`` (ints, -1 noise), ``silhouettes``
    (floats, NaN where undefined), ``distances`` (floats), ``labels`` (strings, ``""`` or None
    where unknown; None when the run has no ground truth) and ``outlier_scores`` (floats; None when
    not computed)."""

    paths: np.ndarray
    clusters: np.ndarray
    silhouettes: np.ndarray
    distances: np.ndarray
    labels: np.ndarray | None = None
    outlier_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.clusters = np.asarray(self.clusters, np.int64)
        self.silhouettes = np.asarray(self.silhouettes, np.float64)
        self.distances = np.asarray(self.distances, np.float64)
        if self.outlier_scores is not None:
            self.outlier_scores = np.asarray(self.outlier_scores, np.float64)
        n = len(self.paths)
        if not (len(self.clusters) == len(self.silhouettes) == len(self.distances) == n) or (
            self.labels is not None and len(self.labels) != n
        ) or (self.outlier_scores is not None and len(self.outlier_scores) != n):
            raise ValueError("every column of a RunTable needs one entry per image")

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord]) -> RunTable:
        """The columns of a sequence of records (small runs, tests, callers that built records)."""
        labels = [r.label for r in records]
        return cls(
            np.array([r.path for r in records], dtype=object),
            np.array([r.cluster for r in records], np.int64),
            np.array([np.nan if r.silhouette is None else r.silhouette for r in records], np.float64),
            np.array([np.nan if r.distance is None else r.distance for r in records], np.float64),
            None if all(label is None for label in labels) else np.array(labels, dtype=object),
            None if all(r.outlier_score is None for r in records)
            else np.array([np.nan if r.outlier_score is None else r.outlier_score for r in records], np.float64),
        )

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[tuple]:
        """Rows ``start:stop`` as plain tuples in :data:`IMAGE_FIELDS` order (None where undefined)."""
        stop = len(self) if stop is None else stop
        sil = self.silhouettes[start:stop]
        sil = np.where(np.isfinite(sil), sil, None).tolist() if not np.isfinite(sil).all() else sil.tolist()
        labels = ([str(v) if v else None for v in self.labels[start:stop]] if self.labels is not None
                  else [None] * (stop - start))
        scores = (self.outlier_scores[start:stop].tolist() if self.outlier_scores is not None
                  else [None] * (stop - start))
        return zip((str(p) for p in self.paths[start:stop]), self.clusters[start:stop].tolist(), sil,
                   self.distances[start:stop].tolist(), labels, scores)

    def record(self, i: int) -> ImageRecord:
        """Row ``i`` as an :class:`ImageRecord`."""
        return ImageRecord(*next(self.rows(i, i + 1)))

    def blocks(self, rows: int = 65536) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of consecutive blocks of at most ``rows`` rows."""
        for start in range(0, len(self), rows):
            yield start, min(len(self), start + rows)
