"""Property: whatever happens to a folder between runs -- files added, changed, corrupted, removed,
runs killed halfway or while merging -- the next complete ``embed`` leaves the cache exactly as a
fresh run on the final folder would: the same paths, bit-for-bit the same embeddings, the same
failures.

Kills are simulated in-process to stay fast: the journal flushes after every batch and its writer
raises after k parts (as if the process died there), or the merge raises just before the atomic
replace. ``tests/test_faults_kill.py`` does it with real signals.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imgclust.cache import Cache
from imgclust.embed import embed

from .conftest import TINY_ENCODER, make_image
from .killing import leftovers, torch_threads

embed_module = importlib.import_module("imgclust.embed")  # the module (the package exports a function of that name)

NAMES = ["a.png", "b.jpg", "sub/c.png", "sub/d.jpg", "e.png"]
# prune: rows of removed files go, as in a fresh run (by default embed keeps them: tests/test_embed.py)
TINY = dict(encoder=TINY_ENCODER, weights="random", device="cpu", batch_size=2, workers=0, flush_rows=1, prune=True)


class Killed(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


def snapshot(cache: Path):
    c = Cache(cache)
    index, failures = c.read_index(TINY_ENCODER), c.read_failures(TINY_ENCODER)
    x = c.read_embeddings(TINY_ENCODER)
    rows = {p: x[i].tobytes() for i, p in enumerate(index.paths)}
    return list(index.paths), rows, dict(zip(failures.paths, failures.reasons)), list(index.sizes), list(index.mtimes)


def killed_embed(folder: Path, cache: Path, after_parts: int, monkeypatch) -> None:
    """Run embed and 'kill' it: after ``after_parts`` journal parts, or (0) just before the index's replace."""
    written = {"n": 0}
    real_write, real_commit = embed_module._Journal.write, Cache._write_index

    def write(self, block, dim):
        if written["n"] >= after_parts > 0:
            raise Killed
        real_write(self, block, dim)
        written["n"] += 1

    def commit(self, state):
        if after_parts == 0:
            raise Killed
        real_commit(self, state)

    with monkeypatch.context() as patch:
        patch.setattr(embed_module._Journal, "write", write)
        patch.setattr(Cache, "_write_index", commit)
        try:
            embed([folder], cache=cache, **TINY)
        except Killed:
            pass


operation = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NAMES), st.integers(0, 4)),  # add or change (content seed)
    st.tuples(st.just("corrupt"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.just("remove"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.just("embed"), st.just(""), st.just(0)),
    st.tuples(st.just("kill"), st.just(""), st.integers(0, 3)),  # 0: during the merge; k: after k journal parts
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=8))
# Histories that random search may not reach in 15 examples, each one a way to get the merge wrong:
@example(ops=[("write", "a.png", 1), ("embed", "", 0), ("corrupt", "a.png", 0), ("embed", "", 0)])  # row -> failure
@example(ops=[("corrupt", "a.png", 0), ("embed", "", 0), ("write", "a.png", 2), ("embed", "", 0)])  # failure -> row
@example(ops=[("write", "a.png", 1), ("write", "b.jpg", 1), ("kill", "", 1), ("write", "a.png", 3),
               ("embed", "", 0)])  # one path in two journal parts: the later one wins
@example(ops=[("write", "a.png", 1), ("write", "sub/c.png", 2), ("kill", "", 0), ("remove", "a.png", 0)])
@example(ops=[("write", "e.png", 4), ("embed", "", 0), ("remove", "e.png", 0), ("kill", "", 2), ("write", "e.png", 1)])
def test_any_history_ends_equal_to_a_fresh_run(ops, monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, cache = tmp / "photos", tmp / "c.h5"
        make_image(folder / "keep.png", (10, 10, 10), noise_seed=99)  # never touched: the folder is never empty
        clock = 1_700_000_000 * 10**9

        for kind, name, arg in ops:
            path = folder / name
            if kind in ("write", "corrupt"):
                if kind == "write":
                    make_image(path, (40 * arg, 90, 200 - 30 * arg), size=(24 + arg, 20), noise_seed=arg,
                               fmt="PNG" if name.endswith(".png") else "JPEG")
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"\x89PNG\r\n\x1a\n broken" if name.endswith(".png") else b"\xff\xd8 broken")
                # Two writes within one clock tick can share an mtime; real edits are seconds apart.
                clock += 10**9
                os.utime(path, ns=(clock, clock))
            elif kind == "remove":
                if path.exists():
                    path.unlink()
            elif kind == "embed":  # a complete run: its result must already be right, not only the last run's
                embed([folder], cache=cache, **TINY)
                assert_equal_to_a_fresh_run(folder, cache)
            else:
                killed_embed(folder, cache, arg, monkeypatch)

        embed([folder], cache=cache, **TINY)
        assert_equal_to_a_fresh_run(folder, cache)
        assert not leftovers(cache)
        assert np.isfinite(Cache(cache).read_embeddings(TINY_ENCODER)).all()


def assert_equal_to_a_fresh_run(folder: Path, cache: Path) -> None:
    fresh = cache.with_name("fresh.h5")
    for leftover in (fresh, fresh.with_name("fresh.h5.lock")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(fresh.with_name("fresh.h5.d"), ignore_errors=True)
    embed([folder], cache=fresh, **TINY)
    paths, rows, failures, sizes, mtimes = snapshot(cache)
    fresh_paths, fresh_rows, fresh_failures, fresh_sizes, fresh_mtimes = snapshot(fresh)
    assert sorted(paths) == sorted(fresh_paths)  # rows are in the order they were added
    assert all(rows[p] == fresh_rows[p] for p in paths), "embeddings differ from a fresh run"
    assert sorted(zip(paths, sizes, mtimes)) == sorted(zip(fresh_paths, fresh_sizes, fresh_mtimes))
    assert failures == fresh_failures
