"""CPU forward-pass runtimes side by side: images/s and per-row cosine to eager float32 PyTorch.

Candidates, all on the same uint8 batches, the same batch size and thread count, in one run:

* eager float32 PyTorch (runtime ``torch``), channels-last float32, bfloat16 autocast with channels-last
  (runtime ``torch-amp``), ``torch.compile`` (inductor; ``--no-compile`` skips it),
* ONNX Runtime float32 (``onnxruntime``), OpenVINO float32 (``openvino``) and bfloat16 (``openvino-bf16``).

The rates are measured in interleaved rounds (every candidate once per round), so a change of machine
load hits all of them alike; each round's rate is also divided by eager's in the same round, and the
medians over rounds are reported. Accuracy: the lowest and the median per-row cosine similarity to eager
float32 on ``--images`` real images. Writes ``benchmarks/results/cpu_runtimes.json``.

    python benchmarks/cpu_runtimes.py ../shared/data/imagenette-val --encoder effnet-lite0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from imgclust.decode import decode
from imgclust.discover import discover
from imgclust.encoders import Encoder, create_encoder
from imgclust.runtimes import TorchRunner, default_threads, is_cnn


def candidates(name: str, weights: str | None, batch_size: int, threads: int, compile_: bool) -> dict[str, Encoder]:
    """Encoders (one per candidate), each with its build time in ``.build_seconds``."""
    out = {}

    def timed(label, make):
        started = time.perf_counter()
        enc = make()
        enc.build_seconds = time.perf_counter() - started
        out[label] = enc
        print(f"built {label} in {enc.build_seconds:.1f} s", flush=True)

    def torch_variant(**kwargs):
        enc = create_encoder(name, weights=weights, device="cpu", runtime="torch", batch_size=batch_size)
        enc.runner = TorchRunner(enc.runner.network, "cpu", threads=threads, **kwargs)
        return enc

    timed("torch (eager float32)", lambda: torch_variant())  # the 'torch' runtime, at the same threads as the others
    timed("channels-last float32", lambda: torch_variant(channels_last=True))
    timed("torch-amp (bfloat16 autocast, channels-last)", lambda: create_encoder(name, weights=weights, device="cpu",
                                                                                  runtime="torch-amp", batch_size=batch_size))
    if compile_:
        def compiled():
            enc = torch_variant(channels_last=is_cnn(create_encoder(name, weights=weights, device="cpu", runtime="torch").model))
            enc.runner.network.net = torch.compile(enc.runner.network.net)
            enc.encode(np.zeros((batch_size, enc.preprocess.size, enc.preprocess.size, 3), np.uint8))  # compiles
            return enc
        timed("torch.compile (inductor, float32)", compiled)
    for runtime in ("onnxruntime", "openvino", "openvino-bf16"):
        timed(runtime, lambda runtime=runtime: create_encoder(name, weights=weights, device="cpu", runtime=runtime,
                                                              batch_size=batch_size))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenette-val"))
    parser.add_argument("--encoder", default="effnet-lite0")
    parser.add_argument("--weights", default=None, help="'random' for the same computation without weights")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="default: every core (imgclust's default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=3, help="batches per candidate per round")
    parser.add_argument("--images", type=int, default=256, help="real images for the cosine check")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_runtimes.json"))
    args = parser.parse_args()

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    files = [f for f in discover([args.folder]) if f.error is None]
    step = max(1, len(files) // args.images)
    encs = candidates(args.encoder, args.weights, args.batch_size, threads, args.compile)
    size = next(iter(encs.values())).preprocess.size
    images = np.stack([decode(f.path, next(iter(encs.values())).preprocess) for f in files[::step][:args.images]])
    assert images.shape[1:] == (size, size, 3)
    vectors = {label: enc.encode(images) for label, enc in encs.items()}
    reference = vectors["torch (eager float32)"]
    batch = images[:args.batch_size]
    rates: dict[str, list[float]] = {label: [] for label in encs}
    load = []
    for round_ in range(args.rounds):
        for label, enc in encs.items():
            enc.encode(batch)  # warm
            started = time.perf_counter()
            for _ in range(args.batches):
                enc.encode(batch)
            rates[label].append(args.batches * len(batch) / (time.perf_counter() - started))
        load.append(os.getloadavg()[0])
        print(f"round {round_ + 1}: " + ", ".join(f"{label.split(' ')[0]} {r[-1]:.1f}" for label, r in rates.items()), flush=True)
    eager = np.array(rates["torch (eager float32)"])
    rows = []
    for label, enc in encs.items():
        v = vectors[label]
        cos = (v * reference).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(reference, axis=1)
        rows.append({"candidate": label, "images_per_s_median": round(float(np.median(rates[label])), 1),
                     "speedup_vs_eager_median": round(float(np.median(np.array(rates[label]) / eager)), 2),
                     "cosine_min": round(float(cos.min()), 5), "cosine_median": round(float(np.median(cos)), 6),
                     "bit_equal_to_eager": bool(np.array_equal(v, reference)), "build_seconds": round(enc.build_seconds, 1),
                     "rates": [round(r, 1) for r in rates[label]]})
    result = {"encoder": args.encoder, "weights": args.weights or "pretrained", "batch_size": args.batch_size,
              "threads": threads, "rounds": args.rounds, "cosine_images": len(images), "folder": os.path.abspath(args.folder),
              "load_average_1min_per_round": [round(x, 2) for x in load], "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "python": platform.python_version(), "rows": rows}
    print("\n| candidate | images/s (median) | × eager (median of rounds) | cosine min | cosine median | build s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['candidate']} | {r['images_per_s_median']} | {r['speedup_vs_eager_median']} | {r['cosine_min']:.4f} | "
              f"{r['cosine_median']:.5f} | {r['build_seconds']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
