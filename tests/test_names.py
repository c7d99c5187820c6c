"""Cluster names: the ranking, the vocabulary, and the real CLIP code path with a random-weight open_clip model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from imgclust.cache import Cache, NewRows
from imgclust.cli import app
from imgclust.errors import ParameterError, UsageError
from imgclust.names import BUILTIN_VOCABULARY, PROMPT, cluster_names, rank_names, read_vocabulary, text_embeddings

from .conftest import make_image
from .stage_fixtures import blob_cache

runner = CliRunner()
CLIP = "open_clip:ViT-S-32:none"  # a small CLIP architecture; its weights are random in these tests


def test_rank_names_orders_words_by_cosine_to_each_centre():
    words = ["east", "north", "west", "north-east"]
    texts = np.array([[1, 0], [0, 1], [-1, 0], [1, 1]], float) * [[2], [1], [3], [0.5]]  # norms do not matter
    centres = np.array([[10, 1], [0, -1]], float)
    ranked = rank_names(centres, texts, words, top=2)
    assert [n for n, _ in ranked[0]] == ["east", "north-east"]
    assert ranked[0][0][1] == pytest.approx(10 / np.sqrt(101))
    assert [n for n, _ in ranked[1]] == ["east", "west"]  # a tie at cosine 0: the earlier word first
    assert ranked[1][0][1] == pytest.approx(0.0)
    assert len(rank_names(centres, texts, words, top=10)[0]) == 4
    with pytest.raises(ParameterError):
        rank_names(centres, texts, words, top=0)


def test_vocabulary_files_skip_comments_blanks_and_repeats(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# mine\ncat\n\n  dog \ncat\n", encoding="utf-8")
    assert read_vocabulary(path) == ["cat", "dog"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UsageError, match="has no words"):
        read_vocabulary(tmp_path / "empty.txt")
    with pytest.raises(UsageError, match="cannot read the vocabulary"):
        read_vocabulary(tmp_path / "missing.txt")


def test_builtin_vocabulary_states_its_source_and_licence():
    header = [line for line in BUILTIN_VOCABULARY.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any("ImageNet-12k" in line for line in header) and any("WordNet 3.0" in line for line in header)
    words = read_vocabulary()
    assert len(words) == 10951 and "golf ball" in words and "church" in words


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory, one_torch_thread):
    """Real images embedded by a random-weight open_clip model, clustered into 2 (k-means on the raw rows)."""
    import imgclust
    from imgclust.cluster import cluster

    root = tmp_path_factory.mktemp("clip")
    for i in range(4):
        make_image(root / "imgs" / f"r{i}.jpg", (210, 40, 40), noise_seed=i)
        make_image(root / "imgs" / f"b{i}.png", (30, 40, 220), noise_seed=100 + i)
    cache = root / "clip.h5"
    imgclust.embed([root / "imgs"], encoder=CLIP, cache=cache, weights="random", device="cpu", workers=0,
                   runtime="torch")
    cluster(cache, method="kmeans", n_clusters=2, reduction="none")
    vocabulary = root / "words.txt"
    vocabulary.write_text("red thing\nblue thing\ncat\ndog\n")
    return cache, vocabulary


def test_cluster_names_on_the_clip_code_path(clip_cache):
    """The names are the ranking of the model's own text embeddings against the clusters' mean image vectors."""
    import open_clip

    from imgclust.cluster import load_run
    from imgclust.encoders import _load_open_clip, resolve_spec

    cache, vocabulary = clip_cache
    names, why = cluster_names(cache, vocabulary=vocabulary)
    assert why is None and names.vocabulary_size == 4 and sorted(names.names) == [0, 1]
    # recompute by hand: the seeded random model's text tower, the clusters' means of unit rows
    words = read_vocabulary(vocabulary)
    model = _load_open_clip(resolve_spec(CLIP), "random").eval()
    texts = text_embeddings(model, open_clip.get_tokenizer("ViT-S-32"), words)
    X = Cache(cache).read_embeddings(CLIP)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    labels = load_run(cache).labels
    for cluster in (0, 1):
        expected = rank_names(X[labels == cluster].mean(0, keepdims=True), texts, words)[0]
        assert [n for n, _ in names.names[cluster]] == [n for n, _ in expected]
        np.testing.assert_allclose([s for _, s in names.names[cluster]], [s for _, s in expected], atol=1e-5)
    assert PROMPT == "a photo of a {}"


def test_names_cli_table_and_json(clip_cache):
    cache, vocabulary = clip_cache
    result = runner.invoke(app, ["names", str(cache), "--vocabulary", str(vocabulary), "--top", "2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc["clusters"]) == {"0", "1"} and all(len(v) == 2 for v in doc["clusters"].values())
    plain = runner.invoke(app, ["names", str(cache), "--vocabulary", str(vocabulary)])
    assert plain.exit_code == 0 and "cluster names" in plain.stdout


def test_names_are_skipped_with_one_note_for_other_encoders(tmp_path):
    cache = blob_cache(tmp_path / "blobs.h5")
    names, why = cluster_names(cache.path)
    assert names is None and "need a CLIP encoder" in why
    result = runner.invoke(app, ["names", str(cache.path)])
    assert result.exit_code == 0 and result.output.count("no cluster names") == 1


def test_names_are_skipped_when_clip_weights_are_not_available(tmp_path, monkeypatch):
    from imgclust.cluster import cluster

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hub"))  # nothing downloaded
    store = Cache(tmp_path / "clip.h5")
    attrs = {"encoder": "clip-vitb32", "family": "open_clip", "architecture": "ViT-B-32", "weights": "openai",
             "embedding_dim": 4, "preprocess": "{}", "identity": {"weights": "openai"}}
    paths = [str(make_image(tmp_path / f"i{i}.png", (40 * i, 90, 200), noise_seed=i)) for i in range(6)]
    X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    with store.writer():
        store.write_rows("clip-vitb32", attrs, NewRows(paths, np.zeros(6, np.int64), np.zeros(6, np.int64),
                                                       [""] * 6, [""] * 6, X))
    cluster(store.path, method="kmeans", n_clusters=2, reduction="none")
    names, why = cluster_names(store.path, vocabulary=None)
    assert names is None and "cluster names skipped" in why and "clip-vitb32" in why


def test_text_embeddings_are_kept_for_the_next_call(clip_cache, monkeypatch):
    import imgclust.names as names_module

    cache, vocabulary = clip_cache
    first, _ = cluster_names(cache, vocabulary=vocabulary)

    def not_again(*args, **kwargs):
        raise AssertionError("the text embeddings were computed again")

    monkeypatch.setattr(names_module, "text_embeddings", not_again)
    second, _ = cluster_names(cache, vocabulary=vocabulary)
    assert second.names == first.names


def test_score_shows_the_names_per_cluster(clip_cache):
    cache, vocabulary = clip_cache
    result = runner.invoke(app, ["score", str(cache), "--names", "--vocabulary", str(vocabulary), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["names"]["clusters"]) == {"0", "1"}
    table = runner.invoke(app, ["score", str(cache), "--names", "--vocabulary", str(vocabulary), "--markdown"])
    assert table.exit_code == 0 and "| cluster | size | silhouette | names |" in table.stdout


def test_exports_carry_the_names_of_a_clip_run(clip_cache, tmp_path):
    import csv

    from imgclust.export import export

    cache, vocabulary = clip_cache
    names, _ = cluster_names(cache, vocabulary=vocabulary)
    export(cache, format="csv", out=tmp_path / "plain")
    assert all(not r["names"] for r in csv.DictReader(open(tmp_path / "plain" / "clusters.csv")))  # asked for only
    export(cache, format="csv", out=tmp_path / "out", names=True, vocabulary=vocabulary)
    rows = list(csv.DictReader(open(tmp_path / "out" / "clusters.csv")))
    assert [r["names"] for r in rows] == [names.label(int(r["cluster"])) for r in rows] and rows[0]["names"]
    result = runner.invoke(app, ["export", str(cache), "--format", "html", "--out", str(tmp_path / "out"),
                                 "--names", "--vocabulary", str(vocabulary)])
    assert result.exit_code == 0, result.output
    assert names.label(0) in open(tmp_path / "out" / "gallery" / "index.html", encoding="utf-8").read()
