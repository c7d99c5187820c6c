"""Exports at scale: ``imgclust export --format csv,html`` on a run of a million images, and how fast its page opens.

The cache is built as ``benchmarks/scale.py`` builds its caches (its helpers are imported): N rows
imported with ``imgclust import``, each a real effnet-lite0 embedding of ``../shared/data/
imagenette-val`` or ``cifar10-test`` plus Gaussian noise, with its class as label. Each row's path is
a real image file: a symbolic link, under ``--workdir``/images, to the image its embedding came from
(the imported paths must be distinct, and the gallery's thumbnails need files to read).

It then stores a run cheaply but really (``imgclust cluster CACHE --method kmeans -k 20 --reduction pca
--dims 50``), and times, each as its own process under ``/usr/bin/time`` (wall time, peak RSS):

* ``imgclust export CACHE --format csv,html --out OUT`` (the score, the CSV files and the gallery),
  and ``imgclust score CACHE`` alone (the part of the export that is scoring);
* the gallery's opening in headless Chromium (Playwright driving the system's Chromium): the time
  to the ``load`` event and to the first contentful paint, from the page's own navigation timing,
  and the wall time of ``page.goto`` to ``load``; the median of ``--opens`` opens, each a new page;
* the same for a gallery of the same rows split into 10,000 clusters (random labels, written with
  ``write_html`` in this process): the page must stay bounded with many clusters.

Writes ``benchmarks/results/export_scale.json``::

    python benchmarks/export_scale.py --n 1000000 --workdir /tmp/export-scale

Needs ``pip install "imgclust[bench]"`` (Playwright) and a Chromium (Debian: ``apt-get install chromium``); the page
timings are skipped, and said so, without them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import ENCODER, SOURCES, build, real_rows, timed  # noqa: E402

from imgclust.cache import Cache  # noqa: E402

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def real_paths(results: Path) -> np.ndarray:
    """The image file of each real row, in the order of :func:`scale.real_rows`."""
    return np.concatenate([Cache(results / f"{name}-{ENCODER}.h5").read_index(ENCODER).paths for name in SOURCES])


def linked_paths(workdir: Path, files: np.ndarray):
    """``row_paths`` for :func:`scale.build`: row i becomes a link to the image of its real row."""
    def name(src: np.ndarray) -> list[str]:
        links = []
        for i, s in enumerate(src.tolist()):
            folder = workdir / "images" / f"{i // 10000:04d}"
            if i % 10000 == 0:
                folder.mkdir(parents=True, exist_ok=True)
            link = folder / f"{i:07d}{Path(files[s]).suffix}"
            if not os.path.lexists(link):
                os.symlink(files[s], link)
            links.append(str(link))
        return links
    return name


def chromium() -> str | None:
    return next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)


def open_times(index: Path, opens: int) -> dict:
    """Median seconds to ``load`` and to the first contentful paint over ``opens`` fresh pages."""
    from playwright.sync_api import sync_playwright

    load, paint, wall = [], [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        for _ in range(opens):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            started = time.perf_counter()
            page.goto(index.resolve().as_uri(), wait_until="load", timeout=120_000)
            wall.append(time.perf_counter() - started)
            page.wait_for_function("performance.getEntriesByName('first-contentful-paint').length > 0", timeout=60_000)
            timing = page.evaluate("""() => {
                const nav = performance.getEntriesByType('navigation')[0];
                const fcp = performance.getEntriesByName('first-contentful-paint')[0];
                return {load: nav.loadEventEnd, paint: fcp.startTime,
                        tiles: document.querySelectorAll('figure.tile').length,
                        sections: document.querySelectorAll('section.cluster').length};
            }""")
            load.append(timing["load"] / 1000)
            paint.append(timing["paint"] / 1000)
            page.close()
        browser.close()
    return {"load_seconds": round(statistics.median(load), 3), "first_paint_seconds": round(statistics.median(paint), 3),
            "goto_wall_seconds": round(statistics.median(wall), 3), "opens": opens,
            "tiles": timing["tiles"], "sections": timing["sections"],
            "html_bytes": index.stat().st_size}


def many_clusters_page(cache: Path, out: Path, n_clusters: int) -> tuple[Path, float]:
    """A gallery of the cache's rows split at random into ``n_clusters`` clusters, and its write time."""
    from imgclust.export._html import write_html
    from imgclust.export._records import ClusterSummary, RunTable

    index = Cache(cache).read_index(ENCODER)
    rng = np.random.default_rng(0)
    n = len(index.paths)
    clusters = rng.integers(0, n_clusters, n)
    table = RunTable(index.paths, clusters, rng.uniform(-0.2, 0.8, n), rng.gamma(2.0, 1.0, n), index.labels)
    sizes = np.bincount(clusters, minlength=n_clusters)
    sums = [ClusterSummary(k, int(sizes[k]), 0.3, str(index.paths[k]), None) for k in range(n_clusters)]
    started = time.perf_counter()
    page = write_html(out, table, sums, {"n_samples": n, "n_clusters": n_clusters}, f"{n:,} rows, {n_clusters:,} clusters")
    return page, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="rows of the cache")
    parser.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise per dimension")
    parser.add_argument("--workdir", type=Path, required=True, help="holds (and on a rerun reuses) the cache and links")
    parser.add_argument("--real", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder of the real caches {imagenette-val,cifar10-test}-effnet-lite0.h5")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--opens", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "n": args.n,
              "load_before": os.getloadavg()}

    started = time.perf_counter()
    x, y = real_rows(args.real)
    cache, _ = build(args.workdir, args.n, x, y, args.noise, args.seed,
                     row_paths=linked_paths(args.workdir, real_paths(args.real)))
    report["build_seconds"] = round(time.perf_counter() - started, 1)
    del x, y
    print(f"cache {cache} ({args.n:,} rows) in {report['build_seconds']} s", flush=True)

    runs = Cache(cache).list_groups(ENCODER, "runs")
    if not any(not a["stale"] for a in runs.values()):
        run, seconds, gib = timed(["cluster", str(cache), "--method", "kmeans", "-k", "20", "--reduction", "pca",
                                   "--dims", "50", "--json", "-q"])
        report["cluster"] = {"seconds": round(seconds, 1), "peak_gib": round(gib, 2), "run_id": run["run_id"],
                             "command": "imgclust cluster CACHE --method kmeans -k 20 --reduction pca --dims 50"}
        print(f"cluster: {seconds:.1f} s, peak {gib:.2f} GiB", flush=True)

    out = args.workdir / "export"
    shutil.rmtree(out, ignore_errors=True)
    done, seconds, gib = timed(["export", str(cache), "--format", "csv,html", "--out", str(out), "--json", "-q"])
    report["export"] = {"seconds": round(seconds, 1), "peak_gib": round(gib, 2),
                        "command": "imgclust export CACHE --format csv,html --out OUT",
                        "files": {Path(p).name: os.path.getsize(p) for e in done["exports"] for p in e["paths"]},
                        "thumbnails": len(list((out / "gallery" / "thumbs").iterdir()))}
    print(f"export csv,html: {seconds:.1f} s, peak {gib:.2f} GiB, {report['export']['thumbnails']} thumbnails", flush=True)

    # The export scores the run first (silhouette, AMI, ...): the same work timed alone, to tell it from the writing.
    scored, seconds, gib = timed(["score", str(cache), "--json", "-q"])
    report["score"] = {"seconds": round(seconds, 1), "peak_gib": round(gib, 2), "command": "imgclust score CACHE",
                       "silhouette_exact": scored["scores"].get("silhouette_exact"), "ami": scored["scores"].get("ami")}
    report["export"]["seconds_beyond_score"] = round(report["export"]["seconds"] - seconds, 1)
    print(f"score alone: {seconds:.1f} s, peak {gib:.2f} GiB", flush=True)

    many, write_seconds = many_clusters_page(cache, args.workdir / "many-clusters", 10_000)
    report["html_10000_clusters"] = {"write_seconds": round(write_seconds, 1)}
    if chromium() is None:
        report["open"] = "not measured: no Chromium on this machine"
    else:
        try:
            report["open"] = open_times(out / "gallery" / "index.html", args.opens)
            report["html_10000_clusters"].update(open_times(many, args.opens))
        except ImportError:
            report["open"] = "not measured: playwright is not installed (pip install \"imgclust[bench]\")"
    print(f"open: {report['open']}", flush=True)
    print(f"10,000 clusters: {report['html_10000_clusters']}", flush=True)
    report["load_after"] = os.getloadavg()
    target = args.results / "export_scale.json"
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
