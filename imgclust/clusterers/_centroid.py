"""Centroid and mixture methods: k-means, mini-batch k-means, spherical k-means, GMM, DP-means.

All but DP-means need the number of clusters. None produces noise: every sample gets a cluster.
"""

from __future__ import annotations

import numpy as np

from . import register_clusterer
from ._base import Clusterer, Param


@register_clusterer
class KMeans(Clusterer):
    """K-means with k-means++ seeding (scikit-learn), the standard centroid method.

    Splits the data into K groups, each as compact as possible around its mean. Works best when
    clusters are round and similar in size. Time grows as N * K * d per iteration.

    Parameters
    ----------
    init : {"k-means++", "random"}, default "k-means++"
        How the first centres are picked: k-means++ spreads them out (better, ZS and ES);
        random picks K samples (ES compares both).
    n_init : int >= 1, default 10
        How many seeded starts to run; the one with the lowest within-cluster sum of squares is
        kept. More starts make the result less dependent on the seed. ZS used 1; 10 costs ten
        times as much and is still fast on reduced embeddings. 1-20 is sensible.
    max_iter : int >= 1, default 300
        Iterations per start; k-means usually converges in far fewer.
    """

    name = "kmeans"
    summary = "K-means with k-means++ seeding; needs K"
    paper = "ZS (Lowe et al.) §K-Means; ES (Scott et al.)"
    n_clusters_mode = "required"
    params = (
        Param("init", "k-means++", str, "how the first centres are picked", choices=("k-means++", "random")),
        Param("n_init", 10, int, "seeded starts; the best (lowest inertia) is kept (1-20)", low=1),
        Param("max_iter", 300, int, "iterations per start", low=1),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        from sklearn.cluster import KMeans as SKKMeans

        model = SKKMeans(
            n_clusters=self.n_clusters, init=self.init, n_init=self.n_init, max_iter=self.max_iter,
            random_state=self.random_state,
        )
        return model.fit_predict(X)


@register_clusterer
class MiniBatchKMeans(Clusterer):
    """Mini-batch k-means (scikit-learn): k-means on small random batches, for large N.

    Much faster than k-means on hundreds of thousands of samples, at a small cost in quality.

    Parameters
    ----------
    batch_size : int >= 1, default 1024
        Samples per update step. Larger is steadier and slower; 256-4096 is typical.
    n_init : int >= 1, default 3
        Seeded k-means++ starts; the best is kept.
    max_iter : int >= 1, default 100
        Passes over the data at most (training stops earlier when the centres settle).
    """

    name = "minibatch-kmeans"
    summary = "Mini-batch k-means for large N; needs K"
    paper = "ES (Scott et al.); Sculley 2010"
    n_clusters_mode = "required"
    params = (
        Param("batch_size", 1024, int, "samples per update step (256-4096)", low=1),
        Param("n_init", 3, int, "seeded starts; the best is kept", low=1),
        Param("max_iter", 100, int, "passes over the data at most", low=1),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        from sklearn.cluster import MiniBatchKMeans as SKMiniBatchKMeans

        model = SKMiniBatchKMeans(
            n_clusters=self.n_clusters, batch_size=self.batch_size, n_init=self.n_init,
            max_iter=self.max_iter, random_state=self.random_state,
        )
        return model.fit_predict(X)


def _l2_normalise(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def spherical_kmeans(
    X: np.ndarray, n_clusters: int, n_init: int = 10, max_iter: int = 300, tol: float = 1e-6, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine k-means on the unit sphere; returns (labels, unit-norm centres).

    Rows are l2-normalised (all-zero rows stay zero). Each start seeds centres with spherical
    k-means++ (sampling proportional to 1 - cosine similarity to the nearest chosen centre), then
    alternates: assign each row to the centre of highest cosine similarity; move each centre to
    the normalised sum of its rows. An emptied cluster is re-seeded at the row least similar to its
    centre. The start with the highest total similarity wins. Deterministic for a ``random_state``.
    """
    X = _l2_normalise(np.asarray(X, dtype=np.float64))
    n = X.shape[0]
    rng = np.random.default_rng(random_state)
    best_labels, best_centres, best_score = None, None, -np.inf
    for _ in range(n_init):
        centres = _spherical_kmeanspp(X, n_clusters, rng)
        labels = np.full(n, -1, dtype=np.int64)
        for _ in range(max_iter):
            sims = X @ centres.T
            new_labels = sims.argmax(axis=1)
            best = sims[np.arange(n), new_labels]
            sums = np.zeros_like(centres)
            np.add.at(sums, new_labels, X)
            counts = np.bincount(new_labels, minlength=n_clusters)
            for c in np.flatnonzero(counts == 0):  # re-seed empty clusters at the worst-fitting row
                far = int(np.argmin(best))
                sums[c] = X[far]
                best[far] = np.inf
                new_labels[far] = c
            new_centres = _l2_normalise(sums)
            shift = float(np.max(1.0 - np.sum(new_centres * centres, axis=1)))
            stable = np.array_equal(new_labels, labels)
            labels, centres = new_labels, new_centres
            if stable or shift <= tol:
                break
        score = float(np.sum((X @ centres.T)[np.arange(n), labels]))
        if score > best_score:
            best_labels, best_centres, best_score = labels.copy(), centres, score
    return best_labels, best_centres


def _spherical_kmeanspp(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = X.shape[0]
    centres = np.empty((k, X.shape[1]))
    centres[0] = X[rng.integers(n)]
    closest = 1.0 - X @ centres[0]
    for c in range(1, k):
        weights = np.clip(closest, 0.0, None)
        total = weights.sum()
        idx = int(rng.choice(n, p=weights / total)) if total > 0 else int(rng.integers(n))
        centres[c] = X[idx]
        closest = np.minimum(closest, 1.0 - X @ centres[c])
    return centres


@register_clusterer
class SphericalKMeans(Clusterer):
    """Spherical k-means: k-means with cosine similarity on l2-normalised rows (ES).

    Only the direction of each embedding matters, not its length; ES found l2-normalised
    embeddings cluster better with every shallow method. Implemented in numpy
    (:func:`spherical_kmeans`), deterministic for a seed.

    Parameters
    ----------
    n_init : int >= 1, default 10
        Seeded starts (spherical k-means++); the one with the highest total cosine similarity of
        rows to their centres is kept. 1-20 is sensible.
    max_iter : int >= 1, default 300
        Assign/update rounds per start at most.
    """

    name = "spherical-kmeans"
    summary = "Cosine k-means on l2-normalised embeddings; needs K"
    paper = "ES (Scott et al.); Dhillon & Modha 2001"
    n_clusters_mode = "required"
    params = (
        Param("n_init", 10, int, "seeded starts; the best is kept (1-20)", low=1),
        Param("max_iter", 300, int, "assign/update rounds per start at most", low=1),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        labels, _ = spherical_kmeans(
            X, self.n_clusters, n_init=self.n_init, max_iter=self.max_iter, random_state=self.random_state
        )
        return labels


@register_clusterer
class GaussianMixture(Clusterer):
    """Gaussian mixture model with diagonal covariances (scikit-learn), fitted by EM (ES).

    Each cluster is an axis-aligned Gaussian with its own spread per dimension, so clusters may
    differ in size and shape (k-means assumes equal round ones). Each sample goes to its most
    probable component.

    Parameters
    ----------
    n_init : int >= 1, default 1
        EM starts (k-means initialised); the one with the highest likelihood is kept.
    max_iter : int >= 1, default 100
        EM iterations per start.
    reg_covar : float >= 0, default 1e-6
        Added to every variance so that a component cannot collapse onto one point. Raise it
        (1e-4-1e-2) if fitting warns about ill-defined covariances.
    """

    name = "gmm"
    summary = "Gaussian mixture, diagonal covariance; needs K"
    paper = "ES (Scott et al.)"
    n_clusters_mode = "required"
    params = (
        Param("n_init", 1, int, "EM starts; the most likely is kept", low=1),
        Param("max_iter", 100, int, "EM iterations per start", low=1),
        Param("reg_covar", 1e-6, float, "added to each variance for stability (1e-6-1e-2)", low=0.0),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        from sklearn.mixture import GaussianMixture as SKGaussianMixture

        if X.shape[0] == 1:  # EM needs two samples; one sample is one cluster
            return np.zeros(1, dtype=np.int64)
        model = SKGaussianMixture(
            n_components=self.n_clusters, covariance_type="diag", n_init=self.n_init, max_iter=self.max_iter,
            reg_covar=self.reg_covar, random_state=self.random_state,
        )
        return model.fit_predict(X)


def default_dpmeans_penalty(X: np.ndarray, scale: float) -> float:
    """The default DP-means penalty: ``scale`` times the mean squared distance to the data mean.

    The mean squared distance to the mean (the total variance) is the cost of one cluster per
    sample's worth of spread, so ``scale`` reads as "open a new cluster when a sample is further
    (squared) from every centre than this fraction of the data's overall spread".
    """
    centred = X - X.mean(axis=0)
    return float(scale * np.mean(np.sum(centred * centred, axis=1)))


def dp_means(
    X: np.ndarray, penalty: float, max_iter: int = 100, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """DP-means (Kulis & Jordan 2012) as described by ES; returns (labels, centres).

    Start with one cluster at the data mean. Each round visits the samples in a seeded random
    order: a sample whose squared distance to every centre exceeds ``penalty`` opens a new cluster
    at itself (later samples in the same round see it); then every sample joins its nearest centre,
    centres move to their members' mean and empty clusters are dropped. Stops when the labels no
    longer change. Memory is O(N * number of clusters) per chunk, never N^2.
    """
    from sklearn.metrics import pairwise_distances_argmin_min

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    rng = np.random.default_rng(random_state)
    order = rng.permutation(n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    centres = X.mean(axis=0, keepdims=True)
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(max_iter):
        nearest, dist = pairwise_distances_argmin_min(X, centres)
        d2 = dist**2
        far = np.flatnonzero(d2 > penalty)
        new = []
        for i in far[np.argsort(rank[far])]:  # in the round's visiting order
            x = X[i]
            if new and np.min(np.sum((X[new] - x) ** 2, axis=1)) <= penalty:
                continue
            new.append(int(i))
        if new:
            centres = np.vstack([centres, X[new]])
            nearest, _ = pairwise_distances_argmin_min(X, centres)
        # drop empty clusters and renumber by first appearance of each centre
        used, nearest = np.unique(nearest, return_inverse=True)
        centres = centres[used]
        counts = np.bincount(nearest, minlength=len(centres))
        sums = np.zeros_like(centres)
        np.add.at(sums, nearest, X)
        centres = sums / counts[:, None]
        if np.array_equal(nearest, labels):
            break
        labels = nearest
    return labels, centres


@register_clusterer
class DPMeans(Clusterer):
    """DP-means: k-means that opens a new cluster whenever a sample is too far from all centres (ES).

    The number of clusters follows from ``penalty`` (lambda): a sample whose squared distance to
    every centre exceeds it starts a cluster of its own. Smaller penalty, more clusters. It finds
    the number of clusters itself and takes no ``n_clusters``.

    Parameters
    ----------
    penalty : float > 0 or None, default None
        Lambda, in squared distance units of the input. None: ``penalty_scale`` times the mean
        squared distance of the samples to their mean (:func:`default_dpmeans_penalty`).
    penalty_scale : float > 0, default 0.2
        Used only when ``penalty`` is None: the penalty as a fraction of the data's total variance.
        Sensible range 0.05-1; smaller gives more clusters. An imgclust choice from effnet-lite0
        UMAP-50 embeddings: on Imagenette (10 classes) 0.1-0.2 give 10 clusters (AMI 90.4), 0.3
        gives 9 and 1.0 gives 4; on CIFAR-10 0.2 gives 38 clusters (AMI 40.0).
    max_iter : int >= 1, default 100
        Rounds of open/assign/update at most.
    """

    name = "dpmeans"
    summary = "DP-means: k-means that finds K from a distance penalty"
    paper = "ES (Scott et al.); Kulis & Jordan 2012"
    n_clusters_mode = "unused"
    params = (
        Param("penalty", None, float, "lambda: squared distance that opens a new cluster (None = scaled)",
              low=0.0, low_inclusive=False, nullable=True),
        Param("penalty_scale", 0.2, float, "default lambda as a fraction of the total variance (0.05-1)",
              low=0.0, low_inclusive=False),
        Param("max_iter", 100, int, "rounds at most", low=1),
    )

    def _fit(self, X: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        penalty = self.penalty if self.penalty is not None else default_dpmeans_penalty(X, self.penalty_scale)
        if penalty <= 0:  # constant data: one cluster
            return np.zeros(X.shape[0], dtype=np.int64)
        labels, _ = dp_means(X, penalty, max_iter=self.max_iter, random_state=self.random_state)
        return labels
