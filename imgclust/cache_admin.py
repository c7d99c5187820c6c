"""Looking after a cache: describe it, remove results, compact its blocks, pack it into one file,
upgrade a schema-1 (or packed) cache. The store itself is :mod:`imgclust.cache`.

* :func:`describe` -- encoders, rows, blocks, reductions, runs and views, with size, row count,
  creation time and whether each is stale.
* :func:`remove` -- drop reductions, runs or views by name (rewrites the index only).
* :func:`compact` -- merge small blocks, and blocks most of whose rows were replaced or removed,
  into one new block; the row order and every fingerprint stay, so no result becomes stale.
* :func:`pack` -- one self-contained HDF5 file (blocks and results inside) to copy or share; it is
  read like any cache, and made writable again by :func:`upgrade`.
* :func:`upgrade` -- move the data of a schema-1 cache (or a packed one) into bulk files, in one pass.
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from .cache import (BULK_FORMAT, FORMAT, RESULT_KINDS, SCHEMA_VERSION, Cache, EncoderState, NewRows, Rows,
                    encode_attrs, fingerprint, has_internal_refs, locations, segments_from_locations)
from .cache import _alive, _block_meta, _drop_unused_blocks, _fsync, _raise_write_failure, _replace, _write_encoder
from .errors import UsageError

Progress = Callable[[int, int], None]
COMPACT_MIN_ROWS = 65_536  # blocks with fewer live rows are merged


def describe(cache: str | os.PathLike) -> dict:
    """Everything ``imgclust info`` lists, as plain data."""
    cache = Cache(cache)
    state = cache.load()
    bulk = cache.bulk_dir

    def size(ref: str) -> int:
        return (bulk / ref).stat().st_size if not ref.startswith("/") and (bulk / ref).exists() else 0

    encoders = []
    for name, enc in state.encoders.items():
        live = np.bincount(enc.segments[:, 0], weights=enc.segments[:, 2] - enc.segments[:, 1],
                           minlength=len(enc.blocks)) if len(enc.segments) else np.zeros(len(enc.blocks))
        results = {kind: {key: {**{k: v for k, v in a.items() if k not in ("kind", "encoder")},
                                "stale": enc.is_stale(a), "nbytes": int(a.get("nbytes", 0)), "rows": _result_rows(a)}
                          for key, a in stored.items()} for kind, stored in enc.results.items()}
        encoders.append({
            "encoder": name, "n_images": enc.n_rows, "n_failures": len(enc.failures), "embedding_dim": enc.dim,
            "architecture": enc.attrs.get("architecture"), "weights": enc.attrs.get("weights"),
            "identity": enc.attrs.get("identity"), "fingerprint": enc.fingerprint, "updated": enc.attrs.get("updated"),
            "blocks": [{"file": ref, "rows": int(rows), "live_rows": int(n), "nbytes": size(ref)}
                       for ref, rows, n in zip(enc.blocks, enc.block_rows, live)],
            "segments": len(enc.segments), **results})
    total = cache.path.stat().st_size + (sum(p.stat().st_size for p in bulk.iterdir() if p.is_file()) if bulk.is_dir() else 0)
    return {"cache": str(cache.path), "schema_version": state.schema, "index_bytes": cache.path.stat().st_size,
            "total_bytes": total, "packed": has_internal_refs(state) and state.schema == SCHEMA_VERSION,
            "encoders": encoders}


def _result_rows(attrs: dict) -> int | None:
    if "n_samples" in attrs:
        return int(attrs["n_samples"])
    shape = attrs.get("shape")
    return int(shape[0]) if shape else None


def remove(cache: str | os.PathLike, names: list[str]) -> list[dict]:
    """Remove the named reductions, runs or views (their files go with the next commit: this one)."""
    if not names:
        raise UsageError("name at least one run, reduction or set of views to remove", hint="see the names with imgclust info")
    return Cache(cache).remove_results(names)


def compact(cache: str | os.PathLike, min_rows: int = COMPACT_MIN_ROWS, progress: Progress | None = None) -> dict:
    """Merge each encoder's small or mostly-dead blocks into one new block (live rows only)."""
    cache = Cache(cache)
    report = {"cache": str(cache.path), "encoders": []}
    with cache.writer():
        cache.require_writable()
        cache.clean_temp_files()
        for name, enc in cache.load().encoders.items():
            report["encoders"].append(_compact_encoder(cache, name, enc, min_rows, progress))
    return report


def _compact_encoder(cache: Cache, name: str, enc: EncoderState, min_rows: int, progress: Progress | None) -> dict:
    live = np.bincount(enc.segments[:, 0], weights=enc.segments[:, 2] - enc.segments[:, 1],
                       minlength=len(enc.blocks)).astype(np.int64) if len(enc.segments) else np.zeros(0, np.int64)
    chosen = [b for b in range(len(enc.blocks)) if live[b] < min_rows or live[b] * 2 < enc.block_rows[b]]
    sparse = [b for b in chosen if live[b] * 2 < enc.block_rows[b]]
    entry = {"encoder": name, "blocks_before": len(enc.blocks), "merged_blocks": 0, "rows_copied": 0}
    if len(chosen) < 2 and not sparse:
        entry["blocks_after"] = len(enc.blocks)
        return entry
    rows = Rows(cache, name, enc)
    block_of, row_of = locations(enc.segments)
    picked = np.isin(block_of, chosen)
    positions = np.flatnonzero(picked)
    index = rows.index()
    moved = NewRows([index.paths[i] for i in positions], index.sizes[positions], index.mtimes[positions],
                    [index.labels[i] for i in positions], [index.hashes[i] for i in positions],
                    _stream(rows, positions, progress), index.perceptual_hashes[positions])
    tmp, _keys = cache._write_block(name, {"identity": enc.attrs.get("identity", {})}, moved, enc.dim)
    try:
        with cache.transaction() as state:
            current = state.encoders[name]
            if current.fingerprint != enc.fingerprint or not np.array_equal(current.segments, enc.segments):
                raise UsageError(f"the rows of '{name}' changed during the compaction", hint="run it again")
            b = len(current.blocks)
            current.blocks.append(cache._publish(tmp, "block"))
            current.block_rows.append(len(positions))
            block_of[picked], row_of[picked] = b, np.arange(len(positions))
            current.segments = segments_from_locations(block_of, row_of)
            _drop_unused_blocks(current)
            entry.update(merged_blocks=len(chosen), rows_copied=int(len(positions)), blocks_after=len(current.blocks))
    finally:
        tmp.unlink(missing_ok=True)
    return entry


def _stream(rows: Rows, positions: np.ndarray, progress: Progress | None):
    """The embeddings of rows ``positions`` (increasing), a chunk at a time."""
    wanted = np.zeros(len(rows), bool)
    wanted[positions] = True
    done = 0
    for start, chunk in rows.iter_embeddings():
        keep = wanted[start:start + len(chunk)]
        if keep.any():
            done += int(keep.sum())
            yield chunk[keep]
            if progress:
                progress(done, len(positions))


def pack(cache: str | os.PathLike, out: str | os.PathLike, force: bool = False, progress: Progress | None = None) -> dict:
    """Write the cache as one self-contained HDF5 file ``out`` (written to a temporary name, renamed)."""
    cache, out = Cache(cache), Path(out)
    if out.resolve() == cache.path.resolve():
        raise UsageError(f"cannot pack {cache.path} onto itself", hint="give another OUT.h5")
    if out.exists() and not force:
        raise UsageError(f"{out} exists", hint="choose another name, or pass --force to replace it")
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):  # of a killed pack
        pid = leftover.name[len(out.name) + 2:-4]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)
    with cache.committing():  # no commit (and so no file removal) while the blocks are copied
        state = cache.load()
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        copied = 0
        try:
            with h5py.File(tmp, "w", locking=False, rdcc_nbytes=0) as fh, contextlib.ExitStack() as stack:
                fh.attrs.update({"format": FORMAT, "schema_version": SCHEMA_VERSION})
                packed = fh.create_group("packed")
                refs = sorted({ref for enc in state.encoders.values() for ref in enc.blocks}
                              | {a["file"] for enc in state.encoders.values() for kind in enc.results.values()
                                 for a in kind.values()})
                renamed = {}
                for i, ref in enumerate(refs):
                    target = f"item-{i:06d}"
                    source = cache._open_ref(ref, stack)
                    if isinstance(source, h5py.Dataset):  # schema-1 views
                        packed.create_group(target).create_dataset("views", data=source[()])
                    else:
                        group = packed.create_group(target)
                        for key in source:
                            source.file.copy(source[key], group, name=key)
                        group.attrs.update(dict(source.attrs))
                    renamed[ref] = f"/packed/{target}"
                    copied += 1
                    if progress:
                        progress(copied, len(refs))
                encoders = fh.create_group("encoders")
                for name, enc in state.encoders.items():
                    moved = EncoderState(attrs=enc.attrs, blocks=[renamed[r] for r in enc.blocks],
                                         block_rows=enc.block_rows, segments=enc.segments, failures=enc.failures,
                                         results={k: {n: {**a, "file": renamed[a["file"]]} for n, a in v.items()}
                                                  for k, v in enc.results.items()},
                                         fingerprint=enc.fingerprint)
                    _write_encoder(encoders.create_group(name.replace("/", "%2F")), moved, "")
            _replace(tmp, out)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            _raise_write_failure(out, exc)
            raise
    return {"cache": str(cache.path), "out": str(out), "nbytes": out.stat().st_size, "items": copied}


def upgrade(cache: str | os.PathLike, progress: Progress | None = None) -> dict:
    """Convert a schema-1 or packed cache in place: its data moves to bulk files, in one pass."""
    cache = Cache(cache)
    with cache.writer():
        cache.clean_temp_files()
        state = cache.load()
        if not has_internal_refs(state):
            return {"cache": str(cache.path), "upgraded": False, "schema_version": state.schema}
        legacy = state.schema != SCHEMA_VERSION
        written: list[Path] = []
        try:
            plan = {name: _upgrade_encoder(cache, name, enc, written, progress) for name, enc in state.encoders.items()}
            with cache.transaction(upgrading=True) as current:
                current.schema = SCHEMA_VERSION
                current.encoders = {}
                for name, (enc, blocks, results) in plan.items():
                    enc.blocks = [cache._publish(tmp, "block") if isinstance(tmp, Path) else tmp for tmp in blocks]
                    for kind, stored in results.items():
                        for key, tmp in stored.items():
                            if isinstance(tmp, Path):
                                enc.results[kind][key]["file"] = cache._publish(tmp, kind.rstrip("s"))
                                enc.results[kind][key]["nbytes"] = (cache.bulk_dir / enc.results[kind][key]["file"]).stat().st_size
                    current.encoders[name] = enc
        finally:
            for tmp in written:
                tmp.unlink(missing_ok=True)
    return {"cache": str(cache.path), "upgraded": True, "from_schema": 1 if legacy else "packed",
            "schema_version": SCHEMA_VERSION, "encoders": list(plan)}


def _upgrade_encoder(cache: Cache, name: str, enc: EncoderState, written: list[Path], progress: Progress | None):
    """Bulk files for the internal blocks and results of ``enc``; returns the new state and the files."""
    blocks: list = []
    new_keys = []
    with contextlib.ExitStack() as stack:
        for b, ref in enumerate(enc.blocks):
            if not ref.startswith("/"):
                blocks.append(ref)
                continue
            group = cache._open_ref(ref, stack)
            if "row_keys" in group:  # a packed block: copy it as it is
                tmp = cache._bulk_temp()
                written.append(tmp)
                with h5py.File(tmp, "w", locking=False, rdcc_nbytes=0) as fh:
                    for key in group:
                        group.file.copy(group[key], fh, name=key)
                    fh.attrs.update(dict(group.attrs))
                _fsync(tmp)
            else:  # a schema-1 encoder group: rows in the block format, with their keys
                n = enc.block_rows[b]
                paths, sizes, mtimes, labels, hashes, phashes = _block_meta(group, 0, n)
                data = group["embeddings"]
                step = max(1, (1 << 26) // (4 * max(1, enc.dim)))
                chunks = (data[s:s + step] for s in range(0, n, step))
                tmp, keys = cache._write_block(name, {"identity": {"architecture": enc.attrs.get("architecture"),
                                                                   "weights": enc.attrs.get("weights")}},
                                               NewRows(paths, sizes, mtimes, labels, hashes, chunks, phashes), enc.dim)
                written.append(tmp)
                new_keys.append(keys)
            blocks.append(tmp)
        results: dict = {kind: {} for kind in RESULT_KINDS}
        for kind in RESULT_KINDS:
            for key, attrs in enc.results[kind].items():
                if not attrs["file"].startswith("/"):
                    continue
                source = cache._open_ref(attrs["file"], stack)
                tmp = cache._bulk_temp()
                written.append(tmp)
                with h5py.File(tmp, "w", locking=False, rdcc_nbytes=0) as fh:
                    fh.attrs["format"] = BULK_FORMAT
                    if isinstance(source, h5py.Dataset):
                        fh.create_dataset("views", data=source[()])
                    else:
                        for member in source:
                            source.file.copy(source[member], fh, name=member)
                    encode_attrs(fh, {k: v for k, v in attrs.items() if k != "file"})
                _fsync(tmp)
                results[kind][key] = tmp
    if enc.fingerprint.startswith("legacy:"):
        old = enc.fingerprint
        enc.fingerprint = fingerprint(np.concatenate(new_keys)) if new_keys else fingerprint(np.zeros(0, np.uint64))
        for stored in enc.results.values():
            for attrs in stored.values():
                attrs["fingerprint"] = enc.fingerprint if attrs.get("fingerprint") == old else "legacy:other-rows"
        enc.attrs.setdefault("identity", {"architecture": enc.attrs.get("architecture"), "weights": enc.attrs.get("weights")})
    if progress:
        progress(1, 1)
    return enc, blocks, results
