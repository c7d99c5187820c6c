"""The HDF5 embedding cache: one self-describing file shared by every stage.

Layout (schema version 1)::

    /                                   attrs: format="imgclust-cache", schema_version, imgclust_version
    /encoders/<encoder>/                attrs: encoder, family, architecture, weights, embedding_dim,
                                               preprocess (JSON), imgclust_version
        embeddings    float32 (N, D), chunked
        paths         str (N,)     absolute paths, sorted: row order never depends on history
        sizes         int64 (N,)   file size in bytes when embedded
        mtimes        int64 (N,)   file mtime (ns) when embedded
        labels        str (N,)     ground truth, "" when unknown
        views         float32 (N, V, D)   optional: embeddings of augmented views
        failures/     paths, sizes, mtimes, reasons: files that could not be read, with why
        reductions/<key>/data   float32 (N, d) + attrs (method and settings)
        runs/<id>/labels        int64 (N,) + attrs (method, params, reduction, timings)

Crash safety: the file is never edited in place. Every write goes to a temporary file in the
same folder, is flushed to disk, and replaces the cache with ``os.replace`` (atomic), so a kill
at any moment leaves either the old or the new file. ``embed`` also journals finished batches
to ``<cache>.journal/`` so a killed run loses no work. Writers hold an exclusive ``flock`` on
``<cache>.lock``: a second writer fails at once with :class:`CacheLockedError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from . import __version__
from .errors import CacheError, CacheLockedError, NotFoundError, ResourceError, UsageError

FORMAT = "imgclust-cache"
SCHEMA_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: fast sequential reads, small partial reads


# Lock descriptors this process holds. A forked child (a DataLoader worker, say) inherits them, and a
# flock lasts while any copy is open: a worker orphaned by a kill -9 of its parent would keep the cache
# locked. Children close their copies at fork (closing, unlike LOCK_UN, leaves the parent's lock alone).
_HELD_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


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


def _strings(dataset) -> np.ndarray:
    # surrogateescape: file names that are not valid UTF-8 come back exactly as os.listdir gave them
    return (np.array(dataset.asstr(errors="surrogateescape")[()], dtype=object) if len(dataset)
            else np.array([], dtype=object))


def _encoded(values) -> np.ndarray:
    """Strings as UTF-8 bytes for a string dataset; a file name that is not valid UTF-8 (which
    Python holds with surrogate escapes) keeps its original bytes instead of failing the write."""
    out = []
    for value in values:
        value = str(value)
        try:
            out.append(value.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # a lone surrogate that did not come from a file name
            out.append(value.encode("utf-8", "backslashreplace"))
    return np.array(out, dtype=object)


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


class Cache:
    """An imgclust cache file: read it freely; write through :meth:`writer` / :meth:`transaction`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r})"

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

    # -- reading --------------------------------------------------------------------------

    @contextlib.contextmanager
    def open(self) -> Iterator[h5py.File]:
        """Open read-only after checking it is an imgclust cache of a schema this version reads."""
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
            if version != SCHEMA_VERSION:
                raise CacheError(f"{self.path} has cache schema {version}; this imgclust reads schema {SCHEMA_VERSION}",
                                 hint="re-create it with: imgclust embed PATH --cache NEW.h5")
            yield fh

    def encoders(self) -> list[str]:
        with self.open() as fh:
            group = fh.get("encoders")
            return [group[k].attrs["encoder"] for k in group] if group is not None else []

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

    def _group(self, fh: h5py.File, encoder: str) -> h5py.Group:
        group = fh.get(f"encoders/{encoder_key(encoder)}")
        if group is None:
            raise NotFoundError(f"{self.path} has no embeddings for encoder '{encoder}'",
                                hint=f"run imgclust embed PATH --encoder {encoder} --cache {self.path}")
        return group

    def info(self, encoder: str) -> dict:
        with self.open() as fh:
            group = self._group(fh, encoder)
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in group.attrs.items()}
            attrs["preprocess"] = json.loads(attrs.get("preprocess", "{}"))
            attrs["n_images"] = int(group["embeddings"].shape[0])
            attrs["n_failures"] = int(group["failures/paths"].shape[0])
            attrs["has_views"] = "views" in group
            return attrs

    def read_index(self, encoder: str) -> Index:
        with self.open() as fh:
            group = self._group(fh, encoder)
            return Index(_strings(group["paths"]), group["sizes"][()], group["mtimes"][()], _strings(group["labels"]))

    def read_failures(self, encoder: str) -> Failures:
        with self.open() as fh:
            group = self._group(fh, encoder)["failures"]
            return Failures(_strings(group["paths"]), group["sizes"][()], group["mtimes"][()], _strings(group["reasons"]))

    def iter_embeddings(self, encoder: str, rows_per_chunk: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, block)`` over the embeddings without loading them all at once."""
        with self.open() as fh:
            data = self._group(fh, encoder)["embeddings"]
            step = rows_per_chunk or chunk_rows(data.shape[1]) * 16
            for start in range(0, data.shape[0], step):
                yield start, data[start:start + step]

    def read_embeddings(self, encoder: str, max_bytes: int | None = None) -> np.ndarray:
        """All embeddings of ``encoder`` in memory; refuses when they exceed ``max_bytes``."""
        with self.open() as fh:
            data = self._group(fh, encoder)["embeddings"]
            size = data.shape[0] * data.shape[1] * 4
            if max_bytes is not None and size > max_bytes:
                raise ResourceError(f"the embeddings of '{encoder}' take {size / 2**30:.1f} GiB, over the "
                                    f"{max_bytes / 2**30:.1f} GiB memory budget",
                                    hint="reduce them first (imgclust reduce fits on a sample and transforms in chunks)")
            return data[()]

    def read_views(self, encoder: str) -> np.ndarray | None:
        with self.open() as fh:
            group = self._group(fh, encoder)
            return group["views"][()] if "views" in group else None

    def read_array(self, encoder: str, location: str) -> tuple[np.ndarray, dict]:
        """A stored array (``reductions/<key>/data``, ``runs/<id>/labels``, ...) and its group's attrs."""
        with self.open() as fh:
            group = self._group(fh, encoder)
            if location not in group:
                raise NotFoundError(f"{self.path} has no {location} for encoder '{encoder}'")
            dataset = group[location]
            return dataset[()], decode_attrs(dataset.parent.attrs)

    def list_groups(self, encoder: str, kind: str) -> dict[str, dict]:
        """``{name: attrs}`` of the reductions or runs stored for ``encoder``."""
        with self.open() as fh:
            group = self._group(fh, encoder).get(kind)
            return {name: decode_attrs(group[name].attrs) for name in group} if group is not None else {}

    # -- writing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the cache's write lock; a second writer gets :class:`CacheLockedError` at once."""
        self._check_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            blocker = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
            reason = f"{blocker} is a file, not a folder" if blocker is not None else (exc.strerror or str(exc))
            raise UsageError(f"cannot write the cache {self.path}: {reason}",
                             hint="choose a --cache path in a folder you can write") from None
        _HELD_LOCK_FDS.add(fd)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CacheLockedError(f"another imgclust process is writing {self.path}",
                                       hint="wait for it to finish, or use another --cache") from None
            yield
        finally:
            if fd in _HELD_LOCK_FDS:  # not in a forked child, which closed its copy at fork
                _HELD_LOCK_FDS.discard(fd)
                os.close(fd)  # closing releases the flock; the kernel releases it too if we are killed

    @contextlib.contextmanager
    def transaction(self) -> Iterator[h5py.File]:
        """Edit a copy of the cache (created when missing) and atomically replace the cache with it.

        Call inside :meth:`writer`. If the block raises, the cache is left exactly as it was.
        """
        tmp = self._temp_path()
        try:
            if self.path.exists():
                with self.open():
                    pass  # validate before copying
                shutil.copyfile(self.path, tmp)
                fh = h5py.File(tmp, "r+", locking=False)
            else:
                fh = h5py.File(tmp, "w", locking=False)
                init_root(fh)
            with fh:
                yield fh
            self._commit(tmp)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            _raise_write_failure(self.path, exc)
            raise

    def _temp_path(self) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        return Path(name)

    def _commit(self, tmp: Path) -> None:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def rewrite(self, encoder: str, build) -> None:
        """Write a new cache where ``build(group, old_group)`` fills a fresh group for ``encoder``.

        ``old_group`` is the encoder's current group (None when new); other encoders are copied as they are.
        """
        tmp = self._temp_path()
        try:
            with h5py.File(tmp, "w", locking=False) as out:
                init_root(out)
                group = out["encoders"].create_group(encoder_key(encoder))
                if not self.path.exists():
                    build(group, None)
                else:
                    with self.open() as old:
                        for key in old["encoders"]:
                            if key != encoder_key(encoder):
                                old.copy(old["encoders"][key], out["encoders"], name=key)
                        build(group, old["encoders"].get(encoder_key(encoder)))
            self._commit(tmp)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            _raise_write_failure(self.path, exc)
            raise

    def clean_temp_files(self) -> None:
        """Remove temporary files left by a killed writer (call while holding the lock)."""
        for leftover in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            leftover.unlink(missing_ok=True)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO, errno.EROFS}


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


def init_root(fh: h5py.File) -> None:
    fh.attrs["format"] = FORMAT
    fh.attrs["schema_version"] = SCHEMA_VERSION
    fh.attrs["imgclust_version"] = __version__
    fh.require_group("encoders")


def decode_attrs(attrs) -> dict:
    """HDF5 attributes as plain Python values (JSON strings under ``*_json`` keys decoded)."""
    out = {}
    for key, value in attrs.items():
        value = value.item() if hasattr(value, "item") and getattr(value, "shape", None) == () else value
        if isinstance(value, np.ndarray):
            value = value.tolist()
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


def write_rows(group: h5py.Group, index: Index, embeddings_source, dim: int) -> None:
    """Create the row datasets of an encoder group; ``embeddings_source`` yields ``(start, block)``."""
    n = len(index)
    if dim > 0:
        group.create_dataset("embeddings", shape=(n, dim), dtype="float32", maxshape=(None, dim),
                             chunks=(max(1, min(n, chunk_rows(dim))), dim))
    else:  # no row yet and the size unknown (only unreadable files so far): HDF5 cannot chunk a 0 axis
        group.create_dataset("embeddings", shape=(n, 0), dtype="float32")
    for start, block in embeddings_source:
        group["embeddings"][start:start + len(block)] = block
    group.create_dataset("paths", data=_encoded(index.paths), dtype=_STR)
    group.create_dataset("sizes", data=np.asarray(index.sizes, dtype=np.int64))
    group.create_dataset("mtimes", data=np.asarray(index.mtimes, dtype=np.int64))
    group.create_dataset("labels", data=_encoded(index.labels), dtype=_STR)


def write_failures(group: h5py.Group, failures: Failures) -> None:
    sub = group.create_group("failures")
    sub.create_dataset("paths", data=_encoded(failures.paths), dtype=_STR)
    sub.create_dataset("sizes", data=np.asarray(failures.sizes, dtype=np.int64))
    sub.create_dataset("mtimes", data=np.asarray(failures.mtimes, dtype=np.int64))
    sub.create_dataset("reasons", data=_encoded(failures.reasons), dtype=_STR)


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
