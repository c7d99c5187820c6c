"""A folder of good images beside every kind of troublesome file, with what ``embed`` must do with each.

``build_corpus(root)`` writes the files and returns the expectation::

    {
        "root": str,                 # the folder to embed
        "max_pixels": int,           # the --max-pixels to embed it with (over_limit.png is over it)
        "embed": {path: kind},       # must be embedded, one row each
        "fail": {path: (kind, regex)},   # must be recorded once as a failure whose reason matches regex
        "ignored": [path, ...],      # must appear nowhere (hidden files, other extensions)
        "notes": {...},              # facts about this machine that changed an expectation
    }

Paths are absolute, as :func:`imgclust.discover.discover` spells them (a name that is not valid UTF-8
is the ``os.fsdecode`` of its bytes). Everything is generated: no data files, a fixed seed.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MAX_PIXELS = 4_000_000  # low enough that over_limit.png (2500 x 2000) is refused, high enough for the rest


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's signature)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _textured(size, seed, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    array = np.clip(base + rng.integers(-50, 50, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(array, "RGB")
    return im if mode == "RGB" else im.convert(mode)


def _encoded(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 header is patched to claim ``width`` x ``height``."""
    data = bytearray(_encoded(_textured((16, 16), 9), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def build_corpus(root: str | os.PathLike) -> dict:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expect: dict = {"root": str(root.resolve()), "max_pixels": MAX_PIXELS, "embed": {}, "fail": {}, "ignored": [],
                    "notes": {}}
    base = root.resolve()

    def good(rel: str, data: bytes, kind: str) -> None:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect["embed"][str(path)] = kind

    def bad(rel: str, data: bytes | None, kind: str, reason: str) -> Path:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
        expect["fail"][str(path)] = (kind, reason)
        return path

    # -- images that must embed ---------------------------------------------------------------
    good("good/photo.jpg", _encoded(_textured((64, 48), 1), "JPEG", quality=90), "RGB JPEG")
    good("good/graphic.png", _encoded(_textured((40, 40), 2), "PNG"), "RGB PNG")
    good("good/bitmap.bmp", _encoded(_textured((30, 20), 3), "BMP"), "BMP")
    good("good/really_a_png.jpg", _encoded(_textured((32, 32), 4), "PNG"), "PNG named .jpg")
    good("good/really_a_jpeg.png", _encoded(_textured((32, 32), 5), "JPEG"), "JPEG named .png")
    good("good/one_pixel.png", _encoded(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), "1x1 pixel")
    good("good/thin_strip.png", _encoded(Image.new("L", (2, 30000), 90), "PNG"), "2x30000 strip")
    good("good/cmyk.jpg", _encoded(_textured((40, 30), 6, "CMYK"), "JPEG"), "CMYK JPEG")
    sixteen = Image.fromarray((np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40).astype(np.uint16))
    good("good/sixteen_bit.png", _encoded(sixteen, "PNG"), "16-bit greyscale PNG")
    palette = _textured((32, 32), 7).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    good("good/palette_transparent.png", _encoded(palette, "PNG", transparency=0), "palette PNG with transparency")
    good("good/grey_alpha.png", _encoded(_textured((24, 24), 8, "LA"), "PNG"), "greyscale + alpha PNG")
    frames = [_textured((24, 24), 10 + k) for k in range(3)]
    good("good/animated.gif", _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
         "animated GIF")
    good("good/animated.webp", _encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=40),
         "animated WebP")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    good("good/exif_rotated.jpg", _encoded(_textured((60, 20), 13), "JPEG", exif=exif.tobytes()), "EXIF-rotated JPEG")
    good("names/ünïcødé 名前 'quoted'.png", _encoded(_textured((20, 20), 14), "PNG"), "non-ASCII UTF-8 name")
    good("names/" + "long" * 60 + ".png", _encoded(_textured((20, 20), 15), "PNG"), "240-character name")
    good("album.jpg/inside.png", _encoded(_textured((20, 20), 16), "PNG"), "image in a folder named like an image")

    # A name that is not valid UTF-8 (Latin-1 'café'): made through bytes, expected as os.fsdecode gives it.
    latin1 = os.path.join(os.fsencode(base / "names"), b"caf\xe9.png")
    with open(latin1, "wb") as fh:
        fh.write(_encoded(_textured((20, 20), 17), "PNG"))
    expect["embed"][os.fsdecode(latin1)] = "non-UTF-8 name"

    # chmod 000: unreadable, except for root (CAP_DAC_OVERRIDE reads it anyway): then it embeds.
    locked = base / "perms" / "unreadable.jpg"
    locked.parent.mkdir(parents=True, exist_ok=True)
    locked.write_bytes(_encoded(_textured((20, 20), 18), "JPEG"))
    locked.chmod(0)
    readable_anyway = os.access(locked, os.R_OK)
    expect["notes"]["chmod_000_still_readable"] = readable_anyway
    if readable_anyway:
        expect["embed"][str(locked)] = "chmod 000 (readable here: running as root)"
    else:
        expect["fail"][str(locked)] = ("chmod 000", r"permission denied")

    # -- files that must fail, each with a reason that names the problem -------------------------
    jpeg = _encoded(_textured((120, 90), 20), "JPEG", quality=95)
    png = _encoded(_textured((120, 90), 21), "PNG")
    bad("bad/empty.jpg", b"", "zero bytes", r"empty file \(0 bytes\)")
    bad("bad/truncated.jpg", jpeg[: len(jpeg) // 2], "truncated JPEG", r"truncated")
    bad("bad/truncated.png", png[: len(png) // 2], "truncated PNG", r"truncated")
    bad("bad/header_only.jpg", jpeg[:20], "JPEG cut inside its header", r"corrupt JPEG|truncated")
    damaged = bytearray(png)
    damaged[29] ^= 0xFF  # inside the IHDR chunk: its checksum no longer matches
    bad("bad/bad_checksum.png", bytes(damaged), "PNG with a damaged header", r"corrupt PNG")
    bad("bad/notes.jpg", b"shopping list: eggs, milk\nthis is not a photo\n", "text saved as .jpg", r"plain text")
    bad("bad/page.png", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n", "HTML saved as .png", r"HTML")
    bad("bad/random.webp", np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes(),
        "random bytes as .webp", r"not an image")
    bad("bad/bomb_header.png", png_claiming(100_000, 100_000), "PNG header claiming 100000x100000",
        r"decompression-bomb")
    bad("bad/huge_dimensions.jpg", _jpeg_claiming(60_000, 60_000), "JPEG header claiming 60000x60000",
        r"decompression-bomb")
    bad("bad/over_limit.png", _encoded(Image.new("L", (2500, 2000), 0), "PNG"),
        f"real 2500x2000 image over --max-pixels {MAX_PIXELS}", r"decompression-bomb.*2500x2000")
    bad("bad/zero_size.png", png_claiming(0, 0), "PNG header claiming 0x0", r"corrupt")
    os.symlink(base / "bad" / "gone.jpg", bad("bad/dangling.jpg", None, "dangling symlink", r"dangling symlink"))
    os.symlink("loop.jpg", bad("bad/loop.jpg", None, "symlink loop", r"symlink loop"))
    os.mkfifo(bad("bad/pipe.jpg", None, "named pipe (FIFO) with an image extension", r"not a regular file"))

    # -- files that must be ignored ------------------------------------------------------------
    for rel, data in ((".hidden.jpg", jpeg), (".cache/thumb.jpg", jpeg), ("good/readme.txt", b"not an image")):
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect["ignored"].append(str(path))
    return expect


def restore_permissions(root: str | os.PathLike) -> None:
    """Make the corpus deletable again (pytest's tmp_path cleanup needs it when not root)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path) and stat.S_ISREG(os.lstat(path).st_mode):
                os.chmod(path, 0o644)
