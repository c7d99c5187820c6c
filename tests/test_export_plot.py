"""The static plots: a 2-D scatter and a silhouette plot, written as PNG files."""

from __future__ import annotations

import builtins
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "imgclust[plot]"')

from imgclust.errors import ImgclustError, ParameterError  # noqa: E402
from imgclust.export._plot import write_plots  # noqa: E402


def _blobs(k: int, n: int, n_noise: int = 0, seed: int = 0):
    """k Gaussian blobs in 2-D with their exact silhouettes-like scores (NaN for noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10, size=(k, 2))
    labels = np.arange(n) % k
    emb = centres[labels] + rng.normal(size=(n, 2))
    labels[:n_noise] = -1
    sil = rng.uniform(-0.2, 0.9, size=n)
    sil[labels < 0] = np.nan
    return emb, labels, sil


def _check_png(path, min_side=300):
    assert path.is_file() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert min_side <= w <= 4000 and min_side <= h <= 4000
        # not a blank canvas: something was drawn
        extrema = im.convert("L").getextrema()
        assert extrema[0] < 100 and extrema[1] > 200


def test_writes_both_plots(tmp_path):
    emb, labels, sil = _blobs(5, 500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layout or font warnings
        paths = write_plots(tmp_path / "plots", emb, labels, sil, "five blobs")
    assert [p.name for p in paths] == ["umap_scatter.png", "silhouette.png"]
    assert all(p.parent == tmp_path / "plots" for p in paths)
    for p in paths:
        _check_png(p)
    assert not [p for p in (tmp_path / "plots").iterdir() if p.name.startswith(".tmp")]


def test_noise_is_drawn_and_left_out_of_the_silhouettes(tmp_path):
    emb, labels, sil = _blobs(4, 400, n_noise=60)
    sil_with_noise_values = sil.copy()
    sil_with_noise_values[labels < 0] = -1.0  # noise values must be ignored, not plotted
    paths = write_plots(tmp_path, emb, labels, sil_with_noise_values, "with noise")
    for p in paths:
        _check_png(p)


def test_single_cluster_and_undefined_silhouettes(tmp_path):
    emb, labels, _ = _blobs(1, 50)
    sil = np.full(50, np.nan)
    paths = write_plots(tmp_path, emb, labels, sil, "one cluster")
    for p in paths:
        _check_png(p)


def test_only_noise_and_silhouettes_as_list_with_none(tmp_path):
    emb = np.random.default_rng(1).normal(size=(30, 2))
    paths = write_plots(tmp_path, emb, np.full(30, -1), [None] * 30, "all noise")
    for p in paths:
        _check_png(p)


def test_many_clusters_stay_readable(tmp_path):
    emb, labels, sil = _blobs(60, 3000, n_noise=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_plots(tmp_path, emb, labels, sil, "sixty")
    for p in paths:
        _check_png(p)
    with Image.open(paths[1]) as im:  # the silhouette plot grows with the number of clusters
        assert im.size[1] > 800


def test_tiny_clusters_and_non_finite_coordinates(tmp_path):
    emb = np.array([[0.0, 0.0], [1.0, 1.0], [np.nan, 2.0], [5.0, 5.0]])
    labels = np.array([0, 1, 1, 2])
    sil = np.array([np.nan, 0.5, 0.2, np.nan])
    for p in write_plots(tmp_path, emb, labels, sil, "tiny"):
        _check_png(p)


def test_does_not_touch_pyplot_state(tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    emb, labels, sil = _blobs(3, 60)
    write_plots(tmp_path, emb, labels, sil, "t")
    assert matplotlib.get_backend() == backend


@pytest.mark.parametrize(
    "emb, labels, sil, match",
    [
        (np.zeros((5, 3)), np.zeros(5, int), np.zeros(5), "'embedding_2d' parameter of write_plots must be"),
        (np.zeros((5, 2)), np.zeros(4, int), np.zeros(5), "one row per image. Got 5, 4 and 5"),
        (np.zeros((5, 2)), np.full(5, 0.5), np.zeros(5), "'labels' parameter"),
        (np.zeros((5, 2)), np.zeros((5, 1), int), np.zeros(5), "'labels' parameter"),
        (np.zeros((5, 2)), np.zeros(5, int), np.zeros((5, 2)), "'silhouettes' parameter"),
    ],
)
def test_bad_inputs(tmp_path, emb, labels, sil, match):
    with pytest.raises(ParameterError, match=match):
        write_plots(tmp_path / "p", emb, labels, sil, "t")
    assert not (tmp_path / "p").exists()


def test_float_labels_that_are_whole_numbers_are_accepted(tmp_path):
    emb, labels, sil = _blobs(3, 60)
    write_plots(tmp_path, emb, labels.astype(float), sil, "t")


def test_missing_matplotlib_gives_the_install_hint(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    emb, labels, sil = _blobs(2, 10)
    with pytest.raises(ImgclustError) as info:
        write_plots(tmp_path, emb, labels, sil, "t")
    assert info.value.hint == 'pip install "imgclust[plot]"'
    assert "matplotlib" in info.value.message


def test_a_sample_says_so_in_both_titles_and_keeps_the_real_sizes(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    titles, legends = [], []
    real_title, real_legend = Axes.set_title, Axes.legend
    monkeypatch.setattr(Axes, "set_title", lambda self, text, *a, **k: titles.append(text) or real_title(self, text, *a, **k))
    monkeypatch.setattr(Axes, "legend", lambda self, *a, **k: legends.append(
        [t.get_text() for t in real_legend(self, *a, **k).get_texts()]) or self.get_legend())
    emb, labels, sil = _blobs(3, 300)
    for p in write_plots(tmp_path, emb, labels, sil, "sampled", n_images=1_000_000,
                         cluster_sizes={0: 400_000, 1: 350_000, 2: 250_000}):
        _check_png(p)
    assert all("a random sample of 300 of 1,000,000 images" in t for t in titles) and len(titles) == 2
    assert legends[0] == ["0 (400,000)", "1 (350,000)", "2 (250,000)"]
