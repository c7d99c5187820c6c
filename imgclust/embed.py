"""``embed``: images -> one embedding each, in the resumable HDF5 cache.

The work list is every discovered image that the cache does not already hold unchanged (same
size and mtime). Decoding runs in DataLoader worker processes, overlapped with the model. Each
finished block of rows is journalled to ``<cache>.journal/<encoder>/`` (written to a temporary
name, then renamed), so a killed run keeps its work; the journal is merged into the cache with
one atomic replace at the end, or at the start of the next run.

Every batch is padded to the full batch size before the forward pass (``Encoder.encode_padded``),
which makes a resumed run bit-for-bit equal to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .cache import Cache, Failures, Index, encoder_key, now_iso, write_failures, write_rows
from .decode import DEFAULT_MAX_PIXELS, DecodeError, Preprocess, check_header, decode
from .discover import ImageFile, discover
from .encoders import DEFAULT_ENCODER, Encoder, create_encoder, resolve_spec
from .errors import UsageError
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
    removed: int = 0  # rows dropped because their file no longer exists
    recovered: int = 0  # rows taken over from an interrupted run's journal
    images: int = 0  # rows in the cache for this encoder after the run
    failures_total: int = 0
    dropped_derived: list[str] = field(default_factory=list)  # reductions/runs made stale by changed rows
    seconds: float = 0.0
    images_per_second: float = 0.0
    interrupted: bool = False
    views_computed: int = 0  # rows whose augmented views were (re)computed
    recomputed_float32: int = 0  # rows of half-precision batches computed again in float32 (NaN/Inf)
    batch_size: int = 0
    workers: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Block:
    """Rows and failures finished together; one journal part."""

    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    fail_paths: list[str] = field(default_factory=list)
    fail_sizes: list[int] = field(default_factory=list)
    fail_mtimes: list[int] = field(default_factory=list)
    fail_reasons: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths) + len(self.fail_paths)

    def add_row(self, f: ImageFile, vector: np.ndarray) -> None:
        self.paths.append(f.path)
        self.sizes.append(f.size)
        self.mtimes.append(f.mtime_ns)
        self.labels.append(f.label or "")
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
                embeddings=np.array(block.embeddings, dtype=np.float32).reshape(len(block.paths), dim),
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
    """Map-style dataset for the DataLoader: index -> (index, array or None, failure reason)."""

    def __init__(self, files: Sequence[ImageFile], spec: Preprocess, max_pixels: int | None):
        self.files, self.spec, self.max_pixels = files, spec, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, decode(self.files[i].path, self.spec, self.max_pixels), ""
        except DecodeError as exc:
            return i, None, str(exc)


def _collate(items):
    return items


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C is handled once, in the main process, which saves the finished work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()


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


def default_batch_size(device: str = "cpu") -> int:
    """Images per forward pass: 32 on a CPU (larger batches are no faster there), 128 on a GPU."""
    return 32 if device == "cpu" else 128


def default_workers(device: str = "cpu") -> int:
    """Decoding processes. On a GPU decoding is the bottleneck: every core but one. On a CPU the
    model needs the cores more: a quarter of them decode (at least one, at most four)."""
    cores = os.cpu_count() or 2
    if device != "cpu":
        return max(1, min(8, cores - 1))
    return max(1, min(4, cores // 4))


def model_threads() -> int:
    """Torch threads for a CPU forward pass: the cores the default decoding workers leave free.

    The cores are split, never oversubscribed: on 2 cores 1 thread beside 1 worker ran 3x faster
    than torch's default of 2 threads (25-28 against 9 images/s for effnet-lite0), which spin
    against the worker for the same cores. The count depends only on the machine, not on
    ``--workers``: the last bits of a model's output can depend on the thread count, and a resumed
    run must give the same bits whatever ``--workers`` it was given.
    """
    return max(1, (os.cpu_count() or 2) - default_workers("cpu"))


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
    flush_rows: int = 512,
    flush_seconds: float = 15.0,
    exclude: Sequence[str | os.PathLike] = (),
) -> EmbedSummary:
    """Embed every image under ``inputs`` into ``cache`` (resumable; unchanged images are skipped).

    Parameters
    ----------
    inputs : folders, image files or glob patterns (see :func:`imgclust.discover.discover`), or data-set
        sources ``sklearn:digits`` / ``torchvision:<Dataset>`` (labelled; see :mod:`imgclust.sources`).
    encoder : a registry name (``imgclust.list_encoders()``), ``timm:<model>`` or ``open_clip:<arch>:<tag>``.
    cache : the HDF5 cache to create or update.
    files_from : a file listing paths, ``-`` for stdin.
    labels : ``"folder"`` or a ``path,label`` CSV; stored with the embeddings for scoring.
    weights : a local checkpoint path, or ``"random"`` (tests).
    device : ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; None picks CUDA, then MPS, then the CPU.
    batch_size, workers : images per forward pass (None: :func:`default_batch_size` of the device);
        decoding processes (None: :func:`default_workers` of the device; 0 decodes inline).
    max_pixels : the decompression-bomb limit (None disables it).
    progress : called as ``progress(done, total)`` after each batch.
    files : an already discovered list (instead of ``inputs``).
    flush_rows, flush_seconds : finished work is journalled every ``flush_rows`` images or ``flush_seconds``
        seconds, whichever comes first; a kill loses at most that much (CLI: ``--flush-rows``).
    data_root, split : where data-set sources are written, and which split torchvision sources use.
    exact : make the cache hold exactly these images (drop rows of other files); by default rows of
        other files that still exist are kept, so several folders can share one cache.
    views : also store this many augmented-view embeddings per image (for ``cc``; see :mod:`imgclust.views`).
    exclude : folders discovery never walks into (the one-step command's output folder).

    Returns
    -------
    EmbedSummary
        Counts of embedded, skipped, failed and removed images, time and throughput.
        ``interrupted`` is True when Ctrl-C stopped the run (finished work is saved).
    """
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}", hint="32 is a good default on CPU; 128-256 on a GPU")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0, got {workers}", hint="0 decodes in the main process")
    spec = resolve_spec(encoder)
    started = time.perf_counter()
    if files is None:
        inputs, labels = expand_sources(inputs, labels, data_root, split)
        files = discover(inputs, files_from=files_from, labels=labels, exclude=exclude)
    cache = Cache(cache)
    summary = EmbedSummary(cache=str(cache.path), encoder=encoder, discovered=len(files))
    with cache.writer():
        cache.clean_temp_files()
        committed, committed_failures, identity_old = _read_committed(cache, encoder)
        journal_identity = {"architecture": spec.architecture, "weights": weights or spec.weights}
        if identity_old is not None and identity_old != journal_identity:
            raise UsageError(
                f"{cache.path} holds '{encoder}' embeddings made with {identity_old['architecture']} / "
                f"{identity_old['weights']}, not {journal_identity['architecture']} / {journal_identity['weights']}",
                hint="use another --cache, or the same --weights as before")
        journal = _Journal(cache, encoder, journal_identity)
        recovered = journal.load()
        summary.recovered = sum(len(part["paths"]) for part in recovered)
        known = _known_state(committed, committed_failures, recovered)
        recheck = _rechecked_failures(committed_failures, recovered)
        pending, block = [], _Block()
        for f in files:
            state = known.get(f.path)
            unchanged = state == (f.size if f.size is not None else -1, f.mtime_ns if f.mtime_ns is not None else -1)
            reason = _still_failing(f, recheck[f.path], max_pixels) if unchanged and f.path in recheck else None
            if unchanged and (f.path not in recheck or reason == recheck[f.path]):
                summary.skipped += 1
            elif reason is not None:  # fails for another reason now (another --max-pixels, say)
                block.add_failure(f, reason)
                summary.failed += 1
            elif f.error is not None:
                block.add_failure(f, f.error)
                summary.failed += 1
            else:
                pending.append(f)
                summary.changed += state is not None and not unchanged
        enc = None
        try:
            if pending:
                enc = create_encoder(encoder, weights=weights, device=device)
                summary.device = enc.device
                summary.batch_size = batch_size or default_batch_size(enc.device)
                summary.workers = default_workers(enc.device) if workers is None else workers
                _run(enc, pending, block, journal, summary, summary.batch_size, summary.workers, max_pixels, progress,
                     flush_rows, flush_seconds)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            if len(block):
                journal.write(block, enc.embedding_dim if enc else (spec.embedding_dim or 0))
        dim = enc.embedding_dim if enc is not None else None
        relabel = {f.path: f.label for f in files} if labels is not None else {}
        _commit(cache, encoder, spec, journal, journal_identity, committed, summary, dim, relabel,
                present={f.path for f in files}, exact=exact)
        journal.clear()
        if views and not summary.interrupted and summary.images:
            enc = enc or create_encoder(encoder, weights=weights, device=device)
            summary.views_computed = add_views(cache, encoder, enc, views, batch_size or default_batch_size(enc.device),
                                               max_pixels, progress)
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.images_per_second = round(summary.embedded / summary.seconds, 2) if summary.seconds > 0 else 0.0
    return summary


def _read_committed(cache: Cache, encoder: str) -> tuple[Index | None, Failures | None, dict | None]:
    if not cache.exists() or encoder not in cache.encoders():
        return None, None, None
    info = cache.info(encoder)
    return (cache.read_index(encoder), cache.read_failures(encoder),
            {"architecture": info["architecture"], "weights": info["weights"]})


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


def _known_state(committed: Index | None, failures: Failures | None, parts: list[dict]) -> dict[str, tuple[int, int]]:
    """``{path: (size, mtime)}`` of everything already embedded or recorded as failed."""
    known: dict[str, tuple[int, int]] = {}
    for paths, sizes, mtimes in ([(committed.paths, committed.sizes, committed.mtimes)] if committed is not None else []) + \
            ([(failures.paths, failures.sizes, failures.mtimes)] if failures is not None else []) + \
            [(p["paths"], p["sizes"], p["mtimes"]) for p in parts] + \
            [(p["fail_paths"], p["fail_sizes"], p["fail_mtimes"]) for p in parts]:
        known.update(zip(map(str, paths), zip(map(int, sizes), map(int, mtimes))))
    return known


def _run(enc: Encoder, pending: list[ImageFile], block: _Block, journal: _Journal, summary: EmbedSummary,
         batch_size: int, workers: int, max_pixels: int | None, progress: Progress | None,
         flush_rows: int, flush_seconds: float) -> None:
    import torch

    threads = torch.get_num_threads()
    if enc.device == "cpu":
        torch.set_num_threads(model_threads())
    try:
        _embed_batches(enc, pending, block, journal, summary, batch_size, workers, max_pixels, progress,
                       flush_rows, flush_seconds)
    finally:
        torch.set_num_threads(threads)


def encode_files(enc: Encoder, files: Sequence[ImageFile], batch_size: int, workers: int, max_pixels: int | None,
                 progress: Progress | None = None) -> Iterator[tuple[list[tuple[ImageFile, np.ndarray | None, str]], int]]:
    """Decode ``files`` in ``workers`` processes and encode them in padded batches, in bounded memory.

    Yields, per batch, ``(results, recomputed)``: ``(file, vector, "")`` for each embedded file and
    ``(file, None, reason)`` for each that failed (decoding, or an embedding still not finite in
    float32); ``recomputed`` is the number of rows of a half-precision batch computed again in
    float32 because some row was not finite. ``embed`` and ``assign`` share this loader.
    """
    import torch

    loader = torch.utils.data.DataLoader(
        _DecodeDataset(files, enc.preprocess, max_pixels), batch_size=batch_size, shuffle=False,
        num_workers=workers, collate_fn=_collate, worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False,
        pin_memory=enc.device.startswith("cuda"))
    done = 0
    if progress:
        progress(0, len(files))
    with _sigint_ignored_while_forking(workers):
        batches = iter(loader)  # starts the workers
    for items in batches:
        results: list[tuple[ImageFile, np.ndarray | None, str]] = [
            (files[i], None, reason) for i, array, reason in items if array is None]
        good = [(i, array) for i, array, _ in items if array is not None]
        if good:
            vectors, finite, recomputed = enc.encode_finite(np.stack([array for _, array in good]), batch_size)
            for (i, _), vector, ok in zip(good, vectors, finite):
                results.append((files[i], vector, "") if ok else (files[i], None, NON_FINITE_REASON))
        done += len(items)
        yield results, (len(good) if good and recomputed else 0)
        if progress:
            progress(done, len(files))


NON_FINITE_REASON = "the encoder gave a non-finite embedding (NaN or Inf), also in float32"


def _embed_batches(enc: Encoder, pending: list[ImageFile], block: _Block, journal: _Journal, summary: EmbedSummary,
                   batch_size: int, workers: int, max_pixels: int | None, progress: Progress | None,
                   flush_rows: int, flush_seconds: float) -> None:
    last_flush = time.monotonic()
    for results, recomputed in encode_files(enc, pending, batch_size, workers, max_pixels, progress):
        summary.recomputed_float32 += recomputed
        for f, vector, reason in results:
            if vector is None:
                block.add_failure(f, reason)
                summary.failed += 1
            else:
                block.add_row(f, vector)
                summary.embedded += 1
        if len(block) >= flush_rows or time.monotonic() - last_flush > flush_seconds:
            journal.write(block, enc.embedding_dim)
            block.__init__()
            last_flush = time.monotonic()


def _commit(cache: Cache, encoder: str, spec, journal: _Journal, identity: dict, committed: Index | None,
            summary: EmbedSummary, dim: int | None, relabel: dict[str, str | None], present: set[str],
            exact: bool) -> None:
    """Merge the committed rows and the journal into a new cache file (one atomic replace)."""
    parts = journal.load()
    rows: dict[str, tuple] = {}  # path -> (size, mtime, label, source, position)
    fails: dict[str, tuple] = {}
    old_failures = None
    if committed is not None:
        for pos, (p, s, m, lab) in enumerate(zip(committed.paths, committed.sizes, committed.mtimes, committed.labels)):
            rows[p] = (int(s), int(m), lab, -1, pos)
        old_failures = cache.read_failures(encoder)
        for p, s, m, r in zip(old_failures.paths, old_failures.sizes, old_failures.mtimes, old_failures.reasons):
            fails[p] = (int(s), int(m), r)
    for k, part in enumerate(parts):
        if dim is None and len(part["paths"]):
            dim = part["embeddings"].shape[1]
        for pos, (p, s, m, lab) in enumerate(zip(part["paths"], part["sizes"], part["mtimes"], part["labels"])):
            rows[str(p)] = (int(s), int(m), str(lab), k, pos)
            fails.pop(str(p), None)
        for p, s, m, r in zip(part["fail_paths"], part["fail_sizes"], part["fail_mtimes"], part["fail_reasons"]):
            fails[str(p)] = (int(s), int(m), str(r))
            rows.pop(str(p), None)
    # Drop rows whose file is gone (and, unless exact, keep rows of other folders embedded separately).
    for table in (rows, fails):
        for p in [p for p in table if p not in present and (exact or not os.path.exists(p))]:
            del table[p]
            summary.removed += table is rows
    if dim is None:
        dim = spec.embedding_dim or (cache.info(encoder)["embedding_dim"] if committed is not None else 0)
    paths = sorted(rows)
    rows_same = (committed is not None and not any(len(part["paths"]) for part in parts)
                 and list(committed.paths) == paths)
    index = Index(np.array(paths, dtype=object),
                  np.array([rows[p][0] for p in paths], dtype=np.int64),
                  np.array([rows[p][1] for p in paths], dtype=np.int64),
                  np.array([(relabel.get(p) or "") if p in relabel else rows[p][2] for p in paths], dtype=object))
    fail_paths = sorted(fails)
    failures = Failures(np.array(fail_paths, dtype=object), np.array([fails[p][0] for p in fail_paths], dtype=np.int64),
                        np.array([fails[p][1] for p in fail_paths], dtype=np.int64),
                        np.array([fails[p][2] for p in fail_paths], dtype=object))
    summary.images, summary.failures_total = len(paths), len(fail_paths)
    if rows_same and np.array_equal(index.labels, committed.labels) and _same_failures(failures, old_failures):
        return  # nothing to write: the cache already is the result

    def build(group, old_group):
        group.attrs.update({"encoder": encoder, "family": spec.family, "architecture": identity["architecture"],
                            "weights": identity["weights"], "embedding_dim": dim, "description": spec.description,
                            "preprocess": json.dumps(spec.preprocess.to_dict()), "imgclust_version": __version__,
                            "updated": now_iso()})
        write_rows(group, index, _gather(old_group, parts, rows, paths, dim), dim)
        write_failures(group, failures)
        if old_group is not None:
            if rows_same and "views" in old_group:  # views of other rows are recomputed by add_views
                old_group.file.copy(old_group["views"], group, name="views")
            for kind in ("reductions", "runs"):
                if kind in old_group:
                    if rows_same:
                        old_group.file.copy(old_group[kind], group, name=kind)
                    else:
                        summary.dropped_derived += [f"{kind}/{name}" for name in old_group[kind]]

    cache.rewrite(encoder, build)


def _same_failures(new: Failures, old: Failures | None) -> bool:
    return old is not None and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in (
        (new.paths, old.paths), (new.sizes, old.sizes), (new.mtimes, old.mtimes), (new.reasons, old.reasons)))


def _gather(old_group, parts: list[dict], rows: dict, paths: list[str], dim: int):
    """Yield ``(start, block)`` of the merged embeddings in final row order, a chunk at a time."""
    step = 4096
    for start in range(0, len(paths), step):
        chunk = paths[start:start + step]
        out = np.empty((len(chunk), dim), np.float32)
        from_old = [(j, rows[p][4]) for j, p in enumerate(chunk) if rows[p][3] == -1]
        if from_old:
            # Old rows are sorted like the new ones, so their positions increase (h5py needs that).
            out[[j for j, _ in from_old]] = old_group["embeddings"][[pos for _, pos in from_old]]
        for j, p in enumerate(chunk):
            source = rows[p][3]
            if source >= 0:
                out[j] = parts[source]["embeddings"][rows[p][4]]
        yield start, out

