"""``assign``: put new images into the clusters of a stored run, without changing the run.

New images are embedded in memory with the run's encoder and weights. Runs of trained methods
(temi, icce, scan, unic, cc) assign through their stored head/classifier; every other run through
the nearest cluster centre in the raw embedding space (cosine: rows and centres ℓ2-normalised),
because the UMAP model behind a reduced space is not stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .cache import Cache, encoder_key
from .cluster import load_run
from .clusterers import Clusterer
from .decode import DecodeError, decode
from .discover import discover
from .encoders import create_encoder, resolve_spec
from .errors import UsageError
from .reduce import l2_normalise


@dataclass
class Assignment:
    run_id: str
    method: str  # "head" (trained predictor) or "nearest-centre"
    paths: list[str]
    clusters: list[int]
    similarity: list[float | None]  # cosine similarity to the chosen centre (nearest-centre only)
    failures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "method": self.method, "failures": self.failures,
                "images": [{"path": p, "cluster": c, "similarity": s} for p, c, s in zip(self.paths, self.clusters, self.similarity)]}


def nearest_centre(embeddings: np.ndarray, labels: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cluster of the most similar centre (cosine) for each row of ``new``, and that similarity."""
    ids = np.array(sorted(set(labels.tolist()) - {-1}))
    normed = l2_normalise(embeddings)
    centres = l2_normalise(np.stack([normed[labels == c].mean(0) for c in ids]))
    similarity = l2_normalise(new) @ centres.T
    best = similarity.argmax(1)
    return ids[best], similarity[np.arange(len(new)), best]


def embed_files(paths: Sequence[str], cache: Cache, encoder_name: str, device: str | None = None,
                batch_size: int = 32) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Embeddings of ``paths`` with the encoder (and weights) the cache was made with."""
    info = cache.info(encoder_name)
    weights = info["weights"] if info["weights"] != resolve_spec(encoder_name).weights else None
    encoder = create_encoder(encoder_name, weights=weights, device=device)
    good, arrays, failures = [], [], {}
    for path in paths:
        try:
            arrays.append(decode(path, encoder.preprocess))
            good.append(path)
        except DecodeError as error:
            failures[path] = str(error)
    vectors = [encoder.encode_padded(np.stack(arrays[i:i + batch_size]), batch_size) for i in range(0, len(arrays), batch_size)]
    return (np.concatenate(vectors) if vectors else np.empty((0, encoder.embedding_dim), np.float32)), good, failures


def assign(
    cache: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] = (),
    run: str | None = None,
    *,
    encoder: str | None = None,
    files_from: str | None = None,
    device: str | None = None,
    batch_size: int = 32,
) -> Assignment:
    """Assign the images named by ``inputs`` to the clusters of run ``run`` (latest by default)."""
    cache_obj = Cache(cache)
    stored = load_run(cache_obj.path, run, encoder)
    files = [f for f in discover(inputs, files_from=files_from)]
    unreadable = {f.path: f.error for f in files if f.error}
    new, paths, failures = embed_files([f.path for f in files if not f.error], cache_obj, stored.encoder, device, batch_size)
    failures.update(unreadable)
    if not paths:
        raise UsageError("none of the images to assign could be read", hint="; ".join(f"{p}: {r}" for p, r in list(failures.items())[:3]))
    with cache_obj.open() as fh:
        state_group = fh[f"encoders/{encoder_key(stored.encoder)}/runs/{stored.run_id}"].get("state")
        state = {k: state_group[k][()] for k in state_group} if state_group is not None else None
    if state is not None:
        clusters = Clusterer.from_state(state).predict(new)
        return Assignment(stored.run_id, "head", paths, clusters.tolist(), [None] * len(paths), failures)
    clusters, similarity = nearest_centre(cache_obj.read_embeddings(stored.encoder), stored.labels, new)
    return Assignment(stored.run_id, "nearest-centre", paths, clusters.tolist(), [float(s) for s in similarity], failures)
