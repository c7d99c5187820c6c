"""What every command shares: output options, rendering of results and errors, exit codes.

Results go to stdout (plain text, a rich table, or JSON with ``--json``); progress, warnings and
errors go to stderr. Exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted.
An :class:`ImgclustError` becomes one line (``error: ...`` and a dim ``hint: ...``), or
``{"error": {"code", "message", "hint"}}`` on stdout under ``--json``; a traceback only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Iterator

import typer
from rich.console import Console
from rich.markup import escape

from .._json import json_safe
from ..errors import ImgclustError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class OutputMode:
    json: bool = False
    quiet: bool = False
    verbose: bool = False
    debug: bool = False


_MODE = OutputMode()


def mode() -> OutputMode:
    """The output flags of the command being run (reset at the start of every invocation)."""
    return _MODE


def _remember(field: str):
    def callback(value: bool) -> bool:
        if value:
            setattr(mode(), field, True)
        return value

    return callback


# One definition of the shared options; every command takes them.
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.", callback=_remember("json"), is_eager=True)]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.", callback=_remember("quiet"), is_eager=True)]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.", callback=_remember("verbose"), is_eager=True)]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.", callback=_remember("debug"), is_eager=True)]


def stdout() -> Console:
    """Results: plain text, so a path or label with brackets prints as it is (``markup=True`` per call to style)."""
    return Console(file=sys.stdout, soft_wrap=True, highlight=False, markup=False)


def stderr() -> Console:
    return Console(file=sys.stderr, soft_wrap=True, highlight=False, quiet=mode().quiet)


def _caused_by_ctrl_c(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is in ``error``'s chain (``SystemError: ... returned a result with an
    exception set`` from an extension interrupted by Ctrl-C)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def note(message: str) -> None:
    """A line of progress or context on stderr (silenced by --quiet)."""
    stderr().print(message)


def detail(message: str) -> None:
    """A line shown only with --verbose."""
    if mode().verbose:
        stderr().print(f"[dim]{message}[/dim]")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(json_safe(data), indent=2, ensure_ascii=False, default=str) + "\n")


_interrupt_reported = False


def report_interrupt(message: str = "run the same command again to resume") -> None:
    """Tell the user the command was interrupted and how to go on: once per invocation, even with --quiet."""
    global _interrupt_reported
    if not _interrupt_reported:
        _interrupt_reported = True
        Console(file=sys.stderr, soft_wrap=True, highlight=False).print(f"[yellow]interrupted:[/yellow] {escape(message)}")


def reset_interrupt_report() -> None:
    global _interrupt_reported
    _interrupt_reported = False


def render_error(error: ImgclustError) -> None:
    if mode().json:
        emit_json({"error": error.to_dict()})
    else:
        console = Console(file=sys.stderr, soft_wrap=True, highlight=False)
        # escape: a message quotes paths, and "[/]" in a file name would break rich's markup
        console.print(f"[bold red]error:[/bold red] {escape(error.message)}", markup=True)
        if error.hint:
            console.print(f"[dim]hint: {escape(error.hint)}[/dim]")


@contextmanager
def progress_bars(units: dict[str, str] | None = None) -> Iterator[Any]:
    """Rich progress bars on stderr with rate and ETA, one per stage, each shown from the stage's first
    report (so an error before any work prints no empty bar). Yields ``update(stage, done, total, info="")``,
    or None under --quiet; ``units`` names what a stage counts (images by default)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if mode().quiet:
        yield None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    bars = Progress(*columns, console=Console(file=sys.stderr), transient=False)
    tasks: dict[str, Any] = {}

    def update(stage: str, done: int, total: int, info: str = "") -> None:
        if not tasks:
            bars.start()
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total, rate="", info="")
        speed = next(t.speed for t in bars.tasks if t.id == tasks[stage])
        unit = (units or {}).get(stage, "images")
        bars.update(tasks[stage], completed=done, total=total, rate=f"{speed:.1f} {unit}/s" if speed else "", info=info)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


@contextmanager
def progress_bar(description: str, unit: str = "images") -> Iterator[Any]:
    """One progress bar (see :func:`progress_bars`); yields a ``(done, total)`` callback or None."""
    with progress_bars({description: unit}) as update:
        yield (lambda done, total: update(description, done, total)) if update else None


def epoch_reporter(update, stage: str):
    """An ``on_epoch(epoch, epochs, loss)`` callback for trained methods: the stage's bar shows the loss,
    and --verbose adds a line per epoch."""
    def on_epoch(epoch: int, epochs: int, loss: float) -> None:
        detail(f"epoch {epoch}/{epochs}: loss {loss:.4f}")
        if update:
            update(stage, epoch, epochs, f"loss {loss:.4f}")

    return on_epoch


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library warning as one line on stderr (its source line and location only with --debug)."""
    where = f" [dim]({filename}:{lineno})[/dim]" if mode().debug else ""
    stderr().print(f"[yellow]warning:[/yellow] {escape(str(message))}{where}")


class ImgclustGroup(typer.core.TyperGroup):
    """Turns library errors into one-line messages and documented exit codes, in one place."""

    def invoke(self, ctx) -> Any:
        global _MODE
        _MODE = OutputMode()  # the options' eager callbacks fill it in while the command is parsed
        reset_interrupt_report()
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except ImgclustError as error:
            if mode().debug:
                traceback.print_exc()
            render_error(error)
            ctx.exit(error.exit_code)
        except KeyboardInterrupt:
            report_interrupt()
            ctx.exit(EXIT_INTERRUPTED)
        except OSError as error:  # disk full, permission denied while writing, ...
            if mode().debug:
                traceback.print_exc()
            where = f" ({error.filename})" if getattr(error, "filename", None) else ""
            render_error(ImgclustError(f"{error.strerror or error}{where}",
                                       hint="check free disk space and permissions; nothing already written was changed"))
            ctx.exit(EXIT_FAILURE)
        except Exception as error:
            if not _caused_by_ctrl_c(error):
                raise
            report_interrupt()  # a C extension turned the Ctrl-C it was interrupted by into its own error
            ctx.exit(EXIT_INTERRUPTED)
