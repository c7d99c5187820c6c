"""The one-step command: folders in, every export out; reruns reuse the cache and give the same result."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imgclust.cache import Cache
from imgclust.cli import app
from imgclust.errors import UsageError
from imgclust.pipeline import run_pipeline

from .conftest import TINY_ENCODER, shared_set

TINY = {"weights": "random", "workers": 0}


def test_one_step_writes_every_export_and_reuses_the_cache(image_folder, tmp_path):
    out = tmp_path / "result"
    first = run_pipeline([image_folder], out, encoder=TINY_ENCODER, n_clusters=2, labels="folder", device="cpu", embed_options=TINY)
    assert first.embed.embedded == 12 and first.run.n_clusters == 2
    for name in ("assignments.csv", "clusters.csv", "assignments.json", "assignments.parquet", "umap_scatter.png",
                 "silhouette.png", "gallery/index.html", "imgclust-cache.h5"):
        assert (out / name).exists(), name
    assert len(list((out / "clusters").rglob("*.*"))) == 12
    with pytest.raises(UsageError, match="already holds a result"):
        run_pipeline([image_folder], out, encoder=TINY_ENCODER, n_clusters=2, device="cpu", embed_options=TINY)
    second = run_pipeline([image_folder], out, encoder=TINY_ENCODER, n_clusters=2, labels="folder", force=True,
                          device="cpu", embed_options=TINY)
    assert second.embed.embedded == 0 and second.embed.skipped == 12
    assert np.array_equal(first.run.labels, second.run.labels)


def test_one_step_cache_mirrors_the_inputs(image_folder, tmp_path):
    out = tmp_path / "result"
    run_pipeline([image_folder], out, encoder=TINY_ENCODER, n_clusters=2, formats=["csv"], device="cpu", embed_options=TINY)
    run_pipeline([image_folder / "red_things"], out, encoder=TINY_ENCODER, n_clusters=2, formats=["csv"], force=True,
                 device="cpu", embed_options=TINY)
    assert len(Cache(out / "imgclust-cache.h5").read_index(TINY_ENCODER)) == 6


def test_one_step_cli_prints_a_summary_and_json(image_folder, tmp_path):
    runner = CliRunner()
    args = ["cluster", str(image_folder), "--out", str(tmp_path / "r"), "--encoder", TINY_ENCODER, "--weights", "random",
            "--device", "cpu", "--workers", "0", "--labels", "folder", "-k", "2", "--formats", "csv,json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "clusters    2" in result.stdout and "AMI" in result.stdout
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.stderr
    doc = json.loads(runner.invoke(app, args + ["--force", "--json"]).stdout)
    assert doc["embed"]["embedded"] == 0 and doc["run"]["n_clusters"] == 2


def test_one_step_cli_with_a_trained_head_shows_its_training_and_space(image_folder, tmp_path):
    args = ["cluster", str(image_folder), "--out", str(tmp_path / "r"), "--encoder", TINY_ENCODER, "--weights", "random",
            "--device", "cpu", "--workers", "0", "-k", "2", "--formats", "csv", "--method", "scan",
            "--param", "epochs=2", "--param", "hidden=8", "--param", "k=3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "method scan" in result.stdout and "(in raw embeddings)" in result.stdout
    assert "embed" in result.stderr and "training scan" in result.stderr and "2/2" in result.stderr


def test_sklearn_digits_source_is_offline_and_labelled(tmp_path):
    out = tmp_path / "digits"
    result = run_pipeline(["sklearn:digits"], out, encoder=TINY_ENCODER, n_clusters=10, formats=["csv"],
                          device="cpu", embed_options={**TINY, "data_root": tmp_path / "data"})
    assert result.embed.images == 1797 and result.report.labels_source == "cache"
    assert result.report.scores.n_classes == 10


@pytest.mark.slow
def test_imagenette_mini_end_to_end_with_the_offline_encoder(tmp_path):
    data = shared_set("imagenette-mini")
    result = run_pipeline([data], tmp_path / "out", encoder="effnet-lite0", n_clusters=10, labels="folder",
                          formats=["csv", "html"], device="cpu")
    assert result.embed.images == 300
    assert result.report.scores.ami > 0.8


def test_readme_sample_output_has_the_shape_the_command_prints(image_folder, tmp_path):
    """The quick start's sample output, numbers aside, is what `imgclust cluster` prints today."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    sample = readme.split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    args = ["cluster", str(image_folder), "--out", str(tmp_path / "r"), "--encoder", TINY_ENCODER, "--weights", "random",
            "--device", "cpu", "--workers", "0", "--labels", "folder", "--formats", "csv"]
    printed = CliRunner().invoke(app, args).stdout.splitlines()

    def shape(line: str) -> str:
        line = re.sub(r"^results\s+\S+/", "results DIR/", line)
        line = re.sub(r"encoder \S+$", "encoder E", line)
        line = re.sub(r"^K chosen\s+.*$", "K chosen SUMMARY", line)  # its words depend on the data (a pick or a doubt)
        return re.sub(r"\d+(\.\d+)?", "N", line)

    assert [shape(line) for line in printed] == [shape(line) for line in sample]
