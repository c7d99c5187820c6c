"""``assign`` on held-back images: does a run that never saw them put them where a run that saw them did?

    python benchmarks/assign_holdout.py                      # imagenette-val, 10% held back, seed 0
    python benchmarks/assign_holdout.py --methods agglomerative icce --fraction 0.2 --seed 1

1. The full cache: every image of the set (``benchmarks/results/<set>-<encoder>.h5``, as clustering_table.py).
2. Held back: a seeded random ``--fraction`` of each class folder.
3. The training cache: a copy of the full cache made to hold exactly the other images
   (``embed(..., exact=True)``: rows are dropped, nothing is re-embedded).
4. Per method, K = the number of classes: run A clusters the full cache, run B the training cache;
   ``imgclust.assign`` embeds the held-back images afresh and assigns them to run B's clusters (trained
   methods through their stored head, the others through the nearest cluster centre).
   B's cluster ids are matched to A's by the Hungarian method on the training images, which both runs
   clustered. Agreement = the share of held-back images whose assigned cluster is their cluster in run A.

Prints one line per method and writes ``benchmarks/results/assign_holdout.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

import imgclust
from imgclust.cache import Cache
from imgclust.cluster import cluster
from imgclust.discover import discover

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"


def hold_back(paths: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A mask of ``fraction`` of each class's rows, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(paths), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        held[rng.choice(rows, size=max(1, round(fraction * len(rows))), replace=False)] = True
    return held


def subset_cache(full: Path, subset: Path, name: str, encoder: str, keep: np.ndarray) -> Path:
    """A copy of the cache ``full`` (its file and its bulk-file folder) made to hold exactly the rows ``keep``
    (paths, in the cache's order) of data set ``name``: ``embed --exact`` drops the others, embedding none."""
    for path in (subset, subset.with_name(subset.name + ".d")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    shutil.copyfile(full, subset)
    bulk = full.with_name(full.name + ".d")
    if bulk.is_dir():
        shutil.copytree(bulk, subset.with_name(subset.name + ".d"), ignore=shutil.ignore_patterns("*.lock", ".tmp-*"))
    kept = {str(p) for p in keep}
    summary = imgclust.embed(encoder=encoder, cache=subset, exact=True, labels="folder", device="cpu",
                             files=[f for f in discover([DATA / name], labels="folder") if f.path in kept])
    if summary.embedded or list(Cache(subset).read_index(encoder).paths) != list(keep):
        raise SystemExit(f"the copy {subset} should hold {len(keep)} of {full}'s rows, embedding none; got {summary}")
    return subset


def matching(from_labels: np.ndarray, to_labels: np.ndarray) -> dict[int, int]:
    """The one-to-one map of ``from_labels``' ids onto ``to_labels``' ids that agrees on the most rows."""
    a_ids, a = np.unique(from_labels, return_inverse=True)
    b_ids, b = np.unique(to_labels, return_inverse=True)
    counts = np.zeros((len(a_ids), len(b_ids)), dtype=np.int64)
    np.add.at(counts, (a, b), 1)
    rows, cols = linear_sum_assignment(-counts)
    return {int(a_ids[r]): int(b_ids[c]) for r, c in zip(rows, cols)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="imagenette-val")
    parser.add_argument("--encoder", default="effnet-lite0")
    parser.add_argument("--methods", nargs="+", default=["agglomerative", "kmeans", "temi", "icce", "scan", "unic"])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    full = HERE / "results" / f"{args.set}-{args.encoder}.h5"
    imgclust.embed([DATA / args.set], encoder=args.encoder, cache=full, labels="folder", device="cpu")
    index = Cache(full).read_index(args.encoder)
    held = hold_back(index.paths, index.labels, args.fraction, args.seed)
    train = subset_cache(full, HERE / "results" / f"{args.set}-{args.encoder}-holdout.h5", args.set, args.encoder,
                         index.paths[~held])
    held_paths = [str(p) for p in index.paths[held]]
    k = len(np.unique(index.labels))
    print(f"[{args.set}] {len(index.paths)} images, {len(held_paths)} held back, K={k}", flush=True)

    rows = []
    for method in args.methods:
        started = time.perf_counter()
        run_a = cluster(full, method=method, n_clusters=k, random_state=args.seed)
        run_b = cluster(train, method=method, n_clusters=k, random_state=args.seed)
        to_a = matching(run_b.labels, run_a.labels[~held])
        stable = float(np.mean([to_a.get(int(b), -2) == a for b, a in zip(run_b.labels, run_a.labels[~held])]))
        assignment = imgclust.assign(train, held_paths, run=run_b.run_id)
        by_path = dict(zip(assignment.paths, assignment.clusters))
        assigned = np.array([to_a.get(by_path[p], -2) if p in by_path else -3 for p in held_paths])
        agreement = float(np.mean(assigned == run_a.labels[held]))
        row = {"set": args.set, "method": method, "via": assignment.method, "held_back": len(held_paths),
               "failed": len(assignment.failures), "agreement": agreement, "train_rows_agreement": stable,
               "seed": args.seed, "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(f"{method:>14} via {assignment.method:<14} agreement {agreement:.2%} on {len(held_paths)} held back "
              f"(runs A and B agree on {stable:.2%} of the training images)  {row['seconds']:.0f} s", flush=True)
    out = HERE / "results" / "assign_holdout.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
