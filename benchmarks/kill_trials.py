"""Kill ``imgclust embed`` (and ``cluster``, ``cache compact``, ``cache pack``) K times per setting and
count the trials after which something was lost.

Settings: SIGKILL and SIGINT (Ctrl-C, sent to the process group), each with ``--workers 0`` (decode
inline) and ``--workers 1`` (a DataLoader worker process). A trial is one run interrupted at a
moment drawn from a seeded RNG -- at a random time, right after a journal part appears, while the
journal is merged into the cache, or during start-up -- then re-run; see ``tests/killing.py`` for
what is checked (a cache that opens cleanly after every kill; in the end exactly one row per
readable image, bit-for-bit equal to an uninterrupted run's, every unreadable file recorded once,
another encoder's data untouched, no journal or temporary file left).

With ``--store-ops cluster,compact,pack`` it also interrupts, per signal, ``imgclust cluster`` while
it stores a reduction and a run, ``imgclust cache compact`` and ``imgclust cache pack`` (see
``run_store_trials`` in ``tests/killing.py``: after every kill the cache opens cleanly, its rows are
unchanged and every stored result equals an uninterrupted run's; after the re-run the work is done and
nothing is left behind).

Prints one line per setting and writes everything as JSON (default
``benchmarks/results/kill_trials.json``)::

    python benchmarks/kill_trials.py --trials 50 --seed 1
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import imgclust  # noqa: E402
from tests.killing import Zygote, run_store_trials, run_trials  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=25, help="interrupted runs per setting (default 25)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the RNG that picks the moments (default 1)")
    parser.add_argument("--signals", default="SIGKILL,SIGINT", help="comma-separated (default SIGKILL,SIGINT)")
    parser.add_argument("--workers", default="0,1", help="comma-separated --workers values (default 0,1)")
    parser.add_argument("--store-ops", default="", help="also kill these: cluster,compact,pack (default none)")
    parser.add_argument("--store-trials", type=int, default=None, help="trials per store op and signal (default --trials)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kill_trials.json")
    parser.add_argument("--verbose", action="store_true", help="print every trial")
    args = parser.parse_args(argv)

    started = time.time()
    zygote = Zygote()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="imgclust-kill-") as tmp:
            for name in args.signals.split(","):
                for workers in (int(w) for w in args.workers.split(",")):
                    report = run_trials(Path(tmp), zygote, args.trials, seed=args.seed, sig=getattr(signal, name),
                                        workers=workers, log=print if args.verbose else None)
                    data = report.to_dict()
                    results.append(data)
                    print(f"{name:8s} --workers {workers}: {data['trials']} trials, {data['failures']} failures "
                          f"({data['chains']} chains, triggers {data['triggers']}, {data['seconds']} s)", flush=True)
                    for problem in data["problems"]:
                        print(f"    {problem}", flush=True)
                for op in filter(None, args.store_ops.split(",")):
                    report = run_store_trials(Path(tmp), zygote, op, args.store_trials or args.trials, seed=args.seed,
                                              sig=getattr(signal, name), log=print if args.verbose else None)
                    data = report.to_dict()
                    results.append(data)
                    print(f"{data['signal']:16s}: {data['trials']} trials, {data['failures']} failures "
                          f"({data['chains']} chains, triggers {data['triggers']}, {data['seconds']} s)", flush=True)
                    for problem in data["problems"]:
                        print(f"    {problem}", flush=True)
    finally:
        zygote.close()
    summary = {
        "command": "python benchmarks/kill_trials.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "imgclust_version": imgclust.__version__, "python": platform.python_version(), "machine": platform.platform(),
        "seed": args.seed, "trials_per_setting": args.trials, "seconds": round(time.time() - started, 1),
        "total_trials": sum(r["trials"] for r in results), "total_failures": sum(r["failures"] for r in results),
        "settings": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"total: {summary['total_trials']} trials, {summary['total_failures']} failures -> {args.out}")
    return 0 if summary["total_failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
