"""A self-contained, offline HTML report of one clustering run.

``write_html`` writes ``index.html`` (inline CSS and a few lines of inline JS, nothing fetched from
the network) and one small JPEG thumbnail per *shown* image in ``thumbs/`` beside it. The page stays
the same size whatever the size of the run: each cluster shows at most ``max_per_cluster`` images
(default 24) -- half of them the images nearest its centre, a quarter its lowest silhouettes (its
edge) and the rest a random sample -- and says how many more it holds; at most ``max_clusters``
clusters (default 100, the largest) get a section of images, the others a row in a table of sizes
and scores. Thumbnails sit in fixed-size boxes, are lazy-loaded and decoded asynchronously, and
off-screen sections are skipped by the browser's layout (``content-visibility``).
"""

from __future__ import annotations

import hashlib
import html
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..decode import DecodeError, load_rgb
from ..errors import ImgclustError, ParameterError, UsageError
from .._atomic import replaced_atomically
import numpy as np

from ..outliers import MARK_SCORE
from ._map import CSS as MAP_CSS, JS as MAP_JS, DuplicateGroups, MapPoints, duplicates_section, map_section, map_thumb_rows
from ._records import ClusterSummary, ImageRecord, RunTable

PER_CLUSTER = 24  # images a cluster shows by default
MAX_CLUSTERS = 100  # clusters that get a section of images by default (the rest: a table)
THUMBS_DIR = "thumbs"
JPEG_QUALITY = 80
TINY_SIDE = 64  # longest side in pixels under which a thumbnail is scaled up pixelated (digits, CIFAR)

# Scores shown first, in this order, with a readable name; any other key follows, sorted.
_SCORE_NAMES = {
    "n_images": "images",
    "n_samples": "images",
    "n_clusters": "clusters",
    "n_noise": "noise",
    "silhouette": "silhouette",
    "silhouette_space": "silhouette measured in",
    "ami": "AMI",
    "nmi": "NMI",
    "ari": "ARI",
    "accuracy": "accuracy",
    "bcubed_f": "BCubed F",
    "pairwise_f": "pairwise F",
}


@dataclass(frozen=True)
class _Thumb:
    """Where a thumbnail was written (``None`` when the image could not be read) and its size."""

    name: str | None
    width: int
    height: int
    error: str | None = None


def write_html(
    out_dir: Path | str,
    images: RunTable | Sequence[ImageRecord],
    clusters: Sequence[ClusterSummary],
    scores: Mapping[str, object],
    title: str,
    *,
    thumb_size: int = 128,
    max_per_cluster: int | None = PER_CLUSTER,
    max_clusters: int | None = MAX_CLUSTERS,
    outlier_quantile: float = 0.05,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_write: Callable[[list[Path]], None] | None = None,
    selection: Mapping | None = None,
    seed: int = 0,
    map_points: MapPoints | None = None,
    duplicates: DuplicateGroups | None = None,
) -> Path:
    """Write ``out_dir/index.html``, a browsable page of the clusters, with thumbnails beside it.

    Parameters
    ----------
    out_dir : path
        Folder to write into; created if missing. Thumbnails go to ``out_dir/thumbs/`` and are
        reused by later calls (named by a hash of the image path and ``thumb_size``; rewritten when
        the image is newer than its thumbnail).
    images : RunTable or sequence of ImageRecord
        Every image of the run, as columns (:class:`~imgclust.export._records.RunTable`, what
        ``export`` passes: nothing is made per image but for the shown ones) or as records.
    clusters : sequence of ClusterSummary
        One per cluster; the noise cluster (-1) may have one or not.
    scores : mapping
        Run-level scores shown in a table at the top (``n_clusters``, ``silhouette``, ``ami``, ...).
        ``None`` values are shown as a dash.
    title : str
        Page title and heading.
    thumb_size : int, default=128
        Longest side of a thumbnail in pixels, in [16, 1024]. Images are never upscaled.
    max_per_cluster : int or None, default=24
        Images shown per cluster. A cluster that holds more shows ``ceil(n/2)`` nearest its centre,
        ``floor(n/4)`` with the lowest silhouettes among the rest (its edge; the farthest from the
        centre where silhouettes are undefined) and a random sample of the rest, and says how many
        it does not show. A cluster of at most ``n`` shows all, nearest-to-centre first. ``None``
        shows every image (for small runs only: the page grows with the run).
    max_clusters : int or None, default=100
        Clusters that get a section of images: the largest ones (noise counts as one), shown in id
        order. The others are listed in a table of size, mean silhouette and majority label at the
        end, so a run of 10,000 clusters still makes a page of at most ``max_clusters *
        max_per_cluster`` thumbnails. ``None``: every cluster gets a section.
    outlier_quantile : float, default=0.05
        Share of the run's images, in [0, 1], that may be marked as outliers: an image is marked
        when its silhouette is negative (it sits closer to another cluster) *and* among the lowest
        ``outlier_quantile`` of the run, so a weak clustering with many negative silhouettes
        still gets a short list to look at. ``1`` marks every negative silhouette, ``0`` none.
        Noise images are never marked.
    workers : int or None, default=None
        Threads making thumbnails (Pillow releases the GIL while decoding and resizing);
        ``None`` uses up to 8, one per CPU.
    on_progress : callable(done, total) or None
        Called from the calling thread after each thumbnail.
    on_write : callable(paths) or None
        Called with the thumbnail paths before any is written (the export's manifest records them).
    selection : mapping or None
        The run's label-free choice of K (``ClusterRun.selection``, from ``--n-clusters auto``):
        the page then shows its criterion's curve over K with the pick and the runners-up marked,
        and its summary (doubts included).
    seed : int, default=0
        Seed of the random sample shown per cluster (the page is the same for a given seed).
    map_points : MapPoints or None
        The rows to draw on the 2-D map and their positions (:mod:`imgclust.export._map`); None: no map.
    duplicates : DuplicateGroups or None
        Duplicate groups to show in their own section; None: no section.

    Images whose ``outlier_score`` is at least :data:`imgclust.outliers.MARK_SCORE` are marked *isolated*.

    Returns
    -------
    Path
        The path of ``index.html``.

    An image that cannot be read (missing, corrupt, not an image) gets a placeholder tile; failing
    to *write* into ``out_dir`` raises :class:`~imgclust.errors.ImgclustError`.
    """
    thumb_size = _check_int("thumb_size", thumb_size, 16, 1024)
    if max_per_cluster is not None:
        max_per_cluster = _check_int("max_per_cluster", max_per_cluster, 1, None, nullable=True)
    if max_clusters is not None:
        max_clusters = _check_int("max_clusters", max_clusters, 1, None, nullable=True)
    if workers is None:
        workers = max(1, min(8, os.cpu_count() or 1))
    else:
        workers = _check_int("workers", workers, 1, 256, nullable=True)
    if isinstance(outlier_quantile, bool) or not isinstance(outlier_quantile, (int, float)) or not (
        0 <= outlier_quantile <= 1
    ):
        raise ParameterError(
            "The 'outlier_quantile' parameter of write_html must be a float in [0, 1]. "
            f"Got {outlier_quantile!r} instead.",
            hint="outlier_quantile: the share of lowest-silhouette images marked as outliers, e.g. 0.05.",
        )

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder", hint="Pass a folder for the HTML report.")
    thumbs_dir = out_dir / THUMBS_DIR
    try:
        thumbs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(thumbs_dir, exc) from exc
    out_abs = Path(os.path.abspath(out_dir))

    table = images if isinstance(images, RunTable) else RunTable.from_records(images)
    groups = _group(table, clusters)
    threshold = _outlier_threshold(table, outlier_quantile)
    shown_groups, rest = _sections(groups, max_clusters)
    picks = {cid: _pick(table, members, max_per_cluster, seed + position)
             for position, (cid, members, _) in enumerate(groups) if cid in shown_groups}
    unique_paths = list(dict.fromkeys(str(table.paths[i]) for cid in picks for i, _ in picks[cid]))
    map_rows = map_thumb_rows(map_points, seed) if map_points is not None else np.zeros(0, np.int64)
    dup_paths = [p for group in duplicates.groups for p in group] if duplicates is not None else []
    unique_paths = list(dict.fromkeys(unique_paths + [str(table.paths[i]) for i in map_rows.tolist()] + dup_paths))
    if on_write is not None:
        on_write([thumbs_dir / _thumb_name(path, thumb_size) for path in unique_paths])
    thumbs = _make_thumbs(unique_paths, thumbs_dir, thumb_size, workers, on_progress)

    page = _render(
        title=title,
        scores=scores,
        table=table,
        groups=groups,
        picks=picks,
        rest=rest,
        thumbs=thumbs,
        threshold=threshold,
        thumb_size=thumb_size,
        out_abs=out_abs,
        selection=selection,
        extra=_triage_sections(table, groups, picks, rest, thumbs, map_points, map_rows, duplicates, out_abs),
    )
    index = out_dir / "index.html"
    _atomic_write(index, page.encode("utf-8"))
    return index


# --------------------------------------------------------------------------------------------------
# parameters and grouping


def _check_int(name: str, value, low: int, high: int | None, nullable: bool = False) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and value >= low and (high is None or value <= high):
        return value
    rng = f"in [{low}, {high if high is not None else 'inf'}]" + (" or None" if nullable else "")
    raise ParameterError(
        f"The '{name}' parameter of write_html must be an int {rng}. Got {value!r} instead.",
    )


def _group(table: RunTable, clusters: Sequence[ClusterSummary]) -> list[tuple[int, np.ndarray, ClusterSummary | None]]:
    """(cluster id, its rows, summary) per cluster: ids ascending, noise last."""
    ids, inverse, counts = np.unique(table.clusters, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    members = {int(c): order[bounds[i]:bounds[i + 1]] for i, c in enumerate(ids.tolist())}
    summaries = {int(c.cluster): c for c in clusters}
    empty = np.zeros(0, np.int64)
    return [(cid, members.get(cid, empty), summaries.get(cid))
            for cid in sorted(set(members) | set(summaries), key=lambda c: (c < 0, c))]


def _sections(groups, max_clusters: int | None) -> tuple[set[int], list]:
    """The clusters that get a section of images (the largest ``max_clusters``) and the groups of the rest."""
    if max_clusters is None or len(groups) <= max_clusters:
        return {cid for cid, _, _ in groups}, []
    by_size = sorted(groups, key=lambda g: (-_size(g[1], g[2]), g[0] < 0, g[0]))
    shown = {cid for cid, _, _ in by_size[:max_clusters]}
    return shown, [g for g in groups if g[0] not in shown]


def _size(members: np.ndarray, summary: ClusterSummary | None) -> int:
    return summary.size if summary is not None else len(members)


def _pick(table: RunTable, members: np.ndarray, n: int | None, seed: int) -> list[tuple[int, str]]:
    """The rows a cluster shows, each with why: ``centre`` (nearest its centre), ``sample`` (at
    random) or ``edge`` (lowest silhouette; farthest from the centre where it is undefined)."""
    def by_distance(rows: np.ndarray) -> list[int]:
        return sorted(rows.tolist(), key=lambda i: (_finite_or(table.distances[i], math.inf), str(table.paths[i])))

    if n is None or len(members) <= n:
        return [(i, "centre") for i in by_distance(members)]
    n_centre, n_edge = math.ceil(n / 2), n // 4
    distance = np.where(np.isfinite(table.distances[members]), table.distances[members], np.inf)
    nearest = np.argpartition(distance, n_centre - 1)[:n_centre]
    rest = np.delete(members, nearest)
    centre = by_distance(members[nearest])
    edge = []
    if n_edge:
        sil = table.silhouettes[rest]
        key = np.where(np.isfinite(sil), sil, np.inf) if np.isfinite(sil).any() else -np.nan_to_num(
            table.distances[rest], nan=-np.inf)
        lowest = np.argpartition(key, n_edge - 1)[:n_edge]
        lowest = lowest[np.argsort(key[lowest], kind="stable")]
        edge = rest[lowest].tolist()
        rest = np.delete(rest, lowest)
    sample = np.random.default_rng(seed).choice(rest, size=n - n_centre - len(edge), replace=False)
    return ([(i, "centre") for i in centre] + [(i, "sample") for i in by_distance(sample)]
            + [(i, "edge") for i in edge])


def _finite_or(value, default: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


def _outlier_threshold(table: RunTable, quantile: float) -> float:
    """Silhouettes strictly below the returned value (never above 0) are outliers."""
    values = table.silhouettes[(table.clusters >= 0) & np.isfinite(table.silhouettes)]
    k = math.ceil(len(values) * quantile - 1e-9)  # how many images the bottom quantile holds
    if k == 0:
        return -math.inf
    return min(0.0, math.nextafter(float(np.partition(values, k - 1)[k - 1]), math.inf))


def _outliers(table: RunTable, members: np.ndarray, threshold: float) -> np.ndarray:
    """Which of ``members`` are marked as outliers (noise never is)."""
    sil = table.silhouettes[members]
    return (table.clusters[members] >= 0) & np.isfinite(sil) & (sil < threshold)


# --------------------------------------------------------------------------------------------------
# thumbnails


def _thumb_name(path: str, thumb_size: int) -> str:
    key = os.path.abspath(path).encode("utf-8", "surrogateescape")
    return f"{hashlib.sha1(key).hexdigest()[:20]}-{thumb_size}.jpg"


def _make_thumbs(
    paths: list[str],
    thumbs_dir: Path,
    thumb_size: int,
    workers: int,
    on_progress: Callable[[int, int], None] | None,
) -> dict[str, _Thumb]:
    total = len(paths)
    out: dict[str, _Thumb] = {}

    def one(path: str) -> _Thumb:
        return _thumb(path, thumbs_dir, thumb_size)

    if workers == 1 or total < 2:
        results = map(one, paths)
        for done, (path, thumb) in enumerate(zip(paths, results), 1):
            out[path] = thumb
            if on_progress is not None:
                on_progress(done, total)
        return out
    # ``map`` keeps the order and the memory bounded by the pool; progress is reported in order.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgclust-thumb") as pool:
        for done, (path, thumb) in enumerate(zip(paths, pool.map(one, paths)), 1):
            out[path] = thumb
            if on_progress is not None:
                on_progress(done, total)
    return out


def _thumb(path: str, thumbs_dir: Path, thumb_size: int) -> _Thumb:
    from PIL import Image  # noqa: F401  (Pillow is a core dependency; imported here to keep import light)

    name = _thumb_name(path, thumb_size)
    target = thumbs_dir / name
    try:
        src_mtime = os.stat(path).st_mtime_ns
    except OSError as exc:
        return _Thumb(None, thumb_size, thumb_size, _short_error(exc))
    try:
        if target.stat().st_mtime_ns >= src_mtime:
            with Image.open(target) as existing:
                return _Thumb(name, *existing.size)
    except Exception:  # noqa: BLE001  (no thumbnail yet, or a damaged one: make it again)
        pass

    try:
        small = _load_small(path, thumb_size)
    except DecodeError as exc:  # an unreadable image becomes a placeholder tile
        return _Thumb(None, thumb_size, thumb_size, _short_error(exc))

    try:
        with replaced_atomically(target) as tmp:
            small.save(tmp, "JPEG", quality=JPEG_QUALITY)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    return _Thumb(name, *small.size)


def _load_small(path: str, thumb_size: int):
    """Open ``path`` (decoded as for embedding) as an RGB image no larger than ``thumb_size`` a side."""
    from PIL import Image

    im = load_rgb(path, draft_size=thumb_size)
    im.thumbnail((thumb_size, thumb_size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return im


def _short_error(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _write_error(path: Path, exc: OSError) -> ImgclustError:
    return ImgclustError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="Check that the output folder is writable and the disk is not full.",
    )


def _atomic_write(path: Path, data: bytes) -> None:
    try:
        with replaced_atomically(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise _write_error(path, exc) from exc


# --------------------------------------------------------------------------------------------------
# the page


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    if value is None:
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f):
        return "\u2014"
    if f.is_integer() and abs(f) >= 1000:
        return f"{int(f):,}"
    return f"{f:.3f}"


def _href(path: str, out_abs: Path) -> str:
    """A link to the original file: relative to the page when possible, else a file:// URI."""
    absolute = Path(os.path.abspath(path))
    try:
        rel = os.path.relpath(absolute, out_abs)
    except ValueError:  # another drive on Windows
        return absolute.as_uri()
    return quote(Path(rel).as_posix(), safe="/._-~")


def _label_mix(summary: ClusterSummary | None, table: RunTable, members: np.ndarray) -> list[tuple[str, int]]:
    if summary is not None and summary.label_counts:
        counts = Counter({str(k): int(v) for k, v in summary.label_counts.items()})
    elif table.labels is not None:
        counts = Counter(str(v) for v in table.labels[members] if v)
    else:
        counts = Counter()
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _sil_class(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "na"
    if value >= 0.5:
        return "hi"
    if value >= 0.25:
        return "mid"
    if value >= 0:
        return "lo"
    return "neg"


_PICK_HEADINGS = {"centre": "nearest the centre", "sample": "a random sample", "edge": "lowest silhouettes (the edge)"}
_PICK_COUNTS = {"centre": "nearest the centre", "sample": "at random", "edge": "with the lowest silhouettes"}


def _anchor(cid: int) -> str:
    return "cluster-noise" if cid < 0 else f"cluster-{cid}"


def _triage_sections(table, groups, picks, rest, thumbs, map_points, map_rows, duplicates, out_abs) -> str:
    """The map and duplicates sections (:mod:`imgclust.export._map`), with the thumbnails already made."""
    def url(path: str) -> str | None:
        thumb = thumbs.get(path)
        return f"{THUMBS_DIR}/{thumb.name}" if thumb is not None and thumb.name is not None else None

    parts = []
    if map_points is not None:
        shown = {i for cid in picks for i, _ in picks[cid]} | set(map_rows.tolist())
        urls = {i: url(str(table.paths[i])) for i in map_points.rows.tolist() if i in shown}
        anchors = {cid: _anchor(cid) for cid, _, _ in groups if cid in picks}
        names = {cid: summary.names for cid, _, summary in groups if summary is not None and summary.names}
        parts.append(map_section(map_points, table.clusters, table.paths,
                                 {i: u for i, u in urls.items() if u}, anchors, names))
    if duplicates is not None and duplicates.n_groups:
        urls = {p: url(p) for group in duplicates.groups for p in group}
        parts.append(duplicates_section(duplicates, {p: u for p, u in urls.items() if u},
                                        lambda path: _href(path, out_abs)))
    return "".join(parts)


def _render(
    *,
    title: str,
    scores: Mapping[str, object],
    table: RunTable,
    groups,
    picks: dict[int, list[tuple[int, str]]],
    rest: list,
    thumbs: dict[str, _Thumb],
    threshold: float,
    thumb_size: int,
    out_abs: Path,
    selection: Mapping | None = None,
    extra: str = "",
) -> str:
    parts: list[str] = []
    w = parts.append
    n_outliers = int(_outliers(table, np.arange(len(table)), threshold).sum())
    n_unreadable = sum(1 for t in thumbs.values() if t.name is None)

    sections: list[str] = []
    nav: list[str] = []
    for cid, members, summary in groups:
        if cid not in picks:
            continue
        is_noise = cid < 0
        anchor = _anchor(cid)
        name = "noise" if is_noise else f"Cluster {cid}"
        size = _size(members, summary)
        mean_sil = _mean_silhouette(summary)
        representative = summary.representative if summary is not None else None
        mix = _label_mix(summary, table, members)
        shown = picks[cid]
        marked = _outliers(table, np.array([i for i, _ in shown], np.int64), threshold)
        n_out_here = int(_outliers(table, members, threshold).sum())

        strips: dict[str, list[str]] = {}
        for (i, why), outlier in zip(shown, marked.tolist()):
            rec = table.record(i)
            sil = _finite_or(rec.silhouette, math.nan)
            strips.setdefault(why, []).append(
                _tile(rec, thumbs[rec.path], sil, outlier, rec.path == representative, out_abs, why))

        mean_txt = _fmt(mean_sil)
        nav.append(
            f'<li><a href="#{anchor}" class="sil-{_sil_class(mean_sil)}">'
            f'<span class="nm">{_e(name if is_noise else cid)}</span>'
            f'<span class="ct">{size:,}</span></a></li>'
        )
        meta = [f"<span><b>{size:,}</b> images</span>"]
        if not is_noise:
            meta.append(
                f'<span class="sil sil-{_sil_class(mean_sil)}">mean silhouette <b>{mean_txt}</b></span>'
            )
        if n_out_here:
            meta.append(f'<span class="badge out">{n_out_here:,} outlier{"s" if n_out_here != 1 else ""}</span>')
        if summary is not None and summary.names:
            meta.append(f'<span class="cnames" title="CLIP names (cosine similarity)">{_e(summary.names)}</span>')
        mix_html = ""
        if mix:
            total = sum(c for _, c in mix) or 1
            chips = "".join(
                f'<li><span class="lb">{_e(lbl)}</span> <span class="ct">{cnt:,}'
                f' <small>({100 * cnt / total:.0f}%)</small></span></li>'
                for lbl, cnt in mix[:8]
            )
            more = f'<li class="more">+{len(mix) - 8} more</li>' if len(mix) > 8 else ""
            mix_html = f'<ul class="mix" title="ground-truth labels in this cluster">{chips}{more}</ul>'
        note = ""
        hidden = len(members) - len(shown)
        if hidden > 0:
            counts = [f"{len(strips[why]):,} {_PICK_COUNTS[why]}" for why in _PICK_COUNTS if why in strips]
            note = (f'<p class="note">Showing {len(shown):,} of {len(members):,} images: {", ".join(counts)}'
                    f' \u2014 <b class="hidden" data-hidden="{hidden}">and {hidden:,} more</b>.</p>')
        elif not len(members):
            note = '<p class="note">No images.</p>'
        if hidden > 0:
            grids = "".join(f'<h3 class="pick">{_e(_PICK_HEADINGS[why])}</h3><div class="grid">{"".join(tiles)}</div>'
                            for why, tiles in strips.items())
        else:
            grids = f'<div class="grid">{"".join(strips.get("centre", []))}</div>'
        sections.append(
            f'<section id="{anchor}" class="cluster{" noise" if is_noise else ""}" data-cluster="{cid}">'
            f'<header><h2><a href="#{anchor}">{_e(name)}</a></h2>'
            f'<div class="meta">{"".join(meta)}</div>{mix_html}</header>{note}{grids}</section>'
        )
    if rest:
        nav.append(f'<li><a href="#more-clusters"><span class="nm">{len(rest):,} more</span></a></li>')
        sections.append(_rest_table(rest, table))

    n_clusters = sum(1 for cid, _, _ in groups if cid >= 0)  # every cluster, with a section or in the table
    w("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
    w('<meta name="viewport" content="width=device-width, initial-scale=1">')
    w('<meta name="generator" content="imgclust">')
    w(f"<title>{_e(title)}</title>")
    w(f"<style>{_CSS.replace('__T__', str(thumb_size))}{MAP_CSS if extra else ''}</style></head>")
    w('<body><div class="top"><header class="page">')
    w(f"<h1>{_e(title)}</h1>")
    summary_bits = [f"{len(table):,} images", f"{n_clusters:,} clusters"]
    if n_outliers:
        summary_bits.append(f"{n_outliers:,} outliers")
    n_isolated = int(np.sum(table.outlier_scores >= MARK_SCORE)) if table.outlier_scores is not None else 0
    if n_isolated:
        summary_bits.append(f"{n_isolated:,} isolated")
    if n_unreadable:
        summary_bits.append(f"{n_unreadable:,} unreadable")
    w('<p class="sub">' + " \u00b7 ".join(summary_bits) + "</p>")
    w(_scores_table(scores))
    w(_selection_curve(selection))
    w(
        '<label class="toggle"><input type="checkbox" id="only-outliers"> show outliers only</label>'
        "</header>"
    )
    w(f'<nav aria-label="clusters"><ul>{"".join(nav)}</ul></nav></div>')
    w(f"<main>{extra}{''.join(sections)}</main>")
    w(
        '<footer>Made by imgclust. Images are ordered nearest-to-centre first; a large cluster shows '
        'the images nearest its centre, a random sample and its lowest silhouettes, and counts the rest; '
        '<span class="badge rep">centre</span> is the image nearest the centre, '
        '<span class="badge out">outlier</span> marks an image closer to another cluster '
        "(negative silhouette) among the lowest silhouettes of the run; "
        f'<span class="badge iso">isolated</span> an image whose outlier score (distance to its k-th neighbour '
        f"over the median) is {MARK_SCORE} or more. "
        "Click a thumbnail to open the original.</footer>"
    )
    w(f"<script>{_JS}{MAP_JS if extra else ''}</script></body></html>\n")
    return "".join(parts)


def _mean_silhouette(summary: ClusterSummary | None) -> float | None:
    value = None if summary is None or summary.mean_silhouette is None else _finite_or(summary.mean_silhouette, math.nan)
    return None if value is None or math.isnan(value) else value


def _rest_table(rest: list, table: RunTable) -> str:
    """The clusters without a section of images: one row each (id, size, mean silhouette, top label)."""
    rows = []
    for cid, members, summary in rest:
        mean_sil = _mean_silhouette(summary)
        mix = _label_mix(summary, table, members)
        top = f"{_e(mix[0][0])} ({mix[0][1]:,})" if mix else "\u2014"
        rows.append(f'<tr data-cluster="{cid}"><td>{"noise" if cid < 0 else cid}</td><td>{_size(members, summary):,}</td>'
                    f'<td class="sil-{_sil_class(mean_sil)}">{_fmt(mean_sil)}</td><td>{top}</td></tr>')
    return (f'<section id="more-clusters" class="rest"><h2>{len(rest):,} more clusters</h2>'
            '<p class="note">Smaller clusters, without images (raise the number of clusters shown to see them):</p>'
            '<table><thead><tr><th>cluster</th><th>images</th><th>mean silhouette</th><th>most common label</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table></section>')


def _scores_table(scores: Mapping[str, object]) -> str:
    if not scores:
        return ""
    keys = [k for k in _SCORE_NAMES if k in scores] + sorted(
        (k for k in scores if k not in _SCORE_NAMES), key=str
    )
    cells = "".join(
        f'<div class="score" data-score="{_e(k)}"><dt>{_e(_SCORE_NAMES.get(k, k))}</dt>'
        f"<dd>{_e(_fmt(scores[k]))}</dd></div>"
        for k in keys
    )
    return f'<dl class="scores">{cells}</dl>'


def _selection_curve(selection: Mapping | None, width: int = 560, height: int = 180) -> str:
    """The label-free choice of K: an inline SVG of its criterion over K, the pick and runners-up marked."""
    if not selection or not selection.get("table"):
        return ""
    criterion = str(selection.get("criterion") or "silhouette")
    points = [(int(r["k"]), float(r[criterion])) for r in selection["table"]
              if isinstance(r.get(criterion), (int, float)) and math.isfinite(r[criterion])]
    if not points:
        return ""
    pad_l, pad_r, pad_t, pad_b = 44, 12, 10, 28
    ks = [k for k, _ in points]
    vals = [v for _, v in points]
    k_lo, k_hi = min(ks), max(ks)
    v_lo, v_hi = min(vals), max(vals)
    if v_hi == v_lo:
        v_lo, v_hi = v_lo - 0.5, v_hi + 0.5
    log_k = k_hi / max(k_lo, 1) > 20  # long ranges (2:200) read better on a log axis

    def x(k: float) -> float:
        if k_hi == k_lo:
            return pad_l + (width - pad_l - pad_r) / 2
        f = (math.log(k) - math.log(k_lo)) / (math.log(k_hi) - math.log(k_lo)) if log_k else (k - k_lo) / (k_hi - k_lo)
        return pad_l + f * (width - pad_l - pad_r)

    def y(v: float) -> float:
        return pad_t + (1 - (v - v_lo) / (v_hi - v_lo)) * (height - pad_t - pad_b)

    line = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in points)
    value = dict(points)
    marks = []
    for rank, cand in enumerate(selection.get("candidates") or []):
        k = int(cand["k"])
        if k not in value:
            continue
        cls = "pick" if rank == 0 else "alt"
        marks.append(f'<circle class="{cls}" cx="{x(k):.1f}" cy="{y(value[k]):.1f}" r="{5 if rank == 0 else 3.5}">'
                     f"<title>K = {k}: {criterion.replace('_', ' ')} {_fmt(value[k])}</title></circle>"
                     f'<text class="{cls}" x="{x(k):.1f}" y="{y(value[k]) - 8:.1f}" text-anchor="middle">{k}</text>')
    ticks = sorted({k_lo, k_hi, *[int(c["k"]) for c in (selection.get("candidates") or [])[:1]]})
    axis = "".join(f'<text x="{x(k):.1f}" y="{height - 8}" text-anchor="middle">{k}</text>' for k in ticks)
    axis += (f'<text x="{pad_l - 6}" y="{y(v_hi) + 4:.1f}" text-anchor="end">{_fmt(v_hi)}</text>'
             f'<text x="{pad_l - 6}" y="{y(v_lo) + 4:.1f}" text-anchor="end">{_fmt(v_lo)}</text>')
    flags = list(selection.get("flags") or [])
    title = f"{criterion.replace('_', ' ')} over K ({'log' if log_k else 'linear'} axis), rule {selection.get('rule', '')}"
    return (
        f'<figure class="kcurve{" doubt" if flags else ""}" data-k="{_e(selection.get("n_clusters"))}">'
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
        f"<title>{_e(title)}</title>"
        f'<polyline points="{line}"/>{"".join(marks)}{axis}</svg>'
        f"<figcaption>Number of clusters chosen without labels: <b>{_e(selection.get('n_clusters'))}</b>. "
        f"{_e(selection.get('summary', ''))}</figcaption></figure>"
    )


def _tile(rec: ImageRecord, thumb: _Thumb, sil: float, outlier: bool, is_rep: bool, out_abs: Path, why: str) -> str:
    path = rec.path
    tip = [path]
    if rec.label is not None:
        tip.append(f"label: {rec.label}")
    if not math.isnan(sil):
        tip.append(f"silhouette: {sil:.3f}")
    tip.append(f"distance to centre: {_fmt(rec.distance)}")
    if thumb.name is None:
        tip.append(f"unreadable: {thumb.error}")
    isolated = rec.outlier_score is not None and rec.outlier_score >= MARK_SCORE
    if rec.outlier_score is not None:
        tip.append(f"outlier score: {rec.outlier_score:.2f}")
    tip_e = _e("\n".join(tip))
    classes = "tile" + (" outlier" if outlier else "") + (" rep" if is_rep else "") + (" isolated" if isolated else "")
    badges = ""
    if is_rep:
        badges += '<span class="badge rep">centre</span>'
    if outlier:
        badges += '<span class="badge out">outlier</span>'
    if isolated:
        badges += '<span class="badge iso">isolated</span>'
    if thumb.name is None:
        body = f'<span class="ph" role="img" aria-label="{_e(path)}">unreadable</span>'
        classes += " broken"
    else:
        # Scaled up to the tile; images under TINY_SIDE pixels show their pixels instead of a blur.
        tiny = ' class="tiny"' if max(thumb.width, thumb.height) < TINY_SIDE else ""
        body = (
            f'<img{tiny} src="{THUMBS_DIR}/{thumb.name}" width="{thumb.width}" height="{thumb.height}" '
            f'loading="lazy" decoding="async" alt="{_e(path)}">'
        )
    caption = _e(os.path.basename(path) or path)
    sil_txt = "" if math.isnan(sil) else f'<span class="s sil-{_sil_class(sil)}">{sil:.2f}</span>'
    return (
        f'<figure class="{classes}" data-pick="{why}"><a class="box" href="{_e(_href(path, out_abs))}" title="{tip_e}">'
        f"{body}{badges}</a><figcaption><span class=\"fn\">{caption}</span>{sil_txt}</figcaption></figure>"
    )


_CSS = """
.kcurve{margin:.6rem 0 0;max-width:100%}.kcurve svg{max-width:100%;height:auto;font:11px sans-serif;fill:var(--mute)}
.kcurve polyline{fill:none;stroke:currentColor;stroke-width:1.5}.kcurve circle.pick{fill:#d33}.kcurve circle.alt{fill:#888}
.kcurve text.pick{fill:#d33;font-weight:bold}.kcurve figcaption{font-size:.85rem;color:var(--mute)}
.kcurve.doubt figcaption{color:#b60}
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#667085;--line:#e3e6ec;--acc:#2f6fde;
--hi:#1a7f4b;--mid:#9a6a00;--lo:#b54708;--neg:#c4320a;--T:__T__px}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--card:#1d2128;--ink:#e6e8ec;--mute:#98a2b3;
--line:#2c323c;--acc:#7aa7ff;--hi:#4cc38a;--mid:#e0b341;--lo:#f38744;--neg:#ff6b5a}}
*{box-sizing:border-box}
html{scroll-padding-top:9rem}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.top{position:sticky;top:0;z-index:5;background:var(--card);border-bottom:1px solid var(--line);
box-shadow:0 1px 3px rgba(0,0,0,.06)}
header.page{display:flex;flex-wrap:wrap;align-items:center;gap:.4rem 1.5rem;padding:.8rem 1.5rem .4rem}
h1{font-size:1.25rem;margin:0;font-weight:650;letter-spacing:-.01em}
.sub{margin:0;color:var(--mute)}
.scores{display:flex;flex-wrap:wrap;gap:.4rem;margin:0}
.score{border:1px solid var(--line);border-radius:6px;padding:.15rem .55rem;display:flex;gap:.4rem;
align-items:baseline;background:var(--bg)}
.score dt{color:var(--mute);font-size:.78rem}
.score dd{margin:0;font-weight:600;font-variant-numeric:tabular-nums}
.toggle{margin-left:auto;color:var(--mute);font-size:.85rem;cursor:pointer;user-select:none}
nav ul{list-style:none;margin:0;padding:.3rem 1.5rem .6rem;display:flex;gap:.3rem;overflow-x:auto;
scrollbar-width:thin}
nav a{display:inline-flex;gap:.35rem;align-items:baseline;padding:.12rem .5rem;border-radius:999px;
border:1px solid var(--line);text-decoration:none;color:var(--ink);white-space:nowrap;font-size:.82rem}
nav a::before{content:"";width:.55rem;height:.55rem;border-radius:50%;background:var(--sc,var(--line));
align-self:center}
nav a:hover{border-color:var(--acc)}
nav .nm{font-weight:600}
nav .ct{color:var(--mute);font-variant-numeric:tabular-nums}
.sil-hi{--sc:var(--hi)}.sil-mid{--sc:var(--mid)}.sil-lo{--sc:var(--lo)}.sil-neg{--sc:var(--neg)}
.sil-na{--sc:var(--line)}
main{padding:1rem 1.5rem 2rem;display:flex;flex-direction:column;gap:1rem}
section.cluster{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:.8rem 1rem 1rem;
content-visibility:auto;contain-intrinsic-size:auto 600px}
section.noise{background:repeating-linear-gradient(45deg,var(--card),var(--card) 12px,var(--bg) 12px,var(--bg) 24px)}
section.cluster>header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.3rem 1rem;margin-bottom:.6rem}
h2{font-size:1.05rem;margin:0}
h2 a{color:inherit;text-decoration:none}
.meta{display:flex;gap:.8rem;color:var(--mute);align-items:baseline;flex-wrap:wrap}
.meta b{color:var(--ink);font-variant-numeric:tabular-nums}
.meta .sil b{color:var(--sc)}
.mix{list-style:none;display:flex;flex-wrap:wrap;gap:.25rem;margin:0;padding:0;font-size:.8rem}
.mix li{background:var(--bg);border:1px solid var(--line);border-radius:4px;padding:0 .4rem}
.mix .ct{color:var(--mute)}
.note{margin:.2rem 0 .6rem;color:var(--mute);font-size:.85rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(calc(var(--T) + 10px),1fr));gap:8px}
figure.tile{margin:0;min-width:0}
.box{position:relative;display:flex;text-decoration:none;align-items:center;justify-content:center;height:calc(var(--T) + 10px);
background:var(--bg);border:1px solid var(--line);border-radius:6px;overflow:hidden}
.box:hover{border-color:var(--acc)}
.box img{width:var(--T);height:var(--T);object-fit:contain;display:block;border-radius:2px}
.box img.tiny{image-rendering:pixelated}
.tile.outlier .box{border:2px solid var(--neg)}
.tile.rep .box{border:2px solid var(--acc)}
.ph{display:flex;align-items:center;justify-content:center;width:var(--T);height:var(--T);color:var(--mute);
font-size:.75rem;background:repeating-linear-gradient(-45deg,transparent,transparent 6px,var(--line) 6px,
var(--line) 7px);border-radius:2px}
.badge{display:inline-block;font-size:.66rem;font-weight:700;letter-spacing:.03em;text-transform:uppercase;
padding:.05rem .35rem;border-radius:4px;color:#fff;line-height:1.4}
.box .badge{position:absolute;top:4px;left:4px}
.box .badge+.badge{top:auto;bottom:4px}
.badge.out{background:var(--neg)}
.badge.rep{background:var(--acc)}
figcaption{display:flex;justify-content:space-between;gap:.3rem;font-size:.72rem;color:var(--mute);padding:.15rem .1rem 0}
figcaption .fn{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
figcaption .s{font-variant-numeric:tabular-nums;color:var(--sc)}
body.only-outliers .tile:not(.outlier){display:none}
body.only-outliers section.cluster:not(:has(.outlier)){display:none}
footer{color:var(--mute);font-size:.8rem;padding:0 1.5rem 2rem}
h3.pick{font-size:.8rem;font-weight:600;color:var(--mute);margin:.6rem 0 .3rem;text-transform:uppercase;letter-spacing:.03em}
section.rest{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:.8rem 1rem 1rem;
content-visibility:auto;contain-intrinsic-size:auto 800px}
section.rest table{border-collapse:collapse;font-size:.82rem;font-variant-numeric:tabular-nums}
section.rest td,section.rest th{padding:.1rem .8rem .1rem 0;text-align:left;border-bottom:1px solid var(--line)}
section.rest td.sil-hi,section.rest td.sil-mid,section.rest td.sil-lo,section.rest td.sil-neg{color:var(--sc)}
footer .badge{vertical-align:1px}
"""

_JS = """
(function(){var c=document.getElementById('only-outliers');if(!c)return;
c.addEventListener('change',function(){document.body.classList.toggle('only-outliers',c.checked);});})();
"""
