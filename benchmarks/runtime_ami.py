"""Does a faster runtime change the clusters? AMI of the default pipeline on a runtime's embeddings
against the float32 eager PyTorch pipeline, on the shared labelled sets.

For each set: ``embed`` with ``--runtime`` into a fresh cache, the per-row cosine similarity to the
reference cache's rows (eager float32; pass it with ``--reference SET=PATH``, or it is embedded here),
then the clustering table's default row on both (UMAP 50, agglomerative K = the number of classes,
:func:`clustering_table.one`). The bar (issue 13): AMI within 0.5 (×100) of the reference.
Writes ``benchmarks/results/runtime_ami.json``.

    python benchmarks/runtime_ami.py --runtime openvino \\
        --reference imagenette-val=benchmarks/results/imagenette-val-effnet-lite0.h5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import imgclust
from imgclust.cache import Cache

from clustering_table import DATA, HERE, one  # noqa: E402  (run as a script from benchmarks/)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["imagenette-val", "cifar10-test"])
    parser.add_argument("--encoder", default="effnet-lite0")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--reference", nargs="*", default=[], help="SET=PATH of an eager float32 cache of the set")
    parser.add_argument("--work", default=str(HERE / "results"), help="where the runtime's caches are written")
    parser.add_argument("--out", default=str(HERE / "results" / "runtime_ami.json"))
    args = parser.parse_args()
    references = dict(item.split("=", 1) for item in args.reference)
    rows = []
    for name in args.sets:
        reference = Path(references.get(name) or Path(args.work) / f"{name}-{args.encoder}-torch.h5")
        if not reference.exists():
            imgclust.embed([DATA / name], encoder=args.encoder, cache=reference, labels="folder", device="cpu", runtime="torch")
        ref_runtime = Cache(reference).info(args.encoder).get("runtime", "torch")
        cache = Path(args.work) / f"{name}-{args.encoder}-{args.runtime}.h5"
        started = time.perf_counter()
        summary = imgclust.embed([DATA / name], encoder=args.encoder, cache=cache, labels="folder", device="cpu",
                                 runtime=args.runtime)
        seconds = time.perf_counter() - started
        ref_index, index = Cache(reference).read_index(args.encoder), Cache(cache).read_index(args.encoder)
        assert list(ref_index.paths) == list(index.paths), "the two caches hold different images"
        a, b = Cache(reference).read_embeddings(args.encoder), Cache(cache).read_embeddings(args.encoder)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        k = len({p.name for p in (DATA / name).iterdir() if p.is_dir()})
        ref_row, row = one(reference, "agglomerative", k), one(cache, "agglomerative", k)
        rows.append({"set": name, "runtime": summary.runtime, "reference_runtime": ref_runtime, "images": len(index.paths),
                     "embed_seconds": round(seconds, 1), "embed_images_per_s": summary.images_per_second,
                     "cosine_min": round(float(cosine.min()), 6), "cosine_median": round(float(np.median(cosine)), 6),
                     "ami_reference": round(ref_row["ami"] * 100, 2), "ami_runtime": round(row["ami"] * 100, 2),
                     "ami_difference": round((row["ami"] - ref_row["ami"]) * 100, 2),
                     "accuracy_reference": round(ref_row["accuracy"] * 100, 2), "accuracy_runtime": round(row["accuracy"] * 100, 2),
                     "load_average_1min": round(os.getloadavg()[0], 2)})
        print(rows[-1], flush=True)
    print("\n| set | runtime | cosine to eager float32 (min / median) | AMI ×100 eager float32 | AMI ×100 runtime | difference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['runtime']} | {r['cosine_min']:.5f} / {r['cosine_median']:.6f} | {r['ami_reference']} | "
              f"{r['ami_runtime']} | {r['ami_difference']:+.2f} |")
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
