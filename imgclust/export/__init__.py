"""``export``: a stored run as files people use.

Formats: ``csv``, ``json``, ``parquet`` (one row per image: path, cluster, silhouette, distance to
the cluster centre, label; plus a per-cluster summary), ``folders`` (one folder per cluster of
symlinks, hard links or copies -- originals are never moved or changed), ``html`` (an offline
gallery) and ``plot`` (2-D UMAP scatter and silhouette plot, PNG).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .._json import json_safe
from ..errors import ImgclustError, UsageError
from ..score import RunReport, score
from ..manifest import Manifest
from ._records import ClusterSummary, ImageRecord

FORMATS = ("csv", "json", "parquet", "folders", "html", "plot")
# What each format writes in the export folder (a folder for ``folders``; the gallery's thumbnails are
# recorded as they are made).
TARGETS = {"csv": ["assignments.csv", "clusters.csv"], "json": ["assignments.json"],
           "parquet": ["assignments.parquet", "clusters.parquet"], "folders": ["clusters"],
           "html": ["gallery/index.html"], "plot": ["umap_scatter.png", "silhouette.png"]}
LINK_MODES = ("symlink", "hardlink", "copy")


@dataclass
class ExportResult:
    format: str
    paths: list[str]

    def to_dict(self) -> dict:
        return {"format": self.format, "paths": self.paths}


def build_records(report: RunReport, X: np.ndarray) -> tuple[list[ImageRecord], list[ClusterSummary]]:
    """Per-image and per-cluster records of a scored run; ``X`` is the space the run clustered."""
    labels = report.run.labels
    silhouettes = report.scores.silhouette_samples
    truth = report.labels_true
    distances = np.zeros(len(labels))
    clusters = []
    for cluster in sorted(set(labels.tolist())):
        members = np.flatnonzero(labels == cluster)
        centre = X[members].mean(0)
        distances[members] = np.linalg.norm(X[members] - centre, axis=1)
        sil = silhouettes[members] if silhouettes is not None else None
        mean_sil = float(np.nanmean(sil)) if sil is not None and np.isfinite(sil).any() else None
        counts = dict(Counter(str(t) for t in truth[members] if t)) if truth is not None else None
        clusters.append(ClusterSummary(int(cluster), int(len(members)), mean_sil,
                                       str(report.paths[members[np.argmin(distances[members])]]), counts))
    images = []
    for i, (path, cluster) in enumerate(zip(report.paths, labels)):
        sil = None if silhouettes is None or not np.isfinite(silhouettes[i]) else float(silhouettes[i])
        label = str(truth[i]) if truth is not None and truth[i] else None
        images.append(ImageRecord(str(path), int(cluster), sil, float(distances[i]), label))
    return images, clusters


def export(
    cache: str | os.PathLike,
    run: str | None = None,
    format: str = "csv",
    out: str | os.PathLike | None = None,
    *,
    encoder: str | None = None,
    labels: str | None = None,
    link: str = "symlink",
    force: bool = False,
    report: RunReport | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write run ``run`` (latest by default) of ``cache`` in ``format`` to ``out``.

    ``out`` is a folder (created), or ``-`` for csv/json on stdout. Existing files are not overwritten
    without ``force``, and a file imgclust did not write is never overwritten or removed: the folder's
    manifest (:mod:`imgclust.manifest`) records what every export wrote there.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown export format '{format}'", hint=f"choose from {', '.join(FORMATS)}")
    if link not in LINK_MODES:
        raise UsageError(f"unknown --link mode '{link}'", hint=f"choose from {', '.join(LINK_MODES)}")
    if out == "-" and format not in ("csv", "json"):
        raise UsageError(f"--out - (stdout) works for csv and json, not {format}", hint="give a folder with --out")
    report = report or score(cache, run, encoder, labels)
    from ..cluster import run_space

    X = run_space(report.cache, report.run)
    images, clusters = build_records(report, X)
    if out == "-":
        sys.stdout.write(_csv_text(images) if format == "csv" else json.dumps(_json_doc(report, images, clusters), indent=2) + "\n")
        return ExportResult(format, ["-"])
    folder = Path(out) if out is not None else Path(f"{Path(report.cache).stem}-{report.run.run_id}")
    writers = {"csv": _write_csv, "json": _write_json, "parquet": _write_parquet, "folders": _write_folders,
               "html": _write_html, "plot": _write_plot}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {folder}: {exc.strerror}", hint="choose a writable --out") from None
    paths = writers[format](Manifest(folder), report, images, clusters, X, force=force, link=link, on_progress=on_progress)
    return ExportResult(format, [str(p) for p in paths])


def check_destination(folder: str | os.PathLike, formats, force: bool = False) -> None:
    """Refuse, before any long work, a destination the exports ``formats`` could not write into: one
    holding a file imgclust did not write, or an earlier result when ``force`` is off."""
    manifest = Manifest(folder)
    manifest.check([manifest.folder / name for fmt in formats for name in TARGETS.get(fmt, [])], force)


def _claim(manifest: Manifest, format: str, force: bool) -> list[Path]:
    """The files ``format`` writes in the export folder, checked (see :meth:`Manifest.claim`) and recorded."""
    targets = [manifest.folder / name for name in TARGETS[format]]
    manifest.claim(targets, force)
    manifest.record(targets)
    return targets


def _atomic_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _csv_text(rows) -> str:
    buffer = io.StringIO()
    dicts = [r.to_dict() for r in rows]
    writer = csv.DictWriter(buffer, fieldnames=list(dicts[0]) if dicts else ["path"], lineterminator="\n")
    writer.writeheader()
    for d in dicts:
        writer.writerow({k: (json.dumps(v) if isinstance(v, dict) else ("" if v is None else v)) for k, v in d.items()})
    return buffer.getvalue()


def _json_doc(report: RunReport, images, clusters) -> dict:
    return json_safe({**report.to_dict(), "clusters": [c.to_dict() for c in clusters], "images": [i.to_dict() for i in images]})


def _write_csv(manifest, report, images, clusters, X, force, **_):
    targets = _claim(manifest, "csv", force)
    return [_atomic_text(targets[0], _csv_text(images)), _atomic_text(targets[1], _csv_text(clusters))]


def _write_json(manifest, report, images, clusters, X, force, **_):
    [target] = _claim(manifest, "json", force)
    return [_atomic_text(target, json.dumps(_json_doc(report, images, clusters), indent=2, ensure_ascii=False) + "\n")]


def _write_parquet(manifest, report, images, clusters, X, force, **_):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImgclustError("parquet export needs pyarrow", hint='pip install "imgclust[parquet]"') from None
    targets = _claim(manifest, "parquet", force)
    rows = [i.to_dict() for i in images]
    pq.write_table(pa.Table.from_pylist(rows), targets[0])
    summary = [{**c.to_dict(), "label_counts": json.dumps(c.label_counts) if c.label_counts else None} for c in clusters]
    pq.write_table(pa.Table.from_pylist(summary), targets[1])
    return targets


def _write_folders(manifest, report, images, clusters, X, force, link, **_):
    [root] = _claim(manifest, "folders", force)  # refuses a folder holding anything imgclust did not put there
    width = max(1, len(str(max((c.cluster for c in clusters), default=0))))
    targets, taken = [], set()
    for index, record in enumerate(images):
        name = "noise" if record.cluster < 0 else f"cluster-{record.cluster:0{width}d}"
        target = root / name / os.path.basename(record.path)
        if target in taken:  # two images with one name: keep both
            target = root / name / f"{index:06d}-{os.path.basename(record.path)}"
        taken.add(target)
        targets.append(target)
    manifest.record(targets)  # before any is made: a killed export leaves nothing unaccounted for
    for record, target in zip(images, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if link == "symlink":
                os.symlink(os.path.abspath(record.path), target)
            elif link == "hardlink":
                os.link(record.path, target)
            else:
                shutil.copy2(record.path, target)
        except OSError as exc:
            raise ImgclustError(f"cannot {link} {record.path} into {target.parent}: {exc.strerror}",
                                hint="hard links need the same filesystem; try --link symlink or --link copy") from None
    return [root]


def _write_html(manifest, report, images, clusters, X, force, on_progress=None, **_):
    from ._html import write_html

    _claim(manifest, "html", force)
    scores = {k: v for k, v in report.scores.to_dict().items()
              if k in ("n_samples", "n_clusters", "n_noise", "silhouette", "ami", "nmi", "ari", "accuracy", "bcubed_f", "pairwise_f")}
    scores["silhouette_space"] = report.silhouette_space
    title = f"{report.run.method} {report.run.run_id} ({report.run.encoder})"
    return [write_html(manifest.folder / "gallery", images, clusters, scores, title, on_progress=on_progress,
                       on_write=manifest.record, selection=report.run.selection)]


def _write_plot(manifest, report, images, clusters, X, force, **_):
    from ._plot import write_plots

    _claim(manifest, "plot", force)
    silhouettes = report.scores.silhouette_samples
    if silhouettes is None:
        silhouettes = np.full(len(images), np.nan)
    title = f"{report.run.method} {report.run.run_id} ({report.run.encoder})"
    return write_plots(manifest.folder, embed_2d(X, seed=0), report.run.labels, silhouettes, title)


def embed_2d(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D UMAP of the run's space for the scatter plot (PCA for tiny inputs)."""
    if X.shape[1] <= 2:
        return np.pad(X, ((0, 0), (0, 2 - X.shape[1])))
    if len(X) < 10:
        from sklearn.decomposition import PCA

        return PCA(n_components=2).fit_transform(X)
    from ..reduce import fit_umap

    return fit_umap(X, n_components=2, n_neighbors=min(30, len(X) - 1), min_dist=0.1, random_state=seed)[1]
