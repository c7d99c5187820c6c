"""Decoding + preprocessing of camera-sized photos: images/s per core, against a plain Pillow baseline.

Makes 12-megapixel (4000x3000) JPEG, PNG and WebP files by upscaling images of a shared set (in a
temporary folder, never in the project), then measures on one core, in the same run, interleaved:

* ``imgclust``: :func:`imgclust.decode.decode` -- for JPEGs reduced-size decoding (``Image.draft``: the
  DCT scales the image down by 2, 4 or 8 while decoding), then shortest-side resize and centre crop to
  the encoder's uint8 input;
* ``baseline``: ``Image.open(path).convert("RGB")``, the same resize and crop, at full size.

Reports images/s per core (one process, one thread; the median of ``--rounds``) and the speed-up.
Writes ``benchmarks/results/decode.json``.

    python benchmarks/decode.py ../shared/data/imagenette-val --per-format 6
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
from PIL import Image

import PIL
from imgclust.decode import Preprocess, decode, preprocess

SIZE = (4000, 3000)  # 12 megapixels
FORMATS = {"JPEG": ("jpg", {"quality": 90}), "PNG": ("png", {"compress_level": 6}), "WebP": ("webp", {"quality": 90})}


def make_photos(sources: list[Path], folder: Path, per_format: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for fmt, (ext, options) in FORMATS.items():
        out[fmt] = []
        for k, source in enumerate(sources[:per_format]):
            with Image.open(source) as im:
                big = im.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)
            path = folder / f"photo{k}.{ext}"
            big.save(path, format=fmt, **options)
            out[fmt].append(str(path))
    return out


def baseline(path: str, spec: Preprocess) -> np.ndarray:
    with Image.open(path) as im:
        return preprocess(im.convert("RGB"), spec)


def rate(function, paths: list[str], spec: Preprocess) -> float:
    started = time.perf_counter()
    for path in paths:
        function(path, spec)
    return len(paths) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared/data/imagenette-val"))
    parser.add_argument("--per-format", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="the encoder's input size")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode.json"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spec = Preprocess(args.size)
    sources = sorted(p for p in Path(args.folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    sources = sources[::max(1, len(sources) // args.per_format)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(sources, Path(tmp), args.per_format)
        for fmt, paths in photos.items():
            assert Image.open(paths[0]).size == SIZE
            mb = np.mean([os.path.getsize(p) for p in paths]) / 1e6
            ours, plain = [], []
            for _ in range(args.rounds):  # interleaved, so load changes hit both alike
                ours.append(rate(lambda p, s: decode(p, s, None), paths, spec))
                plain.append(rate(baseline, paths, spec))
            row = {"format": fmt, "images": len(paths), "megapixels": SIZE[0] * SIZE[1] / 1e6, "mean_file_mb": round(float(mb), 2),
                   "imgclust_images_per_s_per_core": round(float(np.median(ours)), 2),
                   "baseline_images_per_s_per_core": round(float(np.median(plain)), 2),
                   "speedup": round(float(np.median(np.array(ours) / np.array(plain))), 2),
                   "reduced_size_decoding": fmt == "JPEG", "load_average_1min": round(os.getloadavg()[0], 2)}
            print(row, flush=True)
            rows.append(row)
    print("\n| format (12 MP) | imgclust decode, images/s per core | plain open+convert+resize, images/s per core | speed-up |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']}{' (draft)' if r['reduced_size_decoding'] else ''} | {r['imgclust_images_per_s_per_core']} | "
              f"{r['baseline_images_per_s_per_core']} | {r['speedup']}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"size": list(SIZE), "input_size": args.size, "pillow": PIL.__version__,
                                          "python": platform.python_version(), "cpu_count": os.cpu_count(),
                                          "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
