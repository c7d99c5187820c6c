"""``export``: a stored run as files people use.

Formats: ``csv``, ``json``, ``jsonl``, ``parquet`` (one row per image: path, cluster, silhouette,
distance to the cluster centre, label, outlier score (:mod:`imgclust.outliers`); plus a per-cluster summary), ``folders`` (one folder per
cluster of symlinks, hard links or copies -- originals are never moved or changed), ``html`` (an
offline gallery showing a bounded number of images per cluster) and ``plot`` (2-D UMAP scatter and
silhouette plot of a sample, PNG). ``embeddings`` writes the cache's rows themselves (no run needed)
to a ``.parquet`` or ``.npy`` file (:mod:`imgclust.vectors`).

The row formats stream: the run is held as columns (:class:`RunTable`) and written
:data:`BLOCK_ROWS` rows at a time -- CSV and JSON lines a line per image, Parquet a row group per
block, and the single JSON document with its ``images`` list written an image at a time -- so their
memory does not grow with the number of images beyond the run's own arrays.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

import numpy as np

from .._json import json_safe
from ..errors import ImgclustError, ResourceError, UsageError
from .._atomic import replaced_atomically
from .._progress import Progress, stage
from ..score import RunReport, score
from ..manifest import Manifest
from ._map import DUPLICATE_GROUPS, MAP_MAX_POINTS, DuplicateGroups, MapPoints
from ._records import IMAGE_FIELDS, ClusterSummary, RunTable

FORMATS = ("csv", "json", "jsonl", "parquet", "folders", "html", "plot")  # of a run
ROW_FORMATS = ("embeddings", "paths")  # of the cache's rows themselves (paths: a run only to filter by cluster)
STDOUT_FORMATS = ("csv", "json", "jsonl")
# What each format writes in the export folder (a folder for ``folders``; the gallery's thumbnails are
# recorded as they are made).
TARGETS = {"csv": ["assignments.csv", "clusters.csv"], "json": ["assignments.json"],
           "jsonl": ["assignments.jsonl", "clusters.jsonl"],
           "parquet": ["assignments.parquet", "clusters.parquet"], "folders": ["clusters"],
           "html": ["gallery/index.html"], "plot": ["umap_scatter.png", "silhouette.png"]}
LINK_MODES = ("symlink", "hardlink", "copy")
BLOCK_ROWS = 65536  # rows a streaming writer holds as Python objects at once (and Parquet's row group)
HTML_PER_CLUSTER = 24  # images the gallery shows per cluster by default (see imgclust.export._html)
PLOT_MAX_POINTS = 50_000  # the scatter and silhouette plots draw a random sample of at most this many images


@dataclass
class ExportResult:
    format: str
    paths: list[str]

    def to_dict(self) -> dict:
        return {"format": self.format, "paths": self.paths}


def run_table(report: RunReport, X: np.ndarray,
              progress: Progress | None = None) -> tuple[RunTable, list[ClusterSummary]]:
    """The columns of a scored run and its per-cluster summaries; ``X`` is the space the run clustered;
    ``progress(stage, done, total)`` while the outlier scores' neighbour graph is made (:func:`outlier_column`).

    Cluster centres and distances are computed a block of rows at a time (a sparse one-hot product per
    block), so no copy of a cluster's rows is made.
    """
    from scipy import sparse

    labels = np.asarray(report.run.labels, np.int64)
    ids, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(ids), X.shape[1]))
    step = max(1024, 2**22 // max(1, X.shape[1]))  # float64 blocks of at most 32 MiB
    for start in range(0, len(labels), step):
        block = np.asarray(X[start:start + step], np.float64)
        onehot = sparse.csr_matrix((np.ones(len(block)), (inverse[start:start + step], np.arange(len(block)))),
                                   shape=(len(ids), len(block)))
        sums += onehot @ block
    sizes = np.bincount(inverse, minlength=len(ids))
    centres = sums / np.maximum(sizes, 1)[:, None]
    distances = np.empty(len(labels))
    for start in range(0, len(labels), step):
        block = np.asarray(X[start:start + step], np.float64)
        distances[start:start + step] = np.linalg.norm(block - centres[inverse[start:start + step]], axis=1)
    silhouettes = report.scores.silhouette_samples
    silhouettes = np.full(len(labels), np.nan) if silhouettes is None else np.asarray(silhouettes, np.float64)
    truth = report.labels_true
    table = RunTable(report.paths, labels, silhouettes, distances, truth, outlier_column(report, progress))
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    clusters = []
    for position, cluster in enumerate(ids.tolist()):
        members = order[bounds[position]:bounds[position + 1]]
        sil = silhouettes[members]
        mean_sil = float(np.nanmean(sil)) if np.isfinite(sil).any() else None
        counts = dict(Counter(str(t) for t in truth[members] if t)) if truth is not None else None
        clusters.append(ClusterSummary(int(cluster), int(len(members)), mean_sil,
                                       str(report.paths[members[np.argmin(distances[members])]]), counts))
    return table, clusters


def with_names(report: RunReport, clusters: list[ClusterSummary],
               vocabulary: str | os.PathLike | None = None) -> list[ClusterSummary]:
    """The clusters with their CLIP names (:mod:`imgclust.names`) when the run's encoder is a CLIP; unchanged for
    other encoders, and with a warning when the CLIP's weights are not available."""
    import warnings
    from dataclasses import replace

    from ..cache import Cache
    from ..names import cluster_names

    if Cache(report.cache).info(report.run.encoder).get("family") != "open_clip":
        return clusters
    named, why = cluster_names(report.cache, report.run.run_id, report.run.encoder, vocabulary=vocabulary)
    if named is None:
        warnings.warn(why, stacklevel=2)
        return clusters
    return [replace(c, names=named.label(c.cluster) or None) for c in clusters]


def outlier_column(report: RunReport, progress: Progress | None = None) -> np.ndarray:
    """Every image's outlier score (:mod:`imgclust.outliers`, on the run encoder's raw embeddings), in row order;
    ``progress(stage, done, total)`` while the embeddings are read and their graph made (the first time only:
    the graph is stored).

    When they cannot be computed in memory (no stored graph, and the raw embeddings are larger than the
    budget) the column is empty (NaN) and a warning says why: an optional column never stops an export.
    """
    import warnings

    from ..outliers import find_outliers, memory_shortfall

    short = memory_shortfall(report.cache, report.run.encoder)
    if short:
        warnings.warn(f"{short}: the outlier_score column is left empty (imgclust outliers computes them on a "
                      f"machine with more memory, and stores them for later exports)", stacklevel=2)
        return np.full(len(report.run.labels), np.nan)
    return find_outliers(report.cache, report.run.encoder, progress=progress).scores


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
    html_per_cluster: int | None = HTML_PER_CLUSTER,
    progress: Progress | None = None,
    clusters: Sequence[int] = (),
    outliers: bool = False,
    duplicates: bool = False,
    names: bool = False,
    vocabulary: str | os.PathLike | None = None,
) -> ExportResult:
    """Write run ``run`` (latest by default) of ``cache`` in ``format`` to ``out``.

    ``out`` is a folder (created), or ``-`` for csv, json or jsonl on stdout. Existing files are not
    overwritten without ``force``, and a file imgclust did not write is never overwritten or removed:
    the folder's manifest (:mod:`imgclust.manifest`) records what every export wrote there.
    ``html_per_cluster`` is how many images the gallery shows per cluster (None: all of them).
    ``progress(stage, done, total)`` reports the writing (stage ``export <format>``) and, the first time a
    run's outlier scores or duplicates are needed, the reading of the embeddings and their neighbour graph.
    ``format="paths"`` prints the paths of the images passing the filters ``clusters``, ``outliers`` and
    ``duplicates`` (:func:`imgclust.export._paths.select_paths`) one per line on stdout. With ``names``, a
    CLIP run's clusters carry names (:mod:`imgclust.names`) from ``vocabulary`` (default: the built-in one; its
    text embeddings take long on a CPU the first time, so names are asked for).
    """
    if format not in FORMATS + ROW_FORMATS:
        raise UsageError(f"unknown export format '{format}'", hint=f"choose from {', '.join(FORMATS + ROW_FORMATS)}")
    if link not in LINK_MODES:
        raise UsageError(f"unknown --link mode '{link}'", hint=f"choose from {', '.join(LINK_MODES)}")
    if html_per_cluster is not None and (isinstance(html_per_cluster, bool) or not isinstance(html_per_cluster, int)
                                         or html_per_cluster < 1):
        raise UsageError(f"--html-per-cluster must be a positive integer, got {html_per_cluster!r}",
                         hint=f"e.g. --html-per-cluster {HTML_PER_CLUSTER}")
    if (clusters or outliers or duplicates) and format != "paths":
        raise UsageError("--cluster, --outliers and --duplicates select paths", hint="add --format paths")
    if format == "paths":
        from ._paths import select_paths

        if out not in (None, "-"):
            raise UsageError("--format paths prints to stdout", hint="drop --out, or redirect: > paths.txt")
        selected = select_paths(cache, run, encoder, clusters=clusters, outliers=outliers, duplicates=duplicates,
                                progress=progress)
        sys.stdout.writelines(f"{p}\n" for p in selected)
        sys.stdout.flush()
        return ExportResult(format, ["-"])
    on_progress = stage(progress, f"export {format}")
    if format == "embeddings":
        from ..vectors import export_embeddings

        if out is None or out == "-":
            raise UsageError("--format embeddings writes a file", hint="give --out rows.parquet or --out rows.npy")
        return ExportResult(format, export_embeddings(cache, out, encoder, force=force, progress=on_progress))
    if out == "-" and format not in STDOUT_FORMATS:
        raise UsageError(f"--out - (stdout) works for {', '.join(STDOUT_FORMATS)}, not {format}",
                         hint="give a folder with --out")
    report = report or score(cache, run, encoder, labels)
    from ..cluster import run_space

    X = run_space(report.cache, report.run)
    table, clusters = run_table(report, X, progress)
    if names:
        clusters = with_names(report, clusters, vocabulary)
    if out == "-":
        _STREAMS[format](sys.stdout, report, table, clusters, on_progress)
        sys.stdout.flush()
        return ExportResult(format, ["-"])
    folder = Path(out) if out is not None else default_folder(report)
    writers = {"csv": _write_csv, "json": _write_json, "jsonl": _write_jsonl, "parquet": _write_parquet,
               "folders": _write_folders, "html": _write_html, "plot": _write_plot}
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {folder}: {exc.strerror}", hint="choose a writable --out") from None
    paths = writers[format](Manifest(folder), report, table, clusters, X, force=force, link=link,
                            on_progress=on_progress, progress=progress, per_cluster=html_per_cluster)
    return ExportResult(format, [str(p) for p in paths])


def default_folder(report: RunReport) -> Path:
    """Where an export without ``out`` writes: ``<cache name>-<run id>`` in the working folder."""
    return Path(f"{Path(report.cache).stem}-{report.run.run_id}")


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


def _atomic(path: Path, write: Callable[[IO[str]], None]) -> Path:
    """Stream ``write(file)`` into a temporary file beside ``path``, then put it in place: a killed
    export leaves the previous file (or none), never half of one."""
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        write(fh)
    return path


# --------------------------------------------------------------------------------------------------
# the row formats: one streaming writer each, used for files and for stdout alike


def _cell(value):
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value  # csv writes None as ""


def _blocks(table: RunTable, on_progress) -> Iterator[tuple[int, int]]:
    """The table's blocks of :data:`BLOCK_ROWS` rows, reporting each one written."""
    for start, stop in table.blocks(BLOCK_ROWS):
        yield start, stop
        if on_progress is not None:
            on_progress(stop, len(table))


def _stream_csv(fh: IO[str], report, table: RunTable, clusters, on_progress=None) -> None:
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(IMAGE_FIELDS)
    for start, stop in _blocks(table, on_progress):
        writer.writerows(table.rows(start, stop))


def _stream_cluster_csv(fh: IO[str], clusters: list[ClusterSummary]) -> None:
    dicts = [c.to_dict() for c in clusters]
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(list(dicts[0]) if dicts else ["cluster"])
    writer.writerows([_cell(v) for v in d.values()] for d in dicts)


def _stream_jsonl(fh: IO[str], report, table: RunTable, clusters, on_progress=None) -> None:
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    for start, stop in _blocks(table, on_progress):
        fh.writelines(dumps(dict(zip(IMAGE_FIELDS, row))) + "\n" for row in table.rows(start, stop))


def _stream_json(fh: IO[str], report, table: RunTable, clusters, on_progress=None) -> None:
    """One JSON document (``indent=2``): the run, its scores and clusters, then ``images`` written an
    image at a time -- the same text ``json.dumps(doc, indent=2)`` gives, never built in memory."""
    head = json.dumps(json_safe({**report.to_dict(), "clusters": [c.to_dict() for c in clusters], "images": []}),
                      indent=2, ensure_ascii=False)
    assert head.endswith('"images": []\n}')
    fh.write(head[:-len("[]\n}")])
    if len(table) == 0:
        fh.write("[]\n}\n")
        return
    fh.write("[")
    encode = json.JSONEncoder(ensure_ascii=False, indent=2).encode
    first = True
    for start, stop in _blocks(table, on_progress):
        for row in table.rows(start, stop):
            fh.write(("\n    " if first else ",\n    ") + encode(dict(zip(IMAGE_FIELDS, row))).replace("\n", "\n    "))
            first = False
    fh.write("\n  ]\n}\n")


_STREAMS = {"csv": _stream_csv, "json": _stream_json, "jsonl": _stream_jsonl}


def _write_csv(manifest, report, table, clusters, X, force, on_progress=None, **_):
    targets = _claim(manifest, "csv", force)
    return [_atomic(targets[0], lambda fh: _stream_csv(fh, report, table, clusters, on_progress)),
            _atomic(targets[1], lambda fh: _stream_cluster_csv(fh, clusters))]


def _write_json(manifest, report, table, clusters, X, force, on_progress=None, **_):
    [target] = _claim(manifest, "json", force)
    return [_atomic(target, lambda fh: _stream_json(fh, report, table, clusters, on_progress))]


def _write_jsonl(manifest, report, table, clusters, X, force, on_progress=None, **_):
    targets = _claim(manifest, "jsonl", force)
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    return [_atomic(targets[0], lambda fh: _stream_jsonl(fh, report, table, clusters, on_progress)),
            _atomic(targets[1], lambda fh: fh.writelines(dumps(c.to_dict()) + "\n" for c in clusters))]


def _write_parquet(manifest, report, table, clusters, X, force, on_progress=None, **_):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq  # noqa: F401  (installed with its parquet module)
    except ImportError:
        raise ImgclustError("parquet export needs pyarrow", hint='pip install "imgclust[parquet]"') from None
    targets = _claim(manifest, "parquet", force)
    schema = pa.schema([("path", pa.string()), ("cluster", pa.int64()), ("silhouette", pa.float64()),
                        ("distance", pa.float64()), ("label", pa.string()), ("outlier_score", pa.float64())])
    assert tuple(schema.names) == IMAGE_FIELDS

    def blocks():
        for start, stop in _blocks(table, on_progress):
            sil = table.silhouettes[start:stop]
            labels = (None if table.labels is None
                      else pa.array([str(v) if v else None for v in table.labels[start:stop]], pa.string()))
            yield pa.record_batch([
                pa.array([str(p) for p in table.paths[start:stop]], pa.string()),
                pa.array(table.clusters[start:stop]),
                pa.array(sil, mask=~np.isfinite(sil)),
                pa.array(table.distances[start:stop]),
                labels if labels is not None else pa.nulls(stop - start, pa.string()),
                (pa.array(table.outlier_scores[start:stop]) if table.outlier_scores is not None
                 else pa.nulls(stop - start, pa.float64())),
            ], schema=schema)

    _atomic_parquet(targets[0], schema, blocks())
    summary = [{**c.to_dict(), "label_counts": json.dumps(c.label_counts) if c.label_counts else None} for c in clusters]
    table_of_clusters = pa.Table.from_pylist(summary)
    _atomic_parquet(targets[1], table_of_clusters.schema, table_of_clusters.to_batches())
    return targets


def _atomic_parquet(path: Path, schema, batches) -> Path:
    """Parquet written a row group per batch into a temporary file, then put in place."""
    import pyarrow.parquet as pq

    with replaced_atomically(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return path


# --------------------------------------------------------------------------------------------------
# folders, gallery, plots


def _write_folders(manifest, report, table, clusters, X, force, link, **_):
    [root] = _claim(manifest, "folders", force)  # refuses a folder holding anything imgclust did not put there
    width = max(1, len(str(max((c.cluster for c in clusters), default=0))))
    targets, taken = [], set()
    for index, (path, cluster) in enumerate(zip(table.paths, table.clusters.tolist())):
        name = "noise" if cluster < 0 else f"cluster-{cluster:0{width}d}"
        target = root / name / os.path.basename(path)
        if target in taken:  # two images with one name: keep both
            target = root / name / f"{index:06d}-{os.path.basename(path)}"
        taken.add(target)
        targets.append(target)
    manifest.record(targets)  # before any is made: a killed export leaves nothing unaccounted for
    for path, target in zip(table.paths, targets):
        path = str(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if link == "symlink":
                os.symlink(os.path.abspath(path), target)
            elif link == "hardlink":
                os.link(path, target)
            else:
                shutil.copy2(path, target)
        except OSError as exc:
            raise ImgclustError(f"cannot {link} {path} into {target.parent}: {exc.strerror}",
                                hint="hard links need the same filesystem; try --link symlink or --link copy") from None
    return [root]


def _write_html(manifest, report, table, clusters, X, force, on_progress=None, progress=None,
                per_cluster=HTML_PER_CLUSTER, **_):
    from ._html import write_html

    _claim(manifest, "html", force)
    sample = plot_sample(len(table), MAP_MAX_POINTS)
    map_points = MapPoints(sample, embed_2d(np.asarray(X[sample]), seed=0), len(table))
    scores = {k: v for k, v in report.scores.to_dict().items()
              if k in ("n_samples", "n_clusters", "n_noise", "silhouette", "ami", "nmi", "ari", "accuracy", "bcubed_f", "pairwise_f")}
    scores["silhouette_space"] = report.silhouette_space
    title = f"{report.run.method} {report.run.run_id} ({report.run.encoder})"
    return [write_html(manifest.folder / "gallery", table, clusters, scores, title, on_progress=on_progress,
                       on_write=manifest.record, selection=report.run.selection, max_per_cluster=per_cluster,
                       map_points=map_points, duplicates=duplicate_groups(report, progress))]


def duplicate_groups(report: RunReport, progress: Progress | None = None) -> DuplicateGroups | None:
    """The run's images' duplicate groups for the gallery (:mod:`imgclust.duplicates`, the family's default
    rule; the page says when it is not calibrated), the largest :data:`DUPLICATE_GROUPS` of them; None,
    with a warning, when the embeddings do not fit in memory. ``progress(stage, done, total)`` as
    :func:`imgclust.duplicates.find_duplicates`."""
    import warnings

    from ..duplicates import find_duplicates

    try:
        with warnings.catch_warnings():  # an uncalibrated rule: said on the page, not once per export
            warnings.simplefilter("ignore", UserWarning)
            found = find_duplicates(report.cache, report.run.encoder, progress=progress)
    except ResourceError as exc:  # an optional section never stops an export
        warnings.warn(f"{exc.message}: the gallery has no duplicates section", stacklevel=2)
        return None
    largest = sorted(found.groups, key=lambda g: (-len(g.paths), g.group))[:DUPLICATE_GROUPS]
    return DuplicateGroups([g.paths for g in largest], [g.kind for g in largest], found.rule.describe(),
                           found.threshold_source, len(found.groups), len(found.drop_paths))


def _write_plot(manifest, report, table, clusters, X, force, **_):
    from ._plot import write_plots

    _claim(manifest, "plot", force)
    sample = plot_sample(len(table), PLOT_MAX_POINTS)
    title = f"{report.run.method} {report.run.run_id} ({report.run.encoder})"
    sizes = {c.cluster: c.size for c in clusters}
    return write_plots(manifest.folder, embed_2d(np.asarray(X[sample]), seed=0), table.clusters[sample],
                       table.silhouettes[sample], title, n_images=len(table), cluster_sizes=sizes)


def plot_sample(n: int, max_points: int = PLOT_MAX_POINTS, seed: int = 0) -> np.ndarray:
    """The rows the plots draw: all of them up to ``max_points``, else a uniform random sample of
    ``max_points`` (sorted; the same for a given ``n`` and ``seed``)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def embed_2d(X: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D UMAP of (a sample of) the run's space for the scatter plot (PCA for tiny inputs)."""
    if X.shape[1] <= 2:
        return np.pad(X, ((0, 0), (0, 2 - X.shape[1])))
    if len(X) < 10:
        from sklearn.decomposition import PCA

        return PCA(n_components=2).fit_transform(X)
    from ..knn import knn_graph
    from ..reduce import PRECOMPUTED_KNN_ROWS, fit_umap

    n_neighbors = min(30, len(X) - 1)
    extra = {}
    if len(X) >= PRECOMPUTED_KNN_ROWS:  # FAISS on every core, as for the reduction, not UMAP's NN-descent
        extra["precomputed_knn"] = knn_graph(X, n_neighbors - 1, random_state=seed).with_self()
    # PCA initialisation: UMAP's spectral one lays out every connected component of the neighbour graph on its
    # own, which took minutes (ARPACK per component) on a 100,000-point sample of a large noisy set
    return fit_umap(X, n_components=2, n_neighbors=n_neighbors, min_dist=0.1, random_state=seed, init="pca",
                    **extra)[1]
