"""``embed``: images -> one embedding each, in the resumable HDF5 cache.

The work list is every discovered image that the cache does not already hold unchanged (same
size and mtime, or, when those changed, the same content hash). Decoding runs in DataLoader worker
processes that hand uint8 images over through shared memory, overlapped with the model (run by the
encoder's runtime, :mod:`imgclust.runtimes`). Each finished block of rows is journalled to
``<cache>.journal/<encoder>/`` (by a background thread; written to a temporary name, then renamed), so a killed run keeps
its work; at the end (or at the start of the next run) the journal becomes one new block of the
cache (:meth:`imgclust.cache.Cache.write_rows`): a commit costs what it adds.

Nothing is dropped unasked: rows of files that cannot be found are kept (``prune`` drops them),
labels stay unless ``labels`` is given, and a row whose file changed is replaced in place, so
results of the other rows keep their order (they are marked stale, never deleted).

Every batch is padded to the encoder's batch size before the forward pass (``Encoder.submit``), and
the runtime is part of the cache's identity, which makes a resumed run bit-for-bit equal to an
uninterrupted one.

Two engines produce the ``(results, recomputed)`` batches that are journalled: the local one
(:func:`encode_files`, below) and Ray (:mod:`imgclust.ray_engine`: decoding and encoding on a cluster).
Everything else -- discovery, the lock, the journal, the commit -- is the same code for both.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import queue
import signal
import sys
import threading
import traceback
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, ray_engine
from .cache import Cache, Failures, NewRows, Rows, encoder_key, file_hash
from .decode import (DEFAULT_MAX_PIXELS, DecodeError, Preprocess, check_header, decode, decode_jpegs_on_device, decode_or_reason,
                     hash_only, jpeg_bytes)
from .discover import ImageFile, discover
from .encoders import (DEFAULT_ENCODER, Encoder, best_device, create_encoder, default_batch_size, features_name,
                       finish_batch, resolve_spec)
from .errors import UsageError
from .joint import embed_joint, is_joint
from .phash import NO_HASH
from .runtimes import LEGACY_RUNTIME, default_threads, resolve_runtime
from .sources import expand_sources
from .views import add_views

Progress = Callable[[int, int], None]

# Failures whose cause may lie outside the file itself (chmod does not change mtime; --max-pixels may
# have been raised since): re-checked on every run even when the file's size and mtime are unchanged.
# The check reads the file's header only; the file is decoded again only when that passes.
_RECHECKED_REASONS = ("permission denied", "decompression-bomb", "file not found")


@dataclass
class EmbedSummary:
    """What one ``embed`` run did."""

    cache: str
    encoder: str
    device: str = "cpu"
    discovered: int = 0
    embedded: int = 0  # embedded by this run (new or changed files)
    changed: int = 0  # of which re-embedded because size or mtime changed
    skipped: int = 0  # already in the cache, unchanged
    failed: int = 0  # could not be read in this run
    removed: int = 0  # rows dropped because their file no longer exists (prune) or is not listed (exact)
    kept_missing: int = 0  # rows kept although their file cannot be found (prune drops them)
    confirmed: int = 0  # files whose size or mtime changed but whose content hash did not: not embedded again
    recovered: int = 0  # rows taken over from an interrupted run's journal
    images: int = 0  # rows in the cache for this encoder after the run
    failures_total: int = 0
    stale_results: list[str] = field(default_factory=list)  # reductions/runs/views made stale by changed rows
    seconds: float = 0.0
    images_per_second: float = 0.0
    interrupted: bool = False
    views_computed: int = 0  # rows whose augmented views were (re)computed
    recomputed_float32: int = 0  # rows of half-precision batches computed again in float32 (NaN/Inf)
    batch_size: int = 0
    workers: int = 0
    runtime: str = ""
    decode: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Block:
    """Rows and failures finished together; one journal part."""

    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    phashes: list[int] = field(default_factory=list)  # perceptual hashes (imgclust.phash)
    embeddings: list[np.ndarray] = field(default_factory=list)
    fail_paths: list[str] = field(default_factory=list)
    fail_sizes: list[int] = field(default_factory=list)
    fail_mtimes: list[int] = field(default_factory=list)
    fail_reasons: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths) + len(self.fail_paths)

    def add_row(self, f: ImageFile, vector: np.ndarray, phash: int) -> None:
        digest = file_hash(f.path)  # reads the file: before any list grows, so a Ctrl-C here leaves the block whole
        self.paths.append(f.path)
        self.sizes.append(f.size)
        self.mtimes.append(f.mtime_ns)
        self.labels.append(f.label or "")
        self.hashes.append(digest)
        self.phashes.append(phash)
        self.embeddings.append(vector)

    def add_failure(self, f: ImageFile, reason: str) -> None:
        self.fail_paths.append(f.path)
        self.fail_sizes.append(f.size if f.size is not None else -1)
        self.fail_mtimes.append(f.mtime_ns if f.mtime_ns is not None else -1)
        self.fail_reasons.append(reason)


class _Journal:
    """Finished blocks of an interrupted or running ``embed``, one ``.npz`` part each."""

    def __init__(self, cache: Cache, encoder: str, identity: dict):
        self.dir = cache.journal_dir / encoder_key(encoder)
        self.identity = identity

    def parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.npz")) if self.dir.exists() else []

    def write(self, block: _Block, dim: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                identity=np.array(repr(sorted(self.identity.items()))),
                paths=np.array(block.paths, dtype=str), sizes=np.array(block.sizes, dtype=np.int64),
                mtimes=np.array(block.mtimes, dtype=np.int64), labels=np.array(block.labels, dtype=str),
                hashes=np.array(block.hashes, dtype=str), phashes=np.array(block.phashes, dtype=np.uint64),
                embeddings=(np.stack(block.embeddings).astype(np.float32, copy=False) if block.paths
                            else np.zeros((0, dim), np.float32)),
                fail_paths=np.array(block.fail_paths, dtype=str), fail_sizes=np.array(block.fail_sizes, dtype=np.int64),
                fail_mtimes=np.array(block.fail_mtimes, dtype=np.int64), fail_reasons=np.array(block.fail_reasons, dtype=str),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / f"{name}.npz")

    def load(self) -> list[dict]:
        """Every readable part made with the same encoder identity; others are discarded."""
        loaded = []
        for part in self.parts():
            try:
                with np.load(part) as data:
                    if str(data["identity"]) != repr(sorted(self.identity.items())):
                        part.unlink()
                        continue
                    loaded.append({k: data[k] for k in data.files})
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                part.unlink()  # cannot happen through write(); a damaged file holds nothing we can trust
        return loaded

    def clear(self) -> None:
        if self.dir.exists():
            for leftover in self.dir.iterdir():
                leftover.unlink()
            self.dir.rmdir()
        # Also when an earlier run was stopped between the two rmdirs and left the folder empty.
        if self.dir.parent.exists():
            try:
                self.dir.parent.rmdir()
            except OSError:
                pass  # other encoders' journals are still there


class _DecodeDataset:
    """Map-style dataset for the DataLoader: index -> (index, uint8 image or None, failure reason, JPEG bytes
    or None, perceptual hash).

    With ``jpeg_on_device`` a JPEG is not decoded here: its bytes go to the main process, which decodes
    them on the GPU (:func:`imgclust.decode.decode_jpegs_on_device`), and its perceptual hash comes from
    a decode at 1/8 scale here (:func:`imgclust.decode.hash_only`); other formats are decoded here.
    """

    def __init__(self, files: Sequence[ImageFile], spec: Preprocess, max_pixels: int | None, jpeg_on_device: bool = False):
        self.files, self.spec, self.max_pixels, self.jpeg_on_device = files, spec, max_pixels, jpeg_on_device

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i].path
        if self.jpeg_on_device:
            try:
                data = jpeg_bytes(path, self.max_pixels)
            except DecodeError as exc:
                return i, None, str(exc), None, int(NO_HASH)
            if data is not None:
                return i, None, "", data, hash_only(path, self.max_pixels)
        image, reason, phash = decode_or_reason(path, self.spec, self.max_pixels)
        return i, image, reason, None, phash


def collate_uint8(items) -> tuple[list[int], object, list[tuple[int, str]], list[tuple[int, object]], dict[int, int]]:
    """A batch as ``(indices, images, failures, jpegs, hashes)``: the decoded images stacked into one uint8
    tensor ``(n, size, size, 3)`` (None when none decoded), ``failures`` as ``(index, reason)``, ``jpegs`` as
    ``(index, uint8 tensor of the file's bytes)`` for decoding on the device, ``hashes`` as
    ``{index: perceptual hash}``.

    Runs in the worker: one tensor per batch travels to the main process through shared memory
    (torch's tensor pickling), where the DataLoader can pin it for a GPU copy.
    """
    import torch

    good = [(i, array) for i, array, _, _, _ in items if array is not None]
    images = torch.from_numpy(np.stack([array for _, array in good])) if good else None
    failures = [(i, reason) for i, array, reason, data, _ in items if array is None and data is None]
    jpegs = [(i, torch.from_numpy(data.copy())) for i, _, _, data, _ in items if data is not None]
    return [i for i, _ in good], images, failures, jpegs, {i: phash for i, _, _, _, phash in items}


def _decode_on_device(enc: Encoder, files: Sequence[ImageFile], indices: list[int], images, failures: list,
                      jpegs: list, max_pixels: int | None):
    """Decode a batch's JPEG bytes on the encoder's device; a file the device cannot decode is decoded
    on the CPU instead (or recorded as a failure). Returns ``(indices, images on the device, failures)``."""
    import torch

    indices, failures, parts = list(indices), list(failures), [] if images is None else [images.to(enc.device)]
    decoded = decode_jpegs_on_device([data for _, data in jpegs], enc.preprocess, enc.device) if jpegs else []
    for (i, _), image in zip(jpegs, decoded):
        if image is None:
            try:
                image = torch.from_numpy(decode(files[i].path, enc.preprocess, max_pixels)).to(enc.device)
            except DecodeError as exc:
                failures.append((i, str(exc)))
                continue
        indices.append(i)
        parts.append(image[None])
    return indices, (torch.cat(parts) if parts else None), failures


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C is handled once, in the main process, which saves the finished work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _quiet_when_the_main_process_left
    _die_with_parent()


def _quiet_when_the_main_process_left(exc_type, exc_value, exc_traceback) -> None:
    """A worker hands its batches over through shared memory; when the main process stops (Ctrl-C), the
    thread that passes their file descriptors (multiprocessing's resource sharer, which reports through
    ``sys.excepthook``) meets a closed connection. That is the end of the run, not an error: no traceback."""
    if issubclass(exc_type, (EOFError, ConnectionError)) and any(
            frame.filename.endswith("resource_sharer.py") for frame in traceback.extract_tb(exc_traceback)):
        return
    sys.__excepthook__(exc_type, exc_value, exc_traceback)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the main process dies (kill -9 included);
    otherwise an orphaned worker can linger, blocked on a queue nobody reads."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call
            os._exit(0)
    except (OSError, AttributeError):
        pass  # best effort; torch's own watchdog is the fallback


@contextlib.contextmanager
def _sigint_ignored_while_forking(workers: int):
    """Start DataLoader workers with Ctrl-C ignored, so none dies of it before its init function runs
    (a dead worker makes the DataLoader raise instead of the clean interrupt). Main thread only."""
    previous = signal.getsignal(signal.SIGINT)
    if not workers or previous is None or threading.current_thread() is not threading.main_thread():
        yield  # (None: a handler installed outside Python, which could not be put back)
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def default_workers(device: str = "cpu") -> int:
    """Decoding processes: every core (at most 8) on a CPU, every core but one (at most 8) on a GPU.

    On a CPU the model's threads use every core too (:func:`imgclust.runtimes.default_threads`): a
    worker whose queue of finished batches is full waits without using a core, so decoding and the
    model share the cores as their costs need (small JPEGs: the model takes nearly all; camera photos:
    decoding takes more).
    """
    cores = default_threads()
    if device != "cpu":
        return max(1, min(8, cores - 1))
    return max(1, min(8, cores))


def embed(
    inputs: Sequence[str | os.PathLike] = (),
    encoder: str = DEFAULT_ENCODER,
    cache: str | os.PathLike = "imgclust-cache.h5",
    *,
    files_from: str | None = None,
    labels: str | None = None,
    weights: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: Progress | None = None,
    files: Sequence[ImageFile] | None = None,
    data_root: str | os.PathLike | None = None,
    split: str = "test",
    exact: bool = False,
    views: int = 0,
    prune: bool = False,
    reembed: bool = False,
    flush_rows: int = 512,
    flush_seconds: float = 15.0,
    exclude: Sequence[str | os.PathLike] = (),
    runtime: str | None = None,
    decode_on: str | None = None,
    features: str = "default",
    engine: str = "local",
    ray_address: str | None = None,
    gpus_per_worker: float | None = None,
) -> EmbedSummary:
    """Embed every image under ``inputs`` into ``cache`` (resumable; unchanged images are skipped).

    Parameters
    ----------
    inputs : folders, image files or glob patterns (see :func:`imgclust.discover.discover`), or data-set
        sources ``sklearn:digits`` / ``torchvision:<Dataset>`` (labelled; see :mod:`imgclust.sources`).
    encoder : a registry name (``imgclust.list_encoders()``), ``timm:<model>`` or ``open_clip:<arch>:<tag>``;
        several joined by ``+`` embed each one's missing rows, then build their joint table (:mod:`imgclust.joint`).
    cache : the HDF5 cache to create or update.
    files_from : a file listing paths, ``-`` for stdin.
    labels : ``"folder"`` or a ``path,label`` CSV; stored with the embeddings for scoring.
    weights : a local checkpoint path, or ``"random"`` (tests).
    device : ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; None picks CUDA, then MPS, then the CPU.
    batch_size, workers : images per forward pass (None: :func:`imgclust.encoders.default_batch_size` of the device);
        decoding processes (None: :func:`default_workers` of the device; 0 decodes inline).
    max_pixels : the decompression-bomb limit (None disables it).
    progress : called as ``progress(done, total)`` after each batch.
    files : an already discovered list (instead of ``inputs``).
    flush_rows, flush_seconds : finished work is journalled every ``flush_rows`` images or ``flush_seconds``
        seconds, whichever comes first; a kill loses at most that much (CLI: ``--flush-rows``).
    data_root, split : where data-set sources are written, and which split torchvision sources use.
    exact : make the cache hold exactly these images (drop rows of other files); by default rows of
        other files are kept, so several folders can share one cache.
    prune : drop the rows of files that cannot be found any more (by default they are kept: the disk
        may only be unmounted).
    reembed : replace every row of ``encoder`` by embedding the images again, e.g. with other
        settings (device, precision, batch size) than the rows were made with.
    views : also store this many augmented-view embeddings per image (for ``cc``; see :mod:`imgclust.views`).
    exclude : folders discovery never walks into (the one-step command's output folder).
    runtime : what runs the model (:data:`imgclust.runtimes.RUNTIMES`); None or ``"auto"``: the one this
        cache's rows were made with, else the best for the encoder on the device (:data:`imgclust.runtimes.AUTO`).
    decode_on : ``"cpu"`` (decoding workers) or ``"gpu"`` (JPEGs decoded by nvJPEG on the CUDA device,
        any file it cannot decode on the CPU); None: what the cache's rows were made with, else ``"cpu"``.
        GPU resizing is close to Pillow's, not bit-equal, so one cache holds one kind.
    features : ``default`` (the encoder's embedding) or ``cls+patchmean`` (ViTs: ICCE's CLS token + mean of the
        patch tokens), stored as its own encoder table ``<encoder>+cls+patchmean`` (:data:`imgclust.encoders.FEATURES`).
    engine : ``"local"`` (this machine) or ``"ray"``: decode and encode on a Ray cluster (:mod:`imgclust.ray_engine`;
        needs ``pip install "imgclust[ray]"``); discovery, the journal and the commit stay here, and the rows are
        the local engine's. With ``"ray"``, ``workers`` is the number of encoder actors (None: one per GPU, else
        one per node).
    ray_address : the Ray cluster to use (``"auto"``: the one ``ray start`` runs on this machine); None starts a
        local Ray instance (or uses ``RAY_ADDRESS``).
    gpus_per_worker : GPUs (a fraction shares one) per encoder actor; None: 1 when the cluster has GPUs, else 0.

    Returns
    -------
    EmbedSummary
        Counts of embedded, skipped, failed and removed images, time and throughput.
        ``interrupted`` is True when Ctrl-C stopped the run (finished work is saved).
    """
    if is_joint(encoder):  # A+B: each encoder's own table, then the joint table (imgclust.joint)
        return embed_joint(embed, dict(locals()))
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}", hint="32 is a good default on CPU; 128-256 on a GPU")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}", hint="0 decodes in the main process")
    _check_engine(engine, workers, views, decode_on, ray_address, gpus_per_worker)
    encoder = features_name(encoder, features)
    spec = resolve_spec(encoder)
    started = time.perf_counter()
    if files is None:
        inputs, labels = expand_sources(inputs, labels, data_root, split)
        files = discover(inputs, files_from=files_from, labels=labels, exclude=exclude)
    cache = Cache(cache)
    summary = EmbedSummary(cache=str(cache.path), encoder=encoder, discovered=len(files))
    on_ray = engine == "ray"
    with cache.writer(), (ray_engine.connected(ray_address) if on_ray else contextlib.nullcontext()):
        if cache.exists():
            cache.require_writable()
        cache.clean_temp_files()
        rows = cache.rows(encoder) if cache.exists() and encoder in cache.encoders() else None
        committed = rows.index() if rows is not None and not reembed else None
        if on_ray:  # the device and runtime of the encoder actors, checked where they run
            gpus_per_worker = ray_engine.default_gpus_per_worker() if gpus_per_worker is None else gpus_per_worker
            run_device = ray_engine.worker_device(device, gpus_per_worker)
            resolve = functools.partial(ray_engine.resolve_runtime_on_worker, gpus_per_worker=gpus_per_worker)
        else:
            run_device, resolve = best_device(device), resolve_runtime
        own = _recorded_identity(rows.state.attrs) if rows is not None and not reembed else {}
        recorded = own.get("runtime")
        # A cache's own runtime needs checking against this device only when there is work for it (below):
        # a run with nothing new to embed must not fail because the rows were made on another machine.
        requested, runtime = runtime, (recorded if runtime in (None, "auto") and recorded else
                                       resolve(runtime, spec.family, run_device, recorded))
        decode_on = _resolve_decode(decode_on, run_device, own.get("decode"))
        if on_ray and decode_on != "cpu":
            raise UsageError(f"{cache.path}: its rows were decoded on the GPU, and Ray decodes on CPU tasks; "
                             "one cache holds one kind", hint="continue it without --engine ray, or use another --cache")
        summary.runtime, summary.decode = runtime, decode_on
        # An omitted batch size continues the cache's own (it decides the last bits of every row).
        summary.batch_size = batch_size or own.get("batch_size") or default_batch_size(run_device)
        identity = block_identity(spec, weights, run_device, summary.batch_size, runtime, decode_on)
        if rows is not None and not reembed:
            _check_identity(cache, encoder, rows.state.attrs, identity)
        journal = _Journal(cache, encoder, identity)
        recovered = journal.load()
        summary.recovered = sum(len(part["paths"]) for part in recovered)
        committed_failures = cache.read_failures(encoder) if committed is not None else None
        known = _known_state(committed, committed_failures, recovered)
        recheck = _rechecked_failures(committed_failures, recovered)
        hashes = dict(zip(committed.paths, committed.hashes)) if committed is not None else {}
        pending, block, confirmed = [], _Block(), {}
        for f in files:
            state = known.get(f.path)
            current = (f.size if f.size is not None else -1, f.mtime_ns if f.mtime_ns is not None else -1)
            unchanged = state == current
            reason = _still_failing(f, recheck[f.path], max_pixels) if unchanged and f.path in recheck else None
            if unchanged and (f.path not in recheck or reason == recheck[f.path]):
                summary.skipped += 1
            elif reason is not None:  # fails for another reason now (another --max-pixels, say)
                block.add_failure(f, reason)
                summary.failed += 1
            elif f.error is not None:
                block.add_failure(f, f.error)
                summary.failed += 1
            elif state is not None and hashes.get(f.path) and hashes[f.path] == file_hash(f.path):
                confirmed[f.path] = current  # copied or re-mounted: new size/mtime, same bytes
                summary.confirmed += 1
            else:
                pending.append(f)
                summary.changed += state is not None and not unchanged
        enc = None
        try:
            if pending:
                resolve(requested, spec.family, run_device, recorded)  # can the cache's runtime run where the model runs?
                if on_ray:
                    summary.device = run_device
                    summary.workers = workers or ray_engine.default_workers(gpus_per_worker)
                    batches, dim = ray_engine.encode_files(
                        pending, encoder=encoder, weights=weights, device=run_device, runtime=runtime,
                        batch_size=summary.batch_size, preprocess=spec.preprocess, max_pixels=max_pixels,
                        workers=summary.workers, gpus_per_worker=gpus_per_worker, progress=progress), spec.embedding_dim or 0
                else:
                    enc = create_encoder(encoder, weights=weights, device=run_device, runtime=runtime,
                                         batch_size=summary.batch_size)
                    summary.device = enc.device
                    summary.workers = default_workers(enc.device) if workers is None else workers
                    batches, dim = encode_files(enc, pending, summary.workers, max_pixels, progress, decode_on), enc.embedding_dim
                _embed_batches(batches, block, journal, dim, summary, flush_rows, flush_seconds)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            if len(block):
                journal.write(block, enc.embedding_dim if enc else (spec.embedding_dim or 0))
        dim = enc.embedding_dim if enc is not None else None
        relabel = {f.path: f.label for f in files} if labels is not None else {}
        _commit(cache, encoder, spec, journal, identity, rows, summary, dim, relabel, confirmed,
                present={f.path for f in files}, exact=exact, prune=prune, reembed=reembed)
        journal.clear()
        if views and not summary.interrupted and summary.images:
            if enc is None:
                resolve_runtime(requested, spec.family, run_device, recorded)
                enc = create_encoder(encoder, weights=weights, device=run_device, runtime=runtime,
                                     batch_size=summary.batch_size)
            summary.views_computed = add_views(cache, encoder, enc, views, max_pixels, progress)
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.images_per_second = round(summary.embedded / summary.seconds, 2) if summary.seconds > 0 else 0.0
    return summary


ENGINES = ("local", "ray")


def _check_engine(engine: str, workers: int | None, views: int, decode_on: str | None, ray_address: str | None,
                  gpus_per_worker: float | None) -> None:
    """Refuse options the chosen engine does not take, before any work (and say what Ray needs)."""
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine}: choose {' or '.join(ENGINES)}")
    if engine == "local":
        given = [name for name, value in (("--ray-address", ray_address), ("--gpus-per-worker", gpus_per_worker))
                 if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} go with --engine ray", hint="add --engine ray, or leave them out")
        return
    ray_engine.require_ray()
    if workers == 0:
        raise UsageError("--workers 0 with --engine ray: it is the number of encoder actors, at least 1",
                         hint="leave it out for one per GPU (or per node)")
    if views:
        raise UsageError("--views with --engine ray: augmented views are computed on this machine",
                         hint="embed with --engine ray first, then run the same command with --views N and without --engine ray")
    if decode_on == "gpu":
        raise UsageError("--decode gpu with --engine ray: Ray decodes on CPU tasks", hint="leave --decode out")


def block_identity(spec, weights: str | None, device: str, batch_size: int, runtime: str = LEGACY_RUNTIME,
                   decode_on: str = "cpu") -> dict:
    """The settings that decide an embedding's bits, recorded per block: rows made with other ones
    (float16 on a GPU against float32 on a CPU, another batch size or runtime) are not mixed in one cache."""
    kind = device.split(":")[0]
    return {"architecture": spec.architecture, "weights": weights or spec.weights,
            "preprocess": spec.preprocess.to_dict(), "device": kind,
            "dtype": "float16" if kind == "cuda" else "float32", "batch_size": int(batch_size),
            "runtime": runtime, "decode": decode_on}


def _recorded_identity(attrs: dict) -> dict:
    """The runtime, decoding and batch size the cache's rows were made with (caches from before runtimes:
    torch on the CPU; before identities: no batch size)."""
    stored = attrs.get("identity") or {}
    return {"runtime": stored.get("runtime", LEGACY_RUNTIME), "decode": stored.get("decode", "cpu"),
            "batch_size": stored.get("batch_size")}


def _check_identity(cache: Cache, encoder: str, attrs: dict, identity: dict) -> None:
    stored = attrs.get("identity") or {"architecture": attrs.get("architecture"), "weights": attrs.get("weights")}
    differ = [k for k in identity if k in stored and stored[k] != identity[k]]
    if differ:
        was = ", ".join(f"{k} {stored[k]}" for k in differ if k != "preprocess")
        now = ", ".join(f"{k} {identity[k]}" for k in differ if k != "preprocess")
        if "preprocess" in differ:
            was, now = (was + ", " if was else "") + "other preprocessing", (now + ", " if now else "") + "this preprocessing"
        raise UsageError(
            f"{cache.path} holds '{encoder}' embeddings made with {was}, not {now}: mixing them would give "
            f"rows that are not comparable",
            hint="pass the same settings as before (--weights, --device, --batch-size), use another --cache, or "
                 "add --reembed to embed every image again with these settings")


def _resolve_decode(requested: str | None, device: str, recorded: str | None) -> str:
    """Where JPEGs are decoded: ``requested``, else the cache's record, else the CPU."""
    if requested is None:
        return recorded or "cpu"
    if requested not in ("cpu", "gpu"):
        raise UsageError(f"--decode {requested}: choose cpu or gpu")
    if requested == "gpu" and not device.startswith("cuda"):
        raise UsageError(f"--decode gpu needs a CUDA device, and this run uses {device}", hint="leave --decode out")
    if recorded is not None and recorded != requested:
        raise UsageError(f"--decode {requested}: this cache's rows were decoded on the {recorded.upper()}; "
                         "one cache holds one kind", hint="leave --decode out to continue it, or use another --cache")
    return requested


def _rechecked_failures(failures: Failures | None, parts: list[dict]) -> dict[str, str]:
    """``{path: reason}`` of recorded failures to check again although their file is unchanged."""
    pairs = list(zip(map(str, failures.paths), map(str, failures.reasons))) if failures is not None else []
    pairs += [pair for p in parts for pair in zip(map(str, p["fail_paths"]), map(str, p["fail_reasons"]))]
    return {path: reason for path, reason in pairs if reason.startswith(_RECHECKED_REASONS)}


def _still_failing(f: ImageFile, reason: str, max_pixels: int | None) -> str | None:
    """The reason ``f`` still fails for, from its header alone; None when it may decode now."""
    if f.error is not None:
        return f.error
    try:
        check_header(f.path, max_pixels)
    except DecodeError as exc:
        return str(exc)
    return None


def _known_state(committed, failures: Failures | None, parts: list[dict]) -> dict[str, tuple[int, int]]:
    """``{path: (size, mtime)}`` of everything already embedded or recorded as failed."""
    known: dict[str, tuple[int, int]] = {}
    for paths, sizes, mtimes in ([(committed.paths, committed.sizes, committed.mtimes)] if committed is not None else []) + \
            ([(failures.paths, failures.sizes, failures.mtimes)] if failures is not None else []) + \
            [(p["paths"], p["sizes"], p["mtimes"]) for p in parts] + \
            [(p["fail_paths"], p["fail_sizes"], p["fail_mtimes"]) for p in parts]:
        known.update(zip(map(str, paths), zip(map(int, sizes), map(int, mtimes))))
    return known


def encode_files(enc: Encoder, files: Sequence[ImageFile], workers: int, max_pixels: int | None,
                 progress: Progress | None = None, decode_on: str = "cpu",
                 ) -> Iterator[tuple[list[tuple[ImageFile, np.ndarray | None, str, int]], int]]:
    """Decode ``files`` in ``workers`` processes and encode them in batches of ``enc.batch_size``, in bounded memory.

    Yields, per batch, ``(results, recomputed)``: ``(file, vector, "", phash)`` for each embedded file and
    ``(file, None, reason, phash)`` for each that failed (decoding, or an embedding still not finite in
    float32), ``phash`` the perceptual hash of the decoded image (:mod:`imgclust.phash`); ``recomputed`` is the number of rows of a reduced-precision batch computed again in
    float32 because some row was not finite. ``embed`` and ``assign`` share this loader.

    ``decode_on="gpu"``: JPEGs are decoded on the encoder's device (nvJPEG), other files by the workers.

    One batch is in flight: batch n+1 is submitted to the runtime before batch n's result is
    collected, so on a GPU the copy and forward pass of one overlap the host's work on the other.
    """
    import torch

    jpeg_on_device = decode_on == "gpu"
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(files, enc.preprocess, max_pixels, jpeg_on_device), batch_size=enc.batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate_uint8, worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False,
        pin_memory=enc.device.startswith("cuda"))
    done = 0
    if progress:
        progress(0, len(files))
    with _sigint_ignored_while_forking(workers):
        batches = iter(loader)  # starts the workers
    in_flight = None
    for indices, images, failures, jpegs, hashes in batches:
        if jpegs:
            indices, images, failures = _decode_on_device(enc, files, indices, images, failures, jpegs, max_pixels)
        submitted = (indices, images, failures, enc.submit(images) if images is not None else None, hashes)
        if in_flight is not None:
            done += len(in_flight[0]) + len(in_flight[2])
            yield finish_batch(enc, files, *in_flight)
            if progress:
                progress(done, len(files))
        in_flight = submitted
    if in_flight is not None:
        done += len(in_flight[0]) + len(in_flight[2])
        yield finish_batch(enc, files, *in_flight)
        if progress:
            progress(done, len(files))


class _JournalWriter:
    """Writes journal parts in a thread, so the main thread keeps feeding the model while one is fsynced.

    At most two blocks wait; :meth:`close` writes what is queued and re-raises a write's error.
    """

    def __init__(self, journal: _Journal, dim: int):
        self.journal, self.dim, self.error = journal, dim, None
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.thread = threading.Thread(target=self._loop, name="imgclust-journal", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (block := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.journal.write(block, self.dim)
                except BaseException as exc:  # re-raised in the main thread
                    self.error = exc

    def put(self, block: _Block) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(block)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _embed_batches(batches: Iterator[tuple[list, int]], block: _Block, journal: _Journal, dim: int,
                   summary: EmbedSummary, flush_rows: int, flush_seconds: float) -> None:
    """Collect an engine's ``batches`` (see :func:`encode_files`) into ``block``; full blocks go to the
    journal (written off the main thread), the last, partial one stays in ``block`` for the caller."""
    last_flush = time.monotonic()
    writer = _JournalWriter(journal, dim)
    try:
        for results, recomputed in batches:
            summary.recomputed_float32 += recomputed
            for f, vector, reason, phash in results:
                if vector is None:
                    block.add_failure(f, reason)
                    summary.failed += 1
                else:
                    block.add_row(f, vector, phash)
                    summary.embedded += 1
            if len(block) >= flush_rows or time.monotonic() - last_flush > flush_seconds:
                writer.put(copy.copy(block))
                block.__init__()
                last_flush = time.monotonic()
    finally:
        writer.close()


def _commit(cache: Cache, encoder: str, spec, journal: _Journal, identity: dict, rows: Rows | None,
            summary: EmbedSummary, dim: int | None, relabel: dict[str, str | None], confirmed: dict[str, tuple],
            present: set[str], exact: bool, prune: bool, reembed: bool) -> None:
    """Turn the journal (and confirmed or relabelled rows) into one new block and commit the index."""
    parts = journal.load()
    committed = rows.index() if rows is not None and not reembed else None
    position = {p: i for i, p in enumerate(committed.paths)} if committed is not None else {}
    old_failures = rows.state.failures if rows is not None else Failures.empty()
    fails = {p: (int(s), int(m), r) for p, s, m, r in zip(old_failures.paths, old_failures.sizes, old_failures.mtimes,
                                                         old_failures.reasons)}
    new: dict[str, tuple] = {}  # path -> (size, mtime, label, hash, part, position in part, perceptual hash)
    for k, part in enumerate(parts):
        if dim is None and len(part["paths"]):
            dim = part["embeddings"].shape[1]
        # a part journalled by an imgclust that stored no perceptual hashes has none
        phashes = part.get("phashes", np.full(len(part["paths"]), NO_HASH, np.uint64))
        for pos, (p, s, m, lab, h, ph) in enumerate(zip(part["paths"], part["sizes"], part["mtimes"], part["labels"],
                                                        part["hashes"], phashes)):
            new[str(p)] = (int(s), int(m), str(lab), str(h), k, pos, int(ph))
            fails.pop(str(p), None)
        for p, s, m, r in zip(part["fail_paths"], part["fail_sizes"], part["fail_mtimes"], part["fail_reasons"]):
            fails[str(p)] = (int(s), int(m), str(r))
            new.pop(str(p), None)
    remove = {p for p in fails if p in position}  # a file that now fails to read loses its old row
    for p in [p for p in new if p in position]:  # already committed (a kill between commit and clearing the journal)
        i = position[p]
        if (new[p][0], new[p][1], new[p][3]) == (committed.sizes[i], committed.mtimes[i], committed.hashes[i]) \
                and (p not in relabel or (relabel[p] or "") == committed.labels[i]):
            del new[p]
    copies = {p: confirmed[p] for p in confirmed if p in position}
    if relabel and committed is not None:
        copies.update({p: (int(committed.sizes[i]), int(committed.mtimes[i])) for p, i in position.items()
                       if p in relabel and (relabel[p] or "") != committed.labels[i] and p not in new and p not in copies})
    for p in [p for p in fails if p not in present and (exact or not os.path.exists(p))]:
        del fails[p]  # a failure record of a file that is gone holds nothing worth keeping
    for p in [p for p in new if p not in present and (exact or (prune and not os.path.exists(p)))]:
        del new[p]  # journalled by an interrupted run, gone (or not asked for) since
    for p in ([] if committed is None else committed.paths):
        if p not in present and p not in new and p not in remove:
            if exact or (prune and not os.path.exists(p)):
                remove.add(p)
                summary.removed += 1
            elif not exact and not os.path.exists(p):
                summary.kept_missing += 1
    failures = _failures(fails)
    summary.images = (len(committed) if committed is not None else 0) - len(remove) + sum(p not in position for p in new)
    summary.failures_total = len(failures)
    if dim is None:
        dim = spec.embedding_dim or (rows.dim if rows is not None else 0)
    if not new and not copies and not remove and not reembed and rows is not None \
            and _same_failures(failures, old_failures):
        return  # nothing to write: the cache already is the result
    table = _new_rows(new, copies, parts, rows, position, committed, relabel, dim)
    attrs = {"encoder": encoder, "family": spec.family, "architecture": identity["architecture"],
             "weights": identity["weights"], "embedding_dim": dim, "description": spec.description,
             "preprocess": json.dumps(spec.preprocess.to_dict()), "imgclust_version": __version__,
             "runtime": identity["runtime"], "decode": identity["decode"], "identity": identity}
    before = rows.fingerprint if rows is not None else None
    after = cache.write_rows(encoder, attrs, table, remove=remove, failures=failures, base=rows, replace_all=reembed)
    if before is not None and after.fingerprint != before:
        summary.stale_results = [f"{kind}/{name}" for kind, stored in after.results.items()
                                 for name, a in stored.items() if a.get("fingerprint") == before]


def _new_rows(new: dict, copies: dict, parts: list[dict], rows: Rows | None, position: dict, committed,
              relabel: dict, dim: int) -> NewRows | None:
    """The rows of the new block: embedded ones (in path order), then copies of committed rows whose
    size/mtime (same content) or label changed."""
    paths = sorted(new)
    copied = sorted(copies, key=position.get)
    if not paths and not copied:
        return None

    def label(p, fallback):
        if p in relabel:
            return relabel[p] or ""
        return committed.labels[position[p]] if p in position else fallback  # labels are sticky

    vectors = np.empty((len(paths) + len(copied), dim), np.float32)
    for j, p in enumerate(paths):
        vectors[j] = parts[new[p][4]]["embeddings"][new[p][5]]
    if copied:
        vectors[len(paths):] = rows.take(np.array([position[p] for p in copied], np.int64))
    return NewRows(
        paths=paths + copied,
        sizes=np.array([new[p][0] for p in paths] + [copies[p][0] for p in copied], np.int64),
        mtimes=np.array([new[p][1] for p in paths] + [copies[p][1] for p in copied], np.int64),
        labels=[label(p, new[p][2]) for p in paths] + [label(p, "") for p in copied],
        hashes=[new[p][3] for p in paths] + [committed.hashes[position[p]] for p in copied],
        embeddings=vectors,
        perceptual_hashes=np.array([new[p][6] for p in paths] + [committed.perceptual_hashes[position[p]] for p in copied],
                                   np.uint64))


def _failures(fails: dict) -> Failures:
    paths = sorted(fails)
    return Failures(np.array(paths, dtype=object), np.array([fails[p][0] for p in paths], dtype=np.int64),
                    np.array([fails[p][1] for p in paths], dtype=np.int64),
                    np.array([fails[p][2] for p in paths], dtype=object))


def _same_failures(new: Failures, old: Failures | None) -> bool:
    return old is not None and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in (
        (new.paths, old.paths), (new.sizes, old.sizes), (new.mtimes, old.mtimes), (new.reasons, old.reasons)))
