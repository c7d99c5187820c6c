"""``imgclust export``: a stored run as CSV, JSON, Parquet, cluster folders, an HTML gallery or plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..export import FORMATS, ROW_FORMATS, export as run_export
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, progress_bar, stdout
from .reduce import CacheArgument, CacheEncoderOption
from .score import RunOption


@app.command("export")
def export_command(
    cache: CacheArgument,
    run: RunOption = None,
    format: Annotated[str, typer.Option("--format", "-F", help=f"One of {', '.join(FORMATS + ROW_FORMATS)} (embeddings: the rows themselves, --out X.parquet or X.npy).")] = "csv",
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output folder; - writes csv/json to stdout.")] = None,
    encoder: CacheEncoderOption = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="path,label CSV (default: labels stored by embed).")] = None,
    link: Annotated[str, typer.Option("--link", help="folders: symlink (default), hardlink or copy. Originals are never moved.")] = "symlink",
    force: Annotated[bool, typer.Option("--force", help="Overwrite files from an earlier export.")] = False,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Export a run: one row per image (path, cluster, silhouette, distance to centre, label) and cluster summaries.

    \b
    Examples:
      imgclust export photos.h5 --format csv --out results/
      imgclust export photos.h5 --format csv --out - | head
      imgclust export photos.h5 --format folders --link copy --out by-cluster/
      imgclust export photos.h5 --format html --out gallery/
    """
    with progress_bar(f"export {format}", unit="thumbnails") as update:
        result = run_export(cache, run, format, out, encoder=encoder, labels=labels, link=link, force=force,
                            on_progress=update)
    if out == "-":
        return
    if json_:
        emit_json(result.to_dict())
    else:
        for path in result.paths:
            stdout().print(path)
