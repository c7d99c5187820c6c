"""Exact and near duplicates among a cache's images, with a keeper per group.

* **Exact** duplicates share the content hash of their file's bytes (BLAKE2b-128, stored per row at
  embed time: :func:`imgclust.cache.file_hash`). Rows without a hash (caches made before hashes were
  stored) only take part as near duplicates.
* **Near** duplicates: one row per distinct file content goes into a cosine k-nearest-neighbour graph
  of the raw embeddings (:func:`imgclust.knn.knn_graph`: exact for small sets, an inverted file tuned
  to a measured recall above); the graph's pairs are the candidates. Two images are near duplicates
  (the :class:`Rule`) when their cosine similarity ``cos >= T`` (the *embedding* arm), or when their
  64-bit perceptual hashes (:mod:`imgclust.phash`, stored per row at embed time) differ in at most
  ``H`` bits and ``cos >= T_weak`` (the *hash* arm). The hash sees pixels: a half-size or re-encoded
  copy keeps its hash where an ImageNet encoder's embedding can move far; the weak floor ``T_weak``
  keeps the hash from joining different photos that share a layout. Rows without a perceptual hash
  (imported embeddings, rows embedded before hashes were stored) take part through the embedding arm
  only; re-embedding them (``imgclust embed --reembed``) adds the hash.

**Grouping without chaining.** Connected components of the joined pairs could chain A~B~C with A
and C far apart. Each component is therefore cut by complete-linkage agglomerative clustering
(Sørensen 1948; as ``scipy.cluster.hierarchy.linkage(method="complete")``) of a distance that is
``1 - cos`` for pairs the rule joins and 3 (more than any cosine distance) for the others, at the
distance ``1 - min(T, T_weak)``: the complete linkage distance of a cluster is its largest pairwise
distance, so **every pair inside a group satisfies the rule** (checked on every pair, with the
similarities computed exactly on the embeddings, not only the pairs the graph holds). Without the
hash arm this is the cut at ``1 - T``. A component larger than :data:`COMPLETE_LINKAGE_MAX` rows
(only at very low thresholds) is cut greedily instead, with the same guarantee: rows in order of
their number of edges seed a group, which takes the seed's graph neighbours, most similar first,
that the rule joins to every member.

**Keeper.** In each group the image with the most pixels (read from the file's header), then the
largest file, then the first path in sort order, is kept; the others are to drop.

**Thresholds** are calibrated per encoder family on ``benchmarks/duplicates.py`` (imagenette-val
with re-encoded, halved, cropped, brightened and byte-identical copies; chosen on half of the copied
images' groups and measured on the other half): :data:`RULES`. A family without a calibration gets
:data:`UNCALIBRATED_RULE` and a warning.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from .cache import Cache
from ._atomic import replaced_atomically
from ._progress import Progress, stage
from .errors import ParameterError, ResourceError
from .phash import HASH_BITS, NO_HASH, hamming


@dataclass(frozen=True)
class Rule:
    """When two images are near duplicates: ``cos >= threshold``, or (with ``hash_distance`` not None)
    ``hamming(phash) <= hash_distance`` and ``cos >= weak_threshold``."""

    threshold: float
    hash_distance: int | None = None
    weak_threshold: float = 1.0

    @property
    def floor(self) -> float:
        """The lowest cosine similarity a joined pair can have."""
        return self.threshold if self.hash_distance is None else min(self.threshold, self.weak_threshold)

    def joins(self, similarity: np.ndarray, distance: np.ndarray) -> np.ndarray:
        """Whether pairs of cosine ``similarity`` and perceptual-hash Hamming ``distance`` are near duplicates."""
        strong = similarity >= self.threshold
        if self.hash_distance is None:
            return strong
        return strong | ((distance <= self.hash_distance) & (similarity >= self.weak_threshold))

    def arm(self, similarity: float) -> str:
        """Which arm joins a pair the rule joins: ``embedding`` when the cosine alone does, else ``hash``."""
        return "embedding" if similarity >= self.threshold else "hash"

    def describe(self) -> str:
        """The rule in words."""
        text = f"cosine similarity ≥ {self.threshold:g}"
        if self.hash_distance is not None:
            text += f", or perceptual hashes within {self.hash_distance} bits"
            text += f" and cosine ≥ {self.weak_threshold:g}" if self.weak_threshold > -1 else ""
        return text

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "hash_distance": self.hash_distance,
                "weak_threshold": self.weak_threshold if self.hash_distance is not None else None}


#: The near-duplicate rule per encoder family, calibrated by ``benchmarks/duplicates.py`` on a half-set (every
#: original of imagenette-val and the copies of half of the copied images; effnet-lite0): of the 280 rules
#: tried, the most precise of the 5 that reach recall >= 0.95 at precision >= 0.99 there (precision 0.993,
#: recall 0.961). Figures on the other half-set and on the whole set: BENCHMARKS.md.
RULES = {"effnet-lite": Rule(0.94, 16, 0.70)}
#: For a family without a calibration: a high cosine threshold (a false duplicate may be deleted), and the
#: hash arm at the Hamming distance where the hash alone made no false pair on the benchmark (4 bits), with
#: no embedding floor (the family's cosine scale is not known).
UNCALIBRATED_RULE = Rule(0.95, 4, -1.0)
#: Neighbours per row in the graph: a group can hold more rows than this (the complete-linkage cut
#: sees every member of a component), but a row links only to its ``k`` nearest.
DEFAULT_K = 10
#: Components up to this many rows are cut by complete linkage (an m x m distance matrix, 32 MiB at 2,048).
COMPLETE_LINKAGE_MAX = 2048

#: The progress stage of reading the group members' image headers (their pixel counts).
SIZES_STAGE = "image sizes"


@dataclass
class DuplicateGroup:
    """Images that are copies of one another; ``members[0]`` is the keeper."""

    group: int
    kind: str  # "exact": every member has the same bytes; "near": otherwise
    paths: list[str]
    similarity: list[float]  # cosine similarity of each member to the keeper (1.0 for the keeper)
    hash_distance: list[int | None]  # perceptual-hash Hamming distance to the keeper (None: a hash unknown)
    match: list[str]  # why each member is in the group with the keeper: keeper, exact, embedding or hash
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
        return [{"group": self.group, "kind": self.kind, "path": p, "keep": i == 0, "match": m,
                 "similarity": round(s, 6), "hash_distance": d, "same_bytes": b, "pixels": px, "bytes": sz,
                 "content_hash": h}
                for i, (p, m, s, d, b, px, sz, h) in enumerate(zip(self.paths, self.match, self.similarity,
                                                                   self.hash_distance, self.same_bytes, self.pixels,
                                                                   self.sizes, self.hashes))]


@dataclass
class DuplicateReport:
    """What :func:`find_duplicates` found."""

    cache: str
    encoder: str
    family: str
    rule: Rule
    threshold_source: str  # "given", "calibrated for <family>" or "uncalibrated"
    n_images: int
    n_unhashed: int  # rows without a content hash
    n_without_perceptual_hash: int  # rows without a perceptual hash (the hash arm does not see them)
    graph: dict
    groups: list[DuplicateGroup] = field(default_factory=list)

    @property
    def keep_paths(self) -> list[str]:
        return [g.keeper for g in self.groups]

    @property
    def drop_paths(self) -> list[str]:
        return [p for g in self.groups for p in g.drops]

    @property
    def threshold(self) -> float:
        return self.rule.threshold

    def counts(self) -> dict:
        exact = [g for g in self.groups if g.kind == "exact"]
        matched = {arm: sum(m == arm for g in self.groups for m in g.match[1:]) for arm in ("exact", "embedding", "hash")}
        return {"groups": len(self.groups), "exact_groups": len(exact), "near_groups": len(self.groups) - len(exact),
                "images_in_groups": sum(len(g.paths) for g in self.groups), "to_drop": len(self.drop_paths),
                "matched_by": matched}

    def to_dict(self) -> dict:
        return {"cache": self.cache, "encoder": self.encoder, "family": self.family, **self.rule.to_dict(),
                "threshold_source": self.threshold_source, "n_images": self.n_images, "n_unhashed": self.n_unhashed,
                "n_without_perceptual_hash": self.n_without_perceptual_hash,
                "graph": self.graph, **self.counts(), "groups": [g.to_dict() for g in self.groups]}


def default_rule(family: str) -> tuple[Rule, str]:
    """The calibrated near-duplicate rule of an encoder family, and where it comes from."""
    if family in RULES:
        return RULES[family], f"calibrated for {family}"
    return UNCALIBRATED_RULE, "uncalibrated"


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


#: The distance of a pair the rule does not join: above every cosine distance (at most 2).
_APART = 3.0


def complete_linkage_groups(X: np.ndarray, phashes: np.ndarray, rule: Rule) -> np.ndarray:
    """Flat complete-linkage clusters of unit rows ``X`` (perceptual hashes ``phashes``) in which the rule
    joins every pair (see the module docstring)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if len(X) < 2:
        return np.zeros(len(X), np.int64)
    similarity = (X @ X.T).astype(np.float64)
    distances = np.where(rule.joins(similarity, hamming(phashes[:, None], phashes[None, :])),
                         np.clip(1.0 - similarity, 0.0, 2.0), _APART)
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="complete")
    return fcluster(tree, t=1.0 - rule.floor, criterion="distance") - 1


def greedy_groups(X: np.ndarray, phashes: np.ndarray, neighbours: list[list[int]], rule: Rule) -> np.ndarray:
    """Groups of unit rows ``X`` grown from seeds (most edges first) by their neighbours that the rule joins
    to every member; ``neighbours[i]`` lists row ``i``'s graph neighbours, most similar first."""
    labels = np.full(len(X), -1, np.int64)
    order = np.argsort([-len(n) for n in neighbours], kind="stable")
    next_label = 0
    for seed in order:
        if labels[seed] >= 0:
            continue
        members = [seed]
        labels[seed] = next_label
        for candidate in neighbours[seed]:
            if labels[candidate] < 0 and np.all(rule.joins(X[members] @ X[candidate],
                                                           hamming(phashes[members], phashes[candidate]))):
                members.append(candidate)
                labels[candidate] = next_label
        next_label += 1
    return labels


def near_groups(X: np.ndarray, phashes: np.ndarray | None, indices: np.ndarray, similarities: np.ndarray,
                rule: Rule) -> list[np.ndarray]:
    """Groups (two rows or more) of unit rows ``X`` (perceptual hashes ``phashes``; None: no row has one, the
    embedding arm alone) from a kNN graph (``indices``, ``similarities``: ``(n, k)``), the rule joining every
    pair of a group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(X)
    if phashes is None:
        phashes = np.full(n, NO_HASH, np.uint64)
    joined = rule.joins(similarities, hamming(phashes[:, None], phashes[np.maximum(indices, 0)])) & (indices >= 0)
    rows, cols = np.nonzero(joined)
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
            labels = complete_linkage_groups(X[members], phashes[members], rule)
        else:
            local = {int(m): i for i, m in enumerate(members)}
            neighbours = [[local[int(t)] for t, ok in zip(indices[m], joined[m]) if ok] for m in members]
            labels = greedy_groups(X[members], phashes[members], neighbours, rule)
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
                    hash_distance: int | None = None, weak_threshold: float | None = None, use_hash: bool = True,
                    k: int = DEFAULT_K, memory_budget: int | None = None,
                    progress: Progress | None = None) -> DuplicateReport:
    """Exact and near duplicates of ``cache``'s images (see the module docstring).

    Parameters
    ----------
    cache : the HDF5 cache written by ``imgclust embed``.
    encoder : whose embeddings (default: the only one).
    threshold : cosine similarity ``T`` in (0, 1] at or above which two images are near duplicates
        (default: the encoder family's calibrated value, :func:`default_rule`).
    hash_distance : the hash arm's ``H``, Hamming distance in [0, 64] between perceptual hashes
        (default: the family's calibrated value).
    weak_threshold : the hash arm's ``T_weak``, cosine similarity in [-1, 1] (default: the family's).
    use_hash : False turns the hash arm off (the embedding arm alone).
    k : neighbours per row in the graph.
    memory_budget : bytes the embeddings may take in memory (default: half the memory available).
    progress : ``progress(stage, done, total)`` for the embeddings read, the graph and the headers read.
    """
    from .clusterers._base import available_memory_bytes
    from .cache import READ_STAGE
    from .knn import KNN_STAGE, Neighbours, StoredGraphs, knn_graph, l2_normalise

    if threshold is not None and not (0.0 < threshold <= 1.0):
        raise ParameterError(f"threshold must be in (0, 1], got {threshold}",
                             hint="a cosine similarity, e.g. 0.9; omit it for the calibrated default")
    if hash_distance is not None and not (0 <= hash_distance <= HASH_BITS):
        raise ParameterError(f"hash_distance must be in [0, {HASH_BITS}], got {hash_distance}",
                             hint="bits that differ between two 64-bit perceptual hashes, e.g. 12; omit it for the default")
    if weak_threshold is not None and not (-1.0 <= weak_threshold <= 1.0):
        raise ParameterError(f"weak_threshold must be in [-1, 1], got {weak_threshold}",
                             hint="the cosine similarity the hash arm also needs, e.g. 0.7; omit it for the default")
    if not use_hash and (hash_distance is not None or weak_threshold is not None):
        raise ParameterError("hash_distance and weak_threshold set the hash arm, which use_hash=False turns off",
                             hint="leave them out, or the hash arm on")
    if k < 1:
        raise ParameterError(f"k must be >= 1, got {k}", hint=f"{DEFAULT_K} is the default")
    store = Cache(cache)
    name = store.resolve_encoder(encoder)
    family = str(store.info(name).get("family", ""))
    default, source = default_rule(family)
    if source == "uncalibrated" and (threshold is None or (use_hash and (hash_distance is None or weak_threshold is None))):
        warnings.warn(f"no near-duplicate rule is calibrated for the {family or 'unknown'} encoder family; using cosine "
                      f">= {threshold or default.threshold}" + (f", or perceptual hashes within {default.hash_distance} bits"
                                                                if use_hash else "")
                      + " (pass --threshold and --hash-distance to choose)", stacklevel=2)
    if threshold is not None or hash_distance is not None or weak_threshold is not None or not use_hash:
        source = "given" if source == "uncalibrated" else f"given, else {source}"
    rule = Rule(default.threshold if threshold is None else float(threshold),
                None if not use_hash else (default.hash_distance if hash_distance is None else int(hash_distance)),
                default.weak_threshold if weak_threshold is None else float(weak_threshold))
    rows = store.rows(name)
    index = rows.index()
    n = len(index)
    hashes = index.hashes if index.hashes is not None else np.full(n, "", dtype=object)
    phashes = index.perceptual_hashes if index.perceptual_hashes is not None else np.full(n, NO_HASH, np.uint64)
    classes = exact_classes(hashes)
    representatives = np.unique(classes)  # one row per distinct content, in row order
    # a content's perceptual hash: its first row's, else that of any row of the same bytes that has one
    known = np.flatnonzero(phashes != NO_HASH)[::-1]
    by_class = np.full(n, NO_HASH, np.uint64)
    by_class[classes[known]] = phashes[known]  # the last write wins: the first known row of each class
    P = by_class[representatives]
    budget = memory_budget or available_memory_bytes() // 2
    needed = len(representatives) * rows.dim * 4  # normalised in place; the graph search takes them without a copy
    if needed > budget:
        raise ResourceError(f"the {len(representatives)} distinct images' embeddings need {needed / 2**30:.1f} GiB, "
                            f"over the {budget / 2**30:.1f} GiB memory budget",
                            hint="run on a machine with more memory, or on part of the images")
    X = l2_normalise(rows.take(representatives, on_progress=stage(progress, READ_STAGE)) if len(representatives)
                     else np.zeros((0, rows.dim), np.float32), copy=False)
    on_graph = stage(progress, KNN_STAGE)
    if len(representatives) == n:  # no two files share content: the raw space's shared graph (stored, reused)
        graph = Neighbours(X, store=StoredGraphs(store, name, "raw", rows.fingerprint), on_progress=on_graph).graph(k, "cosine")
    else:
        graph = knn_graph(X, k, "cosine", on_progress=on_graph)
    groups = near_groups(X, P, graph.indices, 1.0 - graph.distances, rule)

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
            progress(SIZES_STAGE, done, total)
        order = sorted(range(len(members)),
                       key=lambda i: (-pixels[i], -int(index.sizes[members[i]]), str(index.paths[members[i]])))
        ordered = [members[i] for i in order]
        keeper = ordered[0]
        keeper_at = position[int(classes[keeper])]
        similarity = [float(np.clip(X[position[int(classes[r])]] @ X[keeper_at], -1.0, 1.0)) for r in ordered]
        distance = [int(hamming(P[position[int(classes[r])]], P[keeper_at])) for r in ordered]
        distance = [d if d <= HASH_BITS else None for d in distance]
        same = [bool(classes[r] == classes[keeper] and hashes[r] != "") or r == keeper for r in ordered]
        match = ["keeper"] + [("exact" if b else rule.arm(s)) for s, b in zip(similarity[1:], same[1:])]
        kind = "exact" if all(same) else "near"
        result.append(DuplicateGroup(0, kind, [str(index.paths[r]) for r in ordered], similarity, distance, match, same,
                                     [pixels[i] for i in order], [int(index.sizes[r]) for r in ordered],
                                     [str(hashes[r]) for r in ordered]))
    result.sort(key=lambda g: g.keeper)
    for number, group in enumerate(result):
        group.group = number
    return DuplicateReport(str(cache), name, family, rule, source, n, int((hashes == "").sum()),
                           int((phashes == NO_HASH).sum()), graph.describe(), result)


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
        fields = ["group", "kind", "path", "keep", "match", "similarity", "hash_distance", "same_bytes", "pixels", "bytes",
                  "content_hash"]
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
