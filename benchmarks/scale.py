"""The default pipeline at scale: wall time, peak memory and AMI of ``imgclust cluster`` and ``score``.

Caches of N rows are built with ``imgclust import`` from real embeddings: the effnet-lite0
embeddings of ``../shared/data/imagenette-val`` and ``cifar10-test`` (20 classes, 13,925 rows,
embedded beforehand with ``imgclust embed``), each new row a randomly chosen real row plus
Gaussian noise of ``--noise`` per dimension (its class is the real row's; the script reports how
often the noisy row's nearest real row still has that class). For each N it runs, as separate
processes exactly as a user would:

* ``imgclust cluster CACHE --n-clusters 20 --json`` (reduce with UMAP, agglomerative), and
* ``imgclust score CACHE --json`` (silhouette and AMI against the imported labels),

timing each and reading its peak RSS from ``/usr/bin/time``. The real rows themselves are run the
same way (the reference AMI). At the sizes of ``--compare-exact`` (where the exact tree fits) it
also clusters the same reduction on the tree agglomerative builds at scale (``--param exact_rows=2``)
and reports the ARI between the two and both AMIs. With ``--auto`` it then removes the run's stored reduction and runs
``cluster --n-clusters auto`` and ``score`` the same way (the label-free K from the same start). Writes
``benchmarks/results/scale.json``::

    python benchmarks/scale.py --sizes 20000 100000 --compare-exact 20000 --workdir /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imgclust.cache import Cache  # noqa: E402
from imgclust.cluster import load_run  # noqa: E402

SOURCES = ("imagenette-val", "cifar10-test")
ENCODER = "effnet-lite0"


def real_rows(results: Path) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and class names of both sets, classes prefixed by their set."""
    xs, ys = [], []
    for name in SOURCES:
        cache = Cache(results / f"{name}-{ENCODER}.h5")
        index = cache.read_index(ENCODER)
        xs.append(cache.read_embeddings(ENCODER))
        ys.extend(f"{name}/{Path(p).parent.name}" for p in index.paths)
    return np.concatenate(xs).astype(np.float32), np.array(ys)


def build(workdir: Path, n: int, x: np.ndarray, y: np.ndarray, noise: float, seed: int,
          row_paths=None) -> tuple[Path, float]:
    """A cache of n rows imported with ``imgclust import``; returns it and the class-kept fraction.

    ``row_paths(src)`` names the new rows from the real rows they were made from (``src[i]`` is row i's);
    by default they are ``row-NNNNNNNN.jpg``, names of no file."""
    cache = workdir / f"scale-{n}.h5"
    if cache.exists():
        return cache, float("nan")
    rng = np.random.default_rng(seed)
    if n == len(x):
        src, rows = np.arange(n), x
        np.save(workdir / f"vectors-{n}.npy", rows)
    else:
        src = rng.integers(0, len(x), n)
        # written a block at a time (the same values as one draw: the generator's stream is consumed in order)
        rows = np.lib.format.open_memmap(workdir / f"vectors-{n}.npy", "w+", np.float32, (n, x.shape[1]))
        for start in range(0, n, 65536):
            stop = min(n, start + 65536)
            rows[start:stop] = x[src[start:stop]] + rng.normal(0.0, noise, (stop - start, x.shape[1])).astype(np.float32)
        rows.flush()
    names = row_paths(src) if row_paths is not None else (f"row-{i:08d}.jpg" for i in range(n))
    (workdir / f"paths-{n}.txt").write_text("".join(f"{name}\n" for name in names))
    (workdir / f"labels-{n}.txt").write_text("\n".join(y[src]) + "\n")
    subprocess.run([sys.executable, "-m", "imgclust", "import", str(workdir / f"vectors-{n}.npy"),
                    "--paths", str(workdir / f"paths-{n}.txt"), "--labels", str(workdir / f"labels-{n}.txt"),
                    "-e", ENCODER, "--cache", str(cache), "-q"], check=True)
    (workdir / f"vectors-{n}.npy").unlink()
    probe = rng.choice(n, size=min(n, 2000), replace=False)
    from imgclust.knn import neighbours_of

    nearest, _, _ = neighbours_of(x, rows[probe], 1)
    kept = float((y[nearest[:, 0]] == y[src[probe]]).mean())
    return cache, kept


def write_report(results: Path, name: str, report: dict) -> None:
    """Write ``report`` as ``results/<name>.json`` and say where."""
    out = results / f"{name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def timed(args: list[str], timeout: float | None = None) -> tuple[dict, float, float]:
    """Run ``python -m imgclust ARGS`` under /usr/bin/time: (its JSON, seconds, peak RSS in GiB).

    Raises SystemExit with the error when it fails, or when it runs past ``timeout`` seconds (then killed).
    """
    started = time.perf_counter()
    # its own session, so that a timeout stops imgclust too, not only /usr/bin/time
    child = subprocess.Popen(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "imgclust", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise SystemExit(f"imgclust {' '.join(args)} ran past {timeout:.0f} s and was stopped") from None
    proc = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"imgclust {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return json.loads(proc.stdout), seconds, peak_kib / 2**20


def run_size(cache: Path, n_clusters: str, extra: list[str]) -> dict:
    run, cluster_s, cluster_gib = timed(["cluster", str(cache), "--n-clusters", n_clusters, "--json", "-q", *extra])
    scores, score_s, score_gib = timed(["score", str(cache), "--json", "-q"])
    flat = scores.get("scores", scores)
    return {"cluster_seconds": round(cluster_s, 1), "cluster_peak_gib": round(cluster_gib, 2),
            "score_seconds": round(score_s, 1), "score_peak_gib": round(score_gib, 2),
            "ami": flat.get("ami"), "silhouette": flat.get("silhouette"), "n_clusters": run.get("n_clusters"),
            "fit_path": run.get("fit_path"), "run_id": run.get("run_id"), "reduction_fit": run.get("reduction_fit")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000, 1000000])
    parser.add_argument("--n-clusters", default="20")
    parser.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise per dimension")
    parser.add_argument("--compare-exact", type=int, nargs="*", default=[20000])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="scale", help="name of the JSON written under --results")
    parser.add_argument("--auto", action="store_true",
                        help="also run --n-clusters auto, its reduction removed first so that UMAP runs again")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    x, y = real_rows(args.results)
    report = {"machine": platform.processor() or platform.machine(), "noise": args.noise, "rows": []}
    for n in [len(x), *args.sizes]:
        cache, kept = build(args.workdir, n, x, y, args.noise, args.seed)
        row = {"n": n, "real": n == len(x), "class_kept": kept, **run_size(cache, args.n_clusters, [])}
        if n in args.compare_exact:
            from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

            exact_labels = load_run(cache, row["run_id"]).labels
            micro, seconds, gib = timed(["cluster", str(cache), "--n-clusters", args.n_clusters, "--json", "-q",
                                         "--param", "exact_rows=2"])
            scalable = load_run(cache, micro["run_id"]).labels
            truth = Cache(cache).read_index(ENCODER).labels
            row["scalable_tree"] = {"seconds": round(seconds, 1), "peak_gib": round(gib, 2),
                                 "fit_path": micro.get("fit_path"),
                                 "ari_vs_exact": round(float(adjusted_rand_score(exact_labels, scalable)), 4),
                                 "ami_exact": round(float(adjusted_mutual_info_score(truth, exact_labels)), 4),
                                 "ami_scalable": round(float(adjusted_mutual_info_score(truth, scalable)), 4)}
        if args.auto:  # from the same start as the run above: the reduction is computed again
            space = load_run(cache, row["run_id"]).space
            subprocess.run([sys.executable, "-m", "imgclust", "cache", "rm", str(cache), space, "--json"], check=True,
                           stdout=subprocess.DEVNULL, cwd=ROOT)
            row["auto"] = run_size(cache, "auto", [])
        print(json.dumps(row), flush=True)
        report["rows"].append(row)
    write_report(args.results, args.out, report)


if __name__ == "__main__":
    main()
