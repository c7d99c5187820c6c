"""UMAP's near-copy collapse: rows at least as cosine-similar as the encoder family's near-duplicate
threshold are fitted once, the others placed (imgclust.reduce)."""

import importlib
import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_mutual_info_score
from typer.testing import CliRunner

from imgclust.cache import Cache, NewRows, settings_key
from imgclust.cli import app
from imgclust.cluster import cluster, load_run
from imgclust.duplicates import RULES, UNCALIBRATED_RULE, Rule
from imgclust.knn import knn_graph

reduce_module = importlib.import_module("imgclust.reduce")  # the package exports a function of that name
ENCODER = "vectors"
SETTINGS = {"n_components": 4, "n_neighbors": 10, "min_dist": 0.0, "metric": "euclidean", "seed": 0}


def planted(path, family="effnet-lite", distinct=240, copies=120, seed=0):
    """A real cache of ``distinct`` rows in 4 classes (pairwise cosine well under 0.9) and ``copies`` near copies
    (cosine > 0.999) of its first rows, appended; returns the cache, the labels and ``copy -> original``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 32)) * 1.0
    labels = np.arange(distinct) % 4
    x = centres[labels] + rng.normal(0.0, 0.8, (distinct, 32))
    original = np.arange(copies) % distinct
    x = np.concatenate([x, x[original] + rng.normal(0.0, 0.01, (copies, 32))]).astype(np.float32)
    labels = np.concatenate([labels, labels[original]])
    cache = Cache(path)
    attrs = {"encoder": ENCODER, "family": family, "architecture": "planted", "weights": "none", "embedding_dim": 32,
             "preprocess": "{}"}
    rows = NewRows([f"/nonexistent/{i:04d}.jpg" for i in range(len(x))], np.zeros(len(x), np.int64),
                   np.zeros(len(x), np.int64), [f"class-{k}" for k in labels], [""] * len(x), x)
    with cache.writer():
        cache.write_rows(ENCODER, attrs, rows)
    return cache, labels, dict(zip(range(distinct, distinct + copies), original.tolist()))


def umap(cache, **kwargs):
    return reduce_module.reduce(cache.path, dims=4, n_neighbors=10, **kwargs)


def test_planted_copies_are_placed_beside_the_row_umap_fitted(tmp_path):
    cache, labels, copy_of = planted(tmp_path / "c.h5")
    result = umap(cache)
    assert result.near_copies == {"threshold": RULES["effnet-lite"].threshold, "source": "calibrated for effnet-lite",
                                  "groups": 120, "collapsed": 120}
    assert result.fitted_on == 240 and result.shape == (360, 4)
    data = reduce_module.load_reduction(cache.path, ENCODER, result.key)
    assert np.isfinite(data).all()
    # copies are placed (a weighted mean of their fitted neighbours' places): nearly always beside their original
    copies, originals = np.array(list(copy_of)), np.array(list(copy_of.values()))
    to_fitted = np.linalg.norm(data[copies][:, None] - data[None, :240], axis=2)
    closer = (to_fitted < to_fitted[np.arange(len(copies)), originals][:, None]).sum(axis=1)
    assert np.mean(closer < 10) >= 0.95  # the original among the copy's 10 nearest fitted rows (n_neighbors)
    from imgclust.clusterers import create_clusterer

    found = create_clusterer("agglomerative", n_clusters=4).fit_predict(data)
    assert np.mean(found[copies] == found[originals]) >= 0.95 and adjusted_mutual_info_score(labels, found) > 0.9
    stored = Cache(cache.path).current(ENCODER, "reductions", cache.rows(ENCODER).fingerprint)[result.key]
    assert stored["fitted_on"] == 240 and stored["near_copies"]["collapsed"] == 120
    again = umap(cache)
    assert again.reused and again.near_copies == result.near_copies and again.fitted_on == 240


def test_the_threshold_is_the_encoder_familys_near_duplicate_rule(tmp_path, monkeypatch):
    other, _, _ = planted(tmp_path / "other.h5", family="open_clip")
    assert umap(other).near_copies["threshold"] == UNCALIBRATED_RULE.threshold
    assert umap(other).near_copies["source"] == "uncalibrated"
    monkeypatch.setitem(RULES, "effnet-lite", Rule(0.9995))  # read from duplicates' table, not a copy of it
    cache, _, _ = planted(tmp_path / "c.h5", seed=1)
    result = umap(cache)
    assert result.near_copies["threshold"] == 0.9995 and "near_copies=0.9995" in result.key
    given = umap(cache, near_copies=0.5)
    assert given.near_copies["source"] == "given" and given.key != result.key


def test_turned_off_it_fits_every_row_under_the_key_reductions_had_before(tmp_path):
    cache, _, _ = planted(tmp_path / "c.h5")
    off = umap(cache, near_copies="none")
    assert off.fitted_on == 360 and off.near_copies is None
    assert off.key.split("@")[0] == settings_key("umap", SETTINGS)  # the key of a reduction made before the collapse
    on = umap(cache)  # the default is not served the stored reduction fitted on every row
    assert not on.reused and on.key != off.key and on.fitted_on == 240
    assert umap(cache, near_copies=None).reused


def test_without_near_copies_the_collapse_changes_nothing(tmp_path):
    cache, _, _ = planted(tmp_path / "c.h5", copies=0)
    on, off = umap(cache), umap(cache, near_copies="none")
    assert on.near_copies["groups"] == 0 and on.near_copies["collapsed"] == 0 and on.fitted_on == 240
    np.testing.assert_array_equal(reduce_module.load_reduction(cache.path, ENCODER, on.key),
                                  reduce_module.load_reduction(cache.path, ENCODER, off.key))


def test_above_the_fit_size_the_sample_is_collapsed_too(tmp_path, monkeypatch):
    cache, labels, _ = planted(tmp_path / "c.h5", distinct=300, copies=300)
    monkeypatch.setattr(reduce_module, "UMAP_FIT_ROWS", 400)
    monkeypatch.setattr(reduce_module, "PLACE_BLOCK", 64)  # several blocks
    result = umap(cache)
    collapsed = result.near_copies["collapsed"]
    assert collapsed > 0 and result.fitted_on == 400 - collapsed and result.shape == (600, 4)
    data = reduce_module.load_reduction(cache.path, ENCODER, result.key)
    assert np.isfinite(data).all()
    from imgclust.clusterers import create_clusterer

    assert adjusted_mutual_info_score(labels, create_clusterer("agglomerative", n_clusters=4).fit_predict(data)) > 0.9


def test_too_few_distinct_rows_keep_every_row(tmp_path):
    from .stage_fixtures import blob_cache

    blobs = blob_cache(tmp_path / "blobs.h5")  # 4 tight blobs far from the origin: each blob is near copies
    result = reduce_module.reduce(blobs.path, dims=5)
    assert result.near_copies["groups"] >= 4 and result.near_copies["collapsed"] == 0 and result.fitted_on == 120


def test_groups_do_not_chain_and_cosines_come_from_a_euclidean_graph():
    angles = np.radians([0.0, 15.0, 30.0, 120.0, 200.0, 280.0])
    x = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array([1.0, 3.0, 1.0, 2.0, 1.0, 5.0])[:, None]
    x = np.concatenate([x, np.zeros((6, 2))], 1).astype(np.float32)
    threshold = float(np.cos(np.radians(20.0)))  # 0-15 and 15-30 degrees are near copies, 0-30 is not
    groups = reduce_module.near_copy_groups(x, knn_graph(x, 5, "euclidean"), threshold)
    assert len(groups) == 1 and len(groups[0]) == 2 and 1 in groups[0]  # not the chain 0~1~2
    assert [g.tolist() for g in reduce_module.near_copy_groups(x, knn_graph(x, 5, "cosine"), threshold)] == \
        [g.tolist() for g in groups]


def test_the_run_records_how_its_space_was_fitted(tmp_path):
    cache, _, _ = planted(tmp_path / "c.h5")
    run = cluster(cache.path, n_clusters=4, dims=4)
    assert run.reduction_fit == {"fitted_on": 240, "near_copies": {
        "threshold": RULES["effnet-lite"].threshold, "source": "calibrated for effnet-lite", "groups": 120, "collapsed": 120}}
    assert load_run(cache.path, run.run_id).reduction_fit == run.reduction_fit
    raw = cluster(cache.path, n_clusters=4, reduction="none")
    assert raw.reduction_fit is None


runner = CliRunner()


def test_reduce_json_shows_the_collapse_and_the_option_turns_it_off(tmp_path):
    cache, _, _ = planted(tmp_path / "c.h5")
    shown = runner.invoke(app, ["reduce", str(cache.path), "--dims", "4", "--n-neighbors", "10", "--json"])
    assert shown.exit_code == 0, shown.output
    out = json.loads(shown.stdout)
    assert out["fitted_on"] == 240 and out["near_copies"]["collapsed"] == 120
    off = runner.invoke(app, ["reduce", str(cache.path), "--dims", "4", "--n-neighbors", "10",
                              "--near-copy-threshold", "none", "--json"])
    assert off.exit_code == 0 and json.loads(off.stdout)["fitted_on"] == 360 and json.loads(off.stdout)["near_copies"] is None


@pytest.mark.parametrize("command", ["reduce", "cluster"])
@pytest.mark.parametrize("value, message", [("1.5", "must be in (0, 1]"), ("0", "must be in (0, 1]"),
                                            ("often", "must be 'auto', 'none' or a number")])
def test_bad_thresholds_are_a_one_line_usage_error(tmp_path, command, value, message):
    cache, _, _ = planted(tmp_path / "c.h5", copies=0)
    result = runner.invoke(app, [command, str(cache.path), "--near-copy-threshold", value])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --near-copy-threshold {message}") and "hint: " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2 and "Traceback" not in result.output
    assert not Cache(cache.path).list_groups(ENCODER, "reductions")  # refused before any work
