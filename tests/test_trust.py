"""Trust (issue 10): devices are checked, non-finite embeddings never reach the cache, decodes in threads
keep their own pixel limits."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclust.cache import Cache
from imgclust.decode import DecodeError, load_rgb
from imgclust.embed import embed
from imgclust.encoders import NON_FINITE_REASON, Encoder, EncoderSpec, available_devices, best_device
from imgclust.errors import UsageError
from imgclust.runtimes import Pending
from imgclust.decode import Preprocess

from .conftest import TINY_ENCODER, make_image


# -- devices ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["foo", "cuda:7", "tpu"])
def test_unknown_or_absent_device_is_a_usage_error_listing_the_devices_here(name):
    with pytest.raises(UsageError) as raised:
        best_device(name)
    assert f"--device {name}" in raised.value.message and "cpu" in raised.value.message
    assert set(available_devices()) <= set(raised.value.message.replace(",", " ").replace(")", " ").split())


def test_cuda_or_mps_where_there_is_none_is_refused():
    for name in ("cuda", "mps"):
        if name in " ".join(available_devices()):
            continue
        with pytest.raises(UsageError, match="no such device"):
            best_device(name)
    assert best_device("cpu") == "cpu" and best_device("CPU") == "cpu"


def test_device_reaches_the_trained_heads():
    from imgclust.clusterers._heads import resolve_device

    assert str(resolve_device("cpu")) == "cpu"
    with pytest.raises(UsageError, match="no such device"):
        resolve_device("foo")


def test_cli_device_foo_exits_2_with_one_line(image_folder, tmp_path):
    from typer.testing import CliRunner

    from imgclust.cli import app

    result = CliRunner().invoke(app, ["embed", str(image_folder), "--encoder", TINY_ENCODER, "--weights", "random",
                                      "--cache", str(tmp_path / "c.h5"), "--device", "foo"])
    assert result.exit_code == 2
    assert "error: --device foo: this machine has no such device" in result.output
    assert "Traceback" not in result.output


# -- non-finite embeddings ------------------------------------------------------------------------


class _Scale:
    """A model whose output overflows float16 (max 65504) for bright inputs but not in float32."""

    def __new__(cls, factor: float, nan_on_negative: bool = False):
        import torch

        class Model(torch.nn.Module):
            def forward(self, x):
                out = x.mean(dim=(2, 3)) * factor
                if nan_on_negative:
                    out = torch.where(out < 0, torch.full_like(out, float("nan")), out)
                return out

        return Model()


def _half_encoder(factor: float, nan_on_negative: bool = False) -> Encoder:
    """An encoder whose runner computes in float16 (as the torch runtime does on a GPU), on the CPU."""
    import torch

    from imgclust.runtimes import TorchRunner

    spec = EncoderSpec("scale", "timm", "scale", "none", 3, Preprocess(8, (0.5,) * 3, (0.5,) * 3))
    enc = Encoder(spec, _Scale(factor, nan_on_negative), "cpu", runtime="torch", batch_size=4)
    enc.runner = TorchRunner(enc.runner.network, "cpu", dtype=torch.float16)
    return enc


def test_a_half_precision_overflow_is_recomputed_in_float32():
    enc = _half_encoder(1e5)
    batch = np.full((2, 8, 8, 3), 255, np.uint8)  # normalised to 1.0: 1e5 overflows float16
    batch[1] = 128  # normalised to 1/255
    assert not np.isfinite(enc.encode(batch)).all()  # the half-precision result overflows
    vectors, finite, recomputed = enc.encode_finite(batch)
    assert recomputed and finite.all() and np.allclose(vectors[0], 1e5)
    assert enc.runner.dtype == torch_float16() and enc.runner.reduced_precision  # back to half afterwards


def torch_float16():
    import torch

    return torch.float16


def test_rows_still_not_finite_in_float32_are_marked():
    enc = _half_encoder(1.0, nan_on_negative=True)
    batch = np.full((3, 8, 8, 3), 255, np.uint8)
    batch[2] = 0  # normalised to -1: NaN
    _, finite, recomputed = enc.encode_finite(batch)
    assert recomputed and finite.tolist() == [True, True, False]


def test_embed_records_non_finite_rows_as_failures_and_never_stores_them(image_folder, tmp_path, monkeypatch):
    import sys

    embed_module = sys.modules["imgclust.embed"]  # (the package exports a function of the same name)
    real = embed_module.create_encoder

    def nan_for_blue(*args, **kwargs):
        enc = real(*args, **kwargs)
        submit = enc.submit

        def poisoned(images):
            pending = submit(images)
            x = np.asarray(images, dtype=np.float32)
            blue = x[..., 2].mean(axis=(1, 2)) > x[..., 0].mean(axis=(1, 2))  # the blue_things images

            def result():
                out = pending.result().copy()
                out[blue] = np.nan
                return out

            return Pending(result)

        enc.submit = poisoned
        return enc

    monkeypatch.setattr(embed_module, "create_encoder", nan_for_blue)
    summary = embed([image_folder], encoder=TINY_ENCODER, cache=tmp_path / "c.h5", weights="random", device="cpu",
                    batch_size=4, workers=0)
    assert summary.embedded == 6 and summary.failed == 6
    cache = Cache(tmp_path / "c.h5")
    assert np.isfinite(cache.read_embeddings(TINY_ENCODER)).all()
    failures = cache.read_failures(TINY_ENCODER)
    assert len(failures) == 6 and set(map(str, failures.reasons)) == {NON_FINITE_REASON}
    assert all("blue_things" in str(p) for p in failures.paths)


# -- the pixel limit is per call, also in threads -----------------------------------------------------


def test_concurrent_decodes_keep_their_own_pixel_limits(tmp_path, monkeypatch):
    big = make_image(tmp_path / "big.png", size=(100, 100))  # 10,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)  # Pillow alone would refuse it (> 2 x 2,000)
    outcomes = {"strict": [], "lifted": []}

    def decode_many(kind: str, max_pixels):
        for _ in range(150):
            try:
                load_rgb(str(big), max_pixels=max_pixels)
                outcomes[kind].append("ok")
            except DecodeError as exc:
                outcomes[kind].append(str(exc))

    threads = [threading.Thread(target=decode_many, args=("strict", 5_000)),
               threading.Thread(target=decode_many, args=("lifted", None))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes["lifted"] == ["ok"] * 150
    assert len(outcomes["strict"]) == 150 and all("over the limit of 5000" in o for o in outcomes["strict"])
    assert Image.MAX_IMAGE_PIXELS == 2_000  # Pillow's global is as it was


# -- 1. nothing outside what imgclust wrote is ever removed -------------------------------------

from typer.testing import CliRunner  # noqa: E402

from imgclust.cli import app  # noqa: E402
from imgclust.cluster import cluster  # noqa: E402
from imgclust.export import export  # noqa: E402
from imgclust.manifest import MANIFEST_NAME, Manifest  # noqa: E402
from imgclust.pipeline import run_pipeline  # noqa: E402

from .stage_fixtures import blob_cache  # noqa: E402

TINY_OPTIONS = ["--encoder", TINY_ENCODER, "--weights", "random", "--device", "cpu", "--workers", "0", "-k", "2"]


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_one_step_command_keeps_the_users_own_files_in_out_clusters(image_folder, tmp_path):
    out = tmp_path / "out"
    mine = out / "clusters" / "my-notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    result = _cli("cluster", image_folder, "--out", out, "--formats", "csv,folders", *TINY_OPTIONS)
    assert result.exit_code == 2 and mine.read_text() == "mine"
    assert f"{mine} was not written by imgclust" in result.stderr
    assert not (out / "imgclust-cache.h5").exists()  # refused before embedding, not after


def test_forced_folders_export_removes_only_its_own_links(image_folder, tmp_path):
    out = tmp_path / "out"
    assert _cli("cluster", image_folder, "--out", out, "--formats", "folders", *TINY_OPTIONS).exit_code == 0
    links = sorted((out / "clusters").rglob("*.*"))
    assert len(links) == 12 and all(Manifest(out).owns(p) for p in links)
    assert _cli("cluster", image_folder, "--out", out, "--formats", "folders", "--force", *TINY_OPTIONS).exit_code == 0
    stranger = next((out / "clusters").iterdir()) / "added-by-hand.jpg"
    stranger.write_bytes(b"x")
    refused = _cli("cluster", image_folder, "--out", out, "--formats", "folders", "--force", *TINY_OPTIONS)
    assert refused.exit_code == 2 and stranger.exists() and "added-by-hand.jpg was not written by imgclust" in refused.stderr
    assert all(p.exists() or p.is_symlink() for p in links)


def test_export_records_files_in_the_manifest_before_writing_them(tmp_path):
    cache = blob_cache(tmp_path / "b.h5", n_per=5, files_dir=tmp_path / "images")
    cluster(cache.path, n_clusters=4, reduction="none")
    export(cache.path, format="csv", out=tmp_path / "e")
    listed = json_entries(tmp_path / "e")
    assert {"assignments.csv", "clusters.csv"} <= listed
    (tmp_path / "e" / "assignments.json").write_text("{}")  # the user's file where json would go
    with pytest.raises(UsageError, match="assignments.json was not written by imgclust"):
        export(cache.path, format="json", out=tmp_path / "e", force=True)
    assert (tmp_path / "e" / "assignments.json").read_text() == "{}"


def json_entries(folder):
    import json

    return set(json.loads((folder / MANIFEST_NAME).read_text())["written"])


# -- 2. outputs are never inputs ------------------------------------------------------------------


def test_cluster_dot_inside_the_photos_puts_results_beside_them_and_a_rerun_finds_the_same_images(image_folder, monkeypatch):
    monkeypatch.chdir(image_folder)
    first = _cli("cluster", ".", "--formats", "csv,folders,html", "--json", *TINY_OPTIONS)
    assert first.exit_code == 0, first.output
    import json

    doc = json.loads(first.stdout)
    out = image_folder.parent / "photos-clusters"
    assert doc["out_moved"] and Path(doc["out"]).resolve() == out and (out / "clusters").is_dir()
    assert not any(image_folder.glob("*-clusters"))
    # Results placed inside the input by hand (an older version did this) are still not inputs.
    inside = image_folder / "old-results"
    (inside / "gallery" / "thumbs").mkdir(parents=True)
    make_image(inside / "gallery" / "thumbs" / "t.jpg")
    Manifest(inside).record([inside / "gallery" / "thumbs" / "t.jpg"])
    again = _cli("cluster", ".", "--formats", "csv", "--force", "--json", *TINY_OPTIONS)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["embed"]["images"] == 12


def test_discovery_skips_the_output_folder_and_files_a_manifest_lists(image_folder, tmp_path):
    from imgclust.discover import discover

    out = image_folder / "results"
    make_image(out / "x.jpg")
    assert len(discover([image_folder], exclude=[out])) == 12
    make_image(image_folder / "thumb.jpg")
    Manifest(image_folder).record([image_folder / "thumb.jpg"])
    assert len(discover([image_folder])) == 13  # results/x.jpg (no manifest there) is an input; thumb.jpg is not
    assert not any(f.path.endswith("thumb.jpg") for f in discover([f"{image_folder}/**/*.jpg"]))


def test_out_equal_to_an_input_folder_is_refused(image_folder):
    result = _cli("cluster", image_folder, "--out", image_folder, *TINY_OPTIONS)
    assert result.exit_code == 2 and "is an input folder" in result.stderr


# -- 4. every option acts or is refused -----------------------------------------------------------


@pytest.mark.parametrize("option", [["--out", "x"], ["--force"], ["--formats", "csv"], ["--link", "copy"],
                                    ["--labels", "folder"], ["--weights", "random"], ["--batch-size", "8"],
                                    ["--workers", "1"], ["--max-pixels", "10"], ["--split", "train"]])
def test_folder_only_options_are_refused_with_a_cache(tmp_path, option):
    cache = blob_cache(tmp_path / "b.h5", n_per=5)
    result = _cli("cluster", cache.path, "-k", "4", *option)
    assert result.exit_code == 2 and f"{option[0]} applies when clustering folders of images" in result.stderr


def test_device_with_a_method_that_runs_on_the_cpu_is_refused(tmp_path):
    cache = blob_cache(tmp_path / "b.h5", n_per=5)
    result = _cli("cluster", cache.path, "-k", "4", "--device", "cpu")
    assert result.exit_code == 2 and "--device does not apply to agglomerative" in result.stderr


def test_reduction_and_dims_act_on_folders(image_folder, tmp_path):
    result = run_pipeline([image_folder], tmp_path / "out", encoder=TINY_ENCODER, n_clusters=2, reduction="pca", dims=3,
                          formats=["csv"], device="cpu", embed_options={"weights": "random", "workers": 0})
    assert result.run.space.startswith("pca-n_components=3")


def test_n_clusters_omitted_means_auto_with_a_cache_as_with_folders(tmp_path):
    import json

    cache = blob_cache(tmp_path / "b.h5", n_per=10)
    doc = json.loads(_cli("cluster", cache.path, "--reduction", "none", "--json").stdout)
    assert doc["n_clusters_requested"] == "auto" and doc["selection"] is not None
    threshold = json.loads(_cli("cluster", cache.path, "--reduction", "none", "-k", "none", "--json").stdout)
    assert threshold["n_clusters_requested"] is None and "distance_threshold" in json.dumps(threshold["params"])


# -- 9. the space silhouette was measured in ------------------------------------------------------


def test_score_names_the_raw_space_of_a_trained_head_run(tmp_path):
    cache = blob_cache(tmp_path / "b.h5", n_per=10)
    cluster(cache.path, None, "scan", 4, {"epochs": 2, "hidden": 8})
    table = _cli("score", cache.path).stdout
    assert "silhouette (raw embeddings, euclidean)" in table and "UMAP" not in table


def test_score_names_the_umap_space(tmp_path):
    cache = blob_cache(tmp_path / "b.h5", n_per=10)
    cluster(cache.path, n_clusters=4, dims=5)
    assert "silhouette (UMAP 5-d, euclidean)" in _cli("score", cache.path).stdout


# -- 10. what a newcomer sees ---------------------------------------------------------------------


def test_install_hints_keep_their_brackets(image_folder, tmp_path, monkeypatch):
    import imgclust.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_available", lambda fmt: 'needs pyarrow: pip install "imgclust[parquet]"' if fmt == "parquet" else None)
    result = _cli("cluster", image_folder, "--out", tmp_path / "o", "--formats", "csv,parquet", *TINY_OPTIONS)
    assert result.exit_code == 0, result.output
    assert 'skipped parquet: needs pyarrow: pip install "imgclust[parquet]"' in result.stderr


def test_paths_with_brackets_print_as_they_are(tmp_path):
    cache = blob_cache(tmp_path / "[set] b.h5", n_per=5)
    result = _cli("embed", tmp_path / "none", "--cache", cache.path)
    assert "[set] b.h5" in _cli("info", cache.path).stdout and "\\[" not in _cli("info", cache.path).stdout
    assert result.exit_code == 2


def test_gallery_scales_tiny_images_up_pixelated_and_names_scores_for_people(tmp_path):
    from imgclust.export._html import write_html
    from imgclust.export._records import ClusterSummary, ImageRecord

    tiny = make_image(tmp_path / "digit.png", size=(8, 8))
    big = make_image(tmp_path / "photo.jpg", size=(300, 200))
    records = [ImageRecord(str(tiny), 0, 0.5, 0.0, None), ImageRecord(str(big), 0, 0.5, 1.0, None)]
    page = write_html(tmp_path / "g", records, [ClusterSummary(0, 2, 0.5, str(tiny), None)],
                      {"n_samples": 2, "bcubed_f": 0.5, "silhouette_space": "UMAP 50-d"}, "t").read_text()
    assert page.count('<img class="tiny"') == 1
    assert "<dt>BCubed F</dt>" in page and "<dt>images</dt>" in page and "<dt>silhouette measured in</dt>" in page
    assert "bcubed_f</dt>" not in page and "text-transform:uppercase;letter" not in page.split(".score dt")[1][:80]


def test_space_names_ignore_the_row_set_suffix_of_stored_reductions():
    from imgclust.score import space_name

    assert space_name("l2@544940fb") == "l2"
    assert space_name("umap-metric=euclidean-min_dist=0.0-n_components=50-n_neighbors=30-seed=0@0a1b2c3d") == "UMAP 50-d"
