"""``imgclust cluster``: cluster a cache, or run the whole pipeline on folders of images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..cluster import DEFAULT_METHOD, cluster as run_cluster, parse_params
from ..clusterers import CLUSTERERS
from ..decode import DEFAULT_MAX_PIXELS
from ..encoders import DEFAULT_ENCODER
from ..errors import UsageError
from ..export import HTML_PER_CLUSTER
from ..pipeline import DEFAULT_FORMATS, run_pipeline
from ..spaces import space_name
from ..select import parse_k_range
from . import app
from ._output import (DebugOption, JsonOption, QuietOption, VerboseOption, detail, emit_json, epoch_reporter, note,
                      progress_bars, stdout)
from .embed import BatchSizeOption, DataRootOption, DeviceOption, LabelsOption, WeightsOption, WorkersOption
from .reduce import REDUCE_PROGRESS, NearCopyOption, SeedOption
from .triage import TRIAGE_PROGRESS


K_HINT = "e.g. --n-clusters 10, --n-clusters auto (chosen without labels), or --n-clusters none (the method decides)"
CHOOSING_K = "choosing K"


def parse_n_clusters(value: Optional[str]) -> int | str | None:
    """``--n-clusters``: an int, ``auto``, ``none`` (None: the method decides), or omitted (``"default"``)."""
    if value is None:
        return "default"
    if value == "auto":
        return value
    if value == "none":
        return None
    try:
        k = int(value)
    except ValueError:
        raise UsageError(f"--n-clusters must be a positive integer, 'auto' or 'none', got {value!r}", hint=K_HINT) from None
    if k < 1:
        raise UsageError(f"--n-clusters must be >= 1, got {k}", hint=K_HINT)
    return k


def default_n_clusters(method: str) -> str | None:
    """What an omitted ``--n-clusters`` means, the same for a cache and for folders: ``auto`` where the
    method takes K, else None (the method finds the number itself)."""
    return None if CLUSTERERS.get(method).n_clusters_mode == "unused" else "auto"


def is_cache_file(path: str) -> bool:
    """A target is a cache when it is an existing HDF5 file (or named *.h5/*.hdf5)."""
    p = Path(path)
    if p.suffix.lower() in (".h5", ".hdf5"):
        return True
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def refuse_folder_options(given: dict[str, object]) -> None:
    """With a cache there is nothing to embed or export: refuse those options instead of ignoring them."""
    for option, value in given.items():
        if value is not None and value is not False:
            raise UsageError(f"{option} applies when clustering folders of images, not a cache",
                             hint=f"drop {option}; for a cache use imgclust embed to add images, imgclust export to "
                                  "write results, imgclust score --labels to score against other labels")


@app.command("cluster")
def cluster_command(
    targets: Annotated[Optional[list[str]], typer.Argument(help="A cache file (cluster its embeddings) or folders/images/sources (run the whole pipeline).", show_default=False)] = None,
    method: Annotated[str, typer.Option("--method", "-m", help="Clustering method (see 'imgclust methods').")] = DEFAULT_METHOD,
    n_clusters: Annotated[Optional[str], typer.Option("--n-clusters", "-k", help="K; 'auto' to choose it without labels; 'none' to let the method decide (agglomerative: cut at ZS's distance threshold for the encoder). Default: auto where the method takes K.", show_default=False)] = None,
    k_range: Annotated[Optional[str], typer.Option("--k-range", help="MIN:MAX searched by --n-clusters auto (default 2 to min(200, images/10)), e.g. 2:200.")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Method parameter key=value (repeatable).")] = None,
    reduction: Annotated[Optional[str], typer.Option("--reduction", help="Override the (encoder, method) space table (see 'imgclust methods'): umap, pca, l2 (ES style: l2-normalised raw embeddings, no UMAP), l2+umap, none (raw), or a stored reduction key.")] = None,
    dims: Annotated[Optional[int], typer.Option("--dims", help="Dimensions of the reduction (default 50).")] = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder", "-e", help=f"Encoder (folders: default {DEFAULT_ENCODER}; cache: its only encoder); A+B clusters the joint space of several.")] = None,
    seed: SeedOption = 0,
    near_copy_threshold: NearCopyOption = "auto",
    device: DeviceOption = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folders only: output folder (default ./<name>-clusters, beside the input when the working folder is inside it).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Folders only: replace a previous result in --out (files imgclust did not write are never touched).")] = False,
    formats: Annotated[Optional[str], typer.Option("--formats", help=f"Folders only: comma-separated exports to write (default: {','.join(DEFAULT_FORMATS)}).", show_default=False)] = None,
    link: Annotated[Optional[str], typer.Option("--link", help="Folders only: how the folders export fills cluster folders: symlink (default), hardlink or copy.")] = None,
    html_per_cluster: Annotated[Optional[int], typer.Option("--html-per-cluster", min=1, show_default=False, help=f"Folders only: images the HTML gallery shows per cluster (default: {HTML_PER_CLUSTER}; see imgclust export --help).")] = None,
    labels: LabelsOption = None,
    files_from: Annotated[Optional[str], typer.Option("--files-from", "-f", help="Folders only: file listing image paths; - reads stdin.")] = None,
    weights: WeightsOption = None,
    batch_size: BatchSizeOption = None,
    workers: WorkersOption = None,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", min=0, help=f"Folders only: decompression-bomb limit in pixels (default {DEFAULT_MAX_PIXELS}); 0 disables it.", show_default=False)] = None,
    data_root: DataRootOption = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Folders only: split of a torchvision source, test (default) or train.")] = None,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Cluster images. Given a cache: cluster its embeddings and store the run. Given folders: run it all.

    \b
    The whole pipeline (ZS defaults): embed -> UMAP 50 -> agglomerative -> score -> csv, json, parquet,
    cluster folders, HTML gallery, plots. Options marked "Folders only" are refused with a cache.
    --device reaches the encoder and the trained methods (temi, icce, scan, unic, cc, turtle).
    \b
    Examples:
      imgclust cluster ./photos --encoder clip-vitb16
      imgclust cluster ./dataset --encoder effnet-lite0 --labels folder --n-clusters 10
      imgclust cluster photos.h5 --method kmeans --n-clusters 20
      imgclust cluster photos.h5 --method hdbscan --param min_cluster_size=10
    """
    targets = targets or []
    k = parse_n_clusters(n_clusters)
    if k == "default":
        k = default_n_clusters(method)
    searched = parse_k_range(k_range) if k_range is not None else None
    if searched is not None and k != "auto":
        raise UsageError("--k-range is the range searched by --n-clusters auto",
                         hint="drop --k-range, or use --n-clusters auto with a method that takes K")
    params = parse_params(param)
    train = f"training {method}"
    if len(targets) == 1 and is_cache_file(targets[0]) and files_from is None:
        refuse_folder_options({"--out": out, "--force": force, "--formats": formats, "--link": link, "--labels": labels,
                               "--html-per-cluster": html_per_cluster,
                               "--weights": weights, "--batch-size": batch_size, "--workers": workers,
                               "--max-pixels": max_pixels, "--data-root": data_root, "--split": split})
        with progress_bars({train: "epochs", CHOOSING_K: "fits", **REDUCE_PROGRESS}) as update:
            run = run_cluster(targets[0], encoder, method, k, params, reduction=reduction, dims=dims, random_state=seed,
                              device=device, on_epoch=epoch_reporter(update, train), k_range=searched,
                              on_select=(lambda done, total: update(CHOOSING_K, done, total)) if update else None,
                              progress=update, near_copies=near_copy_threshold)
        if json_:
            emit_json(run.to_dict())
            return
        sizes = sorted((int((run.labels == c).sum()) for c in set(run.labels.tolist()) if c >= 0), reverse=True)
        stdout().print(f"{run.run_id}: {run.method} found {run.n_clusters} clusters"
                       f"{f' and {run.n_noise} noise points' if run.n_noise else ''} in {run.n_samples} images "
                       f"({run.seconds:.1f} s, in {space_name(run.space)})")
        if run.selection:
            print_selection(run.selection)
        near = (run.reduction_fit or {}).get("near_copies")
        if near:
            detail(f"UMAP fitted on {run.reduction_fit['fitted_on']} rows; {near['collapsed']} near copies "
                   f"(cosine >= {near['threshold']:g}, {near['source']}) placed beside their representative")
        detail(f"cluster sizes: {sizes}")
        note(f"[dim]score it: imgclust score {escape(targets[0])} --run {escape(run.run_id)}[/dim]")
        return
    if not targets and files_from is None:
        raise UsageError("no input given", hint="pass a cache file, or folders/images to cluster (or --files-from)")
    with progress_bars({train: "epochs", **REDUCE_PROGRESS, **TRIAGE_PROGRESS}) as update:
        result = run_pipeline(
            targets, out, encoder=encoder or DEFAULT_ENCODER, method=method, n_clusters=k, params=params, k_range=searched,
            reduction=reduction, dims=dims, labels=labels, files_from=files_from, force=force,
            formats=DEFAULT_FORMATS if formats is None else [f.strip() for f in formats.split(",") if f.strip()],
            link=link or "symlink", random_state=seed, device=device,
            embed_options={"weights": weights, "batch_size": batch_size, "workers": workers, "data_root": data_root,
                           "split": split or "test", "max_pixels": DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels or None},
            progress=update, on_epoch=epoch_reporter(update, train),
            html_per_cluster=HTML_PER_CLUSTER if html_per_cluster is None else html_per_cluster,
            near_copies=near_copy_threshold)
    if json_:
        emit_json(result.to_dict())
        return
    print_pipeline_summary(result)


def print_pipeline_summary(result) -> None:
    out = stdout()
    s, e, run = result.report.scores, result.embed, result.run
    out.print(f"images      {e.images} embedded ({e.embedded} new, {e.skipped} cached), {e.failures_total} failed")
    chosen = " (chosen without labels)" if run.selection else ""
    out.print(f"clusters    {run.n_clusters}{chosen}, method {run.method}, encoder {run.encoder}")
    out.print(f"silhouette  {_fmt(s.silhouette)} (in {result.report.silhouette_space})")
    if run.selection:
        print_selection(run.selection)
    if s.ami is not None:
        out.print(f"labels      AMI {_fmt(s.ami)}  NMI {_fmt(s.nmi)}  ARI {_fmt(s.ari)}  accuracy {_fmt(s.accuracy)}"
                  f"  BCubed F {_fmt(s.bcubed_f)}  ({s.n_classes} classes)")
    out.print(f"results     {result.out}/ (assignments.csv, clusters.csv, gallery/index.html, ...)")
    if result.out_moved:
        note("[dim]the output folder is beside the input, not inside it, so its files are never taken as images[/dim]")
    for fmt, reason in result.skipped_formats.items():
        note(f"[yellow]skipped {fmt}:[/yellow] {escape(reason)}")


def print_selection(selection: dict) -> None:
    """The label-free choice of K in one line on stdout; its doubts (flags) also as a warning on stderr."""
    line = selection.get("summary") or f"K = {selection.get('n_clusters')}"
    stdout().print(f"K chosen    {line}")
    if selection.get("flags"):
        note(f"[yellow]no confident K ({', '.join(selection['flags'])}):[/yellow] {escape(line)}")


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"
