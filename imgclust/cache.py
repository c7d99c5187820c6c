"""The embedding cache: a small HDF5 index plus immutable bulk files, shared by every stage.

Why this shape (schema 2): users have up to 10 M images (~50 GB of float32 embeddings), and a
stage stores an 8 MB label array or adds ten rows many times a day. Schema 1 kept everything in
one HDF5 file rewritten on every write, so each of those writes copied the whole cache. Now the
file the user names, ``photos.h5``, is a small *index*, and every bulk array lives in an
immutable HDF5 file in ``photos.h5.d/``, written once under a temporary name and renamed::

    photos.h5                              attrs: format="imgclust-cache", schema_version=2
      /encoders/<encoder>/                 attrs: encoder, family, architecture, weights, embedding_dim,
                                                  preprocess, identity_json, fingerprint, n_rows
          blocks        str (B,)           the embedding blocks, in photos.h5.d/
          block_rows    int64 (B,)
          segments      int64 (S, 3)       (block, start, stop): the rows, in order, are these slices
          embeddings    virtual (N, D)     HDF5 virtual dataset over the segments: plain h5py sees every row
          failures/     paths, sizes, mtimes, reasons: files that could not be read, with why
          reductions/<name>, runs/<id>, views/<name>, knn/<name>
                        attrs: settings, fingerprint, file, nbytes, created; members are external links
                        into the result's own file
    photos.h5.d/block-<id>.h5              embeddings (n, D), paths, sizes, mtimes, labels, hashes,
                                           perceptual_hashes (uint64; blocks written before it have
                                           none: read as NO_HASH), row_keys; attrs: encoder, identity (encoder, weights,
                                           preprocessing, device, dtype, batch size)
    photos.h5.d/<kind>-<id>.h5             one reduction / run / set of views each

Costs: storing a result writes its own file and a new index (kilobytes); adding rows writes a
block of the new rows and the index; removing rows or results rewrites only the index. A row that
is replaced (its file changed) keeps its position: ``segments`` point into the newer block.
``compact`` merges small and sparse blocks; ``pack`` writes one self-contained file.

Results know their rows: each row has a 64-bit key (a hash of its path and embedding), and the
*fingerprint* of a row set is a hash of its keys in order. Every result records the fingerprint
it was computed from; a result whose fingerprint is not the encoder's current one is *stale*: it is
kept and listed, and no stage uses it.

Crash safety: nothing is edited in place. Bulk files are written to ``.tmp-<pid>-*`` names and
renamed; the index is written to a temporary file and atomically replaces ``photos.h5``, so a kill
leaves the old or the new index, and files no index names are collected by the next commit.
Locks: ``photos.h5.lock`` is the *session* lock of a process that changes rows (``embed``,
``import``, ``compact``, ``upgrade``): a second one fails at once with
:class:`CacheLockedError`. Every commit takes the short *commit* lock ``photos.h5.d/commit.lock``,
so ``reduce`` and ``cluster`` compute beside a long ``embed`` and only wait for its commit.
A reader that loaded an index before a compaction removed a block gets a one-line error and reruns.

Schema-1 caches (one file) are read as they are; writes ask for ``imgclust cache upgrade``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import h5py
import numpy as np

from . import __version__
from .errors import CacheError, CacheLockedError, NotFoundError, ResourceError, UsageError
from .phash import NO_HASH

FORMAT = "imgclust-cache"
SCHEMA_VERSION = 2
LEGACY_SCHEMA = 1
BULK_FORMAT = "imgclust-bulk"
RESULT_KINDS = ("reductions", "runs", "views", "knn", "scores")
_STR = h5py.string_dtype("utf-8")
_CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: fast sequential reads, small partial reads
# Files are written with HDF5's chunk cache off: a write that fails (disk full, file too large) then
# fails in the call that made it, as an exception, not later while h5py frees the file (a crash).
_VDS_MAX_SEGMENTS = 20_000  # beyond this the virtual dataset is left out (compact the cache)
_COMMIT_WAIT_S = 600.0


# Lock descriptors this process holds. A forked child (a DataLoader worker, say) inherits them, and a
# flock lasts while any copy is open: a worker orphaned by a kill -9 of its parent would keep the cache
# locked. Children close their copies at fork (closing, unlike LOCK_UN, leaves the parent's lock alone).
_HELD_LOCK_FDS: set[int] = set()
_COMMIT_DEPTH: dict[str, int] = {}


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()
    _COMMIT_DEPTH.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def encoder_key(encoder: str) -> str:
    """The group name of an encoder: its name with ``/`` (not allowed in HDF5 names) escaped."""
    return encoder.replace("/", "%2F")


@dataclass(frozen=True)
class Index:
    """Everything about an encoder's rows except the embeddings themselves."""

    paths: np.ndarray  # str
    sizes: np.ndarray
    mtimes: np.ndarray
    labels: np.ndarray  # str, "" when unknown
    hashes: np.ndarray | None = None  # str: content hash of the file ("" when not known)
    perceptual_hashes: np.ndarray | None = None  # uint64: imgclust.phash of the image (NO_HASH when not known)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels != "").any())


@dataclass(frozen=True)
class Failures:
    paths: np.ndarray
    sizes: np.ndarray
    mtimes: np.ndarray
    reasons: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def empty(cls) -> "Failures":
        return cls(np.array([], dtype=object), np.array([], np.int64), np.array([], np.int64), np.array([], dtype=object))


@dataclass
class NewRows:
    """Rows to add (or to replace, by path) in one new block. ``embeddings`` is an array or an
    iterable of row chunks (streamed: never all in memory when it is an iterable)."""

    paths: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    labels: list[str]
    hashes: list[str]
    embeddings: np.ndarray | Iterable[np.ndarray]
    perceptual_hashes: np.ndarray | None = None  # uint64 (imgclust.phash); None: none known

    def __len__(self) -> int:
        return len(self.paths)


# -- strings, attributes, hashes --------------------------------------------------------------


def _strings(dataset) -> np.ndarray:
    # surrogateescape: file names that are not valid UTF-8 come back exactly as os.listdir gave them
    return (np.array(dataset.asstr(errors="surrogateescape")[()], dtype=object) if len(dataset)
            else np.array([], dtype=object))


def _encoded(values) -> np.ndarray:
    """Strings as UTF-8 bytes for a string dataset; a file name that is not valid UTF-8 (which
    Python holds with surrogate escapes) keeps its original bytes instead of failing the write."""
    return np.array([_utf8(v) for v in values], dtype=object)


def _utf8(value) -> bytes:
    value = str(value)
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a file name
        return value.encode("utf-8", "backslashreplace")


def _put_text(group: h5py.Group, name: str, values: list[str]) -> None:
    """Many strings as one NUL-separated UTF-8 byte array plus offsets: 1 M paths read in ~0.1 s,
    where a variable-length string dataset takes seconds. (Paths and labels hold no NUL.)"""
    parts = [_utf8(v) for v in values]
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum([len(p) + 1 for p in parts], out=offsets[1:])
    blob = np.frombuffer(b"".join(p + b"\0" for p in parts), np.uint8)
    group.create_dataset(name, data=blob, chunks=(max(1, min(len(blob), _CHUNK_BYTES)),) if len(blob) else None)
    group.create_dataset(f"{name}_offsets", data=offsets)


def _get_text(group: h5py.Group, name: str, start: int, stop: int) -> list[str]:
    if stop <= start:
        return []
    offsets = group[f"{name}_offsets"]
    a, b = int(offsets[start]), int(offsets[stop])
    return group[name][a:b].tobytes()[:-1].decode("utf-8", "surrogateescape").split("\0")


def _h5_reason(exc: OSError) -> str:
    """A one-line reason from an h5py OSError (whose text can span lines with HDF5 internals)."""
    text = str(exc)
    if "file signature not found" in text:
        return "not an HDF5 file"
    if exc.errno:
        return os.strerror(exc.errno)
    return " ".join(text.split("(", 1)[0].split()) or type(exc).__name__


def chunk_rows(dim: int) -> int:
    return max(1, _CHUNK_BYTES // (4 * max(1, dim)))


def file_hash(path: str) -> str:
    """The content hash stored per row (BLAKE2b-128 of the file's bytes); "" if it cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            for piece in iter(lambda: fh.read(1 << 20), b""):
                digest.update(piece)
    except OSError:
        return ""
    return digest.hexdigest()


def row_keys(paths: list[str], vectors: np.ndarray) -> np.ndarray:
    """64-bit keys of rows: a hash of path and embedding bytes (identifies a row's content)."""
    out = np.empty(len(paths), np.uint64)
    for i, (path, vector) in enumerate(zip(paths, vectors)):
        h = hashlib.blake2b(_utf8(path) + b"\0" + np.ascontiguousarray(vector, np.float32).tobytes(), digest_size=8)
        out[i] = int.from_bytes(h.digest(), "little")
    return out


def fingerprint(keys: np.ndarray) -> str:
    """The fingerprint of a row set: a hash of its row keys in order."""
    return hashlib.blake2b(np.ascontiguousarray(keys, np.uint64).tobytes(), digest_size=16).hexdigest()


def decode_attrs(attrs) -> dict:
    """HDF5 attributes as plain Python values (JSON strings under ``*_json`` keys decoded)."""
    out = {}
    for key, value in attrs.items():
        value = value.item() if hasattr(value, "item") and getattr(value, "shape", None) == () else value
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, bytes):
            value = value.decode()
        if key.endswith("_json"):
            out[key[:-5]] = json.loads(value)
        else:
            out[key] = value
    return out


def encode_attrs(target, values: dict) -> None:
    """Store ``values`` as attributes; dicts and lists go as JSON under ``<key>_json``."""
    for key, value in values.items():
        if isinstance(value, (dict, list, tuple)) or value is None:
            target.attrs[f"{key}_json"] = json.dumps(value)
        else:
            target.attrs[key] = value


_KEY_SAFE = re.compile(r"[^A-Za-z0-9_.=,+-]")


def settings_key(method: str, settings: dict) -> str:
    """A readable, stable key naming a method and its settings, e.g. ``umap-n_components=50-...``."""
    parts = [method] + [f"{k}={settings[k]}" for k in sorted(settings)]
    return _KEY_SAFE.sub("_", "-".join(parts))


def new_run_id(existing) -> str:
    """A short, sortable run id: ``run-<n>`` with n one more than the largest used."""
    numbers = [int(m.group(1)) for name in existing if (m := re.fullmatch(r"run-(\d+)", name))]
    return f"run-{max(numbers, default=0) + 1}"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- the in-memory model of the index ----------------------------------------------------------


@dataclass
class EncoderState:
    """One encoder's entry in the index. Block and result files are named relative to the bulk
    folder, or start with ``/`` for a group inside the index file itself (schema 1, packed caches)."""

    attrs: dict
    blocks: list[str] = field(default_factory=list)
    block_rows: list[int] = field(default_factory=list)
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    failures: Failures = field(default_factory=Failures.empty)
    results: dict[str, dict[str, dict]] = field(default_factory=lambda: {k: {} for k in RESULT_KINDS})
    fingerprint: str = ""

    @property
    def n_rows(self) -> int:
        return int((self.segments[:, 2] - self.segments[:, 1]).sum()) if len(self.segments) else 0

    @property
    def dim(self) -> int:
        return int(self.attrs.get("embedding_dim", 0))

    def is_stale(self, attrs: dict) -> bool:
        return attrs.get("fingerprint") != self.fingerprint


@dataclass
class State:
    schema: int
    encoders: dict[str, EncoderState]


def segments_from_locations(blocks: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Run-length ``(block, start, stop)`` segments of per-row locations ``(block[i], rows[i])``."""
    if not len(blocks):
        return np.zeros((0, 3), np.int64)
    breaks = np.flatnonzero((blocks[1:] != blocks[:-1]) | (rows[1:] != rows[:-1] + 1)) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(blocks)]])
    return np.stack([blocks[starts], rows[starts], rows[starts] + (stops - starts)], axis=1).astype(np.int64)


def locations(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row ``(block, row in block)`` of ``segments`` (the inverse of :func:`segments_from_locations`)."""
    if not len(segments):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lengths = segments[:, 2] - segments[:, 1]
    blocks = np.repeat(segments[:, 0], lengths)
    firsts = np.repeat(segments[:, 1] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return blocks, firsts + np.arange(int(lengths.sum()))


# -- a pinned view of an encoder's rows ---------------------------------------------------------


class BulkFileGone(CacheError):
    """A block or result file named by an index that a later commit replaced was removed."""


#: The progress stage of reading many rows' embeddings (see :meth:`Rows.read_embeddings`).
READ_STAGE = "reading embeddings"


class Rows:
    """The rows of one encoder as of one index version. Blocks are immutable, so every read through
    this object sees the same rows even while other processes commit."""

    def __init__(self, cache: "Cache", encoder: str, state: EncoderState):
        self.cache, self.encoder, self.state = cache, encoder, state
        self._index: Index | None = None

    def __len__(self) -> int:
        return self.state.n_rows

    @property
    def fingerprint(self) -> str:
        return self.state.fingerprint

    @property
    def dim(self) -> int:
        return self.state.dim

    def _pieces(self) -> Iterator[tuple[h5py.Group, int, int]]:
        """``(block group, start, stop)`` per segment, with each block file opened once."""
        with contextlib.ExitStack() as stack:
            opened: dict[int, h5py.Group] = {}
            for b, start, stop in self.state.segments.tolist():
                if b not in opened:
                    opened[b] = self.cache._open_ref(self.state.blocks[b], stack)
                yield opened[b], start, stop

    def index(self) -> Index:
        if self._index is None:
            paths, sizes, mtimes, labels, hashes, phashes = [], [], [], [], [], []
            for group, start, stop in self._pieces():
                meta = _block_meta(group, start, stop)
                for out, values in zip((paths, sizes, mtimes, labels, hashes, phashes), meta):
                    out.append(values)
            self._index = Index(np.array([p for ps in paths for p in ps], dtype=object),
                                np.concatenate(sizes) if sizes else np.zeros(0, np.int64),
                                np.concatenate(mtimes) if mtimes else np.zeros(0, np.int64),
                                np.array([v for vs in labels for v in vs], dtype=object),
                                np.array([v for vs in hashes for v in vs], dtype=object),
                                np.concatenate(phashes) if phashes else np.zeros(0, np.uint64))
        return self._index

    def paths(self) -> list[str]:
        """The rows' paths only (what a commit needs to place new rows)."""
        if self._index is not None:
            return list(self._index.paths)
        return [p for group, start, stop in self._pieces() for p in _block_meta(group, start, stop, paths_only=True)]

    def row_keys(self) -> np.ndarray:
        keys = [group["row_keys"][start:stop] for group, start, stop in self._pieces()]
        return np.concatenate(keys) if keys else np.zeros(0, np.uint64)

    def iter_embeddings(self, rows_per_chunk: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` over the embeddings, ``rows_per_chunk`` rows at a time."""
        step = rows_per_chunk or chunk_rows(self.dim) * 16
        pending, pending_rows, first = [], 0, 0
        for group, start, stop in self._pieces():
            data = group["embeddings"]
            for a in range(start, stop, step):
                piece = data[a:min(stop, a + step - pending_rows)] if pending_rows else data[a:min(stop, a + step)]
                pending.append(piece)
                pending_rows += len(piece)
                consumed = a + len(piece)
                while pending_rows >= step:
                    joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                    yield first, joined[:step]
                    first += step
                    rest = joined[step:]
                    pending, pending_rows = ([rest] if len(rest) else []), len(rest)
                if consumed < min(stop, a + step):  # the chunk was cut to fill the pending block
                    piece = data[consumed:min(stop, a + step)]
                    pending.append(piece)
                    pending_rows += len(piece)
        if pending_rows:
            yield first, np.concatenate(pending) if len(pending) > 1 else pending[0]

    def read_embeddings(self, max_bytes: int | None = None,
                        on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Every row's embedding; ``on_progress(rows read, rows)`` after each chunk (a million rows of
        1,280 dims take about 25 s here)."""
        size = len(self) * self.dim * 4
        if max_bytes is not None and size > max_bytes:
            raise ResourceError(f"the embeddings of '{self.encoder}' take {size / 2**30:.1f} GiB, over the "
                                f"{max_bytes / 2**30:.1f} GiB memory budget",
                                hint="reduce them first (imgclust reduce fits on a sample and transforms in chunks)")
        out = np.empty((len(self), self.dim), np.float32)
        for start, chunk in self.iter_embeddings():
            out[start:start + len(chunk)] = chunk
            if on_progress is not None:
                on_progress(start + len(chunk), len(self))
        return out

    def take(self, positions: np.ndarray, on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The embeddings of rows ``positions`` (increasing): contiguous reads of bounded size that
        span them, masked (h5py's point selection is slow for many rows); ``on_progress(rows read,
        rows)`` after each read."""
        positions = np.asarray(positions, np.int64)
        if len(positions) == len(self) and np.array_equal(positions, np.arange(len(self))):  # every row: one copy
            return self.read_embeddings(on_progress=on_progress)
        out = np.empty((len(positions), self.dim), np.float32)
        step = chunk_rows(self.dim) * 16
        seg_first = 0
        for group, start, stop in self._pieces():
            seg_last = seg_first + stop - start
            a, b = np.searchsorted(positions, [seg_first, seg_last])
            while a < b:  # rows a.. of out, read in spans of at most `step` rows of the block
                first = positions[a] - seg_first + start
                end = int(np.searchsorted(positions, positions[a] + step, side="left", sorter=None))
                end = min(end, b)
                last = positions[end - 1] - seg_first + start
                span = group["embeddings"][first:last + 1]
                out[a:end] = span[positions[a:end] - seg_first + start - first]
                a = end
                if on_progress is not None:
                    on_progress(a, len(positions))
            seg_first = seg_last
        return out


def _block_meta(group: h5py.Group, start: int, stop: int, paths_only: bool = False):
    """``(paths, sizes, mtimes, labels, hashes, perceptual hashes)`` of rows ``start:stop`` of a block (or a
    schema-1 group); only the paths with ``paths_only``. A block written before perceptual hashes were
    stored has none: :data:`imgclust.phash.NO_HASH` each."""
    if paths_only:
        return (_get_text(group, "paths", start, stop) if "paths_offsets" in group
                else list(_strings(group["paths"])[start:stop]))
    n = stop - start
    phashes = (group["perceptual_hashes"][start:stop] if "perceptual_hashes" in group
               else np.full(n, NO_HASH, np.uint64))
    if "paths_offsets" in group:
        return (_get_text(group, "paths", start, stop), group["sizes"][start:stop], group["mtimes"][start:stop],
                _get_text(group, "labels", start, stop), _get_text(group, "hashes", start, stop), phashes)
    return (list(_strings(group["paths"])[start:stop]), group["sizes"][start:stop], group["mtimes"][start:stop],
            list(_strings(group["labels"])[start:stop]), [""] * n, phashes)


# -- the cache ----------------------------------------------------------------------------------


class Cache:
    """An imgclust cache: read it freely; rows change under :meth:`writer`, results through
    :meth:`store_result` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r})"

    @property
    def bulk_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".d")

    @property
    def journal_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".journal")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def exists(self) -> bool:
        return self.path.exists()

    def _check_path(self) -> None:
        if not self.path.name or self.path.is_dir():
            raise UsageError(f"the cache path '{self.path}' is a folder, not a file",
                             hint=f"give a file path, e.g. --cache {self.path / 'imgclust-cache.h5'}")

    # -- reading ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def open(self) -> Iterator[h5py.File]:
        """Open the index read-only after checking it is an imgclust cache of a schema this version reads."""
        self._check_path()
        if not self.path.exists():
            raise UsageError(f"cache not found: {self.path}", hint="create it with: imgclust embed PATH --cache " + str(self.path))
        try:
            fh = h5py.File(self.path, "r", locking=False)
        except OSError as exc:
            raise CacheError(f"{self.path} is not a readable HDF5 file ({_h5_reason(exc)})",
                             hint="pass the .h5 file that imgclust embed wrote, or delete it and embed again") from None
        with fh:
            if fh.attrs.get("format") != FORMAT:
                raise CacheError(f"{self.path} is an HDF5 file but not an imgclust cache",
                                 hint="pass the cache written by imgclust embed, or choose another --cache path")
            version = int(fh.attrs.get("schema_version", -1))
            if version not in (SCHEMA_VERSION, LEGACY_SCHEMA):
                raise CacheError(f"{self.path} has cache schema {version}; this imgclust reads schemas "
                                 f"{LEGACY_SCHEMA} and {SCHEMA_VERSION}",
                                 hint="re-create it with: imgclust embed PATH --cache NEW.h5")
            yield fh

    def _open_ref(self, ref: str, stack: contextlib.ExitStack) -> h5py.Group:
        """The group a block or result reference names (see :class:`EncoderState`)."""
        if ref.startswith("/"):
            fh = stack.enter_context(h5py.File(self.path, "r", locking=False))
            return fh[ref]
        path = self.bulk_dir / ref
        try:
            return stack.enter_context(h5py.File(path, "r", locking=False))
        except OSError as exc:
            # a commit may remove the file while HDF5 opens it: HDF5 then reports a generic "unable to
            # open" rather than FileNotFoundError, so whether the file is gone now decides
            if isinstance(exc, FileNotFoundError) or not path.exists():
                raise BulkFileGone(f"{path} is gone: the cache changed while it was read (compacted, or a result "
                                   "removed)", hint="run the command again") from None
            raise CacheError(f"{path} cannot be read ({_h5_reason(exc)})",
                             hint=f"check the disk; imgclust info {self.path} lists what the cache holds") from None

    def load(self) -> State:
        """The whole index in memory (small: no row data)."""
        with self.open() as fh:
            schema = int(fh.attrs["schema_version"])
            encoders = {}
            for key, group in (fh.get("encoders") or {}).items():
                state = _read_legacy_encoder(group) if schema == LEGACY_SCHEMA else _read_encoder(group)
                encoders[state.attrs["encoder"]] = state
            return State(schema, encoders)

    def encoders(self) -> list[str]:
        return list(self.load().encoders)

    def resolve_encoder(self, encoder: str | None) -> str:
        """``encoder`` if the cache holds it, or the only encoder it holds when ``encoder`` is None."""
        names = self.encoders()
        if encoder is None:
            if len(names) == 1:
                return names[0]
            if not names:
                raise UsageError(f"{self.path} holds no embeddings yet", hint="run imgclust embed PATH --cache " + str(self.path))
            raise UsageError(f"{self.path} holds embeddings of several encoders ({', '.join(names)})", hint="choose one with --encoder")
        if encoder not in names:
            have = f"it holds {', '.join(names)}" if names else "it holds none yet"
            raise NotFoundError(f"{self.path} has no embeddings for encoder '{encoder}' ({have})",
                                hint=f"run imgclust embed PATH --encoder {encoder} --cache {self.path}")
        return encoder

    def _encoder_state(self, encoder: str, state: State | None = None) -> EncoderState:
        state = state or self.load()
        if encoder not in state.encoders:
            raise NotFoundError(f"{self.path} has no embeddings for encoder '{encoder}'",
                                hint=f"run imgclust embed PATH --encoder {encoder} --cache {self.path}")
        return state.encoders[encoder]

    def rows(self, encoder: str) -> Rows:
        """The current rows of ``encoder``, pinned (see :class:`Rows`)."""
        return Rows(self, encoder, self._encoder_state(encoder))

    def info(self, encoder: str) -> dict:
        state = self._encoder_state(encoder)
        attrs = {k: v for k, v in state.attrs.items()}
        attrs["preprocess"] = json.loads(attrs.get("preprocess", "{}") or "{}")
        attrs["n_images"] = state.n_rows
        attrs["n_failures"] = len(state.failures)
        attrs["has_views"] = any(not state.is_stale(a) for a in state.results["views"].values())
        attrs["fingerprint"] = state.fingerprint
        return attrs

    def _reading(self, encoder: str, read):
        """``read(rows)`` on the current rows, again on the newer ones if a commit removed a file meanwhile."""
        for attempt in range(3):
            try:
                return read(self.rows(encoder))
            except BulkFileGone:
                if attempt == 2:
                    raise

    def read_index(self, encoder: str) -> Index:
        return self._reading(encoder, Rows.index)

    def read_failures(self, encoder: str) -> Failures:
        return self._encoder_state(encoder).failures

    def iter_embeddings(self, encoder: str, rows_per_chunk: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` over the embeddings without loading them all at once."""
        yield from self.rows(encoder).iter_embeddings(rows_per_chunk)

    def read_embeddings(self, encoder: str, max_bytes: int | None = None) -> np.ndarray:
        """All embeddings of ``encoder`` in memory; refuses when they exceed ``max_bytes``."""
        return self._reading(encoder, lambda rows: rows.read_embeddings(max_bytes))

    def list_groups(self, encoder: str, kind: str) -> dict[str, dict]:
        """``{name: attrs}`` of the reductions, runs, views or kNN graphs of ``encoder``; each has
        ``stale`` (True when computed from rows other than the current ones)."""
        state = self._encoder_state(encoder)
        return {name: {**attrs, "stale": state.is_stale(attrs)} for name, attrs in state.results[kind].items()}

    def current(self, encoder: str, kind: str, fingerprint: str) -> dict[str, dict]:
        """The results of ``kind`` computed from the row set ``fingerprint``."""
        return {n: a for n, a in self._encoder_state(encoder).results[kind].items() if a.get("fingerprint") == fingerprint}

    def read_result(self, encoder: str, kind: str, name: str, fingerprint: str | None = None) -> dict[str, np.ndarray]:
        """The arrays of a stored result (nested groups as nested dicts). With ``fingerprint``, a
        result computed from other rows is refused (it is never used for another row set)."""
        state = self._encoder_state(encoder)
        attrs = state.results[kind].get(name)
        if attrs is None:
            raise NotFoundError(f"{self.path} has no {kind[:-1] if kind != 'knn' else kind} '{name}' for encoder '{encoder}'",
                                hint=f"see what it holds: imgclust info {self.path}")
        if fingerprint is not None and attrs.get("fingerprint") != fingerprint:
            raise UsageError(f"{kind[:-1]} '{name}' in {self.path} was computed from other images than the cache holds now",
                             hint=f"compute it again (imgclust {'cluster' if kind == 'runs' else 'reduce'} {self.path})")
        with contextlib.ExitStack() as stack:
            node = self._open_ref(attrs["file"], stack)
            if isinstance(node, h5py.Dataset):  # a schema-1 views dataset
                return {node.name.rsplit("/", 1)[1]: node[()]}
            return _read_tree(node)

    def read_array(self, encoder: str, location: str) -> tuple[np.ndarray, dict]:
        """A stored array, ``<kind>/<name>/<array>`` (``reductions/<key>/data``, ``runs/<id>/labels``), and its attrs."""
        kind, name, array = location.split("/", 2)
        state = self._encoder_state(encoder)
        if name not in state.results.get(kind, {}):
            raise NotFoundError(f"{self.path} has no {location} for encoder '{encoder}'")
        tree = self.read_result(encoder, kind, name)
        return tree[array], dict(state.results[kind][name])

    def read_views(self, encoder: str) -> np.ndarray | None:
        """The augmented views of the current rows, or None when there are none for exactly these rows."""
        state = self._encoder_state(encoder)
        for name, attrs in state.results["views"].items():
            if not state.is_stale(attrs):
                return self.read_result(encoder, "views", name)["views"]
        return None

    # -- locks --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the session lock of a row-changing process; a second one gets :class:`CacheLockedError` at once."""
        self._check_path()
        fd = self._lock_fd(self.lock_path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CacheLockedError(f"another imgclust process is writing {self.path}",
                                       hint="wait for it to finish, or use another --cache") from None
            yield
        finally:
            _release(fd)

    def _lock_fd(self, lock: Path) -> int:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            blocker = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
            reason = f"{blocker} is a file, not a folder" if blocker is not None else (exc.strerror or str(exc))
            raise UsageError(f"cannot write the cache {self.path}: {reason}",
                             hint="choose a --cache path in a folder you can write") from None
        _HELD_LOCK_FDS.add(fd)
        return fd

    @contextlib.contextmanager
    def committing(self) -> Iterator[None]:
        """Hold the commit lock (re-entrant in a process); waits while another process commits."""
        key = str(self.bulk_dir.resolve())
        if _COMMIT_DEPTH.get(key):
            _COMMIT_DEPTH[key] += 1
            try:
                yield
            finally:
                _COMMIT_DEPTH[key] -= 1
            return
        self._check_path()
        fd = self._lock_fd(self.bulk_dir / "commit.lock")
        try:
            deadline = time.monotonic() + _COMMIT_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise CacheLockedError(f"another imgclust process has been committing to {self.path} for "
                                               f"{_COMMIT_WAIT_S:.0f} s", hint="check for a stopped imgclust process") from None
                    time.sleep(0.02)
            _COMMIT_DEPTH[key] = 1
            try:
                yield
            finally:
                _COMMIT_DEPTH.pop(key, None)
        finally:
            _release(fd)

    # -- writing ------------------------------------------------------------------------------

    def require_writable(self, state: State | None = None) -> None:
        """Refuse, with what to run, a cache this version reads but does not write (schema 1, packed)."""
        if not self.path.exists():
            return
        state = state or self.load()
        if state.schema == LEGACY_SCHEMA:
            raise CacheError(f"{self.path} is a schema-1 cache: this imgclust reads it but writes only schema 2",
                             hint=f"convert it once with: imgclust cache upgrade {self.path}")
        if has_internal_refs(state):
            raise CacheError(f"{self.path} is a packed cache (one self-contained file): it is read as it is",
                             hint=f"to write to it, convert it once with: imgclust cache upgrade {self.path}")

    @contextlib.contextmanager
    def transaction(self, upgrading: bool = False) -> Iterator[State]:
        """Change the index under the commit lock: yields the current :class:`State` (an empty one
        for a new cache) to edit in place; on a clean exit the new index atomically replaces the old
        one and files no index names any more are removed. If the block raises, nothing changes."""
        with self.committing():
            state = self.load() if self.path.exists() else State(SCHEMA_VERSION, {})
            if not upgrading:
                self.require_writable(state)
            self._clean_leftovers(state)
            try:
                yield state
                self._write_index(state)
            except BaseException as exc:
                _raise_write_failure(self.path, exc)
                raise
            self._collect_garbage(state)

    def _temp_path(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        return Path(name)

    def _write_index(self, state: State) -> None:
        tmp = self._temp_path()
        try:
            with h5py.File(tmp, "w", locking=False, rdcc_nbytes=0) as fh:
                fh.attrs.update({"format": FORMAT, "schema_version": SCHEMA_VERSION, "imgclust_version": __version__})
                encoders = fh.create_group("encoders")
                for encoder, enc in state.encoders.items():
                    _write_encoder(encoders.create_group(encoder_key(encoder)), enc, self.bulk_dir.name)
            _replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _bulk_temp(self) -> Path:
        self.bulk_dir.mkdir(parents=True, exist_ok=True)
        return self.bulk_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}.h5"

    def _publish(self, tmp: Path, kind: str) -> str:
        """Rename a finished bulk file into place (under the commit lock); returns its name."""
        name = f"{kind}-{uuid.uuid4().hex[:16]}.h5"
        os.replace(tmp, self.bulk_dir / name)
        return name

    def _clean_leftovers(self, state: State) -> None:
        """Under the commit lock: temporary index files, and bulk temporaries of dead processes."""
        for leftover in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            leftover.unlink(missing_ok=True)
        if self.bulk_dir.is_dir():
            for tmp in self.bulk_dir.glob(".tmp-*"):
                pid = int(tmp.name.split("-")[1]) if tmp.name.split("-")[1].isdigit() else 0
                if not _alive(pid):
                    tmp.unlink(missing_ok=True)

    def _collect_garbage(self, state: State) -> None:
        """Remove published bulk files the index no longer names (only commits publish them)."""
        if not self.bulk_dir.is_dir():
            return
        named = {ref for enc in state.encoders.values() for ref in enc.blocks}
        named |= {a["file"] for enc in state.encoders.values() for kind in enc.results.values() for a in kind.values()}
        for path in self.bulk_dir.iterdir():
            if path.suffix == ".h5" and not path.name.startswith(".") and path.name not in named:
                path.unlink(missing_ok=True)

    def clean_temp_files(self) -> None:
        """Remove what killed writers left: temporary files of dead processes, and bulk files a
        writer published but was killed before its index named them (or before it removed them)."""
        if self.path.exists():
            with self.committing():
                state = self.load()
                self._clean_leftovers(state)
                self._collect_garbage(state)

    def write_bulk(self, arrays: dict, attrs: dict) -> Path:
        """Write a bulk file of ``arrays`` (nested dicts become groups) to a temporary name, fsynced."""
        tmp = self._bulk_temp()
        try:
            with h5py.File(tmp, "w", locking=False, rdcc_nbytes=0) as fh:
                fh.attrs["format"] = BULK_FORMAT
                encode_attrs(fh, attrs)
                _write_tree(fh, arrays)
            _fsync(tmp)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            _raise_write_failure(self.path, exc)
            raise
        return tmp

    def store_result(self, encoder: str, kind: str, name: str | None, arrays: dict, attrs: dict, fingerprint: str) -> str:
        """Store a result computed from rows ``fingerprint``; returns its name (a new run id when None).

        The bulk file is written without any lock; the commit refuses when the rows changed meanwhile.
        """
        self.require_writable()
        attrs = {**attrs, "fingerprint": fingerprint, "encoder": encoder, "kind": kind,
                 "created": attrs.get("created") or now_iso()}
        tmp = self.write_bulk(arrays, attrs)
        try:
            with self.transaction() as state:
                enc = self._encoder_state(encoder, state)
                if enc.fingerprint != fingerprint:
                    what = {"runs": "cluster", "reductions": "reduce", "views": "embed --views", "knn": "reduce",
                            "scores": "score"}[kind]
                    raise CacheError(f"the images of '{encoder}' in {self.path} changed while this {kind[:-1]} was "
                                     f"computed (another process added or removed rows); it was not stored",
                                     hint=f"run imgclust {what} again")
                name = name or new_run_id(enc.results[kind])
                file = self._publish(tmp, kind.rstrip("s"))
                enc.results[kind][name] = {**attrs, "file": file, "nbytes": (self.bulk_dir / file).stat().st_size}
        finally:
            tmp.unlink(missing_ok=True)
        return name

    def remove_results(self, targets: list[str]) -> list[dict]:
        """Remove reductions, runs, views or kNN graphs by name (of any encoder). Unknown names are an error."""
        removed = []
        with self.transaction() as state:
            for target in targets:
                hits = [(e, k) for e, enc in state.encoders.items() for k in RESULT_KINDS if target in enc.results[k]]
                if not hits:
                    raise NotFoundError(f"{self.path} has no run, reduction, views or kNN graph named '{target}'",
                                        hint=f"see the names with: imgclust info {self.path}")
                for encoder, kind in hits:
                    attrs = state.encoders[encoder].results[kind].pop(target)
                    removed.append({"encoder": encoder, "kind": kind, "name": target, "nbytes": attrs.get("nbytes", 0)})
        return removed

    def write_rows(self, encoder: str, attrs: dict, new: NewRows | None, *, remove: Iterable[str] = (),
                   failures: Failures | None = None, base: Rows | None = None, replace_all: bool = False) -> EncoderState:
        """Add ``new`` rows (a row whose path the encoder holds replaces it in place), drop the rows of
        ``remove``, set ``failures``; ``replace_all`` drops every current row first (``--reembed``).

        Costs what it adds: one block of the new rows, then a new index. Call under :meth:`writer`.
        ``base`` is the caller's pinned view of the current rows (to reuse its index).
        """
        self.require_writable()
        dim = int(attrs["embedding_dim"])
        tmp, keys = (self._write_block(encoder, attrs, new, dim) if new is not None and len(new) else (None, None))
        try:
            with self.transaction() as state:
                enc = state.encoders.get(encoder)
                if enc is None:
                    enc = state.encoders[encoder] = EncoderState(attrs=dict(attrs))
                if base is not None and base.fingerprint != enc.fingerprint:
                    raise CacheError(f"the rows of '{encoder}' in {self.path} changed during this run",
                                     hint="run the same command again")
                current = Rows(self, encoder, enc) if base is None else base
                block_of, row_of = locations(enc.segments)
                row_key = current.row_keys() if len(enc.segments) and not replace_all else np.zeros(0, np.uint64)
                paths = current.paths() if len(enc.segments) and not replace_all else []
                if replace_all:
                    block_of, row_of = block_of[:0], row_of[:0]
                # Only the rows this commit touches are looked up (a dict of every path costs ~0.7 s per million).
                touched = set(new.paths if new is not None else ()) | set(remove)
                position = {p: i for i, p in enumerate(paths) if p in touched}
                keep = np.ones(len(paths), bool)
                for p in remove:
                    if p in position:
                        keep[position[p]] = False
                appended_blocks, appended_rows, appended_keys, appended_paths = [], [], [], []
                if tmp is not None:
                    b = len(enc.blocks)
                    enc.blocks.append(self._publish(tmp, "block"))
                    enc.block_rows.append(len(new))
                    for j, p in enumerate(new.paths):
                        i = position.get(p)
                        if i is not None:  # replaced in place: results keyed by row order stay aligned
                            block_of[i], row_of[i], row_key[i], keep[i] = b, j, keys[j], True
                        else:
                            appended_blocks.append(b)
                            appended_rows.append(j)
                            appended_keys.append(keys[j])
                            appended_paths.append(p)
                block_of = np.concatenate([block_of[keep], np.array(appended_blocks, np.int64)])
                row_of = np.concatenate([row_of[keep], np.array(appended_rows, np.int64)])
                row_key = np.concatenate([row_key[keep], np.array(appended_keys, np.uint64)])
                enc.segments = segments_from_locations(block_of, row_of)
                enc.fingerprint = fingerprint(row_key)
                enc.attrs.update({k: v for k, v in attrs.items() if k != "embedding_dim" or dim > 0})
                enc.attrs["updated"] = now_iso()
                if failures is not None:
                    enc.failures = failures
                _drop_unused_blocks(enc)
                return enc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def _write_block(self, encoder: str, attrs: dict, new: NewRows, dim: int) -> tuple[Path, np.ndarray]:
        """Write ``new`` as a block file (streamed); returns its temporary path and the rows' keys."""
        tmp = self._bulk_temp()
        n = len(new)
        keys = np.empty(n, np.uint64)
        try:
            with h5py.File(tmp, "w", locking=False, rdcc_nbytes=0) as fh:
                fh.attrs["format"] = BULK_FORMAT
                encode_attrs(fh, {"kind": "block", "encoder": encoder, "identity": attrs.get("identity", {}),
                                  "created": now_iso(), "n_rows": n})
                data = fh.create_dataset("embeddings", shape=(n, dim), dtype="float32",
                                         chunks=(max(1, min(n, chunk_rows(dim))), dim))
                chunks = [new.embeddings] if isinstance(new.embeddings, np.ndarray) else new.embeddings
                start = 0
                for chunk in chunks:
                    chunk = np.asarray(chunk, np.float32)
                    if chunk.ndim != 2 or chunk.shape[1] != dim or start + len(chunk) > n:
                        raise UsageError(f"rows of {chunk.shape} do not fit {n} rows of {dim} dimensions",
                                         hint="give one vector per path, all of the same length")
                    data[start:start + len(chunk)] = chunk
                    keys[start:start + len(chunk)] = row_keys(new.paths[start:start + len(chunk)], chunk)
                    start += len(chunk)
                if start != n:
                    raise UsageError(f"{n} paths but {start} vectors", hint="give exactly one path per vector")
                _put_text(fh, "paths", new.paths)
                _put_text(fh, "labels", new.labels)
                _put_text(fh, "hashes", new.hashes)
                fh.create_dataset("perceptual_hashes", data=(np.full(n, NO_HASH, np.uint64) if new.perceptual_hashes is None
                                                             else np.asarray(new.perceptual_hashes, np.uint64)))
                fh.create_dataset("sizes", data=np.asarray(new.sizes, np.int64))
                fh.create_dataset("mtimes", data=np.asarray(new.mtimes, np.int64))
                fh.create_dataset("row_keys", data=keys)
            _fsync(tmp)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            _raise_write_failure(self.path, exc)
            raise
        return tmp, keys


def has_internal_refs(state: State) -> bool:
    """Whether blocks or results live inside the index file (a schema-1 or packed cache)."""
    return any(ref.startswith("/") for enc in state.encoders.values()
               for ref in enc.blocks + [a["file"] for kind in enc.results.values() for a in kind.values()])


def _drop_unused_blocks(enc: EncoderState) -> None:
    """Forget blocks no segment points into (their files are then collected), renumbering segments."""
    used = sorted(set(enc.segments[:, 0].tolist())) if len(enc.segments) else []
    if len(used) == len(enc.blocks):
        return
    renumber = np.full(len(enc.blocks), -1, np.int64)
    renumber[used] = np.arange(len(used))
    enc.blocks = [enc.blocks[b] for b in used]
    enc.block_rows = [enc.block_rows[b] for b in used]
    if len(enc.segments):
        enc.segments = enc.segments.copy()
        enc.segments[:, 0] = renumber[enc.segments[:, 0]]


def _release(fd: int) -> None:
    if fd in _HELD_LOCK_FDS:  # not in a forked child, which closed its copy at fork
        _HELD_LOCK_FDS.discard(fd)
        os.close(fd)  # closing releases the flock; the kernel releases it too if we are killed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) is dead for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _replace(tmp: Path, target: Path) -> None:
    """fsync ``tmp``, atomically rename it over ``target``, fsync the folder."""
    _fsync(tmp)
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_tree(group: h5py.Group, arrays: dict) -> None:
    for key, value in arrays.items():
        if isinstance(value, dict):
            _write_tree(group.create_group(key), value)
        else:
            value = np.asarray(value)
            group.create_dataset(key, data=value, chunks=True if value.ndim and value.size > 1 << 16 else None)


def _read_tree(group: h5py.Group) -> dict:
    return {k: (_read_tree(v) if isinstance(v, h5py.Group) else v[()]) for k, v in group.items()}


def _read_encoder(group: h5py.Group) -> EncoderState:
    attrs = decode_attrs(group.attrs)
    attrs.pop("fingerprint", None)
    attrs.pop("n_rows", None)
    f = group["failures"]
    state = EncoderState(
        attrs=attrs, blocks=list(_strings(group["blocks"])), block_rows=group["block_rows"][()].tolist(),
        segments=group["segments"][()].reshape(-1, 3).astype(np.int64),
        failures=Failures(_strings(f["paths"]), f["sizes"][()], f["mtimes"][()], _strings(f["reasons"])),
        fingerprint=str(group.attrs.get("fingerprint", "")))
    for kind in RESULT_KINDS:
        for name, sub in (group.get(kind) or {}).items():
            state.results[kind][name] = decode_attrs(sub.attrs)
    return state


def _read_legacy_encoder(group: h5py.Group) -> EncoderState:
    """A schema-1 encoder group as a state whose one block is the group itself. Schema 1 dropped every
    reduction and run when rows changed, so those it holds belong to its rows (and views that match)."""
    attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in group.attrs.items()}
    n = int(group["embeddings"].shape[0])
    legacy = f"legacy:{group.name}"
    state = EncoderState(attrs=attrs, blocks=[group.name], block_rows=[n],
                         segments=np.array([[0, 0, n]], np.int64) if n else np.zeros((0, 3), np.int64),
                         failures=Failures(_strings(group["failures/paths"]), group["failures/sizes"][()],
                                           group["failures/mtimes"][()], _strings(group["failures/reasons"])),
                         fingerprint=legacy)
    for kind in ("reductions", "runs"):
        for name, sub in (group.get(kind) or {}).items():
            state.results[kind][name] = {**decode_attrs(sub.attrs), "file": sub.name, "fingerprint": legacy}
    if "views" in group:
        paths, sizes, mtimes, *_ = _block_meta(group, 0, n)
        valid = group["views"].attrs.get("rows_signature") == _schema1_rows_signature(paths, sizes, mtimes)
        state.results["views"]["views"] = {"file": group.name + "/views", "n_views": int(group["views"].shape[1]),
                                           "fingerprint": legacy if valid else "legacy:other-rows"}
    return state


def _write_encoder(group: h5py.Group, enc: EncoderState, bulk_name: str) -> None:
    encode_attrs(group, {**enc.attrs, "fingerprint": enc.fingerprint, "n_rows": enc.n_rows})
    group.create_dataset("blocks", data=_encoded(enc.blocks), dtype=_STR)
    group.create_dataset("block_rows", data=np.asarray(enc.block_rows, np.int64))
    group.create_dataset("segments", data=enc.segments.reshape(-1, 3).astype(np.int64))
    f = group.create_group("failures")
    f.create_dataset("paths", data=_encoded(enc.failures.paths), dtype=_STR)
    f.create_dataset("sizes", data=np.asarray(enc.failures.sizes, np.int64))
    f.create_dataset("mtimes", data=np.asarray(enc.failures.mtimes, np.int64))
    f.create_dataset("reasons", data=_encoded(enc.failures.reasons), dtype=_STR)
    dim, n = enc.dim, enc.n_rows
    if n and dim and len(enc.segments) <= _VDS_MAX_SEGMENTS:
        layout = h5py.VirtualLayout(shape=(n, dim), dtype="float32")
        first = 0
        for b, start, stop in enc.segments.tolist():
            ref = enc.blocks[b]
            source = (h5py.VirtualSource(".", f"{ref}/embeddings", shape=(enc.block_rows[b], dim)) if ref.startswith("/")
                      else h5py.VirtualSource(f"{bulk_name}/{ref}", "embeddings", shape=(enc.block_rows[b], dim)))
            layout[first:first + stop - start] = source[start:stop]
            first += stop - start
        group.create_virtual_dataset("embeddings", layout, fillvalue=np.nan)
    for kind in RESULT_KINDS:
        if not enc.results[kind]:
            continue
        parent = group.create_group(kind)
        for name, attrs in enc.results[kind].items():
            sub = parent.create_group(name)
            encode_attrs(sub, attrs)
            ref = attrs["file"]
            sub["file"] = h5py.SoftLink(ref) if ref.startswith("/") else h5py.ExternalLink(f"{bulk_name}/{ref}", "/")


def _raise_write_failure(path: Path, exc: BaseException) -> None:
    """Raise a one-line :class:`ResourceError` if ``exc`` (or what it interrupted) is a failed write:
    disk full, file too large, quota, I/O error. h5py reports those as RuntimeError or OSError whose
    text holds the errno and several lines of HDF5 detail."""
    seen: BaseException | None = exc
    while isinstance(seen, (OSError, RuntimeError)):
        code = seen.errno if isinstance(seen, OSError) else None
        if code is None:
            match = re.search(r"errno = (\d+)", str(seen))
            code = int(match.group(1)) if match else None
        if code in _WRITE_ERRNOS:
            raise ResourceError(f"cannot write the cache {path}: {os.strerror(code)}",
                                hint="free some disk space and run the same command again; nothing already "
                                     "written was changed") from None
        seen = seen.__context__
    return None


_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS}


def _schema1_rows_signature(paths, sizes, mtimes) -> str:
    """Identifies the exact rows (paths, sizes, mtimes) a schema-1 cache's views belong to."""
    digest = hashlib.sha1()
    for path, size, mtime in zip(paths, sizes, mtimes):
        digest.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
