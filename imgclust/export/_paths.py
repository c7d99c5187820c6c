"""``export --format paths``: the paths of a selection of images, one per line, for ``xargs`` and shell loops.

Filters combine (an image must pass all that are given): ``clusters`` keeps the images of those clusters of the
run (-1 is noise), ``outliers`` the images whose outlier score (:mod:`imgclust.outliers`) is at least
:data:`imgclust.outliers.MARK_SCORE` (highest score first), ``duplicates`` the images a duplicate group would drop
(:mod:`imgclust.duplicates`, at the encoder family's calibrated threshold; keepers stay out). With no filter every
image of the cache is listed. Only a cluster filter needs a stored run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from ..cache import Cache


def select_paths(cache: str | os.PathLike, run: str | None = None, encoder: str | None = None, *,
                 clusters: Sequence[int] = (), outliers: bool = False, duplicates: bool = False,
                 progress: Callable[[str, int, int], None] | None = None) -> list[str]:
    """The paths of the cache's images that pass every given filter, in cache row order (by score with
    ``outliers``); ``progress(stage, done, total)`` while the duplicates' or outliers' graph is made."""
    store = Cache(cache)
    name = store.resolve_encoder(encoder)
    paths = store.read_index(name).paths
    keep = np.ones(len(paths), bool)
    order = np.arange(len(paths))
    if clusters:
        from ..cluster import load_run

        labels = np.asarray(load_run(cache, run, name).labels)
        keep &= np.isin(labels, np.asarray(list(clusters), np.int64))
    if duplicates:
        from ..duplicates import find_duplicates

        drops = set(find_duplicates(cache, name, progress=progress).drop_paths)
        keep &= np.fromiter((str(p) in drops for p in paths), bool, len(paths))
    if outliers:
        from ..outliers import find_outliers

        report = find_outliers(cache, name, progress=progress)
        keep &= np.isin(np.arange(len(paths)), report.marked)
        order = report.top(len(paths))
    return [str(paths[i]) for i in order if keep[i]]
