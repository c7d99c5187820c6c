import csv
import json
import os

import pytest

from imgclust.cluster import cluster
from imgclust.errors import UsageError
from imgclust.export import export

from .stage_fixtures import blob_cache


@pytest.fixture
def run_cache(tmp_path):
    cache = blob_cache(tmp_path / "blobs.h5", n_per=8, files_dir=tmp_path / "images")
    cluster(cache.path, n_clusters=4, reduction="none")
    return cache


def test_csv_has_one_row_per_image_and_a_cluster_summary(run_cache, tmp_path):
    result = export(run_cache.path, format="csv", out=tmp_path / "out")
    rows = list(csv.DictReader(open(result.paths[0])))
    assert len(rows) == 32 and set(rows[0]) == {"path", "cluster", "silhouette", "distance", "label"}
    assert all(float(r["silhouette"]) > 0.5 for r in rows)
    clusters = list(csv.DictReader(open(result.paths[1])))
    assert sorted(int(c["size"]) for c in clusters) == [8, 8, 8, 8]
    for c in clusters:  # the representative is the member nearest the centre
        members = [r for r in rows if r["cluster"] == c["cluster"]]
        nearest = min(members, key=lambda r: float(r["distance"]))
        assert c["representative"] == nearest["path"]
        assert len(json.loads(c["label_counts"])) == 1


def test_json_and_stdout(run_cache, tmp_path, capsys):
    doc = json.load(open(export(run_cache.path, format="json", out=tmp_path / "out").paths[0]))
    assert len(doc["images"]) == 32 and len(doc["clusters"]) == 4 and doc["scores"]["ami"] == pytest.approx(1.0)
    export(run_cache.path, format="csv", out="-")
    assert capsys.readouterr().out.count("\n") == 33


def test_parquet(run_cache, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    result = export(run_cache.path, format="parquet", out=tmp_path / "out")
    assert pq.read_table(result.paths[0]).num_rows == 32 and pq.read_table(result.paths[1]).num_rows == 4


def test_refuses_to_overwrite_without_force(run_cache, tmp_path):
    export(run_cache.path, format="csv", out=tmp_path / "out")
    before = (tmp_path / "out" / "assignments.csv").read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        export(run_cache.path, format="csv", out=tmp_path / "out")
    assert (tmp_path / "out" / "assignments.csv").read_bytes() == before
    export(run_cache.path, format="csv", out=tmp_path / "out", force=True)


@pytest.mark.parametrize("link", ["symlink", "hardlink", "copy"])
def test_cluster_folders_never_touch_the_originals(run_cache, tmp_path, link):
    originals = {p: p.read_bytes() for p in (tmp_path / "images").iterdir()}
    export(run_cache.path, format="folders", out=tmp_path / "out", link=link)
    made = sorted((tmp_path / "out" / "clusters").rglob("*.png"))
    assert len(made) == 32 and len(list((tmp_path / "out" / "clusters").iterdir())) == 4
    assert all(p.is_symlink() == (link == "symlink") for p in made)
    if link == "hardlink":
        assert all(os.stat(p).st_nlink == 2 for p in made)
    assert {p: p.read_bytes() for p in (tmp_path / "images").iterdir()} == originals
    with pytest.raises(UsageError, match="already exists"):
        export(run_cache.path, format="folders", out=tmp_path / "out", link=link)


def test_html_and_plot(run_cache, tmp_path):
    html = export(run_cache.path, format="html", out=tmp_path / "out").paths[0]
    page = open(html).read()
    assert page.count('class="cluster') >= 4 and page.count("<img") == 32
    plots = export(run_cache.path, format="plot", out=tmp_path / "out").paths
    assert [os.path.basename(p) for p in plots] == ["umap_scatter.png", "silhouette.png"]


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "xls"}, "unknown export format"), ({"format": "folders", "link": "move"}, "unknown --link"),
    ({"format": "html", "out": "-"}, "stdout"), ({"run": "run-7"}, "no run"),
])
def test_bad_export_options(run_cache, kwargs, message):
    with pytest.raises(UsageError, match=message):
        export(run_cache.path, **kwargs)
