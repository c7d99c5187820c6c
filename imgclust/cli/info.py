"""``imgclust info``: what a cache holds: encoders, images, failures, reductions and runs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ..cache import Cache
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, stdout
from .reduce import CacheArgument, CacheEncoderOption


@app.command("info")
def info_command(
    cache: CacheArgument,
    encoder: CacheEncoderOption = None,
    failures: Annotated[bool, typer.Option("--failures", help="List the files that could not be read, with why.")] = False,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Describe a cache: per encoder its images, failures, stored reductions and clustering runs."""
    store = Cache(cache)
    names = [store.resolve_encoder(encoder)] if encoder else store.encoders()
    report = []
    for name in names:
        entry = {**store.info(name), "reductions": store.list_groups(name, "reductions"), "runs": store.list_groups(name, "runs")}
        if failures:
            f = store.read_failures(name)
            entry["failures"] = [{"path": p, "reason": r} for p, r in zip(f.paths, f.reasons)]
        report.append(entry)
    if json_:
        emit_json({"cache": str(store.path), "encoders": report})
        return
    out = stdout()
    out.print(f"[bold]{escape(str(store.path))}[/bold]", markup=True)
    for entry in report:
        out.print(f"encoder {entry['encoder']}: {entry['n_images']} images, {entry['n_failures']} failures, "
                  f"{entry['embedding_dim']}-d ({entry['architecture']}, weights {entry['weights']})")
        for key, attrs in entry["reductions"].items():
            out.print(f"  reduction {key}: {attrs.get('shape')}")
        for key, attrs in entry["runs"].items():
            out.print(f"  {key}: {attrs.get('method')} -> {attrs.get('n_clusters')} clusters ({attrs.get('created')})")
        for failure in entry.get("failures", []):
            out.print(f"  failed {failure['path']}: {failure['reason']}")
