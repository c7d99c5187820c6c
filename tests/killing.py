"""Kill ``imgclust embed`` at random moments, re-run it, and check nothing was lost or corrupted.

Used by ``tests/test_faults_kill.py`` and ``benchmarks/kill_trials.py``.

Each run is the real CLI entry point, ``imgclust.cli.main([...])``, in its own process. Starting a
fresh interpreter costs ~8 s of imports here (torch, timm), so the runs are forked from a *zygote*:
a helper process that imported imgclust, torch and timm once and forks one child per run (as
Android's zygote or a pre-fork server). The child runs exactly what ``python -m imgclust embed ...``
runs after its imports; it is killed from outside with SIGKILL or SIGINT like any process. Tests
that must see the real interpreter start (the printed Ctrl-C message, exit code 130) use
``python -m imgclust`` subprocesses instead.

A *trial* is one run killed at a moment drawn from a seeded RNG, by one of these triggers:

* ``time``     -- after a uniform random delay over an uninterrupted run's duration;
* ``early``    -- within the first 0.4 s (discovery, model creation, lock held, nothing written);
* ``journal``  -- right after the k-th journal part appears (plus a random 0-30 ms);
* ``commit``   -- right after the cache's temporary index file appears, i.e. while the journal's rows
  have become a block and the new index is written (plus a random delay); the cache also holds another
  encoder's rows, which must never change;
* ``replace``  -- the moment the index file itself changes: just after the atomic replace, before the
  journal is cleared and unreferenced files are collected (were it ever written in place, this would
  kill it mid-write).

Each kill is followed by a re-run of the same command (which may be killed again: a chain of at
most ``max_links`` runs, the last one left to finish). After every kill the cache must open cleanly
and hold only rows bit-for-bit equal to the reference; after the chain, the cache must equal an
uninterrupted run's exactly (per path), with every unreadable file recorded once, the other encoder's
data untouched and no journal, temporary or unreferenced bulk file left.

``run_store_trials`` does the same to ``imgclust cluster`` (storing a reduction and a run),
``imgclust cache compact`` and ``imgclust cache pack``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

ENCODER = "timm:test_efficientnet"
OTHER_ENCODER = "other-encoder"

ZYGOTE = r"""
import json, os, signal, sys, traceback
import numpy, h5py, PIL.Image, torch, timm  # the slow imports, done once
import imgclust.cli, imgclust.embed, imgclust.encoders
from imgclust.cli import main

# Ctrl-C must raise KeyboardInterrupt in the children as it does under a terminal, even when the tests
# run in a background job without job control (the shell then starts them with SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)

torch.set_num_threads(1)  # 2 shared cores: torch's 2 spinning threads run ~20x slower than 1 (see THREADS)

print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "run":
        open(request["log"], "w").close()  # made before the fork: a kill can land before the child opens it
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setpgid(0, 0)  # its own process group, like a shell job: Ctrl-C reaches its workers too
                fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.environ.update(request.get("env", {}))
                code = main(request["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 99
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif request["op"] == "wait":
        _, status = os.waitpid(request["pid"], 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


# Why one torch thread: this box has 2 cores shared with other jobs, where torch's default of one
# thread per core spends most of its time spin-waiting (a batch of 4 tiny images: ~0.5 s instead of
# 0.03 s). Results do not depend on it: the reference run is made the same way.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Zygote:
    """A process that has imported imgclust/torch once and forks one child per ``imgclust`` run."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        ready = json.loads(self.proc.stdout.readline())
        assert "ready" in ready, ready

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        return json.loads(line)

    def start(self, argv: list[str], log: Path, env: dict | None = None) -> int:
        return self._ask({"op": "run", "argv": argv, "log": str(log), "env": env or {}})["pid"]

    def wait(self, pid: int) -> int:
        """The exit code of run ``pid`` (negative: killed by that signal)."""
        return self._ask({"op": "wait", "pid": pid})["code"]

    def run(self, argv: list[str], log: Path) -> int:
        return self.wait(self.start(argv, log))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def run_link(zygote: Zygote, argv: list[str], logfile: Path, sig: int, fire) -> tuple[bool, int, str]:
    """One run of a chain: start ``argv``, send ``sig`` if ``fire(pid)`` says it is time; ``(fired, exit code, log)``.

    SIGINT goes to the process group, as a terminal's Ctrl-C does; SIGKILL to the main process only.
    """
    pid = zygote.start(argv, logfile)
    fired = fire(pid)
    if fired:
        try:
            os.killpg(pid, sig) if sig == signal.SIGINT else os.kill(pid, sig)
        except ProcessLookupError:
            pass
    code = zygote.wait(pid)
    return fired, code, logfile.read_text(errors="replace")


def interrupted(code: int, sig: int) -> bool:
    """Whether a run ended by ``sig`` (a Ctrl-C'd imgclust exits 130)."""
    return code == -sig or (sig == signal.SIGINT and code == 130)


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a finished child of the zygote is a zombie until it is waited for)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- the folder, the caches and their comparison ------------------------------------------------


def make_folder(root: Path, n_good: int = 16) -> Path:
    """Tiny textured images (fast to embed) and three unreadable files."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_good):
        array = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / (f"img{i:03d}." + ("png" if i % 2 else "jpg")))
    good = (root / "img000.jpg").read_bytes()
    (root / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "zz_text.png").write_text("not an image\n")
    os.symlink(root / "missing.jpg", root / "zz_dangling.jpg")
    return root


def seed_other_encoder(cache: Path, mib: int = 16) -> None:
    """Give ``cache`` another encoder's rows, ``mib`` MiB of them (they must stay untouched)."""
    from imgclust.cache import Cache, NewRows

    n, dim = mib * 1024, 256
    data = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    attrs = {"encoder": OTHER_ENCODER, "architecture": "x", "weights": "y", "embedding_dim": dim, "preprocess": "{}"}
    c = Cache(cache)
    with c.writer():
        c.write_rows(OTHER_ENCODER, attrs, NewRows([f"/elsewhere/{i:06d}.jpg" for i in range(n)], np.zeros(n, np.int64),
                                                   np.zeros(n, np.int64), [""] * n, [""] * n, data))


@dataclass
class Snapshot:
    rows: dict[str, bytes]  # path -> embedding bytes
    failures: dict[str, str]  # path -> reason
    other: str  # digest of the other encoder's group
    n_paths: int
    n_failure_paths: int


def snapshot(cache: Path) -> Snapshot:
    """Everything in ``cache`` that the trials compare; raises if the file does not open cleanly."""
    from imgclust.cache import Cache

    c = Cache(cache)
    encoders = c.encoders()
    rows, failures, n_paths, n_fail = {}, {}, 0, 0
    if ENCODER in encoders:
        index, x = c.read_index(ENCODER), c.read_embeddings(ENCODER)
        assert x.shape[0] == len(index), "embeddings and paths differ in length"
        rows = {p: x[i].tobytes() for i, p in enumerate(index.paths)}
        f = c.read_failures(ENCODER)
        failures = dict(zip(f.paths, f.reasons))
        n_paths, n_fail = len(index.paths), len(f.paths)
    digest = hashlib.sha256()
    if OTHER_ENCODER in encoders:
        digest.update(c.read_embeddings(OTHER_ENCODER).tobytes())
        digest.update("\n".join(c.read_index(OTHER_ENCODER).paths).encode())
    with h5py.File(cache, "r") as fh:  # opens cleanly with plain h5py too
        fh.visit(lambda name: None)
    return Snapshot(rows, failures, digest.hexdigest(), n_paths, n_fail)


def leftovers(cache: Path) -> list[str]:
    """A journal, temporary files, or bulk files the index does not name (the lock files are meant to stay)."""
    from imgclust.cache import Cache

    found = [str(p) for p in cache.parent.glob(f".{cache.name}.*.tmp")]
    journal = cache.with_name(cache.name + ".journal")
    if journal.exists():
        found.append(str(journal))
    bulk = cache.with_name(cache.name + ".d")
    if bulk.is_dir():
        state = Cache(cache).load()
        named = {ref for enc in state.encoders.values() for ref in enc.blocks}
        named |= {a["file"] for enc in state.encoders.values() for kind in enc.results.values() for a in kind.values()}
        found += [str(p) for p in bulk.iterdir() if p.name != "commit.lock" and p.name not in named]
    return found


def check_partial(cache: Path, ref: Snapshot) -> list[str]:
    """After a kill: the cache is absent, or opens cleanly and every row in it equals the reference's."""
    if not cache.exists():
        return []
    try:
        snap = snapshot(cache)
    except Exception as exc:  # noqa: BLE001 -- any failure to read is what we look for
        return [f"the cache does not open cleanly after the kill: {type(exc).__name__}: {exc}"]
    problems = []
    if snap.other != ref.other:
        problems.append("the other encoder's data changed")
    if snap.n_paths != len(snap.rows) or snap.n_failure_paths != len(snap.failures):
        problems.append("a path appears twice")
    wrong = [p for p, v in snap.rows.items() if ref.rows.get(p) != v]
    if wrong:
        problems.append(f"{len(wrong)} rows differ from the reference or should not be there: {wrong[:3]}")
    extra = [p for p in snap.failures if p not in ref.failures]
    if extra:
        problems.append(f"unexpected failures: {extra[:3]}")
    return problems


def check_final(cache: Path, ref: Snapshot) -> list[str]:
    try:
        snap = snapshot(cache)
    except Exception as exc:  # noqa: BLE001
        return [f"the final cache does not open cleanly: {type(exc).__name__}: {exc}"]
    problems = []
    if sorted(snap.rows) != sorted(ref.rows):
        problems.append(f"paths differ from the reference: missing {sorted(set(ref.rows) - set(snap.rows))[:3]}, "
                        f"extra {sorted(set(snap.rows) - set(ref.rows))[:3]}")
    elif any(snap.rows[p] != ref.rows[p] for p in ref.rows):
        problems.append("embeddings are not bit-for-bit equal to the reference")
    if snap.failures != ref.failures or snap.n_failure_paths != len(ref.failures):
        problems.append(f"failures differ: {snap.failures} vs {ref.failures}")
    if snap.other != ref.other:
        problems.append("the other encoder's data changed")
    left = leftovers(cache)
    if left:
        problems.append(f"left behind: {left}")
    return problems


# -- the trials -----------------------------------------------------------------------------------


def embed_argv(folder: Path, cache: Path, workers: int = 0) -> list[str]:
    return ["embed", str(folder), "--encoder", ENCODER, "--weights", "random", "--device", "cpu", "--batch-size", "4",
            "--workers", str(workers), "--flush-rows", "4", "--cache", str(cache), "--quiet"]


@dataclass
class TrialReport:
    signal: str
    workers: int
    trials: int = 0  # runs that the signal actually interrupted
    failures: int = 0  # trials after which a check found a problem
    chains: int = 0
    finished_before_signal: int = 0
    triggers: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"signal": self.signal, "workers": self.workers, "trials": self.trials, "failures": self.failures,
                "chains": self.chains, "finished_before_signal": self.finished_before_signal,
                "triggers": dict(self.triggers), "problems": self.problems, "seconds": round(self.seconds, 1)}


def _remove(cache: Path) -> None:
    for path in [cache, *cache.parent.glob(cache.name + ".*"), *cache.parent.glob(f".{cache.name}.*")]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _tmp_files(cache: Path) -> set[str]:
    return {p.name for p in cache.parent.glob(f".{cache.name}.*.tmp")}


def _file_key(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def journal_parts(cache: Path) -> int:
    journal = cache.with_name(cache.name + ".journal")
    try:
        return len(list(journal.glob("*/part-*.npz")))
    except FileNotFoundError:  # the run's merge removed the journal while we looked
        return 0


def _time_merge(cache: Path) -> float:
    """Seconds to copy ``cache`` into a new HDF5 file and fsync it: about what a merge takes."""
    tmp = cache.with_name(cache.name + ".timing")
    t0 = time.monotonic()
    with h5py.File(cache, "r") as src, h5py.File(tmp, "w") as out:
        for key in src:
            src.copy(src[key], out, name=key)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    seconds = time.monotonic() - t0
    tmp.unlink()
    return seconds


def _fire_when(pid: int, cache: Path, trigger: str, rng: random.Random, full_s: float, merge_s: float) -> bool:
    """Wait for ``trigger`` in run ``pid``; return True when it fired (the signal is to be sent now)."""
    if trigger in ("time", "early"):
        return _after_delay(pid, rng.uniform(0, 0.4) if trigger == "early" else rng.uniform(0, full_s))
    if trigger == "journal":
        target, extra = journal_parts(cache) + rng.randint(1, 3), rng.uniform(0, 0.03)
        condition = lambda: journal_parts(cache) >= target  # noqa: E731
    elif trigger == "commit":
        before, extra = _tmp_files(cache), rng.uniform(0, 0.8 * merge_s)
        condition = lambda: bool(_tmp_files(cache) - before)  # noqa: E731
    else:  # replace: the cache file itself changes (atomically: a new inode; else written in place)
        before, extra = _file_key(cache), 0.0
        condition = lambda: _file_key(cache) != before  # noqa: E731
    return _when(pid, condition, extra, poll=0.001)


def _after_delay(pid: int, seconds: float) -> bool:
    """True after ``seconds`` of run ``pid``; False if it ended first."""
    at = time.monotonic() + seconds
    while time.monotonic() < at:
        if not running(pid):
            return False
        time.sleep(0.002)
    return True


def _when(pid: int, condition, extra: float = 0.0, poll: float = 0.001) -> bool:
    """True once ``condition()`` holds (``extra`` seconds later) while run ``pid`` runs; False if it ended first."""
    while running(pid):
        if condition():
            time.sleep(extra)
            return True
        time.sleep(poll)
    return False


def run_trials(workdir: Path, zygote: Zygote, n_trials: int, seed: int, sig: int = signal.SIGKILL, workers: int = 0,
               max_links: int = 4, log=None) -> TrialReport:
    """Interrupt ``embed`` ``n_trials`` times with ``sig`` (see the module docstring); report what broke."""
    rng = random.Random(seed)
    name = signal.Signals(sig).name
    report = TrialReport(signal=name, workers=workers)
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    folder = workdir / "images"
    if not folder.exists():
        make_folder(folder)

    reference = workdir / "reference.h5"  # an uninterrupted run
    if not reference.exists():
        seed_other_encoder(reference)
        code = zygote.run(embed_argv(folder, reference, workers), workdir / "reference.log")
        assert code == 0, (workdir / "reference.log").read_text()
    merge_s = _time_merge(reference)
    probe = workdir / f"probe-{name}-w{workers}-{seed}.h5"
    _remove(probe)
    seed_other_encoder(probe)
    t0 = time.monotonic()
    code = zygote.run(embed_argv(folder, probe, workers), workdir / "probe.log")
    assert code == 0, (workdir / "probe.log").read_text()
    full_s = time.monotonic() - t0  # the span of the 'time' trigger
    ref = snapshot(reference)
    if log:
        log(f"an uninterrupted run takes {full_s:.2f} s; a merge about {merge_s:.3f} s")
    assert len(ref.rows) >= 8 and len(ref.failures) == 3, (len(ref.rows), ref.failures)
    triggers = ["time", "time", "journal", "commit", "replace", "early"]

    chain = 0
    while report.trials < n_trials and chain < 4 * n_trials:  # (bounded: a trigger that never fires ends it)
        chain += 1
        report.chains += 1
        cache = workdir / f"{name}-w{workers}-{seed}-chain{chain:03d}.h5"
        seed_other_encoder(cache)
        chain_problems: list[str] = []
        for link in range(max_links + 1):
            trigger = None if link == max_links or report.trials >= n_trials else rng.choice(triggers)
            logfile = cache.with_name(f"{cache.stem}-{link}.log")
            fired, code, text = run_link(zygote, embed_argv(folder, cache, workers), logfile, sig, lambda pid: (
                trigger is not None and _fire_when(pid, cache, trigger, rng, full_s, merge_s)))
            if fired and interrupted(code, sig):
                report.trials += 1
                report.triggers[trigger] += 1
                problems = check_partial(cache, ref)
                if sig == signal.SIGINT and "run the same command again to resume" not in text:
                    problems.append(f"no resume hint after Ctrl-C (exit code {code}): {text[-300:]!r}")
                if "Traceback" in text:
                    problems.append(f"a traceback after {name}: {text[-500:]!r}")
                if problems:
                    report.failures += 1
                    chain_problems += [f"chain {chain} link {link} ({trigger}): {p}" for p in problems]
                if log:
                    log(f"{name} #{report.trials} chain {chain} link {link} trigger {trigger}: "
                        f"{'OK' if not problems else problems}")
                continue
            if code != 0:
                report.failures += 1
                chain_problems.append(f"chain {chain} link {link}: exit code {code}: {text[-800:]!r}")
                break
            if fired or trigger is not None:
                report.finished_before_signal += 1
                if log:
                    log(f"{name}: chain {chain} link {link} finished before the {trigger} trigger fired")
            final = check_final(cache, ref)
            if final:
                report.failures += 1
                chain_problems += [f"chain {chain} final: {p}" for p in final]
            break
        report.problems += chain_problems
        if not chain_problems:
            _remove(cache)  # kept when something broke, to look at
    report.seconds = time.monotonic() - started
    return report


def torch_threads(n: int = 1):
    """Context manager: torch uses ``n`` threads inside (see THREADS), as many as before after."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def manager():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    return manager()


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that must see Ctrl-C: undo an inherited SIG_IGN (see ZYGOTE)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# -- kills while a result is stored, during a compaction, during a pack ----------------------------

STORE_ENCODER = "synthetic"
STORE_OPS = ("cluster", "compact", "pack")


def make_store_cache(cache: Path, blocks: int = 4, rows: int = 1500, dim: int = 64) -> None:
    """A cache of several blocks, one of them mostly replaced (compaction has work to do)."""
    from imgclust.cache import Cache, NewRows

    c = Cache(cache)
    attrs = {"encoder": STORE_ENCODER, "architecture": "x", "weights": "y", "embedding_dim": dim, "preprocess": "{}"}
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((5, dim)).astype(np.float32) * 4
    with c.writer():
        for b in range(blocks):
            x = centres[rng.integers(0, 5, rows)] + rng.standard_normal((rows, dim)).astype(np.float32)
            names = [f"/synthetic/{b}/{i:05d}.jpg" for i in range(rows)]
            c.write_rows(STORE_ENCODER, attrs, NewRows(names, np.zeros(rows), np.zeros(rows), [""] * rows,
                                                       [""] * rows, x))
        names = [f"/synthetic/0/{i:05d}.jpg" for i in range(0, rows, 2)]  # replace half of block 0 in place
        x = centres[rng.integers(0, 5, len(names))] + rng.standard_normal((len(names), dim)).astype(np.float32)
        c.write_rows(STORE_ENCODER, attrs, NewRows(names, np.ones(len(names)), np.ones(len(names)),
                                                   [""] * len(names), [""] * len(names), x))


def store_argv(op: str, cache: Path) -> list[str]:
    if op == "cluster":
        return ["cluster", str(cache), "--encoder", STORE_ENCODER, "--method", "kmeans", "-k", "5", "--reduction",
                "pca", "--dims", "32", "--seed", "0", "--quiet"]
    if op == "compact":
        return ["cache", "compact", str(cache), "--quiet"]
    return ["cache", "pack", str(cache), str(cache.with_name(cache.stem + "-packed.h5")), "--force", "--quiet"]


@dataclass
class StoreSnapshot:
    rows: bytes
    paths: list[str]
    fingerprint: str
    runs: dict[str, bytes]  # run id -> labels bytes
    reductions: dict[str, bytes]
    blocks: int


def store_snapshot(cache: Path) -> StoreSnapshot:
    from imgclust.cache import Cache

    c = Cache(cache)
    rows = c.rows(STORE_ENCODER)
    runs = {n: c.read_result(STORE_ENCODER, "runs", n)["labels"].tobytes() for n in c.list_groups(STORE_ENCODER, "runs")}
    reductions = {n: c.read_result(STORE_ENCODER, "reductions", n)["data"].tobytes()
                  for n in c.list_groups(STORE_ENCODER, "reductions")}
    x = rows.read_embeddings().tobytes()
    with h5py.File(cache, "r") as fh:  # plain h5py opens it and reads every row through the virtual dataset
        fh.visit(lambda name: None)
        assert fh[f"encoders/{STORE_ENCODER}/embeddings"][()].tobytes() == x
    return StoreSnapshot(x, list(rows.index().paths), rows.fingerprint, runs, reductions, len(rows.state.blocks))


def _check_store(op: str, cache: Path, base: StoreSnapshot, ref: StoreSnapshot, final: bool) -> list[str]:
    try:
        snap = store_snapshot(cache)
    except Exception as exc:  # noqa: BLE001
        return [f"the cache does not open cleanly: {type(exc).__name__}: {exc}"]
    problems = []
    if (snap.rows, snap.paths, snap.fingerprint) != (base.rows, base.paths, base.fingerprint):
        problems.append("the rows changed")
    ref_run = next(iter(ref.runs.values()), None)
    if any(labels != ref_run for labels in snap.runs.values()):
        problems.append("a stored run differs from an uninterrupted run's")
    if any(data not in ref.reductions.values() for data in snap.reductions.values()):
        problems.append("a stored reduction differs from an uninterrupted run's")
    packed = cache.with_name(cache.stem + "-packed.h5")
    if op == "pack" and packed.exists():
        try:
            other = store_snapshot(packed)
            if (other.rows, other.paths, other.fingerprint) != (base.rows, base.paths, base.fingerprint):
                problems.append("the packed file's rows differ")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the packed file does not open cleanly: {type(exc).__name__}: {exc}")
    if final:
        if op == "cluster" and not snap.runs:
            problems.append("no run stored after the re-run")
        if op == "compact" and snap.blocks != ref.blocks:
            problems.append(f"{snap.blocks} blocks after the re-run, not {ref.blocks}")
        if op == "pack" and not packed.exists():
            problems.append("no packed file after the re-run")
        left = leftovers(cache) + [str(p) for p in cache.parent.glob(f".{packed.name}.*.tmp")]
        if left:
            problems.append(f"left behind: {left}")
    return problems


def _copy_cache(source: Path, target: Path) -> None:
    _remove(target)
    shutil.copyfile(source, target)
    shutil.copytree(source.with_name(source.name + ".d"), target.with_name(target.name + ".d"),
                    ignore=shutil.ignore_patterns("commit.lock"))


def _fire_when_store(pid: int, cache: Path, op: str, trigger: str, rng: random.Random, full_s: float) -> bool:
    bulk = cache.with_name(cache.name + ".d")
    packed = cache.with_name(cache.stem + "-packed.h5")
    if trigger in ("time", "early"):
        return _after_delay(pid, rng.uniform(0, 0.3) if trigger == "early" else rng.uniform(0, full_s))
    if trigger == "bulk":  # a bulk file (or the packed file) is being written
        condition = (lambda: any(packed.parent.glob(f".{packed.name}.*.tmp"))) if op == "pack" else \
            (lambda: any(bulk.glob(".tmp-*")))  # noqa: E731
    else:  # replace: the index (or the packed file) changes
        before = _file_key(packed if op == "pack" else cache)
        condition = lambda: _file_key(packed if op == "pack" else cache) != before  # noqa: E731
    return _when(pid, condition, poll=0.0005)


def run_store_trials(workdir: Path, zygote: Zygote, op: str, n_trials: int, seed: int, sig: int = signal.SIGKILL,
                     max_links: int = 3, rows_per_block: int = 1500, log=None) -> TrialReport:
    """Interrupt ``imgclust cluster`` (storing a reduction and a run), ``cache compact`` or ``cache pack``
    ``n_trials`` times with ``sig``; after every kill the cache must open cleanly with its rows unchanged
    and every stored result equal to an uninterrupted run's; after the chain's last (uninterrupted) run, the
    work is done and nothing is left behind."""
    rng = random.Random(seed)
    name = signal.Signals(sig).name
    report = TrialReport(signal=f"{name} {op}", workers=0)
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    base_cache = workdir / f"store-base-{rows_per_block}.h5"
    if not base_cache.exists():
        make_store_cache(base_cache, rows=rows_per_block)
    base = store_snapshot(base_cache)
    reference = workdir / f"store-ref-{op}.h5"
    _copy_cache(base_cache, reference)
    t0 = time.monotonic()
    code = zygote.run(store_argv(op, reference), workdir / f"store-ref-{op}.log")
    assert code == 0, (workdir / f"store-ref-{op}.log").read_text()
    full_s = time.monotonic() - t0
    ref = store_snapshot(reference)
    triggers = ["time", "time", "bulk", "replace", "early"]
    chain = 0
    while report.trials < n_trials and chain < 4 * n_trials:
        chain += 1
        report.chains += 1
        cache = workdir / f"store-{op}-{name}-{seed}-chain{chain:03d}.h5"
        _copy_cache(base_cache, cache)
        chain_problems: list[str] = []
        for link in range(max_links + 1):
            trigger = None if link == max_links or report.trials >= n_trials else rng.choice(triggers)
            logfile = cache.with_name(f"{cache.stem}-{link}.log")
            fired, code, text = run_link(zygote, store_argv(op, cache), logfile, sig, lambda pid: (
                trigger is not None and _fire_when_store(pid, cache, op, trigger, rng, full_s)))
            if fired and interrupted(code, sig):
                report.trials += 1
                report.triggers[trigger] += 1
                problems = _check_store(op, cache, base, ref, final=False)
                if "Traceback" in text:
                    problems.append(f"a traceback after {name}: {text[-500:]!r}")
                if problems:
                    report.failures += 1
                    chain_problems += [f"chain {chain} link {link} ({trigger}): {p}" for p in problems]
                if log:
                    log(f"{name} {op} #{report.trials} chain {chain} link {link} {trigger}: {problems or 'OK'}")
                continue
            if code != 0:
                report.failures += 1
                chain_problems.append(f"chain {chain} link {link}: exit code {code}: {text[-800:]!r}")
                break
            if trigger is not None:
                report.finished_before_signal += 1
            final = _check_store(op, cache, base, ref, final=True)
            if final:
                report.failures += 1
                chain_problems += [f"chain {chain} final: {p}" for p in final]
            break
        report.problems += chain_problems
        if not chain_problems:
            _remove(cache)
            _remove(cache.with_name(cache.stem + "-packed.h5"))
    report.seconds = time.monotonic() - started
    return report
