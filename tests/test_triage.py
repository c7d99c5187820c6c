"""Duplicates and outliers: the grouping rules, the keeper, the scores, and the commands on real files."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from imgclust import duplicates as dup
from imgclust.cache import Cache, NewRows, file_hash
from imgclust.cli import app
from imgclust.duplicates import Rule, complete_linkage_groups, exact_classes, find_duplicates, greedy_groups, near_groups
from imgclust.knn import knn_graph
from imgclust.manifest import MANIFEST_NAME
from imgclust.outliers import MARK_SCORE, find_outliers, outlier_scores
from imgclust.phash import NO_HASH, hamming

from .conftest import TINY_ENCODER, make_image

runner = CliRunner()


def unit(angles_deg) -> np.ndarray:
    """Unit vectors in a plane at these angles (cosine of two = cos of their angle difference)."""
    a = np.radians(np.asarray(angles_deg, float))
    return np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=1).astype(np.float32)


def all_pairs_within(X, groups, threshold) -> bool:
    return all((X[g] @ X[g].T >= threshold - 1e-6).all() for g in groups)


def unhashed(n) -> np.ndarray:
    return np.full(n, NO_HASH, np.uint64)


def test_exact_classes_share_a_hash_and_leave_unhashed_rows_alone():
    classes = exact_classes(np.array(["a", "b", "a", "", "", "b"], dtype=object))
    assert classes.tolist() == [0, 1, 0, 3, 4, 1]


def test_complete_linkage_does_not_chain():
    # 0-20-40 degrees: neighbours are within cos 20 deg (0.94), the ends only cos 40 deg (0.77)
    X = unit([0, 20, 40])
    labels = complete_linkage_groups(X, unhashed(3), Rule(0.9))
    assert len(set(labels.tolist())) == 2
    groups = [np.flatnonzero(labels == label) for label in set(labels.tolist())]
    assert all_pairs_within(X, groups, 0.9)
    # a threshold both ends meet keeps all three together
    assert len(set(complete_linkage_groups(X, unhashed(3), Rule(0.7)).tolist())) == 1


@pytest.mark.parametrize("greedy", [False, True])
def test_near_groups_keep_every_pair_within_the_threshold(monkeypatch, greedy):
    if greedy:  # the cut used for very large components
        monkeypatch.setattr(dup, "COMPLETE_LINKAGE_MAX", 1)
    rng = np.random.default_rng(0)
    # 5 chains of 8 rows 6 degrees apart (neighbours 0.995, ends 0.73), far from each other, plus noise rows
    X = np.concatenate([unit(np.arange(8) * 6.0) @ _rotation(rng) for _ in range(5)] + [_random_unit(rng, 20)])
    graph = knn_graph(X, 6, "cosine")
    groups = near_groups(X, unhashed(len(X)), graph.indices, 1.0 - graph.distances, Rule(0.97))
    assert groups, "the chains hold near duplicates"
    assert all_pairs_within(X, groups, 0.97)
    assert max(len(g) for g in groups) < 8  # no group spans a whole chain
    assert all(len(g) >= 2 for g in groups)


def _rotation(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q.astype(np.float32)


def _random_unit(rng, n) -> np.ndarray:
    X = rng.normal(size=(n, 3)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_the_rule_joins_by_either_arm_and_the_hash_arm_needs_the_weak_floor():
    rule = Rule(0.9, 4, 0.7)
    similarity = np.array([0.95, 0.80, 0.60, 0.80, 0.80])
    distance = hamming(np.zeros(5, np.uint64), np.array([2**40 - 1, 0b111, 0, 0b11111, NO_HASH], np.uint64))
    # cos >= T; hash within 3 bits at cos 0.8; hash equal but cos 0.6 < T_weak; 5 bits; a hash unknown
    assert rule.joins(similarity, distance).tolist() == [True, True, False, False, False]
    assert [rule.arm(s) for s in similarity[:2]] == ["embedding", "hash"]
    assert Rule(0.9).joins(similarity, distance).tolist() == [True, False, False, False, False]
    assert rule.describe() == "cosine similarity ≥ 0.9, or perceptual hashes within 4 bits and cosine ≥ 0.7"


@pytest.mark.parametrize("greedy", [False, True])
def test_the_hash_arm_joins_a_pair_without_chaining(monkeypatch, greedy):
    if greedy:
        monkeypatch.setattr(dup, "COMPLETE_LINKAGE_MAX", 1)
    # A, B, C 37 degrees apart (neighbours cos 0.80, A-C 0.28); hashes A-B and B-C 3 bits apart, A-C 6.
    # D is A's hash exactly, but 53 degrees from A (cos 0.60 < T_weak).
    X = unit([0, 37, 74, -53])
    P = np.array([0, 0b111, 0b111 ^ (0b111 << 10), 0], np.uint64)
    graph = knn_graph(X, 3, "cosine")
    rule = Rule(0.9, 4, 0.7)
    groups = [g.tolist() for g in near_groups(X, P, graph.indices, 1.0 - graph.distances, rule)]
    assert groups in ([[0, 1]], [[1, 2]])  # by the hash arm; never A, B and C together; D alone
    assert near_groups(X, P, graph.indices, 1.0 - graph.distances, Rule(0.9)) == []  # the embedding arm alone
    labels = complete_linkage_groups(X, P, rule)  # the cut itself, on every pair of the rows
    members = [np.flatnonzero(labels == v) for v in set(labels.tolist())]
    assert max(len(m) for m in members) == 2
    assert all(rule.joins(X[m] @ X[m].T, hamming(P[m][:, None], P[m][None])).all() for m in members)


def test_greedy_groups_take_neighbours_within_every_member():
    X = unit([0, 10, 20])
    labels = greedy_groups(X, unhashed(3), [[1, 2], [0, 2], [1, 0]], Rule(0.97))  # cos 10 = 0.985, cos 20 = 0.94
    assert labels[0] == labels[1] != labels[2]


def triage_cache(tmp_path, chain_angle=22.0, chain_compression=6, phashes=None):
    """Real files: a photo, its byte copy, a larger re-render (near), a chained third, and unrelated images.

    Embeddings are chosen so the truth is known: ``big`` is 10 degrees from ``photo`` (cos 0.985),
    ``chain`` 12 degrees further (cos 0.978 to ``big``, 0.927 to ``photo``), the rest far away.
    """
    root = tmp_path / "imgs"
    photo = make_image(root / "photo.png", (200, 30, 30), size=(40, 30), noise_seed=1)
    copy = root / "copy.png"
    shutil.copyfile(photo, copy)
    big = make_image(root / "big.png", (200, 30, 30), size=(80, 60), noise_seed=1)
    chain = make_image(root / "chain.png", (200, 30, 30), size=(40, 30), noise_seed=2)
    from PIL import Image

    with Image.open(chain) as image:
        image.load()
        image.save(chain, compress_level=chain_compression)
    others = [make_image(root / f"other{i}.png", (20 * i, 90, 200), size=(20, 20), noise_seed=10 + i) for i in range(6)]
    paths = [photo, copy, big, chain, *others]
    vectors = np.zeros((10, 9), np.float32)  # the others: orthogonal axes 3..8
    vectors[:4, :3] = unit([0, 0, 10, chain_angle])
    vectors[4:, 3:] = np.eye(6)
    store = Cache(tmp_path / "triage.h5")
    attrs = {"encoder": "hand", "family": "test", "architecture": "hand", "weights": "none", "embedding_dim": 9,
             "preprocess": "{}"}
    rows = NewRows([str(p) for p in paths], np.array([p.stat().st_size for p in paths]), np.zeros(len(paths), np.int64),
                   [""] * len(paths), [file_hash(str(p)) for p in paths], vectors,
                   None if phashes is None else np.asarray(phashes, np.uint64))
    with store.writer():
        store.write_rows("hand", attrs, rows)
    return store.path, {"photo": str(photo), "copy": str(copy), "big": str(big), "chain": str(chain)}


def test_find_duplicates_groups_exact_and_near_and_keeps_the_largest(tmp_path):
    cache, p = triage_cache(tmp_path)
    report = find_duplicates(cache, threshold=0.97, k=3)
    assert report.threshold_source == "given"
    [group] = report.groups  # chain is 0.927 from photo: not in the group, though 0.978 from big
    assert group.kind == "near"
    assert group.keeper == p["big"]  # 80 x 60 pixels beats 40 x 30
    assert set(group.drops) == {p["photo"], p["copy"]}
    assert group.same_bytes == [True, False, False]
    assert group.hashes[1] == group.hashes[2] != ""
    assert report.drop_paths == group.drops and report.keep_paths == [p["big"]]

    exact_only = find_duplicates(cache, threshold=1.0, k=3)
    [group] = exact_only.groups
    assert group.kind == "exact" and set(group.paths) == {p["photo"], p["copy"]}
    assert group.keeper == p["copy"]  # same pixels, same bytes: the first path in sort order


def test_keeper_prefers_the_larger_file_when_pixels_tie(tmp_path):
    # chain: photo's embedding and pixel count, stored without compression (a larger file)
    cache, p = triage_cache(tmp_path, chain_angle=0.0, chain_compression=0)
    report = find_duplicates(cache, threshold=0.99, k=3)  # big (0.985) stays out
    [group] = report.groups
    assert set(group.paths) == {p["photo"], p["copy"], p["chain"]}
    assert group.keeper == p["chain"] and group.sizes[0] > group.sizes[1]


def test_uncalibrated_family_warns_and_uses_the_conservative_default(tmp_path):
    cache, _ = triage_cache(tmp_path)
    with pytest.warns(UserWarning, match="no near-duplicate rule is calibrated"):
        report = find_duplicates(cache)
    assert report.rule == dup.UNCALIBRATED_RULE and report.threshold_source == "uncalibrated"
    assert dup.default_rule("effnet-lite") == (dup.RULES["effnet-lite"], "calibrated for effnet-lite")


def test_duplicates_rejects_a_bad_threshold(tmp_path):
    cache, _ = triage_cache(tmp_path)
    result = runner.invoke(app, ["duplicates", str(cache), "--threshold", "1.5"])
    assert result.exit_code == 2
    assert "threshold must be in (0, 1]" in result.output


def test_duplicates_cli_writes_groups_and_lists(tmp_path):
    cache, p = triage_cache(tmp_path)
    out, keep, drop = tmp_path / "triage", tmp_path / "keep.txt", tmp_path / "drop.txt"
    args = ["duplicates", str(cache), "-t", "0.97", "-k", "3", "--out", str(out), "--keep-list", str(keep),
            "--drop-list", str(drop)]
    result = runner.invoke(app, args + ["--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["groups"][0]["keeper"] == p["big"] and doc["near_groups"] == 1
    assert keep.read_text() == f"{p['big']}\n"
    assert sorted(drop.read_text().splitlines()) == sorted([p["photo"], p["copy"]])
    lines = (out / "duplicates.csv").read_text().splitlines()
    assert len(lines) == 4
    assert lines[0] == "group,kind,path,keep,match,similarity,hash_distance,same_bytes,pixels,bytes,content_hash"
    assert json.loads((out / "duplicates.json").read_text())["to_drop"] == 2
    assert set(json.loads((out / MANIFEST_NAME).read_text())["written"]) == {"duplicates.csv", "duplicates.json"}

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert runner.invoke(app, args + ["--force"]).exit_code == 0

    # a file imgclust did not write is never replaced, even with --force
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "duplicates.csv").write_text("mine")
    refused = runner.invoke(app, ["duplicates", str(cache), "--out", str(mine), "--force"])
    assert refused.exit_code == 2 and "not written by imgclust" in refused.output
    assert (mine / "duplicates.csv").read_text() == "mine"


def test_duplicates_drop_list_on_stdout_for_xargs(tmp_path, env_python):
    cache, p = triage_cache(tmp_path)
    proc = subprocess.run([env_python, "-m", "imgclust", "duplicates", str(cache), "-t", "0.97", "-k", "3",
                           "--drop-list", "-", "-q"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == sorted([p["photo"], p["copy"]])


def test_duplicates_end_to_end_on_embedded_images(tmp_path, image_folder, one_torch_thread):
    """The real path: embed real files (content hashes stored at embed time), then find their copies."""
    import imgclust

    shutil.copyfile(image_folder / "red_things" / "r0.jpg", image_folder / "red_things" / "r0-copy.jpg")
    cache = tmp_path / "e2e.h5"
    imgclust.embed([image_folder], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu", workers=0)
    result = runner.invoke(app, ["duplicates", str(cache), "--threshold", "0.999999", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    exact = [g for g in doc["groups"] if g["kind"] == "exact"]
    assert len(exact) == 1
    assert {m["path"].rsplit("/", 1)[-1] for m in exact[0]["members"]} == {"r0.jpg", "r0-copy.jpg"}


def test_duplicates_json_says_which_arm_joined_each_member(tmp_path):
    # photo/copy/big share a perceptual hash; chain's is 1 bit off, 12 degrees on the other side of photo:
    # cosine 0.978 to photo, 0.927 to big (the keeper, < T 0.97)
    cache, p = triage_cache(tmp_path, chain_angle=-12.0, phashes=[0, 0, 0, 1] + [2**k - 1 << 20 for k in range(10, 16)])
    args = ["duplicates", str(cache), "-t", "0.97", "-k", "3", "--json"]
    doc = json.loads(runner.invoke(app, args + ["--hash-distance", "2", "--weak-threshold", "0.9"]).stdout)
    assert doc["threshold"] == 0.97 and doc["hash_distance"] == 2 and doc["weak_threshold"] == 0.9
    [group] = doc["groups"]
    members = {m["path"]: m for m in group["members"]}
    assert group["keeper"] == p["big"] and members[p["big"]]["match"] == "keeper"
    assert members[p["chain"]]["match"] == "hash" and members[p["chain"]]["hash_distance"] == 1
    assert members[p["photo"]]["match"] == members[p["copy"]]["match"] == "embedding"
    assert doc["matched_by"] == {"exact": 0, "embedding": 2, "hash": 1} and doc["n_without_perceptual_hash"] == 0

    # the weak floor refuses chain (cosine 0.927 to big); --no-hash leaves the embedding arm alone
    strict = json.loads(runner.invoke(app, args + ["--hash-distance", "2", "--weak-threshold", "0.95"]).stdout)
    assert p["chain"] not in {m["path"] for g in strict["groups"] for m in g["members"]}
    off = json.loads(runner.invoke(app, args + ["--no-hash"]).stdout)
    assert off["hash_distance"] is None and off["matched_by"]["hash"] == 0 and off["to_drop"] == 2
    plain = runner.invoke(app, ["duplicates", str(cache), "-t", "0.97", "-k", "3", "--hash-distance", "2",
                                "--weak-threshold", "0.9"])
    assert "hash: similarity 0.927, hash 1 bits" in plain.stdout and "1 by hash" in plain.stdout
    conflict = runner.invoke(app, args + ["--no-hash", "--hash-distance", "3"])
    assert conflict.exit_code == 2 and "use_hash=False" in conflict.output
    bad = runner.invoke(app, args + ["--hash-distance", "65"])
    assert bad.exit_code == 2 and "hash_distance must be in [0, 64]" in bad.output


def test_rows_without_a_perceptual_hash_use_the_embedding_and_are_counted_in_a_note(tmp_path):
    import h5py

    cache, p = triage_cache(tmp_path, phashes=[0] * 10)
    for block in Cache(cache).bulk_dir.glob("block-*.h5"):  # as written before perceptual hashes were stored
        with h5py.File(block, "a") as fh:
            del fh["perceptual_hashes"]
    result = runner.invoke(app, ["duplicates", str(cache), "-t", "0.97", "-k", "3", "--hash-distance", "2",
                                 "--weak-threshold", "0.0", "--json"])
    assert result.exit_code == 0, result.output
    assert "10 of 10 rows have no perceptual hash" in result.output and "--reembed" in result.output
    doc = json.loads(result.stdout)
    assert doc["n_without_perceptual_hash"] == 10 and doc["matched_by"]["hash"] == 0
    assert {m["path"] for m in doc["groups"][0]["members"]} == {p["photo"], p["copy"], p["big"]}
    quiet_off = runner.invoke(app, ["duplicates", str(cache), "-t", "0.97", "-k", "3", "--no-hash"])
    assert "perceptual hash" not in quiet_off.output  # no hash arm: nothing is missing


def test_a_half_size_copy_is_found_through_the_stored_perceptual_hash(tmp_path, one_torch_thread):
    """The real path on real photos: embed (hashes computed by the decoding step), then the resized copy is
    joined by the hash arm although the embedding arm (an unreachable cosine) joins nothing else."""
    from PIL import Image

    import imgclust

    from .conftest import shared_set

    root = shared_set("imagenette-mini")
    photos = sorted(p for p in root.rglob("*.JPEG"))[::60][:5]
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        shutil.copyfile(photo, folder / photo.name)
    with Image.open(photos[0]) as image:
        image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS).save(folder / "half.jpg", quality=90)
    cache = tmp_path / "e2e.h5"
    imgclust.embed([folder], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu", workers=0)
    result = runner.invoke(app, ["duplicates", str(cache), "--threshold", "1.0", "--hash-distance", "6",
                                 "--weak-threshold", "-1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    [group] = doc["groups"]
    assert {m["path"].rsplit("/", 1)[-1] for m in group["members"]} == {photos[0].name, "half.jpg"}
    assert group["keeper"].endswith(photos[0].name)  # more pixels
    assert group["members"][1]["match"] == "hash" and group["members"][1]["hash_distance"] <= 6


def test_outlier_scores_are_the_kth_distance_over_its_median():
    scores, median = outlier_scores(np.array([1.0, 2.0, 2.0, 3.0, 8.0]))
    assert median == 2.0
    np.testing.assert_allclose(scores, [0.5, 1.0, 1.0, 1.5, 4.0])
    scores, median = outlier_scores(np.array([0.0, 0.0, 0.0, 0.5]))  # most rows have k exact copies
    assert median == 0.0 and scores.tolist() == [1.0, 1.0, 1.0, np.inf]


def test_find_outliers_ranks_the_isolated_image_first(tmp_path):
    cache, _ = triage_cache(tmp_path)
    report = find_outliers(cache, k=2)
    assert report.k == 2 and len(report.scores) == 10
    top = report.top(3)
    assert report.scores[top[0]] >= report.scores[top[1]] >= report.scores[top[2]]
    # the hand-made "other" rows are spread out; the photo and its copies sit together
    assert not {str(report.paths[i]).rsplit("/", 1)[-1] for i in top} & {"photo.png", "copy.png", "big.png"}
    assert np.median(report.scores) == pytest.approx(1.0)
    assert all(report.scores[i] >= MARK_SCORE for i in report.marked)


def test_outliers_share_the_raw_spaces_stored_graph(tmp_path, monkeypatch):
    import imgclust.knn as knn

    cache, _ = triage_cache(tmp_path)
    first = find_outliers(cache, k=2)
    store = Cache(cache)
    encoder = store.encoders()[0]
    assert any(name.startswith("raw:cosine@") for name in store.current(encoder, "knn", store.rows(encoder).fingerprint))
    monkeypatch.setattr(knn, "knn_graph", lambda *a, **kw: pytest.fail("the stored graph should have been read"))
    np.testing.assert_allclose(find_outliers(cache, k=2).scores, first.scores)


def test_duplicates_without_shared_contents_use_the_raw_spaces_stored_graph(tmp_path, monkeypatch):
    import imgclust.knn as knn

    from .stage_fixtures import blob_cache

    cache = blob_cache(tmp_path / "c.h5", n_per=20, centers=3, dim=8)
    find_duplicates(cache.path, threshold=0.99)
    monkeypatch.setattr(knn, "knn_graph", lambda *a, **kw: pytest.fail("the stored graph should have been read"))
    assert len(find_outliers(cache.path, k=3).scores) == 60  # the graph duplicates stored serves the outliers


def test_outliers_cli_lists_the_top_and_json(tmp_path):
    cache, _ = triage_cache(tmp_path)
    result = runner.invoke(app, ["outliers", str(cache), "--top", "3", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [o["rank"] for o in doc["outliers"]] == [1, 2, 3]
    assert doc["outliers"][0]["score"] >= doc["outliers"][2]["score"]
    plain = runner.invoke(app, ["outliers", str(cache), "--top", "2", "-k", "2"])
    assert plain.exit_code == 0 and doc["outliers"][0]["path"].rsplit("/", 1)[-1] in plain.output
    assert runner.invoke(app, ["outliers", str(cache), "-k", "0"]).exit_code == 2


def test_outliers_subprocess_exit_code_on_a_missing_cache(tmp_path, env_python):
    proc = subprocess.run([env_python, "-m", "imgclust", "outliers", str(tmp_path / "none.h5")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "error" in proc.stderr


def test_export_paths_filters_for_the_shell(tmp_path, env_python):
    from imgclust.cluster import cluster

    cache, p = triage_cache(tmp_path)
    cluster(cache, method="kmeans", n_clusters=2, reduction="none")
    from imgclust.cluster import load_run

    labels = load_run(cache).labels
    paths = [str(x) for x in Cache(cache).read_index("hand").paths]
    everything = runner.invoke(app, ["export", str(cache), "--format", "paths"])
    assert everything.exit_code == 0 and everything.stdout.splitlines() == paths
    one = runner.invoke(app, ["export", str(cache), "--format", "paths", "--cluster", str(labels[0])])
    assert one.stdout.splitlines() == [x for x, label in zip(paths, labels) if label == labels[0]]
    marked = find_outliers(cache).marked
    outliers = runner.invoke(app, ["export", str(cache), "--format", "paths", "--outliers"])
    assert outliers.stdout.splitlines() == [paths[i] for i in marked]
    proc = subprocess.run([env_python, "-m", "imgclust", "export", str(cache), "--format", "paths", "--duplicates", "-q"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    with pytest.warns(UserWarning, match="no near-duplicate rule"):
        drops = find_duplicates(cache).drop_paths
    assert drops and sorted(proc.stdout.splitlines()) == sorted(drops)
    refused = runner.invoke(app, ["export", str(cache), "--format", "csv", "--outliers"])
    assert refused.exit_code == 2 and "--format paths" in refused.output


def test_outliers_say_before_reading_that_the_embeddings_do_not_fit_unless_a_graph_is_stored(tmp_path):
    from imgclust.errors import ResourceError
    from imgclust.outliers import memory_shortfall

    cache, _ = triage_cache(tmp_path)
    short = memory_shortfall(cache, memory_budget=100)
    assert short.startswith("outlier scores of 'hand' need its 10 embeddings in memory") and "memory budget" in short
    with pytest.raises(ResourceError, match="need its 10 embeddings"):
        find_outliers(cache, k=2, memory_budget=100)
    assert memory_shortfall(cache) is None
    find_outliers(cache, k=2)  # stores the raw space's graph
    assert memory_shortfall(cache, memory_budget=100) is None  # the stored graph needs no embeddings
    assert len(find_outliers(cache, k=2, memory_budget=100).scores) == 10
