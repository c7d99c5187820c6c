"""``imgclust cache``: look after a cache: remove results, compact, pack into one file, upgrade."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import cache_admin
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, progress_bar, stdout
from .info import human_bytes
from .reduce import CacheArgument

cache_app = typer.Typer(name="cache", help="Look after a cache: rm, compact, pack, upgrade.", no_args_is_help=True)
app.add_typer(cache_app)


@cache_app.command("rm")
def rm_command(
    cache: CacheArgument,
    names: Annotated[list[str], typer.Argument(help="Runs (with their scores), reductions, views or kNN graphs to remove (names as imgclust info lists them).")],
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Remove stored runs (with their scores), reductions, views or kNN graphs (their files are deleted; the rows stay)."""
    removed = cache_admin.remove(cache, names)
    if json_:
        emit_json({"cache": str(cache), "removed": removed})
        return
    for item in removed:
        stdout().print(f"removed {item['kind'][:-1]} {item['name']} of {item['encoder']} "
                       f"({human_bytes(item['nbytes'])})")


@cache_app.command("compact")
def compact_command(
    cache: CacheArgument,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Merge small blocks (and blocks whose rows were mostly replaced) into one; results stay valid."""
    with progress_bar("compacting", unit="rows") as update:
        report = cache_admin.compact(cache, progress=update)
    if json_:
        emit_json(report)
        return
    for entry in report["encoders"]:
        stdout().print(f"{entry['encoder']}: {entry['blocks_before']} -> {entry['blocks_after']} blocks "
                       f"({entry['rows_copied']} rows copied)")


@cache_app.command("pack")
def pack_command(
    cache: CacheArgument,
    out: Annotated[Path, typer.Argument(help="The self-contained HDF5 file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Write the cache as one self-contained HDF5 file, to copy or share (imgclust reads it as a cache)."""
    with progress_bar("packing", unit="files") as update:
        report = cache_admin.pack(cache, out, force=force, progress=update)
    if json_:
        emit_json(report)
        return
    stdout().print(f"packed {cache} into {report['out']} ({human_bytes(report['nbytes'])})")


@cache_app.command("upgrade")
def upgrade_command(
    cache: CacheArgument,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Convert a schema-1 cache (or a packed one) so imgclust can write to it, in one pass."""
    with progress_bar("upgrading", unit="encoders") as update:
        report = cache_admin.upgrade(cache, progress=update)
    if json_:
        emit_json(report)
        return
    stdout().print(f"upgraded {cache} to schema {report['schema_version']}" if report["upgraded"]
                   else f"{cache} is already schema {report['schema_version']}: nothing to do")
