"""``imgclust info``: what a cache holds: encoders, rows, blocks, failures and every stored result."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ..cache import RESULT_KINDS, Cache
from ..cache_admin import describe
from ..runtimes import LEGACY_RUNTIME
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, stdout
from .reduce import CacheArgument, CacheEncoderOption


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


_SINGULAR = {"reductions": "reduction", "runs": "run", "views": "view", "knn": "knn", "scores": "scores"}


def _what(kind: str, item: dict) -> str:
    """One line about a stored result, by its kind."""
    if kind == "runs":
        return f"{item.get('method')} -> {item.get('n_clusters')} clusters"
    if kind == "knn":
        return f"{item.get('k')} neighbours, {item.get('method')}, recall {item.get('recall')}"
    if kind == "scores":
        silhouette = (item.get("scores") or {}).get("silhouette")
        return "label-free scores of the run" + (f", silhouette {silhouette:.3f}" if silhouette is not None else "")
    return f"shape {item['shape']}" if item.get("shape") else ""


@app.command("info")
def info_command(
    cache: CacheArgument,
    encoder: CacheEncoderOption = None,
    failures: Annotated[bool, typer.Option("--failures", help="List the files that could not be read, with why.")] = False,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Describe a cache: per encoder its rows, blocks, failures, reductions, runs, views, kNN graphs and stored scores (stale ones marked).

    A result is stale when the images changed after it was computed: it is kept, never used; remove
    it with imgclust cache rm. --verbose lists the blocks.
    """
    store = Cache(cache)
    report = describe(cache)
    if encoder:
        name = store.resolve_encoder(encoder)
        report["encoders"] = [e for e in report["encoders"] if e["encoder"] == name]
    for entry in report["encoders"]:
        if failures:
            f = store.read_failures(entry["encoder"])
            entry["failures"] = [{"path": p, "reason": r} for p, r in zip(f.paths, f.reasons)]
    if json_:
        emit_json(report)
        return
    out = stdout()  # plain text: paths and names print as they are
    packed = ", packed" if report["packed"] else ""
    out.print(f"[bold]{escape(report['cache'])}[/bold] (schema {report['schema_version']}{packed}, "
              f"{human_bytes(report['total_bytes'])} in all)", markup=True)
    for entry in report["encoders"]:
        out.print(f"encoder {entry['encoder']}: {entry['n_images']} images, {entry['n_failures']} failures, "
                  f"{entry['embedding_dim']}-d ({entry['architecture']}, weights {entry['weights']}, "
                  f"runtime {entry.get('runtime', LEGACY_RUNTIME)}), {len(entry['blocks'])} blocks")
        if verbose:
            for block in entry["blocks"]:
                out.print(f"  block {block['file']}: {block['live_rows']} of {block['rows']} rows live, "
                          f"{human_bytes(block['nbytes'])}")
        for kind in RESULT_KINDS:
            for key, item in entry[kind].items():
                rows = f"{item['rows']} rows, " if item["rows"] is not None else ""
                out.print(f"  {_SINGULAR[kind]} {key}: {_what(kind, item)} "
                          f"({rows}{human_bytes(item['nbytes'])}, {item.get('created')})"
                          f"{' STALE (other images)' if item['stale'] else ''}")
        for failure in entry.get("failures", []):
            out.print(f"  failed {failure['path']}: {failure['reason']}")
