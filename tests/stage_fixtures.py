"""A real HDF5 cache of known structure: well-separated blobs with labels, for the stage tests."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_blobs

from imgclust.cache import Cache, NewRows

ENCODER = "blobs"


def blob_cache(path, n_per=30, centers=4, dim=16, seed=0, files_dir=None) -> Cache:
    """A cache whose rows are ``centers`` blobs; labels are ``class-<k>``; paths are real files when ``files_dir``."""
    x, y = make_blobs(n_samples=n_per * centers, centers=centers, n_features=dim, cluster_std=0.5,
                      center_box=(-20, 20), random_state=seed)
    order = np.argsort([f"{i:04d}" for i in range(len(x))])
    x, y = x[order].astype(np.float32), y[order]
    if files_dir is not None:
        from .conftest import make_image

        paths = [str(make_image(files_dir / f"{i:04d}.png", (int(c) * 60 % 255, 90, 200), size=(12, 10))) for i, c in enumerate(y)]
    else:
        paths = [f"/nonexistent/{i:04d}.jpg" for i in range(len(x))]
    cache = Cache(path)
    attrs = {"encoder": ENCODER, "family": "test", "architecture": "blobs", "weights": "none", "embedding_dim": dim,
             "preprocess": "{}"}
    rows = NewRows(paths, np.zeros(len(x), np.int64), np.zeros(len(x), np.int64), [f"class-{k}" for k in y],
                   [""] * len(x), x)
    with cache.writer():
        cache.write_rows(ENCODER, attrs, rows)
    return cache
