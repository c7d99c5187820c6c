"""Static plots of a clustering run: a 2-D scatter of the embedding and a silhouette plot.

matplotlib is optional (``pip install "imgclust[plot]"``) and imported only inside
:func:`write_plots`. Figures are drawn on the Agg canvas directly, without pyplot, so writing
plots never changes the matplotlib backend or global state of the calling program.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ImgclustError, ParameterError, UsageError
from .._atomic import replaced_atomically

SCATTER_NAME = "umap_scatter.png"
SILHOUETTE_NAME = "silhouette.png"
PLOT_HINT = 'pip install "imgclust[plot]"'

_NOISE_COLOR = (0.62, 0.62, 0.62, 0.45)
_LEGEND_MAX = 20  # above this many clusters, label clusters on the plot instead of a legend
_ANNOTATE_MAX = 150  # above this many, label only the largest ones
_DPI = 120


def write_plots(
    out_dir: Path | str,
    embedding_2d: np.ndarray,
    labels: np.ndarray,
    silhouettes: np.ndarray,
    title: str,
    *,
    n_images: int | None = None,
    cluster_sizes: dict[int, int] | None = None,
) -> list[Path]:
    """Write ``umap_scatter.png`` and ``silhouette.png`` into ``out_dir``; return their paths.

    Parameters
    ----------
    out_dir : path
        Folder to write into; created if missing.
    embedding_2d : ndarray of shape (n_images, 2)
        The 2-D layout to draw (computed by the caller, e.g. with UMAP). Rows with non-finite
        coordinates are left out of the scatter.
    labels : ndarray of shape (n_images,)
        Cluster of each image; -1 is noise, drawn in grey underneath the clusters.
    silhouettes : ndarray of shape (n_images,)
        Silhouette of each image, NaN (or None) where undefined. Noise is left out of the
        silhouette plot; the dashed line is the mean over the images drawn.
    title : str
        Prefix of both figure titles.
    n_images : int or None, default=None
        The number of images in the run when the arrays hold a sample of it: both titles then say
        "a random sample of <drawn> of <n_images> images". None: the arrays are the whole run.
    cluster_sizes : dict or None, default=None
        The run's cluster sizes for the scatter's legend (by default, counted in ``labels``).

    Returns
    -------
    list of Path
        ``[out_dir / "umap_scatter.png", out_dir / "silhouette.png"]``.

    Raises
    ------
    ImgclustError
        matplotlib is not installed (the hint says what to install), or a file cannot be written.
    ParameterError
        The arrays do not have matching lengths or the expected shapes.
    """
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImgclustError("plots need matplotlib, which is not installed", hint=PLOT_HINT) from exc

    emb, lab, sil = _check_inputs(embedding_2d, labels, silhouettes)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder", hint="Pass a folder for the plots.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(out_dir, exc) from exc

    ids = np.unique(lab[lab >= 0])
    colors = _cluster_colors(len(ids))
    color_of = {int(c): colors[i] for i, c in enumerate(ids)}

    scatter = Figure(figsize=(9.5 if len(ids) <= _LEGEND_MAX else 8.5, 7.5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(scatter)
    sample = _sample_note(len(lab), n_images)
    _draw_scatter(scatter, emb, lab, ids, color_of, title, sample, cluster_sizes)

    n_bars = int(np.isfinite(sil[lab >= 0]).sum())
    height = 6.5 if len(ids) <= 30 else min(16.0, 6.5 + 0.08 * (len(ids) - 30))
    silfig = Figure(figsize=(8, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(silfig)
    _draw_silhouette(silfig, lab, sil, ids, color_of, title, n_bars, sample)

    paths = [out_dir / SCATTER_NAME, out_dir / SILHOUETTE_NAME]
    for fig, path in zip((scatter, silfig), paths):
        _save(fig, path)
    return paths


# --------------------------------------------------------------------------------------------------


def _check_inputs(embedding_2d, labels, silhouettes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    emb = np.asarray(embedding_2d, dtype=float)
    if emb.ndim != 2 or emb.shape[1] != 2:
        raise ParameterError(
            "The 'embedding_2d' parameter of write_plots must be an array of shape (n_images, 2). "
            f"Got shape {emb.shape} instead.",
            hint="Reduce the embeddings to 2 dimensions (e.g. UMAP with n_components=2) before plotting.",
        )
    lab = np.asarray(labels)
    as_int = None
    if lab.ndim == 1:
        if np.issubdtype(lab.dtype, np.integer):
            as_int = lab.astype(np.int64, copy=False)
        else:
            try:
                as_int = lab.astype(np.int64)
            except (TypeError, ValueError):
                as_int = None
            if as_int is not None and not np.array_equal(as_int, lab):
                as_int = None  # 1.5 is not a cluster id
    if as_int is None:
        raise ParameterError(
            "The 'labels' parameter of write_plots must be a 1-D array of integer cluster ids "
            f"(-1 = noise). Got shape {lab.shape} and dtype {lab.dtype} instead.",
        )
    lab = as_int
    sil = np.asarray([np.nan if v is None else v for v in silhouettes] if _has_none(silhouettes) else silhouettes)
    try:
        sil = sil.astype(float)
    except (TypeError, ValueError):
        raise ParameterError(
            "The 'silhouettes' parameter of write_plots must be a 1-D array of floats (NaN = undefined). "
            f"Got dtype {sil.dtype} instead.",
        ) from None
    if sil.ndim != 1:
        raise ParameterError(
            "The 'silhouettes' parameter of write_plots must be a 1-D array of floats (NaN = undefined). "
            f"Got shape {sil.shape} instead.",
        )
    if not (len(emb) == len(lab) == len(sil)):
        raise ParameterError(
            "embedding_2d, labels and silhouettes must have one row per image. "
            f"Got {len(emb)}, {len(lab)} and {len(sil)} rows instead.",
        )
    return emb, lab, sil


def _has_none(values) -> bool:
    return isinstance(values, (list, tuple)) or (isinstance(values, np.ndarray) and values.dtype == object)


def _cluster_colors(k: int) -> list[tuple[float, float, float, float]]:
    """k distinct colours: tab10/tab20 for few clusters, a spread of hues for many."""
    from matplotlib import colormaps

    if k == 0:
        return []
    if k <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(k)]
    if k <= 20:
        cmap = colormaps["tab20"]
        # pair order (0, 2, 4, ... then 1, 3, ...) keeps neighbouring ids apart in colour
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))
        return [cmap(order[i]) for i in range(k)]
    cmap = colormaps["turbo"]
    # Golden-ratio stepping spreads consecutive ids over the colour map.
    return [cmap(0.05 + 0.9 * ((i * 0.6180339887) % 1.0)) for i in range(k)]


def _sample_note(drawn: int, n_images: int | None) -> str:
    """How much of the run a plot draws, for its title ("" when it draws all of it)."""
    if n_images is None or n_images <= drawn:
        return ""
    return f"a random sample of {drawn:,} of {n_images:,} images"


def _marker_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 0.6, 24.0))


def _draw_scatter(fig, emb, lab, ids, color_of, title, sample="", cluster_sizes=None) -> None:
    from matplotlib import patheffects

    ax = fig.add_subplot()
    finite = np.isfinite(emb).all(axis=1)
    n = int(finite.sum())
    size = _marker_size(n)
    noise = finite & (lab < 0)
    n_noise = int((lab < 0).sum())
    noise_handle = None
    if noise.any():
        noise_handle = ax.scatter(emb[noise, 0], emb[noise, 1], s=size, c=[_NOISE_COLOR], linewidths=0,
                   label=f"noise ({n_noise:,})", rasterized=True, zorder=1)
    for cid in ids:
        m = finite & (lab == cid)
        if not m.any():
            continue
        count = cluster_sizes[int(cid)] if cluster_sizes and int(cid) in cluster_sizes else int((lab == cid).sum())
        ax.scatter(emb[m, 0], emb[m, 1], s=size, c=[color_of[int(cid)]], linewidths=0, alpha=0.85,
                   label=f"{cid} ({count:,})", rasterized=True, zorder=2)

    if 0 < len(ids) <= _LEGEND_MAX:
        legend = ax.legend(
            loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="cluster (size)",
            fontsize="small", markerscale=max(1.0, 6.0 / np.sqrt(size)), ncols=1,
        )
        legend.get_title().set_fontsize("small")
    elif len(ids) > _LEGEND_MAX:
        # Too many colours to tell apart in a legend: write each cluster's id at its median point.
        sizes = {int(c): int((lab == c).sum()) for c in ids}
        shown = sorted(ids, key=lambda c: -sizes[int(c)])[:_ANNOTATE_MAX]
        outline = [patheffects.withStroke(linewidth=2.2, foreground="white")]
        for cid in shown:
            m = finite & (lab == cid)
            if not m.any():
                continue
            x, y = np.median(emb[m], axis=0)
            ax.text(x, y, str(cid), fontsize=7, ha="center", va="center", weight="bold",
                    color="black", path_effects=outline, zorder=3)
        if noise_handle is not None:
            ax.legend(handles=[noise_handle], loc="upper right", frameon=False, fontsize="small",
                      markerscale=max(1.0, 6.0 / np.sqrt(size)))

    k = len(ids)
    subtitle = f"{sample or f'{len(lab):,} images'}, {k:,} cluster{'s' if k != 1 else ''}"
    if n_noise:
        subtitle += f", {n_noise:,} noise"
    if n < len(lab):
        subtitle += f" ({len(lab) - n:,} without coordinates not drawn)"
    ax.set_title(f"{title}\n{subtitle}", fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if n == 0:
        ax.text(0.5, 0.5, "nothing to draw", transform=ax.transAxes, ha="center", va="center", color="0.4")


def _draw_silhouette(fig, lab, sil, ids, color_of, title, n_bars, sample="") -> None:
    ax = fig.add_subplot()
    keep = (lab >= 0) & np.isfinite(sil)
    n_noise = int((lab < 0).sum())
    subtitle_bits = []
    if n_noise:
        subtitle_bits.append(f"{n_noise:,} noise image{'s' if n_noise != 1 else ''} left out")
    if not keep.any():
        reason = (
            "silhouette is undefined for a single cluster"
            if len(ids) <= 1
            else "no silhouette values to draw"
        )
        ax.text(0.5, 0.5, reason, transform=ax.transAxes, ha="center", va="center", color="0.35")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{title}\nsilhouette per image" + (f" ({subtitle_bits[0]})" if subtitle_bits else ""),
                     fontsize="medium")
        return

    mean = float(sil[keep].mean())
    gap = max(2, int(round(0.012 * n_bars)))
    y = gap
    ticks, tick_labels = [], []
    label_every = max(1, int(np.ceil(len(ids) / 40)))  # keep the cluster ids on the axis readable
    for i, cid in enumerate(ids):
        vals = np.sort(sil[keep & (lab == cid)])
        if vals.size == 0:
            continue
        # One step of height 1 per image, so even a cluster of one image shows as a bar.
        ys = np.arange(y, y + vals.size + 1)
        ax.fill_betweenx(ys, 0, np.append(vals, vals[-1]), step="post", facecolor=color_of[int(cid)],
                         edgecolor=color_of[int(cid)], linewidth=0.3, alpha=0.9)
        if i % label_every == 0:
            ticks.append(y + vals.size / 2)
            tick_labels.append(str(cid))
        y += vals.size + gap
    ax.axvline(mean, color="#c4320a", linestyle="--", linewidth=1.4, label=f"mean {mean:.3f}")
    ax.axvline(0, color="0.3", linewidth=0.8)
    lo = min(-0.1, float(np.floor(sil[keep].min() * 10) / 10))
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(0, y)
    ax.set_yticks(ticks, tick_labels, fontsize="small" if len(ticks) <= 20 else "x-small")
    ax.set_xlabel("silhouette")
    ax.set_ylabel("cluster")
    ax.legend(loc="lower right", frameon=True, fontsize="small")
    ax.grid(axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    subtitle = f"silhouette per image, {int(keep.sum()):,} images in {len(ids):,} clusters"
    if sample:
        subtitle += f" ({sample})"
    if subtitle_bits:
        subtitle += f" ({subtitle_bits[0]})"
    ax.set_title(f"{title}\n{subtitle}", fontsize="medium")


def _save(fig, path: Path) -> None:
    try:
        with replaced_atomically(path) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI, facecolor="white")
    except OSError as exc:
        raise _write_error(path, exc) from exc


def _write_error(path: Path, exc: OSError) -> ImgclustError:
    return ImgclustError(
        f"cannot write {path}: {exc.strerror or exc}",
        hint="Check that the output folder is writable and the disk is not full.",
    )
