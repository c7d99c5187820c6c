"""Exact and near duplicates among a cache's images, with a keeper per group.

* **Exact** duplicates share the content hash of their file's bytes (BLAKE2b-128, stored per row at
  embed time: :func:`imgclust.cache.file_hash`). Rows without a hash (caches made before hashes were
  stored) only take part as near duplicates.
* **Near** duplicates: one row per distinct file content goes into a cosine k-nearest-neighbour graph
  of the raw embeddings (:func:`imgclust.knn.knn_graph`: exact for small sets, an inverted file tuned
  to a measured recall above); an edge joins two rows whose cosine similarity is at least the
  threshold ``T``.

**Grouping without chaining.** Connected components of the edges could chain A~B~C with A and C far
apart. Each component is therefore cut by complete-linkage agglomerative clustering (Sørensen 1948;
as ``scipy.cluster.hierarchy.linkage(method="complete")``) at the distance ``1 - T``: the complete
linkage distance of a cluster is its largest pairwise distance, so **every pair inside a group has
cosine similarity >= T** (computed exactly on the embeddings, not only the pairs the graph holds).
A component larger than :data:`COMPLETE_LINKAGE_MAX` rows (only at very low thresholds) is cut
greedily instead, with the same guarantee: rows in order of their number of edges seed a group,
which takes the seed's graph neighbours, most similar first, that are within ``T`` of every member.

**Keeper.** In each group the image with the most pixels (read from the file's header), then the
largest file, then the first path in sort order, is kept; the others are to drop.

**Thresholds** are calibrated per encoder family on ``benchmarks/duplicates.py`` (imagenette-val
with re-encoded, halved, cropped, brightened and byte-identical copies): :data:`THRESHOLDS`. A family
without a calibration gets :data:`UNCALIBRATED_THRESHOLD` and a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .cache import Cache
from ._atomic import replaced_atomically
from .errors import ParameterError, ResourceError

#: Cosine similarity at or above which two images are near duplicates, per encoder family: the lowest
#: threshold of ``benchmarks/duplicates.py``'s sweep whose pair precision is at least 0.99 (effnet-lite0
#: on imagenette-val: precision 0.994, recall 0.63; see BENCHMARKS.md).
THRESHOLDS = {"effnet-lite": 0.88}
#: For a family without a calibration: high, because a false duplicate may be deleted.
UNCALIBRATED_THRESHOLD = 0.95
#: Neighbours per row in the graph: a group can hold more rows than this (the complete-linkage cut
#: sees every member of a component), but a row links only to its ``k`` nearest.
DEFAULT_K = 10
#: Components up to this many rows are cut by complete linkage (an m x m distance matrix, 32 MiB at 2,048).
COMPLETE_LINKAGE_MAX = 2048

Progress = Callable[[str, int, int], None]


@dataclass
class DuplicateGroup:
    """Images that are copies of one another; ``members[0]`` is the keeper."""

    group: int
    kind: str  # "exact": every member has the same bytes; "near": otherwise
    paths: list[str]
    similarity: list[float]  # cosine similarity of each member to the keeper (1.0 for the keeper)
    same_bytes: list[bool]  # whether each member's bytes equal the keeper's
    pixels: list[int]  # width x height from the file's header (0 when unreadable)
    sizes: list[int]
    hashes: list[str]  # content hash of each member's bytes ("" when not stored)

    @property
    def keeper(self) -> str:
        return self.paths[0]

    @property
    def drops(self) -> list[str]:
        return self.paths[1:]

    def to_dict(self) -> dict:
        return {"group": self.group, "kind": self.kind, "keeper": self.keeper,
                "members": [{k: v for k, v in row.items() if k not in ("group", "kind")} for row in self.rows()]}

    def rows(self) -> list[dict]:
        """One flat record per member (the CSV's rows)."""
        return [{"group": self.group, "kind": self.kind, "path": p, "keep": i == 0, "similarity": round(s, 6),
                 "same_bytes": b, "pixels": px, "bytes": sz, "content_hash": h}
                for i, (p, s, b, px, sz, h) in enumerate(zip(self.paths, self.similarity, self.same_bytes, self.pixels,
                                                             self.sizes, self.hashes))]


@dataclass
class DuplicateReport:
    """What :func:`find_duplicates` found."""

    cache: str
    encoder: str
    family: str
    threshold: float
    threshold_source: str  # "given", "calibrated for <family>" or "uncalibrated"
    n_images: int
    n_unhashed: int
    graph: dict
    groups: list[DuplicateGroup] = field(default_factory=list)

    @property
    def keep_paths(self) -> list[str]:
        return [g.keeper for g in self.groups]

    @property
    def drop_paths(self) -> list[str]:
        return [p for g in self.groups for p in g.drops]

    def counts(self) -> dict:
        exact = [g for g in self.groups if g.kind == "exact"]
        return {"groups": len(self.groups), "exact_groups": len(exact), "near_groups": len(self.groups) - len(exact),
                "images_in_groups": sum(len(g.paths) for g in self.groups), "to_drop": len(self.drop_paths)}

    def to_dict(self) -> dict:
        return {"cache": self.cache, "encoder": self.encoder, "family": self.family, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "n_images": self.n_images, "n_unhashed": self.n_unhashed,
                "graph": self.graph, **self.counts(), "groups": [g.to_dict() for g in self.groups]}


def default_threshold(family: str) -> tuple[float, str]:
    """The calibrated near-duplicate threshold of an encoder family, and where it comes from."""
    if family in THRESHOLDS:
        return THRESHOLDS[family], f"calibrated for {family}"
    return UNCALIBRATED_THRESHOLD, "uncalibrated"


def exact_classes(hashes: np.ndarray) -> np.ndarray:
    """A class id per row: rows with one (non-empty) content hash share it; a row without a hash is alone."""
    hashes = np.asarray(hashes, dtype=object)
    n = len(hashes)
    known = np.flatnonzero(hashes != "")
    classes = np.arange(n, dtype=np.int64)
    if len(known):
        _, first, inverse = np.unique(hashes[known].astype(str), return_index=True, return_inverse=True)
        classes[known] = known[first][inverse]  # each class is named by its first row
    return classes


def complete_linkage_groups(X: np.ndarray, threshold: float) -> np.ndarray:
    """Flat complete-linkage clusters of unit rows ``X`` in which every pair has cosine >= ``threshold``."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(X) < 2:
        return np.zeros(len(X), np.int64)
    distances = np.clip(1.0 - (X @ X.T).astype(np.float64), 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="complete")
    return fcluster(tree, t=1.0 - threshold, criterion="distance") - 1


def greedy_groups(X: np.ndarray, neighbours: list[list[int]], threshold: float) -> np.ndarray:
    """Groups of unit rows ``X`` grown from seeds (most edges first) by their neighbours within ``threshold``
    of every member; ``neighbours[i]`` lists row ``i``'s graph neighbours, most similar first."""
    labels = np.full(len(X), -1, np.int64)
    order = np.argsort([-len(n) for n in neighbours], kind="stable")
    next_label = 0
    for seed in order:
        if labels[seed] >= 0:
            continue
        members = [seed]
        labels[seed] = next_label
        for candidate in neighbours[seed]:
            if labels[candidate] < 0 and np.all(X[members] @ X[candidate] >= threshold):
                members.append(candidate)
                labels[candidate] = next_label
        next_label += 1
    return labels


def near_groups(X: np.ndarray, indices: np.ndarray, similarities: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Groups (two rows or more) of unit rows ``X`` from a kNN graph, every pair within ``threshold``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(X)
    rows, cols = np.nonzero((similarities >= threshold) & (indices >= 0))
    targets = indices[rows, cols]
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, targets)), shape=(n, n))
    n_components, component = connected_components(graph, directed=False)
    sizes = np.bincount(component, minlength=n_components)
    order = np.argsort(component, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    groups = []
    for c in np.flatnonzero(sizes >= 2):
        members = order[bounds[c]:bounds[c + 1]]
        if len(members) <= COMPLETE_LINKAGE_MAX:
            labels = complete_linkage_groups(X[members], threshold)
        else:
            local = {int(m): i for i, m in enumerate(members)}
            neighbours = [[local[int(t)] for t, s in zip(indices[m], similarities[m]) if t >= 0 and s >= threshold]
                          for m in members]
            labels = greedy_groups(X[members], neighbours, threshold)
        for label in np.unique(labels):
            part = members[labels == label]
            if len(part) >= 2:
                groups.append(np.sort(part))
    return groups


def pixel_count(path: str) -> int:
    """Width x height from the image's header (Pillow opens lazily: no decoding); 0 when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(image.size[0]) * int(image.size[1])
    except Exception:  # a file gone or damaged since it was embedded: it is never the keeper
        return 0


def find_duplicates(cache: str | os.PathLike, encoder: str | None = None, threshold: float | None = None, *,
                    k: int = DEFAULT_K, memory_budget: int | None = None,
                    progress: Progress | None = None) -> DuplicateReport:
    """Exact and near duplicates of ``cache``'s images (see the module docstring).

    Parameters
    ----------
    cache : the HDF5 cache written by ``imgclust embed``.
    encoder : whose embeddings (default: the only one).
    threshold : cosine similarity in (0, 1] at or above which two images are near duplicates
        (default: the encoder family's calibrated value, :func:`default_threshold`).
    k : neighbours per row in the graph.
    memory_budget : bytes the embeddings may take in memory (default: half the memory available).
    progress : ``progress(stage, done, total)`` for the graph and the headers read.
    """
    from .clusterers._base import available_memory_bytes
    from .knn import Neighbours, StoredGraphs, knn_graph

    if threshold is not None and not (0.0 < threshold <= 1.0):
        raise ParameterError(f"threshold must be in (0, 1], got {threshold}",
                             hint="a cosine similarity, e.g. 0.9; omit it for the calibrated default")
    if k < 1:
        raise ParameterError(f"k must be >= 1, got {k}", hint=f"{DEFAULT_K} is the default")
    store = Cache(cache)
    name = store.resolve_encoder(encoder)
    family = str(store.info(name).get("family", ""))
    if threshold is None:
        threshold, source = default_threshold(family)
        if source == "uncalibrated":
            warnings.warn(f"no near-duplicate threshold is calibrated for the {family or 'unknown'} encoder family; "
                          f"using {threshold} (pass --threshold to choose)", stacklevel=2)
    else:
        source = "given"
    rows = store.rows(name)
    index = rows.index()
    n = len(index)
    hashes = index.hashes if index.hashes is not None else np.full(n, "", dtype=object)
    classes = exact_classes(hashes)
    representatives = np.unique(classes)  # one row per distinct content, in row order
    budget = memory_budget or available_memory_bytes() // 2
    needed = len(representatives) * rows.dim * 4 * 2  # the rows and their normalised copy
    if needed > budget:
        raise ResourceError(f"the {len(representatives)} distinct images' embeddings need {needed / 2**30:.1f} GiB, "
                            f"over the {budget / 2**30:.1f} GiB memory budget",
                            hint="run on a machine with more memory, or on part of the images")
    X = rows.take(representatives) if len(representatives) else np.zeros((0, rows.dim), np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    X = X / np.where(norms > 0, norms, 1.0)
    on_graph = (lambda done, total: progress("neighbour graph", done, total)) if progress else None
    if len(representatives) == n:  # no two files share content: the raw space's shared graph (stored, reused)
        graph = Neighbours(X, store=StoredGraphs(store, name, "raw", rows.fingerprint), on_progress=on_graph).graph(k, "cosine")
    else:
        graph = knn_graph(X, k, "cosine", on_progress=on_graph)
    groups = near_groups(X, graph.indices, 1.0 - graph.distances, threshold)

    # expand each group of distinct contents to every row with that content, then add the pure-exact classes
    members_of = {}
    for row, cls in enumerate(classes.tolist()):
        members_of.setdefault(cls, []).append(row)
    in_near = set()
    raw_groups = []
    for part in groups:
        reps = representatives[part]
        in_near.update(reps.tolist())
        raw_groups.append(([r for rep in reps.tolist() for r in members_of[rep]], part))
    position = {int(r): i for i, r in enumerate(representatives)}
    for cls, members in members_of.items():
        if len(members) >= 2 and cls not in in_near:
            raw_groups.append((members, np.array([position[cls]])))

    total = sum(len(m) for m, _ in raw_groups)
    done = 0
    result = []
    for members, _ in raw_groups:
        pixels = [pixel_count(str(index.paths[r])) for r in members]
        done += len(members)
        if progress:
            progress("image sizes", done, total)
        order = sorted(range(len(members)),
                       key=lambda i: (-pixels[i], -int(index.sizes[members[i]]), str(index.paths[members[i]])))
        ordered = [members[i] for i in order]
        keeper = ordered[0]
        keeper_vector = X[position[int(classes[keeper])]]
        similarity = [float(np.clip(X[position[int(classes[r])]] @ keeper_vector, -1.0, 1.0)) for r in ordered]
        same = [bool(classes[r] == classes[keeper] and hashes[r] != "") or r == keeper for r in ordered]
        kind = "exact" if all(same) else "near"
        result.append(DuplicateGroup(0, kind, [str(index.paths[r]) for r in ordered], similarity, same,
                                     [pixels[i] for i in order], [int(index.sizes[r]) for r in ordered],
                                     [str(hashes[r]) for r in ordered]))
    result.sort(key=lambda g: g.keeper)
    for number, group in enumerate(result):
        group.group = number
    return DuplicateReport(str(cache), name, family, float(threshold), source, n, int((hashes == "").sum()),
                           graph.describe(), result)


#: Files ``write_duplicates`` puts in its ``out`` folder.
OUT_FILES = ("duplicates.csv", "duplicates.json")


def write_duplicates(report: DuplicateReport, out: str | os.PathLike | None = None, *,
                     keep_list: str | os.PathLike | None = None, drop_list: str | os.PathLike | None = None,
                     force: bool = False) -> list[str]:
    """Write the groups (``out/duplicates.csv``, one row per member, and ``out/duplicates.json``) and the
    keep and drop lists (one path per line; ``-`` is stdout). Every destination is checked before
    anything is written: the folder through its manifest (:mod:`imgclust.manifest`), a list file is
    replaced only with ``force``. Returns the paths written."""
    import csv
    import io
    import json
    import sys
    from pathlib import Path

    from ._json import json_safe
    from .errors import UsageError
    from .manifest import Manifest

    lists = [(target, paths) for target, paths in ((keep_list, report.keep_paths), (drop_list, report.drop_paths))
             if target is not None]
    for target, _ in lists:
        if str(target) != "-" and os.path.lexists(target) and (not force or os.path.isdir(target)):
            raise UsageError(f"{target} already exists", hint="pass --force to replace it, or choose another file")
    manifest = targets = None
    if out is not None:
        manifest = Manifest(out)
        targets = [manifest.folder / name for name in OUT_FILES]
        manifest.check(targets, force)
    written = []
    if manifest is not None:
        manifest.claim(targets, force)
        manifest.record(targets)
        buffer = io.StringIO()
        fields = ["group", "kind", "path", "keep", "similarity", "same_bytes", "pixels", "bytes", "content_hash"]
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for group in report.groups:
            writer.writerows(group.rows())
        for target, text in zip(targets, (buffer.getvalue(),
                                          json.dumps(json_safe(report.to_dict()), indent=2, ensure_ascii=False) + "\n")):
            _replace_text(target, text)
            written.append(str(target))
    for target, paths in lists:
        text = "".join(f"{p}\n" for p in paths)
        if str(target) == "-":
            sys.stdout.write(text)
            continue
        _replace_text(Path(target), text)
        written.append(str(target))
    return written


def _replace_text(path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path`` (never half a file)."""
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
