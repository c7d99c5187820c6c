"""``imgclust import``: add vectors made elsewhere to a cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..vectors import import_vectors
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, progress_bar, stdout


@app.command("import")
def import_command(
    vectors: Annotated[str, typer.Argument(help="Vectors: .npy (memory-mapped), .npz, .parquet (list column) or .h5 (FILE.h5:/dataset).")],
    paths: Annotated[str, typer.Option("--paths", help="A file naming each vector, one per line (need not exist); - reads stdin.")],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="The name to store them under (e.g. the model that made them).")],
    labels: Annotated[Optional[str], typer.Option("--labels", help="A file with one label per vector, one per line.")] = None,
    cache: Annotated[Path, typer.Option("--cache", "-c", help="HDF5 cache file to create or update.")] = Path("imgclust-cache.h5"),
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="The array (.npz), column (.parquet) or dataset (.h5) to read.")] = None,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Add embeddings made elsewhere to a cache; then reduce, cluster, score and export work on them.

    \b
    Examples:
      imgclust import vectors.npy --paths names.txt --encoder my-model --cache photos.h5
      imgclust import feats.parquet --dataset embedding --paths names.txt --labels classes.txt -e dino
    """
    with progress_bar("importing", unit="vectors") as update:
        summary = import_vectors(vectors, paths, encoder, cache, labels=labels, dataset=dataset, progress=update)
    if json_:
        emit_json(summary.to_dict())
        return
    stdout().print(f"imported {summary.imported} new and {summary.replaced} replaced {summary.dim}-d vectors from "
                   f"{summary.source}; {summary.cache} holds {summary.images} rows of "
                   f"'{summary.encoder}'")
