"""Every command through Typer's runner and as a subprocess: results, --json, error shape, exit codes."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from imgclust.cli import app

from .conftest import TINY_ENCODER
from .stage_fixtures import blob_cache

runner = CliRunner()
TINY = ["--encoder", TINY_ENCODER, "--weights", "random", "--device", "cpu", "--workers", "0"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def cache(tmp_path):
    return blob_cache(tmp_path / "blobs.h5", n_per=10, files_dir=tmp_path / "images").path


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("embed", "reduce", "cluster", "score", "export", "encoders", "methods", "info"):
        assert command in result.output


def _commands(command, path=("imgclust",)):
    yield path, command
    for name in getattr(command, "list_commands", lambda ctx: [])(None):
        yield from _commands(command.commands[name], (*path, name))


def test_no_help_text_loses_a_bracketed_word_to_rich_markup():
    """Typer renders help as rich markup, which drops "[default: 24]" or the "[ray]" of an install hint."""
    import re

    import typer.main
    from rich.text import Text

    lost = []
    for path, command in _commands(typer.main.get_command(app)):
        for name, text in [("help", command.help or "")] + [(p.name, getattr(p, "help", None) or "") for p in command.params]:
            lost += [f"{' '.join(path)} {name}: {m.group()}" for m in re.finditer(r"(?<!\\)\[[^\]\n]*\]", text)
                     if Text.from_markup(m.group()).plain != m.group()]
    assert not lost


def test_help_shows_the_defaults_and_install_hints_it_names():
    def words(*args):  # the help's words, without the panels' borders or the wrapping
        shown = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"}).output
        return " ".join(shown.replace("│", " ").split())

    assert "(default: csv,json,parquet,folders,html,plot)" in words("cluster")
    assert 'pip install "imgclust[ray]"' in words("embed")


def test_embed_json_summary_and_rerun(image_folder, tmp_path):
    first = invoke("embed", image_folder, "--cache", tmp_path / "c.h5", "--json", *TINY)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["embedded"] == 12
    again = invoke("embed", image_folder, "--cache", tmp_path / "c.h5", *TINY)
    assert "nothing new to embed" in again.stdout


def test_cache_stages_end_to_end(cache, tmp_path):
    assert invoke("reduce", cache, "--dims", "5").exit_code == 0
    clustered = invoke("cluster", cache, "-k", "4", "--json")
    assert clustered.exit_code == 0 and json.loads(clustered.stdout)["n_clusters"] == 4
    scored = json.loads(invoke("score", cache, "--json").stdout)
    assert scored["scores"]["ami"] == pytest.approx(1.0)
    table = invoke("score", cache, "--per-cluster")
    assert "AMI" in table.stdout and "silhouette" in table.stdout
    markdown = invoke("score", cache, "--markdown").stdout
    assert "| AMI | 1.0000 |" in markdown and "| harmonic mean of pairwise and BCubed F (ES) | 1.0000 |" in markdown
    exported = invoke("export", cache, "--format", "csv", "--out", tmp_path / "out", "--json")
    assert exported.exit_code == 0 and len(json.loads(exported.stdout)["paths"]) == 2
    info = json.loads(invoke("info", cache, "--json").stdout)
    assert info["encoders"][0]["n_images"] == 40 and "run-1" in info["encoders"][0]["runs"]


def test_export_several_formats_at_once_with_a_bounded_gallery(cache, tmp_path):
    from imgclust.cluster import cluster

    cluster(cache, n_clusters=4, reduction="none")
    done = invoke("export", cache, "--format", "csv,jsonl,html", "--html-per-cluster", "3", "--out", tmp_path / "out", "--json")
    assert done.exit_code == 0, done.output
    assert [e["format"] for e in json.loads(done.stdout)["exports"]] == ["csv", "jsonl", "html"]
    assert (tmp_path / "out" / "assignments.jsonl").read_text().count("\n") == 40
    page = (tmp_path / "out" / "gallery" / "index.html").read_text()
    assert page.count("<figure class=\"tile") == 12 and page.count("and 7 more") == 4
    again = invoke("export", cache, "--format", "csv,html", "--out", tmp_path / "out")  # refused before scoring
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert invoke("export", cache, "--format", "csv,json", "--out", "-").exit_code == 2
    assert invoke("export", cache, "--format", "csv,xls").exit_code == 2
    refused = invoke("cluster", cache, "-k", "4", "--html-per-cluster", "5")
    assert refused.exit_code == 2 and "--html-per-cluster applies when clustering folders" in refused.stderr


def test_auto_k_range_summary_and_candidates(cache):
    # 4 blobs searched in 2:3: the pick is at the edge, and the doubt is said on stdout and in the JSON
    plain = invoke("cluster", cache, "-k", "auto", "--k-range", "2:3")
    assert plain.exit_code == 0, plain.output
    assert "K chosen    no clear number of clusters; candidates 3, 2" in plain.stdout
    assert "no confident K (edge)" in plain.stderr
    run = json.loads(invoke("cluster", cache, "-k", "auto", "--k-range", "2:8", "--json").stdout)
    sel = run["selection"]
    assert run["n_clusters"] == sel["n_clusters"] == 4 and sel["k_range"] == [2, 8]
    assert sel["confident"] and len(sel["candidates"]) == 3 and sel["candidates"][0]["k"] == 4
    assert {"silhouette", "merge_gap"} <= set(sel["candidates"][0]) and sel["space"] == run["space"]
    markdown = invoke("score", cache, "--markdown").stdout
    assert "| K chosen without labels | 4 (silhouette-tree, searched 2:8) |" in markdown
    assert "| K candidate 1 | 4: silhouette " in markdown and "| K candidate 3 |" in markdown
    for bad, message in ((["--k-range", "5:2"], "--k-range must be MIN:MAX"),
                         (["-k", "3", "--k-range", "2:9"], "--k-range is the range searched")):
        result = invoke("cluster", cache, *bad)
        assert result.exit_code == 2 and message in result.stderr


def test_score_reports_both_silhouette_conventions_with_noise(cache):
    assert invoke("cluster", cache, "--method", "dbscan", "--param", "eps_quantile=0.5", "--reduction", "none").exit_code == 0
    scored = json.loads(invoke("score", cache, "--json").stdout)["scores"]
    assert scored["n_noise"] > 0
    assert scored["silhouette_noise_as_cluster"] < scored["silhouette"]
    markdown = invoke("score", cache, "--markdown").stdout
    assert "| silhouette, noise as one cluster (ZS) (raw embeddings, euclidean) |" in markdown
    assert "silhouette, noise as one cluster" in invoke("score", cache).stdout


def test_listings():
    encoders = json.loads(invoke("encoders", "--json").stdout)
    assert any(e["name"] == "effnet-lite0" and e["available_offline"] for e in encoders)
    methods = json.loads(invoke("methods", "--json").stdout)
    assert {"agglomerative", "kmeans", "hdbscan"} <= {m["name"] for m in methods}
    assert "linkage" in invoke("methods", "agglomerative").stdout


@pytest.mark.parametrize("args, code, message", [
    (["embed", "/no/such/folder"], 2, "path not found"),
    (["embed", "{images}", "--encoder", "nope"], 2, "unknown encoder"),
    (["cluster", "{cache}", "--method", "nope"], 2, "unknown clustering method"),
    (["cluster", "{cache}", "-k", "0"], 2, "--n-clusters"),
    (["cluster", "{cache}", "-k", "4", "--param", "linkage=sideways"], 2, "linkage"),
    (["score", "{cache}", "--run", "run-5"], 2, "no clustering runs"),
    (["score", "{clustered}", "--run", "run-5"], 2, "no run 'run-5'"),
    (["score", "/no/cache.h5"], 2, "cache not found"),
    (["export", "{cache}", "--format", "xls"], 2, "unknown export format"),
])
def test_errors_are_one_line_with_a_hint_and_json_shape(cache, tmp_path, args, code, message):
    clustered = ""
    if any("{clustered}" in a for a in args):
        from imgclust.cluster import cluster

        cluster(cache, n_clusters=4, reduction="none")
        clustered = cache
    args = [a.format(cache=cache, images=tmp_path / "images", clustered=clustered) for a in args]
    plain = invoke(*args)
    assert plain.exit_code == code, plain.output
    assert message in plain.stderr and "Traceback" not in plain.output
    assert plain.stderr.startswith("error: ") and "hint: " in plain.stderr
    as_json = invoke(*args, "--json")
    error = json.loads(as_json.stdout)["error"]
    assert as_json.exit_code == code and message in error["message"] and error["hint"]


def test_subprocess_exit_codes_and_streams(cache, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "imgclust", "cluster", str(cache), "-k", "4"], capture_output=True, text=True)
    assert ok.returncode == 0 and "run-1" in ok.stdout and "score it" in ok.stderr
    usage = subprocess.run([sys.executable, "-m", "imgclust", "score", str(tmp_path / "none.h5")], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stdout == "" and usage.stderr.startswith("error: cache not found")
    bad_option = subprocess.run([sys.executable, "-m", "imgclust", "embed", "--no-such-option"], capture_output=True, text=True)
    assert bad_option.returncode == 2 and bad_option.stdout == "" and "No such option: --no-such-option" in bad_option.stderr
    bad_json = subprocess.run([sys.executable, "-m", "imgclust", "embed", "--no-such-option", "--json"], capture_output=True, text=True)
    assert bad_json.returncode == 2 and json.loads(bad_json.stdout)["error"] == {
        "code": "usage", "message": "No such option: --no-such-option", "hint": "see 'imgclust embed --help'"}
    debug = subprocess.run([sys.executable, "-m", "imgclust", "score", str(tmp_path / "none.h5"), "--debug"],
                           capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_trained_method_reports_its_epochs_on_stderr(cache):
    result = invoke("cluster", cache, "--method", "scan", "-k", "4", "--param", "epochs=3", "--param", "hidden=8")
    assert result.exit_code == 0 and "run-1: scan found" in result.stdout
    assert "training scan" in result.stderr and "3/3" in result.stderr and "loss" in result.stderr
    verbose = invoke("cluster", cache, "--method", "scan", "-k", "4", "--param", "epochs=3", "--param", "hidden=8", "-v")
    assert [line.split(":")[0] for line in verbose.stderr.splitlines() if line.startswith("epoch ")] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    quiet = invoke("cluster", cache, "--method", "scan", "-k", "4", "--param", "epochs=3", "--param", "hidden=8", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_library_warnings_are_one_line_on_stderr(cache):
    result = invoke("cluster", cache, "--method", "scan", "-k", "4", "--param", "epochs=1", "--param", "k=60")
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert result.exit_code == 0 and warning == ["warning: scan: k=60 is more than n_samples-1=39; using 39"]
    assert "UserWarning" not in result.stderr


def test_locked_cache_is_a_runtime_failure(image_folder, tmp_path):
    from imgclust.cache import Cache

    target = Cache(tmp_path / "c.h5")
    with target.writer():
        result = invoke("embed", image_folder, "--cache", target.path, *TINY)
    assert result.exit_code == 1 and "another imgclust process" in result.stderr


def test_methods_show_the_input_space_table():
    methods = {m["name"]: m for m in json.loads(invoke("methods", "--json").stdout)}
    assert methods["agglomerative"]["space"] == {"default": "UMAP 50-d", "by_encoder": {"mae-vitb16": "PCA (98% of variance)"}}
    assert methods["affinity"]["space"]["default"] == "PCA 10-d"
    assert methods["temi"]["space"]["default"] == "raw embeddings"
    assert "PCA 10-d" in invoke("methods", "affinity").stdout
    assert "micro_clusters" in methods["agglomerative"]["at_scale"] and methods["kmeans"]["at_scale"] is None
    assert "at scale: the exact tree needs" in invoke("methods", "agglomerative").stdout


def test_embed_features_option(image_folder, tmp_path):
    vit = ["--encoder", "timm:test_vit", "--weights", "random", "--device", "cpu", "--workers", "0"]
    done = invoke("embed", image_folder, "--cache", tmp_path / "v.h5", "--features", "cls+patchmean", "--json", *vit)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["encoder"] == "timm:test_vit+cls+patchmean"
    refused = invoke("embed", image_folder, "--cache", tmp_path / "e.h5", "--features", "cls+patchmean", *TINY)
    assert refused.exit_code == 2 and "needs a ViT" in refused.output
