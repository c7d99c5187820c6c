"""``imgclust assign``: put new images into the clusters of a stored run."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..assign import assign as run_assign
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, note, progress_bar, stdout
from ..decode import DEFAULT_MAX_PIXELS
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
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Assign new images to the clusters of a run (trained heads predict; other runs use the nearest centre).

    Prints path<TAB>cluster per image (the run and the cache are not changed).
    """
    with progress_bar("assigning") as update:
        result = run_assign(cache, paths or [], run, encoder=encoder, files_from=files_from, device=device,
                            batch_size=batch_size, workers=workers, max_pixels=max_pixels or None, progress=update)
    if json_:
        emit_json(result.to_dict())
        return
    out = stdout()
    for path, cluster in zip(result.paths, result.clusters):
        out.print(f"{path}\t{cluster}")
    note(f"[dim]{len(result.paths)} images assigned to {escape(result.run_id)} by {escape(result.method)}[/dim]")
    for path, reason in result.failures.items():
        note(f"[yellow]skipped[/yellow] {escape(path)}: {escape(reason)}")
