"""End-to-end ``embed`` throughput against the model's forward pass alone.

Measures, in one run, with the same encoder, batch size and thread count:

* forward-only images/s: the model on preprocessed tensors already in memory;
* end-to-end images/s: ``imgclust.embed`` on the folder into a fresh cache (discovery, decoding in
  worker processes, the model, journal and cache writes -- everything the user waits for);

and prints their ratio. Writes the figures as JSON to ``benchmarks/results/embed_throughput.json``.

    python benchmarks/embed_throughput.py ../shared/data/imagenette-val --encoder effnet-lite0
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
from imgclust.embed import default_workers, model_threads
from imgclust.encoders import create_encoder


def forward_only(encoder, files, batch_size: int, n_images: int) -> float:
    """Images/s of the forward pass on in-memory tensors (one batch decoded once, reused)."""
    batch = np.stack([decode(f.path, encoder.preprocess) for f in files[:batch_size]])
    encoder.encode(batch)  # warm-up
    done, started = 0, time.perf_counter()
    while done < n_images:
        encoder.encode(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenette-val"))
    parser.add_argument("--encoder", default="effnet-lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--forward-images", type=int, default=None, help="images for the forward-only pass (default: as many as the folder)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "embed_throughput.json"))
    args = parser.parse_args()

    files = [f for f in discover([args.folder]) if f.error is None]
    workers = default_workers(args.device) if args.workers is None else args.workers
    threads = model_threads() if args.device == "cpu" else torch.get_num_threads()
    torch.set_num_threads(threads)  # the thread count embed uses beside its decoding workers
    encoder = create_encoder(args.encoder, device=args.device)
    n_forward = args.forward_images or len(files)
    # Forward-only before and after the end-to-end run, averaged, so drifting machine load hits both sides.
    fwd_before = forward_only(encoder, files, args.batch_size, n_forward)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = imgclust.embed([args.folder], encoder=args.encoder, cache=Path(tmp) / "bench.h5", device=args.device,
                                 batch_size=args.batch_size, workers=workers)
        wall = time.perf_counter() - started
    e2e = summary.embedded / wall
    fwd_after = forward_only(encoder, files, args.batch_size, n_forward)
    fwd = (fwd_before + fwd_after) / 2
    result = {
        "folder": os.path.abspath(args.folder), "images": summary.embedded, "encoder": args.encoder,
        "device": args.device, "batch_size": args.batch_size, "torch_threads": threads, "decode_workers": workers,
        "forward_only_images_per_s": round(fwd, 2), "forward_only_before": round(fwd_before, 2),
        "forward_only_after": round(fwd_after, 2), "end_to_end_images_per_s": round(e2e, 2),
        "end_to_end_seconds": round(wall, 2), "ratio": round(e2e / fwd, 3),
        "cpu_count": os.cpu_count(), "load_average_1min_at_end": round(os.getloadavg()[0], 2), "torch": torch.__version__, "python": platform.python_version(),
    }
    for key, value in result.items():
        print(f"{key:28s} {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
