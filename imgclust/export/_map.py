"""The gallery's triage parts (issue 15): a 2-D map of the images and a section of duplicate groups.

**The map** draws every image, or a uniform random sample of at most :data:`MAP_MAX_POINTS` with the count
shown, at its 2-D UMAP position (:func:`imgclust.export.embed_2d` of the run's space), on a ``<canvas>``,
coloured by cluster; the data are inline JSON and the drawing inline JavaScript (no network). Hovering a point
shows its path and, for the points that have one, its thumbnail: the images the gallery shows, and up to
:data:`MAP_THUMBS` more of the sample (so thumbnails do not grow with the run). Clicking a point or a legend
entry jumps to the cluster's section.

**Duplicates**: the groups of :func:`imgclust.duplicates.find_duplicates`, the largest :data:`DUPLICATE_GROUPS`
with thumbnails, the keeper first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

MAP_MAX_POINTS = 100_000
MAP_THUMBS = 1_000  # sampled map points that get a thumbnail beyond the gallery's own
DUPLICATE_GROUPS = 50  # groups the duplicates section shows with thumbnails
_GRID = 4095  # map coordinates are sent as integers 0.._GRID


@dataclass
class MapPoints:
    """The map's points: rows of the run (``rows``, sorted) at 2-D positions ``xy``; ``n_images`` in the run."""

    rows: np.ndarray
    xy: np.ndarray
    n_images: int


@dataclass
class DuplicateGroups:
    """What the duplicates section shows: each group's paths (keeper first) and kinds, and how they were found."""

    groups: list[list[str]]
    kinds: list[str]
    rule: str  # the near-duplicate rule in words (imgclust.duplicates.Rule.describe)
    threshold_source: str
    n_groups: int = 0
    n_drop: int = 0
    extra: dict = field(default_factory=dict)


def map_thumb_rows(points: MapPoints, seed: int = 0) -> np.ndarray:
    """The sampled rows that get a thumbnail for the map (beyond those the gallery shows)."""
    if len(points.rows) <= MAP_THUMBS:
        return points.rows
    return np.sort(np.random.default_rng(seed).choice(points.rows, size=MAP_THUMBS, replace=False))


#: Tableau's 20 colours for the first clusters (distinct side by side), then hues spread by the golden angle.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def colour(cluster: int) -> str:
    """A cluster's colour (:data:`PALETTE`, then golden-angle hues); noise grey."""
    if cluster < 0:
        return "#c4c8cc"
    if cluster < len(PALETTE):
        return PALETTE[cluster]
    return f"hsl({(cluster * 137.508) % 360:.1f},65%,48%)"


def map_section(points: MapPoints, clusters: np.ndarray, paths: np.ndarray, thumb_urls: dict[int, str],
                anchors: dict[int, str], names: dict[int, str] | None = None) -> str:
    """The map's ``<section>``: canvas, legend and inline data. ``clusters``/``paths`` are the run's columns,
    ``thumb_urls`` maps a row to its thumbnail's URL, ``anchors`` a cluster to its section's id."""
    xy = np.asarray(points.xy, np.float64)
    lo, hi = xy.min(0) if len(xy) else np.zeros(2), xy.max(0) if len(xy) else np.ones(2)
    scaled = np.round((xy - lo) / np.where(hi > lo, hi - lo, 1.0) * _GRID).astype(np.int64)
    point_clusters = clusters[points.rows]
    ids, counts = np.unique(point_clusters, return_counts=True)
    legend = [{"id": int(c), "colour": colour(int(c)), "anchor": anchors.get(int(c), "more-clusters"),
               "label": "noise" if c < 0 else f"{int(c)}", "name": (names or {}).get(int(c), ""),
               "count": int(n)} for c, n in zip(ids.tolist(), counts.tolist())]
    index = {int(c): i for i, c in enumerate(ids.tolist())}
    thumbs = sorted((int(r), url) for r, url in thumb_urls.items())
    thumb_index = {r: i for i, (r, _) in enumerate(thumbs)}
    data = {"x": scaled[:, 0].tolist(), "y": scaled[:, 1].tolist(),
            "c": [index[int(c)] for c in point_clusters.tolist()],
            "t": [thumb_index.get(int(r), -1) for r in points.rows.tolist()],
            "p": [str(paths[r]) for r in points.rows.tolist()],
            "thumbs": [url for _, url in thumbs], "legend": legend, "grid": _GRID}
    # "</" cannot end the script early: JSON escapes the slash
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    shown = len(points.rows)
    count = (f"all {shown:,} images" if shown == points.n_images
             else f"a random sample of {shown:,} of {points.n_images:,} images")
    items = "".join(
        f'<li><a href="#{_e(item["anchor"])}" data-cluster="{item["id"]}"><i style="background:{item["colour"]}"></i>'
        f'{_e(item["label"])}{(" " + _e(item["name"])) if item["name"] else ""} <small>{item["count"]:,}</small></a></li>'
        for item in legend)
    return (f'<section id="map" class="map"><header><h2>Map</h2><p class="note" id="map-count">{count}, '
            f'UMAP in 2-D, coloured by cluster. Hover a point for its image, click it or a cluster below to go to '
            f'its section.</p></header><div class="map-wrap"><canvas id="map-canvas" width="900" height="560" '
            f'aria-label="map of the images"></canvas><div id="map-tip" class="map-tip" hidden></div></div>'
            f'<ul class="legend">{items}</ul><script type="application/json" id="map-data">{payload}</script>'
            "</section>")


def duplicates_section(duplicates: DuplicateGroups, thumb_urls: dict[str, str], href) -> str:
    """The duplicates ``<section>``: a row of thumbnails per group (keeper first), at most :data:`DUPLICATE_GROUPS`."""
    rows = []
    for number, (paths, kind) in enumerate(zip(duplicates.groups, duplicates.kinds)):
        tiles = []
        for position, path in enumerate(paths):
            url = thumb_urls.get(path)
            body = (f'<img src="{_e(url)}" loading="lazy" decoding="async" alt="{_e(path)}">' if url
                    else '<span class="ph">unreadable</span>')
            badge = '<span class="badge keep">keep</span>' if position == 0 else ""
            tiles.append(f'<a class="dup" href="{_e(href(path))}" title="{_e(path)}">{body}{badge}'
                         f'<span class="fn">{_e(os.path.basename(path))}</span></a>')
        rows.append(f'<li class="dup-group" data-kind="{kind}"><span class="kind">{number + 1}. {kind}</span>'
                    f'{"".join(tiles)}</li>')
    more = (f" Showing the {len(duplicates.groups):,} largest." if duplicates.n_groups > len(duplicates.groups)
            else "")
    return (f'<section id="duplicates" class="duplicates"><header><h2>Duplicates</h2><p class="note">'
            f'{duplicates.n_groups:,} groups of exact or near duplicates ({_e(duplicates.rule)}; '
            f'{_e(duplicates.threshold_source)}; every pair in a group meets it), '
            f'{duplicates.n_drop:,} images to drop; the first of each group is kept (most pixels, then largest '
            f'file).{more} <code>imgclust duplicates</code> writes the lists.</p></header>'
            f'<ol class="dups">{"".join(rows)}</ol></section>')


def _e(value) -> str:
    import html

    return html.escape(str(value), quote=True)


CSS = """
section.map,section.duplicates{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:.8rem 1rem 1rem}
.map-wrap{position:relative;max-width:100%}
#map-canvas{width:100%;max-width:900px;height:auto;aspect-ratio:900/560;border:1px solid var(--line);border-radius:6px;
background:var(--bg);cursor:crosshair;display:block}
.map-tip{position:absolute;z-index:3;pointer-events:none;background:var(--card);border:1px solid var(--line);
border-radius:6px;padding:4px;box-shadow:0 2px 8px rgba(0,0,0,.2);max-width:260px;font-size:.72rem;word-break:break-all}
.map-tip img{display:block;max-width:128px;max-height:128px;margin-bottom:3px}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:.25rem .8rem;margin:.5rem 0 0;padding:0;font-size:.8rem}
.legend a{color:var(--ink);text-decoration:none}.legend a:hover{text-decoration:underline}
.legend i{display:inline-block;width:.7rem;height:.7rem;border-radius:50%;margin-right:.3rem;vertical-align:-1px}
.legend small{color:var(--mute)}
ol.dups{list-style:none;margin:0;padding:0;display:flex;flex-direction:column;gap:.5rem}
.dup-group{display:flex;gap:6px;align-items:flex-start;flex-wrap:wrap}
.dup-group .kind{width:5.5rem;color:var(--mute);font-size:.75rem}
a.dup{position:relative;display:flex;flex-direction:column;width:96px;text-decoration:none;color:var(--mute);font-size:.68rem}
a.dup img{width:96px;height:96px;object-fit:contain;background:var(--bg);border:1px solid var(--line);border-radius:4px}
a.dup .fn{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
a.dup .badge{position:absolute;top:3px;left:3px}
.badge.keep{background:var(--hi)}.badge.iso{background:#7a4cc2}
.tile.isolated .box{outline:2px dashed #7a4cc2;outline-offset:-4px}
.cnames{color:var(--mute);font-size:.82rem}
"""

JS = """
(function(){var el=document.getElementById('map-data');if(!el)return;var d=JSON.parse(el.textContent);
var cv=document.getElementById('map-canvas'),tip=document.getElementById('map-tip'),ctx=cv.getContext('2d');
var W=cv.width,H=cv.height,pad=8,n=d.x.length,px=new Float32Array(n),py=new Float32Array(n),cell=12,grid={};
for(var i=0;i<n;i++){px[i]=pad+d.x[i]/d.grid*(W-2*pad);py[i]=pad+(1-d.y[i]/d.grid)*(H-2*pad);
var k=Math.floor(px[i]/cell)+','+Math.floor(py[i]/cell);(grid[k]=grid[k]||[]).push(i);}
var r=n>20000?1.2:n>2000?2:3.5;
function draw(){ctx.clearRect(0,0,W,H);for(var i=0;i<n;i++){ctx.fillStyle=d.legend[d.c[i]].colour;
ctx.beginPath();ctx.arc(px[i],py[i],d.t[i]>=0?r+1:r,0,6.2832);ctx.fill();}}
draw();
function at(ev){var b=cv.getBoundingClientRect(),x=(ev.clientX-b.left)*W/b.width,y=(ev.clientY-b.top)*H/b.height,
best=-1,bd=(10*W/b.width)*(10*W/b.width),cx=Math.floor(x/cell),cy=Math.floor(y/cell);
for(var a=cx-1;a<=cx+1;a++)for(var c=cy-1;c<=cy+1;c++){var l=grid[a+','+c];if(!l)continue;
for(var j=0;j<l.length;j++){var q=l[j],dx=px[q]-x,dy=py[q]-y,dd=dx*dx+dy*dy;if(dd<bd){bd=dd;best=q;}}}
return best;}
cv.addEventListener('mousemove',function(ev){var i=at(ev);if(i<0){tip.hidden=true;cv.title='';return;}
var g=d.legend[d.c[i]];tip.textContent='';if(d.t[i]>=0){var im=document.createElement('img');
im.src=d.thumbs[d.t[i]];im.alt=d.p[i];tip.appendChild(im);}
var s=document.createElement('div');s.textContent=d.p[i]+' \\u2014 cluster '+g.label+(g.name?' ('+g.name+')':'');
tip.appendChild(s);var b=cv.getBoundingClientRect();tip.style.left=(ev.clientX-b.left+14)+'px';
tip.style.top=(ev.clientY-b.top+14)+'px';tip.hidden=false;tip.dataset.index=i;});
cv.addEventListener('mouseleave',function(){tip.hidden=true;});
cv.addEventListener('click',function(ev){var i=at(ev);if(i>=0)location.hash=d.legend[d.c[i]].anchor;});
})();
"""
