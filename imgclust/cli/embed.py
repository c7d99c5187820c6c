"""``imgclust embed``: images -> embeddings in the HDF5 cache.

Exit codes: 0 done (some files may have failed: they are listed in the cache); 1 a runtime failure,
or no image at all could be read (the failures are still recorded); 2 a usage error; 130 interrupted
by Ctrl-C -- finished work is saved and the same command resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from ..decode import DEFAULT_MAX_PIXELS
from ..embed import embed as run_embed
from ..encoders import DEFAULT_ENCODER
from ..errors import ImgclustError
from . import app
from ._output import (EXIT_INTERRUPTED, DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, note, progress_bar,
                      report_interrupt, stdout)

EncoderOption = Annotated[str, typer.Option("--encoder", "-e", help="Encoder name (see 'imgclust encoders'), timm:<model> or open_clip:<arch>:<tag>; A+B embeds with each, then stores their joint space A+B.")]
CacheOption = Annotated[Path, typer.Option("--cache", "-c", help="HDF5 cache file to create or update.")]
LabelsOption = Annotated[Optional[str], typer.Option("--labels", help="Ground truth: 'folder' (parent folder name) or a path,label CSV.")]
WeightsOption = Annotated[Optional[str], typer.Option("--weights", help="Local checkpoint for the encoder ('random' = untrained, for tests).")]
DataRootOption = Annotated[Optional[Path], typer.Option("--data-root", help="Where data-set sources (sklearn:digits, torchvision:CIFAR10) are written.")]
SplitOption = Annotated[str, typer.Option("--split", help="Split of a torchvision source: test or train.")]
DeviceOption = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N or mps (default: CUDA, then MPS, then CPU); a device this machine lacks is refused.")]
BatchSizeOption = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Images per forward pass (default: 32 on a CPU, 128 on a GPU).")]
WorkersOption = Annotated[Optional[int], typer.Option("--workers", "-w", min=0, help="Decoding processes (default: every core on a CPU, sharing them with the model; every core but one on a GPU; at most 8; 0 decodes inline). With --engine ray: encoder actors (default: one per GPU, else one per node).")]
RuntimeOption = Annotated[str, typer.Option("--runtime", help="What runs the model: auto (the cache's own runtime, else the best here: openvino on a CPU, "
                                            "torch-amp on a GPU), torch, torch-amp, onnxruntime, openvino or openvino-bf16. One cache holds one runtime's rows.")]
MaxPixelsOption = Annotated[int, typer.Option("--max-pixels", min=0, help="Decompression-bomb limit in pixels; 0 disables it.")]


@app.command("embed")
def embed_command(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Folders (walked recursively), image files, glob patterns, or sklearn:digits / torchvision:<Dataset>.", show_default=False)] = None,
    encoder: EncoderOption = DEFAULT_ENCODER,
    cache: CacheOption = Path("imgclust-cache.h5"),
    files_from: Annotated[Optional[str], typer.Option("--files-from", "-f", help="File listing one image path per line; - reads stdin.")] = None,
    labels: LabelsOption = None,
    weights: WeightsOption = None,
    device: DeviceOption = None,
    batch_size: BatchSizeOption = None,
    workers: WorkersOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    flush_rows: Annotated[int, typer.Option("--flush-rows", min=1, help="Advanced: save finished work to the journal every N images "
                                            "(and at least every 15 s); smaller loses less to a crash or kill, costs a little speed.")] = 512,
    data_root: DataRootOption = None,
    split: SplitOption = "test",
    views: Annotated[int, typer.Option("--views", min=0, help="Also store N augmented-view embeddings per image (for --method cc).")] = 0,
    prune: Annotated[bool, typer.Option("--prune", help="Drop the rows of files that cannot be found (by default they are kept: a disk may only be unmounted).")] = False,
    reembed: Annotated[bool, typer.Option("--reembed", help="Embed every image again, replacing this encoder's rows (e.g. with another --device or --batch-size than they were made with).")] = False,
    runtime: RuntimeOption = "auto",
    decode: Annotated[Optional[str], typer.Option("--decode", help="Where JPEGs are decoded: cpu (worker processes) or gpu "
                                                  "(nvJPEG on the CUDA device; files it cannot decode fall back to the CPU). "
                                                  "Default: the cache's own, else cpu.")] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (this machine) or ray: decode in CPU tasks and encode in an actor pool on a "
                                        "Ray cluster (pip install \"imgclust\\[ray]\"); the rows equal the local engine's.")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="With --engine ray: the cluster ('auto': the one 'ray start' "
                                                       "runs on this machine, or HOST:6379); default: a local Ray instance.")] = None,
    gpus_per_worker: Annotated[Optional[float], typer.Option("--gpus-per-worker", min=0, help="With --engine ray: GPUs per encoder actor "
                                                             "(0.5 puts two on one GPU; default: 1 when the cluster has GPUs, else 0).")] = None,
    features: Annotated[str, typer.Option("--features", help="default, or cls+patchmean (ViTs: CLS token + mean of the patch tokens, as ICCE), stored as the encoder '<encoder>+cls+patchmean'.")] = "default",
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Embed every image into the cache (resumable: unchanged images are skipped, new ones appended).

    \b
    Examples:
      imgclust embed ./photos --encoder clip-vitb16
      imgclust embed ./dataset --encoder effnet-lite0 --labels folder --cache ds.h5
      find . -name '*.jpg' | imgclust embed --files-from - --cache photos.h5
      imgclust embed /shared/photos --engine ray --ray-address auto --cache photos.h5
    """
    try:
        with progress_bar(f"embedding ({encoder})") as update:
            summary = run_embed(paths or [], encoder=encoder, cache=cache, files_from=files_from, labels=labels,
                                weights=weights, device=device, batch_size=batch_size, workers=workers,
                                max_pixels=max_pixels or None, progress=update, data_root=data_root, split=split,
                                flush_rows=flush_rows, views=views, prune=prune, reembed=reembed, runtime=runtime,
                                decode_on=decode, features=features, engine=engine, ray_address=ray_address,
                                gpus_per_worker=gpus_per_worker)
    except KeyboardInterrupt:  # Ctrl-C while saving: the cache is unchanged and the journal keeps the work
        _interrupted(str(cache))
    all_failed = summary.images == 0 and summary.failures_total > 0 and not summary.interrupted
    if json_ and all_failed:
        pass  # the error raised below is the JSON result
    elif json_:
        emit_json(summary.to_dict())
    else:
        out = stdout()
        where, name = summary.cache, summary.encoder
        if summary.embedded == 0 and summary.failed == 0 and not summary.interrupted:
            out.print(f"nothing new to embed: {summary.images} images already in {where} ({name})")
        else:
            out.print(f"embedded {summary.embedded} new ({summary.changed} changed), skipped {summary.skipped} cached, "
                      f"failed {summary.failed}, removed {summary.removed}, confirmed {summary.confirmed} moved "
                      f"in {summary.seconds:.1f} s "
                      f"({summary.images_per_second:.1f} images/s on {summary.device}, {summary.runtime})")
            out.print(f"cache {where}: {summary.images} images, {summary.failures_total} failures ({name})")
        if summary.recomputed_float32:
            note(f"[yellow]note:[/yellow] {summary.recomputed_float32} images gave NaN/Inf in half precision and were "
                 f"embedded again in float32")
        if summary.failures_total:
            note(f"[dim]list failures with: imgclust info {escape(str(where))} --failures[/dim]")
        if summary.kept_missing:
            note(f"[yellow]note:[/yellow] kept {summary.kept_missing} rows of missing files; --prune drops them")
        if summary.stale_results:
            note(f"[yellow]note:[/yellow] the images changed: {len(summary.stale_results)} stored reductions/runs are "
                 f"now stale (kept; imgclust info lists them, imgclust cache rm removes them)")
    if summary.interrupted:
        _interrupted(summary.cache)
    if all_failed:
        raise ImgclustError(f"none of the images could be read: {summary.failures_total} failures recorded in "
                            f"{summary.cache}, no embeddings", hint=f"see why with: imgclust info {summary.cache} --failures")


def _interrupted(cache: str) -> None:
    report_interrupt(f"finished work is saved in {cache}; run the same command again to resume")
    raise typer.Exit(EXIT_INTERRUPTED)
