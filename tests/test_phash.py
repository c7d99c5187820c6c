"""The perceptual hash: bit for bit imagehash's phash, stored per row at embed time, absent from old caches."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from imgclust.cache import Cache, NewRows
from imgclust.phash import HASH_BITS, NO_HASH, hamming, perceptual_hash

from .conftest import TINY_ENCODER, shared_set


def real_images(n=8) -> list:
    root = shared_set("imagenette-mini")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n]


def test_the_hash_is_imagehash_phash_bit_for_bit_on_real_images():
    imagehash = pytest.importorskip("imagehash")
    for path in real_images():
        with Image.open(path) as image:
            image.load()
            ours = perceptual_hash(image)
            theirs = int(str(imagehash.phash(image)), 16)
            assert ours == theirs, path
            small = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
            assert perceptual_hash(small) == int(str(imagehash.phash(small)), 16)
            assert bin(ours).count("1") <= HASH_BITS // 2  # so NO_HASH (every bit set) never occurs


def test_hamming_counts_differing_bits_and_puts_unknown_hashes_beyond_any():
    a = np.array([0, 0b1011, 2**63], np.uint64)
    b = np.array([0, 0b0001, 0], np.uint64)
    assert hamming(a, b).tolist() == [0, 2, 1]
    assert hamming(np.uint64(5), NO_HASH) == HASH_BITS + 1
    assert hamming(np.array([NO_HASH]), np.array([NO_HASH])).tolist() == [HASH_BITS + 1]


def _write(store, paths, phashes=None):
    attrs = {"encoder": "hand", "family": "test", "architecture": "hand", "weights": "none", "embedding_dim": 2,
             "preprocess": "{}"}
    rows = NewRows(paths, np.ones(len(paths), np.int64), np.zeros(len(paths), np.int64), [""] * len(paths),
                   [""] * len(paths), np.eye(len(paths), 2, dtype=np.float32), phashes)
    with store.writer():
        store.write_rows("hand", attrs, rows)


def test_a_cache_written_without_perceptual_hashes_still_opens(tmp_path):
    store = Cache(tmp_path / "old.h5")
    _write(store, ["/a.jpg", "/b.jpg"], np.array([7, 9], np.uint64))
    for block in store.bulk_dir.glob("block-*.h5"):  # as an imgclust before perceptual hashes wrote it
        with h5py.File(block, "a") as fh:
            del fh["perceptual_hashes"]
    index = store.read_index("hand")
    assert index.paths.tolist() == ["/a.jpg", "/b.jpg"]
    assert (index.perceptual_hashes == NO_HASH).all()
    _write(store, ["/c.jpg"], np.array([11], np.uint64))  # new rows beside old blocks
    assert store.read_index("hand").perceptual_hashes.tolist() == [int(NO_HASH), int(NO_HASH), 11]


def test_compaction_keeps_the_perceptual_hashes(tmp_path):
    from imgclust.cache_admin import compact

    store = Cache(tmp_path / "c.h5")
    _write(store, ["/a.jpg", "/b.jpg"], np.array([1, 2], np.uint64))
    _write(store, ["/c.jpg"])  # imported-style rows: no hash
    before = store.read_index("hand").perceptual_hashes.tolist()
    assert before == [1, 2, int(NO_HASH)]
    compact(store.path, min_rows=10)
    assert len(store.load().encoders["hand"].blocks) == 1
    assert store.read_index("hand").perceptual_hashes.tolist() == before


def test_embed_stores_the_hash_of_each_decoded_image(tmp_path, one_torch_thread):
    import imgclust

    imagehash = pytest.importorskip("imagehash")
    paths = real_images(4)
    imgclust.embed(paths, encoder=TINY_ENCODER, cache=tmp_path / "c.h5", weights="random", device="cpu", workers=0)
    index = Cache(tmp_path / "c.h5").read_index(TINY_ENCODER)
    for path, stored in zip(index.paths, index.perceptual_hashes):
        with Image.open(path) as image:
            assert int(stored) == int(str(imagehash.phash(image)), 16), path
