"""Several encoders at once and TURTLE: AMI, accuracy and seconds, mean ± sd over seeds, as a Markdown table.

On each shared set, with the true K: agglomerative (the default method, UMAP 50) and TURTLE on each of
effnet-lite0 and effnet-lite2 alone and on their joint space ``effnet-lite0+effnet-lite2`` (each part
ℓ2-normalised, side by side; TURTLE trains one task encoder per encoder). ``--combinations`` also
clusters the other simple combinations of the two spaces with agglomerative (UMAP 50): the raw
embeddings side by side (no normalisation) and each part z-scored per dimension, to check the choice
of :mod:`imgclust.joint`. Seeds change UMAP's and TURTLE's randomness (agglomerative itself has none).

The caches ``benchmarks/results/<set>-effnet-lite.h5`` hold both encoders' rows (``imgclust embed
../shared/data/<set> --encoder effnet-lite0+effnet-lite2 --labels folder --cache ...``; the script
embeds an encoder that is missing). Each run works on a fresh copy of the cache, so every UMAP is computed anew
and its time counted: ``seconds`` is the whole ``cluster`` call (UMAP fit + clustering; TURTLE: its
training on the raw rows). Torch runs on ``--threads`` (1), UMAP on both cores.

    python benchmarks/multi_encoder.py                                   # both sets, 3 seeds
    python benchmarks/multi_encoder.py --sets cifar10-test --seeds 0 --methods turtle
    python benchmarks/multi_encoder.py --combinations --seeds 0 1 2 --out multi_encoder_combinations
    python benchmarks/multi_encoder.py --from-json benchmarks/results/multi_encoder.json   # the table again

Prints the table and writes ``benchmarks/results/<out>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import imgclust
from imgclust.cache import Cache, Failures, NewRows
from imgclust.cluster import cluster
from imgclust.joint import resolve_table
from imgclust.score import score

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
PARTS = ["effnet-lite0", "effnet-lite2"]
JOINT = "+".join(PARTS)
K = {"imagenette-val": 10, "cifar10-test": 10}


def ensure_cache(name: str) -> Path:
    """The set's cache with both encoders' rows, embedding a missing encoder only: rows already there are
    taken as they are (the effnet-lite0 rows came from an older cache without content hashes, whose
    files' mtimes have changed since, so ``embed`` would embed them all again)."""
    cache = HERE / "results" / f"{name}-effnet-lite.h5"
    for part in PARTS:
        if not Cache(cache).exists() or part not in Cache(cache).encoders():
            imgclust.embed([DATA / name], encoder=part, cache=cache, labels="folder", device="cpu")
    rows = len(Cache(cache).rows(resolve_table(Cache(cache), JOINT)))
    print(f"[{name}] {rows} images in the joint space", flush=True)
    return cache


def fresh_copy(cache: Path, folder: Path) -> Path:
    """A copy of the cache (index and bulk folder) without any stored reduction, so UMAP runs anew."""
    target = folder / cache.name
    shutil.rmtree(target.with_name(target.name + ".d"), ignore_errors=True)
    shutil.copyfile(cache, target)
    shutil.copytree(cache.with_name(cache.name + ".d"), target.with_name(target.name + ".d"))
    copy = Cache(target)
    stored = [name for enc in copy.encoders() for kind in ("reductions", "runs") for name in copy.list_groups(enc, kind)]
    if stored:
        copy.remove_results(stored)
    return target


def add_combination(cache: Path, name: str, transform) -> str:
    """Store ``transform(part embeddings)`` of the joint table's rows as encoder table ``name`` (benchmark only)."""
    store = Cache(cache)
    index = store.read_index(JOINT)
    dims = store.info(JOINT)["part_dims"]
    parts = []
    for part in PARTS:
        where = {p: i for i, p in enumerate(store.read_index(part).paths)}
        parts.append(store.read_embeddings(part)[[where[p] for p in index.paths]])
    vectors = transform(parts).astype(np.float32)
    assert vectors.shape[1] == sum(dims)
    with store.writer():
        store.write_rows(name, {"encoder": name, "family": "benchmark", "architecture": name, "weights": "",
                                "embedding_dim": vectors.shape[1], "identity": {"combination": name}},
                         NewRows(list(index.paths), index.sizes, index.mtimes, list(index.labels), list(index.hashes), vectors),
                         failures=Failures.empty())
    return name


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)


COMBINATIONS = {
    "raw side by side": lambda parts: np.hstack(parts),
    "z-scored side by side": lambda parts: np.hstack([zscore(p) for p in parts]),
}


def one(cache: Path, encoder: str, method: str, k: int, seed: int, label: str | None = None) -> dict:
    started = time.perf_counter()
    run = cluster(cache, encoder, method, k, random_state=seed, device="cpu" if method == "turtle" else None)
    seconds = time.perf_counter() - started
    s = score(cache, run.run_id, encoder).scores
    return {"encoder": label or encoder, "method": method, "seed": seed, "ami": s.ami, "accuracy": s.accuracy,
            "seconds": round(seconds, 2), "cluster_seconds": run.seconds, "clusters": run.n_clusters,
            "n_samples": run.n_samples, "params": run.params, "torch_threads": torch.get_num_threads()}


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["method"], r["encoder"]), []).append(r)
    out = []
    for (name, method, encoder), rs in groups.items():
        entry = {"set": name, "method": method, "encoder": encoder, "seeds": [r["seed"] for r in rs]}
        for key in ("ami", "accuracy", "seconds"):
            values = np.array([r[key] for r in rs], float)
            entry[key] = float(values.mean())
            entry[key + "_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        entry["seconds_median"] = float(np.median([r["seconds"] for r in rs]))
        out.append(entry)
    return out


def markdown(summary: list[dict]) -> str:
    lines = ["| set | method | space | AMI ×100 | accuracy % | seconds (median) |", "|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['set']} | {e['method']} | {e['encoder']} | {100 * e['ami']:.1f} ± {100 * e['ami_sd']:.1f} "
                     f"| {100 * e['accuracy']:.1f} ± {100 * e['accuracy_sd']:.1f} | {e['seconds_median']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["imagenette-val", "cifar10-test"])
    parser.add_argument("--methods", nargs="+", default=["agglomerative", "turtle"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--combinations", action="store_true", help="agglomerative on other combinations of the parts")
    parser.add_argument("--out", default="multi_encoder")
    parser.add_argument("--from-json", type=Path, help="print the tables of a saved run's JSON again, run nothing")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on the busy shared 2-core box one thread trains faster than two)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.from_json:
        print(markdown(summarise(json.loads(args.from_json.read_text())["rows"])))
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=HERE / "results") as tmp:
        for name in args.sets:
            source = ensure_cache(name)
            for seed in args.seeds:
                cache = fresh_copy(source, Path(tmp))
                if args.combinations:
                    spaces = [(add_combination(cache, label, f), label) for label, f in COMBINATIONS.items()]
                    spaces.append((JOINT, f"{JOINT} (l2 side by side)"))
                    todo = [("agglomerative", enc, label) for enc, label in spaces]
                else:
                    todo = [(m, enc, None) for m in args.methods for enc in [*PARTS, JOINT]]
                for method, encoder, label in todo:
                    row = {"set": name, **one(cache, encoder, method, K[name], seed, label)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    summary = summarise(rows)
    table = markdown(summary)
    print(table)
    (HERE / "results" / f"{args.out}.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    (HERE / "results" / f"{args.out}.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
