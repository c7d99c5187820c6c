"""``imgclust encoders``: the encoder registry, with where weights come from and whether they are here."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.text import Text
from rich.table import Table

from ..encoders import DEFAULT_ENCODER, list_encoders, weights_available_offline, weights_source
from ..errors import NotFoundError
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, stdout


@app.command("encoders")
def encoders_command(
    pattern: Annotated[Optional[str], typer.Argument(help="Wildcard filter, e.g. 'dinov2*'.")] = None,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """List the encoders: embedding size, where weights come from, and whether they are available offline.

    Any timm model (timm:<model>) or open_clip model (open_clip:<arch>:<tag>) also works with --encoder.
    """
    specs = list_encoders(pattern)
    if not specs:
        raise NotFoundError(f"no encoder name matches '{pattern}'",
                            hint="run imgclust encoders to list them all; any timm:<model> or open_clip:<arch>:<tag> also works")
    rows = []
    for spec in specs:
        rows.append({**spec.to_dict(), "source": weights_source(spec), "available_offline": weights_available_offline(spec),
                     "default": spec.name == DEFAULT_ENCODER})
    if json_:
        emit_json(rows)
        return
    table = Table(title="imgclust encoders", title_justify="left")
    for column in ("name", "dim", "family", "weights from", "offline", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["name"] + (" (default)" if row["default"] else ""), str(row["embedding_dim"]), row["family"],
                      row["source"], Text("yes", style="green") if row["available_offline"] else Text("no", style="dim"), row["description"])
    stdout().print(table)
