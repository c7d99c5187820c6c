"""GPU embedding: model-only images/s against end-to-end ``embed`` images/s, for CLIP ViT-B/16 and ViT-L/14.

Needs no downloaded weights: ``--weights random`` (the default here) builds the same architecture, so
the same computation. For each encoder, on ``--device`` (default ``cuda``):

* model-only: the runtime (default ``auto``: autocast float16, channels-last for CNNs) on uint8 batches
  already on the GPU -- normalisation and the forward pass, nothing from the host;
* end-to-end: ``imgclust.embed`` on the folder into a fresh cache (decoding workers handing over uint8
  through shared memory, pinned copies overlapping the forward pass, journal written off the main thread),
  with ``--decode cpu`` and, when asked, ``--decode gpu`` (nvJPEG);

and their ratio. Targets (issue 13, one H100/H200-class card): ViT-B/16 end-to-end >= 3,000 images/s
and >= 0.8 of model-only; ViT-L/14 >= 0.9 of model-only. Writes ``benchmarks/results/embed_gpu.json``.

    python benchmarks/embed_gpu.py ../shared/data/imagenette-val --decode cpu gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import imgclust
from imgclust.discover import discover
from imgclust.embed import default_workers
from imgclust.encoders import create_encoder


def model_only(encoder, seconds: float) -> float:
    """Images/s of normalisation + forward pass on uint8 batches already on the device."""
    size = encoder.preprocess.size
    batch = torch.randint(0, 256, (encoder.batch_size, size, size, 3), dtype=torch.uint8, device=encoder.device)
    for _ in range(3):
        encoder.submit(batch).result()  # warm-up (cuDNN autotuning, allocator)
    torch.cuda.synchronize()
    done, started, pending = 0, time.perf_counter(), []
    while time.perf_counter() - started < seconds:
        pending.append(encoder.submit(batch))
        if len(pending) > 2:
            pending.pop(0).result()
        done += encoder.batch_size
    for p in pending:
        p.result()
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenette-val"))
    parser.add_argument("--encoders", nargs="+", default=["clip-vitb16", "clip-vitl14"])
    parser.add_argument("--weights", default="random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the device's (see imgclust embed --help)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--decode", nargs="+", default=["cpu"], choices=["cpu", "gpu"])
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each model-only measurement")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "embed_gpu.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("embed_gpu.py needs a CUDA device (this machine has none)")
    files = [f for f in discover([args.folder]) if f.error is None]
    workers = default_workers(args.device) if args.workers is None else args.workers
    rows = []
    for name in args.encoders:
        enc = create_encoder(name, weights=args.weights, device=args.device, runtime=args.runtime, batch_size=args.batch_size)
        before = model_only(enc, args.seconds)
        for decode_on in args.decode:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                summary = imgclust.embed(files=files, encoder=name, weights=args.weights, cache=Path(tmp) / "gpu.h5",
                                         device=args.device, batch_size=enc.batch_size, workers=workers,
                                         runtime=enc.runtime, decode_on=decode_on)
                wall = time.perf_counter() - started
            after = model_only(enc, args.seconds)
            model = (before + after) / 2
            e2e = summary.embedded / wall
            rows.append({"encoder": name, "runtime": enc.runtime, "decode": decode_on, "batch_size": enc.batch_size,
                         "workers": workers, "images": summary.embedded, "model_only_images_per_s": round(model, 1),
                         "model_only_before": round(before, 1), "model_only_after": round(after, 1),
                         "end_to_end_images_per_s": round(e2e, 1), "end_to_end_seconds": round(wall, 2),
                         "ratio": round(e2e / model, 3)})
            print(rows[-1], flush=True)
            before = after
        del enc
        torch.cuda.empty_cache()
    print("\n| encoder | decode | model only, images/s | end-to-end embed, images/s | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['decode']} | {r['model_only_images_per_s']} | {r['end_to_end_images_per_s']} | {r['ratio']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(0), "cpu_count": os.cpu_count(),
                                          "folder": os.path.abspath(args.folder), "torch": torch.__version__,
                                          "python": platform.python_version(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
