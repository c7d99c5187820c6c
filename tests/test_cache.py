import os

import h5py
import numpy as np
import pytest

from imgclust import cache_admin
from imgclust.cache import FORMAT, SCHEMA_VERSION, Cache, NewRows, settings_key
from imgclust.cluster import load_run
from imgclust.reduce import reduce
from imgclust.errors import CacheError, CacheLockedError, NotFoundError, UsageError

ATTRS = {"encoder": "enc", "architecture": "a", "weights": "w", "embedding_dim": 4, "preprocess": "{}"}


def new_rows(names, dim=4, offset=0.0, labels=None):
    n = len(names)
    x = np.arange(n * dim, dtype=np.float32).reshape(n, dim) + offset
    return NewRows([f"/img/{name}" for name in names], np.arange(n), np.arange(n),
                   labels or [""] * n, [""] * n, x)


def make_cache(path, n=10, dim=4, encoder="enc"):
    cache = Cache(path)
    with cache.writer():
        cache.write_rows(encoder, {**ATTRS, "encoder": encoder, "embedding_dim": dim},
                         new_rows([f"{i:03d}.jpg" for i in range(n)], dim))
    return cache


def add(cache, rows, **kwargs):
    with cache.writer():
        return cache.write_rows("enc", ATTRS, rows, **kwargs)


def test_index_is_small_and_plain_h5py_sees_every_row_through_a_virtual_dataset(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    add(cache, new_rows(["100.jpg", "101.jpg"], offset=1000))
    add(cache, new_rows(["003.jpg"], offset=5000))  # replaced in place
    x = cache.read_embeddings("enc")
    with h5py.File(cache.path) as fh:
        assert fh.attrs["format"] == FORMAT and fh.attrs["schema_version"] == SCHEMA_VERSION
        group = fh["encoders/enc"]
        assert group["embeddings"].is_virtual and np.array_equal(group["embeddings"][()], x)
    assert x.shape == (12, 4) and x[3, 0] == 5000 and x[10, 0] == 1000
    assert list(cache.read_index("enc").paths)[:4] == ["/img/000.jpg", "/img/001.jpg", "/img/002.jpg", "/img/003.jpg"]
    assert len(list(cache.bulk_dir.glob("block-*.h5"))) == 3
    assert cache.path.stat().st_size < 64 * 1024  # the index holds no row data


def test_embeddings_are_read_in_chunks_across_blocks(tmp_path):
    cache = make_cache(tmp_path / "c.h5", n=5)
    add(cache, new_rows(["100.jpg", "101.jpg", "102.jpg", "103.jpg", "104.jpg"], offset=100))
    add(cache, new_rows(["002.jpg"], offset=7))
    blocks = list(cache.iter_embeddings("enc", rows_per_chunk=3))
    assert [start for start, _ in blocks] == [0, 3, 6, 9]
    assert np.array_equal(np.concatenate([b for _, b in blocks]), cache.read_embeddings("enc"))
    rows = cache.rows("enc")
    assert np.array_equal(rows.take(np.array([1, 2, 7])), cache.read_embeddings("enc")[[1, 2, 7]])
    read, taken = [], []
    every = rows.read_embeddings(on_progress=lambda done, total: read.append((done, total)))
    assert np.array_equal(rows.take(np.arange(len(rows)), on_progress=lambda *call: taken.append(call)), every)
    assert read[-1] == taken[-1] == (len(rows), len(rows)) and read == sorted(read)
    some = []
    rows.take(np.array([1, 2, 7]), on_progress=lambda *call: some.append(call))
    assert some[-1] == (3, 3)
    with pytest.raises(Exception, match="memory budget"):
        cache.read_embeddings("enc", max_bytes=10)


def test_other_hdf5_files_and_unknown_schemas_are_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh["x"] = [1, 2]
    with pytest.raises(CacheError, match="not an imgclust cache"):
        Cache(tmp_path / "other.h5").encoders()
    cache = make_cache(tmp_path / "c.h5")
    with h5py.File(cache.path, "r+") as fh:
        fh.attrs["schema_version"] = 0
    with pytest.raises(CacheError, match="schema 0"):
        cache.encoders()
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match="not a readable HDF5"):
        Cache(tmp_path / "junk.h5").encoders()
    with pytest.raises(UsageError, match="cache not found"):
        Cache(tmp_path / "none.h5").encoders()


def test_unknown_encoder_names_what_the_cache_holds(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    with pytest.raises(NotFoundError, match="holds enc"):
        cache.resolve_encoder("clip-vitb16")


def test_second_writer_is_refused_but_results_commit_beside_it(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    rows = cache.rows("enc")
    with cache.writer():
        with pytest.raises(CacheLockedError, match="another imgclust process"):
            with Cache(tmp_path / "c.h5").writer():
                pass
        # A result only takes the short commit lock: a long embed does not block reduce or cluster.
        cache.store_result("enc", "reductions", "r", {"data": np.zeros((10, 2), np.float32)}, {}, rows.fingerprint)
    with cache.writer():  # released after the first writer ends
        pass
    assert "r" in cache.list_groups("enc", "reductions")


def test_failed_transaction_leaves_the_cache_untouched(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    before = cache.path.read_bytes()
    with pytest.raises(RuntimeError):
        with cache.transaction() as state:
            state.encoders["enc"].results["runs"]["run-1"] = {"file": "nothing.h5"}
            raise RuntimeError("disk full")
    assert cache.path.read_bytes() == before
    assert not list(tmp_path.glob(".c.h5.*.tmp"))


def test_storing_a_result_writes_only_its_file_and_the_index(tmp_path):
    cache = make_cache(tmp_path / "c.h5", n=50)
    blocks = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.bulk_dir.glob("block-*")}
    rows = cache.rows("enc")
    name = cache.store_result("enc", "runs", None, {"labels": np.arange(50), "state": {"w": np.ones(3)}},
                              {"method": "x"}, rows.fingerprint)
    assert name == "run-1"
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.bulk_dir.glob("block-*")} == blocks
    stored = cache.read_result("enc", "runs", "run-1", rows.fingerprint)
    assert np.array_equal(stored["labels"], np.arange(50)) and np.array_equal(stored["state"]["w"], np.ones(3))
    with h5py.File(cache.path) as fh:  # plain h5py follows the link into the result's file
        assert np.array_equal(fh["encoders/enc/runs/run-1/file/labels"][()], np.arange(50))


def test_a_result_of_rows_that_changed_meanwhile_is_not_stored(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    rows = cache.rows("enc")
    add(cache, new_rows(["new.jpg"], offset=99))  # another process commits while the result is computed
    with pytest.raises(CacheError, match="changed while this run was computed") as refused:
        cache.store_result("enc", "runs", None, {"labels": np.zeros(10)}, {}, rows.fingerprint)
    assert "cluster again" in refused.value.hint
    assert cache.list_groups("enc", "runs") == {}
    assert sorted(p.name for p in cache.bulk_dir.iterdir() if not p.name.startswith("block-")) == ["commit.lock"]


def test_changed_rows_make_results_stale_never_deleted(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    fp = cache.rows("enc").fingerprint
    cache.store_result("enc", "reductions", "r", {"data": np.zeros((10, 2))}, {}, fp)
    add(cache, new_rows(["new.jpg"], offset=99))
    stored = cache.list_groups("enc", "reductions")
    assert stored["r"]["stale"] and stored["r"]["fingerprint"] == fp
    with pytest.raises(UsageError, match="other images"):
        cache.read_result("enc", "reductions", "r", cache.rows("enc").fingerprint)
    # Removing the extra row gives back exactly the old row set: the result is current again.
    add(cache, None, remove=["/img/new.jpg"])
    assert not cache.list_groups("enc", "reductions")["r"]["stale"]


def test_unreferenced_and_dead_temporary_files_are_collected(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    dead = cache.bulk_dir / ".tmp-999999999-abc.h5"
    alive = cache.bulk_dir / f".tmp-{os.getpid()}-abc.h5"
    orphan = cache.bulk_dir / "block-killedbeforetheindex.h5"
    for path in (dead, alive, orphan):
        path.write_bytes(b"x")
    cache.store_result("enc", "runs", None, {"labels": np.zeros(10)}, {}, cache.rows("enc").fingerprint)
    assert not dead.exists() and not orphan.exists() and alive.exists()
    cache_admin.remove(cache.path, ["run-1"])
    assert [p.name for p in cache.bulk_dir.glob("run-*")] == []
    with pytest.raises(NotFoundError, match="no run, reduction"):
        cache_admin.remove(cache.path, ["run-1"])


def _schema1(path, n=6, dim=3):
    """A cache as imgclust wrote it before schema 2 (one file), with a reduction and a run."""
    s = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as fh:
        fh.attrs.update({"format": FORMAT, "schema_version": 1, "imgclust_version": "0.0"})
        g = fh.create_group("encoders/enc")
        g.attrs.update({"encoder": "enc", "family": "timm", "architecture": "a", "weights": "w",
                        "embedding_dim": dim, "preprocess": "{}"})
        g["embeddings"] = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
        g.create_dataset("paths", data=[f"/img/{i}.jpg" for i in range(n)], dtype=s)
        g["sizes"], g["mtimes"] = np.arange(n), np.arange(n)
        g.create_dataset("labels", data=["a", "b"] * (n // 2), dtype=s)
        for k in ("paths", "reasons"):
            g.create_dataset(f"failures/{k}", data=np.array([], dtype=object), dtype=s)
        g["failures/sizes"], g["failures/mtimes"] = np.zeros(0, np.int64), np.zeros(0, np.int64)
        g["reductions/none/data"] = np.ones((n, 2), np.float32)
        run = g.create_group("runs/run-1")
        run["labels"] = np.array([0, 1] * (n // 2))
        run.attrs.update({"method": "kmeans", "params_json": "{}", "n_clusters": 2, "n_clusters_requested": 2,
                          "space": "raw", "n_samples": n, "n_noise": 0, "seconds": 0.1, "selection_json": "null"})


def test_a_schema1_cache_is_read_as_it_is_and_upgraded_in_one_pass(tmp_path):
    path = tmp_path / "old.h5"
    _schema1(path)
    before = path.read_bytes()
    cache = Cache(path)
    x = cache.read_embeddings("enc")
    assert x.shape == (6, 3) and list(cache.read_index("enc").labels) == ["a", "b"] * 3
    assert np.array_equal(load_run(path).labels, [0, 1, 0, 1, 0, 1])
    with pytest.raises(CacheError, match="schema-1") as refused:
        cache.store_result("enc", "runs", None, {"labels": np.zeros(6)}, {}, cache.rows("enc").fingerprint)
    assert f"imgclust cache upgrade {path}" in refused.value.hint
    with pytest.raises(CacheError, match="schema-1"):  # before computing anything
        reduce(path, method="pca", dims=2)
    assert path.read_bytes() == before  # reading changed nothing
    report = cache_admin.upgrade(path)
    assert report["upgraded"] and Cache(path).load().schema == SCHEMA_VERSION
    assert np.array_equal(Cache(path).read_embeddings("enc"), x)
    assert np.array_equal(load_run(path).labels, [0, 1, 0, 1, 0, 1])  # still belongs to these rows
    assert not Cache(path).list_groups("enc", "reductions")["none"]["stale"]
    assert cache_admin.upgrade(path)["upgraded"] is False


def test_compaction_merges_blocks_and_keeps_order_and_fingerprints(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    for k in range(3):
        add(cache, new_rows([f"{100 + k}.jpg", f"00{k}.jpg"], offset=100 * (k + 1)))
    before_x, before_fp = cache.read_embeddings("enc"), cache.rows("enc").fingerprint
    cache.store_result("enc", "runs", None, {"labels": np.zeros(len(before_x))}, {}, before_fp)
    report = cache_admin.compact(cache.path)
    assert report["encoders"][0]["blocks_before"] == 4 and report["encoders"][0]["blocks_after"] == 1
    assert len(list(cache.bulk_dir.glob("block-*"))) == 1
    assert np.array_equal(cache.read_embeddings("enc"), before_x) and cache.rows("enc").fingerprint == before_fp
    assert not cache.list_groups("enc", "runs")["run-1"]["stale"]
    with h5py.File(cache.path) as fh:
        assert np.array_equal(fh["encoders/enc/embeddings"][()], before_x)


def test_pack_writes_one_file_that_reads_alike_and_upgrade_makes_it_writable(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    add(cache, new_rows(["new.jpg"], offset=99))
    fp = cache.rows("enc").fingerprint
    cache.store_result("enc", "runs", None, {"labels": np.arange(11)}, {"method": "m"}, fp)
    out = tmp_path / "shared" / "packed.h5"
    out.parent.mkdir()
    cache_admin.pack(cache.path, out)
    assert not out.with_name("packed.h5.d").exists()
    packed = Cache(out)
    assert np.array_equal(packed.read_embeddings("enc"), cache.read_embeddings("enc"))
    assert np.array_equal(packed.read_result("enc", "runs", "run-1", fp)["labels"], np.arange(11))
    with h5py.File(out) as fh:
        assert np.array_equal(fh["encoders/enc/embeddings"][()], cache.read_embeddings("enc"))
    with pytest.raises(CacheError, match="packed"):
        packed.store_result("enc", "runs", None, {"labels": np.arange(11)}, {}, fp)
    with pytest.raises(UsageError, match="exists"):
        cache_admin.pack(cache.path, out)
    cache_admin.upgrade(out)
    Cache(out).store_result("enc", "runs", None, {"labels": np.arange(11)}, {}, fp)
    assert sorted(Cache(out).list_groups("enc", "runs")) == ["run-1", "run-2"]


def test_describe_lists_blocks_and_results_with_sizes_and_staleness(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    cache.store_result("enc", "runs", None, {"labels": np.zeros(10)}, {"method": "m", "n_samples": 10},
                       cache.rows("enc").fingerprint)
    add(cache, new_rows(["new.jpg"], offset=99))
    info = cache_admin.describe(cache.path)
    enc = info["encoders"][0]
    assert enc["n_images"] == 11 and len(enc["blocks"]) == 2 and enc["blocks"][0]["nbytes"] > 0
    assert enc["runs"]["run-1"]["stale"] and enc["runs"]["run-1"]["rows"] == 10 and enc["runs"]["run-1"]["method"] == "m"


def test_settings_key_is_stable_and_readable():
    assert settings_key("umap", {"n_components": 50, "n_neighbors": 30}) == settings_key("umap", {"n_neighbors": 30, "n_components": 50})
    assert settings_key("umap", {"metric": "euclidean"}) == "umap-metric=euclidean"
