"""Bring your own embeddings: import (npy, npz, parquet, HDF5), export them, assign vectors."""

import json

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import make_blobs
from typer.testing import CliRunner

from imgclust.assign import assign_vectors
from imgclust.cache import Cache
from imgclust.cli import app
from imgclust.cluster import cluster
from imgclust.errors import UsageError
from imgclust.export import export
from imgclust.score import score
from imgclust.vectors import import_vectors, open_vectors

from .stage_fixtures import blob_cache


@pytest.fixture
def blobs(tmp_path):
    x, y = make_blobs(n_samples=90, centers=3, n_features=8, cluster_std=0.4, random_state=1)
    x = x.astype(np.float32)
    (tmp_path / "names.txt").write_text("".join(f"item-{i:03d}\n" for i in range(len(x))))
    (tmp_path / "labels.txt").write_text("".join(f"class-{k}\n" for k in y))
    return x, y


def _write(tmp_path, x, kind):
    if kind == "npy":
        np.save(tmp_path / "v.npy", x)
        return tmp_path / "v.npy"
    if kind == "npz":
        np.savez_compressed(tmp_path / "v.npz", embeddings=x, ids=np.arange(len(x))[:, None])
        return tmp_path / "v.npz"
    if kind == "parquet-list":
        pq.write_table(pa.table({"name": [str(i) for i in range(len(x))], "vec": [list(map(float, r)) for r in x]}),
                       tmp_path / "v.parquet")
        return tmp_path / "v.parquet"
    if kind == "parquet-fixed":
        values = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        pq.write_table(pa.table({"embedding": values}), tmp_path / "v.parquet", row_group_size=16)
        return tmp_path / "v.parquet"
    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh["meta/ids"] = np.arange(len(x))
        fh.create_dataset("features/pooled", data=x, chunks=(10, x.shape[1]))
    return f"{tmp_path / 'other.h5'}:/features/pooled"


@pytest.mark.parametrize("kind", ["npy", "npz", "parquet-list", "parquet-fixed", "h5"])
def test_each_format_imports_the_same_rows_in_chunks(tmp_path, blobs, kind):
    x, _ = blobs
    source = open_vectors(_write(tmp_path, x, kind), "embeddings" if kind == "npz" else None)
    assert (source.n, source.dim) == x.shape
    assert [len(c) for c in source.chunks(32)] == [32, 32, 26]  # streamed, never all at once
    summary = import_vectors(_write(tmp_path, x, kind), tmp_path / "names.txt", "my-model", tmp_path / "c.h5",
                             labels=tmp_path / "labels.txt", dataset="embeddings" if kind == "npz" else None)
    assert (summary.imported, summary.images, summary.dim) == (90, 90, 8)
    cache = Cache(tmp_path / "c.h5")
    assert np.allclose(cache.read_embeddings("my-model"), x)
    index = cache.read_index("my-model")
    assert index.paths[0] == "item-000" and index.labels[0].startswith("class-")


def test_imported_vectors_go_through_every_stage_and_assign(tmp_path, blobs):
    x, y = blobs
    np.save(tmp_path / "v.npy", x)
    import_vectors(tmp_path / "v.npy", tmp_path / "names.txt", "my-model", tmp_path / "c.h5", labels=tmp_path / "labels.txt")
    run = cluster(tmp_path / "c.h5", method="kmeans", n_clusters=3, reduction="pca", dims=4)
    report = score(tmp_path / "c.h5", run.run_id)
    assert report.scores.to_dict()["ami"] > 0.95
    assert export(tmp_path / "c.h5", run.run_id, "csv", tmp_path / "out").paths
    # Vectors made elsewhere go to the cluster of their nearest neighbours.
    new = x[[0, 40, 80]] + 0.01
    np.save(tmp_path / "new.npy", new)
    (tmp_path / "new.txt").write_text("a\nb\nc\n")
    result = assign_vectors(tmp_path / "c.h5", tmp_path / "new.npy", tmp_path / "new.txt", run.run_id)
    assert result.paths == ["a", "b", "c"] and result.clusters == [int(run.labels[i]) for i in (0, 40, 80)]


def test_reimport_replaces_rows_in_place_and_bad_input_is_refused(tmp_path, blobs):
    x, _ = blobs
    np.save(tmp_path / "v.npy", x)
    import_vectors(tmp_path / "v.npy", tmp_path / "names.txt", "m", tmp_path / "c.h5")
    np.save(tmp_path / "two.npy", x[:2] + 1)
    (tmp_path / "two.txt").write_text("item-001\nextra\n")
    summary = import_vectors(tmp_path / "two.npy", tmp_path / "two.txt", "m", tmp_path / "c.h5")
    assert (summary.imported, summary.replaced, summary.images) == (1, 1, 91)
    rows = Cache(tmp_path / "c.h5").read_embeddings("m")
    assert np.array_equal(rows[1], x[0] + 1) and np.array_equal(rows[90], x[1] + 1)  # item-001 in place
    (tmp_path / "short.txt").write_text("a\n")
    with pytest.raises(UsageError, match="lists 1 paths but"):
        import_vectors(tmp_path / "v.npy", tmp_path / "short.txt", "m", tmp_path / "c.h5")
    np.save(tmp_path / "wide.npy", np.zeros((2, 5), np.float32))
    with pytest.raises(UsageError, match="8-d 'm' rows"):
        import_vectors(tmp_path / "wide.npy", tmp_path / "two.txt", "m", tmp_path / "c.h5")
    np.save(tmp_path / "nan.npy", np.full((2, 8), np.nan, np.float32))
    with pytest.raises(UsageError, match="NaN"):
        import_vectors(tmp_path / "nan.npy", tmp_path / "two.txt", "other", tmp_path / "c.h5")
    with pytest.raises(UsageError, match="several arrays"):
        np.savez(tmp_path / "two.npz", a=x, b=x)
        open_vectors(tmp_path / "two.npz")
    assert Cache(tmp_path / "c.h5").encoders() == ["m"]  # nothing written by the refused imports
    blob_cache(tmp_path / "b.h5")
    with pytest.raises(UsageError, match="not mixed"):
        import_vectors(tmp_path / "v.npy", tmp_path / "names.txt", "blobs", tmp_path / "b.h5")


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_export_embeddings_round_trips_through_import(tmp_path, suffix):
    cache = blob_cache(tmp_path / "b.h5")
    out = tmp_path / f"rows{suffix}"
    written = export(cache.path, format="embeddings", out=out).paths
    assert written[0] == str(out)
    paths = written[1] if suffix == ".npy" else tmp_path / "paths.txt"
    if suffix == ".parquet":
        table = pq.read_table(out)
        assert table.column_names == ["path", "label", "embedding"]
        paths.write_text("".join(f"{p}\n" for p in table.column("path").to_pylist()))
    import_vectors(out, paths, "again", tmp_path / "again.h5")
    assert np.array_equal(Cache(tmp_path / "again.h5").read_embeddings("again"), cache.read_embeddings("blobs"))
    with pytest.raises(UsageError, match="exists"):
        export(cache.path, format="embeddings", out=out)


def test_cli_import_export_assign_and_cache_commands(tmp_path, blobs):
    x, _ = blobs
    np.save(tmp_path / "v.npy", x)
    runner = CliRunner()

    def invoke(*args, code=0):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, result.output
        return result.stdout if code == 0 else result.output

    cache = tmp_path / "c.h5"
    out = json.loads(invoke("import", tmp_path / "v.npy", "--paths", tmp_path / "names.txt", "--encoder", "m",
                            "--cache", cache, "--json"))
    assert out["imported"] == 90
    invoke("cluster", cache, "--method", "kmeans", "-k", "3", "--reduction", "none", "--json")
    np.save(tmp_path / "new.npy", x[:2])
    (tmp_path / "new.txt").write_text("p\nq\n")
    assigned = json.loads(invoke("assign", cache, "--vectors", tmp_path / "new.npy", "--paths", tmp_path / "new.txt", "--json"))
    assert [i["path"] for i in assigned["images"]] == ["p", "q"]
    voted = json.loads(invoke("assign", cache, "--vectors", tmp_path / "new.npy", "--paths", tmp_path / "new.txt",
                              "--vote", "knn", "--k", "5", "--json"))
    assert voted["method"] == "knn-vote" and [i["cluster"] for i in voted["images"]] == [i["cluster"] for i in assigned["images"]]
    assert "--vote must be one of" in invoke("assign", cache, "--vectors", tmp_path / "new.npy", "--paths",
                                             tmp_path / "new.txt", "--vote", "mode", code=2)
    invoke("export", cache, "--format", "embeddings", "--out", tmp_path / "e.parquet")
    info = json.loads(invoke("info", cache, "--json"))
    assert not info["encoders"][0]["runs"]["run-1"]["stale"]
    assert "run run-1: kmeans" in invoke("info", cache)
    invoke("score", cache, "--json")  # stores the run's label-free scores, which info lists
    assert "scores run-1: label-free scores of the run, silhouette 0." in invoke("info", cache)
    assert json.loads(invoke("cache", "compact", cache, "--json"))["encoders"][0]["blocks_after"] == 1
    packed = json.loads(invoke("cache", "pack", cache, tmp_path / "p.h5", "--json"))
    assert packed["nbytes"] > x.nbytes
    removed = json.loads(invoke("cache", "rm", cache, "run-1", "--json"))["removed"]
    assert {(r["name"], r["kind"]) for r in removed} == {("run-1", "runs"), ("run-1", "scores")}  # a run goes with its scores
    assert "no run, reduction, views or kNN graph named 'run-1'" in invoke("cache", "rm", cache, "run-1", code=2)
    assert json.loads(invoke("cache", "upgrade", tmp_path / "p.h5", "--json"))["upgraded"]


def test_knn_vote_weighs_neighbours_by_similarity_ignores_noise_and_breaks_ties_by_the_nearest():
    from imgclust.assign import knn_vote

    labels = np.array([[0, 1, 1], [2, 1, -1], [-1, -1, -1], [3, 4, 4]])
    sims = np.array([[0.9, 0.4, 0.4], [0.6, 0.5, 0.99], [0.9, 0.9, 0.9], [0.8, 0.4, 0.4]])
    clusters, support = knn_vote(labels, sims)
    # row 0: 0.9 for 0 beats 0.8 for 1; row 1: noise does not vote; row 2: only noise; row 3: 0.8 ties 0.8, nearest wins
    assert clusters.tolist() == [0, 2, -1, 3]
    np.testing.assert_allclose(support[[0, 1, 3]], [0.9, 0.6, 0.8])
    assert np.isnan(support[2])


def test_knn_vote_follows_a_long_cluster_where_the_nearest_centre_does_not(tmp_path):
    # Two arcs of the unit circle: a long one (0-170 degrees) and a short one (190-260 degrees). A point at
    # 168 degrees lies in the long arc but nearer the short arc's centre (225) than the long one's (85).
    angles = np.deg2rad(np.concatenate([np.linspace(0, 170, 171), np.linspace(190, 260, 71)]))
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    (tmp_path / "names.txt").write_text("".join(f"p{i}\n" for i in range(len(x))))
    import_vectors(tmp_path / "v.npy", tmp_path / "names.txt", "arcs", tmp_path / "c.h5")
    run = cluster(tmp_path / "c.h5", n_clusters=2, reduction="none", params={"linkage": "single", "metric": "cosine"})
    long_arc = int(run.labels[0])
    assert (run.labels[:171] == long_arc).all() and (run.labels[171:] != long_arc).all()
    np.save(tmp_path / "new.npy", np.array([[np.cos(np.deg2rad(168.5)), np.sin(np.deg2rad(168.5))]], np.float32))
    (tmp_path / "new.txt").write_text("q\n")
    by_centre = assign_vectors(tmp_path / "c.h5", tmp_path / "new.npy", tmp_path / "new.txt")
    by_vote = assign_vectors(tmp_path / "c.h5", tmp_path / "new.npy", tmp_path / "new.txt", vote="knn", k=5)
    assert by_centre.method == "nearest-centre" and by_centre.clusters == [1 - long_arc]
    assert by_vote.method == "knn-vote" and by_vote.clusters == [long_arc] and by_vote.similarity[0] > 0.99
    with pytest.raises(UsageError, match="--vote must be one of centre, knn"):
        assign_vectors(tmp_path / "c.h5", tmp_path / "new.npy", tmp_path / "new.txt", vote="nearest")
