"""Files replaced whole: written under a temporary name beside their place, then renamed over it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike, mode: int = 0o644) -> Iterator[str]:
    """Yield a temporary file name beside ``path`` to write; when the block ends it is renamed over
    ``path`` (permissions ``mode``), and removed if the block fails. A killed writer leaves the previous
    file (or none), never half of one; ``os.replace`` within a folder is atomic on POSIX."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
