"""What the cache's everyday writes cost on a large cache: schema 1 (one file rewritten per write)
against schema 2 (index + immutable bulk files), side by side on the same synthetic rows.

Operations, each timed (median of ``--repeats`` for schema 2; schema 1 once, each copies the cache)
and with the bytes the process wrote (``wchar`` of /proc/self/io):

* add 10 rows (what ``embed`` commits after embedding 10 new images, without the embedding);
* store a clustering run (N int64 labels);
* store a reduction (N x 50 float32);
* delete a run;
* open the cache and read its index (paths, sizes, mtimes, labels);
* stream all embeddings (chunked reads; the peak extra memory is reported).

Schema 1 is today's code before this change, loaded from git (``--schema1-commit``), so both are
the real implementations. Writes ``benchmarks/results/cache_scale.json``::

    python benchmarks/cache_scale.py --rows 1000000 --dim 1280 --workdir /work/tmp-cache-scale
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import imgclust  # noqa: E402
from imgclust.cache import Cache, NewRows  # noqa: E402

ENCODER = "synthetic"


def schema1_module(commit: str):
    """imgclust/cache.py as it was at ``commit`` (schema 1), imported as ``imgclust._cache_schema1``."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:imgclust/cache.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "_cache_schema1.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("imgclust._cache_schema1", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def wchar() -> int:
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("wchar:")).split()[1])


def measure(fn) -> dict:
    before, t0 = wchar(), time.perf_counter()
    fn()
    return {"seconds": time.perf_counter() - t0, "bytes_written": wchar() - before}


def chunks(rows: int, dim: int, step: int = 4096, seed: int = 0):
    rng = np.random.default_rng(seed)
    for start in range(0, rows, step):
        yield rng.standard_normal((min(step, rows - start), dim), dtype=np.float32)


def paths(rows: int, prefix: str = "/data/imagenet/train") -> list[str]:
    return [f"{prefix}/n{i // 1300:08d}/img_{i:08d}.JPEG" for i in range(rows)]


ATTRS = {"encoder": ENCODER, "family": "synthetic", "architecture": "synthetic", "weights": "none",
         "preprocess": "{}"}


def build_new(path: Path, rows: int, dim: int) -> None:
    cache = Cache(path)
    names = paths(rows)
    with cache.writer():
        cache.write_rows(ENCODER, {**ATTRS, "embedding_dim": dim},
                         NewRows(names, np.arange(rows), np.arange(rows), [""] * rows, [""] * rows, chunks(rows, dim)))


def build_old(v1, path: Path, rows: int, dim: int) -> None:
    names = np.array(sorted(paths(rows)), dtype=object)  # schema 1 keeps rows sorted by path

    def build(group, _old):
        group.attrs.update({**ATTRS, "embedding_dim": dim})
        index = v1.Index(names, np.arange(rows), np.arange(rows), np.array([""] * rows, dtype=object))
        v1.write_rows(group, index, ((s, c) for s, c in zip(range(0, rows, 4096), chunks(rows, dim))), dim)
        v1.write_failures(group, v1.Failures(np.array([], dtype=object), np.array([], np.int64),
                                             np.array([], np.int64), np.array([], dtype=object)))

    cache = v1.Cache(path)
    with cache.writer():
        cache.rewrite(ENCODER, build)


# -- the operations, on each schema ----------------------------------------------------------------


def new_ops(path: Path, rows: int, dim: int, k: int) -> dict:
    cache = Cache(path)
    rng = np.random.default_rng(100 + k)
    fingerprint = cache.rows(ENCODER).fingerprint

    def add10():
        with cache.writer():
            cache.write_rows(ENCODER, {**ATTRS, "embedding_dim": dim},
                             NewRows([f"/data/new/{k}/{i}.jpg" for i in range(10)], np.zeros(10), np.zeros(10),
                                     [""] * 10, [""] * 10, rng.standard_normal((10, dim), dtype=np.float32)))

    out = {}
    out["store_run"] = measure(lambda: cache.store_result(
        ENCODER, "runs", f"bench-run-{k}", {"labels": rng.integers(0, 1000, rows)}, {"method": "bench"}, fingerprint))
    out["store_reduction"] = measure(lambda: cache.store_result(
        ENCODER, "reductions", f"bench-red-{k}", {"data": np.zeros((rows, 50), np.float32)}, {"method": "bench"},
        fingerprint))
    out["delete_run"] = measure(lambda: cache.remove_results([f"bench-run-{k}"]))
    out["add_10_rows"] = measure(add10)
    return out


def old_ops(v1, path: Path, rows: int, dim: int) -> dict:
    cache = v1.Cache(path)
    key = v1.encoder_key(ENCODER)
    rng = np.random.default_rng(7)

    def store(kind, name, data):
        with cache.writer(), cache.transaction() as fh:
            fh[f"encoders/{key}"].require_group(kind).create_group(name).create_dataset(
                "labels" if kind == "runs" else "data", data=data)

    def delete_run():
        with cache.writer(), cache.transaction() as fh:
            del fh[f"encoders/{key}/runs/bench-run"]

    def add10():  # what schema-1 embed did: merge old rows and new ones, sorted, into a new file
        index = cache.read_index(ENCODER)
        new_paths = [f"/data/new/{i}.jpg" for i in range(10)]
        merged = np.array(sorted(list(index.paths) + new_paths), dtype=object)
        new_vectors = dict(zip(new_paths, rng.standard_normal((10, dim), dtype=np.float32)))
        old_pos = {p: i for i, p in enumerate(index.paths)}

        def build(group, old):
            group.attrs.update({**ATTRS, "embedding_dim": dim})
            n = len(merged)

            def gather():
                for start in range(0, n, 4096):
                    part = merged[start:start + 4096]
                    block = np.empty((len(part), dim), np.float32)
                    olds = [(j, old_pos[p]) for j, p in enumerate(part) if p in old_pos]
                    if olds:
                        block[[j for j, _ in olds]] = old["embeddings"][[i for _, i in olds]]
                    for j, p in enumerate(part):
                        if p in new_vectors:
                            block[j] = new_vectors[p]
                    yield start, block
            v1.write_rows(group, v1.Index(merged, np.zeros(n, np.int64), np.zeros(n, np.int64),
                                          np.array([""] * n, dtype=object)), gather(), dim)
            v1.write_failures(group, cache.read_failures(ENCODER))
            # schema 1 dropped every reduction and run when the rows changed

        with cache.writer():
            cache.rewrite(ENCODER, build)

    out = {}
    out["store_run"] = measure(lambda: store("runs", "bench-run", rng.integers(0, 1000, rows)))
    out["store_reduction"] = measure(lambda: store("reductions", "bench-red", np.zeros((rows, 50), np.float32)))
    out["delete_run"] = measure(delete_run)
    out["add_10_rows"] = measure(add10)
    return out


def reads(open_cache, encoder: str) -> dict:
    def index():
        c = open_cache()
        assert len(c.read_index(encoder)) > 0

    out = {"open_read_index": measure(index)}
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the peak is what streaming held at once
    t0, total, biggest = time.perf_counter(), 0, 0
    for _, chunk in open_cache().iter_embeddings(encoder):
        total += chunk.nbytes
        biggest = max(biggest, chunk.nbytes)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out["stream_embeddings"] = {"seconds": seconds, "bytes_read": total, "mb_per_s": total / 2**20 / seconds,
                                "largest_chunk_bytes": biggest, "peak_traced_bytes": peak}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=3, help="schema-2 repeats per operation (median)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the caches go (default: a temp folder); removed after")
    parser.add_argument("--schema1-commit", default="396c842", help="the git commit whose imgclust/cache.py is schema 1")
    parser.add_argument("--skip-schema1", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cache_scale.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="cache-scale-", dir=args.workdir))
    free = shutil.disk_usage(work).free
    need = args.rows * args.dim * 4 * (1 if args.skip_schema1 else 3.2)
    if free < need:
        print(f"error: {work} has {free / 2**30:.1f} GiB free; this needs about {need / 2**30:.1f} GiB", file=sys.stderr)
        return 1
    result = {"command": "python benchmarks/cache_scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "rows": args.rows, "dim": args.dim, "embedding_bytes": args.rows * args.dim * 4,
              "imgclust_version": imgclust.__version__, "python": platform.python_version(),
              "machine": platform.platform(), "schema2": {}, "schema1": {}}
    try:
        new_path = work / "new.h5"
        t0 = time.perf_counter()
        build_new(new_path, args.rows, args.dim)
        result["schema2"]["build_seconds"] = time.perf_counter() - t0
        print(f"schema 2: built {args.rows} x {args.dim} in {result['schema2']['build_seconds']:.1f} s", flush=True)
        runs = [new_ops(new_path, args.rows, args.dim, k) for k in range(args.repeats)]
        for op in runs[0]:
            result["schema2"][op] = {"seconds_median": statistics.median(r[op]["seconds"] for r in runs),
                                     "seconds_all": [r[op]["seconds"] for r in runs],
                                     "bytes_written_median": statistics.median(r[op]["bytes_written"] for r in runs)}
            print(f"schema 2 {op}: {result['schema2'][op]['seconds_median']:.3f} s, "
                  f"{result['schema2'][op]['bytes_written_median'] / 2**20:.2f} MiB written", flush=True)
        result["schema2"].update(reads(lambda: Cache(new_path), ENCODER))
        result["schema2"]["index_file_bytes"] = new_path.stat().st_size
        for op in ("open_read_index", "stream_embeddings"):
            print(f"schema 2 {op}: {result['schema2'][op]['seconds']:.3f} s", flush=True)
        shutil.rmtree(work / "new.h5.d")
        new_path.unlink()
        if not args.skip_schema1:
            v1 = schema1_module(args.schema1_commit)
            old_path = work / "old.h5"
            t0 = time.perf_counter()
            build_old(v1, old_path, args.rows, args.dim)
            result["schema1"]["build_seconds"] = time.perf_counter() - t0
            print(f"schema 1: built in {result['schema1']['build_seconds']:.1f} s", flush=True)
            for op, value in old_ops(v1, old_path, args.rows, args.dim).items():
                result["schema1"][op] = {"seconds_median": value["seconds"], "seconds_all": [value["seconds"]],
                                         "bytes_written_median": value["bytes_written"]}
                print(f"schema 1 {op}: {value['seconds']:.3f} s, {value['bytes_written'] / 2**20:.2f} MiB written", flush=True)
            result["schema1"].update(reads(lambda: v1.Cache(old_path), ENCODER))
            for op in ("open_read_index", "stream_embeddings"):
                print(f"schema 1 {op}: {result['schema1'][op]['seconds']:.3f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
