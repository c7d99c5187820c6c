"""The one-step pipeline: images -> embed -> UMAP 50 -> agglomerative -> score -> every export.

``imgclust cluster ./photos`` runs this with the recommended defaults (ZS): the number of clusters
is K when given, else chosen without labels (:mod:`imgclust.select`). Results go into one output
folder that is never overwritten without ``force``; the embedding cache lives inside it, so a
second run embeds nothing and gives identical assignments.

Outputs are never inputs: discovery skips the output folder, and the default output folder
(``<name>-clusters`` in the working folder) is put beside an input folder when the working folder
lies inside it (``imgclust cluster .``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ._progress import Progress, stage
from .cluster import DEFAULT_METHOD, ClusterRun, cluster, takes_device
from .embed import EmbedSummary, embed
from .encoders import DEFAULT_ENCODER
from .errors import UsageError
from .export import HTML_PER_CLUSTER, LINK_MODES, TARGETS, ExportResult, check_destination, export
from .manifest import read_entries
from .reduce import NEAR_COPIES_AUTO, parse_near_copies
from .score import RunReport, score

CACHE_NAME = "imgclust-cache.h5"
# Every export that writes into the output folder, but JSON lines (the same rows as json, on request).
DEFAULT_FORMATS = tuple(f for f in TARGETS if f != "jsonl")


@dataclass
class PipelineResult:
    out: str
    cache: str
    embed: EmbedSummary
    run: ClusterRun
    report: RunReport
    exports: list[ExportResult] = field(default_factory=list)
    skipped_formats: dict[str, str] = field(default_factory=dict)
    out_moved: bool = False  # the default output folder was put beside an input instead of inside it

    def to_dict(self) -> dict:
        return {"out": self.out, "out_moved": self.out_moved, "cache": self.cache, "embed": self.embed.to_dict(),
                "run": self.run.to_dict(), "scores": self.report.scores.to_dict(),
                "labels_source": self.report.labels_source, "exports": [e.to_dict() for e in self.exports],
                "skipped_formats": self.skipped_formats}


def default_out(inputs: Sequence[str | os.PathLike]) -> tuple[Path, bool]:
    """``(folder, moved)``: ``<name>-clusters`` in the working folder, or beside the input folder that
    holds the working folder (``moved``), so that results never land inside an input."""
    first = os.fspath(inputs[0]) if inputs else "images"
    name = first.replace(":", "-") if ":" in first and not os.path.exists(first) else Path(first).resolve().name
    folder = Path(f"{name or 'images'}-clusters")
    holder = _input_holding(folder.resolve(), inputs)
    if holder is None:
        return folder, False
    return holder.parent / f"{holder.name or 'images'}-clusters", True


def _input_holding(path: Path, inputs: Sequence[str | os.PathLike]) -> Path | None:
    """The input folder that ``path`` lies in (or is), if any."""
    for item in inputs:
        if os.path.isdir(item):
            root = Path(item).resolve()
            if path == root or root in path.parents:
                return root
    return None


def _available(format: str) -> str | None:
    """Why an optional export cannot run here (None when it can)."""
    import importlib.util

    need = {"parquet": ("pyarrow", "imgclust[parquet]"), "plot": ("matplotlib", "imgclust[plot]")}.get(format)
    if need and importlib.util.find_spec(need[0]) is None:
        return f"needs {need[0]}: pip install \"{need[1]}\""
    return None


def run_pipeline(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    encoder: str = DEFAULT_ENCODER,
    method: str = DEFAULT_METHOD,
    n_clusters: int | str | None = "auto",
    params: dict | None = None,
    reduction: str | None = None,
    dims: int | None = None,
    labels: str | None = None,
    files_from: str | None = None,
    force: bool = False,
    formats: Sequence[str] = DEFAULT_FORMATS,
    link: str = "symlink",
    random_state: int = 0,
    device: str | None = None,
    embed_options: dict | None = None,
    progress: Progress | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    k_range: tuple[int, int] | None = None,
    html_per_cluster: int | None = HTML_PER_CLUSTER,
    near_copies: float | str | None = NEAR_COPIES_AUTO,
) -> PipelineResult:
    """Run the whole pipeline on ``inputs`` into the folder ``out``.

    ``reduction`` and ``dims`` choose the space the method clusters (see :func:`imgclust.cluster`).
    ``device`` runs the encoder, and the method when it is a trained one. ``embed_options`` are passed
    to :func:`imgclust.embed` (weights, batch_size, workers, data_root, split, max_pixels). ``progress(stage, done, total)`` reports embedding and export progress;
    ``on_epoch(epoch, epochs, loss)`` the training of trained methods; ``k_range`` the range ``"auto"`` searches;
    ``html_per_cluster`` how many images the gallery shows per cluster (see :func:`imgclust.export`);
    ``near_copies`` UMAP's near-copy threshold (see :func:`imgclust.reduce.reduce`).
    """
    near_copies = parse_near_copies(near_copies)  # a bad value fails before any image is embedded
    moved = False
    if out is None:
        folder, moved = default_out(list(inputs) or ["files"])
    else:
        folder = Path(out)
        holder = _input_holding(folder.resolve(), inputs)
        if holder is not None and holder == folder.resolve():
            raise UsageError(f"--out {folder} is an input folder", hint="choose an output folder outside the inputs")
    if read_entries(folder) and not force:
        raise UsageError(f"{folder} already holds a result", hint="pass --force to overwrite it, or choose another --out")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file, not a folder", hint="choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {folder}: {exc.strerror}", hint="choose a writable --out") from None
    unknown = [fmt for fmt in formats if fmt not in TARGETS]
    if unknown:
        raise UsageError(f"unknown export format '{unknown[0]}' in --formats", hint=f"choose from {', '.join(TARGETS)}")
    if link not in LINK_MODES:
        raise UsageError(f"unknown --link mode '{link}'", hint=f"choose from {', '.join(LINK_MODES)}")
    wanted = [fmt for fmt in formats if _available(fmt) is None]
    check_destination(folder, wanted, force)  # before the long work, not after it
    cache = folder / CACHE_NAME
    summary = embed(inputs, encoder=encoder, cache=cache, files_from=files_from, labels=labels, exact=True,
                    progress=stage(progress, "embed"), exclude=[folder], device=device, **(embed_options or {}))
    if summary.interrupted:
        raise KeyboardInterrupt
    if summary.images == 0:
        raise UsageError(f"none of the {summary.discovered} images could be read ({summary.failed} failed)",
                         hint=f"see the reasons with: imgclust info {cache} --failures")
    run = cluster(cache, encoder, method, n_clusters, params, reduction=reduction, dims=dims, random_state=random_state,
                  device=device if takes_device(method) else None, on_epoch=on_epoch, k_range=k_range, progress=progress,
                  near_copies=near_copies)
    report = score(cache, run.run_id, encoder)
    result = PipelineResult(str(folder), str(cache), summary, run, report, out_moved=moved)
    result.skipped_formats = {fmt: _available(fmt) for fmt in formats if fmt not in wanted}
    for fmt in wanted:
        result.exports.append(export(cache, run.run_id, fmt, folder, encoder=encoder, link=link, force=force,
                                     report=report, html_per_cluster=html_per_cluster, progress=progress))
    return result
