"""``imgclust duplicates``, ``outliers`` and ``names``: dataset triage on the cached embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..cache import READ_STAGE
from ..duplicates import DEFAULT_K as DUPLICATE_K, SIZES_STAGE, find_duplicates, write_duplicates
from ..knn import KNN_STAGE
from ..names import cluster_names
from ..outliers import DEFAULT_K as OUTLIER_K, MARK_SCORE, find_outliers
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, note, progress_bar, progress_bars, stdout
from .reduce import CacheArgument, CacheEncoderOption
from .score import RunOption

ListOption = "One path per line (for xargs); - prints it on stdout instead of the summary."
#: What each stage of the raw neighbour graph's making counts (duplicates, outliers, and the exports using them).
TRIAGE_PROGRESS = {READ_STAGE: "rows", KNN_STAGE: "rows", SIZES_STAGE: "files"}


@app.command("duplicates")
def duplicates_command(
    cache: CacheArgument,
    threshold: Annotated[Optional[float], typer.Option("--threshold", "-t", help="Cosine similarity T in (0, 1] for near duplicates (default: calibrated per encoder family).")] = None,
    hash_distance: Annotated[Optional[int], typer.Option("--hash-distance", help="Also near duplicates: perceptual hashes within this many bits (0-64) and cosine >= --weak-threshold (default: calibrated).")] = None,
    weak_threshold: Annotated[Optional[float], typer.Option("--weak-threshold", help="The cosine similarity in [-1, 1] the hash arm also needs (default: calibrated).")] = None,
    no_hash: Annotated[bool, typer.Option("--no-hash", help="Turn the perceptual-hash arm off: cosine >= threshold alone.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for duplicates.csv (one row per member) and duplicates.json.")] = None,
    keep_list: Annotated[Optional[str], typer.Option("--keep-list", help=f"Write the keeper of each group. {ListOption}")] = None,
    drop_list: Annotated[Optional[str], typer.Option("--drop-list", help=f"Write every other member of a group. {ListOption}")] = None,
    neighbours: Annotated[int, typer.Option("--neighbours", "-k", help="Neighbours per image in the similarity graph.")] = DUPLICATE_K,
    encoder: CacheEncoderOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace files from an earlier run.")] = False,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Find exact duplicates (same file bytes) and near duplicates (cosine similarity >= threshold, or perceptual
    hashes within --hash-distance bits and cosine >= --weak-threshold), grouped so that every pair in a group meets
    the rule, with a keeper per group (most pixels, then largest file).

    \b
    Examples:
      imgclust duplicates photos.h5
      imgclust duplicates photos.h5 --threshold 0.95 --hash-distance 8 --out triage/
      imgclust duplicates photos.h5 --no-hash --json
      imgclust duplicates photos.h5 --drop-list - | xargs -d '\\n' rm --
    """
    if keep_list == "-" and drop_list == "-":
        raise typer.BadParameter("only one of --keep-list and --drop-list can be - (stdout)")
    with progress_bars(TRIAGE_PROGRESS) as update:
        report = find_duplicates(cache, encoder, threshold, hash_distance=hash_distance, weak_threshold=weak_threshold,
                                 use_hash=not no_hash, k=neighbours, progress=update)
    if report.rule.hash_distance is not None and report.n_without_perceptual_hash:
        note(f"{report.n_without_perceptual_hash} of {report.n_images} rows have no perceptual hash (imported, or embedded "
             f"before imgclust stored it): they are matched by the embedding alone; re-embedding adds it "
             f"(imgclust embed PATH --cache {escape(str(cache))} --reembed)")
    written = write_duplicates(report, out, keep_list=keep_list, drop_list=drop_list, force=force)
    to_stdout = "-" in (keep_list, drop_list)
    if json_ and not to_stdout:
        emit_json({**report.to_dict(), "written": written})
        return
    counts = report.counts()
    matched = ", ".join(f"{n} by {arm}" for arm, n in counts["matched_by"].items() if n)
    summary = (f"{report.n_images} images, {report.encoder} ({report.rule.describe()}; {report.threshold_source}): "
               f"{counts['groups']} duplicate groups ({counts['exact_groups']} exact, {counts['near_groups']} near), "
               f"{counts['images_in_groups']} images in them, {counts['to_drop']} to drop" + (f" ({matched})" if matched else ""))
    if to_stdout:
        note(escape(summary))
        return
    out_console = stdout()
    out_console.print(summary)
    if report.n_unhashed:
        note(f"[dim]{report.n_unhashed} rows have no content hash (embedded by an older imgclust): "
             "they are found only as near duplicates[/dim]")
    for group in report.groups[: None if verbose else 20]:
        out_console.print(f"group {group.group} ({group.kind}): keep {group.keeper}")
        for path, similarity, distance, match in zip(group.drops, group.similarity[1:], group.hash_distance[1:],
                                                     group.match[1:]):
            bits = f", hash {distance} bits" if distance is not None else ""
            out_console.print(f"  drop {escape(path)} ({match}: similarity {similarity:.3f}{bits})")
    if len(report.groups) > 20 and not verbose:
        note(f"[dim]{len(report.groups) - 20} more groups: --verbose lists them all, --out writes them[/dim]")
    for path in written:
        note(f"wrote {escape(path)}")


@app.command("outliers")
def outliers_command(
    cache: CacheArgument,
    top: Annotated[int, typer.Option("--top", "-n", min=0, help="How many of the most isolated images to list.")] = 20,
    neighbours: Annotated[int, typer.Option("--neighbours", "-k", help="The score is the distance to this neighbour.")] = OUTLIER_K,
    encoder: CacheEncoderOption = None,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """List the most isolated images: score = cosine distance to the k-th nearest other image over its median
    (1 is typical; images at 1.5 or more are marked as outliers in reports).

    \b
    Examples:
      imgclust outliers photos.h5 --top 50
      imgclust outliers photos.h5 --top 100 --json
    """
    with progress_bars(TRIAGE_PROGRESS) as update:
        report = find_outliers(cache, encoder, k=neighbours, progress=update)
    if json_:
        emit_json(report.to_dict(top))
        return
    table = Table(title=f"{report.encoder}: the {min(top, len(report.scores))} most isolated of "
                        f"{len(report.scores)} images (distance to the {report.k}th neighbour / its median "
                        f"{report.median_distance:.4f}; {len(report.marked)} at >= {MARK_SCORE})",
                  title_justify="left")
    for column, justify in (("rank", "right"), ("score", "right"), ("path", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for rank, row in enumerate(report.top(top), start=1):
        table.add_row(str(rank), f"{report.scores[row]:.3f}", str(report.paths[row]))
    stdout().print(table)


VocabularyOption = Annotated[Optional[Path], typer.Option("--vocabulary", help="Words to name clusters with, one per line (default: the built-in 10,951 nouns).")]


@app.command("names")
def names_command(
    cache: CacheArgument,
    run: RunOption = None,
    vocabulary: VocabularyOption = None,
    top: Annotated[int, typer.Option("--top", "-n", min=1, help="Names per cluster.")] = 3,
    encoder: CacheEncoderOption = None,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Name each cluster of a run with a CLIP encoder: the words whose prompt "a photo of a {word}" is nearest the
    cluster's mean image embedding, with the cosine similarity. Other encoders: skipped with a note.

    \b
    Examples:
      imgclust names photos.h5
      imgclust names photos.h5 --vocabulary my-words.txt --top 5 --json
    """
    with progress_bar("text embeddings", unit="words") as update:
        names, why = cluster_names(cache, run, encoder, vocabulary=vocabulary, top=top, progress=update)
    if names is None:
        note(f"[yellow]no cluster names:[/yellow] {escape(why)}")
        if json_:
            emit_json({"names": None, "skipped": why})
        return
    if json_:
        emit_json(names.to_dict())
        return
    table = Table(title=f"cluster names ({names.encoder}, {names.vocabulary} vocabulary of {names.vocabulary_size})",
                  title_justify="left")
    table.add_column("cluster", justify="right")
    table.add_column("names (cosine similarity)")
    for cluster in sorted(names.names):
        table.add_row(str(cluster), names.label(cluster))
    stdout().print(table)
