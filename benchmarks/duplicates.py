"""Duplicate detection measured: near-duplicate pairs found by ``imgclust duplicates`` against known copies.

The set (issue #15, item 2): all 3,925 images of ``../shared/data/imagenette-val`` plus, for every
tenth image (sorted paths, 0, 10, 20, ...), five copies written to a work folder:

* ``q40``: re-encoded as JPEG quality 40;
* ``half``: downscaled to half the width and height (Lanczos), JPEG quality 90;
* ``crop90``: the central 90% of the width and height, JPEG quality 90;
* ``bright``: brightness +25% (``PIL.ImageEnhance.Brightness(1.25)``), JPEG quality 90;
* ``same``: a byte-identical copy.

The truth: an original and its five copies form one group of six, every pair in it a duplicate pair
(15 a group); every other pair is not (imagenette's own near duplicates, if any, count as false
positives). Predicted pairs are the pairs inside the groups the command reports (exact and near
together), so the figures are those of the groups a user gets, after the anti-chaining rule. Exact
duplicates are scored on their own: the byte-identical copies against the exact groups.

The embeddings: the effnet-lite0 cache of imagenette-val (``benchmarks/results/imagenette-val-effnet-lite0.h5``,
copied into the work folder), to which the copies are added with ``imgclust.embed`` (rows of other
folders are kept). The baseline: a 64-bit perceptual hash (``imagehash.phash``, the DCT hash of
Zauner 2010) of every image; a pair is a duplicate when the Hamming distance is at most ``--phash-distance``
(10, imagededup's default for its PHash). A sweep of thresholds (cosine for the embeddings, Hamming
distance for the hash) is printed for calibration.

    pip install imagehash                        # the baseline (a dev/benchmark dependency only)
    python benchmarks/duplicates.py              # builds the set once in --work, embeds, measures
    python benchmarks/duplicates.py --encoder effnet-lite0 --work /tmp/dups

Writes ``benchmarks/results/duplicates.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "imagenette-val"
BASE_CACHE = HERE / "results" / "imagenette-val-effnet-lite0.h5"
KINDS = ("q40", "half", "crop90", "bright", "same")
STEP = 10


def originals() -> list[Path]:
    return sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))


def write_copy(source: Path, kind: str, target: Path) -> None:
    """One transformed copy of ``source`` (see the module docstring)."""
    if kind == "same":
        shutil.copyfile(source, target)
        return
    with Image.open(source) as image:
        image = image.convert("RGB")
        w, h = image.size
        if kind == "half":
            image = image.resize((max(1, w // 2), max(1, h // 2)), Image.LANCZOS)
        elif kind == "crop90":
            dw, dh = round(w * 0.05), round(h * 0.05)
            image = image.crop((dw, dh, w - dw, h - dh))
        elif kind == "bright":
            image = ImageEnhance.Brightness(image).enhance(1.25)
        image.save(target, "JPEG", quality=40 if kind == "q40" else 90)


def build_set(work: Path) -> dict[str, list[str]]:
    """The copies (written once) and the truth: original path -> its copies' paths."""
    copies_dir = work / "copies"
    groups = {}
    for i, source in enumerate(originals()[::STEP]):
        folder = copies_dir / f"{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        targets = []
        for kind in KINDS:
            target = folder / f"{kind}{source.suffix if kind == 'same' else '.jpg'}"
            if not target.exists():
                write_copy(source, kind, target)
            targets.append(str(target))
        groups[str(source)] = targets
    return groups


def ensure_cache(work: Path, encoder: str) -> Path:
    """The work cache: the base cache's rows plus the copies' (embedding only what is missing)."""
    import imgclust
    from imgclust.cache import Cache

    cache = work / f"duplicates-{encoder}.h5"
    if not Cache(cache).exists():
        if encoder != "effnet-lite0" or not BASE_CACHE.exists():
            imgclust.embed([DATA], encoder=encoder, cache=cache, labels="folder", device="cpu")
        else:
            shutil.copy2(BASE_CACHE, cache)
            shutil.copytree(f"{BASE_CACHE}.d", f"{cache}.d")
    started = time.perf_counter()
    summary = imgclust.embed([work / "copies"], encoder=encoder, cache=cache, device="cpu")
    print(f"embedded the copies: {summary.to_dict() if hasattr(summary, 'to_dict') else summary} "
          f"({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    return cache


def truth_pairs(truth: dict[str, list[str]]) -> tuple[set, set, dict]:
    """``(all duplicate pairs, byte-identical pairs, kind -> the (original, copy) pairs of that kind)``."""
    pairs, by_kind = set(), {kind: set() for kind in KINDS}
    for original, copies in truth.items():
        pairs.update(pair(a, b) for a, b in combinations([original, *copies], 2))
        for kind, copy in zip(KINDS, copies):
            by_kind[kind].add(pair(original, copy))
    return pairs, by_kind["same"], by_kind


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def scores(predicted: set, truth: set, by_kind: dict) -> dict:
    hits = len(predicted & truth)
    return {"predicted_pairs": len(predicted), "true_pairs": len(truth), "found": hits,
            "precision": hits / len(predicted) if predicted else 1.0, "recall": hits / len(truth),
            "recall_by_copy": {kind: len(predicted & pairs) / len(pairs) for kind, pairs in by_kind.items()}}


def grouped_pairs(report) -> set:
    return {pair(a, b) for g in report.groups for a, b in combinations(g.paths, 2)}


def phash_pairs(paths: list[str], max_distance: int, hashes: np.ndarray) -> set:
    """Pairs whose 64-bit perceptual hashes differ in at most ``max_distance`` bits (all pairs, in blocks)."""
    found = set()
    for start in range(0, len(paths), 512):
        block = np.bitwise_count(hashes[start:start + 512, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(block <= max_distance)):
            if start + i < j:
                found.add(pair(paths[start + i], paths[j]))
    return found


def perceptual_hashes(paths: list[str]) -> np.ndarray:
    import imagehash

    out = np.empty(len(paths), np.uint64)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            bits = imagehash.phash(image).hash.flatten()
        out[i] = int("".join("1" if b else "0" for b in bits), 2)
        if (i + 1) % 1000 == 0:
            print(f"  phash {i + 1}/{len(paths)}", file=sys.stderr, flush=True)
    return out


def fmt(s: dict) -> str:
    kinds = " | ".join(f"{s['recall_by_copy'][k]:.3f}" for k in KINDS)
    return f"{s['precision']:.4f} | {s['recall']:.4f} | {kinds} | {s['predicted_pairs']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", default="effnet-lite0")
    parser.add_argument("--work", type=Path, default=Path("/tmp/imgclust-duplicates-bench"))
    parser.add_argument("--phash-distance", type=int, default=10)
    parser.add_argument("--out", default="duplicates")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from imgclust.cache import Cache
    from imgclust.duplicates import default_threshold, find_duplicates

    truth = build_set(args.work)
    cache = ensure_cache(args.work, args.encoder)
    pairs, exact_truth, by_kind = truth_pairs(truth)
    index = Cache(cache).read_index(args.encoder)
    paths = [str(p) for p in index.paths]
    exact_found = {pair(a, b) for h in set(index.hashes) - {""}
                   for a, b in combinations(sorted(p for p, x in zip(paths, index.hashes) if x == h), 2)}
    result = {"encoder": args.encoder, "images": len(paths), "originals_copied": len(truth), "copies": KINDS,
              "exact": {"predicted_pairs": len(exact_found), "found": len(exact_found & exact_truth),
                        "true_pairs": len(exact_truth)}}

    started = time.perf_counter()
    report = find_duplicates(cache, args.encoder)
    seconds = time.perf_counter() - started
    result["default"] = {"threshold": report.threshold, "source": report.threshold_source, "seconds": round(seconds, 2),
                         "graph": report.graph, **report.counts(), **scores(grouped_pairs(report), pairs, by_kind)}
    default, _ = default_threshold(report.family)
    result["sweep"] = []
    for threshold in sorted({0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98, default}):
        swept = find_duplicates(cache, args.encoder, threshold)
        result["sweep"].append({"threshold": threshold, **scores(grouped_pairs(swept), pairs, by_kind)})
        print(f"  cosine >= {threshold:.2f}: {fmt(result['sweep'][-1])}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    hashes = perceptual_hashes(paths)
    result["phash"] = {"max_distance": args.phash_distance, "seconds": round(time.perf_counter() - started, 2),
                       **scores(phash_pairs(paths, args.phash_distance, hashes), pairs, by_kind)}
    result["phash_sweep"] = []
    for distance in (0, 2, 4, 6, 8, 10, 12, 14, 16):
        result["phash_sweep"].append({"max_distance": distance, **scores(phash_pairs(paths, distance, hashes), pairs, by_kind)})
        print(f"  phash <= {distance}: {fmt(result['phash_sweep'][-1])}", file=sys.stderr, flush=True)

    header = ("| method | precision | recall | " + " | ".join(f"recall {k}" for k in KINDS) + " | predicted pairs |\n"
              "|---|---|---|" + "---|" * len(KINDS) + "---|")
    lines = [header,
             f"| imgclust duplicates, {args.encoder}, cosine >= {report.threshold:g} (default) | {fmt(result['default'])} |",
             f"| phash (imagehash), Hamming <= {args.phash_distance} | {fmt(result['phash'])} |"]
    lines += ["", "| cosine threshold | precision | recall | " + " | ".join(f"recall {k}" for k in KINDS)
              + " | predicted pairs |", "|---|---|---|" + "---|" * len(KINDS) + "---|"]
    lines += [f"| {s['threshold']:.2f} | {fmt(s)} |" for s in result["sweep"]]
    lines += ["", "| phash Hamming <= | precision | recall | " + " | ".join(f"recall {k}" for k in KINDS)
              + " | predicted pairs |", "|---|---|---|" + "---|" * len(KINDS) + "---|"]
    lines += [f"| {s['max_distance']} | {fmt(s)} |" for s in result["phash_sweep"]]
    e = result["exact"]
    lines += ["", f"Exact duplicates (content hash): {e['found']} of {e['true_pairs']} byte-identical pairs found, "
                  f"{e['predicted_pairs']} pairs reported."]
    table = "\n".join(lines)
    print(table)
    out = HERE / "results" / f"{args.out}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    (HERE / "results" / f"{args.out}.md").write_text(table + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
