"""The ``imgclust`` command line: a thin layer that parses, calls the library, and renders.

Each command lives in its own module; this one only wires them together.
"""

from __future__ import annotations

import sys

import typer

from .. import __version__
from ._output import EXIT_INTERRUPTED, EXIT_USAGE, ImgclustGroup, emit_json, report_interrupt, reset_interrupt_report

app = typer.Typer(
    name="imgclust",
    cls=ImgclustGroup,
    help="Cluster any folder of unlabelled images with pretrained encoders, and measure how good the clusters are.\n\n"
         "Pipeline: embed -> reduce (UMAP 50) -> cluster (agglomerative) -> score -> export. "
         "'imgclust cluster PHOTOS' runs it all in one step.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted.",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"imgclust {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """imgclust: cluster images with pretrained encoders."""


from . import assign, cache, cluster, embed, encoders, export, importing, info, methods, reduce, score, triage  # noqa: E402,F401  (each registers its command)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app and return its exit code (usage errors exit 2)."""
    reset_interrupt_report()
    try:
        # Without standalone mode click returns the exit code of ctx.exit() instead of raising.
        code = app(args=argv, prog_name="imgclust", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # click-style usage errors: unknown option, bad value, ...
        # Parsing may stop before --json's callback runs, so look for the flag on the command line itself.
        if "--json" in (sys.argv[1:] if argv is None else argv):
            emit_json({"error": {"code": "usage", "message": exc.format_message(), "hint": _usage_hint(exc)}})
        else:
            exc.show()
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C while the command line is still being built or parsed
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        report_interrupt()  # typer turns Ctrl-C during parsing into a silent exit 130; say it, once
    return code if isinstance(code, int) else 0


def _usage_hint(exc: typer.TyperException) -> str | None:
    ctx = getattr(exc, "ctx", None)
    return f"see '{ctx.command_path} --help'" if ctx is not None else None


def run() -> None:
    sys.exit(main())
