"""``imgclust export``: a stored run as CSV, JSON, JSON lines, Parquet, cluster folders, an HTML gallery or plots."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ..export import FORMATS, HTML_PER_CLUSTER, ROW_FORMATS, STDOUT_FORMATS, check_destination, default_folder, export as run_export
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, progress_bars, stdout
from .reduce import CacheArgument, CacheEncoderOption
from .score import RunOption
from .triage import TRIAGE_PROGRESS

HtmlPerClusterOption = Annotated[Optional[int], typer.Option(
    "--html-per-cluster", min=1, show_default=False,
    help=f"html: images shown per cluster (default: {HTML_PER_CLUSTER}): half nearest the centre, a quarter with the "
         "lowest silhouettes, the rest at random; the page counts the others.")]


def parse_formats(value: str) -> list[str]:
    """``--format``: one format or several, comma-separated (``csv,html``)."""
    formats = list(dict.fromkeys(f.strip() for f in value.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS + ROW_FORMATS]
    if not formats or unknown:
        raise UsageError(f"unknown export format '{unknown[0] if unknown else value}'",
                         hint=f"choose from {', '.join(FORMATS + ROW_FORMATS)}, or several comma-separated")
    if len(formats) > 1 and any(f in ROW_FORMATS for f in formats):
        raise UsageError(f"--format {next(f for f in formats if f in ROW_FORMATS)} goes alone",
                         hint="run it as its own export")
    return formats


@app.command("export")
def export_command(
    cache: CacheArgument,
    run: RunOption = None,
    format: Annotated[str, typer.Option("--format", "-F", help=f"One of {', '.join(FORMATS + ROW_FORMATS)}, or several comma-separated (csv,html). embeddings: the rows themselves, --out X.parquet or X.npy.")] = "csv",
    out: Annotated[Optional[str], typer.Option("--out", "-o", help=f"Output folder; - writes {'/'.join(STDOUT_FORMATS)} to stdout.")] = None,
    encoder: CacheEncoderOption = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="path,label CSV (default: labels stored by embed).")] = None,
    link: Annotated[str, typer.Option("--link", help="folders: symlink (default), hardlink or copy. Originals are never moved.")] = "symlink",
    html_per_cluster: HtmlPerClusterOption = None,
    cluster: Annotated[Optional[list[int]], typer.Option("--cluster", "-c", help="paths: only this cluster's images (repeatable; -1 is noise).")] = None,
    outliers: Annotated[bool, typer.Option("--outliers", help="paths: only images with an outlier score >= 1.5, most isolated first.")] = False,
    duplicates: Annotated[bool, typer.Option("--duplicates", help="paths: only images a duplicate group would drop (keepers stay out).")] = False,
    names: Annotated[bool, typer.Option("--names", help="CLIP runs: name the clusters (csv, json, parquet, html); the built-in vocabulary's text embeddings take long on a CPU the first time.")] = False,
    vocabulary: Annotated[Optional[str], typer.Option("--vocabulary", help="With --names: the words, one per line (default: the built-in 10,951 nouns).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files from an earlier export.")] = False,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Export a run: one row per image (path, cluster, silhouette, distance to centre, label) and cluster summaries.

    csv, jsonl and parquet stream (memory does not grow with the run); json is one document, also written an image at a time. The html gallery shows --html-per-cluster images per cluster and sections for the 100 largest clusters; plot draws a random sample of at most 50,000 images.

    \b
    Examples:
      imgclust export photos.h5 --format csv --out results/
      imgclust export photos.h5 --format csv,html --out results/
      imgclust export photos.h5 --format jsonl --out - | head
      imgclust export photos.h5 --format folders --link copy --out by-cluster/
      imgclust export photos.h5 --format html --html-per-cluster 48 --out gallery/
      imgclust export photos.h5 --format paths --cluster 3 | xargs -d '\\n' cp -t cluster-3/
      imgclust export photos.h5 --format paths --outliers
    """
    formats = parse_formats(format)
    if len(formats) > 1 and out == "-":
        raise UsageError("--out - (stdout) takes one format", hint="give a folder with --out for several formats")
    per_cluster = HTML_PER_CLUSTER if html_per_cluster is None else html_per_cluster
    units = {**TRIAGE_PROGRESS, **{f"export {fmt}": "thumbnails" if fmt == "html" else "rows" for fmt in formats}}
    results, report = [], None
    with progress_bars(units) as update:
        if len(formats) > 1:
            from ..score import score

            if out is not None:
                check_destination(out, formats, force)  # before scoring, not after the first format
            report = score(cache, run, encoder, labels)  # once for every format
            out = str(default_folder(report)) if out is None else out
        for fmt in formats:
            result = run_export(cache, run, fmt, out, encoder=encoder, labels=labels, link=link, force=force,
                                report=report, html_per_cluster=per_cluster, progress=update,
                                clusters=cluster or (), outliers=outliers, duplicates=duplicates,
                                names=names, vocabulary=vocabulary)
            results.append(result)
    if out == "-" or formats == ["paths"]:
        return
    if json_:
        emit_json(results[0].to_dict() if len(results) == 1 else {"exports": [r.to_dict() for r in results]})
    else:
        for result in results:
            for path in result.paths:
                stdout().print(path)

