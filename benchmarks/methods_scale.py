"""The clustering methods at scale: wall time, peak RSS and AMI of ``imgclust cluster --method M`` at N rows.

Builds the cache as :mod:`benchmarks.scale` does (``imgclust import`` of real effnet-lite0 embeddings of
imagenette-val and cifar10-test plus small Gaussian noise, 20 classes; its :func:`scale.build`), reduces
it once with ``imgclust reduce --method R --dims 50`` (timed; ``--reduction``, UMAP by default: the methods
on the reduced space reuse the stored reduction),
then runs, as separate processes, ``imgclust cluster CACHE --method M [--n-clusters K] --json`` for each
method (``--n-clusters`` when the method takes K) under ``/usr/bin/time``, and scores the labels against
the imported classes (AMI; noise -1 counts as one more cluster, as ``imgclust score`` does). A method that
refuses at preflight is reported with its one-line error. Item 8's bound: at most 5 minutes and 4 GB.
``--param KEY=VALUE`` passes a parameter to every method (e.g. the trained heads' ``train_rows``); the
reduction is skipped when every method clusters the raw embeddings (the trained heads).
Writes ``benchmarks/results/<out>.json``::

    nice -n 5 python benchmarks/methods_scale.py --n 100000 --workdir /tmp/methods12 \\
        --sources /tmp/methods12/src --methods hdbscan spectral scan temi
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import ENCODER, ROOT, build, real_rows, timed, write_report  # noqa: E402

from imgclust.cache import Cache  # noqa: E402
from imgclust.cluster import load_run  # noqa: E402
from imgclust.clusterers import CLUSTERERS  # noqa: E402


def run_method(cache: Path, method: str, n_clusters: str, truth: np.ndarray, timeout: float, reduction: str,
               params: list[str]) -> dict:
    from sklearn.metrics import adjusted_mutual_info_score

    cls = CLUSTERERS.get(method)
    takes_k = cls.n_clusters_mode != "unused"
    args = ["cluster", str(cache), "--method", method, "--json", "-q", *(["--n-clusters", n_clusters] if takes_k else []),
            *(["--reduction", reduction, "--dims", "50"] if cls.input_space == "reduced" else []),
            *[arg for p in params for arg in ("--param", p)]]
    row = {"method": method, "command": "imgclust " + " ".join(args), "load_before": os.getloadavg()[0]}
    try:
        run, seconds, gib = timed(args, timeout)
    except SystemExit as exc:  # a refusal at preflight, a failure or a timeout: its message is the result
        row["error"] = str(exc).strip().splitlines()[-1][:300]
        return row
    labels = load_run(cache, run["run_id"]).labels
    row.update(seconds=round(seconds, 1), peak_gib=round(gib, 2), n_clusters=run.get("n_clusters"),
               noise=int((labels < 0).sum()), fit_path=run.get("fit_path"),
               ami=round(float(adjusted_mutual_info_score(truth, labels)), 4),
               within_bound=seconds <= 300 and gib * 2**30 <= 4e9, load_after=os.getloadavg()[0])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--methods", nargs="+", default=["hdbscan", "spectral", "scan", "temi"])
    parser.add_argument("--n-clusters", default="20")
    parser.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise per dimension")
    parser.add_argument("--sources", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder with the effnet-lite0 caches of imagenette-val and cifar10-test")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900, help="stop a method after this many seconds")
    parser.add_argument("--reduction", default="umap",
                        help="the reduced space's method (50 dims) for the methods that cluster it (umap, pca)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a method parameter passed to every method (repeatable), e.g. train_rows=20000")
    parser.add_argument("--out", default="methods_scale", help="name of the JSON written under --results")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    x, y = real_rows(args.sources)
    cache, kept = build(args.workdir, args.n, x, y, args.noise, args.seed)
    truth = Cache(cache).read_index(ENCODER).labels
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "n": args.n,
              "noise": args.noise, "class_kept": kept, "params": args.param, "rows": []}
    if all(CLUSTERERS.get(m).input_space != "reduced" for m in args.methods):
        report["reduce"] = "not run: every method clusters the raw embeddings"
    else:
        report["reduce"] = reduce_once(cache, args.reduction, args.timeout)
    print(json.dumps({"reduce": report["reduce"]}), flush=True)
    for method in args.methods:
        row = run_method(cache, method, args.n_clusters, truth, args.timeout, args.reduction, args.param)
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
    write_report(args.results, args.out, report)


def reduce_once(cache: Path, reduction: str, timeout: float) -> dict:
    """``imgclust reduce`` once (timed): the methods on the reduced space then reuse the stored reduction."""
    try:
        _, seconds, gib = timed(["reduce", str(cache), "--method", reduction, "--dims", "50", "--json", "-q"], timeout)
    except SystemExit as exc:
        return {"error": str(exc).strip().splitlines()[-1][:300]}
    return {"method": reduction, "seconds": round(seconds, 1), "peak_gib": round(gib, 2)}


if __name__ == "__main__":
    main()
