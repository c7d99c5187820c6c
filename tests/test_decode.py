import numpy as np
import pytest
from PIL import Image

from imgclust.decode import DecodeError, Preprocess, decode, load_rgb, preprocess

from .conftest import make_image


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert load_rgb(str(tmp_path / "r.jpg")).size == (20, 60)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "1", "P", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    base = Image.new("RGB", (16, 12), (120, 60, 30))
    if mode == "I;16":
        im = Image.fromarray(np.full((12, 16), 40000, np.uint16))
    else:
        im = base.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16", "I", "F") else "x.png")
    im.save(path)
    out = load_rgb(str(path))
    assert out.mode == "RGB" and out.size == (16, 12)
    if mode == "I;16":
        assert 150 < np.asarray(out)[0, 0, 0] < 160  # 40000/65535 of full scale, not clipped to white


def test_transparency_is_composited_on_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    im.save(tmp_path / "t.png")
    assert np.asarray(load_rgb(str(tmp_path / "t.png"))).min() == 255
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_rgb(str(tmp_path / "p.png"))).min() == 255


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, b = np.asarray(load_rgb(str(tmp_path / "a.gif")))[0, 0]
    assert r > 200 and b < 50


def test_decompression_bomb_limit_is_configurable(tmp_path):
    make_image(tmp_path / "big.png", size=(300, 300))
    with pytest.raises(DecodeError, match="decompression-bomb"):
        load_rgb(str(tmp_path / "big.png"), max_pixels=1000)
    assert load_rgb(str(tmp_path / "big.png"), max_pixels=None).size == (300, 300)


def test_jpeg_draft_decodes_at_reduced_size(tmp_path):
    make_image(tmp_path / "camera.jpg", size=(2000, 1600))
    im = load_rgb(str(tmp_path / "camera.jpg"), draft_size=224)
    assert min(im.size) >= 224 and im.size[0] <= 500  # 1/4 scale by the DCT, not a full decode


@pytest.mark.parametrize("content, reason", [
    (b"", "not an image"),
    (b"<html>hello</html>", "not an image"),
])
def test_unreadable_files_raise_decode_error_with_reason(tmp_path, content, reason):
    (tmp_path / "bad.jpg").write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        load_rgb(str(tmp_path / "bad.jpg"))


def test_truncated_jpeg_is_a_decode_error(tmp_path):
    good = make_image(tmp_path / "g.jpg", size=(200, 200), noise_seed=1).read_bytes()
    (tmp_path / "t.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        load_rgb(str(tmp_path / "t.jpg"))


def test_preprocess_resizes_shortest_side_and_centre_crops():
    im = Image.new("RGB", (400, 200), (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, 60, 200))  # a black band on the far left is cropped away
    out = preprocess(im, Preprocess(size=32, mean=(0.5,) * 3, std=(0.5,) * 3))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8  # normalised later, by the encoder's runtime
    assert (out == 255).all()


def test_decode_end_to_end(tmp_path):
    make_image(tmp_path / "x.webp", size=(50, 70), fmt="WEBP")
    assert decode(str(tmp_path / "x.webp"), Preprocess(size=24)).shape == (24, 24, 3)
