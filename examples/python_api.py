"""The Python API, stage by stage, on scikit-learn's digits (offline; needs imgclust[offline]).

    python examples/python_api.py
"""

import imgclust

# Stage 1: embed (the digits are written once as class folders, so labels come along).
summary = imgclust.embed(["sklearn:digits"], encoder="effnet-lite0", cache="digits.h5")
print(f"{summary.images} images in the cache ({summary.embedded} embedded now)")

# Stage 2: UMAP 50, stored in the cache and reused by the next stages.
reduction = imgclust.reduce("digits.h5")
print("reduction", reduction.key, reduction.shape)

# Stage 3: cluster with the known K and with K chosen without labels.
with_k = imgclust.cluster("digits.h5", n_clusters=10)
auto = imgclust.cluster("digits.h5", n_clusters="auto")

# Stage 4: score both runs.
for run in (with_k, auto):
    scores = imgclust.score("digits.h5", run.run_id).scores
    print(f"{run.run_id}: {run.n_clusters} clusters, silhouette {scores.silhouette:.3f}, AMI {scores.ami:.3f}")

# Stage 5: export the better run as CSV and an HTML gallery.
imgclust.export("digits.h5", with_k.run_id, format="csv", out="digits-results", force=True)
imgclust.export("digits.h5", with_k.run_id, format="html", out="digits-results", force=True)
print("see digits-results/gallery/index.html")

# Any registered method also works as a plain estimator on arrays (scikit-learn style):
from imgclust.reduce import load_reduction

X = load_reduction("digits.h5", reduction.encoder, reduction.key)
labels = imgclust.create_clusterer("hdbscan").fit_predict(X)
print("hdbscan found", labels.max() + 1, "clusters and", (labels == -1).sum(), "noise points")
