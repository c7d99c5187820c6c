"""``imgclust score``: the quality report of a stored run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..names import cluster_names
from ..score import RunReport, score as run_score
from . import app
from ._output import DebugOption, JsonOption, QuietOption, VerboseOption, emit_json, note, progress_bar, stdout
from .reduce import CacheArgument, CacheEncoderOption

RunOption = Annotated[Optional[str], typer.Option("--run", "-r", help="Run id (default: the latest).")]
LABEL_FREE = [("n_samples", "images"), ("n_clusters", "clusters"), ("n_noise", "noise points"),
              ("silhouette", "silhouette"), ("silhouette_noise_as_cluster", "silhouette, noise as one cluster (ZS)"),
              ("davies_bouldin", "Davies-Bouldin (lower is better)"),
              ("calinski_harabasz", "Calinski-Harabasz (higher is better)")]
LABELLED = [("n_classes", "classes"), ("ami", "AMI"), ("ami_no_noise", "AMI without noise"), ("nmi", "NMI"),
            ("ari", "ARI"), ("accuracy", "accuracy"), ("pairwise_f", "pairwise F"), ("bcubed_f", "BCubed F"),
            ("f_pairwise_bcubed", "harmonic mean of pairwise and BCubed F (ES)")]


def score_rows(report: RunReport) -> list[tuple[str, str]]:
    scores = report.scores.to_dict()
    rows = [(f"{name} ({report.silhouette_space}, euclidean)" if key.startswith("silhouette") else name, _fmt(scores.get(key)))
            for key, name in LABEL_FREE if scores.get(key) is not None or key == "silhouette"]
    if not scores.get("silhouette_exact", True) and scores.get("silhouette_error_bound") is not None:
        rows.append(("silhouette error bound (95%)", _fmt(scores["silhouette_error_bound"])))
    if report.labels_source:
        rows += [(name, _fmt(scores.get(key))) for key, name in LABELLED if scores.get(key) is not None]
        rows.append(("accuracy rule", str(scores.get("accuracy_rule"))))
    return rows + selection_rows(report.run.selection)


def selection_rows(selection: dict | None) -> list[tuple[str, str]]:
    """How K was chosen without labels (runs made with --n-clusters auto): the pick, its doubts, the top three."""
    if not selection:
        return []
    criterion = str(selection.get("criterion", "score")).replace("_", " ")
    rows = [("K chosen without labels", f"{selection.get('n_clusters')} ({selection.get('rule')}, "
                                        f"searched {':'.join(map(str, selection.get('k_range', [])))})"),
            ("K confidence", "confident" if selection.get("confident") else ", ".join(selection.get("flags", []))),
            ("K summary", str(selection.get("summary", "")))]
    for rank, c in enumerate(selection.get("candidates", []), start=1):
        extra = "".join(f", {name.replace('_', ' ')} {_fmt(c.get(name))}" for name in ("silhouette", "merge_gap", "stability")
                        if name in c and name != selection.get("criterion"))
        rows.append((f"K candidate {rank}", f"{c['k']}: {criterion} {_fmt(c.get('score'))}{extra}"))
    return rows


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


@app.command("score")
def score_command(
    cache: CacheArgument,
    run: RunOption = None,
    encoder: CacheEncoderOption = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="path,label CSV (default: labels stored by embed --labels).")] = None,
    accuracy_rule: Annotated[str, typer.Option("--accuracy-rule", help="one-to-one (Hungarian; extra clusters count as wrong) or majority.")] = "one-to-one",
    per_cluster: Annotated[bool, typer.Option("--per-cluster", help="Also list every cluster's size and silhouette.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table (for reports).")] = False,
    names: Annotated[bool, typer.Option("--names", help="CLIP encoders: name each cluster from a vocabulary (implies --per-cluster).")] = False,
    vocabulary: Annotated[Optional[Path], typer.Option("--vocabulary", help="With --names: one word per line (default: the built-in 10,951 nouns).")] = None,
    json_: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False, debug: DebugOption = False,
) -> None:
    """Score a run: silhouette, Davies-Bouldin, Calinski-Harabasz; with labels AMI, NMI, ARI, accuracy, F-scores.

    HDBSCAN noise counts as one cluster for AMI (as ZS); the noise-excluded AMI is shown beside it.
    Silhouette leaves noise out; ZS's silhouette with noise as one cluster is shown beside it.
    """
    report = run_score(cache, run, encoder, labels, accuracy_rule)
    named = None
    if names:
        with progress_bar("text embeddings", unit="words") as update:
            named, why = cluster_names(cache, report.run.run_id, report.run.encoder, vocabulary=vocabulary, progress=update)
        if named is None:
            note(f"[yellow]no cluster names:[/yellow] {escape(why)}")
    if json_:
        emit_json({**report.to_dict(), **({"names": named.to_dict()} if named else {})})
        return
    rows = score_rows(report)
    clusters = []
    if per_cluster or names:
        per = report.scores.silhouette_per_cluster or {}
        clusters = [(str(c), str(size), _fmt(per.get(c)), *((named.label(c),) if named else ()))
                    for c, size in sorted(report.scores.cluster_sizes.items())]
    columns = ("cluster", "size", "silhouette", *(("names",) if named else ()))
    title = f"{report.run.run_id}: {report.run.method} on {report.run.encoder} ({report.run.space})"
    if markdown:
        lines = [f"**{title}**", "", "| score | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        if clusters:
            lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(row) + " |" for row in clusters]
        stdout().print("\n".join(lines), markup=False)
        return
    table = Table(title=title, title_justify="left")
    table.add_column("score")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    stdout().print(table)
    if clusters:
        per_table = Table(title="clusters", title_justify="left")
        for column in columns:
            per_table.add_column(column, justify="left" if column == "names" else "right")
        for row in clusters:
            per_table.add_row(*row)
        stdout().print(per_table)
