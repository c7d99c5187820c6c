import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from imgclust.cache import Cache
from imgclust.embed import embed
from imgclust.errors import CacheLockedError, UsageError

from .conftest import TINY_ENCODER, make_image, shared_set

TINY = dict(encoder=TINY_ENCODER, weights="random", device="cpu", batch_size=4, workers=0)


def rows(cache_path, encoder=TINY_ENCODER):
    cache = Cache(cache_path)
    index = cache.read_index(encoder)
    return dict(zip(index.paths, cache.read_embeddings(encoder)))


def test_embed_stores_one_row_per_image_with_labels_and_failures(image_folder, tmp_path):
    (image_folder / "red_things" / "broken.jpg").write_bytes(b"garbage")
    summary = embed([image_folder], cache=tmp_path / "c.h5", labels="folder", **TINY)
    assert (summary.embedded, summary.failed, summary.images, summary.failures_total) == (12, 1, 12, 1)
    cache = Cache(tmp_path / "c.h5")
    index = cache.read_index(TINY_ENCODER)
    assert list(index.paths) == sorted(index.paths)
    assert set(index.labels) == {"red_things", "blue_things"}
    failures = cache.read_failures(TINY_ENCODER)
    assert failures.paths[0].endswith("broken.jpg") and "not an image" in failures.reasons[0]
    info = cache.info(TINY_ENCODER)
    assert info["architecture"] == "test_efficientnet" and info["preprocess"]["size"] == 160
    assert cache.read_embeddings(TINY_ENCODER).shape == (12, info["embedding_dim"])


def test_rerun_embeds_nothing_and_changes_are_incremental(image_folder, tmp_path):
    cache = tmp_path / "c.h5"
    embed([image_folder], cache=cache, **TINY)
    again = embed([image_folder], cache=cache, **TINY)
    assert (again.embedded, again.skipped) == (0, 12)
    before = rows(cache)
    new = make_image(image_folder / "red_things" / "new.jpg", noise_seed=77)
    changed = image_folder / "blue_things" / "b0.png"
    make_image(changed, (0, 200, 0), noise_seed=5)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    (image_folder / "red_things" / "r0.jpg").unlink()
    order = list(Cache(cache).read_index(TINY_ENCODER).paths)
    summary = embed([image_folder], cache=cache, **TINY)
    # The missing file keeps its row (an unmounted disk is not a deletion) until --prune.
    assert (summary.embedded, summary.changed, summary.removed, summary.kept_missing, summary.images) == (2, 1, 0, 1, 13)
    after = rows(cache)
    assert str(new) in after and str(image_folder / "red_things" / "r0.jpg") in after
    assert not np.array_equal(after[str(changed)], before[str(changed)])
    untouched = str(image_folder / "red_things" / "r1.jpg")
    assert np.array_equal(after[untouched], before[untouched])
    # The changed row was replaced where it was; the new one is appended.
    assert list(Cache(cache).read_index(TINY_ENCODER).paths) == order + [str(new)]
    pruned = embed([image_folder], cache=cache, prune=True, **TINY)
    assert (pruned.embedded, pruned.removed, pruned.images) == (0, 1, 12)
    assert str(image_folder / "red_things" / "r0.jpg") not in rows(cache)


def test_copied_files_with_new_mtimes_are_confirmed_by_content_not_embedded_again(image_folder, tmp_path):
    cache = tmp_path / "c.h5"
    embed([image_folder], cache=cache, labels="folder", **TINY)
    before = rows(cache)
    for path in image_folder.rglob("*.*"):  # a copy or a re-mount: same bytes, new mtimes
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 5 * 10**9))
    summary = embed([image_folder], cache=cache, **TINY)  # no --labels: the stored labels stay
    assert (summary.embedded, summary.confirmed, summary.images) == (0, 12, 12)
    after = Cache(cache)
    index = after.read_index(TINY_ENCODER)
    assert set(index.labels) == {"red_things", "blue_things"}
    assert all(index.mtimes[i] == os.stat(p).st_mtime_ns for i, p in enumerate(index.paths))
    assert all(np.array_equal(v, before[p]) for p, v in rows(cache).items())
    assert embed([image_folder], cache=cache, **TINY).skipped == 12  # recorded: no hashing next time


def test_results_of_other_rows_are_kept_marked_stale_and_never_used(image_folder, tmp_path):
    from imgclust.cluster import cluster, load_run

    cache = tmp_path / "c.h5"
    embed([image_folder], cache=cache, **TINY)
    first = cluster(cache, n_clusters=2, reduction="none")
    make_image(image_folder / "red_things" / "new.jpg", noise_seed=77)
    summary = embed([image_folder], cache=cache, **TINY)
    assert summary.stale_results == [f"runs/{first.run_id}"]
    runs = Cache(cache).list_groups(TINY_ENCODER, "runs")
    assert runs[first.run_id]["stale"] and runs[first.run_id]["n_samples"] == 12
    with pytest.raises(UsageError, match="other images"):
        load_run(cache)
    with pytest.raises(UsageError, match="stale"):
        load_run(cache, first.run_id)
    second = cluster(cache, n_clusters=2, reduction="none")
    assert load_run(cache).run_id == second.run_id and len(second.labels) == 13


def test_other_settings_are_refused_and_reembed_replaces_the_rows(image_folder, tmp_path):
    cache = tmp_path / "c.h5"
    embed([image_folder], cache=cache, **TINY)
    make_image(image_folder / "red_things" / "new.jpg", noise_seed=77)
    with pytest.raises(UsageError, match="batch_size 4, not batch_size 2") as refused:
        embed([image_folder], cache=cache, **{**TINY, "batch_size": 2})
    assert "--reembed" in refused.value.hint
    summary = embed([image_folder], cache=cache, reembed=True, **{**TINY, "batch_size": 2})
    assert (summary.embedded, summary.images) == (13, 13)
    assert Cache(cache).info(TINY_ENCODER)["identity"]["batch_size"] == 2


def test_fresh_run_equals_incremental_run(image_folder, tmp_path):
    embed([image_folder / "red_things"], cache=tmp_path / "inc.h5", **TINY)
    embed([image_folder], cache=tmp_path / "inc.h5", **TINY)
    embed([image_folder], cache=tmp_path / "fresh.h5", **TINY)
    inc, fresh = rows(tmp_path / "inc.h5"), rows(tmp_path / "fresh.h5")
    assert sorted(inc) == sorted(fresh)  # rows are in the order they were added
    assert all(np.array_equal(inc[p], fresh[p]) for p in fresh)


def test_a_second_writer_gets_a_clear_error(image_folder, tmp_path):
    cache = Cache(tmp_path / "c.h5")
    with cache.writer():
        with pytest.raises(CacheLockedError):
            embed([image_folder], cache=cache.path, **TINY)


def test_other_weights_into_the_same_cache_are_refused(image_folder, tmp_path):
    embed([image_folder], cache=tmp_path / "c.h5", **TINY)
    with pytest.raises(UsageError, match="made with"):
        embed([image_folder], cache=tmp_path / "c.h5", **{**TINY, "weights": None})


KILL_SCRIPT = """
import sys
from imgclust.embed import embed
embed([sys.argv[1]], encoder=sys.argv[3], cache=sys.argv[2], weights="random", device="cpu",
      batch_size=4, workers=0, flush_rows=4)
"""


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path):
    folder = tmp_path / "many"
    for i in range(60):
        make_image(folder / f"{i:03d}.png", (i * 4, 100, 255 - i * 4), noise_seed=i)
    (folder / "zz_bad.jpg").write_bytes(b"\xff\xd8 broken")
    embed([folder], cache=tmp_path / "reference.h5", **TINY)
    cache = tmp_path / "killed.h5"
    journal = cache.with_name("killed.h5.journal")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(folder), str(cache), TINY_ENCODER])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(list(journal.rglob("part-*.npz"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summary = embed([folder], cache=cache, **TINY)
    assert summary.recovered >= 8 and summary.embedded == 60 - summary.recovered
    resumed, reference = rows(cache), rows(tmp_path / "reference.h5")
    assert list(resumed) == list(reference)
    assert all(np.array_equal(resumed[p], reference[p]) for p in reference)  # bit for bit
    assert len(Cache(cache).read_failures(TINY_ENCODER)) == 1
    assert not journal.exists()


@pytest.mark.slow
def test_end_to_end_imagenette_mini_with_the_offline_encoder(tmp_path):
    data = shared_set("imagenette-mini")
    summary = embed([data], encoder="effnet-lite0", cache=tmp_path / "c.h5", labels="folder", device="cpu")
    assert (summary.embedded, summary.failed, summary.images) == (300, 0, 300)
    cache = Cache(tmp_path / "c.h5")
    x = cache.read_embeddings("effnet-lite0")
    labels = cache.read_index("effnet-lite0").labels
    assert x.shape == (300, 1280) and np.isfinite(x).all()
    # Real ImageNet features: images of a class are closer to their own class mean than to others'.
    classes = sorted(set(labels))
    means = np.stack([x[labels == c].mean(0) for c in classes])
    nearest = np.array(classes)[((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    assert (nearest == labels).mean() > 0.9
