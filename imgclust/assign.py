"""``assign``: put new images into the clusters of a stored run, without changing the run.

New images are embedded with the run's encoder and weights, through embed's loader, a batch at a time
(for a joint space, ``--encoder A+B``, by each of its encoders, combined as the joint table is). Runs of trained methods
(temi, icce, scan, unic, cc, turtle) assign through their stored head/classifier; every other run through
the nearest cluster centre in the raw embedding space (cosine: rows and centres ℓ2-normalised),
because the UMAP model behind a reduced space is not stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .cache import Cache
from .cluster import load_run
from .clusterers import Clusterer
from .decode import DEFAULT_MAX_PIXELS
from .discover import discover
from .embed import default_workers, encode_files
from .encoders import Encoder, best_device, create_encoder, resolve_spec
from .runtimes import LEGACY_RUNTIME, RUNTIMES
from .errors import UsageError
from .joint import JOINT_FAMILY, combine
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


def cluster_centres(chunks: Iterable[tuple[int, np.ndarray]], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, centres)``: each cluster's mean ℓ2-normalised embedding, normalised again; noise left out.

    ``chunks`` yields ``(first row, rows)`` as :meth:`Cache.iter_embeddings` does, so memory is one
    chunk plus K centres whatever the number of rows.
    """
    ids = np.array(sorted(set(labels.tolist()) - {-1}), dtype=np.int64)
    if not len(ids):
        raise UsageError("the run has no clusters to assign to (every image is noise)",
                         hint="assign to a run of another method, or with other parameters")
    position = np.full(int(labels.max()) + 1 if len(ids) else 0, -1)
    position[ids] = np.arange(len(ids))
    sums, counts = None, np.bincount(position[labels[labels >= 0]], minlength=len(ids))
    for start, chunk in chunks:
        rows = labels[start:start + len(chunk)]
        keep = rows >= 0
        sums = np.zeros((len(ids), chunk.shape[1])) if sums is None else sums
        np.add.at(sums, position[rows[keep]], l2_normalise(chunk[keep]))
    return ids, l2_normalise((sums / np.maximum(counts, 1)[:, None]).astype(np.float32))


def nearest_centre(ids: np.ndarray, centres: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cluster of the most similar centre (cosine) for each row of ``new``, and that similarity."""
    similarity = l2_normalise(new) @ centres.T
    best = similarity.argmax(1)
    return ids[best], similarity[np.arange(len(new)), best]


def run_encoder(cache: Cache, encoder_name: str, device: str | None = None, batch_size: int | None = None) -> Encoder:
    """The encoder (and weights) the cache's rows were made with, run by the same runtime where this
    device has it (else the best one it has: runtimes agree to ~1e-3, enough to place an image)."""
    info = cache.info(encoder_name)
    weights = info["weights"] if info["weights"] != resolve_spec(encoder_name).weights else None
    device = best_device(device)
    recorded = info.get("runtime", LEGACY_RUNTIME)
    runtime = recorded if recorded in RUNTIMES and RUNTIMES.get(recorded).missing(device) is None else None
    return create_encoder(encoder_name, weights=weights, device=device, runtime=runtime, batch_size=batch_size)


def assign(
    cache: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] = (),
    run: str | None = None,
    *,
    encoder: str | None = None,
    files_from: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
) -> Assignment:
    """Assign the images named by ``inputs`` to the clusters of run ``run`` (latest by default).

    Images go through the same loader as :func:`imgclust.embed` (decoding workers, padded batches,
    ``max_pixels``, the same failure reasons) and are assigned a batch at a time, so memory does not
    grow with the number of images. ``progress(done, total)`` is called after each batch.
    """
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}", hint="leave it out for the device's default")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}", hint="0 decodes in the main process")
    cache_obj = Cache(cache)
    stored = load_run(cache_obj.path, run, encoder)
    files = discover(inputs, files_from=files_from)
    failures = {f.path: f.error for f in files if f.error}
    method, place = _placer(cache_obj, stored)
    parts = joint_parts(cache_obj, stored.encoder)
    encoders = [run_encoder(cache_obj, part, device, batch_size) for part in parts]
    workers = default_workers(encoders[0].device) if workers is None else workers
    paths, clusters, similarity = [], [], []
    for results in _encode(encoders, [f for f in files if not f.error], workers, max_pixels, progress):
        good = [(f.path, vector) for f, vector, _ in results if vector is not None]
        failures.update({f.path: reason for f, vector, reason in results if vector is None})
        if good:
            batch_clusters, batch_similarity = place(np.stack([vector for _, vector in good]))
            paths += [path for path, _ in good]
            clusters += [int(c) for c in batch_clusters]
            similarity += list(batch_similarity)
    if not paths:
        raise UsageError("none of the images to assign could be read", hint="; ".join(f"{p}: {r}" for p, r in list(failures.items())[:3]))
    return Assignment(stored.run_id, method, paths, clusters, similarity, failures)


def joint_parts(cache_obj: Cache, encoder: str) -> list[str]:
    """The encoders whose embeddings make a table's rows: its parts for a joint space, else itself."""
    info = cache_obj.info(encoder)
    return list(info["parts"]) if info.get("family") == JOINT_FAMILY else [encoder]


def _encode(encoders: list[Encoder], files: list, workers: int, max_pixels: int | None,
            progress: Callable[[int, int], None] | None, group: int = 1024) -> Iterator[list]:
    """``encode_files``' results, per batch, with each vector in the run's space: for a joint space the
    files are embedded by every part, ``group`` files at a time (bounded memory), and combined as the
    joint table is (:func:`imgclust.joint.combine`); a file that fails in any part fails."""
    if len(encoders) == 1:
        yield from (results for results, _ in encode_files(encoders[0], files, workers, max_pixels, progress))
        return
    if progress:
        progress(0, len(files))
    for start in range(0, len(files), group):
        chunk = files[start:start + group]
        vectors: list[dict] = []
        reasons: dict[str, str] = {}
        for enc in encoders:
            vectors.append({})
            for results, _ in encode_files(enc, chunk, workers, max_pixels):
                vectors[-1].update({f.path: v for f, v, _ in results if v is not None})
                reasons.update({f.path: r for f, v, r in results if v is None and f.path not in reasons})
        out = []
        for f in chunk:
            if all(f.path in v for v in vectors):
                out.append((f, combine([v[f.path][None] for v in vectors])[0], ""))
            else:
                out.append((f, None, reasons.get(f.path, "could not be embedded")))
        if progress:
            progress(start + len(chunk), len(files))
        yield out


def _placer(cache_obj: Cache, stored) -> tuple[str, Callable]:
    """``(method, place)``: ``place(vectors) -> (clusters, similarities)`` for a stored run."""
    state = cache_obj.read_result(stored.encoder, "runs", stored.run_id).get("state")
    if state is not None:
        head = Clusterer.from_state(state)
        return "head", (lambda new: (head.predict(new), [None] * len(new)))
    ids, centres = cluster_centres(cache_obj.iter_embeddings(stored.encoder), stored.labels)

    def place(new):
        clusters, similarity = nearest_centre(ids, centres, new)
        return clusters, [float(v) for v in similarity]
    return "nearest-centre", place


def assign_vectors(
    cache: str | os.PathLike,
    vectors: str | os.PathLike,
    paths: str | os.PathLike,
    run: str | None = None,
    *,
    encoder: str | None = None,
    dataset: str | None = None,
) -> Assignment:
    """Assign vectors made elsewhere (a file :func:`imgclust.vectors.open_vectors` reads, with one
    path per line in ``paths``) to the clusters of run ``run``, a chunk at a time."""
    from .vectors import open_vectors, read_lines

    cache_obj = Cache(cache)
    stored = load_run(cache_obj.path, run, encoder)
    source = open_vectors(vectors, dataset)
    names = read_lines(paths, "paths")
    if len(names) != source.n:
        raise UsageError(f"{paths} lists {len(names)} paths but {source.source} holds {source.n} vectors",
                         hint="give exactly one path per vector, in the same order")
    dim = cache_obj.rows(stored.encoder).dim
    if source.dim != dim:
        raise UsageError(f"{source.source} has {source.dim}-d vectors; run {stored.run_id} clustered {dim}-d "
                         f"'{stored.encoder}' embeddings", hint="give vectors of the run's encoder")
    method, place = _placer(cache_obj, stored)
    clusters, similarity = [], []
    for chunk in source.chunks(4096):
        batch_clusters, batch_similarity = place(chunk)
        clusters += [int(c) for c in batch_clusters]
        similarity += list(batch_similarity)
    return Assignment(stored.run_id, method, names, clusters, similarity, {})
