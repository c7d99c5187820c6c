"""Finding images: folders walked recursively, explicit files, globs, ``--files-from``; labels.

Order is stable: every result is sorted by its absolute path string, so the same inputs always give
the same list, whatever order they were walked in.
"""

from __future__ import annotations

import csv
import errno
import glob
import os
import stat
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Iterable, Sequence

from .errors import UsageError
from .manifest import MANIFEST_NAME, read_entries

BASE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """The base extensions plus every extension a Pillow plugin installed here can open."""
    from PIL import Image

    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return BASE_EXTENSIONS | frozenset(e.lower() for e in readable)


@dataclass(frozen=True)
class ImageFile:
    """A discovered image: its absolute path, size and mtime (None when it cannot be stat'ed)."""

    path: str
    size: int | None
    mtime_ns: int | None
    label: str | None = None
    error: str | None = None  # why the file cannot even be stat'ed (a dangling symlink, say)


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _stat(path: str) -> ImageFile:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        reason = "dangling symlink" if os.path.islink(path) else "file not found"
        return ImageFile(path, None, None, error=reason)
    except OSError as exc:
        reason = "symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        return ImageFile(path, None, None, error=reason)
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the decoder forever; devices are not images
        return ImageFile(path, st.st_size, st.st_mtime_ns, error="not a regular file (a pipe, socket or device)")
    return ImageFile(path, st.st_size, st.st_mtime_ns)


def walk_images(folder: str, exclude: Iterable[str] = ()) -> Iterable[str]:
    """Every image file under ``folder`` (recursively, symlinks followed without loops, hidden names skipped).

    imgclust's own results are never inputs: a folder below ``folder`` that carries a result manifest
    (:data:`~imgclust.manifest.MANIFEST_NAME`) is skipped whole, the files a manifest in ``folder`` itself lists
    are skipped, and so is every folder in ``exclude`` (the current command's output folder).
    """
    extensions = image_extensions()
    excluded = {_dir_key(path) for path in exclude}
    excluded.discard(None)
    ours = {os.path.join(folder, *entry.split("/")) for entry in read_entries(folder) or ()}
    seen_dirs: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        key = _dir_key(current)
        if key is None or key in seen_dirs or key in excluded:  # seen: a symlink back up the tree, or two links to one folder
            continue
        seen_dirs.add(key)
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        if current != folder and any(entry.name == MANIFEST_NAME for entry in entries):
            continue  # an output folder of imgclust's inside the input
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in extensions and entry.path not in ours:
                yield entry.path  # files, symlinks to files, and dangling/looping symlinks (reported later)


def written_by_imgclust(path: str, manifests: dict[str, frozenset[str]]) -> bool:
    """Whether a manifest in one of ``path``'s folders lists it as a file imgclust wrote
    (``manifests`` caches each folder's entries for one discovery)."""
    folder, name = os.path.split(os.path.abspath(path))
    relative = [name]
    while True:
        if folder not in manifests:
            manifests[folder] = frozenset(read_entries(folder) or ())
        if "/".join(relative) in manifests[folder]:
            return True
        parent, base = os.path.split(folder)
        if parent == folder:
            return False
        folder, relative = parent, [base, *relative]


def _dir_key(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of a folder, following links; None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def read_path_list(source: str, stdin: IO[str] | None = None) -> list[str]:
    """Paths from a file with one path per line (``-`` reads standard input); blank lines and ``#`` skipped."""
    if source == "-":
        text = (stdin or sys.stdin).read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise UsageError(f"--files-from {source}: {exc.strerror or exc}", hint="give a readable file, or - for stdin") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def discover(
    inputs: Sequence[str | os.PathLike] = (),
    files_from: str | None = None,
    labels: str | None = None,
    stdin: IO[str] | None = None,
    exclude: Sequence[str | os.PathLike] = (),
) -> list[ImageFile]:
    """Find every image named by ``inputs`` and ``files_from``, sorted by path, each path once.

    Parameters
    ----------
    inputs : folders (walked recursively), image files (taken whatever their extension), or glob
        patterns (``photos/**/*.jpg``).
    files_from : a file listing one path per line, or ``-`` for standard input.
    labels : ``"folder"`` to label each image with its parent folder's name, or the path of a CSV
        file with ``path,label`` rows (paths absolute or relative to the CSV's folder).
    exclude : folders never walked into (the current command's output folder). Folders that
        carry imgclust's result manifest are skipped too (see :func:`walk_images`).
    """
    candidates: list[str] = []
    manifests: dict[str, frozenset[str]] = {}
    named = [os.fspath(p) for p in inputs]
    if files_from is not None:
        named += read_path_list(files_from, stdin)
    if not named:
        raise UsageError("no input given", hint="pass folders or image files, or --files-from FILE")
    for item in named:
        if os.path.isdir(item):
            candidates.extend(walk_images(item, exclude))
        elif os.path.lexists(item):
            candidates.append(item)
        elif _is_glob(item):
            matches = glob.glob(item, recursive=True)
            if not matches:
                raise UsageError(f"no file matches the pattern {item}", hint="check the pattern; quote it so the shell does not expand it")
            for match in matches:
                if os.path.isdir(match):
                    candidates.extend(walk_images(match, exclude))
                elif not written_by_imgclust(match, manifests):  # photos/**/*.jpg must not match a gallery's thumbnails
                    candidates.append(match)
        else:
            raise UsageError(f"path not found: {item}", hint="check the path, or pass an existing folder or image file")
    unique = sorted({os.path.abspath(path) for path in candidates})
    files = [_stat(path) for path in unique]
    if not files:
        raise UsageError(f"no images found in {', '.join(named[:3])}{' ...' if len(named) > 3 else ''}",
                         hint=f"imgclust looks for {', '.join(sorted(BASE_EXTENSIONS))} files (hidden files are skipped)")
    if labels is not None:
        files = attach_labels(files, labels)
    return files


def attach_labels(files: list[ImageFile], labels: str) -> list[ImageFile]:
    """Label each file from its parent folder (``"folder"``) or from a ``path,label`` CSV."""
    from dataclasses import replace

    if labels == "folder":
        return [replace(f, label=os.path.basename(os.path.dirname(f.path))) for f in files]
    table = read_label_csv(labels)
    labelled = [replace(f, label=table.get(f.path)) for f in files]
    if not any(f.label is not None for f in labelled):
        raise UsageError(f"no label in {labels} matches any of the {len(files)} images",
                         hint="the CSV needs path,label rows whose paths are absolute or relative to the CSV's folder")
    return labelled


def read_label_csv(source: str) -> dict[str, str]:
    """``{absolute path: label}`` from a CSV of ``path,label`` rows (a header row is allowed)."""
    base = os.path.dirname(os.path.abspath(source))
    try:
        with open(source, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise UsageError(f"--labels {source}: {exc.strerror or exc}", hint="give 'folder' or a readable path,label CSV") from None
    table: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if not row or (number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]):
            continue
        if len(row) < 2:
            raise UsageError(f"--labels {source}: line {number} has no label", hint="each line must be path,label")
        path = row[0].strip()
        table[os.path.abspath(os.path.join(base, path))] = row[1].strip()
    return table
