"""embed --views (augmented-view embeddings) and assign (new images into a run's clusters)."""

import numpy as np
import pytest

from imgclust.assign import assign, cluster_centres, nearest_centre
from imgclust.cache import Cache
from imgclust.cluster import cluster
from imgclust.embed import embed
from imgclust.errors import UsageError

from .conftest import TINY_ENCODER, make_image

TINY = dict(encoder=TINY_ENCODER, weights="random", device="cpu", batch_size=4, workers=0)


def test_views_are_stored_reproducibly_and_kept_while_rows_are_unchanged(image_folder, tmp_path):
    first = embed([image_folder], cache=tmp_path / "a.h5", views=2, **TINY)
    assert first.views_computed == 12
    views = Cache(tmp_path / "a.h5").read_views(TINY_ENCODER)
    plain = Cache(tmp_path / "a.h5").read_embeddings(TINY_ENCODER)
    assert views.shape == (12, 2, plain.shape[1]) and not np.allclose(views[:, 0], plain)
    assert embed([image_folder], cache=tmp_path / "a.h5", views=2, **TINY).views_computed == 0
    embed([image_folder], cache=tmp_path / "b.h5", views=2, **TINY)
    assert np.array_equal(Cache(tmp_path / "b.h5").read_views(TINY_ENCODER), views)  # seeded per row and view
    make_image(image_folder / "red_things" / "extra.jpg", noise_seed=50)
    assert embed([image_folder], cache=tmp_path / "a.h5", views=2, **TINY).views_computed == 13


def test_nearest_centre_is_cosine_to_the_cluster_means():
    embeddings = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], float)
    labels = np.array([0, 0, 1, 1])
    ids, centres = cluster_centres([(0, embeddings)], labels)
    clusters, similarity = nearest_centre(ids, centres, np.array([[5, 0.2], [0.3, 4]]))
    assert clusters.tolist() == [0, 1] and (similarity > 0.9).all()


def test_cluster_centres_streamed_in_chunks_equal_one_pass_and_skip_noise():
    rng = np.random.default_rng(0)
    embeddings, labels = rng.normal(size=(50, 4)), rng.integers(-1, 3, 50)
    ids, whole = cluster_centres([(0, embeddings)], labels)
    _, chunked = cluster_centres([(s, embeddings[s:s + 7]) for s in range(0, 50, 7)], labels)
    assert ids.tolist() == [0, 1, 2] and np.allclose(whole, chunked)
    normed = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    mean = normed[labels == 1].mean(0)
    assert np.allclose(whole[1], mean / np.linalg.norm(mean), atol=1e-6)


def test_assign_refuses_a_run_of_only_noise():
    with pytest.raises(UsageError, match="every image is noise"):
        cluster_centres([(0, np.ones((3, 2)))], np.array([-1, -1, -1]))


def test_assign_puts_new_images_with_their_kind(image_folder, tmp_path):
    embed([image_folder], cache=tmp_path / "c.h5", **TINY)
    run = cluster(tmp_path / "c.h5", n_clusters=2, reduction="none")
    index = Cache(tmp_path / "c.h5").read_index(TINY_ENCODER)
    red_cluster = run.labels[[i for i, p in enumerate(index.paths) if "red_things" in p][0]]
    new = [make_image(tmp_path / "new" / f"n{i}.jpg", (210, 40, 40), noise_seed=500 + i) for i in range(3)]
    (tmp_path / "new" / "broken.jpg").write_bytes(b"nope")
    result = assign(tmp_path / "c.h5", [tmp_path / "new"])
    assert result.method == "nearest-centre" and result.run_id == run.run_id
    assert result.clusters == [red_cluster] * 3
    assert list(result.failures) == [str(tmp_path / "new" / "broken.jpg")]


def test_assign_uses_a_trained_head_when_the_run_has_one(image_folder, tmp_path):
    embed([image_folder], cache=tmp_path / "c.h5", **TINY)
    run = cluster(tmp_path / "c.h5", method="scan", n_clusters=2, params={"epochs": 5})
    result = assign(tmp_path / "c.h5", [image_folder / "red_things"], run=run.run_id)
    assert result.method == "head" and len(result.clusters) == 6
    index = Cache(tmp_path / "c.h5").read_index(TINY_ENCODER)
    stored = {p: c for p, c in zip(index.paths, run.labels)}
    assert [stored[p] for p in result.paths] == result.clusters  # the head reproduces its own clustering


def test_cc_trains_on_stored_views(image_folder, tmp_path):
    embed([image_folder], cache=tmp_path / "c.h5", views=2, **TINY)
    run = cluster(tmp_path / "c.h5", method="cc", n_clusters=2, params={"epochs": 5})
    assert run.space == "raw" and len(run.labels) == 12
    embed([image_folder], cache=tmp_path / "d.h5", **TINY)
    with pytest.raises(UsageError, match="augmented-view") as info:
        cluster(tmp_path / "d.h5", method="cc", n_clusters=2)
    assert "--views" in info.value.hint


def test_views_include_solarize_as_in_vitic():
    import torch
    from PIL import Image

    from imgclust.views import SOLARIZE_THRESHOLD, view_pipeline

    # the pipeline holds one solarize; on a bright image it inverts some views (p = 0.2), not all
    pipeline = view_pipeline(8)
    solarize = [t for t in pipeline.transforms if type(t).__name__ == "RandomSolarize"]
    assert len(solarize) == 1 and solarize[0].threshold == SOLARIZE_THRESHOLD
    image = Image.new("RGB", (8, 8), (250, 250, 250))
    dark = 0
    for seed in range(50):
        torch.manual_seed(seed)
        dark += int(np.asarray(solarize[0](image)).max() < 10)
    assert 3 <= dark <= 25  # applied to some views (p = 0.2), not all
