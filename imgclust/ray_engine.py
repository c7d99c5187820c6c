"""``embed --engine ray``: the encoding loop of ``embed`` on a Ray cluster, through Ray Data.

The driver (the process running ``embed``) does everything the local engine does -- discovery, the
session lock, working out what is new, the journal, the commit -- and hands only the loop that turns
pending files into embeddings to Ray Data::

    paths (driver) -> decode: imgclust.decode, in CPU tasks (failures become a reason, as locally)
                   -> encode: an actor pool, one model per actor, on its GPU with --gpus-per-worker
                   -> (index, vector, reason) rows streamed back to the driver

The driver journals what comes back exactly as the local engine does (:mod:`imgclust.embed`), so
resuming after a killed driver, the failure records and the commit are the same code, and the rows
equal the local engine's (same decoding, same runtime and padded batch size).

Blocks are shipped to the driver rather than written by the workers into the cache folder: an
embedding is 2-5 KB against the ~100 KB image it comes from, so the extra traffic is small, and
the cache then needs no file system that every node can write (HDF5 and ``flock`` on network file
systems are unreliable, and the store's clean-up of temporary files identifies writers by local
process id). Every node must read the images at the paths the driver discovered.

Ray retries a decode task or an encoder actor that dies (Ray Data restarts pool actors and re-runs
their batches), so a lost worker costs time, not rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np

from .decode import Preprocess
from .discover import ImageFile
from .errors import ImgclustError, UsageError

INSTALL_HINT = 'pip install "imgclust[ray]"'
PATHS_PER_BLOCK_BATCHES = 8  # a read block holds this many encoder batches of paths
DECODE_BATCHES_PER_PROCESS = 10_000


def require_ray():
    """The ``ray`` module, or a :class:`UsageError` saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the ray[data] extra: pyarrow, pandas)
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray Data, which is not installed ({exc})", hint=INSTALL_HINT) from None
    return ray


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Connect to the Ray cluster at ``address`` (``auto``: the one ``ray start`` runs on this machine;
    None: the one ``RAY_ADDRESS`` names, else a new local instance). A process that is already
    connected (a library caller that ran ``ray.init`` itself) keeps its connection."""
    ray = require_ray()
    if ray.is_initialized():
        yield
        return
    # "local" starts a new instance: without it, Ray would join whichever cluster `ray start` last ran here.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=True)
    except ConnectionError as exc:
        raise UsageError(f"--ray-address {address}: cannot connect to a Ray cluster ({exc})",
                         hint="start one with 'ray start --head', or leave --ray-address out for a local instance") from None
    try:
        yield
    finally:
        ray.shutdown()


def worker_device(device: str | None, gpus_per_worker: float) -> str:
    """The device the encoder actors run on: a GPU when each has a share of one, else the CPU."""
    if gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}", hint="1 gives each encoder actor a GPU")
    wanted = "cuda" if gpus_per_worker > 0 else "cpu"
    if device is not None and device.split(":")[0] != wanted:
        raise UsageError(f"--device {device} with --engine ray: the encoder actors run on the "
                         f"{'GPU' if wanted == 'cuda' else 'CPU'} (--gpus-per-worker {gpus_per_worker:g})",
                         hint="--gpus-per-worker 1 runs them on GPUs; 0 on CPUs" if wanted == "cpu" else "leave --device out")
    return wanted


def resolve_runtime_on_worker(requested: str | None, family: str, device: str, recorded: str | None,
                              gpus_per_worker: float) -> str:
    """:func:`imgclust.runtimes.resolve_runtime` where the encoders will run (the driver may have no GPU)."""
    ray = require_ray()
    answer = ray.get(ray.remote(num_cpus=0, num_gpus=gpus_per_worker)(_resolve_runtime).remote(
        requested, family, device, recorded))
    if isinstance(answer, dict):
        raise UsageError(answer["message"], hint=answer["hint"])
    return answer


def _resolve_runtime(requested, family, device, recorded):
    from .runtimes import resolve_runtime

    try:
        return resolve_runtime(requested, family, device, recorded)
    except ImgclustError as exc:  # returned, not raised: Ray would wrap it in its own traceback
        return {"message": exc.message, "hint": exc.hint}


def default_gpus_per_worker() -> float:
    """One GPU per encoder actor when the cluster has GPUs, else none (CPU actors)."""
    return 1.0 if require_ray().cluster_resources().get("GPU", 0) else 0.0


def default_workers(gpus_per_worker: float) -> int:
    """Encoder actors: as many as the cluster's GPUs hold at ``gpus_per_worker`` each, else one per node."""
    ray = require_ray()
    if gpus_per_worker > 0:
        return max(1, int(ray.cluster_resources().get("GPU", 0) / gpus_per_worker))
    return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))


def _decode_batch(batch: dict, spec: Preprocess, max_pixels: int | None) -> dict:
    """Ray task: decode a batch of paths (a failed one is an all-zero image with its reason), with each
    image's perceptual hash."""
    from .decode import decode_or_reason

    images = np.zeros((len(batch["path"]), spec.size, spec.size, 3), np.uint8)
    reasons, phashes = [], np.empty(len(batch["path"]), np.uint64)
    for k, path in enumerate(batch["path"]):
        image, reason, phashes[k] = decode_or_reason(str(path), spec, max_pixels)
        if image is not None:
            images[k] = image
        reasons.append(reason)
    return {"index": batch["index"], "image": images, "reason": np.array(reasons, dtype=object), "phash": phashes}


class _EncodeActor:
    """One model per actor (its GPU's, with --gpus-per-worker), built once; encodes decoded batches."""

    def __init__(self, encoder: str, weights: str | None, device: str, runtime: str, batch_size: int):
        from .encoders import create_encoder

        # Raised from the first call rather than here, where Ray would first retry the actor.
        self.enc, self.error = None, None
        try:
            self.enc = create_encoder(encoder, weights=weights, device=device, runtime=runtime, batch_size=batch_size)
        except ImgclustError as exc:
            self.error = WorkerError.of(exc)

    def __call__(self, batch: dict) -> dict:
        from .encoders import finish_batch

        if self.error is not None:
            raise self.error

        decoded = np.flatnonzero(batch["reason"] == "")
        images = np.ascontiguousarray(batch["image"][decoded])
        failures = [(k, str(batch["reason"][k])) for k in np.flatnonzero(batch["reason"] != "")]
        pending = self.enc.submit(images) if len(decoded) else None
        positions = list(range(len(batch["index"])))
        results, recomputed = finish_batch(self.enc, positions, list(decoded), images, failures, pending,
                                           dict(enumerate(batch["phash"].tolist())))
        vectors = np.zeros((len(results), self.enc.embedding_dim), np.float32)
        for row, (_, vector, _, _) in enumerate(results):
            if vector is not None:
                vectors[row] = vector
        order = [k for k, _, _, _ in results]
        counts = np.zeros(len(results), np.int64)  # the batch's count of rows recomputed in float32, on its first row
        counts[:1] = recomputed
        return {"index": np.asarray(batch["index"])[order], "vector": vectors,
                "reason": np.array([reason for _, _, reason, _ in results], dtype=object), "recomputed": counts,
                "phash": np.array([phash for _, _, _, phash in results], np.uint64)}


def encode_files(files: Sequence[ImageFile], *, encoder: str, weights: str | None, device: str, runtime: str,
                 batch_size: int, preprocess: Preprocess, max_pixels: int | None, workers: int,
                 gpus_per_worker: float, progress=None,
                 ) -> Iterator[tuple[list[tuple[ImageFile, np.ndarray | None, str, int]], int]]:
    """Decode and encode ``files`` on the connected Ray cluster; yields what :func:`imgclust.embed.encode_files`
    yields, per block: ``(results, recomputed)`` with ``(file, vector, "", phash)`` or ``(file, None, reason, phash)``."""
    import pyarrow as pa
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # progress is the caller's (on stderr, with rich)
    context.execution_options.preserve_order = True  # the same batches in every run
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no execution plans on stderr
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # nor "progress bars disabled"
    if weights not in (None, "random"):
        weights = os.path.abspath(weights)  # actors run in other working folders
    per_block = batch_size * PATHS_PER_BLOCK_BATCHES
    paths = pa.table({"index": np.arange(len(files), dtype=np.int64), "path": [f.path for f in files]})
    blocks = [paths.slice(start, per_block) for start in range(0, len(files), per_block)]
    dataset = (ray.data.from_arrow(blocks)
               # max_calls (a decode worker process is replaced after that many batches; the value matters
               # little) is a task-only setting: it keeps Ray Data from fusing decoding into the encoder
               # actors, where images would be decoded one batch at a time between forward passes.
               .map_batches(_decode_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1,
                            max_calls=DECODE_BATCHES_PER_PROCESS,
                            fn_kwargs={"spec": preprocess, "max_pixels": max_pixels})
               .map_batches(_EncodeActor, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=workers),
                            num_cpus=0 if gpus_per_worker > 0 else 1, num_gpus=gpus_per_worker,
                            fn_constructor_kwargs={"encoder": encoder, "weights": weights, "device": device,
                                                   "runtime": runtime, "batch_size": batch_size}))
    done = 0
    if progress:
        progress(0, len(files))
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as exc:
            _raise_imgclust_error(exc)
            raise
        results = [(files[int(i)], None if reason else vector, str(reason), int(phash))
                   for i, vector, reason, phash in zip(batch["index"], batch["vector"], batch["reason"], batch["phash"])]
        done += len(results)
        yield results, int(batch["recomputed"].sum())
        if progress:
            progress(done, len(files))


class WorkerError(Exception):
    """An imgclust error raised on a Ray worker. Ray Data delivers a worker's exception to the driver only
    as the text of its traceback, so the error travels as one line of JSON that the driver turns back
    into the same :class:`ImgclustError` (message and hint)."""

    @classmethod
    def of(cls, exc: ImgclustError) -> "WorkerError":
        return cls(json.dumps({"class": type(exc).__name__, "message": exc.message, "hint": exc.hint}))


_WORKER_ERROR = re.compile(r"WorkerError: (\{.*\})")


def _raise_imgclust_error(exc: BaseException) -> None:
    """Raise the :class:`ImgclustError` a worker reported (missing weights on a node, say), if it did."""
    from . import errors

    match = _WORKER_ERROR.search(str(exc))
    if match is None:
        return
    error = json.loads(match.group(1))
    kind = getattr(errors, error["class"], ImgclustError)
    raise kind(f"on a Ray worker: {error['message']}", hint=error["hint"]) from None
