"""The manifest of an output folder: what imgclust wrote there, so that it removes only that.

Every export (and the one-step pipeline) records the files it is about to write in
``<folder>/.imgclust-manifest.json`` *before* writing them, so even a run killed half-way leaves
nothing unaccounted for. A later export may replace those files (with ``force``) and removes
nothing else: a destination that holds a file imgclust did not write is refused, naming the file.

The manifest is also imgclust's result marker: discovery (:mod:`imgclust.discover`) never takes a
file a manifest lists as an input image, and skips nested folders that carry one, so thumbnails and
cluster-folder links are never embedded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import UsageError
from ._atomic import replaced_atomically

MANIFEST_NAME = ".imgclust-manifest.json"
_FORMAT = 1


def read_entries(folder: str | os.PathLike) -> set[str] | None:
    """The relative, ``/``-separated paths a folder's manifest lists; None when it has no readable one."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entries = data.get("written") if isinstance(data, dict) else None
    return {str(e) for e in entries} if isinstance(entries, list) else None


class Manifest:
    """The files imgclust wrote into ``folder``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.entries: set[str] = read_entries(self.folder) or set()

    def _key(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.folder)).as_posix()

    def owns(self, path: Path) -> bool:
        return self._key(path) in self.entries

    def foreign(self, target: Path) -> Path | None:
        """The first file (or link) at or under ``target`` that imgclust did not write; None if there is none."""
        if not os.path.lexists(target):
            return None
        if not target.is_dir() or target.is_symlink():
            return None if self.owns(target) else target
        for root, dirs, files in os.walk(target):
            dirs.sort()
            links = [d for d in dirs if os.path.islink(os.path.join(root, d))]  # links to folders: entries too
            for name in sorted(files + links):
                if not self.owns(Path(root) / name):
                    return Path(root) / name
        return None

    def check(self, targets: Iterable[Path], force: bool) -> list[Path]:
        """The ``targets`` (files, or folders to fill) that hold an earlier result, to be replaced.

        Refused when any holds a file imgclust did not write (whatever ``force`` says), or holds an
        earlier result and ``force`` is off. Nothing is changed.
        """
        targets = list(targets)
        for target in targets:
            stranger = self.foreign(target)
            if stranger is not None:
                raise UsageError(f"{stranger} was not written by imgclust, so nothing is written over it",
                                 hint=f"move it away, or choose another --out than {self.folder}")
        existing = [t for t in targets if os.path.lexists(t) and not (t.is_dir() and not any(t.iterdir()))]
        if existing and not force:
            raise UsageError(f"{existing[0]} already exists", hint="pass --force to overwrite it, or choose another --out")
        return existing

    def claim(self, targets: Iterable[Path], force: bool) -> None:
        """Make ``targets`` ready to be written (see :meth:`check`): with ``force`` an earlier result in
        a target folder is removed, file by file; folders are removed only once they are empty."""
        for target in self.check(targets, force):
            if target.is_dir() and not target.is_symlink():
                self._empty(target)

    def _empty(self, root: Path) -> None:
        """Remove imgclust's files under ``root`` (all of them are: checked by :meth:`foreign`), then the
        folders left empty, deepest first."""
        removed = []
        for folder, dirs, files in os.walk(root, topdown=False):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                os.unlink(os.path.join(folder, name))
                removed.append(self._key(Path(folder) / name))
            for name in dirs:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.rmdir(path)
        self.entries.difference_update(removed)

    def record(self, paths: Iterable[Path]) -> None:
        """Add ``paths`` (files about to be written) and save the manifest atomically."""
        self.entries.update(self._key(Path(p)) for p in paths)
        self.folder.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(self.folder / MANIFEST_NAME) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"format": _FORMAT, "tool": "imgclust", "written": sorted(self.entries)}, fh, indent=0)
