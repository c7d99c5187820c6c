"""``imgclust methods``: the clustering methods, their parameters and defaults."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..clusterers import CLUSTERERS
from ..spaces import method_spaces
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, stdout


def method_info(name: str) -> dict:
    cls = CLUSTERERS.get(name)
    return {"name": name, "summary": cls.summary, "paper": cls.paper, "n_clusters": cls.n_clusters_mode,
            "input": cls.input_space, "space": method_spaces(name), "needs_views": cls.needs_views,
            "at_scale": cls.at_scale or None,
            "params": [{"name": p.name, "default": p.default, "type": p.type.__name__, "allowed": p.describe(), "doc": p.doc}
                       for p in cls.params]}


@app.command("methods")
def methods_command(
    name: Annotated[Optional[str], typer.Argument(help="Show one method's parameters.")] = None,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """List the clustering methods (use with 'imgclust cluster --method NAME --param key=value')."""
    infos = [method_info(name)] if name else [method_info(n) for n in CLUSTERERS.names()]
    if json_:
        emit_json(infos)
        return
    if name:
        info = infos[0]
        stdout().print(f"[bold]{info['name']}[/bold]: {escape(info['summary'])}  [dim]({escape(info['paper'])})[/dim]", markup=True)
        stdout().print(f"n_clusters: {info['n_clusters']}; input: {_space_text(info['space'])} (--reduction overrides)")
        table = Table(title_justify="left")
        for column in ("parameter", "default", "allowed", "what it does"):
            table.add_column(column, overflow="fold")
        for p in info["params"]:
            table.add_row(p["name"], str(p["default"]), p["allowed"], p["doc"])
        stdout().print(table)
        if info["at_scale"]:
            stdout().print(f"at scale: {escape(info['at_scale'])}")
        return
    table = Table(title="imgclust clustering methods", title_justify="left")
    for column in ("method", "n_clusters", "input space", "from", "summary"):
        table.add_column(column, overflow="fold")
    for info in infos:
        table.add_row(info["name"], info["n_clusters"], _space_text(info["space"]), info["paper"], info["summary"])
    stdout().print(table)


def _space_text(space: dict) -> str:
    """``UMAP 50-d; mae-vitb16: PCA (98% of variance)``: the default space and the encoders that differ."""
    return "; ".join([space["default"], *(f"{enc}: {s}" for enc, s in space["by_encoder"].items())])
