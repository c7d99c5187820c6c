import csv
import importlib
import json
import os

import numpy as np
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
    assert len(rows) == 32 and set(rows[0]) == {"path", "cluster", "silhouette", "distance", "label", "outlier_score"}
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
    assert page.count('class="cluster') >= 4 and page.count("<figure class=\"tile") == 32
    plots = export(run_cache.path, format="plot", out=tmp_path / "out").paths
    assert [os.path.basename(p) for p in plots] == ["umap_scatter.png", "silhouette.png"]


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "xls"}, "unknown export format"), ({"format": "folders", "link": "move"}, "unknown --link"),
    ({"format": "html", "out": "-"}, "stdout"), ({"run": "run-7"}, "no run"),
])
def test_bad_export_options(run_cache, kwargs, message):
    with pytest.raises(UsageError, match=message):
        export(run_cache.path, **kwargs)


# --------------------------------------------------------------------------------------------------
# streaming: the row formats are written a block of rows at a time, the same text whatever the block


def test_row_formats_agree_with_each_other(run_cache, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out"
    for fmt in ("csv", "json", "jsonl", "parquet"):
        export(run_cache.path, format=fmt, out=out)
    rows = list(csv.DictReader(open(out / "assignments.csv")))
    lines = [json.loads(line) for line in open(out / "assignments.jsonl")]
    doc = json.load(open(out / "assignments.json"))
    table = pq.read_table(out / "assignments.parquet").to_pylist()
    assert len(rows) == len(lines) == len(doc["images"]) == len(table) == 32
    assert lines == doc["images"] == table
    assert [(r["path"], int(r["cluster"]), float(r["silhouette"]), float(r["distance"]), r["label"],
             float(r["outlier_score"])) for r in rows] == [tuple(line.values()) for line in lines]
    assert [json.loads(line) for line in open(out / "clusters.jsonl")] == doc["clusters"]
    export(run_cache.path, format="jsonl", out="-")
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == lines


def test_json_document_is_the_text_json_dumps_gives(run_cache, tmp_path):
    text = open(export(run_cache.path, format="json", out=tmp_path / "out").paths[0], encoding="utf-8").read()
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


def test_the_first_export_reports_reading_the_rows_and_their_graph_then_writing(run_cache, tmp_path):
    from imgclust.cache import READ_STAGE
    from imgclust.knn import KNN_STAGE

    def stages(out):
        seen = []
        export(run_cache.path, format="csv", out=tmp_path / out, progress=lambda *call: seen.append(call))
        return [stage for stage, _, _ in seen], {stage: (done, total) for stage, done, total in seen}

    order, last = stages("first")  # the outlier scores' graph is made, and stored
    assert order.index(READ_STAGE) < order.index(KNN_STAGE) < order.index("export csv")
    assert last == {READ_STAGE: (32, 32), KNN_STAGE: (32, 32), "export csv": (32, 32)}
    order, _ = stages("again")  # the stored graph: nothing is read
    assert set(order) == {"export csv"}


def test_block_size_changes_nothing_but_parquet_row_groups(run_cache, tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    ex = importlib.import_module("imgclust.export")  # the module (imgclust.export is also the function)

    formats = ("csv", "json", "jsonl", "parquet")
    for fmt in formats:
        export(run_cache.path, format=fmt, out=tmp_path / "whole")
    monkeypatch.setattr(ex, "BLOCK_ROWS", 5)
    progress = []
    for fmt in formats:
        export(run_cache.path, format=fmt, out=tmp_path / "blocks",
               progress=lambda stage, d, t: progress.append((d, t)) if stage == "export csv" else None)
    for name in ("assignments.csv", "clusters.csv", "assignments.json", "assignments.jsonl"):
        assert (tmp_path / "blocks" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    blocks = pq.ParquetFile(tmp_path / "blocks" / "assignments.parquet")
    assert blocks.metadata.num_row_groups == 7 and pq.ParquetFile(tmp_path / "whole" / "assignments.parquet").metadata.num_row_groups == 1
    assert blocks.read().equals(pq.read_table(tmp_path / "whole" / "assignments.parquet"))
    assert progress[:7] == [(5, 32), (10, 32), (15, 32), (20, 32), (25, 32), (30, 32), (32, 32)]


def test_parquet_schema_is_fixed_without_labels_or_silhouettes(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from imgclust.export._records import RunTable

    table = RunTable(np.array(["a.jpg", "b.jpg"], dtype=object), [0, -1], [np.nan, np.nan], [0.5, 1.5])
    assert list(table.rows()) == [("a.jpg", 0, None, 0.5, None, None), ("b.jpg", -1, None, 1.5, None, None)]
    cache = blob_cache(tmp_path / "one.h5", n_per=6, centers=1)
    cluster(cache.path, n_clusters=1, reduction="none")  # one cluster: every silhouette undefined
    written = pq.read_table(export(cache.path, format="parquet", out=tmp_path / "out").paths[0])
    assert [str(t) for t in written.schema.types] == ["string", "int64", "double", "double", "string", "double"]
    assert written.column("silhouette").null_count == 6


def test_html_per_cluster_bounds_the_page(run_cache, tmp_path):
    page = open(export(run_cache.path, format="html", out=tmp_path / "out", html_per_cluster=3).paths[0]).read()
    assert page.count("<figure class=\"tile") == 12 and page.count("and 5 more") == 4
    # the 12 shown, and the map's thumbnails: every point of a run under MAP_THUMBS points (32 here)
    assert len(list((tmp_path / "out" / "gallery" / "thumbs").iterdir())) == 32
    with pytest.raises(UsageError, match="--html-per-cluster"):
        export(run_cache.path, format="html", out=tmp_path / "out2", html_per_cluster=0)


def test_plot_draws_a_sample_above_its_limit(run_cache, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    ex = importlib.import_module("imgclust.export")  # the module (imgclust.export is also the function)

    drawn = []
    real = ex.embed_2d
    monkeypatch.setattr(ex, "embed_2d", lambda X, seed=0: drawn.append(len(X)) or real(X, seed))
    monkeypatch.setattr(ex, "PLOT_MAX_POINTS", 20)
    export(run_cache.path, format="plot", out=tmp_path / "out")
    assert drawn == [20]
    assert list(ex.plot_sample(32, 20)) == list(ex.plot_sample(32, 20)) and len(set(ex.plot_sample(32, 20))) == 20
    assert list(ex.plot_sample(10, 20)) == list(range(10))


def test_exports_carry_each_images_outlier_score(run_cache, tmp_path):
    """The column is imgclust.outliers' score of each row, in every row format."""
    import pyarrow.parquet as pq

    from imgclust.outliers import find_outliers

    expected = find_outliers(run_cache.path).scores
    export(run_cache.path, format="csv", out=tmp_path / "csv")
    export(run_cache.path, format="parquet", out=tmp_path / "pq")
    rows = list(csv.DictReader(open(tmp_path / "csv" / "assignments.csv")))
    np.testing.assert_allclose([float(r["outlier_score"]) for r in rows], expected)
    np.testing.assert_allclose(pq.read_table(tmp_path / "pq" / "assignments.parquet")["outlier_score"].to_numpy(), expected)
    assert np.median(expected) == pytest.approx(1.0)


def test_an_export_whose_outliers_do_not_fit_leaves_the_column_empty_and_says_why(run_cache, tmp_path, monkeypatch):
    """No stored graph and raw embeddings over the budget: the export still writes every file, with a warning,
    an empty outlier_score column and no duplicates section, instead of stopping after its scoring."""
    import imgclust.clusterers._base as base

    monkeypatch.setattr(base, "available_memory_bytes", lambda: 64)  # 32 bytes of budget for 32 rows
    with pytest.warns(UserWarning, match=r"outlier scores of '.*' need its 32 embeddings.*outlier_score column is left empty"):
        export(run_cache.path, format="csv", out=tmp_path / "csv")
    rows = list(csv.DictReader(open(tmp_path / "csv" / "assignments.csv")))
    assert len(rows) == 32 and {r["outlier_score"] for r in rows} <= {"", "nan"}
    with pytest.warns(UserWarning, match="no duplicates section"):
        export(run_cache.path, format="html", out=tmp_path / "html")
    assert 'id="duplicates"' not in (tmp_path / "html" / "gallery" / "index.html").read_text("utf-8")
