"""Embeddings made elsewhere: read vector files in chunks, import them into a cache, export a cache's rows.

Readers stream, so a file larger than memory is fine:

* ``.npy`` -- memory-mapped;
* ``.npz`` -- one member (the only one, or ``dataset``), read from the archive a chunk at a time;
* ``.parquet`` -- a list or fixed-size-list column (the only one, or ``dataset``), by record batch;
* ``.h5`` / ``.hdf5`` -- a 2-D dataset named by ``dataset`` or as ``FILE.h5:/group/name``.

Imported rows get the paths of a text file (one per line; they name the items and need not exist)
and, optionally, labels (one per line). They live under an encoder name of the user's choosing,
whose identity says they were imported, so ``imgclust embed`` never mixes its own rows into them.
"""

from __future__ import annotations

import os
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .cache import Cache, NewRows, chunk_rows
from .errors import UsageError

Progress = Callable[[int, int], None]
FORMATS = ("npy", "npz", "parquet", "h5")


@dataclass
class Vectors:
    """A vector file opened for streaming: ``n`` rows of ``dim`` values."""

    source: str
    n: int
    dim: int
    chunks: Callable[[int], Iterator[np.ndarray]]  # chunks(rows_per_chunk) -> float32 blocks, in order


def open_vectors(path: str | os.PathLike, dataset: str | None = None) -> Vectors:
    """Open a vector file (see the module docstring) without reading its values."""
    text = str(path)
    if ":" in text and not os.path.exists(text) and text.rsplit(":", 1)[0].endswith((".h5", ".hdf5")):
        text, dataset = text.rsplit(":", 1)
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"vector file not found: {path}", hint="give a .npy, .npz, .parquet or .h5 file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _npy(path)
        if suffix == ".npz":
            return _npz(path, dataset)
        if suffix == ".parquet":
            return _parquet(path, dataset)
        if suffix in (".h5", ".hdf5"):
            return _hdf5(path, dataset)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"cannot read vectors from {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         hint="give a .npy, .npz, .parquet or .h5 file of one vector per row") from None
    raise UsageError(f"{path}: unknown vector file type '{suffix}'", hint="use .npy, .npz, .parquet, .h5 or .hdf5")


def _check_shape(path, shape) -> tuple[int, int]:
    if len(shape) != 2 or shape[1] < 1:
        raise UsageError(f"{path} holds an array of shape {tuple(shape)}, not one vector per row",
                         hint="give a 2-D array: rows x dimensions")
    return int(shape[0]), int(shape[1])


def _npy(path: Path) -> Vectors:
    array = np.load(path, mmap_mode="r")
    n, dim = _check_shape(path, array.shape)
    return Vectors(str(path), n, dim, lambda step: (np.asarray(array[s:s + step], np.float32) for s in range(0, n, step)))


def _npz(path: Path, dataset: str | None) -> Vectors:
    with zipfile.ZipFile(path) as archive:
        members = [m[:-4] for m in archive.namelist() if m.endswith(".npy")]
    name = _pick(path, members, dataset, "array")
    with zipfile.ZipFile(path) as archive, archive.open(name + ".npy") as fh:
        shape, fortran, dtype = _npy_header(fh)
    n, dim = _check_shape(path, shape)
    if fortran and n > 1:
        raise UsageError(f"{path}:{name} is stored in Fortran order, which cannot be read a chunk at a time",
                         hint="save it with np.savez(..., np.ascontiguousarray(x)), or as .npy")

    def chunks(step: int) -> Iterator[np.ndarray]:
        with zipfile.ZipFile(path) as archive, archive.open(name + ".npy") as fh:
            _npy_header(fh)
            row_bytes = dim * dtype.itemsize
            for start in range(0, n, step):
                rows = min(step, n - start)
                data = fh.read(rows * row_bytes)
                yield np.frombuffer(data, dtype).reshape(rows, dim).astype(np.float32)

    return Vectors(f"{path}:{name}", n, dim, chunks)


def _npy_header(fh):
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(fh)


def _parquet(path: Path, dataset: str | None) -> Vectors:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    schema = table.schema_arrow
    lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
             or pa.types.is_large_list(f.type)]
    column = _pick(path, lists, dataset, "list column")
    n = table.metadata.num_rows
    kind = schema.field(column).type
    if pa.types.is_fixed_size_list(kind):
        dim = kind.list_size
    else:
        first = next(table.iter_batches(batch_size=1, columns=[column]), None)
        dim = len(first.column(0)[0]) if first is not None and first.num_rows else 0
    _check_shape(path, (n, dim))

    def chunks(step: int) -> Iterator[np.ndarray]:
        done = 0
        for batch in table.iter_batches(batch_size=step, columns=[column]):
            values = batch.column(0)
            if values.null_count:
                raise UsageError(f"{path}: column '{column}' has empty (null) vectors", hint="give one vector per row")
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            if (lengths != dim).any():
                bad = done + int(np.flatnonzero(lengths != dim)[0])
                raise UsageError(f"{path}: row {bad} of column '{column}' has {lengths[lengths != dim][0]} values, "
                                 f"not {dim}", hint="every vector must have the same length")
            flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
            done += len(batch)
            yield flat.astype(np.float32).reshape(len(batch), dim)

    return Vectors(f"{path}:{column}", n, dim, chunks)


def _hdf5(path: Path, dataset: str | None) -> Vectors:
    import h5py

    with h5py.File(path, "r", locking=False) as fh:
        names = []
        fh.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim == 2 else None)
        name = _pick(path, names, dataset.lstrip("/") if dataset else None, "2-D dataset")
        n, dim = _check_shape(path, fh[name].shape)

    def chunks(step: int) -> Iterator[np.ndarray]:
        with h5py.File(path, "r", locking=False) as fh:
            data = fh[name]
            for start in range(0, n, step):
                yield np.asarray(data[start:start + step], np.float32)

    return Vectors(f"{path}:/{name}", n, dim, chunks)


def _pick(path, names: list[str], wanted: str | None, what: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise UsageError(f"{path} has no {what} '{wanted}'", hint=f"it has: {', '.join(names) or 'none'}")
        return wanted
    if len(names) == 1:
        return names[0]
    preferred = [n for n in names if n.rsplit("/", 1)[-1].lower() in ("embeddings", "embedding", "vectors", "vector")]
    if len(preferred) == 1:
        return preferred[0]
    raise UsageError(f"{path} has {'no' if not names else 'several'} {what}s{': ' + ', '.join(names) if names else ''}",
                     hint="name the one to read with --dataset" if names else "give a file of one vector per row")


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """Lines of a text file (``-``: stdin), without line ends; blank lines are kept (they count)."""
    if str(path) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise UsageError(f"cannot read the {what} file {path}: {exc.strerror}", hint=f"give a text file of {what}, one per line") from None
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


@dataclass
class ImportSummary:
    cache: str
    encoder: str
    source: str
    imported: int
    replaced: int
    images: int
    dim: int

    def to_dict(self) -> dict:
        return asdict(self)


def import_vectors(vectors: str | os.PathLike, paths: str | os.PathLike, encoder: str,
                   cache: str | os.PathLike = "imgclust-cache.h5", *, labels: str | os.PathLike | None = None,
                   dataset: str | None = None, progress: Progress | None = None) -> ImportSummary:
    """Add the vectors of a file to ``cache`` under ``encoder``, one row per line of ``paths``.

    Rows whose path the encoder already holds are replaced in place; the rest are appended. The
    vectors are streamed into one new block (never all in memory).
    """
    source = open_vectors(vectors, dataset)
    names = read_lines(paths, "paths")
    if len(names) != source.n:
        raise UsageError(f"{paths} lists {len(names)} paths but {source.source} holds {source.n} vectors",
                         hint="give exactly one path per vector, in the same order")
    if len(set(names)) != len(names) or "" in names:
        raise UsageError(f"{paths} lists a path twice or has an empty line", hint="every vector needs its own path")
    tags = read_lines(labels, "labels") if labels is not None else [""] * len(names)
    if len(tags) != len(names):
        raise UsageError(f"{labels} has {len(tags)} labels for {len(names)} vectors", hint="give one label per line ('' for unknown)")
    store = Cache(cache)
    identity = {"architecture": f"imported:{encoder}", "weights": "imported"}
    attrs = {"encoder": encoder, "family": "imported", "architecture": identity["architecture"], "weights": "imported",
             "embedding_dim": source.dim, "description": f"imported from {source.source}", "preprocess": "{}",
             "identity": identity}
    with store.writer():
        store.clean_temp_files()
        existing = None
        if store.exists() and encoder in store.encoders():
            existing = store.rows(encoder)
            stored = existing.state.attrs
            if stored.get("architecture") != identity["architecture"]:
                raise UsageError(f"{store.path} holds '{encoder}' embeddings made by imgclust embed; imported vectors "
                                 f"are not mixed with them", hint="import under another --encoder name, or into another --cache")
            if existing.dim != source.dim:
                raise UsageError(f"{store.path} holds {existing.dim}-d '{encoder}' rows; {source.source} has {source.dim}-d vectors",
                                 hint="import under another --encoder name")
        held = set(existing.index().paths) if existing is not None else set()
        replaced = sum(p in held for p in names)
        step = chunk_rows(source.dim) * 16

        def streamed():
            done = 0
            for chunk in source.chunks(step):
                if not np.isfinite(chunk).all():
                    raise UsageError(f"{source.source} has NaN or Inf values near row {done}",
                                     hint="only finite vectors can be clustered")
                done += len(chunk)
                yield chunk
                if progress:
                    progress(done, source.n)

        rows = NewRows(names, np.full(len(names), -1, np.int64), np.full(len(names), -1, np.int64), tags,
                       [""] * len(names), streamed())
        after = store.write_rows(encoder, attrs, rows, base=existing)
    return ImportSummary(str(store.path), encoder, source.source, len(names) - replaced, replaced, after.n_rows, source.dim)


def export_embeddings(cache: str | os.PathLike, out: str | os.PathLike, encoder: str | None = None,
                      force: bool = False, progress: Progress | None = None) -> list[str]:
    """Write the rows of ``encoder`` to ``out``: Parquet (path, label, embedding) or ``.npy`` with the
    paths in ``<out>.paths.txt``; streamed a chunk at a time. Returns the files written."""
    store = Cache(cache)
    encoder = store.resolve_encoder(encoder)
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".npy"):
        raise UsageError(f"--out {out}: embeddings are written as .parquet or .npy", hint="e.g. --out embeddings.parquet")
    targets = [out] + ([out.with_name(out.name + ".paths.txt")] if suffix == ".npy" else [])
    if not force and any(t.exists() for t in targets):
        raise UsageError(f"{next(t for t in targets if t.exists())} exists", hint="choose another --out, or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = store.rows(encoder)
    index = rows.index()
    tmp = [t.with_name(f".{t.name}.{os.getpid()}.tmp") for t in targets]
    try:
        if suffix == ".npy":
            array = np.lib.format.open_memmap(tmp[0], mode="w+", dtype=np.float32, shape=(len(rows), rows.dim))
            for start, chunk in rows.iter_embeddings():
                array[start:start + len(chunk)] = chunk
                if progress:
                    progress(start + len(chunk), len(rows))
            array.flush()
            del array
            tmp[1].write_text("".join(f"{p}\n" for p in index.paths), encoding="utf-8", errors="surrogateescape")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([("path", pa.string()), ("label", pa.string()),
                                ("embedding", pa.list_(pa.float32(), rows.dim))])
            with pq.ParquetWriter(tmp[0], schema) as writer:
                for start, chunk in rows.iter_embeddings():
                    stop = start + len(chunk)
                    values = pa.FixedSizeListArray.from_arrays(pa.array(chunk.reshape(-1), pa.float32()), rows.dim)
                    writer.write_table(pa.table([pa.array([_text(p) for p in index.paths[start:stop]]),
                                                 pa.array([_text(v) for v in index.labels[start:stop]]), values],
                                                schema=schema))
                    if progress:
                        progress(stop, len(rows))
        for t, final in zip(tmp, targets):
            os.replace(t, final)
    finally:
        for t in tmp:
            t.unlink(missing_ok=True)
    return [str(t) for t in targets]


def _text(value: str) -> str:
    """A path as Arrow can hold it (file names that are not UTF-8 keep their bytes as escapes)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
