"""Joint spaces: ``--encoder A+B`` clusters the images on several encoders' embeddings at once.

A joint space is stored as an encoder table of its own, named ``A+B``, so that every stage (reduce,
cluster, score, export, info, cache rm) works on it unchanged and its results go stale like any
other. Its rows are the images present in every part (in the first part's order); each row is the
parts' embeddings, each ℓ2-normalised, side by side: cosine similarity in the joint space is then the
mean of the parts' cosine similarities, and no encoder outweighs another by the scale or size of its
vectors. Measured against the other simple combinations in BENCHMARKS.md. The table records each
part's size (``part_dims``), so TURTLE trains one task encoder per encoder, as in its paper.

The table is (re)built from the parts whenever one of them changed (``sources`` records the row sets it
was built from); it costs as much disk as its parts together, written a chunk at a time. A part name
may itself hold ``+`` when it carries features (``dinov2-vitb14+cls+patchmean``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable, Iterator

import numpy as np

from . import __version__
from .cache import Cache, Failures, NewRows, Rows, chunk_rows
from .encoders import FEATURES
from .errors import NotFoundError, UsageError
from .knn import l2_normalise

JOINT_FAMILY = "joint"
#: How the parts are combined: each ℓ2-normalised, concatenated.
COMBINATION = "l2-concat"


def split_encoders(name: str) -> list[str]:
    """The parts of an encoder name: ``"effnet-lite0+effnet-lite2"`` -> both; a features suffix stays with
    its encoder (``"dinov2-vitb14+cls+patchmean+clip-vitb16"`` -> 2 parts)."""
    tokens = name.split("+")
    suffixes = [f.split("+") for f in FEATURES[1:]]
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        suffix = next((s for s in suffixes if parts and tokens[i:i + len(s)] == s), None)
        if suffix is not None:
            parts[-1] += "+" + "+".join(suffix)
            i += len(suffix)
            continue
        if not tokens[i].strip():
            raise UsageError(f"--encoder {name!r} has an empty part", hint="join encoder names with +, e.g. effnet-lite0+effnet-lite2")
        parts.append(tokens[i].strip())
        i += 1
    if len(set(parts)) != len(parts):
        raise UsageError(f"--encoder {name!r} names an encoder twice", hint="name each encoder once")
    return parts


def is_joint(name: str | None) -> bool:
    return name is not None and len(split_encoders(name)) > 1


def part_dims(cache: Cache, encoder: str) -> list[int] | None:
    """Each part's size in a joint table's rows, or None for an encoder's own table."""
    info = cache.info(encoder)
    return [int(d) for d in info["part_dims"]] if info.get("family") == JOINT_FAMILY else None


def resolve_table(cache: Cache, encoder: str | None) -> str:
    """The encoder table a stage reads: ``encoder`` as :meth:`Cache.resolve_encoder` finds it, and for a
    joint name the joint table, built or refreshed from its parts first (see the module docstring)."""
    if not is_joint(encoder):
        return cache.resolve_encoder(encoder)
    parts = split_encoders(encoder)
    name = "+".join(parts)
    state = cache.load()
    missing = [p for p in parts if p not in state.encoders]
    if missing:
        raise NotFoundError(f"{cache.path} has no embeddings for encoder '{missing[0]}', a part of '{name}'",
                            hint=f"embed them all: imgclust embed PATH --encoder {name} --cache {cache.path}")
    joint = [p for p in parts if state.encoders[p].attrs.get("family") == JOINT_FAMILY]
    if joint:
        raise UsageError(f"'{joint[0]}' is itself a joint space", hint="name the encoders themselves, joined with +")
    sources = {p: state.encoders[p].fingerprint for p in parts}
    table = state.encoders.get(name)
    if table is not None and table.attrs.get("sources") == sources:
        return name
    build_joint(cache, name, parts)
    return name


def build_joint(cache: Cache, name: str, parts: list[str]) -> None:
    """Write the joint table ``name`` of ``parts`` (rows present in all), replacing any older one."""
    with cache.writer():
        rows = [cache.rows(p) for p in parts]
        first = rows[0].index()
        positions = [np.arange(len(first.paths))] + [_positions(first.paths, r) for r in rows[1:]]
        keep = np.flatnonzero(np.all([p >= 0 for p in positions], axis=0))
        if not len(keep):
            raise UsageError(f"no image of {cache.path} is embedded by every encoder of '{name}'",
                             hint=f"embed the same images with each: imgclust embed PATH --encoder {name} --cache {cache.path}")
        dims = [r.dim for r in rows]
        attrs = {"encoder": name, "family": JOINT_FAMILY, "architecture": name,
                 "weights": "+".join(str(r.state.attrs.get("weights", "")) for r in rows),
                 "embedding_dim": int(sum(dims)), "parts": parts, "part_dims": dims, "combination": COMBINATION,
                 "sources": {p: r.fingerprint for p, r in zip(parts, rows)},
                 "description": f"joint space of {', '.join(parts)}: each l2-normalised, side by side",
                 "preprocess": json.dumps({}), "imgclust_version": __version__, "runtime": "",
                 "identity": {"parts": parts, "combination": COMBINATION}}
        new = NewRows(paths=list(first.paths[keep]), sizes=first.sizes[keep], mtimes=first.mtimes[keep],
                      labels=list(first.labels[keep]), hashes=list(first.hashes[keep]),
                      embeddings=_joint_chunks(rows, [p[keep] for p in positions], chunk_rows(int(sum(dims))) * 16),
                      perceptual_hashes=first.perceptual_hashes[keep])
        cache.write_rows(name, attrs, new, failures=Failures.empty(), replace_all=True)


def embed_joint(embed: Callable, arguments: dict):
    """:func:`imgclust.embed` of a joint name: each part embeds its missing rows (the files are found
    once), then the joint table is built. The summary's counts add up the parts' (one image embedded
    by two encoders counts twice); ``images`` is the joint table's rows."""
    from .discover import discover
    from .sources import expand_sources

    name = arguments["encoder"]
    if arguments.get("features", "default") != "default":
        raise UsageError("--features applies to one encoder, not to a joint space",
                         hint="name each part with its features, e.g. --encoder dinov2-vitb14+cls+patchmean+effnet-lite0")
    if arguments.get("views"):
        raise UsageError("--views are embedded per encoder", hint="embed them with one --encoder at a time")
    if arguments.get("files") is None:  # found once: --files-from - can be read only once
        inputs, labels = expand_sources(arguments["inputs"], arguments["labels"], arguments["data_root"], arguments["split"])
        arguments["files"] = discover(inputs, files_from=arguments["files_from"], labels=labels,
                                      exclude=arguments["exclude"])
        arguments["labels"] = labels
    summaries = []
    for part in split_encoders(name):
        summaries.append(embed(**{**arguments, "encoder": part}))
        if summaries[-1].interrupted:
            return summaries[-1]
    cache = Cache(arguments["cache"])
    table = resolve_table(cache, name)
    counts = {k: sum(getattr(s, k) for s in summaries) for k in (
        "embedded", "changed", "skipped", "failed", "removed", "kept_missing", "confirmed", "recovered",
        "failures_total", "recomputed_float32", "seconds")}
    counts["seconds"] = round(counts["seconds"], 3)
    return replace(summaries[-1], encoder=table, images=len(cache.rows(table)),
                   stale_results=[x for s in summaries for x in s.stale_results],
                   images_per_second=round(counts["embedded"] / counts["seconds"], 2) if counts["seconds"] else 0.0,
                   runtime="+".join(dict.fromkeys(s.runtime for s in summaries)), **counts)


def _positions(paths: np.ndarray, rows: Rows) -> np.ndarray:
    """Each of ``paths``' row in ``rows`` (-1 where it has none)."""
    where = {p: i for i, p in enumerate(rows.paths())}
    return np.array([where.get(p, -1) for p in paths], np.int64)


def _joint_chunks(rows: list[Rows], positions: list[np.ndarray], step: int) -> Iterator[np.ndarray]:
    for start in range(0, len(positions[0]), step):
        pieces = []
        for part, pos in zip(rows, positions):
            chunk = pos[start:start + step]
            order = np.argsort(chunk, kind="stable")  # Rows.take reads increasing positions
            vectors = np.empty((len(chunk), part.dim), np.float32)
            vectors[order] = part.take(chunk[order])
            pieces.append(vectors)
        yield combine(pieces)


def combine(parts: list[np.ndarray]) -> np.ndarray:
    """The joint rows of the same images' embeddings by each part (what the joint table stores)."""
    return np.hstack([l2_normalise(np.asarray(p, np.float32)) for p in parts])
