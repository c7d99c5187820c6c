"""``embed --engine ray`` against the local engine: images/s on the same machine, data and settings.

Each repeat embeds the same files into a fresh cache with the local engine, then with the Ray engine
(on one Ray instance started once, here; its start-up is reported apart), alternating so that the
load of a shared machine falls on both alike. Both figures are end to end (``EmbedSummary``: model
creation, decoding, encoding, journal and commit); the Ray one also includes starting the encoder
actors. The *overhead ratio* is local images/s over Ray images/s (median over the repeats of each
repeat's ratio): how much a one-machine Ray run costs over the local engine, i.e. what a cluster must
win back. The two caches are also compared (max absolute difference of the embeddings).

    python benchmarks/embed_ray.py ../shared/data/imagenette-val --limit 1000 --repeats 3
    python benchmarks/embed_ray.py DATA --device cuda --gpus-per-worker 1     # on a GPU machine

Writes ``benchmarks/results/embed_ray_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import imgclust
from imgclust.cache import Cache
from imgclust.discover import discover


def rows(path: Path, encoder: str) -> dict[str, np.ndarray]:
    cache = Cache(path)
    return dict(zip(cache.read_index(encoder).paths, cache.read_embeddings(encoder)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenette-val"))
    parser.add_argument("--limit", type=int, default=1000, help="embed the first N discovered files (0: all)")
    parser.add_argument("--encoder", default="effnet-lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--ray-workers", type=int, default=1, help="encoder actors")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    files = discover([args.folder])
    files = files[:args.limit] if args.limit else files
    started = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, num_gpus=1 if args.gpus_per_worker else 0, include_dashboard=False,
             logging_level="WARNING", log_to_driver=False)
    ray_start_s = time.perf_counter() - started
    settings = dict(encoder=args.encoder, weights=args.weights, device=args.device, batch_size=args.batch_size)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            local = imgclust.embed(files=files, cache=Path(tmp) / f"local-{repeat}.h5", **settings)
            on_ray = imgclust.embed(files=files, cache=Path(tmp) / f"ray-{repeat}.h5", engine="ray",
                                    workers=args.ray_workers, gpus_per_worker=args.gpus_per_worker, **settings)
            a, b = rows(Path(tmp) / f"local-{repeat}.h5", local.encoder), rows(Path(tmp) / f"ray-{repeat}.h5", on_ray.encoder)
            assert list(a) == list(b) and local.failures_total == on_ray.failures_total
            diff = max(float(np.abs(a[p] - b[p]).max()) for p in a)
            runs.append({"local_images_per_s": local.images_per_second, "ray_images_per_s": on_ray.images_per_second,
                         "local_s": local.seconds, "ray_s": on_ray.seconds, "max_abs_diff": diff})
            print(f"repeat {repeat}: local {local.images_per_second:.1f} images/s, ray {on_ray.images_per_second:.1f} "
                  f"images/s (ratio {local.images_per_second / on_ray.images_per_second:.2f}), max |diff| {diff:.2e}",
                  flush=True)
    ray.shutdown()
    local_ips = statistics.median(r["local_images_per_s"] for r in runs)
    ray_ips = statistics.median(r["ray_images_per_s"] for r in runs)
    ratio = statistics.median(r["local_images_per_s"] / r["ray_images_per_s"] for r in runs)  # paired, side by side
    result = {
        "benchmark": "embed_ray", "folder": args.folder, "images": len(files), "encoder": args.encoder,
        "device": args.device, "batch_size": local.batch_size, "runtime": local.runtime,
        "local_workers": local.workers, "ray_workers": args.ray_workers, "ray_cpus": args.ray_cpus,
        "gpus_per_worker": args.gpus_per_worker, "ray_start_s": round(ray_start_s, 2),
        "local_images_per_s_median": local_ips, "ray_images_per_s_median": ray_ips,
        "overhead_ratio_median": round(ratio, 3),
        "max_abs_diff": max(r["max_abs_diff"] for r in runs), "runs": runs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "ray": ray.__version__,
                    "imgclust": imgclust.__version__},
    }
    print(f"median: local {local_ips:.1f} images/s, ray {ray_ips:.1f} images/s, overhead ratio "
          f"{result['overhead_ratio_median']:.2f} (Ray start-up {ray_start_s:.1f} s, not included)")
    out = Path(__file__).resolve().parent / "results" / f"embed_ray_{args.device.split(':')[0]}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
