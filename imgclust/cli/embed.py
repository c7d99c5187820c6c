"""``imgclust embed``: images -> embeddings in the HDF5 cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..embed import embed as run_embed
from ..encoders import DEFAULT_ENCODER
from . import app
from ._output import EXIT_INTERRUPTED, DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, note, progress_bar, stdout

EncoderOption = Annotated[str, typer.Option("--encoder", "-e", help="Encoder name (see 'imgclust encoders'), timm:<model> or open_clip:<arch>:<tag>.")]
CacheOption = Annotated[Path, typer.Option("--cache", "-c", help="HDF5 cache file to create or update.")]
LabelsOption = Annotated[Optional[str], typer.Option("--labels", help="Ground truth: 'folder' (parent folder name) or a path,label CSV.")]
WeightsOption = Annotated[Optional[str], typer.Option("--weights", help="Local checkpoint for the encoder ('random' = untrained, for tests).")]
DeviceOption = Annotated[Optional[str], typer.Option("--device", help="cuda, mps or cpu (default: the best available).")]


@app.command("embed")
def embed_command(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Folders (walked recursively), image files or glob patterns.", show_default=False)] = None,
    encoder: EncoderOption = DEFAULT_ENCODER,
    cache: CacheOption = Path("imgclust-cache.h5"),
    files_from: Annotated[Optional[str], typer.Option("--files-from", "-f", help="File listing one image path per line; - reads stdin.")] = None,
    labels: LabelsOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")] = 32,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=0, help="Decoding processes (default: cores - 1; 0 decodes inline).")] = None,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=0, help="Decompression-bomb limit in pixels; 0 disables it.")] = 178_956_970,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Embed every image into the cache (resumable: unchanged images are skipped, new ones appended).

    \b
    Examples:
      imgclust embed ./photos --encoder clip-vitb16
      imgclust embed ./dataset --encoder effnet-lite0 --labels folder --cache ds.h5
      find . -name '*.jpg' | imgclust embed --files-from - --cache photos.h5
    """
    with progress_bar(f"embedding ({encoder})") as update:
        summary = run_embed(paths or [], encoder=encoder, cache=cache, files_from=files_from, labels=labels,
                            weights=weights, device=device, batch_size=batch_size, workers=workers,
                            max_pixels=max_pixels or None, progress=update)
    if json_:
        emit_json(summary.to_dict())
    else:
        out = stdout()
        if summary.embedded == 0 and summary.failed == 0 and not summary.interrupted:
            out.print(f"nothing new to embed: {summary.images} images already in {summary.cache} ({summary.encoder})")
        else:
            out.print(f"embedded {summary.embedded} new ({summary.changed} changed), skipped {summary.skipped} cached, "
                      f"failed {summary.failed}, removed {summary.removed} in {summary.seconds:.1f} s "
                      f"({summary.images_per_second:.1f} images/s on {summary.device})")
            out.print(f"cache {summary.cache}: {summary.images} images, {summary.failures_total} failures ({summary.encoder})")
        if summary.failures_total:
            note(f"[dim]list failures with: imgclust info {summary.cache} --failures[/dim]")
        if summary.dropped_derived:
            note(f"[yellow]note:[/yellow] the images changed, so {len(summary.dropped_derived)} stored reductions/runs were dropped")
    if summary.interrupted:
        note(f"[yellow]interrupted:[/yellow] finished work is saved in {summary.cache}; run the same command again to resume")
        raise typer.Exit(EXIT_INTERRUPTED)
