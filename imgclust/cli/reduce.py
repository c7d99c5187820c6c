"""``imgclust reduce``: store a reduced copy of the cached embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..reduce import PROGRESS_UNITS as REDUCE_PROGRESS, parse_near_copies, reduce as run_reduce
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, note, progress_bars, stdout

CacheArgument = Annotated[Path, typer.Argument(help="The HDF5 cache written by imgclust embed.")]
CacheEncoderOption = Annotated[Optional[str], typer.Option("--encoder", "-e", help="Which encoder's embeddings (default: the only one in the cache).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed (UMAP, k-means, training).")]
NearCopyOption = Annotated[str, typer.Option(
    "--near-copy-threshold",
    help="UMAP: images whose embeddings have at least this cosine similarity are near copies; UMAP is fitted on one "
         "of each group and places the others (many copies otherwise tear its graph apart). 'auto': the encoder "
         "family's near-duplicate threshold (as imgclust duplicates); 'none': fit on every image.")]


@app.command("reduce")
def reduce_command(
    cache: CacheArgument,
    method: Annotated[str, typer.Option("--method", "-m", help="umap, pca, l2, none, or l2+umap / l2+pca.")] = "umap",
    dims: Annotated[int, typer.Option("--dims", "-d", help="Output dimensions (umap, pca). ZS: 5-100 all work; 50 default.")] = 50,
    variance: Annotated[Optional[float], typer.Option("--variance", help="pca: keep this fraction of the variance (0-1] instead of --dims.")] = None,
    n_neighbors: Annotated[int, typer.Option("--n-neighbors", help="UMAP neighbourhood size (ZS: 30).")] = 30,
    min_dist: Annotated[float, typer.Option("--min-dist", help="UMAP minimum distance (ZS: 0.0).")] = 0.0,
    metric: Annotated[str, typer.Option("--metric", help="UMAP input metric.")] = "euclidean",
    encoder: CacheEncoderOption = None,
    seed: SeedOption = 0,
    near_copy_threshold: NearCopyOption = "auto",
    force: Annotated[bool, typer.Option("--force", help="Recompute even if stored.")] = False,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Reduce the embeddings (UMAP 50 by default, as ZS) and store them in the cache for later stages.

    \b
    Examples:
      imgclust reduce photos.h5                      # UMAP, n_neighbors=30, min_dist=0, 50 dims
      imgclust reduce photos.h5 --method l2+pca --variance 0.9
      imgclust reduce photos.h5 --near-copy-threshold none   # fit UMAP on every image, copies included
    """
    near_copies = parse_near_copies(near_copy_threshold)  # a bad value is refused before anything is printed
    if not quiet and not json_:
        note(f"reducing with {method} ...")
    with progress_bars(REDUCE_PROGRESS) as update:
        result = run_reduce(cache, encoder, method, dims, variance=variance, n_neighbors=n_neighbors, min_dist=min_dist,
                            metric=metric, random_state=seed, near_copies=near_copies, force=force,
                            progress=update)
    if json_:
        emit_json(result.to_dict())
        return
    how = "reused stored" if result.reused else f"computed in {result.seconds:.1f} s"
    near = result.near_copies
    collapsed = (f", {near['collapsed']} near copies (cosine >= {near['threshold']:g}) placed beside their representative"
                 if near else "")
    stdout().print(f"{result.key}: {result.shape[0]} x {result.shape[1]} ({how}; fitted on {result.fitted_on} rows{collapsed})")
