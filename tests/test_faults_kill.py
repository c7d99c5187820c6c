"""Kill ``imgclust embed`` (SIGKILL, and Ctrl-C = SIGINT) at many random moments: nothing is lost.

The harness is in ``tests/killing.py`` (its docstring says how runs are started and killed, and what
is checked after each kill and after each chain of re-runs). ``benchmarks/kill_trials.py`` runs
more trials of the same kind and writes their counts as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from imgclust.cache import Cache

from .killing import (STORE_OPS, THREADS, check_final, check_partial, embed_argv, journal_parts, make_folder, running,
                      run_store_trials, run_trials, seed_other_encoder, sigint_as_in_a_terminal, snapshot)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the harness reads /proc and forks")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, zygote):
    """A folder of 16 tiny images and 3 unreadable files, and an uninterrupted run's cache of it."""
    root = tmp_path_factory.mktemp("kills")
    make_folder(root / "images")
    seed_other_encoder(root / "reference.h5")
    assert zygote.run(embed_argv(root / "images", root / "reference.h5"), root / "reference.log") == 0
    return root


def _report(record_property, report) -> dict:
    data = report.to_dict()
    record_property(f"kill_trials_{data['signal']}_workers{data['workers']}", json.dumps(data))
    print(f"\n{data['signal']} (--workers {data['workers']}): {data['trials']} trials, {data['failures']} failures, "
          f"triggers {data['triggers']}, {data['seconds']} s")
    return data


def test_sigkill_at_24_random_moments_loses_nothing(workdir, zygote, record_property):
    report = run_trials(workdir, zygote, n_trials=24, seed=20240601, sig=signal.SIGKILL, workers=0)
    data = _report(record_property, report)
    assert data["trials"] >= 24 and data["failures"] == 0, data["problems"]
    assert data["triggers"].get("commit", 0) + data["triggers"].get("replace", 0) >= 1, \
        "no kill landed during or right after a merge into the cache"


def test_sigkill_with_a_decoding_worker_process(workdir, zygote, record_property):
    # The main process dies alone (as with the OOM killer): its orphaned DataLoader worker must neither
    # keep the cache locked nor linger; the next run resumes at once.
    report = run_trials(workdir, zygote, n_trials=6, seed=7, sig=signal.SIGKILL, workers=1)
    data = _report(record_property, report)
    assert data["trials"] >= 6 and data["failures"] == 0, data["problems"]


@pytest.mark.parametrize("workers", [0, 1])
def test_ctrl_c_at_random_moments_leaves_a_usable_cache(workdir, zygote, record_property, workers):
    # SIGINT goes to the run's whole process group, as a terminal's Ctrl-C does; each interrupted run
    # must exit 130 with the resume hint, no traceback, and a cache that opens cleanly.
    report = run_trials(workdir, zygote, n_trials=8, seed=100 + workers, sig=signal.SIGINT, workers=workers)
    data = _report(record_property, report)
    assert data["trials"] >= 8 and data["failures"] == 0, data["problems"]


def _wait_for_journal_part(proc, cache, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if journal_parts(cache):
            return True
        time.sleep(0.001)
    return False


@pytest.mark.parametrize("workers", [0, 1])
def test_ctrl_c_in_the_real_cli_prints_how_to_resume_and_exits_130(workdir, zygote, tmp_path, workers):
    cache = tmp_path / f"ctrl-c-{workers}.h5"
    seed_other_encoder(cache, mib=64)  # a slow merge: Ctrl-C lands before the end even on a loaded machine
    reference = replace(snapshot(workdir / "reference.h5"), other=snapshot(cache).other)
    argv = embed_argv(workdir / "images", cache, workers)
    proc = subprocess.Popen([sys.executable, "-m", "imgclust", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, **THREADS},
                            preexec_fn=sigint_as_in_a_terminal)
    try:
        assert _wait_for_journal_part(proc, cache), "the run ended before any work was journalled"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    assert f"interrupted: finished work is saved in {cache}; run the same command again to resume" in " ".join(err.split())
    assert "Traceback" not in err
    assert check_partial(cache, reference) == []
    # Run the same command again: it resumes and ends bit-for-bit equal to an uninterrupted run.
    assert zygote.run(argv, tmp_path / "resume.log") == 0, (tmp_path / "resume.log").read_text()
    assert check_final(cache, reference) == []


def test_a_killed_runs_worker_does_not_keep_the_cache_locked(workdir, zygote, tmp_path):
    cache = tmp_path / "orphan.h5"
    pid = zygote.start(embed_argv(workdir / "images", cache, workers=1), tmp_path / "run.log")
    deadline = time.monotonic() + 60
    while running(pid) and not journal_parts(cache) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert running(pid), "the run ended before it could be killed"
    os.kill(pid, signal.SIGKILL)  # the main process only: its DataLoader worker is orphaned
    assert zygote.wait(pid) == -signal.SIGKILL
    time.sleep(0.2)
    with Cache(cache).writer():  # CacheLockedError here means the orphaned worker still holds the lock
        pass


@pytest.mark.parametrize("op", STORE_OPS)
def test_sigkill_while_storing_a_run_compacting_or_packing_loses_nothing(tmp_path, zygote, record_property, op):
    # More trials: benchmarks/kill_trials.py --store-ops cluster,compact,pack
    report = run_store_trials(tmp_path, zygote, op, n_trials=2, seed=11, sig=signal.SIGKILL, rows_per_block=300)
    data = _report(record_property, report)
    assert data["trials"] >= 2 and data["failures"] == 0, data["problems"]
