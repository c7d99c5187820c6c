"""``imgclust assign``: put new images into the clusters of a stored run."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..assign import DEFAULT_VOTE_K, assign as run_assign, assign_vectors
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, note, progress_bar, stdout
from ..decode import DEFAULT_MAX_PIXELS
from ..errors import UsageError
from .embed import BatchSizeOption, DeviceOption, MaxPixelsOption, WorkersOption
from .reduce import CacheArgument, CacheEncoderOption
from .score import RunOption


@app.command("assign")
def assign_command(
    cache: CacheArgument,
    paths: Annotated[Optional[list[str]], typer.Argument(help="New images, folders or glob patterns.", show_default=False)] = None,
    run: RunOption = None,
    encoder: CacheEncoderOption = None,
    files_from: Annotated[Optional[str], typer.Option("--files-from", "-f", help="File listing image paths; - reads stdin.")] = None,
    device: DeviceOption = None,
    batch_size: BatchSizeOption = None,
    workers: WorkersOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    vectors: Annotated[Optional[str], typer.Option("--vectors", help="Assign vectors made elsewhere instead of images (.npy, .npz, .parquet, .h5; needs --paths).")] = None,
    vector_paths: Annotated[Optional[str], typer.Option("--paths", help="With --vectors: a file naming each vector, one per line.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="With --vectors: the array, column or HDF5 dataset to read.")] = None,
    vote: Annotated[str, typer.Option("--vote", help="Runs without a trained head: 'centre' (nearest cluster centre) or 'knn' (a vote of the --k nearest clustered images, for clusters of any shape).")] = "centre",
    k: Annotated[int, typer.Option("--k", help="With --vote knn: how many nearest images vote.")] = DEFAULT_VOTE_K,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Assign new images to the clusters of a run (trained heads predict; other runs: nearest centre or k-NN vote).

    Prints path<TAB>cluster per image (the run and the cache are not changed). With --vectors FILE
    --paths FILE, vectors made elsewhere (by the run's encoder) are assigned instead of images.
    """
    if vectors is not None or vector_paths is not None:
        if vectors is None or vector_paths is None or paths:
            raise UsageError("--vectors and --paths go together, without image arguments",
                             hint="imgclust assign CACHE --vectors new.npy --paths new.txt")
        result = assign_vectors(cache, vectors, vector_paths, run, encoder=encoder, dataset=dataset, vote=vote, k=k)
    else:
        with progress_bar("assigning") as update:
            result = run_assign(cache, paths or [], run, encoder=encoder, files_from=files_from, device=device,
                                batch_size=batch_size, workers=workers, max_pixels=max_pixels or None, progress=update,
                                vote=vote, k=k)
    if json_:
        emit_json(result.to_dict())
        return
    out = stdout()
    for path, cluster in zip(result.paths, result.clusters):
        out.print(f"{path}\t{cluster}")
    note(f"[dim]{len(result.paths)} images assigned to {escape(result.run_id)} by {escape(result.method)}[/dim]")
    for path, reason in result.failures.items():
        note(f"[yellow]skipped[/yellow] {escape(path)}: {escape(reason)}")
