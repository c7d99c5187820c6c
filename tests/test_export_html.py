"""The HTML report: page structure, thumbnails, escaping, and how it renders in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from imgclust.errors import ImgclustError, ParameterError, UsageError
from imgclust.export._html import write_html
from imgclust.export._records import ClusterSummary, ImageRecord

WEIRD_NAME = 'we<ird> & "name".png'
WEIRD_LABEL = "<b>bold</b> & co"


# --------------------------------------------------------------------------------------------------
# fixtures: real image files made with Pillow, and the records of a small run over them


def _save_rotated_jpeg(path: Path) -> None:
    """A 240x120 landscape JPEG whose EXIF says "rotate 90": it should show as portrait."""
    im = Image.new("RGB", (240, 120), (20, 160, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    im.save(path, "JPEG", exif=exif.tobytes())


@pytest.fixture
def run(tmp_path: Path):
    """(images dir, records, summaries, scores): 2 clusters + noise, 1 corrupt and 1 missing file."""
    d = tmp_path / "images"
    d.mkdir()
    Image.new("RGB", (300, 200), (220, 30, 30)).save(d / "red.jpg", "JPEG")
    Image.new("L", (200, 300), 128).save(d / "grey.jpg", "JPEG")
    _save_rotated_jpeg(d / "rotated.jpg")
    Image.new("RGBA", (150, 150), (0, 0, 255, 90)).save(d / "alpha.png")
    Image.new("RGB", (60, 40), (30, 30, 220)).save(d / "blue.png")  # smaller than any thumbnail
    Image.new("P", (90, 90), 3).save(d / "palette.gif")
    Image.new("RGB", (120, 80), (250, 200, 0)).save(d / WEIRD_NAME)
    Image.new("I;16", (64, 64), 40000).save(d / "deep16.png")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")

    p = lambda name: str(d / name)  # noqa: E731
    recs = [
        # cluster 0: "rotated" has a negative silhouette; distances set the order red, grey, alpha, rotated
        ImageRecord(p("rotated.jpg"), 0, -0.4, 3.0, "cat"),
        ImageRecord(p("red.jpg"), 0, 0.8, 0.5, "cat"),
        ImageRecord(p("alpha.png"), 0, 0.5, 2.0, "dog"),
        ImageRecord(p("grey.jpg"), 0, 0.6, 1.0, "cat"),
        # cluster 1: "corrupt" is unreadable and has a (mildly) negative silhouette
        ImageRecord(p("blue.png"), 1, 0.7, 0.2, WEIRD_LABEL),
        ImageRecord(p("palette.gif"), 1, 0.2, 1.5, WEIRD_LABEL),
        ImageRecord(p(WEIRD_NAME), 1, 0.3, 0.9, WEIRD_LABEL),
        ImageRecord(p("corrupt.jpg"), 1, -0.1, 2.5, "dog"),
        # noise: one 16-bit image and one file that does not exist
        ImageRecord(p("deep16.png"), -1, None, 0.0, "cat"),
        ImageRecord(p("missing.jpg"), -1, None, 0.0, None),
    ]
    sums = [
        ClusterSummary(0, 4, 0.375, p("red.jpg"), {"cat": 3, "dog": 1}),
        ClusterSummary(1, 4, 0.275, p("blue.png"), {WEIRD_LABEL: 3, "dog": 1}),
    ]
    scores = {"n_images": 10, "n_clusters": 2, "n_noise": 2, "silhouette": 0.3, "ami": 0.51234, "accuracy": None}
    return d, recs, sums, scores


# --------------------------------------------------------------------------------------------------
# a small HTML reader: sections, tiles, images, links


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.sections: list[dict] = []
        self.nav_links: list[str] = []
        self.all_links: list[str] = []
        self.scripts_src: list[str] = []
        self.stylesheets: list[str] = []
        self.title = ""
        self.h1 = ""
        self.scores: dict[str, str] = {}
        self._in: list[str] = []
        self._tile: dict | None = None
        self._score_key: str | None = None
        self._nav = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag in ("title", "h1", "dd", "dt", "figcaption"):
            self._in.append(tag)
        if tag == "nav":
            self._nav = True
        if tag == "script" and a.get("src"):
            self.scripts_src.append(a["src"])
        if tag == "link" and "stylesheet" in (a.get("rel") or ""):
            self.stylesheets.append(a.get("href", ""))
        if tag == "section":
            self.sections.append({**a, "classes": cls, "tiles": [], "text": ""})
        if tag == "div" and "score" in cls:
            self._score_key = a.get("data-score")
        if tag == "figure" and "tile" in cls:
            self._tile = {"classes": cls, "img": None, "href": None, "badges": [], "placeholder": False}
            self.sections[-1]["tiles"].append(self._tile)
        if tag == "a" and "href" in a:
            self.all_links.append(a["href"])
            if self._nav:
                self.nav_links.append(a["href"])
            if self._tile is not None and self._tile["href"] is None:
                self._tile["href"] = a["href"]
                self._tile["title"] = a.get("title")
        if tag == "img":
            if self._tile is not None:
                self._tile["img"] = a
        if tag == "span" and self._tile is not None:
            if "badge" in cls:
                self._tile["badges"].append(cls[-1])
            if "ph" in cls:
                self._tile["placeholder"] = True

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()
        if tag == "nav":
            self._nav = False
        if tag == "figure":
            self._tile = None

    def handle_data(self, data):
        if self.sections and self._tile is None:
            self.sections[-1]["text"] += data
        if not self._in:
            return
        where = self._in[-1]
        if where == "title":
            self.title += data
        elif where == "h1":
            self.h1 += data
        elif where == "dd" and self._score_key is not None:
            self.scores[self._score_key] = data

    def section(self, cluster: int) -> dict:
        (found,) = [s for s in self.sections if s.get("data-cluster") == str(cluster)]
        return found


def _tile_path(tile: dict) -> str:
    return tile["title"].split("\n")[0]


# --------------------------------------------------------------------------------------------------
# structure


def test_every_cluster_has_a_section_and_every_image_a_tile(run, tmp_path):
    d, recs, sums, scores = run
    out = tmp_path / "report"
    index = write_html(out, recs, sums, scores, "Run <1> & \"co\"", thumb_size=64)
    assert index == out / "index.html" and index.is_file()
    page = Page(index.read_text("utf-8"))

    assert [s["data-cluster"] for s in page.sections] == ["0", "1", "-1"]  # ids ascending, noise last
    assert [s["id"] for s in page.sections] == ["cluster-0", "cluster-1", "cluster-noise"]
    assert all("cluster" in s["classes"] for s in page.sections)
    assert "noise" in page.section(-1)["classes"] and "noise" in page.section(-1)["text"]
    assert page.nav_links == ["#cluster-0", "#cluster-1", "#cluster-noise"]

    tiles = [t for s in page.sections for t in s["tiles"]]
    assert sorted(_tile_path(t) for t in tiles) == sorted(r.path for r in recs)
    imgs = [t["img"] for t in tiles if t["img"] is not None]
    broken = sorted(os.path.basename(_tile_path(t)) for t in tiles if t["img"] is None)
    assert broken == ["corrupt.jpg", "missing.jpg"]  # a placeholder tile, not a crash
    assert all(t["placeholder"] and "broken" in t["classes"] for t in tiles if t["img"] is None)
    assert len(imgs) == len(recs) - 2

    for img in imgs:
        assert img["loading"] == "lazy"
        assert 0 < int(img["width"]) <= 64 and 0 < int(img["height"]) <= 64
        assert img["src"].startswith("thumbs/") and (out / img["src"]).is_file()
        assert img["alt"] in {r.path for r in recs}


def test_scores_table_and_title(run, tmp_path):
    d, recs, sums, scores = run
    text = write_html(tmp_path / "r", recs, sums, scores, 'Run <1> & "co"').read_text("utf-8")
    page = Page(text)
    assert page.title == page.h1 == 'Run <1> & "co"'
    assert "<1>" not in text
    assert page.scores == {
        "n_images": "10", "n_clusters": "2", "n_noise": "2",
        "silhouette": "0.300", "ami": "0.512", "accuracy": "\u2014",
    }  # fmt: skip


def test_images_ordered_nearest_centre_first_with_representative_marked(run, tmp_path):
    d, recs, sums, scores = run
    page = Page(write_html(tmp_path / "r", recs, sums, scores, "t").read_text("utf-8"))
    names = [os.path.basename(_tile_path(t)) for t in page.section(0)["tiles"]]
    assert names == ["red.jpg", "grey.jpg", "alpha.png", "rotated.jpg"]
    first = page.section(0)["tiles"][0]
    assert "rep" in first["classes"] and "rep" in first["badges"]
    assert sum("rep" in t["classes"] for s in page.sections for t in s["tiles"]) == 2


def test_outliers_marked_with_class_and_badge(run, tmp_path):
    d, recs, sums, scores = run

    def outliers(**kw):
        page = Page(write_html(tmp_path / "r", recs, sums, scores, "t", **kw).read_text("utf-8"))
        marked = []
        for s in page.sections:
            for t in s["tiles"]:
                assert ("outlier" in t["classes"]) == ("out" in t["badges"])  # a visible badge with the mark
                if "outlier" in t["classes"]:
                    marked.append(os.path.basename(_tile_path(t)))
        return sorted(marked)

    # 8 silhouettes; the lowest 5% rounds up to one image: the most negative one
    assert outliers() == ["rotated.jpg"]
    # every negative silhouette, never noise and never a positive one
    assert outliers(outlier_quantile=1.0) == ["corrupt.jpg", "rotated.jpg"]
    assert outliers(outlier_quantile=0.0) == []


def test_label_mix_shown_and_escaped(run, tmp_path):
    d, recs, sums, scores = run
    text = write_html(tmp_path / "r", recs, sums, scores, "t").read_text("utf-8")
    assert WEIRD_LABEL not in text
    assert html.escape(WEIRD_LABEL) in text
    page = Page(text)
    assert "cat" in page.section(0)["text"] and "75%" in page.section(0)["text"]
    assert WEIRD_LABEL in page.section(1)["text"]


def test_paths_with_markup_characters_are_escaped(run, tmp_path):
    d, recs, sums, scores = run
    out = tmp_path / "r"
    text = write_html(out, recs, sums, scores, "t").read_text("utf-8")
    assert "<ird>" not in text and '"name"' not in text
    page = Page(text)
    (tile,) = [t for s in page.sections for t in s["tiles"] if _tile_path(t).endswith(WEIRD_NAME)]
    assert tile["img"]["alt"] == str(d / WEIRD_NAME)
    assert (out / unquote(tile["href"])).resolve() == (d / WEIRD_NAME).resolve()
    assert "%3C" in tile["href"] and "%22" in tile["href"]  # URL-quoted, not just HTML-escaped


def test_links_point_at_the_originals(run, tmp_path):
    d, recs, sums, scores = run
    out = tmp_path / "deeper" / "report"
    page = Page(write_html(out, recs, sums, scores, "t").read_text("utf-8"))
    for s in page.sections:
        for t in s["tiles"]:
            assert not t["href"].startswith(("/", "file:"))  # relative when it can be
            assert os.path.normpath(out / unquote(t["href"])) == os.path.normpath(_tile_path(t))


def test_page_is_self_contained(run, tmp_path):
    d, recs, sums, scores = run
    text = write_html(tmp_path / "r", recs, sums, scores, "t").read_text("utf-8")
    page = Page(text)
    assert page.scripts_src == [] and page.stylesheets == []
    assert not re.search(r"https?://|//cdn|@import|url\(", text)
    assert all(not h.startswith(("http:", "https:", "//")) for h in page.all_links)


# --------------------------------------------------------------------------------------------------
# thumbnails


def test_thumbnails_small_rgb_oriented_never_upscaled(run, tmp_path):
    d, recs, sums, scores = run
    out = tmp_path / "r"
    page = Page(write_html(out, recs, sums, scores, "t", thumb_size=64).read_text("utf-8"))
    by_name = {
        os.path.basename(_tile_path(t)): t["img"] for s in page.sections for t in s["tiles"] if t["img"] is not None
    }
    for name, img in by_name.items():
        path = out / img["src"]
        assert path.stat().st_size < 8_000, name
        with Image.open(path) as th:
            assert th.format == "JPEG" and th.mode == "RGB"
            assert th.size == (int(img["width"]), int(img["height"]))
            assert max(th.size) <= 64
    assert by_name["red.jpg"]["width"] == "64" and by_name["red.jpg"]["height"] == "43"
    assert (by_name["blue.png"]["width"], by_name["blue.png"]["height"]) == ("60", "40")  # not upscaled
    assert (by_name["rotated.jpg"]["width"], by_name["rotated.jpg"]["height"]) == ("32", "64")  # EXIF applied
    with Image.open(out / by_name["deep16.png"]["src"]) as th:  # 16-bit grey 40000/65535: scaled, not clipped
        assert 145 < th.getpixel((5, 5))[0] < 165
    with Image.open(out / by_name["alpha.png"]["src"]) as th:  # transparency over white
        r, g, b = th.getpixel((5, 5))
        assert b > 200 and r > 100


def test_thumbnails_are_reused_and_progress_reported(run, tmp_path):
    d, recs, sums, scores = run
    out = tmp_path / "r"
    calls: list[tuple[int, int]] = []
    write_html(out, recs, sums, scores, "t", on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, len(recs)) for i in range(1, len(recs) + 1)]
    thumbs = {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").iterdir()}
    assert len(thumbs) == len(recs) - 2 and not any(n.startswith(".tmp") for n in thumbs)

    time.sleep(0.01)
    write_html(out, recs, sums, scores, "t")
    assert {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").iterdir()} == thumbs

    # a changed image gets a new thumbnail under the same name
    os.utime(d / "red.jpg", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    write_html(out, recs, sums, scores, "t")
    after = {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").iterdir()}
    assert after.keys() == thumbs.keys()
    assert sum(after[k] != thumbs[k] for k in thumbs) == 1


def test_parallel_and_serial_pages_are_identical(run, tmp_path):
    d, recs, sums, scores = run
    a = write_html(tmp_path / "a", recs, sums, scores, "t", workers=1).read_bytes()
    b = write_html(tmp_path / "b", recs, sums, scores, "t", workers=4).read_bytes()
    assert a == b
    assert sorted(p.name for p in (tmp_path / "a" / "thumbs").iterdir()) == sorted(
        p.name for p in (tmp_path / "b" / "thumbs").iterdir()
    )


def test_max_per_cluster_shows_the_centre_a_sample_and_the_edge_and_counts_the_rest(tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    recs = []
    for i in range(90):  # cluster i // 30; distance to the centre = index in it; silhouette falls with it
        Image.new("RGB", (24, 24), (i, 2 * i, 255 - i)).save(d / f"{i:02d}.png")
        recs.append(ImageRecord(str(d / f"{i:02d}.png"), i // 30, 0.9 - (i % 30) / 20, float(i % 30)))
    sums = [ClusterSummary(k, 30, 0.2, str(d / f"{30 * k:02d}.png")) for k in range(3)]
    out = tmp_path / "r"
    page = Page(write_html(out, recs, sums, {}, "t", max_per_cluster=8).read_text("utf-8"))
    assert [len(s["tiles"]) for s in page.sections] == [8, 8, 8]
    names = [os.path.basename(_tile_path(t)) for t in page.section(1)["tiles"]]
    assert names[:4] == ["30.png", "31.png", "32.png", "33.png"]  # ceil(8/2) nearest the centre, nearest first
    assert names[-2:] == ["59.png", "58.png"]  # 8 // 4 lowest silhouettes, lowest first
    assert all(34 <= int(n[:2]) <= 57 for n in names[4:6])  # and a random sample of the others
    text = " ".join(page.section(1)["text"].split())
    assert "Showing 8 of 30 images" in text and "and 22 more" in text
    assert len(list((out / "thumbs").iterdir())) == 24  # thumbnails only for the shown images
    again = Page(write_html(tmp_path / "again", recs, sums, {}, "t", max_per_cluster=8).read_text("utf-8"))
    assert [_tile_path(t) for t in again.section(1)["tiles"]] == [_tile_path(t) for t in page.section(1)["tiles"]]
    every = Page(write_html(tmp_path / "all", recs, sums, {}, "t", max_per_cluster=None).read_text("utf-8"))
    assert [len(s["tiles"]) for s in every.sections] == [30, 30, 30] and "more" not in every.section(0)["text"]


def test_max_clusters_lists_the_smaller_clusters_in_a_table(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    recs = [ImageRecord(str(tmp_path / "a.png"), k, 0.5, 0.0, f"class-{k % 3}") for k in range(12) for _ in range(k + 1)]
    sums = [ClusterSummary(k, k + 1, 0.5, str(tmp_path / "a.png")) for k in range(12)]
    text = write_html(tmp_path / "r", recs, sums, {}, "t", max_clusters=5).read_text("utf-8")
    page = Page(text)
    cluster_sections = [s for s in page.sections if "cluster" in s["classes"]]
    assert [s["data-cluster"] for s in cluster_sections] == ["7", "8", "9", "10", "11"]  # the largest, in id order
    rest = text[text.index('id="more-clusters"'):]
    assert "7 more clusters" in rest and [f'data-cluster="{k}"' in rest for k in range(7)] == [True] * 7
    assert "#more-clusters" in page.nav_links and "12 clusters" in text


def test_cluster_without_images_and_images_without_summary(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    recs = [ImageRecord(str(tmp_path / "a.png"), 7, None, 0.0)]
    sums = [ClusterSummary(3, 0, None, "")]
    page = Page(write_html(tmp_path / "r", recs, sums, {}, "t").read_text("utf-8"))
    assert [s["data-cluster"] for s in page.sections] == ["3", "7"]
    assert "No images" in page.section(3)["text"]
    assert len(page.section(7)["tiles"]) == 1


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"thumb_size": 0}, "'thumb_size' parameter of write_html must be an int in \\[16, 1024\\]. Got 0"),
        ({"thumb_size": 64.0}, "'thumb_size'"),
        ({"max_per_cluster": 0}, "'max_per_cluster'"),
        ({"max_clusters": 0}, "'max_clusters'"),
        ({"workers": 0}, "'workers'"),
        ({"outlier_quantile": 1.5}, "'outlier_quantile'"),
    ],
)
def test_bad_parameters(run, tmp_path, kw, match):
    d, recs, sums, scores = run
    with pytest.raises(ParameterError, match=match):
        write_html(tmp_path / "r", recs, sums, scores, "t", **kw)
    assert not (tmp_path / "r").exists()  # checked before any work


def test_out_dir_that_is_a_file(run, tmp_path):
    d, recs, sums, scores = run
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="not a folder") as info:
        write_html(tmp_path / "f", recs, sums, scores, "t")
    assert info.value.hint


def test_unwritable_out_dir_is_an_imgclust_error(run, tmp_path):
    d, recs, sums, scores = run
    blocker = tmp_path / "r" / "thumbs"
    blocker.parent.mkdir()
    blocker.write_text("a file where the thumbs folder should be")
    with pytest.raises(ImgclustError, match="cannot write"):
        write_html(tmp_path / "r", recs, sums, scores, "t")


# --------------------------------------------------------------------------------------------------
# the real data set (a few seconds)

_DATA_CANDIDATES = [
    os.environ.get("IMGCLUST_DATA", ""),
    str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
    "/work/shared/data",
]


def _data_dir(name: str) -> Path:
    for base in _DATA_CANDIDATES:
        if base and (Path(base) / name).is_dir():
            return Path(base) / name
    pytest.skip(f"the shared data set {name} is not here (set IMGCLUST_DATA to its parent folder)")


def _folder_run(root: Path) -> tuple[list[ImageRecord], list[ClusterSummary]]:
    """Clusters = class folders; distance = index in the folder, silhouette made up but spread."""
    recs, sums = [], []
    for k, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        files = sorted(folder.iterdir())
        for i, f in enumerate(files):
            recs.append(ImageRecord(str(f), k, 0.9 - 1.2 * i / len(files), float(i), folder.name))
        sums.append(ClusterSummary(k, len(files), 0.3, str(files[0]), {folder.name: len(files)}))
    return recs, sums


@pytest.mark.slow
def test_real_images(tmp_path):
    root = _data_dir("imagenette-mini")
    recs, sums = _folder_run(root)
    index = write_html(tmp_path / "r", recs, sums, {"n_clusters": len(sums)}, "imagenette-mini", max_per_cluster=None)
    page = Page(index.read_text("utf-8"))
    assert len(page.sections) == len(sums) == 10
    tiles = [t for s in page.sections for t in s["tiles"]]
    assert len(tiles) == len(recs) == 300 and all(t["img"] is not None for t in tiles)
    assert index.stat().st_size < 1_000 * len(recs)  # about 0.7 kB of HTML per image


# --------------------------------------------------------------------------------------------------
# rendered in headless Chromium: sections, thumbnails loaded, lazy loading, the outlier toggle

_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Injected into a copy of the page: once the first thumbnails have arrived after "load", it records how
# many thumbnails the browser loaded on its own (lazy loading: only those near the viewport), scrolls through the page, then asks for every
# thumbnail and waits for all of them, and writes what it found into <pre id="probe-result">.
_PROBE = """<script>
window.addEventListener('load', async () => {
  const pre = document.createElement('pre'); pre.id = 'probe-result'; document.body.appendChild(pre);
  const say = o => { pre.textContent = JSON.stringify(o); };
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const imgs = [...document.images];
  const loaded = () => imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  // let the browser fetch what it wants on its own before anything scrolls (on a loaded machine the first
  // thumbnails can take seconds of virtual time: allow 20 s of the 60 s budget)
  for (let t = 0; t < 400 && imgs.length && loaded() === 0; t++) await sleep(50);
  await sleep(500);
  const early = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  say({stage: 'scrolling', early});
  for (let y = 0; y < document.documentElement.scrollHeight; y += innerHeight) { scrollTo(0, y); await sleep(50); }
  imgs.forEach(i => { i.loading = 'eager'; });
  say({stage: 'waiting', early, pending: imgs.filter(i => !i.complete).length});
  await Promise.all(imgs.map(i => i.complete ? 0 : new Promise(r => { i.addEventListener('load', r);
                                                                       i.addEventListener('error', r); })));
  const tiles = [...document.querySelectorAll('figure.tile')];
  const shown = () => tiles.filter(t => t.offsetParent !== null).length;
  const before = shown();
  const box = document.getElementById('only-outliers'); box.click();
  const onlyOutliers = shown();
  say({stage: 'done', early, n: imgs.length, before, onlyOutliers,
       sections: [...document.querySelectorAll('section.cluster')].map(s => [s.id, s.dataset.cluster,
                  s.querySelectorAll('figure.tile').length]),
       images: imgs.map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight,
                              +i.getAttribute('width'), +i.getAttribute('height')])});
});
</script>"""


def _chromium() -> str:
    for name in _CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium); the render test needs it")


def _render(index: Path, profile: Path, window: str = "1280,900", budget_ms: int = 60_000) -> tuple[dict, str]:
    probe = index.with_name("_probe.html")
    probe.write_text(index.read_text("utf-8").replace("</body>", _PROBE + "</body>"), "utf-8")
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--window-size={window}",
        # headless turns lazy loading off (so screenshots are complete); turn it back on to test it
        "--blink-settings=lazyLoadEnabled=true",
        f"--virtual-time-budget={budget_ms}", "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no probe result from chromium (rc={done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(html.unescape(match.group(1)))
    assert result["stage"] == "done", result
    return result, done.stdout


def test_renders_in_headless_chromium(run, tmp_path):
    _chromium()
    d, recs, sums, scores = run
    out = tmp_path / "r"
    write_html(out, recs, sums, scores, "rendered", outlier_quantile=1.0)
    result, dom = _render(out / "index.html", tmp_path / "profile")

    assert result["sections"] == [["cluster-0", "0", 4], ["cluster-1", "1", 4], ["cluster-noise", "-1", 2]]
    assert result["n"] == len(recs) - 2  # the corrupt and the missing file have placeholders, not <img>
    for src, nw, nh, w, h in result["images"]:
        assert nw > 0 and nh > 0, f"{src} did not load"
        assert (nw, nh) == (w, h), src  # the boxes reserve exactly the thumbnail's size
    assert result["before"] == len(recs)
    assert result["onlyOutliers"] == 2  # the toggle hides everything but the outliers
    rendered = Page(dom)
    assert [s["data-cluster"] for s in rendered.sections] == ["0", "1", "-1"]


def test_thumbnails_load_lazily_in_chromium(tmp_path):
    _chromium()
    d = tmp_path / "many"
    d.mkdir()
    recs = []
    for i in range(240):
        path = d / f"{i:03d}.png"
        Image.new("RGB", (24, 24), (i, 255 - i, (7 * i) % 256)).save(path)
        recs.append(ImageRecord(str(path), i // 40, 0.5, float(i % 40)))
    sums = [ClusterSummary(k, 40, 0.5, str(d / f"{40 * k:03d}.png")) for k in range(6)]
    out = tmp_path / "r"
    write_html(out, recs, sums, {}, "lazy", max_per_cluster=None)
    result, _ = _render(out / "index.html", tmp_path / "profile", window="1280,700")
    assert result["n"] == 240
    # eager images would all be loaded by the window's load event, where the probe starts; how many of the
    # first screen's lazy ones load before it scrolls depends on how often headless Chromium renders a frame
    # under virtual time (none at all once, on a loaded machine), so only the upper bound is asserted
    assert result["early"] < 240, "lazy loading should leave thumbnails far below the fold unloaded"
    assert all(nw > 0 for _, nw, *_ in result["images"])


def test_selection_curve_marks_the_pick_and_says_the_doubt(run, tmp_path):
    from sklearn.datasets import make_blobs

    from imgclust.select import choose_n_clusters

    _, recs, sums, scores = run
    X, _ = make_blobs(400, n_features=5, centers=4, cluster_std=0.5, random_state=0)
    sel = choose_n_clusters(X, k_max=3).to_dict()  # 4 blobs searched up to 3: a pick at the edge
    text = write_html(tmp_path / "r", recs, sums, scores, "t", selection=sel).read_text("utf-8")
    figure = text[text.index('<figure class="kcurve doubt" data-k="3">'):]
    figure = figure[: figure.index("</figure>")]
    assert figure.count("<circle") == 2 and '<circle class="pick"' in figure  # K = 2..3: the pick and one runner-up
    assert "<polyline" in figure and "no clear number of clusters" in figure and "K = 3" in figure
    # without a selection (K given), no curve
    assert 'class="kcurve' not in write_html(tmp_path / "s", recs, sums, scores, "t").read_text("utf-8")


# --------------------------------------------------------------------------------------------------
# a large run: 100,000 rows over the real files of imagenette-mini, repeated


def _large_run(n_rows: int, n_clusters: int):
    import numpy as np

    from imgclust.export._records import RunTable

    files = sorted(str(p) for p in _data_dir("imagenette-mini").rglob("*.JPEG"))
    rng = np.random.default_rng(0)
    clusters = rng.integers(0, n_clusters, n_rows)
    table = RunTable(np.array(files, dtype=object)[np.arange(n_rows) % len(files)], clusters,
                     rng.uniform(-0.3, 0.9, n_rows), rng.gamma(2.0, 1.0, n_rows),
                     np.array([f"class-{c % 7}" for c in clusters], dtype=object))
    sizes = np.bincount(clusters, minlength=n_clusters)
    sums = [ClusterSummary(k, int(sizes[k]), 0.3, files[k % len(files)], None) for k in range(n_clusters)]
    return table, sums, len(files)


@pytest.mark.slow
def test_a_100k_row_page_is_bounded_and_renders(tmp_path):
    table, sums, n_files = _large_run(100_000, 20)
    out = tmp_path / "r"
    index = write_html(out, table, sums, {"n_samples": 100_000, "n_clusters": 20}, "100k rows")
    text = index.read_text("utf-8")
    page = Page(text)
    assert len(page.sections) == 20 and all(len(s["tiles"]) == 24 for s in page.sections)
    hidden = [int(n) for n in re.findall(r'data-hidden="(\d+)"', text)]
    assert sum(hidden) == 100_000 - 20 * 24 and "100,000 images" in text
    assert len(list((out / "thumbs").iterdir())) <= min(n_files, 20 * 24)  # only the shown images
    assert len(text) < 1_000_000
    if not any(shutil.which(name) for name in _CHROMIUM_NAMES):
        return
    result, _ = _render(index, tmp_path / "profile")
    assert [s[2] for s in result["sections"]] == [24] * 20 and result["n"] == 480
    assert all(nw > 0 for _, nw, *_ in result["images"])


@pytest.mark.slow
def test_ten_thousand_clusters_keep_the_page_bounded(tmp_path):
    table, sums, _ = _large_run(100_000, 10_000)
    text = write_html(tmp_path / "r", table, sums, {}, "10,000 clusters").read_text("utf-8")
    page = Page(text)
    assert len([s for s in page.sections if "cluster" in s["classes"]]) == 100
    assert sum(len(s["tiles"]) for s in page.sections) <= 100 * 24
    assert "9,900 more clusters" in text and text.count("<tr data-cluster=") == 9_900
    assert len(text) < 3_000_000
