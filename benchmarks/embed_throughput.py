"""End-to-end ``embed`` throughput against the model's forward pass alone, per runtime.

Measures, in one run, for each ``--runtimes`` entry, with the same encoder and batch size and every core:

* forward-only images/s: the runtime on uint8 images already in memory, with imgclust's thread count
  (every core; :func:`imgclust.runtimes.default_threads`);
* end-to-end images/s: ``imgclust.embed`` on the images into a fresh cache (discovery, decoding in
  worker processes, the model, journal and cache writes -- everything the user waits for, including
  loading the model);

and prints their ratio: how much of the best the runtime can do the whole ``embed`` keeps, with decoding
sharing the cores. Forward-only is measured before and after the end-to-end run and averaged, so
drifting machine load hits both sides. Writes ``benchmarks/results/embed_throughput.json``.

    python benchmarks/embed_throughput.py ../shared/data/imagenette-val --encoder effnet-lite0 --images 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import imgclust
from imgclust.decode import decode
from imgclust.discover import discover
from imgclust.embed import default_workers
from imgclust.encoders import create_encoder
from imgclust.runtimes import default_threads


def forward_only(encoder, files, n_images: int) -> float:
    """Images/s of the forward pass on in-memory uint8 images (one batch decoded once, reused)."""
    batch = np.stack([decode(f.path, encoder.preprocess) for f in files[:encoder.batch_size]])
    encoder.encode(batch)  # warm-up
    done, started = 0, time.perf_counter()
    while done < n_images:
        encoder.encode(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def one_runtime(runtime: str, files, args, workers: int) -> dict:
    encoder = create_encoder(args.encoder, weights=args.weights, device=args.device, runtime=runtime, batch_size=args.batch_size)
    n_forward = args.forward_images or len(files)
    fwd_before = forward_only(encoder, files, n_forward)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = imgclust.embed(files=files, encoder=args.encoder, weights=args.weights, cache=Path(tmp) / "bench.h5",
                                 device=args.device, batch_size=args.batch_size, workers=workers, runtime=runtime)
        wall = time.perf_counter() - started
    e2e = summary.embedded / wall
    fwd_after = forward_only(encoder, files, n_forward)
    fwd = (fwd_before + fwd_after) / 2
    row = {"runtime": runtime, "images": summary.embedded, "forward_only_images_per_s": round(fwd, 2),
           "forward_only_before": round(fwd_before, 2), "forward_only_after": round(fwd_after, 2),
           "end_to_end_images_per_s": round(e2e, 2), "end_to_end_seconds": round(wall, 2), "ratio": round(e2e / fwd, 3),
           "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenette-val"))
    parser.add_argument("--encoder", default="effnet-lite0")
    parser.add_argument("--weights", default=None, help="'random' for the same computation without weights")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--images", type=int, default=1000, help="images for the end-to-end run, spread over the folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--forward-images", type=int, default=None, help="images for each forward-only pass (default: --images)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "embed_throughput.json"))
    args = parser.parse_args()

    files = [f for f in discover([args.folder]) if f.error is None]
    files = files[::max(1, len(files) // args.images)][:args.images]
    workers = default_workers(args.device) if args.workers is None else args.workers
    threads = default_threads()
    torch.set_num_threads(threads)
    rows = [one_runtime(runtime, files, args, workers) for runtime in args.runtimes]
    result = {
        "folder": os.path.abspath(args.folder), "encoder": args.encoder, "device": args.device,
        "batch_size": args.batch_size, "threads": threads, "decode_workers": workers, "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(), "rows": rows,
    }
    print("\n| runtime | forward only, images/s (before / after) | end-to-end embed, images/s | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['runtime']} | {r['forward_only_images_per_s']} ({r['forward_only_before']} / {r['forward_only_after']}) | "
              f"{r['end_to_end_images_per_s']} ({r['images']} images, {r['end_to_end_seconds']} s) | {r['ratio']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
