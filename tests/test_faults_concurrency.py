"""Two writers on one cache, and readers while a writer works.

A second ``embed`` on a cache that another one is writing stops at once (exit 1, one clear line);
the first finishes undisturbed. Readers never see a half-written cache: bulk files are immutable
and the index is a temporary file that atomically replaces the old one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from imgclust.cache import Cache, NewRows

from .killing import THREADS, check_final, embed_argv, make_folder, running, snapshot

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the harness reads /proc and forks")


@pytest.fixture(scope="module")
def folder_and_reference(tmp_path_factory, zygote):
    root = tmp_path_factory.mktemp("concurrency")
    folder = make_folder(root / "images")
    assert zygote.run(embed_argv(folder, root / "reference.h5"), root / "reference.log") == 0
    return folder, snapshot(root / "reference.h5")


def _locked(lock_path) -> bool:
    """Whether some process holds a flock on ``lock_path`` (read from /proc/locks: no probing)."""
    try:
        inode = os.stat(lock_path).st_ino
    except FileNotFoundError:
        return False
    with open("/proc/locks") as fh:
        return any(" FLOCK " in f" {line} " and line.split()[5].endswith(f":{inode}") for line in fh)


def _paused_writer(zygote, folder, cache, log):
    """Start an embed and freeze it (SIGSTOP) as soon as it holds the cache's lock."""
    pid = zygote.start(embed_argv(folder, cache), log)
    lock = cache.with_name(cache.name + ".lock")
    deadline = time.monotonic() + 60
    while running(pid) and not _locked(lock) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert running(pid), "the first run ended before the second could start"
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_a_second_embed_stops_at_once_with_a_clear_message(folder_and_reference, zygote, tmp_path):
    folder, reference = folder_and_reference
    cache = tmp_path / "c.h5"
    first = _paused_writer(zygote, folder, cache, tmp_path / "first.log")
    try:
        started = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "imgclust", *embed_argv(folder, cache)[:-1]], capture_output=True,
                                text=True, timeout=120, env={**os.environ, **THREADS})
        took = time.monotonic() - started
        assert second.returncode == 1, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert lines[0] == f"error: another imgclust process is writing {cache}", lines
        assert lines[1].startswith("hint: wait for it to finish") and len(lines) == 2
        assert second.stdout == ""
        assert took < 60  # it does not wait for the lock (interpreter start-up is most of this)
        # The same under --json, from a run started like the first (no interpreter start-up).
        pid = zygote.start(embed_argv(folder, cache)[:-1] + ["--json"], tmp_path / "second.log")
        assert zygote.wait(pid) == 1
        error = json.loads((tmp_path / "second.log").read_text())["error"]
        assert error["code"] == "cache_locked" and str(cache) in error["message"]
    finally:
        os.kill(first, signal.SIGCONT)
    assert zygote.wait(first) == 0, (tmp_path / "first.log").read_text()
    assert check_final(cache, reference) == []  # the first run was not disturbed


WRITER = r"""
import sys
import numpy as np
from imgclust.cache import Cache, NewRows

cache, versions, rows, dim = Cache(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), 256
attrs = {"encoder": "enc", "architecture": "a", "weights": "w", "embedding_dim": dim, "preprocess": "{}"}
for v in range(1, versions + 1):
    n = rows + v
    new = NewRows([f"/v{v}/{i:06d}.jpg" for i in range(n)], np.full(n, v), np.full(n, v), [""] * n, [""] * n,
                  (np.full((min(1024, n - start), dim), v, np.float32) for start in range(0, n, 1024)))
    with cache.writer():
        cache.write_rows("enc", attrs, new, replace_all=True)  # every version replaces every row and block
print("done", flush=True)
"""


def _initial_cache(path, rows, dim=256):
    cache = Cache(path)
    attrs = {"encoder": "enc", "architecture": "a", "weights": "w", "embedding_dim": dim, "preprocess": "{}"}
    with cache.writer():
        cache.write_rows("enc", attrs, NewRows([f"/v0/{i:06d}.jpg" for i in range(rows)], np.zeros(rows), np.zeros(rows),
                                               [""] * rows, [""] * rows, np.zeros((rows, dim), np.float32)))
    return cache


def test_readers_see_a_whole_version_while_another_process_rewrites(tmp_path):
    rows, versions = 8000, 12  # 8 MB per version: every rewrite takes a while
    cache = _initial_cache(tmp_path / "c.h5", rows)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(cache.path), str(versions), str(rows)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, reads = set(), 0
    try:
        while writer.poll() is None or reads == 0:
            index = cache.read_index("enc")
            v = int(index.paths[0].split("/")[1][1:])
            n = rows + v if v else rows
            assert len(index) == n and all(p.startswith(f"/v{v}/") for p in index.paths[:: max(1, n // 50)])
            assert (index.sizes == v).all() and (index.mtimes == v).all()
            x = cache.read_embeddings("enc")  # a separate open: may be a later version, but whole
            w = int(x[0, 0])
            assert x.shape == (rows + w if w else rows, 256) and (x == w).all()
            assert w >= v  # versions only move forward
            seen.update((v, w))
            reads += 1
    finally:
        out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    assert reads > 1 and len(seen) >= 2, (reads, seen)  # the reads really overlapped the writes
    assert int(cache.read_embeddings("enc")[0, 0]) == versions
    assert not list(tmp_path.glob(".c.h5.*.tmp"))


def test_a_block_removed_while_hdf5_opens_it_is_read_again_from_the_new_version(tmp_path, monkeypatch):
    # HDF5 reports a file unlinked during its open as a generic "unable to open" OSError, not
    # FileNotFoundError (the race a rewriting process causes, as in the test above): the reader must
    # take the newer version, not fail with "cannot be read"
    import contextlib

    import h5py

    import imgclust.cache as cache_module

    cache = _initial_cache(tmp_path / "c.h5", 100, dim=8)
    stale = cache.rows("enc")  # a reader's view of version 0, taken before the rewrite
    first_block = stale.state.blocks[0]
    with cache.writer():
        cache.write_rows("enc", {"encoder": "enc", "architecture": "a", "weights": "w", "embedding_dim": 8,
                                 "preprocess": "{}"},
                         NewRows([f"/v1/{i:06d}.jpg" for i in range(100)], np.ones(100), np.ones(100), [""] * 100,
                                 [""] * 100, np.ones((100, 8), np.float32)), replace_all=True)
    assert not (cache.bulk_dir / first_block).exists()  # the commit removed the old version's block
    real_file = h5py.File

    def racing_open(path, *args, **kwargs):
        if str(path).endswith(first_block):
            raise OSError("Unable to synchronously open file (unable to open file: name = '...')")
        return real_file(path, *args, **kwargs)

    monkeypatch.setattr(cache_module.h5py, "File", racing_open)
    with pytest.raises(cache_module.BulkFileGone):
        stale.read_embeddings()  # rows of the old version: its block is gone
    x = cache.read_embeddings("enc")  # a fresh read takes the new version
    assert x.shape == (100, 8) and (x == 1).all()
    # a block that is still there but cannot be opened is a damaged file, not a race
    (cache.bulk_dir / "block-damaged.h5").write_bytes(b"not hdf5")
    with pytest.raises(cache_module.CacheError, match="cannot be read"), contextlib.ExitStack() as stack:
        cache._open_ref("block-damaged.h5", stack)
