"""``score``: how good a stored clustering run is, with and without ground truth.

Label-free scores (silhouette overall and per cluster, Davies-Bouldin, Calinski-Harabasz) are
computed in the space the run clustered (the UMAP reduction by default, euclidean, as ZS).
With labels (stored by ``embed --labels`` or given as a ``path,label`` CSV): AMI, NMI, ARI,
accuracy (Hungarian matching; the rule is reported), pairwise and BCubed F.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .cache import Cache
from .cluster import ClusterRun, load_run, run_space
from .discover import read_label_csv
from .errors import UsageError
from .metrics import Scores, score_clustering
from .spaces import space_name


@dataclass
class RunReport:
    """A run and its scores."""

    cache: str
    run: ClusterRun
    scores: Scores
    labels_source: str | None  # "cache", the CSV path, or None
    paths: np.ndarray = field(repr=False)
    labels_true: np.ndarray | None = field(default=None, repr=False)

    @property
    def silhouette_space(self) -> str:
        """Where the label-free scores were measured, in words (``UMAP 50-d``, ``raw embeddings``)."""
        return space_name(self.run.space)

    def to_dict(self) -> dict:
        return {"cache": self.cache, "labels_source": self.labels_source, "run": self.run.to_dict(),
                "silhouette_space": self.silhouette_space, "scores": self.scores.to_dict()}


def ground_truth(cache: Cache, encoder: str, labels: str | None) -> tuple[np.ndarray | None, str | None, np.ndarray]:
    """``(labels_true or None, where they came from, paths)`` for the rows of ``encoder``."""
    index = cache.read_index(encoder)
    if labels is None:
        return (index.labels, "cache", index.paths) if index.has_labels else (None, None, index.paths)
    table = read_label_csv(labels)
    truth = np.array([table.get(p, "") for p in index.paths], dtype=object)
    if not (truth != "").any():
        raise UsageError(f"no label in {labels} matches any of the {len(index)} images in {cache.path}",
                         hint="the CSV needs path,label rows whose paths are absolute or relative to the CSV's folder")
    return truth, labels, index.paths


def score(
    cache: str | os.PathLike,
    run: str | None = None,
    encoder: str | None = None,
    labels: str | None = None,
    accuracy_rule: str = "one-to-one",
) -> RunReport:
    """Score run ``run`` (the latest by default) of ``cache``.

    Parameters
    ----------
    labels : a ``path,label`` CSV; by default the labels stored by ``embed --labels``, if any.
    accuracy_rule : ``one-to-one`` (Hungarian; with more clusters than classes the unmatched
        clusters count as wrong) or ``majority`` (each cluster takes its majority class).
    """
    cache_obj = Cache(cache)
    stored_run = load_run(cache_obj.path, run, encoder)
    truth, source, paths = ground_truth(cache_obj, stored_run.encoder, labels)
    if len(paths) != len(stored_run.labels):
        raise UsageError(f"run {stored_run.run_id} has {len(stored_run.labels)} labels but the cache holds {len(paths)} images",
                         hint="the images changed since the run; cluster again")
    label_free = stored_label_free(cache_obj, stored_run)
    if label_free is None:
        scores = score_clustering(stored_run.labels, run_space(cache_obj.path, stored_run), truth,
                                  accuracy_rule=accuracy_rule)
        store_label_free(cache_obj, stored_run, scores)
    else:  # the run's space is not read again: only the scores against labels are computed
        scores = score_clustering(stored_run.labels, None, truth, accuracy_rule=accuracy_rule)
        for name, value in label_free.items():
            setattr(scores, name, value)
    return RunReport(str(cache_obj.path), stored_run, scores, source, paths, truth)


#: The scores that depend only on the run and its space, stored with the run (result kind ``scores``, named after
#: the run, removed with it) the first time it is scored: at a million rows the sampled silhouette takes a minute,
#: and ``score --labels``, ``export`` and every later ``score`` then skip it.
LABEL_FREE = ("silhouette", "silhouette_per_cluster", "silhouette_exact", "silhouette_error_bound",
              "silhouette_noise_as_cluster", "davies_bouldin", "calinski_harabasz")
LABEL_FREE_VERSION = 1  # bumped when the way they are computed changes: older stored scores are then recomputed


def store_label_free(cache: Cache, run: ClusterRun, scores: Scores) -> None:
    """Keep the run's label-free scores in the cache; a cache that cannot take them (read-only, packed, rows
    changed meanwhile) goes without: they are a shortcut, not a result."""
    from .errors import ImgclustError

    samples = scores.silhouette_samples
    arrays = {"silhouette_samples": np.asarray(samples, np.float64)} if samples is not None else {}
    attrs = {"version": LABEL_FREE_VERSION, "run_created": _run_created(cache, run), "scores": {
        name: ({str(k): v for k, v in value.items()} if isinstance(value, dict) else value)
        for name in LABEL_FREE if (value := getattr(scores, name)) is not None}}
    try:
        cache.store_result(run.encoder, "scores", run.run_id, arrays, attrs, cache.rows(run.encoder).fingerprint)
    except ImgclustError:
        pass


def _run_created(cache: Cache, run: ClusterRun) -> str:
    return str(cache.list_groups(run.encoder, "runs").get(run.run_id, {}).get("created", ""))


def stored_label_free(cache: Cache, run: ClusterRun) -> dict | None:
    """The run's stored label-free scores as :class:`Scores` fields, or None when there are none for it."""
    rows = cache.rows(run.encoder)
    attrs = cache.current(run.encoder, "scores", rows.fingerprint).get(run.run_id)
    if (attrs is None or attrs.get("version") != LABEL_FREE_VERSION
            or attrs.get("run_created") != _run_created(cache, run)):  # a later run of the same id: not its scores
        return None
    fields = dict(attrs["scores"])
    if fields.get("silhouette_per_cluster") is not None:
        fields["silhouette_per_cluster"] = {int(k): v for k, v in fields["silhouette_per_cluster"].items()}
    arrays = cache.read_result(run.encoder, "scores", run.run_id, rows.fingerprint)
    fields["silhouette_samples"] = arrays.get("silhouette_samples")
    return fields
