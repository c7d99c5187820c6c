"""Joint spaces (imgclust.joint): --encoder A+B through embed, cluster, score, export and assign."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from imgclust.assign import assign
from imgclust.cache import Cache
from imgclust.cli import app
from imgclust.cluster import cluster
from imgclust.embed import embed
from imgclust.errors import NotFoundError, UsageError
from imgclust.joint import resolve_table, split_encoders
from imgclust.score import score

from .conftest import TINY_ENCODER

OTHER = "timm:test_vit"
JOINT = f"{TINY_ENCODER}+{OTHER}"
TINY = dict(weights="random", device="cpu", batch_size=4, workers=0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_split_encoders_keeps_features_with_their_encoder():
    assert split_encoders("effnet-lite0+effnet-lite2") == ["effnet-lite0", "effnet-lite2"]
    assert split_encoders("dinov2-vitb14+cls+patchmean+clip-vitb16") == ["dinov2-vitb14+cls+patchmean", "clip-vitb16"]
    assert split_encoders("effnet-lite0") == ["effnet-lite0"]
    with pytest.raises(UsageError, match="empty part"):
        split_encoders("effnet-lite0++effnet-lite2")
    with pytest.raises(UsageError, match="twice"):
        split_encoders("effnet-lite0+effnet-lite0")


def test_embed_builds_each_table_then_the_joint_one_of_l2_normalised_parts(image_folder, tmp_path):
    c = tmp_path / "c.h5"
    summary = embed([image_folder], encoder=JOINT, cache=c, labels="folder", **TINY)
    assert summary.encoder == JOINT and summary.images == 12 and summary.embedded == 24  # 12 images x 2 encoders
    cache = Cache(c)
    assert set(cache.encoders()) == {TINY_ENCODER, OTHER, JOINT}
    info = cache.info(JOINT)
    a, b = cache.read_embeddings(TINY_ENCODER), cache.read_embeddings(OTHER)
    assert info["family"] == "joint" and info["part_dims"] == [a.shape[1], b.shape[1]]
    joint = cache.read_embeddings(JOINT)
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(joint, np.hstack([norm(a), norm(b)]), rtol=1e-6, atol=1e-6)
    assert list(cache.read_index(JOINT).labels) == list(cache.read_index(TINY_ENCODER).labels)
    again = embed([image_folder], encoder=JOINT, cache=c, **TINY)
    assert again.embedded == 0 and again.images == 12


def test_the_joint_table_holds_the_rows_present_in_all_and_follows_its_parts(image_folder, tmp_path):
    c = tmp_path / "c.h5"
    embed([image_folder], encoder=TINY_ENCODER, cache=c, labels="folder", **TINY)
    embed([image_folder / "red_things"], encoder=OTHER, cache=c, labels="folder", **TINY)
    run = cluster(c, JOINT, "kmeans", 2, reduction="none")
    cache = Cache(c)
    assert run.n_samples == 6 and all("red_things" in p for p in cache.read_index(JOINT).paths)
    assert len(score(c, run.run_id, JOINT).paths) == 6
    embed([image_folder], encoder=OTHER, cache=c, labels="folder", **TINY)  # the second part now has every image
    assert resolve_table(cache, JOINT) == JOINT and len(cache.rows(JOINT)) == 12
    assert cache.list_groups(JOINT, "runs")[run.run_id]["stale"]  # a run of the old rows is kept, not used
    rerun = cluster(c, JOINT, "kmeans", 2, reduction="none")
    assert rerun.n_samples == 12 and score(c, rerun.run_id, JOINT).scores.ami == pytest.approx(1.0)


def test_missing_part_is_a_not_found_error_naming_the_embed_command(image_folder, tmp_path):
    embed([image_folder], encoder=TINY_ENCODER, cache=tmp_path / "c.h5", **TINY)
    with pytest.raises(NotFoundError, match=f"no embeddings for encoder '{OTHER}', a part of") as info:
        cluster(tmp_path / "c.h5", JOINT, "kmeans", 2)
    assert f"--encoder {JOINT}" in info.value.hint


def test_turtle_trains_one_task_encoder_per_encoder_and_assign_embeds_with_each(image_folder, tmp_path):
    c = tmp_path / "c.h5"
    embed([image_folder], encoder=JOINT, cache=c, labels="folder", **TINY)
    dims = Cache(c).info(JOINT)["part_dims"]
    run = cluster(c, JOINT, "turtle", 2, {"epochs": 50}, device="cpu")
    assert run.params["space_dims"] == f"{dims[0]},{dims[1]}" and run.space == "raw"
    assert [tuple(v.shape) for v in run.estimator._model.v] == [(2, dims[0]), (2, dims[1])]
    result = assign(c, [image_folder / "red_things"], run=run.run_id, encoder=JOINT, device="cpu", workers=0)
    assert result.method == "head" and len(result.clusters) == 6
    stored = dict(zip(Cache(c).read_index(JOINT).paths, run.labels))
    assert [stored[p] for p in result.paths] == result.clusters  # embedded again by both, combined the same way
    centre = cluster(c, JOINT, "kmeans", 2, reduction="none")
    placed = assign(c, [image_folder / "blue_things"], run=centre.run_id, encoder=JOINT, device="cpu", workers=0)
    assert placed.method == "nearest-centre"
    assert placed.clusters == [dict(zip(Cache(c).read_index(JOINT).paths, centre.labels))[p] for p in placed.paths]


def test_cli_joint_space_end_to_end(image_folder, tmp_path, env_python):
    runner = CliRunner()
    c = tmp_path / "c.h5"
    embedded = runner.invoke(app, ["embed", str(image_folder), "--encoder", JOINT, "--cache", str(c), "--labels", "folder",
                                   "--weights", "random", "--device", "cpu", "--workers", "0", "--json"])
    assert embedded.exit_code == 0, embedded.output
    assert json.loads(embedded.stdout)["images"] == 12
    clustered = runner.invoke(app, ["cluster", str(c), "--encoder", JOINT, "-k", "2", "--reduction", "none", "--json"])
    assert clustered.exit_code == 0, clustered.output
    assert json.loads(clustered.stdout)["encoder"] == JOINT
    scored = subprocess.run([env_python, "-m", "imgclust", "score", str(c), "--encoder", JOINT, "--json"],
                            capture_output=True, text=True)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["scores"]["ami"] == pytest.approx(1.0)
    exported = runner.invoke(app, ["export", str(c), "--encoder", JOINT, "--format", "csv", "--out", str(tmp_path / "out")])
    assert exported.exit_code == 0, exported.output
    missing = runner.invoke(app, ["cluster", str(c), "--encoder", f"{TINY_ENCODER}+effnet-lite2", "-k", "2", "--json"])
    assert missing.exit_code != 0 and "a part of" in json.loads(missing.stdout)["error"]["message"]
