"""Density methods: HDBSCAN, DBSCAN and mean shift. They find the number of clusters themselves.

HDBSCAN and DBSCAN leave samples in sparse regions unassigned: noise, label -1. (ZS counts the noise
as one more cluster when computing AMI; ``imgclust`` metrics do the same.)
"""

from __future__ import annotations

import numpy as np

from ..errors import ResourceError
from ..knn import KnnGraph
from . import register_clusterer
from ._base import Clusterer, Param

#: Largest input of scikit-learn's HDBSCAN tree (O(N²) time), used only for min_samples=1.
EXACT_HDBSCAN_ROWS = 20_000


@register_clusterer
class HDBSCAN(Clusterer):
    """HDBSCAN: clusters are regions denser than their surroundings (ZS).

    The tree is built by fast_hdbscan's Borůvka minimum spanning tree over a kd-tree (McInnes & Healy,
    "Accelerated Hierarchical Density Clustering", 2017; https://github.com/TutteInstitute/fast_hdbscan),
    about O(N log N) on low-dimensional inputs such as UMAP-50, in ``reproducible`` mode (same labels for
    the same input), with scikit-learn's meaning of ``min_samples`` (the sample counts as its own first
    neighbour). ``min_samples=1`` (no density smoothing) uses scikit-learn's HDBSCAN, O(N²) time, refused
    above :data:`EXACT_HDBSCAN_ROWS` samples at preflight.

    Builds a hierarchy of density levels and keeps the most persistent clusters; samples in
    sparse regions become noise (-1). Needs no K. Where classes touch (effnet-lite0 on CIFAR-10)
    it declares much of the data noise (53% there, in 212 small clusters). ZS's defaults: ``min_cluster_size=5``,
    ``max_cluster_size = round(0.2 N)``, excess-of-mass selection, on UMAP-50.

    Parameters
    ----------
    min_cluster_size : int >= 2, default 5
        The smallest group that counts as a cluster; smaller groups become noise. Raise it
        (10-100) for fewer, bigger clusters.
    min_samples : int >= 1 or None, default None
        How conservative the density estimate is: larger values declare more samples noise.
        None uses ``min_cluster_size``.
    max_cluster_fraction : float in (0, 1], default 0.2
        No cluster may hold more than this fraction of the samples (ZS: 0.2). HDBSCAN then keeps
        only smaller sub-clusters, and where a dense group has none it becomes noise: with 2-4
        balanced classes most samples end up as noise. Set 1.0 (no limit) when one group may hold
        more than a fifth of the images.
    cluster_selection_method : {"eom", "leaf"}, default "eom"
        eom keeps the most persistent clusters (fewer, larger); leaf keeps the finest ones.
    """

    name = "hdbscan"
    summary = "Density-based, finds K itself; sparse samples become noise (-1)"
    at_scale = ("fast_hdbscan's Borůvka tree (about N log N on UMAP-50); min_samples=1 uses scikit-learn's "
                "O(N^2)-time tree and is refused above 20,000 samples")
    paper = "ZS (Lowe et al.) §HDBSCAN; Campello et al. 2013"
    n_clusters_mode = "unused"
    params = (
        Param("min_cluster_size", 5, int, "smallest group that counts as a cluster (5-100)", low=2),
        Param("min_samples", None, int, "density conservativeness; larger = more noise (None = min_cluster_size)",
              low=1, nullable=True),
        Param("max_cluster_fraction", 0.2, float, "largest allowed cluster as a fraction of N (1 = no limit)",
              low=0.0, high=1.0, low_inclusive=False),
        Param("cluster_selection_method", "eom", str, "eom (persistent clusters) or leaf (finest)",
              choices=("eom", "leaf")),
    )

    def preflight(self, n_samples: int) -> None:
        super().preflight(n_samples)
        if self._min_samples(n_samples) < 2 and n_samples > EXACT_HDBSCAN_ROWS:
            raise ResourceError(
                f"hdbscan with min_samples=1 runs scikit-learn's O(N^2)-time tree, too slow for {n_samples} samples "
                f"(at most {EXACT_HDBSCAN_ROWS})", hint="use hdbscan with min_samples >= 2 (the Boruvka tree)")

    def _min_samples(self, n: int) -> int:
        """scikit-learn's min_samples (the sample counts as its own first neighbour), clipped to n."""
        return min(self.min_cluster_size if self.min_samples is None else self.min_samples, n)

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        n = X.shape[0]
        if n < 2:
            return np.full(n, -1, dtype=np.int64)
        max_size = None if self.max_cluster_fraction >= 1.0 else max(round(self.max_cluster_fraction * n), 1)
        min_samples = self._min_samples(n)
        if min_samples >= 2:
            import fast_hdbscan

            self.fit_path_ = "Boruvka tree (fast_hdbscan)"
            # fast_hdbscan's core distance is to the min_samples-th *other* sample: one less gives scikit-learn's
            model = fast_hdbscan.HDBSCAN(
                min_cluster_size=min(self.min_cluster_size, n), min_samples=min_samples - 1,
                max_cluster_size=np.inf if max_size is None else max_size,
                cluster_selection_method=self.cluster_selection_method, reproducible=True,
            )
            return model.fit_predict(np.ascontiguousarray(X, dtype=np.float64))
        from sklearn.cluster import HDBSCAN as SKHDBSCAN

        self.fit_path_ = "scikit-learn tree (min_samples=1)"
        model = SKHDBSCAN(min_cluster_size=min(self.min_cluster_size, n), min_samples=1, max_cluster_size=max_size,
                          cluster_selection_method=self.cluster_selection_method, copy=True)
        return model.fit_predict(X)


DBSCAN_METRICS = ("euclidean", "cosine", "manhattan", "chebyshev")


def default_dbscan_eps(graph: KnnGraph, min_samples: int, quantile: float) -> float:
    """The ``quantile`` of the distances from each sample to its ``min_samples``-th neighbour in ``graph``.

    The sample itself counts as its first neighbour, as in DBSCAN's core-point rule, so with this
    eps a fraction ``quantile`` of the samples are core points (the rest are border points or noise).
    A cosine graph's distances ``1 - cos`` become the euclidean distance of l2-normalised rows, ``sqrt(2 (1 - cos))``.
    """
    rank = min(min_samples, graph.indices.shape[0]) - 1  # others before the min_samples-th neighbour
    if rank == 0:
        return 0.0
    dist = graph.distances[:, rank - 1].astype(np.float64)
    if graph.metric == "cosine":
        dist = np.sqrt(2.0 * dist)
    return float(np.quantile(dist, quantile))


@register_clusterer
class DBSCAN(Clusterer):
    """DBSCAN (scikit-learn): samples with enough neighbours within ``eps`` form clusters (ES).

    Dense samples (at least ``min_samples`` within ``eps``) and everything reachable from them form
    a cluster; the rest is noise (-1). Needs no K, but one eps for the whole data set: clusters of
    different densities suit HDBSCAN better.

    Parameters
    ----------
    eps : float > 0 or None, default None
        Neighbourhood radius, in the input's distance units. None: the ``eps_quantile`` of the
        distances from each sample to its ``min_samples``-th nearest neighbour
        (:func:`default_dbscan_eps`), i.e. the radius at which that fraction of samples are core.
    min_samples : int >= 1, default 5
        Neighbours (the sample included) a sample needs within eps to be a core point (3-20).
    eps_quantile : float in (0, 1], default 0.9
        Used only when eps is None. Higher gives a larger eps: fewer noise samples but a risk of
        chaining clusters together. An imgclust choice from effnet-lite0 UMAP-50 embeddings:
        on Imagenette 0.5 left 30% of the samples as noise (105 clusters) and 0.9 left 4% (17
        clusters, AMI 87); on CIFAR-10, where classes touch, 0.95 already chained almost everything
        into one cluster while 0.9 gave 15 clusters. 0.5-0.95 is sensible.
    metric : {"euclidean", "cosine", "manhattan", "chebyshev"}, default "euclidean"
        The distance eps is measured in. ES used cosine with eps 0.25 on l2-normalised raw
        embeddings (``--reduction l2 --param metric=cosine --param eps=0.25``). Cosine is computed
        as euclidean on l2-normalised rows (cosine distance c = e^2 / 2), so it uses the same
        neighbour trees.
    """

    name = "dbscan"
    summary = "Density-based with one radius; finds K itself; sparse samples become noise (-1)"
    paper = "ES (Scott et al.); Ester et al. 1996"
    n_clusters_mode = "unused"
    params = (
        Param("eps", None, float, "neighbourhood radius (None = from eps_quantile)", low=0.0, low_inclusive=False,
              nullable=True),
        Param("min_samples", 5, int, "neighbours within eps that make a core point (3-20)", low=1),
        Param("eps_quantile", 0.9, float, "default eps: this quantile of the min_samples-th neighbour distance",
              low=0.0, high=1.0, low_inclusive=False),
        Param("metric", "euclidean", str, "distance eps is measured in (ES: cosine, eps 0.25)", choices=DBSCAN_METRICS),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        from sklearn.cluster import DBSCAN as SKDBSCAN

        metric = self.metric
        eps = self.eps
        if metric == "cosine":
            from ..knn import l2_normalise

            X, metric = l2_normalise(X), "euclidean"
            if eps is not None:
                eps = float(np.sqrt(2.0 * eps))  # the euclidean radius of cosine distance eps on the sphere
        if eps is None:
            eps = default_dbscan_eps(self.neighbour_graph(max(self.min_samples - 1, 1), self.metric),
                                     self.min_samples, self.eps_quantile)
        if eps <= 0:  # duplicated samples: any positive radius joins them
            eps = np.finfo(np.float64).tiny
        return SKDBSCAN(eps=eps, min_samples=self.min_samples, metric=metric).fit_predict(X)


@register_clusterer
class MeanShift(Clusterer):
    """Mean shift (scikit-learn): every sample climbs to a peak of the data's density (ES).

    Samples that reach the same peak form a cluster. Needs no K; ``bandwidth`` sets the scale.
    Slow on large N (each climb step looks at the samples within the bandwidth); ``max_seeds``
    bounds the number of climbs.

    Parameters
    ----------
    bandwidth : float > 0 or None, default None
        Radius of the flat kernel, in input distance units; larger merges more. None: estimated by
        scikit-learn's ``estimate_bandwidth`` (the mean distance to the ``bandwidth_quantile``
        nearest fraction of the samples) on at most 2000 seeded samples.
    bandwidth_quantile : float in (0, 1], default 0.05
        Used only when bandwidth is None: the fraction of samples whose mean distance sets the
        bandwidth. Keep it below the share of the smallest cluster you expect; smaller gives more
        clusters. An imgclust choice (scikit-learn's own default, 0.3, merged Imagenette's 10
        classes into 3); 0.01-0.3 is sensible.
    max_seeds : int >= 1 or None, default 300
        Start the climbs from at most this many samples (a seeded random subset); every sample is
        then assigned to the nearest peak found. Time grows with the number of seeds: on Imagenette
        UMAP-50 (3925 samples) 300 seeds took 17 s and found the same 12 clusters as 1000 seeds
        (62 s); CIFAR-10 (10 000) took about 2 minutes. None starts from every sample.
        (scikit-learn's grid "bin seeding" is not offered: in 50 dimensions almost every bin holds
        one sample, and it fails.)
    """

    name = "meanshift"
    summary = "Mean shift: clusters are density peaks; finds K itself (slow on large N)"
    paper = "ES (Scott et al.); Comaniciu & Meer 2002"
    n_clusters_mode = "unused"
    params = (
        Param("bandwidth", None, float, "kernel radius (None = estimated)", low=0.0, low_inclusive=False,
              nullable=True),
        Param("bandwidth_quantile", 0.05, float, "default bandwidth estimate's quantile (0.01-0.3)",
              low=0.0, high=1.0, low_inclusive=False),
        Param("max_seeds", 300, int, "climbs start from at most this many samples (None = all)", low=1,
              nullable=True),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        from sklearn.cluster import MeanShift as SKMeanShift
        from sklearn.cluster import estimate_bandwidth

        n = X.shape[0]
        if n < 2:
            return np.zeros(n, dtype=np.int64)
        bandwidth = self.bandwidth
        if bandwidth is None:
            bandwidth = estimate_bandwidth(
                X, quantile=self.bandwidth_quantile, n_samples=min(n, 2000), random_state=self.random_state
            )
            if bandwidth <= 0:  # all samples identical
                return np.zeros(n, dtype=np.int64)
        seeds = None
        if self.max_seeds is not None and n > self.max_seeds:
            rng = np.random.default_rng(self.random_state)
            seeds = X[np.sort(rng.choice(n, self.max_seeds, replace=False))]
        return SKMeanShift(bandwidth=bandwidth, seeds=seeds, cluster_all=True).fit_predict(X)
