"""Degenerate inputs and bad arguments for ``embed`` and ``encoders``.

Every bad argument gets one line ``error: ...`` and a ``hint: ...`` (or the JSON error object), exit 2
for a usage error and 1 for a runtime failure (docs: ``imgclust.errors``), no traceback without
``--debug``, and a cache that was there before is byte-identical afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from imgclust.cache import Cache
from imgclust.cli import app
from imgclust.embed import embed

from .conftest import TINY_ENCODER, make_image
from .killing import THREADS, torch_threads

TINY = dict(encoder=TINY_ENCODER, weights="random", device="cpu", batch_size=4, workers=0)
TINY_ARGS = ["--encoder", TINY_ENCODER, "--weights", "random", "--device", "cpu", "--batch-size", "4", "--workers", "0"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, code: int, pattern: str) -> None:
    """Exit ``code``; stderr is exactly ``error: <pattern...>`` and a hint line; no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), result.stderr
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.output and result.stdout == ""


# -- degenerate inputs ------------------------------------------------------------------------


def test_all_images_failing_is_recorded_and_exits_1(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.png").write_text("hello")
    os.symlink(folder / "gone.jpg", folder / "c.jpg")
    summary = embed([folder], cache=tmp_path / "c.h5", **TINY)
    assert (summary.embedded, summary.failed, summary.images, summary.failures_total) == (0, 3, 0, 3)
    failures = Cache(tmp_path / "c.h5").read_failures(TINY_ENCODER)
    assert len(failures) == 3 and Cache(tmp_path / "c.h5").read_embeddings(TINY_ENCODER).shape[0] == 0
    # The CLI says so clearly and exits 1 (a run that produced no embedding is a failure) -- every time.
    for _ in range(2):
        result = invoke("embed", folder, "--cache", tmp_path / "c.h5", *TINY_ARGS)
        assert result.exit_code == 1, result.output
        assert "error: none of the images could be read: 3 failures recorded in" in result.stderr
        assert f"hint: see why with: imgclust info {tmp_path / 'c.h5'} --failures" in result.stderr
    result = invoke("embed", folder, "--cache", tmp_path / "c.h5", *TINY_ARGS, "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["error"]["message"].startswith("none of the images")


def test_only_unstatable_files_with_an_encoder_of_unknown_size(tmp_path):
    # Nothing to decode, so the model is never loaded and the embedding size is unknown: the cache
    # must still be written, and later runs must add rows to it normally.
    folder = tmp_path / "photos"
    folder.mkdir()
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    summary = embed([folder], cache=tmp_path / "c.h5", **TINY)
    assert (summary.images, summary.failures_total) == (0, 1)
    make_image(folder / "real.png", noise_seed=1)
    summary = embed([folder], cache=tmp_path / "c.h5", **TINY)
    assert (summary.embedded, summary.images, summary.failures_total) == (1, 1, 1)
    assert Cache(tmp_path / "c.h5").read_embeddings(TINY_ENCODER).shape[0] == 1


def test_one_image(tmp_path):
    make_image(tmp_path / "only.jpg", noise_seed=3)
    result = invoke("embed", tmp_path / "only.jpg", "--cache", tmp_path / "c.h5", *TINY_ARGS, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 1
    assert Cache(tmp_path / "c.h5").read_embeddings(TINY_ENCODER).shape[0] == 1


def test_identical_images_get_identical_rows_whatever_their_batch(tmp_path):
    data = make_image(tmp_path / "src.png", noise_seed=5).read_bytes()
    folder = tmp_path / "same"
    folder.mkdir()
    for i in range(7):  # batches of 4: rows 0-3 and 4-6 (padded) must agree bit for bit
        (folder / f"{i}.png").write_bytes(data)
    summary = embed([folder], cache=tmp_path / "c.h5", **TINY)
    x = Cache(tmp_path / "c.h5").read_embeddings(TINY_ENCODER)
    assert summary.images == 7 and all(np.array_equal(x[0], row) for row in x)


# -- bad arguments ------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    make_image(tmp_path / "photos" / "a.jpg", noise_seed=1)
    return tmp_path / "photos"


@pytest.mark.parametrize("args, pattern", [
    (["embed"], "no input given"),
    (["embed", "{missing}"], "path not found"),
    (["embed", ""], "path not found"),
    (["embed", "{empty}"], "no images found"),
    (["embed", "{folder}", "--encoder", "no-such-encoder"], "unknown encoder 'no-such-encoder'"),
    (["embed", "{folder}", "--encoder", "timm:no_such_model"], "unknown timm model"),
    (["embed", "{folder}", "--encoder", "model.pt"], "looks like a file"),
    (["embed", "{folder}", "--cache", "{file}/sub/c.h5"], "is a file, not a folder"),
    (["embed", "{folder}", "--cache", "{folder}"], "is a folder, not a file"),
    (["embed", "{folder}", "--cache", ""], "is a folder, not a file"),
    (["embed", "{folder}", "--files-from", "{missing}"], "--files-from"),
    (["encoders", "no-such-*"], "no encoder name matches"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, folder, args, pattern):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("a regular file")
    names = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "folder": folder,
             "file": tmp_path / "file.txt"}
    args = [a.format(**names) for a in args]
    if args[0] == "embed" and "--cache" not in args:
        args += ["--cache", str(tmp_path / "c.h5")]
    one_line_error(invoke(*args), 2, pattern)
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--workers", "-1"), ("--flush-rows", "0"),
                                           ("--max-pixels", "-5")])
def test_out_of_range_options_are_usage_errors(folder, tmp_path, option, value):
    result = invoke("embed", folder, option, value, "--cache", tmp_path / "c.h5")
    assert result.exit_code == 2 and option in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "c.h5").exists()


def test_library_rejects_bad_values_with_usage_errors(folder, tmp_path):
    from imgclust.errors import UsageError

    with pytest.raises(UsageError, match="batch-size"):
        embed([folder], cache=tmp_path / "c.h5", **{**TINY, "batch_size": 0})
    with pytest.raises(UsageError, match="workers"):
        embed([folder], cache=tmp_path / "c.h5", **{**TINY, "workers": -1})


def _other_hdf5(path):
    with h5py.File(path, "w") as fh:
        fh["measurements"] = np.arange(10)


def _old_schema(path, folder):
    embed([folder], cache=path, **TINY)
    with h5py.File(path, "r+") as fh:
        fh.attrs["schema_version"] = 0


@pytest.mark.parametrize("kind, pattern", [
    ("other-tool", "is an HDF5 file but not an imgclust cache"),
    ("old-schema", "has cache schema 0; this imgclust reads schemas 1 and 2"),
    ("not-hdf5", "is not a readable HDF5 file (not an HDF5 file)"),
])
def test_a_cache_that_is_not_ours_is_refused_and_left_alone(folder, tmp_path, kind, pattern):
    cache = tmp_path / "c.h5"
    if kind == "other-tool":
        _other_hdf5(cache)
    elif kind == "old-schema":
        _old_schema(cache, folder)
    else:
        cache.write_text("just some text\n")
    before = cache.read_bytes()
    one_line_error(invoke("embed", folder, "--cache", cache, *TINY_ARGS), 1, pattern)
    result = invoke("embed", folder, "--cache", cache, *TINY_ARGS, "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["error"]["code"] == "cache"
    assert cache.read_bytes() == before


def test_debug_shows_the_traceback(folder, tmp_path):
    cache = tmp_path / "c.h5"
    _other_hdf5(cache)
    result = invoke("embed", folder, "--cache", cache, *TINY_ARGS, "--debug")
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_usage_errors_in_a_real_process_print_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "imgclust", "embed", str(tmp_path / "missing"), "--cache",
                             str(tmp_path / "c.h5")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: path not found") and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "imgclust", "encoders", "--json", "zzz*"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and json.loads(result.stdout)["error"]["code"] == "not_found"


# -- a full disk ----------------------------------------------------------------------------------


def test_disk_full_while_journalling_loses_nothing(folder, tmp_path, monkeypatch):
    cache = tmp_path / "c.h5"
    embed([folder], cache=cache, **TINY)
    before = cache.read_bytes()
    make_image(folder / "new.png", noise_seed=9)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", no_space)
        result = invoke("embed", folder, "--cache", cache, *TINY_ARGS, "--quiet")
    one_line_error(result, 1, "No space left on device")
    assert cache.read_bytes() == before
    # Space again: the same command completes, as if nothing had happened.
    assert invoke("embed", folder, "--cache", cache, *TINY_ARGS).exit_code == 0
    assert len(Cache(cache).read_index(TINY_ENCODER)) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ulimit -f and Python's ignored SIGXFSZ")
def test_disk_full_while_writing_the_cache_keeps_the_old_one_and_the_work(folder, tmp_path):
    # A real failing write: with `ulimit -f`, writing past 24 KiB fails with EFBIG ("File too large"),
    # as a full disk fails with ENOSPC. Journal parts of one row fit; the cache's new block of 19
    # rows (a commit writes what it adds) does not.
    from .killing import seed_other_encoder

    cache = tmp_path / "c.h5"
    seed_other_encoder(cache, mib=1)
    before = cache.read_bytes()
    for i in range(18):
        make_image(folder / f"n{i}.png", noise_seed=20 + i)
    command = [sys.executable, "-m", "imgclust", "embed", str(folder), "--cache", str(cache), *TINY_ARGS,
               "--flush-rows", "1"]
    limited = subprocess.run(["bash", "-c", 'ulimit -f 24 && exec "$@"', "bash", *command], capture_output=True,
                             text=True, timeout=300, env={**os.environ, **THREADS})
    assert limited.returncode == 1, limited.stderr
    lines = [line for line in limited.stderr.splitlines() if line.strip()]
    assert lines[-2] == f"error: cannot write the cache {cache}: File too large", limited.stderr
    assert lines[-1].startswith("hint: free some disk space") and "Traceback" not in limited.stderr
    assert cache.read_bytes() == before and not list(tmp_path.glob(".c.h5.*.tmp"))
    assert not list(cache.with_name("c.h5.d").glob(".tmp-*"))
    # Without the limit, the same command merges the journalled work without embedding it again.
    summary = embed([folder], cache=cache, **TINY)
    assert (summary.recovered, summary.embedded, summary.images) == (19, 0, 19)
