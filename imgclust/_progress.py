"""Progress callbacks: a reporter of named stages, ``progress(stage, done, total)``, and the
``on_progress(done, total)`` of one stage that the lower-level functions take."""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, int], None]
OnProgress = Callable[[int, int], None]


def stage(progress: Progress | None, name: str) -> OnProgress | None:
    """``progress`` bound to the stage ``name``; None without a reporter."""
    return None if progress is None else (lambda done, total: progress(name, done, total))
