"""Which space each (encoder, method) pair clusters in by default (ZS §4, and the ZS authors' code).

ZS reduced every encoder's embeddings with UMAP to 50 dimensions before clustering, with two
exceptions that change results: MAE clusters poorly on UMAP, so the authors' code runs it on a
z-scored PCA keeping 0.98 of the variance (``BEST_PARAMS_v3``, github scottclowe/zs-ssl-clustering;
their later v4/v5 sets use 0.90-0.95 depending on the method), and affinity propagation failed to
converge on UMAP, so its reported results ran on a 10-d PCA. Trained heads (TEMI, ICCE, SCAN, UNIC,
CC) train on the raw embeddings. ``--reduction`` overrides the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .reduce import DEFAULT_DIMS, reduction_settings


@dataclass(frozen=True)
class SpaceChoice:
    """A reduction (``imgclust reduce`` method and its size) and why it is the default."""

    reduction: str  # umap, pca, l2, none
    dims: int | None
    variance: float | None
    source: str

    def describe(self) -> str:
        """In words: ``UMAP 50-d``, ``PCA (98% of variance)``, ``raw embeddings`` (as :func:`space_name`)."""
        if self.reduction == "none":
            return space_name("raw")
        return space_name(reduction_settings(self.reduction, self.dims, self.variance)[0])

    def to_dict(self) -> dict:
        return {**asdict(self), "space": self.describe()}


UMAP_50 = SpaceChoice("umap", DEFAULT_DIMS, None, "ZS: UMAP 50-d (n_neighbors 30, min_dist 0) for every encoder")
RAW = SpaceChoice("none", None, None, "trained heads learn on the raw embeddings (TEMI, ICCE, UNIC, CC)")
#: ZS §AP: affinity propagation did not converge on UMAP; ZS reported it on a 10-d PCA.
AFFINITY_PCA = SpaceChoice("pca", 10, None, "ZS: affinity propagation failed to converge on UMAP; its results used a 10-d PCA")
#: ZS: MAE clusters poorly on UMAP; the authors' code uses PCA at 0.98 of the variance (BEST_PARAMS_v3).
MAE_PCA = SpaceChoice("pca", None, 0.98, "ZS: MAE clusters poorly on UMAP; the authors' code uses PCA keeping 0.98 of the variance")

#: Exceptions to the method's default space: (encoder, method) -> space; "*" matches any.
SPACE_TABLE: dict[tuple[str, str], SpaceChoice] = {
    ("*", "affinity"): AFFINITY_PCA,
    ("mae-vitb16", "*"): MAE_PCA,
}


def default_space(encoder: str, method: str) -> SpaceChoice:
    """The space ``method`` clusters ``encoder``'s embeddings in when no ``--reduction`` is given.

    Trained methods (``input_space == "raw"``) always get the raw embeddings. For the others the
    method's own entry wins over the encoder's (affinity propagation runs on a 10-d PCA for every
    encoder, MAE included), then the encoder's, then UMAP 50.

    Examples
    --------
    >>> default_space("mae-vitb16", "kmeans").describe()
    'PCA (98% of variance)'
    >>> default_space("clip-vitb16", "affinity").describe()
    'PCA 10-d'
    """
    from .clusterers import CLUSTERERS

    if CLUSTERERS.get(method).input_space == "raw":
        return RAW
    encoder = encoder.strip().lower()
    for key in ((encoder, method), ("*", method), (encoder, "*")):
        if key in SPACE_TABLE:
            return SPACE_TABLE[key]
    return UMAP_50


def method_spaces(method: str) -> dict:
    """``{"default": ..., "by_encoder": {encoder: ...}}`` of ``method``, in words (for ``imgclust methods``)."""
    default = default_space("", method)
    by_encoder = {enc: default_space(enc, method).describe() for enc, m in SPACE_TABLE if enc != "*"}
    return {"default": default.describe(),
            "by_encoder": {enc: space for enc, space in by_encoder.items() if space != default.describe()}}


def space_name(space: str) -> str:
    """A run's space (a reduction key such as ``umap-metric=euclidean-...-n_components=50-...``, or
    ``raw``) in words: ``UMAP 50-d``, ``l2 + PCA (90% of variance)``, ``raw embeddings``."""
    space = space.split("@", 1)[0]  # a stored reduction's key ends with @<rows it was computed from>
    if space == "raw":
        return "raw embeddings"
    method, _, rest = space.partition("-")
    settings = dict(part.split("=", 1) for part in rest.split("-") if "=" in part)
    names = {"umap": "UMAP", "pca": "PCA", "l2": "l2"}
    steps = [names.get(step, step) for step in method.split("+")]
    if "n_components" in settings:
        steps[-1] += f" {settings['n_components']}-d"
    elif "variance" in settings:
        steps[-1] += f" ({float(settings['variance']):.0%} of variance)"
    return " + ".join(steps)
