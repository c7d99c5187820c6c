"""``imgclust cluster``: cluster a cache, or run the whole pipeline on folders of images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..cluster import DEFAULT_METHOD, cluster as run_cluster, parse_params
from ..encoders import DEFAULT_ENCODER
from ..errors import UsageError
from ..pipeline import DEFAULT_FORMATS, run_pipeline
from ..select import parse_k_range
from . import app
from ._output import (DebugOption, JsonOption, QuietOption, VerboseOption, detail, emit_json, epoch_reporter, note,
                      progress_bars, stdout)
from .embed import DataRootOption, DeviceOption, LabelsOption, SplitOption, WeightsOption
from .reduce import SeedOption


K_HINT = "e.g. --n-clusters 10, or --n-clusters auto to choose it without labels"
CHOOSING_K = "choosing K"


def parse_n_clusters(value: Optional[str]) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        raise UsageError(f"--n-clusters must be a positive integer or 'auto', got {value!r}", hint=K_HINT) from None
    if k < 1:
        raise UsageError(f"--n-clusters must be >= 1, got {k}", hint=K_HINT)
    return k


def is_cache_file(path: str) -> bool:
    """A target is a cache when it is an existing HDF5 file (or named *.h5/*.hdf5)."""
    p = Path(path)
    if p.suffix.lower() in (".h5", ".hdf5"):
        return True
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


@app.command("cluster")
def cluster_command(
    targets: Annotated[Optional[list[str]], typer.Argument(help="A cache file (cluster its embeddings) or folders/images/sources (run the whole pipeline).", show_default=False)] = None,
    method: Annotated[str, typer.Option("--method", "-m", help="Clustering method (see 'imgclust methods').")] = DEFAULT_METHOD,
    n_clusters: Annotated[Optional[str], typer.Option("--n-clusters", "-k", help="K, or 'auto' to choose it without labels. Default: cache: the method decides (agglomerative: ZS distance threshold); folders: auto.")] = None,
    k_range: Annotated[Optional[str], typer.Option("--k-range", help="MIN:MAX searched by --n-clusters auto (default 2 to min(200, images/10)), e.g. 2:200.")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Method parameter key=value (repeatable).")] = None,
    reduction: Annotated[Optional[str], typer.Option("--reduction", help="umap (default), pca, l2+umap, none (raw), or a stored reduction key.")] = None,
    dims: Annotated[Optional[int], typer.Option("--dims", help="Dimensions of the reduction (default 50).")] = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder", "-e", help=f"Encoder (folders: default {DEFAULT_ENCODER}; cache: its only encoder).")] = None,
    seed: SeedOption = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folders: output folder (default ./<name>-clusters).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Folders: overwrite a previous result in --out.")] = False,
    formats: Annotated[str, typer.Option("--formats", help="Folders: comma-separated exports to write.")] = ",".join(DEFAULT_FORMATS),
    link: Annotated[str, typer.Option("--link", help="Folders export: symlink, hardlink or copy.")] = "symlink",
    labels: LabelsOption = None,
    files_from: Annotated[Optional[str], typer.Option("--files-from", "-f", help="Folders: file listing image paths; - reads stdin.")] = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")] = 32,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=0, help="Decoding processes.")] = None,
    data_root: DataRootOption = None,
    split: SplitOption = "test",
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Cluster images. Given a cache: cluster its embeddings and store the run. Given folders: run it all.

    \b
    The whole pipeline (ZS defaults): embed -> UMAP 50 -> agglomerative -> score -> csv, json, parquet,
    cluster folders, HTML gallery, plots.
    \b
    Examples:
      imgclust cluster ./photos --encoder clip-vitb16
      imgclust cluster ./dataset --encoder effnet-lite0 --labels folder --n-clusters 10
      imgclust cluster photos.h5 --method kmeans --n-clusters 20
      imgclust cluster photos.h5 --method hdbscan --param min_cluster_size=10
    """
    targets = targets or []
    k = parse_n_clusters(n_clusters)
    searched = parse_k_range(k_range) if k_range is not None else None
    if searched is not None and isinstance(k, int):
        raise UsageError("--k-range is the range searched by --n-clusters auto", hint="drop --k-range, or use --n-clusters auto")
    params = parse_params(param)
    train = f"training {method}"
    if len(targets) == 1 and is_cache_file(targets[0]) and files_from is None:
        with progress_bars({train: "epochs", CHOOSING_K: "fits"}) as update:
            run = run_cluster(targets[0], encoder, method, k, params, reduction=reduction, dims=dims, random_state=seed,
                              on_epoch=epoch_reporter(update, train), k_range=searched,
                              on_select=(lambda done, total: update(CHOOSING_K, done, total)) if update else None)
        if json_:
            emit_json(run.to_dict())
            return
        sizes = sorted((int((run.labels == c).sum()) for c in set(run.labels.tolist()) if c >= 0), reverse=True)
        stdout().print(f"{run.run_id}: {run.method} found {run.n_clusters} clusters"
                       f"{f' and {run.n_noise} noise points' if run.n_noise else ''} in {run.n_samples} images "
                       f"({run.seconds:.1f} s, space {run.space})")
        if run.selection:
            print_selection(run.selection)
        detail(f"cluster sizes: {sizes}")
        note(f"[dim]score it: imgclust score {escape(targets[0])} --run {run.run_id}[/dim]")
        return
    if not targets and files_from is None:
        raise UsageError("no input given", hint="pass a cache file, or folders/images to cluster (or --files-from)")
    with progress_bars({train: "epochs"}) as update:
        result = run_pipeline(
            targets, out, encoder=encoder or DEFAULT_ENCODER, method=method, n_clusters="auto" if k is None else k,
            params=params, labels=labels, files_from=files_from, force=force, k_range=searched,
            formats=[f.strip() for f in formats.split(",") if f.strip()], link=link, random_state=seed,
            embed_options={"weights": weights, "device": device, "batch_size": batch_size, "workers": workers,
                           "data_root": data_root, "split": split},
            progress=update, on_epoch=epoch_reporter(update, train))
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
    out.print(f"silhouette  {_fmt(s.silhouette)} ({'raw embedding' if run.space == 'raw' else 'UMAP'} space)")
    if run.selection:
        print_selection(run.selection)
    if s.ami is not None:
        out.print(f"labels      AMI {_fmt(s.ami)}  NMI {_fmt(s.nmi)}  ARI {_fmt(s.ari)}  accuracy {_fmt(s.accuracy)}"
                  f"  BCubed F {_fmt(s.bcubed_f)}  ({s.n_classes} classes)")
    out.print(f"results     {escape(result.out)}/ (assignments.csv, clusters.csv, gallery/index.html, ...)")
    for fmt, reason in result.skipped_formats.items():
        note(f"[yellow]skipped {fmt}:[/yellow] {reason}")


def print_selection(selection: dict) -> None:
    """The label-free choice of K in one line on stdout; its doubts (flags) also as a warning on stderr."""
    line = selection.get("summary") or f"K = {selection.get('n_clusters')}"
    stdout().print(f"K chosen    {escape(line)}", highlight=False)
    if selection.get("flags"):
        note(f"[yellow]no confident K ({', '.join(selection['flags'])}):[/yellow] {escape(line)}")


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"
