"""Every clustering method on real embeddings: AMI, silhouette, clusters and seconds, as a Markdown table.

Uses imgclust's own pipeline end to end: ``embed`` (effnet-lite0, ImageNet weights) into a cache per
data set under ``benchmarks/results/``, ``reduce`` (UMAP 50: n_neighbors=30, min_dist=0, seed 0),
``cluster`` with each method (K = the true number of classes where the method takes K), ``score``.
Also: k-means on the raw embeddings (the floor), and the label-free choice of K (``--n-clusters auto``)
against agglomerative with the true K.

    python benchmarks/clustering_table.py                       # both shared sets, every shallow method
    python benchmarks/clustering_table.py --methods agglomerative kmeans --sets imagenette-val
    python benchmarks/clustering_table.py --deep --seeds 0 1 2  # the trained heads, 3 seeds each
    python benchmarks/clustering_table.py --deep --methods cc --views 2 --sets imagenette-val
    python benchmarks/clustering_table.py --deep --methods unic --param self_positive=true --out unic_self
    python benchmarks/clustering_table.py --es-style --methods agglomerative kmeans hdbscan dbscan --out clustering_es_vs_zs
    OMP_NUM_THREADS=1 python benchmarks/clustering_table.py --protocol split --methods temi icce scan unic
    python benchmarks/clustering_table.py --deep --methods temi --no-reference --out temi_ramp   # no agglomerative row

``--protocol split`` (trained heads; the protocol of TEMI, ICCE and UNIC): each method is fitted on a seeded
half of every class (a copy of the cache made to hold exactly those rows, nothing re-embedded) and scored on
the other half, labelled by the fitted head's ``predict`` -- what ``imgclust assign`` computes after embedding
the images, here on their cached embeddings (the same vectors: embedding is reproducible bit for bit).

``--es-style`` runs each method twice: as ZS (the default space of the (encoder, method) table, UMAP 50
here) and as ES (``--reduction l2``: l2-normalised raw embeddings, no UMAP; dbscan with cosine, eps 0.25).
The table reports AMI and ES's headline figure, the harmonic mean of pairwise and BCubed F.

For icce the deep table also scores every head and the consensus on their own (the paper's claim: the
consensus is at least as good as the mean head). ``cc`` first embeds ``--views`` augmented views.
Torch runs with its default threads (2 on the 2-core CI box); nothing else should run beside it.

Prints the table and writes ``benchmarks/results/clustering_<deep|shallow>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_mutual_info_score

import imgclust
from imgclust.cache import Cache
from imgclust.cluster import cluster, parse_params
from imgclust.clusterers import CLUSTERERS
from imgclust.metrics import score_clustering
from imgclust.score import score, space_name

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
SHALLOW = ["agglomerative", "kmeans", "minibatch-kmeans", "spherical-kmeans", "gmm", "spectral", "hdbscan", "dbscan",
           "meanshift", "dpmeans", "aro", "cdp", "affinity"]
DEEP = ["temi", "icce", "scan", "unic"]
#: ES's settings where they differ from imgclust's defaults (ES §DBSCAN: cosine, eps 0.25)
ES_PARAMS = {"dbscan": {"metric": "cosine", "eps": 0.25}}


def ensure_cache(name: str, encoder: str, views: int = 0) -> Path:
    cache = HERE / "results" / f"{name}-{encoder}.h5"
    summary = imgclust.embed([DATA / name], encoder=encoder, cache=cache, labels="folder", device="cpu", views=views)
    print(f"[{name}] {summary.images} images ({summary.embedded} embedded now, views of {summary.views_computed} "
          f"rows computed now, {summary.seconds:.0f} s)", flush=True)
    return cache


def ensemble_columns(run, truth: np.ndarray) -> dict:
    """icce: AMI of every head, of the consensus and of the returned (self-trained classifier) labels."""
    est = run.estimator
    heads = [adjusted_mutual_info_score(truth, h) for h in est.head_labels_]
    return {"heads_ami": heads, "heads_ami_mean": float(np.mean(heads)), "best_loss_head_ami": heads[est.best_head_],
            "consensus_ami": adjusted_mutual_info_score(truth, est.consensus_labels_)}


def one(cache: Path, method: str, k, seed: int = 0, reduction: str | None = None, params: dict | None = None) -> dict:
    started = time.perf_counter()
    try:
        run = cluster(cache, method=method, n_clusters=k, random_state=seed, reduction=reduction, params=params)
    except imgclust.ImgclustError as error:
        return {"method": method, "error": error.message}
    seconds = time.perf_counter() - started
    report = score(cache, run.run_id)
    s = report.scores
    row = {"method": method, "space": space_name(run.space), "k": k, "seed": seed, "params": run.params,
           "ami": s.ami, "accuracy": s.accuracy, "silhouette": s.silhouette,
           "silhouette_noise_as_cluster": s.silhouette_noise_as_cluster, "pairwise_f": s.pairwise_f,
           "bcubed_f": s.bcubed_f, "f_pairwise_bcubed": s.f_pairwise_bcubed, "clusters": run.n_clusters,
           "noise": run.n_noise, "seconds": round(seconds, 2), "cluster_seconds": run.seconds,
           "torch_threads": torch.get_num_threads()}
    if method == "icce":
        truth = Cache(cache).read_index(run.encoder).labels
        row.update(ensemble_columns(run, truth))
    return row


def split_cache(cache: Path, name: str, encoder: str, seed: int) -> tuple[Path, np.ndarray]:
    """A copy of ``cache`` holding a seeded half of each class; returns (its path, mask of the other half)."""
    from assign_holdout import hold_back, subset_cache  # benchmarks/ is the script's folder, so on sys.path

    index = Cache(cache).read_index(encoder)
    held = hold_back(index.paths, index.labels, 0.5, seed)
    return subset_cache(cache, cache.with_name(f"{cache.stem}-split{seed}.h5"), name, encoder, index.paths[~held]), held


def one_split(cache: Path, train: Path, held: np.ndarray, method: str, k: int, seed: int, params: dict | None) -> dict:
    """Fit on the training half, label the held-out half with the fitted predictor, score both halves."""
    started = time.perf_counter()
    run = cluster(train, method=method, n_clusters=k, random_state=seed, params=params)
    full = Cache(cache)
    truth = full.read_index(run.encoder).labels
    pred = run.estimator.predict(full.read_embeddings(run.encoder)[held])
    test = score_clustering(pred, None, truth[held])
    fit = score_clustering(run.labels, None, truth[~held])
    return {"method": method, "protocol": "split", "k": k, "seed": seed, "params": run.params, "ami": test.ami,
            "accuracy": test.accuracy, "train_ami": fit.ami, "train_accuracy": fit.accuracy,
            "n_train": int((~held).sum()), "n_test": int(held.sum()), "seconds": round(time.perf_counter() - started, 2),
            "torch_threads": torch.get_num_threads()}


def takes_k(method: str) -> bool:
    return CLUSTERERS.get(method).n_clusters_mode != "unused"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["imagenette-val", "cifar10-test"])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--encoder", default="effnet-lite0")
    parser.add_argument("--deep", action="store_true", help="the trained heads (temi, icce, scan, unic) over --seeds")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--views", type=int, default=2, help="augmented views per image embedded for cc")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter for every listed method (repeatable), e.g. --param self_positive=true")
    parser.add_argument("--protocol", choices=("whole", "split"), default="whole",
                        help="whole: cluster and score every image (ZS, ES); split: fit on half of each class, score "
                             "the other half through the fitted head (TEMI, ICCE, UNIC; trained heads only)")
    parser.add_argument("--es-style", action="store_true",
                        help="each method as ZS (default space) and as ES (--reduction l2, ES's dbscan settings)")
    parser.add_argument("--no-reference", action="store_true",
                        help="--deep: skip the agglomerative reference row (it fits UMAP 50 on its first use)")
    parser.add_argument("--out", default=None, help="results name (default clustering_<deep|shallow>)")
    args = parser.parse_args()
    args.deep = args.deep or args.protocol == "split"
    methods = args.methods or (DEEP if args.deep else SHALLOW)
    params = parse_params(args.param) or None
    rows = []
    for name in args.sets:
        cache = ensure_cache(name, args.encoder, args.views if "cc" in methods else 0)
        k_true = len({p.name for p in (DATA / name).iterdir() if p.is_dir()})
        if args.protocol == "split":
            for method in methods:
                if not CLUSTERERS.get(method).supports_predict:
                    raise SystemExit(f"--protocol split needs methods that learn a predictor; {method} does not")
            for seed in args.seeds:
                train, held = split_cache(cache, name, args.encoder, seed)
                for method in methods:
                    rows.append({"set": name, **one_split(cache, train, held, method, k_true, seed, params)})
                    print(rows[-1], flush=True)
            continue
        if args.es_style:
            for method in methods:
                k = k_true if takes_k(method) else None
                for style, reduction, params in (("ZS", None, None), ("ES", "l2", ES_PARAMS.get(method))):
                    rows.append({"set": name, "style": style, **one(cache, method, k, reduction=reduction, params=params)})
                    print(rows[-1], flush=True)
            continue
        if not args.deep:
            rows.append({"set": name, **one(cache, "kmeans", k_true, reduction="none"), "method": "kmeans (raw, floor)"})
            print(rows[-1], flush=True)
            auto = one(cache, "agglomerative", "auto")
            rows.append({"set": name, **auto, "method": "agglomerative (K auto, no labels)"})
            print(rows[-1], flush=True)
        for method in methods:
            for seed in args.seeds:
                rows.append({"set": name, **one(cache, method, k_true if takes_k(method) else None, seed, params=params)})
                print(rows[-1], flush=True)
        if args.deep and not args.no_reference:  # the shallow default with the same K, as the reference
            rows.append({"set": name, **one(cache, "agglomerative", k_true), "method": "agglomerative (reference)"})
            print(rows[-1], flush=True)
    out = args.out or f"clustering_{'deep' if args.deep else 'shallow'}{'_split' if args.protocol == 'split' else ''}"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{out}.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    table = markdown_es(rows) if args.es_style else markdown(rows, args.deep)
    (HERE / "results" / f"{out}.md").write_text(table)
    print(table)


def _f(value, scale=100.0, digits=1) -> str:
    return "–" if value is None or value != value else f"{value * scale:.{digits}f}"


def markdown_es(rows: list[dict]) -> str:
    lines = ["| set | method | style | space | AMI ×100 | F (pairwise, BCubed harmonic mean) ×100 | silhouette "
             "(noise excluded / as a cluster) | clusters | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['method']} | {r['style']} | | refused: {r['error']} | | | | |")
            continue
        clusters = f"{r['clusters']}" + (f" (+{r['noise']} noise)" if r.get("noise") else "")
        sil = _f(r["silhouette"], 1, 3) + (f" / {_f(r['silhouette_noise_as_cluster'], 1, 3)}" if r.get("noise") else "")
        lines.append(f"| {r['set']} | {r['method']} | {r['style']} | {r['space']} | {_f(r['ami'])} | "
                     f"{_f(r['f_pairwise_bcubed'])} | {sil} | {clusters} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], deep: bool) -> str:
    if deep:
        split = any(r.get("protocol") == "split" for r in rows)
        what = "held-out half" if split else "all images"
        lines = [f"| set | method | AMI ×100 ({what}, mean ± sd) | accuracy % ({what}, mean ± sd) | seconds (mean) | seeds |",
                 "|---|---|---|---|---|---|"]
        groups: dict = {}
        for r in rows:
            groups.setdefault((r["set"], r["method"]), []).append(r)
        for (name, method), rs in groups.items():
            ok = [r for r in rs if "error" not in r]
            if not ok:
                lines.append(f"| {name} | {method} | {rs[0]['error']} | | | |")
                continue
            ami = np.array([r["ami"] for r in ok]) * 100
            acc = np.array([r["accuracy"] for r in ok]) * 100
            lines.append(f"| {name} | {method} | {ami.mean():.1f} ± {ami.std():.1f} | {acc.mean():.1f} ± {acc.std():.1f} | "
                         f"{np.mean([r['seconds'] for r in ok]):.1f} | {len(ok)} |")
            if method == "icce" and "heads_ami_mean" in ok[0]:  # the whole-set protocol scores the heads too
                for key, what in (("heads_ami_mean", "mean of its heads"), ("best_loss_head_ami", "head of lowest loss"),
                                  ("consensus_ami", "consensus (ensemble)")):
                    v = np.array([r[key] for r in ok]) * 100
                    lines.append(f"| {name} | icce: {what} | {v.mean():.1f} ± {v.std():.1f} | | | {len(ok)} |")
        return "\n".join(lines) + "\n"
    lines = ["| set | method | space | AMI ×100 | silhouette | clusters | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['method']} | | refused: {r['error']} | | | |")
            continue
        clusters = f"{r['clusters']}" + (f" (+{r['noise']} noise)" if r.get("noise") else "")
        lines.append(f"| {r['set']} | {r['method']} | {r['space']} | {_f(r['ami'])} | {_f(r['silhouette'], 1, 3)} | "
                     f"{clusters} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
