import h5py
import numpy as np
import pytest

from imgclust.cache import FORMAT, SCHEMA_VERSION, Cache, Index, settings_key, write_rows
from imgclust.errors import CacheError, CacheLockedError, NotFoundError, UsageError


def make_cache(path, n=10, dim=4, encoder="enc"):
    cache = Cache(path)

    def build(group, old):
        group.attrs.update({"encoder": encoder, "architecture": "a", "weights": "w", "embedding_dim": dim, "preprocess": "{}"})
        index = Index(np.array([f"/img/{i:03d}.jpg" for i in range(n)], dtype=object), np.arange(n), np.arange(n),
                      np.array([""] * n, dtype=object))
        write_rows(group, index, [(0, np.arange(n * dim, dtype=np.float32).reshape(n, dim))], dim)
        from imgclust.cache import Failures, write_failures

        empty = np.array([], dtype=object)
        write_failures(group, Failures(empty, np.array([], np.int64), np.array([], np.int64), empty))

    with cache.writer():
        cache.rewrite(encoder, build)
    return cache


def test_file_is_self_describing(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    with h5py.File(cache.path) as fh:
        assert fh.attrs["format"] == FORMAT and fh.attrs["schema_version"] == SCHEMA_VERSION
        assert fh["encoders/enc/embeddings"].chunks is not None
    assert cache.encoders() == ["enc"] and cache.resolve_encoder(None) == "enc"
    assert cache.info("enc")["n_images"] == 10


def test_embeddings_are_read_in_chunks(tmp_path):
    cache = make_cache(tmp_path / "c.h5", n=10)
    blocks = list(cache.iter_embeddings("enc", rows_per_chunk=3))
    assert [start for start, _ in blocks] == [0, 3, 6, 9]
    assert np.array_equal(np.concatenate([b for _, b in blocks]), cache.read_embeddings("enc"))
    with pytest.raises(Exception, match="memory budget"):
        cache.read_embeddings("enc", max_bytes=10)


def test_other_hdf5_files_and_old_schemas_are_refused(tmp_path):
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


def test_second_writer_is_refused(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    with cache.writer():
        with pytest.raises(CacheLockedError, match="another imgclust process"):
            with Cache(tmp_path / "c.h5").writer():
                pass
    with cache.writer():  # released after the first writer ends
        pass


def test_failed_transaction_leaves_the_cache_untouched(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    before = cache.path.read_bytes()
    with cache.writer():
        with pytest.raises(RuntimeError):
            with cache.transaction() as fh:
                fh["encoders/enc"].create_dataset("scratch", data=[1, 2, 3])
                raise RuntimeError("disk full")
    assert cache.path.read_bytes() == before
    assert not list(tmp_path.glob(".c.h5.*.tmp"))


def test_transaction_commits_atomically(tmp_path):
    cache = make_cache(tmp_path / "c.h5")
    with cache.writer(), cache.transaction() as fh:
        fh["encoders/enc"].create_group("runs/run-1").create_dataset("labels", data=np.zeros(10, np.int64))
    assert "run-1" in cache.list_groups("enc", "runs")


def test_settings_key_is_stable_and_readable():
    assert settings_key("umap", {"n_components": 50, "n_neighbors": 30}) == settings_key("umap", {"n_neighbors": 30, "n_components": 50})
    assert settings_key("umap", {"metric": "euclidean"}) == "umap-metric=euclidean"
