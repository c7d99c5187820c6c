"""``assign``: put new images into the clusters of a stored run, without changing the run.

New images are embedded with the run's encoder and weights, through embed's loader, a batch at a time
(for a joint space, ``--encoder A+B``, by each of its encoders, combined as the joint table is). Runs of trained methods
(temi, icce, scan, unic, cc, turtle) assign through their stored head/classifier; every other run, in the raw
embedding space (the UMAP model behind a reduced space is not stored), either through the nearest cluster
centre (cosine: rows and centres ℓ2-normalised; the default) or, with ``vote="knn"``, through a vote of the
``k`` nearest clustered images (cosine similarity as the weight; noise does not vote), which follows
clusters of any shape where a centre only suits round ones. The vote searches the run's rows with
:class:`imgclust.knn.NeighbourSearch` (FAISS: exact, or approximate with a measured recall at scale).
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
from .phash import NO_HASH
from .encoders import Encoder, best_device, create_encoder, resolve_spec
from .runtimes import LEGACY_RUNTIME, RUNTIMES
from .errors import ResourceError, UsageError
from .knn import NeighbourSearch
from .clusterers._base import available_memory_bytes
from .joint import JOINT_FAMILY, combine
from .knn import l2_normalise


#: How runs without a trained head place new images (``assign --vote``).
VOTES = ("centre", "knn")
#: Neighbours that vote in ``--vote knn``.
DEFAULT_VOTE_K = 15


@dataclass
class Assignment:
    run_id: str
    method: str  # "head" (trained predictor), "nearest-centre" or "knn-vote"
    paths: list[str]
    clusters: list[int]
    # cosine similarity to the chosen centre (nearest-centre), or the mean similarity of the neighbours
    # that voted for the chosen cluster (knn-vote); None for heads
    similarity: list[float | None]
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


def knn_vote(neighbour_labels: np.ndarray, similarities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's cluster by a vote of its neighbours, weighted by their similarity, and the mean similarity
    of the winning voters. Noise (-1) does not vote; a row whose neighbours are all noise gets -1; a tie goes
    to the cluster whose voters are nearest (the first of them in the neighbour order)."""
    clusters = np.full(len(neighbour_labels), -1, np.int64)
    support = np.full(len(neighbour_labels), np.nan)
    for row, (labels, sims) in enumerate(zip(neighbour_labels, similarities)):
        voting = labels >= 0
        if not voting.any():
            continue
        ids, first, inverse = np.unique(labels[voting], return_index=True, return_inverse=True)
        # a neighbour at similarity <= 0 still counts a little
        totals = np.bincount(inverse, weights=np.where(sims[voting] > 0, sims[voting], 1e-9))
        best = np.flatnonzero(totals >= totals.max() * (1 - 1e-12))
        winner = best[np.argmin(first[best])]
        clusters[row] = ids[winner]
        support[row] = float(sims[voting][inverse == winner].mean())
    return clusters, support


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
    vote: str = "centre",
    k: int = DEFAULT_VOTE_K,
) -> Assignment:
    """Assign the images named by ``inputs`` to the clusters of run ``run`` (latest by default).

    Images go through the same loader as :func:`imgclust.embed` (decoding workers, padded batches,
    ``max_pixels``, the same failure reasons) and are assigned a batch at a time, so memory does not
    grow with the number of images. ``progress(done, total)`` is called after each batch. ``vote``:
    ``centre`` (nearest cluster centre) or ``knn`` (a vote of the ``k`` nearest clustered images); runs of
    trained methods always use their head.
    """
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}", hint="leave it out for the device's default")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}", hint="0 decodes in the main process")
    cache_obj = Cache(cache)
    stored = load_run(cache_obj.path, run, encoder)
    files = discover(inputs, files_from=files_from)
    failures = {f.path: f.error for f in files if f.error}
    method, place = _placer(cache_obj, stored, vote, k, n_queries=len(files))
    parts = joint_parts(cache_obj, stored.encoder)
    encoders = [run_encoder(cache_obj, part, device, batch_size) for part in parts]
    workers = default_workers(encoders[0].device) if workers is None else workers
    paths, clusters, similarity = [], [], []
    for results in _encode(encoders, [f for f in files if not f.error], workers, max_pixels, progress):
        good = [(f.path, vector) for f, vector, _, _ in results if vector is not None]
        failures.update({f.path: reason for f, vector, reason, _ in results if vector is None})
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
        phashes: dict[str, int] = {}
        for enc in encoders:
            vectors.append({})
            for results, _ in encode_files(enc, chunk, workers, max_pixels):
                vectors[-1].update({f.path: v for f, v, _, _ in results if v is not None})
                reasons.update({f.path: r for f, v, r, _ in results if v is None and f.path not in reasons})
                phashes.update({f.path: h for f, _, _, h in results})
        out = []
        for f in chunk:
            if all(f.path in v for v in vectors):
                out.append((f, combine([v[f.path][None] for v in vectors])[0], "", phashes[f.path]))
            else:
                out.append((f, None, reasons.get(f.path, "could not be embedded"), phashes.get(f.path, int(NO_HASH))))
        if progress:
            progress(start + len(chunk), len(files))
        yield out


def _placer(cache_obj: Cache, stored, vote: str, k: int, n_queries: int) -> tuple[str, Callable]:
    """``(method, place)``: ``place(vectors) -> (clusters, similarities)`` for a stored run."""
    if vote not in VOTES:
        raise UsageError(f"--vote must be one of {', '.join(VOTES)}, got {vote!r}",
                         hint="centre: the nearest cluster centre; knn: a vote of the nearest clustered images")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"--k must be a positive integer, got {k!r}", hint=f"{DEFAULT_VOTE_K} is the default")
    state = cache_obj.read_result(stored.encoder, "runs", stored.run_id).get("state")
    if state is not None:
        head = Clusterer.from_state(state)
        return "head", (lambda new: (head.predict(new), [None] * len(new)))
    if vote == "knn":
        return "knn-vote", _voter(cache_obj, stored, k, n_queries)
    ids, centres = cluster_centres(cache_obj.iter_embeddings(stored.encoder), stored.labels)

    def place(new):
        clusters, similarity = nearest_centre(ids, centres, new)
        return clusters, [float(v) for v in similarity]
    return "nearest-centre", place


def _voter(cache_obj: Cache, stored, k: int, n_queries: int) -> Callable:
    rows = cache_obj.rows(stored.encoder)
    needed = len(rows) * rows.dim * 4 * 2  # the rows and the search's normalised copy
    if needed > 0.8 * available_memory_bytes():
        raise ResourceError(f"the k-NN vote holds the run's {len(rows)} embeddings ({needed / 2**30:.1f} GiB); "
                            f"only {available_memory_bytes() / 2**30:.1f} GiB is available",
                            hint="use --vote centre (memory: one centre per cluster)")
    search = NeighbourSearch(rows.read_embeddings(), k, "cosine", n_queries=max(n_queries, 1))
    labels = stored.labels

    def place(new):
        idx, dist = search(new)
        clusters, support = knn_vote(labels[idx], 1.0 - dist)
        return clusters, [None if np.isnan(v) else float(v) for v in support]
    return place


def assign_vectors(
    cache: str | os.PathLike,
    vectors: str | os.PathLike,
    paths: str | os.PathLike,
    run: str | None = None,
    *,
    encoder: str | None = None,
    dataset: str | None = None,
    vote: str = "centre",
    k: int = DEFAULT_VOTE_K,
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
    method, place = _placer(cache_obj, stored, vote, k, n_queries=source.n)
    clusters, similarity = [], []
    for chunk in source.chunks(4096):
        batch_clusters, batch_similarity = place(chunk)
        clusters += [int(c) for c in batch_clusters]
        similarity += list(batch_similarity)
    return Assignment(stored.run_id, method, names, clusters, similarity, {})
