"""Label-free choice of K: every rule of imgclust.select against AMI at the true K, on many sets.

For each set, one sweep of agglomerative clustering (ward, euclidean: imgclust's default for
effnet-lite0) computes every criterion at every K (silhouette, merge gap, stability) and the
Gaussian reference; each rule then reads its K off the same curves (``imgclust.select.apply_rule``).
AMI is that of the clustering of *all* rows at the chosen K (the tree of all rows, cut at K),
against the labels; loss = AMI at the true K minus AMI at the chosen K (points, ×100). The
default rule's selection is also run on its own through ``choose_n_clusters`` to time it.

Sets:
* effnet-lite0 embeddings (ImageNet weights) of the shared sets, reduced with imgclust's UMAP
  (n_neighbors=30, min_dist=0, 50 dims, seed 0): imagenette-val, imagenette-mini (its rows of the
  imagenette-val cache, selected by path), cifar10-test, their union (20 classes), 3 and 5 classes
  of each (classes drawn with seeds 3 and 5), and a 1:10 imbalanced subset of each (class i keeps
  a share 10^(-i/9) of its images, classes in a seeded random order);
* scikit-learn's digits (1797 x 64), reduced the same way;
* make_blobs in 10 dimensions: K = 2, 3, 5, 10, 20, 50, 100 well separated; K = 10 at three
  spreads; K = 5, 20, 50, 100 with wider spreads; 4 groups of 5 blobs (a hierarchy); 1:10
  imbalance at K = 10 and 30; and two sets with no structure (one Gaussian; a uniform cube).

Held-out sets (``--group held-out``) played no part in choosing the thresholds of the rules up to
``silhouette-levels``: 3, 5 and 7 classes of each cache drawn with other seeds (13, 15, 17), a 1:10
imbalanced subset of each in another class order (seed 20), and four other unions of the two caches
(5 + 5 classes, all of Imagenette + 5 CIFAR-10 classes, 3 Imagenette classes + all of CIFAR-10,
imbalanced Imagenette + 3 CIFAR-10 classes). Fresh sets (``--group fresh``) played no part in choosing
any rule: they were defined before any rule changed on the held-out sets was read on them (2, 4, 6
and 8 classes of each cache, a new imbalance order, five new unions, digits subsets, new blobs; see
:func:`fresh_sets`). Exam sets (``--group exam``) were defined after the fresh sets had been read and
before any change made for them was read on them. Worst losses are reported per group.

Relabelled sets (``--group relabelled``) are sets of the groups above under a coarser labelling one
level up their classes' own hierarchy (CIFAR-10 as animals/vehicles; a union of the two caches with
CIFAR-10 as one class, or as its two sources). The rows and their reduction are the same, so every
rule picks the same K as on the set itself; the table beside the main one gives the K on target under
each labelling. Where the two share no K, no rule that sees only the images is on target for both.

    python benchmarks/select_k.py                      # everything (about 25 minutes on 2 cores)
    python benchmarks/select_k.py --only blobs         # sets whose name contains 'blobs'
    python benchmarks/select_k.py --group held-out     # only the held-out sets
    python benchmarks/select_k.py --group fresh        # only the fresh sets
    python benchmarks/select_k.py --group relabelled --scale-rows 0 --out select_k_relabelled

The caches come from ``benchmarks/clustering_table.py`` (``benchmarks/results/<set>-effnet-lite0.h5``);
UMAP outputs are kept in ``benchmarks/results/select_k_umap/`` for reruns. Writes
``benchmarks/results/select_k.json`` and ``select_k.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits, make_blobs
from sklearn.metrics import adjusted_mutual_info_score

from imgclust.cache import Cache
from imgclust.reduce import fit_umap
from imgclust.select import DEFAULT_RULE, SELECTION_RULES, apply_rule, choose_n_clusters, cut_tree_labels, merge_tree

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATA = HERE.parents[1] / "shared" / "data"
UMAP_DIR = RESULTS / "select_k_umap"
#: Groups of sets, by what was chosen on them (see the module docs).
GROUPS = ("calibration", "held-out", "fresh", "exam")
#: Sets of the groups above under a coarser labelling: the same rows and the same reduction, so every rule
#: picks the same K as on the set itself (not counted in "all").
RELABELLED = "relabelled"
CIFAR10_VEHICLES = ("airplane", "automobile", "ship", "truck")


def blobs() -> dict:
    sets = {}
    for k in (2, 3, 5, 10, 20, 50, 100):
        X, y = make_blobs(max(1500, 60 * k), n_features=10, centers=k, cluster_std=1.0, center_box=(-20, 20),
                          random_state=k)
        sets[f"blobs-k{k}"] = (X, y)
    for std in (1.5, 2.5, 3.5):
        X, y = make_blobs(2000, n_features=10, centers=10, cluster_std=std, center_box=(-10, 10), random_state=7)
        sets[f"blobs-k10-std{std}"] = (X, y)
    for k, std in ((5, 3.0), (20, 2.0), (50, 2.0), (100, 1.5)):
        X, y = make_blobs(max(2000, 60 * k), n_features=10, centers=k, cluster_std=std, center_box=(-20, 20),
                          random_state=100 + k)
        sets[f"blobs-k{k}-std{std}"] = (X, y)
    rng = np.random.default_rng(5)
    groups = rng.normal(0, 25, (4, 10))
    centres = np.concatenate([g + rng.normal(0, 6, (5, 10)) for g in groups])
    sets["blobs-k20-hierarchy"] = make_blobs(3000, n_features=10, centers=centres, cluster_std=1.0, random_state=5)
    for k, top, seed in ((10, 300, 11), (30, 200, 13)):
        sizes = np.round(top * np.geomspace(1, 0.1, k)).astype(int)
        sets[f"blobs-k{k}-imbalanced"] = make_blobs(sizes, n_features=10, centers=None, cluster_std=1.0,
                                                    center_box=(-20, 20), random_state=seed)
    rng = np.random.default_rng(0)
    sets["noise-gaussian"] = (rng.standard_normal((2000, 10)), np.zeros(2000, dtype=int))
    sets["noise-uniform"] = (rng.uniform(size=(2000, 10)), np.zeros(2000, dtype=int))
    return sets


@functools.lru_cache(maxsize=None)  # every group draws on the same two caches: read each once
def load_cache(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cache = Cache(RESULTS / f"{name}-effnet-lite0.h5")
    encoder = cache.resolve_encoder(None)
    index = cache.read_index(encoder)
    return cache.read_embeddings(encoder), np.asarray(index.labels).astype(str), np.asarray(index.paths).astype(str)


def class_subset(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Rows of ``k`` classes drawn with ``seed``."""
    pick = np.random.default_rng(seed).choice(np.unique(y), k, replace=False)
    return np.flatnonzero(np.isin(y, pick))


def imbalanced_subset(y: np.ndarray, seed: int) -> np.ndarray:
    """1:10 imbalance: class i (in a seeded random order) keeps a share 10^(-i/(K-1)) of its rows."""
    classes = np.unique(y)
    rng = np.random.default_rng(seed)
    rows = []
    for c, share in zip(rng.permutation(classes), np.geomspace(1.0, 0.1, len(classes))):
        idx = rng.permutation(np.flatnonzero(y == c))
        rows.append(idx[: max(1, int(round(share * len(idx))))])
    return np.sort(np.concatenate(rows))


def subsets(prefix: str, y: np.ndarray) -> dict:
    out = {prefix: np.arange(len(y))}
    for k, seed in ((3, 3), (5, 5)):
        out[f"{prefix}-{k}cls"] = class_subset(y, k, seed)
    out[f"{prefix}-imbalanced"] = imbalanced_subset(y, 10)
    return out


def _unions(parts: dict) -> dict:
    """Sets made of rows of the two caches: name -> [(X, y, rows), ...], reduced together with UMAP."""
    sets = {}
    for name, pieces in parts.items():
        X = lambda pieces=pieces: np.concatenate([X[rows] for X, _, rows in pieces])  # noqa: E731
        y = np.concatenate([y[rows] for _, y, rows in pieces])
        sets[name] = (lambda X=X, name=name: umap50(X(), name), y)
    return sets


def _both_caches() -> tuple:
    Xi, yi, _ = load_cache("imagenette-val")
    Xc, yc, _ = load_cache("cifar10-test")
    return Xi, np.char.add("in-", yi), Xc, np.char.add("c10-", yc)


def held_out_sets() -> dict:
    """Sets that played no part in choosing the thresholds of the rules up to ``silhouette-levels``
    (other class draws, other imbalance orders, other unions of the two caches). ``silhouette-tree``'s
    changes were found on them, so for that rule they are calibration: :func:`fresh_sets` decides."""
    Xi, yi, Xc, yc = _both_caches()
    parts = {}
    for prefix, X, y in (("imagenette-val", Xi, yi), ("cifar10-test", Xc, yc)):
        for k, seed in ((3, 13), (5, 15), (7, 17)):
            parts[f"{prefix}-{k}cls-s{seed}"] = [(X, y, class_subset(y, k, seed))]
        parts[f"{prefix}-imbalanced-s20"] = [(X, y, imbalanced_subset(y, 20))]
    everything = lambda y: np.arange(len(y))  # noqa: E731
    parts["imagenette-5cls+cifar10-5cls"] = [(Xi, yi, class_subset(yi, 5, 5)), (Xc, yc, class_subset(yc, 5, 5))]
    parts["imagenette+cifar10-5cls"] = [(Xi, yi, everything(yi)), (Xc, yc, class_subset(yc, 5, 15))]
    parts["imagenette-3cls+cifar10"] = [(Xi, yi, class_subset(yi, 3, 13)), (Xc, yc, everything(yc))]
    parts["imagenette-imbalanced+cifar10-3cls"] = [(Xi, yi, imbalanced_subset(yi, 20)), (Xc, yc, class_subset(yc, 3, 3))]
    return _unions(parts)


def _recipe_sets(real: bool, draws: tuple, imbalance_seed: int, unions: dict, digits: tuple, blobs: tuple,
                 imbalanced_blobs: tuple, tight_loose: tuple, half_seed: int | None = None) -> dict:
    """A group of sets from its recipe: ``draws`` ((classes, seed), ...) of each cache, a 1:10 imbalanced
    subset of each in the order of ``imbalance_seed``, a random half of each (``half_seed``), ``unions``
    (name -> (Imagenette classes, CIFAR-10 classes, seed), "imbalanced" for an imbalanced subset),
    ``digits`` ((classes or "imbalanced", seed), ...), make_blobs ``blobs`` ((K, std, seed), ...) and
    ``imbalanced_blobs`` ((K, largest, seed): 1:10 sizes), and ``tight_loose`` ((tight, loose, seed), ...):
    tight blobs beside loose ones close together, the shape of the unions. ``real=False``: synthetic only."""
    def rows_of(y: np.ndarray, k: int | str, seed: int) -> np.ndarray:
        return imbalanced_subset(y, seed) if k == "imbalanced" else class_subset(y, k, seed)

    sets = {}
    if real:
        Xi, yi, Xc, yc = _both_caches()
        parts = {}
        for prefix, X, y in (("imagenette-val", Xi, yi), ("cifar10-test", Xc, yc)):
            for k, seed in draws:
                parts[f"{prefix}-{k}cls-s{seed}"] = [(X, y, class_subset(y, k, seed))]
            if half_seed is not None:
                half = np.sort(np.random.default_rng(half_seed).permutation(len(y))[: len(y) // 2])
                parts[f"{prefix}-half-s{half_seed}"] = [(X, y, half)]
            parts[f"{prefix}-imbalanced-s{imbalance_seed}"] = [(X, y, imbalanced_subset(y, imbalance_seed))]
        for name, (ki, kc, seed) in unions.items():
            parts[name] = [(Xi, yi, rows_of(yi, ki, seed)), (Xc, yc, rows_of(yc, kc, seed))]
        sets.update(_unions(parts))
    digits_X, digits_y = load_digits(return_X_y=True)
    for k, seed in digits:
        name = f"digits-{k}-s{seed}" if k == "imbalanced" else f"digits-{k}cls-s{seed}"
        rows = rows_of(digits_y, k, seed)
        sets[name] = (lambda rows=rows, name=name: umap50(digits_X[rows], name), digits_y[rows])
    for k, std, seed in blobs:
        X, y = make_blobs(max(1500, 60 * k), n_features=10, centers=k, cluster_std=std, center_box=(-20, 20),
                          random_state=seed)
        sets[f"blobs-k{k}-std{std}-s{seed}"] = (lambda X=X: X, y)
    for k, largest, seed in imbalanced_blobs:
        sizes = np.round(largest * np.geomspace(1, 0.1, k)).astype(int)
        X, y = make_blobs(sizes, n_features=10, centers=None, cluster_std=1.0, center_box=(-20, 20), random_state=seed)
        sets[f"blobs-k{k}-imbalanced-s{seed}"] = (lambda X=X: X, y)
    for n_tight, n_loose, seed in tight_loose:
        rng = np.random.default_rng(seed)
        tight = rng.uniform(-20, 20, (n_tight, 10))
        loose = rng.uniform(-20, 20, 10) + rng.normal(0, 4, (n_loose, 10))
        X1, y1 = make_blobs(300 * n_tight, n_features=10, centers=tight, cluster_std=1.0, random_state=seed)
        X2, y2 = make_blobs(300 * n_loose, n_features=10, centers=loose, cluster_std=1.5, random_state=seed + 1)
        sets[f"blobs-tight{n_tight}+loose{n_loose}-s{seed}"] = (lambda X=np.concatenate([X1, X2]): X,
                                                               np.concatenate([y1, y2 + n_tight]))
    return sets


def fresh_sets(real: bool = True) -> dict:
    """Sets no rule was chosen or changed on, built before ``silhouette-tree`` was first read on them: 2, 4,
    6 and 8 classes of each cache (seeds 23-29), 1:10 imbalance in a new order (seed 31), five new unions
    (seeds 33-41), digits subsets, and new make_blobs sets, one of them 5 tight blobs beside 5 loose ones
    (the shape of the unions of Imagenette and CIFAR-10). ``real=False``: the synthetic ones only."""
    return _recipe_sets(
        real, draws=((2, 29), (4, 23), (6, 25), (8, 27)), imbalance_seed=31,
        unions={"imagenette-3cls+cifar10-3cls-s33": (3, 3, 33), "imagenette-7cls+cifar10-7cls-s35": (7, 7, 35),
                "imagenette-5cls+cifar10-2cls-s39": (5, 2, 39), "imagenette-2cls+cifar10-5cls-s41": (2, 5, 41),
                "imagenette-imbalanced+cifar10-imbalanced-s37": ("imbalanced", "imbalanced", 37)},
        digits=((5, 23), ("imbalanced", 31)), blobs=((7, 1.0, 207), (40, 2.0, 240), (70, 1.0, 270)),
        imbalanced_blobs=((15, 250, 215),), tight_loose=((5, 5, 43),))


def exam_sets(real: bool = True) -> dict:
    """Sets no rule was chosen or changed on, built after the fresh sets had shown where every rule fails and
    before any change made for them was read here: 3, 5, 7 and 9 classes of each cache (seeds 51-57), a
    random half of each cache (seed 59), 1:10 imbalance in a new order (seed 61), four new unions (seeds
    63-69), digits subsets, and new make_blobs sets (tight beside loose again, another seed)."""
    return _recipe_sets(
        real, draws=((3, 51), (5, 53), (7, 55), (9, 57)), imbalance_seed=61, half_seed=59,
        unions={"imagenette-4cls+cifar10-4cls-s63": (4, 4, 63), "imagenette-2cls+cifar10-8cls-s65": (2, 8, 65),
                "imagenette-6cls+cifar10-2cls-s67": (6, 2, 67), "imagenette-8cls+cifar10-6cls-s69": (8, 6, 69)},
        digits=((3, 51), (7, 55), ("imbalanced", 61)), blobs=((4, 1.0, 504), (12, 2.0, 512), (30, 1.5, 530)),
        imbalanced_blobs=(), tight_loose=((3, 6, 71),))


def _animals_vehicles(y: np.ndarray) -> np.ndarray:
    return np.where(np.isin(np.char.replace(y, "c10-", ""), CIFAR10_VEHICLES), "vehicle", "animal")


def _cifar10_as_one(y: np.ndarray) -> np.ndarray:
    return np.where(np.char.startswith(y, "c10-"), "c10", y)


def _by_source(y: np.ndarray) -> np.ndarray:
    return np.where(np.char.startswith(y, "c10-"), "c10", "in")


#: set -> [(labelling, relabel), ...]: one level up the classes' own hierarchy (CIFAR-10's animals and
#: vehicles; a union as its Imagenette classes and one CIFAR-10 class, or as its two sources).
COARSER = {
    "cifar10-test": [("animals/vehicles", _animals_vehicles)],
    "cifar10-test-imbalanced": [("animals/vehicles", _animals_vehicles)],
    "cifar10-test-half-s59": [("animals/vehicles", _animals_vehicles)],
    "imagenette+cifar10": [("CIFAR-10 as one class", _cifar10_as_one), ("by source", _by_source)],
    "imagenette-5cls+cifar10-5cls": [("CIFAR-10 as one class", _cifar10_as_one)],
    "imagenette-3cls+cifar10-3cls-s33": [("CIFAR-10 as one class", _cifar10_as_one)],
    "imagenette-2cls+cifar10-5cls-s41": [("CIFAR-10 as one class", _cifar10_as_one)],
}


def relabelled_sets(sets: dict) -> dict:
    """The sets of :data:`COARSER` under their coarser labellings: name -> (twin, labelling, get_X, coarse y,
    the twin's y).

    The images decide the pick; the labels decide the target. Where the targets of two labellings of the
    same rows share no K, no rule that sees only the images can be on target for both."""
    out = {}
    for twin, labellings in COARSER.items():
        if twin in sets:
            _, get_X, y = sets[twin]
            for labelling, relabel in labellings:
                out[f"{twin} [{labelling}]"] = (twin, labelling, get_X, relabel(y), y)
    return out


def umap50(X: np.ndarray, name: str) -> np.ndarray:
    path = UMAP_DIR / f"{name}.npy"
    if path.exists():
        return np.load(path)
    _, out = fit_umap(X.astype(np.float32), n_neighbors=30, min_dist=0.0, n_components=50, metric="euclidean",
                      random_state=0)
    UMAP_DIR.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def real_sets() -> dict:
    sets = {}
    Xi, yi, pi = load_cache("imagenette-val")
    cifar = (RESULTS / "cifar10-test-effnet-lite0.h5").exists()
    Xc, yc, _ = load_cache("cifar10-test") if cifar else (None, None, None)
    if not cifar:
        print("no benchmarks/results/cifar10-test-effnet-lite0.h5: its sets are left out", flush=True)
    for prefix, X, y in (("imagenette-val", Xi, yi), ("cifar10-test", Xc, yc)):
        if X is None:
            continue
        for name, rows in subsets(prefix, y).items():
            sets[name] = (lambda X=X, rows=rows, name=name: umap50(X[rows], name), y[rows])
    mini = {f"{c}/{f}" for c in os.listdir(DATA / "imagenette-mini") for f in os.listdir(DATA / "imagenette-mini" / c)}
    rows = np.flatnonzero([("/".join(p.split("/")[-2:]) in mini) for p in pi])
    sets["imagenette-mini"] = (lambda rows=rows: umap50(Xi[rows], "imagenette-mini"), yi[rows])
    if cifar:
        union_y = np.concatenate([np.char.add("in-", yi), np.char.add("c10-", yc)])
        sets["imagenette+cifar10"] = (lambda: umap50(np.concatenate([Xi, Xc]), "imagenette+cifar10"), union_y)
    digits_X, digits_y = load_digits(return_X_y=True)
    sets["digits"] = (lambda: umap50(digits_X, "digits"), digits_y)
    return sets


def on_target(ks: list, ami: list, true_k: int, ami_true_k: float) -> list:
    """The K that meet issue 14's target: within 2 AMI points of the true K's, and within [K/2, 2K]."""
    return [int(k) for k, a in zip(ks, ami) if true_k / 2 <= k <= 2 * true_k and ami_true_k - a <= 2]


def evaluate(name: str, X: np.ndarray, y: np.ndarray, fine_y: np.ndarray | None = None) -> dict:
    """Every rule's K on ``X`` against the labels ``y``; with ``fine_y`` (a finer labelling of the same rows),
    also the K on target under each labelling."""
    true_k = int(np.unique(y).size)
    started = time.perf_counter()
    sel = choose_n_clusters(X, rule="stability")  # computes every curve: silhouette, merge gap, stability
    sweep_seconds = time.perf_counter() - started
    ks = sel.ks
    # AMI of the clustering of all rows at each K (the sweep may have used a sample)
    tree = merge_tree(X)
    cuts = cut_tree_labels(tree, ks)

    def ami_curve(labels_true: np.ndarray, k_true: int) -> dict:
        """AMI at every K of the sweep and at the true K (cut from the same tree when outside the range)."""
        at = cuts if k_true in cuts or k_true < 2 else {**cuts, **cut_tree_labels(tree, [k_true])}
        return {int(k): 100 * adjusted_mutual_info_score(labels_true, labels) for k, labels in at.items()}

    ami = ami_curve(y, true_k)
    at_true = ami[true_k] if true_k >= 2 else None
    targets = {}
    if fine_y is not None:
        fine_k = int(np.unique(fine_y).size)
        fine_ami = ami_curve(fine_y, fine_k)
        targets = {"fine_true_k": fine_k,
                   "fine_on_target": on_target(list(ks), [fine_ami[int(k)] for k in ks], fine_k, fine_ami[fine_k]),
                   "on_target": on_target(list(ks), [ami[int(k)] for k in ks], true_k, at_true)}
    rules = {}
    for rule in SELECTION_RULES:
        k = int(ks[apply_rule(rule, ks, sel.curves).index])
        rules[rule] = {"k": k, "ami": ami[k], "loss": None if at_true is None else at_true - ami[k],
                       "within_half_double": bool(true_k / 2 <= k <= 2 * true_k) if true_k >= 2 else None}
    started = time.perf_counter()
    default = choose_n_clusters(X, rule=DEFAULT_RULE)
    default_seconds = time.perf_counter() - started
    assert default.n_clusters == rules[DEFAULT_RULE]["k"]
    return {
        "set": name, "n": int(X.shape[0]), "dims": int(X.shape[1]), "true_k": true_k, "ami_true_k": at_true,
        "best_ami": max(ami.values()), "best_ami_k": max(ami, key=ami.get), "k_range": list(sel.k_range),
        "n_used": sel.n_used, "rules": rules, "default": default.to_dict(), "flags": default.flags,
        "summary": default.summary, "reference_silhouette": default.reference_silhouette,
        "best_silhouette": float(np.nanmax(sel.curves["silhouette"])),
        "seconds_all_curves": round(sweep_seconds, 2), "seconds_default_rule": round(default_seconds, 2), **targets,
        "curves": {"k": ks.tolist(), "ami": [ami[int(k)] for k in ks],
                   **{c: [None if not np.isfinite(v) else float(v) for v in vals] for c, vals in sel.curves.items()}},
    }


def table(rows: list[dict]) -> str:
    rules = list(SELECTION_RULES)
    head = ("| set | sets | n | true K | AMI at true K | " + " | ".join(f"{r}: K (loss)" for r in rules)
            + f" | {DEFAULT_RULE} flags |")
    lines = [head, "|" + "---|" * (6 + len(rules))]
    for r in rows:
        cells = []
        for rule in rules:
            x = r["rules"][rule]
            mark = "" if x["within_half_double"] in (None, True) else " ✗"
            loss = "" if x["loss"] is None else f" ({x['loss']:+.1f})"
            cells.append(f"{x['k']}{loss}{mark}")
        at_true = "—" if r["ami_true_k"] is None else f"{r['ami_true_k']:.1f}"
        lines.append(f"| {r['set']} | {r['group']} | {r['n']} | {r['true_k'] if r['true_k'] > 1 else 'none'} | {at_true} | "
                     + " | ".join(cells) + f" | {', '.join(r['flags']) or '—'} |")
    for group in (*GROUPS, "all", RELABELLED):
        labelled = [r for r in rows if r["ami_true_k"] is not None
                    and (r["group"] == group or (group == "all" and r["group"] in GROUPS))]
        if not labelled:
            continue
        worst = {rule: max(r["rules"][rule]["loss"] for r in labelled) for rule in rules}
        outside = {rule: sum(not r["rules"][rule]["within_half_double"] for r in labelled) for rule in rules}
        lines.append(f"| **worst loss** | {group} | | | | "
                     + " | ".join(f"**{worst[rule]:+.1f}**" for rule in rules) + " | |")
        lines.append(f"| **picks outside [K/2, 2K]** | {group} | | | | "
                     + " | ".join(f"**{outside[rule]}**" for rule in rules) + " | |")
        missed = {rule: sum(r["rules"][rule]["loss"] > 2 or not r["rules"][rule]["within_half_double"] for r in labelled)
                  for rule in rules}
        lines.append(f"| **off target (loss > 2 or outside), of {len(labelled)}** | {group} | | | | "
                     + " | ".join(f"**{missed[rule]}**" for rule in rules) + " | |")
    return "\n".join(lines)


def _span(ks: list) -> str:
    """K on target, as runs: 5-9, 12."""
    runs = []
    for k in ks:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) or "none"


def relabelled_table(rows: list[dict]) -> str:
    """Each relabelled set beside its own labels: the K on target under each, and the K every rule sees."""
    lines = [f"| set | coarser labelling | K on target (coarser) | K on target (the set's labels) | both | {DEFAULT_RULE} |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["group"] != RELABELLED:
            continue
        twin, labelling = r["relabelled_from"]["set"], r["relabelled_from"]["labelling"]
        both = sorted(set(r["on_target"]) & set(r["fine_on_target"]))
        lines.append(f"| {twin} | {labelling} (K = {r['true_k']}) | {_span(r['on_target'])} | "
                     f"{_span(r['fine_on_target'])} (K = {r['fine_true_k']}) | {_span(both)} | {r['rules'][DEFAULT_RULE]['k']} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def scale(rows: int) -> dict:
    """Seconds of the default selection on ``rows`` rows of 50-d float32 (20 blobs): it sweeps a 10,000-row sample."""
    X, _ = make_blobs(rows, n_features=50, centers=20, cluster_std=1.0, center_box=(-20, 20), random_state=0)
    X = X.astype(np.float32)
    started = time.perf_counter()
    sel = choose_n_clusters(X)
    seconds = time.perf_counter() - started
    print(f"scale: {rows} rows x 50 dims -> K = {sel.n_clusters} in {seconds:.1f} s (swept {sel.n_used} rows)", flush=True)
    return {"rows": rows, "dims": 50, "true_k": 20, "k": sel.n_clusters, "n_used": sel.n_used, "seconds": round(seconds, 2),
            "flags": sel.flags}


def write(rows: list[dict], at_scale: dict | None, out: str) -> str:
    """The Markdown table (and the timing at scale) of ``rows``; writes ``<out>.json`` and ``<out>.md``."""
    md = table(rows)
    if relabelled := relabelled_table(rows):
        md += "\n\nThe same rows under a coarser labelling (the K on target: within 2 AMI points of the true K's, in [K/2, 2K]):\n\n" + relabelled
    if at_scale:
        md += (f"\n\nAt scale: {at_scale['rows']:,} rows x 50 dims (20 blobs): K = {at_scale['k']} in "
               f"{at_scale['seconds']:.1f} s (the sweep used {at_scale['n_used']:,} rows).")
    (RESULTS / f"{out}.json").write_text(json.dumps({"sets": rows, "scale": at_scale}, indent=1))
    (RESULTS / f"{out}.md").write_text(md + "\n")
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run only the sets whose name contains this")
    parser.add_argument("--out", default="select_k", help="name of the JSON/Markdown files under benchmarks/results/")
    parser.add_argument("--scale-rows", type=int, default=1_000_000, help="rows of the timing at scale (0: skip)")
    parser.add_argument("--group", choices=("all", *GROUPS, RELABELLED), default="all",
                        help="calibration: the sets the rules' thresholds were chosen on; held-out: sets no rule up "
                             "to silhouette-levels was chosen on; fresh: sets no rule was chosen on before "
                             "silhouette-tree; exam: sets no rule was chosen on; relabelled: sets of the other groups "
                             "under coarser labels")
    args = parser.parse_args()
    sets = {name: ("calibration", lambda X=X: X, y) for name, (X, y) in blobs().items()}
    synthetic_only = bool(args.only and ("blobs" in args.only or "noise" in args.only))
    if not synthetic_only:
        sets.update({name: ("calibration", *entry) for name, entry in real_sets().items()})
    both = not synthetic_only and (RESULTS / "cifar10-test-effnet-lite0.h5").exists()
    if both:
        sets.update({name: ("held-out", *entry) for name, entry in held_out_sets().items()})
    sets.update({name: ("fresh", *entry) for name, entry in fresh_sets(real=both).items()})
    sets.update({name: ("exam", *entry) for name, entry in exam_sets(real=both).items()})
    relabelled = {}
    for name, (twin, labelling, get_X, y, fine_y) in relabelled_sets(sets).items():
        sets[name] = (RELABELLED, get_X, y)
        relabelled[name] = ({"set": twin, "labelling": labelling}, fine_y)
    rows = []
    for name, (group, get_X, y) in sets.items():
        if args.only and args.only not in name:
            continue
        if args.group != "all" and group != args.group:
            continue
        started = time.perf_counter()
        relabelled_from, fine_y = relabelled.get(name, (None, None))
        row = {"group": group, **evaluate(name, get_X(), y, fine_y)}
        if relabelled_from:
            row["relabelled_from"] = relabelled_from
        rules = "  ".join(f"{rule} {x['k']}" + ("" if x["loss"] is None else f" ({x['loss']:+.1f})")
                          for rule, x in row["rules"].items())
        print(f"{name}: n={row['n']} K={row['true_k']} AMI@K={row['ami_true_k']}  {rules}  flags={row['flags']}  "
              f"default rule {row['seconds_default_rule']:.1f} s (set {time.perf_counter() - started:.0f} s)",
              flush=True)
        rows.append(row)
    at_scale = scale(args.scale_rows) if args.scale_rows else None
    print(write(rows, at_scale, args.out))


if __name__ == "__main__":
    main()
