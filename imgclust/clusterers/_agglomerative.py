"""Agglomerative (hierarchical) clustering: imgclust's default method (ZS §1, ES §2).

With ``n_clusters`` it is scikit-learn's ``AgglomerativeClustering(n_clusters=K)``. Without it,
the dendrogram is cut at ``distance_threshold`` after the ZS authors' normalisation of the input
(:func:`normalise_for_threshold`), so that one threshold means roughly the same on any data scale.

Which ZS parameters: the per-encoder linkage, metric and threshold are those of the ZS authors'
*later* code, ``BEST_PARAMS_v5`` (``_version`` "v5.0", the set ``setup_best_params`` returns) in
``analysis/param_setup.py`` of github scottclowe/zs-ssl-clustering (commit 5cb58bd), see
:data:`ZS_PARAMS_VERSION`. The seed paper reports a different choice (ward+l2 for 5 encoders,
average+l2 for 3, average+l-infinity for 2, no cosine) and tuned its thresholds (21 log-spaced
values in [0.001, 5000]) on the raw reduced space without any normalisation. The v5 thresholds were
tuned *with* that code's ``--zscore2-average --ndim-correction``, so they are only used with it:
``normalisation="raw"`` (the seed paper's convention) has no default threshold and needs one.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError
from . import register_clusterer
from . import _base
from ._base import Clusterer, Param
from ._neighbours import connectivity_matrix
from ._tree import EXACT_ROWS, MICRO_CLUSTERS, micro_tree, ward_tree

LINKAGES = ("ward", "average", "complete", "single")
METRICS = ("euclidean", "cosine", "chebyshev", "manhattan")

#: Distance threshold for ward + euclidean when the encoder was not tuned by ZS (DINOv2,
#: EfficientNet-Lite0, plugins, ...). A documented imgclust choice, not a ZS value, checked on
#: effnet-lite0 UMAP-50 embeddings (after normalise_for_threshold): on Imagenette (3925 images,
#: 10 classes) every threshold in about [4.5, 11] gives exactly 10 clusters (AMI 93.1, as K=10),
#: and 7.0 is that interval's geometric middle; on CIFAR-10 (10000 images, 10 classes, a weak
#: encoder for it) 7.0 gives 32 clusters (AMI 40.3; K=10: 42.4). ZS's value for supervised
#: encoders, 2.0, gives 15 and 138 clusters there. Ward merge heights grow with cluster size, so
#: larger collections get more clusters at the same threshold. Only one encoder was checked.
UNTUNED_WARD_THRESHOLD = 7.0


@dataclass(frozen=True)
class AgglomerativeDefault:
    """Linkage, metric and threshold for one encoder, and where the values come from."""

    linkage: str
    metric: str
    distance_threshold: float
    source: str

    def params(self) -> dict:
        return {"linkage": self.linkage, "metric": self.metric, "distance_threshold": self.distance_threshold}


#: Where the ZS per-encoder values below come from (see the module docstring).
ZS_PARAMS_VERSION = "ZS authors' code BEST_PARAMS_v5 (v5.0), scottclowe/zs-ssl-clustering analysis/param_setup.py @5cb58bd"
NORMALISATIONS = ("zscore-average", "raw")

_ZS = "ZS tuned, BEST_PARAMS_v5"
_UNTUNED = AgglomerativeDefault(
    "ward", "euclidean", UNTUNED_WARD_THRESHOLD,
    "imgclust choice: ZS did not tune this encoder; ward+euclidean is ZS's advice for untuned encoders",
)

#: Per-encoder defaults, keyed by imgclust encoder name: ZS's later code, BEST_PARAMS_v5 (its
#: "AgglomerativeClustering" linkage/metric and "AC w/o C" thresholds; v1 put MAE on ward and
#: tuned other thresholds, the seed paper none of these).
AGGLOMERATIVE_DEFAULTS: dict[str, AgglomerativeDefault] = {
    "clip-vitb16": AgglomerativeDefault("average", "chebyshev", 1.0, _ZS + " (CLIP ViT-B/16)"),
    # Unverified, extrapolated: ZS tuned only CLIP ViT-B/16; the other CLIP ViTs are treated alike.
    "clip-vitb32": AgglomerativeDefault("average", "chebyshev", 1.0, "unverified, extrapolated from CLIP ViT-B/16"),
    "clip-vitl14": AgglomerativeDefault("average", "chebyshev", 1.0, "unverified, extrapolated from CLIP ViT-B/16"),
    "clip-rn50": AgglomerativeDefault("average", "euclidean", 0.5, _ZS + " (CLIP RN50)"),
    "dino-vitb16": AgglomerativeDefault("average", "euclidean", 0.2, _ZS + " (DINO ViT-B/16)"),
    "mae-vitb16": AgglomerativeDefault("average", "cosine", 0.71, _ZS + " (MAE ViT-B/16)"),
    "supervised-vitb16": AgglomerativeDefault("ward", "euclidean", 2.0, _ZS + " (supervised ViT-B/16)"),
    "supervised-rn50": AgglomerativeDefault("ward", "euclidean", 2.0, _ZS + " (supervised RN50)"),
}

#: Threshold used when no n_clusters and no distance_threshold are given, per (linkage, metric).
#: ward+euclidean is the untuned choice above; the average-linkage values are the most common ZS
#: values for that metric (average+euclidean: CLIP RN50, DINO RN50, VICReg RN50 use 0.5).
#: Other combinations have no documented default and need an explicit threshold.
_FALLBACK_THRESHOLDS: dict[tuple[str, str], float] = {
    ("ward", "euclidean"): UNTUNED_WARD_THRESHOLD,
    ("average", "euclidean"): 0.5,
    ("average", "cosine"): 0.71,
    ("average", "chebyshev"): 1.0,
}


def agglomerative_defaults(encoder_name: str) -> dict:
    """ZS's tuned linkage, metric and distance threshold for an encoder.

    Parameters
    ----------
    encoder_name : str
        An imgclust encoder name such as ``"clip-vitb16"``. Names ZS did not tune (DINOv2,
        EfficientNet-Lite0, plugins, anything unknown) get ward + euclidean with
        :data:`UNTUNED_WARD_THRESHOLD`.

    Returns
    -------
    dict
        ``{"linkage": ..., "metric": ..., "distance_threshold": ...}``, ready to pass as
        parameters of the ``agglomerative`` method. The provenance of each entry is in
        :data:`AGGLOMERATIVE_DEFAULTS` (``source``).

    Examples
    --------
    >>> agglomerative_defaults("clip-vitb16")
    {'linkage': 'average', 'metric': 'chebyshev', 'distance_threshold': 1.0}
    """
    return AGGLOMERATIVE_DEFAULTS.get(encoder_name.strip().lower(), _UNTUNED).params()


def normalise_for_threshold(X: np.ndarray, metric: str) -> np.ndarray:
    """The ZS authors' normalisation before cutting a dendrogram at a distance threshold.

    Their later code's ``--zscore2-average --ndim-correction`` (``zs_ssl_clustering/cluster.py``),
    not the seed paper's: centre each dimension, divide everything by the mean per-dimension
    standard deviation, then correct for the growth of distances with the dimension d: divide by
    sqrt(d) for euclidean (a typical distance is then about sqrt(2) whatever the scale and
    dimension) and by d for manhattan (l1 distances grow like d); chebyshev and cosine need no
    correction. Constant data (zero spread) is only centred.
    """
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    scale = float(np.mean(X.std(axis=0)))
    if scale > 0:
        X = X / scale
    if metric == "euclidean":
        X = X / math.sqrt(X.shape[1])
    elif metric == "manhattan":
        X = X / X.shape[1]
    return X


@register_clusterer
class Agglomerative(Clusterer):
    """Agglomerative (hierarchical) clustering; the default method.

    Merges the two closest groups again and again. With ``n_clusters`` it stops at K groups;
    without it, it stops when the closest groups are further apart than ``distance_threshold``
    (measured after :func:`normalise_for_threshold`), so it finds the number of clusters itself.
    Every sample gets a cluster (no noise).

    **At scale.** The exact tree needs O(N²) memory (about 8 N² bytes: 0.8 GB for 10,000 samples,
    80 GB for 100,000). Above ``exact_rows`` samples, or when it would not fit in the memory
    available, ward builds the *same exact tree* in O(N · d) memory (:mod:`imgclust.clusterers._tree`):
    groups that are each other's Ward-nearest neighbour are merged round after round (Ward's linkage
    is reducible, so those merges are the exact tree's), with each round's neighbours found among
    each group's nearest centres in a k-d tree, checked exactly, until ``micro_clusters`` groups are left for
    the nearest-neighbour chain. Average, complete and single linkage are not functions of
    centroids: they build their tree over ``micro_clusters`` k-means parts and compare the parts'
    centres (an approximation). The path taken is ``fit_path_`` and is recorded with the run.
    ``connectivity_neighbors`` is another route to large N (O(N · k) memory).

    Parameters
    ----------
    linkage : {"ward", "average", "complete", "single"}, default "ward"
        How the distance between two groups is measured: ward merges the pair that adds the least
        within-cluster variance (compact, even clusters; euclidean only); average uses the mean
        pairwise distance; complete the largest; single the smallest (chains, rarely useful).
    metric : {"euclidean", "cosine", "chebyshev", "manhattan"}, default "euclidean"
        The distance between two samples. ZS found chebyshev (L-infinity) best for CLIP ViT-B and
        cosine best for MAE (see :func:`agglomerative_defaults`).
    distance_threshold : float > 0 or None, default None
        Where to cut the tree when ``n_clusters`` is not given: larger gives fewer, bigger
        clusters. ZS's tuned values lie between 0.2 and 10 (most often 0.5-2). None uses the
        default for the linkage/metric pair (ward+euclidean: 7.0, an imgclust choice; average with
        euclidean 0.5, cosine 0.71, chebyshev 1.0, from ZS's BEST_PARAMS_v5), all tuned after the
        ``zscore-average`` normalisation. Ignored when ``n_clusters`` is given.
    normalisation : {"zscore-average", "raw"}, default "zscore-average"
        How the input is scaled before the threshold cut. ``zscore-average`` is the ZS authors'
        later ``--zscore2-average --ndim-correction`` (:func:`normalise_for_threshold`), with which
        every default threshold was tuned. ``raw`` cuts the input as it is, as in the seed paper
        (which tuned thresholds in [0.001, 5000] on the raw reduced space); it has no default
        threshold, so pass ``distance_threshold`` with it. Ignored when ``n_clusters`` is given.
    connectivity_neighbors : int >= 1 or None, default None
        If set, only samples within each other's k nearest neighbours may merge directly (ES's
        "HAC with a kNN connectivity graph for scale"): faster on large N, and clusters follow the
        data's manifold. 10-30 is typical. None: any pair may merge.

    Examples
    --------
    >>> from imgclust.clusterers import create_clusterer
    >>> labels = create_clusterer("agglomerative", n_clusters=3).fit_predict(X)  # doctest: +SKIP
    """

    at_scale = ("the exact tree needs about 8·N² bytes; above exact_rows (30,000) samples, or when it would not fit "
                "in the memory available, ward builds the same exact tree in O(N·d) memory: reciprocal Ward-nearest "
                "groups (found exactly, among each group's nearest centres in a k-d tree) merge round after round, "
                "then the nearest-neighbour chain finishes over micro_clusters (3,000) groups. Average, complete and "
                "single linkage build their tree over micro_clusters FAISS k-means parts and compare the parts' "
                "centres (an approximation). The path taken is recorded with the run (fit_path). Measured against "
                "scikit-learn's tree: BENCHMARKS.md, 'The default pipeline at scale'.")
    name = "agglomerative"
    summary = "Hierarchical clustering (ward by default); finds K itself via a distance threshold"
    paper = "ZS (Lowe et al.) §AC; ES (Scott et al.)"
    n_clusters_mode = "optional"
    input_space = "reduced"
    nested_k = True  # the cuts of one tree: auto scores every K from one fit
    auto_k_samples = 10000  # the tree's O(N^2) memory: about 0.4 GB
    params = (
        Param("linkage", "ward", str, "how groups are compared: ward, average, complete or single", choices=LINKAGES),
        Param("metric", "euclidean", str, "distance between samples", choices=METRICS),
        Param(
            "distance_threshold", None, float,
            "where to cut the tree without n_clusters (bigger = fewer clusters; ZS used 0.2-10)",
            low=0.0, low_inclusive=False, nullable=True,
        ),
        Param(
            "normalisation", "zscore-average", str,
            "scaling before the threshold cut: zscore-average (ZS code, default thresholds tuned for it) or raw",
            choices=NORMALISATIONS,
        ),
        Param(
            "connectivity_neighbors", None, int,
            "restrict merges to k-nearest-neighbour pairs (10-30; None = no restriction)",
            low=1, nullable=True,
        ),
        Param("exact_rows", EXACT_ROWS, int, "samples above which the tree is built in O(N·d) memory", low=2),
        Param("micro_clusters", MICRO_CLUSTERS, int,
              "groups the last stage of the tree is built over at scale (ward: exact; other linkages: k-means parts)",
              low=2),
    )

    def _check_params(self) -> None:
        if self.linkage == "ward" and self.metric != "euclidean":
            raise ParameterError(
                f"The 'metric' parameter of Agglomerative must be 'euclidean' with linkage='ward'. "
                f"Got {self.metric!r} instead.",
                hint="ward minimises variance, which is only defined for euclidean distance; "
                "use linkage=average with other metrics",
            )

    def resolved_threshold(self) -> float:
        """The threshold the no-K path uses (the explicit one or the documented default)."""
        if self.distance_threshold is not None:
            return self.distance_threshold
        if self.normalisation == "raw":
            raise ParameterError(
                "agglomerative with normalisation='raw' has no default distance_threshold: the defaults were "
                "tuned after the zscore-average normalisation",
                hint="pass distance_threshold in the input's own distance units, or n_clusters",
            )
        try:
            return _FALLBACK_THRESHOLDS[(self.linkage, self.metric)]
        except KeyError:
            raise ParameterError(
                f"agglomerative with linkage={self.linkage!r} and metric={self.metric!r} has no default "
                "distance_threshold",
                hint="pass distance_threshold (ZS used 0.2-10 after normalisation) or n_clusters",
            ) from None

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        from sklearn.cluster import AgglomerativeClustering

        n = X.shape[0]
        normalised = self.n_clusters is None and self.normalisation == "zscore-average"
        if self.n_clusters is None:
            threshold = self.resolved_threshold()  # fail before any work
            if normalised:
                X = normalise_for_threshold(X, self.metric)
        if n == 1:
            return np.zeros(1, dtype=np.int64)
        connectivity = None
        if self.connectivity_neighbors is None:
            if n > self.exact_rows or not exact_tree_fits(n):
                return self._fit_micro(X, None if self.n_clusters is not None else threshold)
            self.fit_path_ = "exact"
        else:
            self.fit_path_ = f"exact, merges restricted to {self.connectivity_neighbors} nearest neighbours"
            # the normalisation centres and scales: only cosine neighbours change, to those of the centred rows
            centred = normalised and self.metric == "cosine"
            connectivity = connectivity_matrix(self.neighbour_graph(self.connectivity_neighbors, self.metric, centred))
        if self.n_clusters is not None:
            model = AgglomerativeClustering(
                n_clusters=self.n_clusters, linkage=self.linkage, metric=self.metric, connectivity=connectivity
            )
        else:
            model = AgglomerativeClustering(
                n_clusters=None,
                distance_threshold=threshold,
                linkage=self.linkage,
                metric=self.metric,
                connectivity=connectivity,
                compute_full_tree=True,
            )
        with warnings.catch_warnings():
            # A kNN graph with several components is completed by sklearn; that is expected here.
            warnings.filterwarnings("ignore", message=".*number of connected components.*")
            return model.fit_predict(X)

    def _fit_micro(self, X: np.ndarray, threshold: float | None) -> np.ndarray:
        from scipy.cluster.hierarchy import fcluster

        n = X.shape[0]
        if self.linkage == "ward":
            Z, record = ward_tree(X, self.micro_clusters, self.random_state, on_progress=self.on_progress)
            copies = f"{record['identical_rows']} identical samples merged first, " if record["identical_rows"] else ""
            self.fit_path_ = (f"exact ward tree of {n} samples in O(N·d) memory: {copies}{record['rounds']} rounds of "
                              f"reciprocal nearest neighbours, then the chain over {record['chain_parts']} groups")
            micro = np.arange(n)
        else:
            micro, Z = micro_tree(X, self.linkage, self.metric, self.micro_clusters, self.random_state)
            m = Z.shape[0] + 1
            self.fit_path_ = f"micro-clusters: {m} k-means parts of {n} samples, {self.linkage} tree on their centres"
            if threshold is None and self.n_clusters > m:
                raise ParameterError(
                    f"agglomerative at this size builds its {self.linkage} tree over {m} micro-clusters, fewer than "
                    f"n_clusters={self.n_clusters}", hint=f"raise micro_clusters above {self.n_clusters}")
        if Z.shape[0] == 0:
            return np.zeros(n, dtype=np.int64)
        if threshold is None:
            tree_labels = fcluster(Z, self.n_clusters, criterion="maxclust")
        else:
            tree_labels = fcluster(Z, threshold, criterion="distance")
        _, tree_labels = np.unique(tree_labels, return_inverse=True)
        return tree_labels[micro].astype(np.int64)


def exact_tree_fits(n_samples: int) -> bool:
    """Whether scikit-learn's exact tree (a condensed N x N matrix and a working copy) fits in memory now."""
    return n_samples * n_samples * 4 * 2 <= 0.8 * _base.available_memory_bytes()
