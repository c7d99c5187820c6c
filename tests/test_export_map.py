"""The gallery's map, duplicates section and isolated marks (issue 15), down to a hover and clicks in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import subprocess

import numpy as np
from PIL import Image

from imgclust.export import export
from imgclust.export._html import write_html
from imgclust.export._map import MAP_THUMBS, DuplicateGroups, MapPoints, colour, map_thumb_rows
from imgclust.export._records import ClusterSummary, ImageRecord

from .test_export_html import _chromium


def small_run(tmp_path, n_per=6):
    """Three clusters of real images; the map puts each cluster in its own corner."""
    recs, sums, xy = [], [], []
    for c in range(3):
        for i in range(n_per):
            path = tmp_path / "imgs" / f"c{c}-{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (80 * c, 40 * i, 200 - 60 * c)).save(path)
            recs.append(ImageRecord(str(path), c, 0.5, float(i), None, 2.0 if (c, i) == (2, 5) else 1.0))
            xy.append((10.0 * c + 0.1 * i, 5.0 * (c % 2) + 0.1 * i))
        sums.append(ClusterSummary(c, n_per, 0.5, recs[-n_per].path, None, f"thing{c} (0.31)"))
    return recs, sums, np.array(xy)


def test_page_has_the_map_data_duplicates_and_isolated_marks(tmp_path):
    recs, sums, xy = small_run(tmp_path)
    rows = np.arange(len(recs))
    dups = DuplicateGroups([[recs[0].path, recs[1].path]], ["near"], "cosine similarity ≥ 0.88", "calibrated for effnet-lite", 1, 1)
    index = write_html(tmp_path / "g", recs, sums, {}, "t", map_points=MapPoints(rows, xy, len(recs)), duplicates=dups)
    page = index.read_text("utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="map-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["x"]) == len(recs) and data["p"] == [r.path for r in recs]
    assert [item["anchor"] for item in data["legend"]] == ["cluster-0", "cluster-1", "cluster-2"]
    assert data["legend"][1]["colour"] == colour(1) and data["legend"][2]["name"] == "thing2 (0.31)"
    assert all(t >= 0 for t in data["t"])  # every point of a small run is shown in the gallery: all have thumbnails
    assert "all 18 images" in page and 'id="duplicates"' in page and page.count('class="badge keep"') == 1
    assert page.count('<span class="badge iso">isolated</span>') == 2  # the tile and the footer's legend
    assert "1 isolated" in page and "thing0 (0.31)" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_a_sample_is_drawn_with_the_count_and_bounded_thumbnails(tmp_path):
    recs, sums, xy = small_run(tmp_path)
    sample = np.array([0, 3, 7, 12])
    page = write_html(tmp_path / "g", recs, sums, {}, "t", map_points=MapPoints(sample, xy[sample], len(recs)),
                      max_per_cluster=1).read_text("utf-8")
    assert "a random sample of 4 of 18 images" in page
    many = MapPoints(np.arange(5000), np.zeros((5000, 2)), 5000)
    assert len(map_thumb_rows(many)) == MAP_THUMBS and len(np.unique(map_thumb_rows(many))) == MAP_THUMBS


_PROBE = """<script>
window.addEventListener('load', async () => {
  const pre = document.createElement('pre'); pre.id = 'probe-result'; document.body.appendChild(pre);
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const d = JSON.parse(document.getElementById('map-data').textContent);
  const cv = document.getElementById('map-canvas'), tip = document.getElementById('map-tip');
  const i = 13, b = cv.getBoundingClientRect();
  const x = b.left + (8 + d.x[i] / d.grid * (cv.width - 16)) * b.width / cv.width;
  const y = b.top + (8 + (1 - d.y[i] / d.grid) * (cv.height - 16)) * b.height / cv.height;
  const pixel = cv.getContext('2d').getImageData(Math.round((x - b.left) * cv.width / b.width),
                                                 Math.round((y - b.top) * cv.height / b.height), 1, 1).data;
  cv.dispatchEvent(new MouseEvent('mousemove', {clientX: x, clientY: y, bubbles: true}));
  const img = tip.querySelector('img');
  if (img && !img.complete) await new Promise(r => { img.onload = r; img.onerror = r; });
  const hover = {hidden: tip.hidden, src: img && img.getAttribute('src'), width: img ? img.naturalWidth : 0,
                 text: tip.textContent, pixel: [...pixel]};
  cv.dispatchEvent(new MouseEvent('click', {clientX: x, clientY: y, bubbles: true}));
  await sleep(50);
  const afterPoint = location.hash;
  document.querySelector('.legend a[data-cluster="0"]').click();
  await sleep(50);
  pre.textContent = JSON.stringify({hover, afterPoint, afterLegend: location.hash, path: d.p[i]});
});
</script>"""


def test_hovering_a_point_shows_its_thumbnail_and_clicks_jump_in_chromium(tmp_path):
    chromium = _chromium()
    recs, sums, xy = small_run(tmp_path)
    index = write_html(tmp_path / "g", recs, sums, {}, "map", map_points=MapPoints(np.arange(len(recs)), xy, len(recs)))
    probe = index.with_name("_probe.html")
    probe.write_text(index.read_text("utf-8").replace("</body>", _PROBE + "</body>"), "utf-8")
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
                           "--virtual-time-budget=20000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no probe result from chromium (rc={done.returncode}): {done.stderr[-2000:]}"
    result = json.loads(html.unescape(match.group(1)))
    hover = result["hover"]
    assert hover["pixel"][3] > 0, "the point is drawn on the canvas"
    assert not hover["hidden"] and hover["src"].startswith("thumbs/") and hover["width"] > 0
    assert result["path"] == recs[13].path and recs[13].path in hover["text"] and "cluster 2" in hover["text"]
    assert result["afterPoint"] == "#cluster-2"  # the point's cluster
    assert result["afterLegend"] == "#cluster-0"


def test_html_export_has_the_map_and_duplicates_of_the_run(tmp_path):
    from imgclust.cluster import cluster

    from .test_triage import triage_cache

    cache, p = triage_cache(tmp_path)
    cluster(cache, method="kmeans", n_clusters=2, reduction="none")
    page = open(export(cache, format="html", out=tmp_path / "out").paths[0], encoding="utf-8").read()
    data = json.loads(re.search(r'id="map-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["x"]) == 10 and "all 10 images" in page
    assert 'id="duplicates"' in page and "uncalibrated" in page and p["big"] in page
