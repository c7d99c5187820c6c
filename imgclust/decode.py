"""Decoding any image file into the encoder's input tensor.

Every mode becomes 3-channel RGB (transparent pixels are composited on white), EXIF orientation is
applied, animated files give their first frame, and JPEGs are decoded at reduced size with Pillow's
``draft`` when the encoder's input allows it -- the biggest CPU saving on camera photos.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .phash import NO_HASH, perceptual_hash

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit (2**28 / 1.5 ~ a 13k x 13k image)


class DecodeError(Exception):
    """An image that cannot be decoded; the message is the reason recorded in the cache."""


@dataclass(frozen=True)
class Preprocess:
    """Resize the shortest side to ``size`` (keeping aspect), centre-crop ``size`` x ``size``, normalise.

    The loader does the resize and crop (uint8 pixels); the encoder's runtime normalises with ``mean``
    and ``std`` where the model runs (:func:`imgclust.runtimes.normalised_network`).
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    def to_dict(self) -> dict:
        return {"resize": "shortest-side", "size": self.size, "crop": "center", "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}


_MAX_ASPECT = 4  # images more elongated than this are cut to their centre 4:1 part before resizing

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


# Pillow reads its decompression-bomb limit from a module global, at open and (GIF, ICO frames) at load.
# imgclust checks its own, per-call ``max_pixels`` instead (``_check_size``); the global is lifted only
# under this lock, so decodes running at once in threads with different limits never see each other's.
_PILLOW_LIMIT_LOCK = threading.RLock()


@contextlib.contextmanager
def _without_pillow_limit():
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _open(path: str, max_pixels: int | None) -> Image.Image:
    """``Image.open`` (the header only) with ``max_pixels``, not Pillow's global, deciding what is a bomb."""
    with _without_pillow_limit():
        im = Image.open(path)
    try:
        _check_size(im, max_pixels)
    except DecodeError:
        im.close()
        raise
    return im


def _load_context(max_pixels: int | None):
    """Decoding pixels re-checks Pillow's global limit for some formats: lift it (under the lock) only
    when ``max_pixels`` allows more than it does; otherwise every size that passed ``_check_size`` passes."""
    limit = Image.MAX_IMAGE_PIXELS
    return _without_pillow_limit() if limit is not None and (max_pixels is None or max_pixels > limit) \
        else contextlib.nullcontext()


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _unidentified_reason(path: str) -> str:
    """Why Pillow could not identify ``path``: empty, a damaged image header, text/HTML, or unknown."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        head = None
    if head == b"":
        return "empty file (0 bytes): not an image"
    if head:
        for magic, fmt in _SIGNATURES + ((b"RIFF", "WebP"),):
            if head.startswith(magic) and (fmt != "WebP" or head[8:12] == b"WEBP"):
                return f"corrupt {fmt} file: the header is damaged or cut short (not an image Pillow can read)"
        text = head.lstrip().lower()
        if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")) or b"<html" in text[:200]:
            return "not an image: the file holds HTML/XML text (a web page saved with an image extension?)"
        if all(32 <= c < 127 or c in b"\t\r\n" for c in head[:200]):
            return "not an image: the file holds plain text"
    return "not an image Pillow can read (unknown format or not an image file)"


@contextlib.contextmanager
def _reasons(path: str):
    """Turn any exception raised while reading ``path`` into a :class:`DecodeError` with a readable reason.

    Unexpected exceptions name their type: one strange file fails, never the whole run.
    """
    try:
        yield
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(_unidentified_reason(path)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression-bomb limit: {exc} (raise it with --max-pixels)") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except IsADirectoryError:
        raise DecodeError("is a directory, not an image file") from None
    except FileNotFoundError:
        reason = "dangling symlink" if os.path.islink(path) else "file not found (deleted while running?)"
        raise DecodeError(reason) from None
    except MemoryError:
        raise DecodeError("not enough memory to decode this image (is --max-pixels disabled?)") from None
    except OSError as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or "image file is" in text:
            raise DecodeError(f"truncated or corrupt image data: {text}") from None
        if exc.errno == errno.ELOOP:
            raise DecodeError("symlink loop") from None
        raise DecodeError(f"cannot read image: {text or type(exc).__name__}") from None
    except (ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise DecodeError(f"corrupt image: {exc or type(exc).__name__}") from None
    except Exception as exc:  # a Pillow plugin's unexpected error on a malformed file
        raise DecodeError(f"cannot decode image ({type(exc).__name__}: {exc})") from None


def _check_size(im: Image.Image, max_pixels: int | None) -> None:
    width, height = im.size
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(
            f"decompression-bomb limit: {width}x{height} = {width * height} pixels is over the "
            f"limit of {max_pixels} (raise it with --max-pixels)")
    if width < 1 or height < 1:
        raise DecodeError(f"corrupt image: its size is {width}x{height} pixels")


def check_header(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Read only the header of ``path``: raise :class:`DecodeError` if it cannot be opened or is over the limit."""
    with _reasons(path):
        _open(path, max_pixels).close()


def load_rgb(path: str, draft_size: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an RGB image; raise :class:`DecodeError` with a readable reason on any failure."""
    with _reasons(path), _open(path, max_pixels) as im, _load_context(max_pixels):
        if getattr(im, "is_animated", False):
            im.seek(0)
        if draft_size and im.format == "JPEG":
            im.draft("RGB", (draft_size, draft_size))  # DCT scaling keeps both sides >= draft_size
        im.load()
        return to_rgb(ImageOps.exif_transpose(im))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: 16-bit and float scaled to 8 bits, transparency composited on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" and array.max(initial=0) <= 1.0 else (255.0 if array.max(initial=0) <= 255 else 65535.0)
        grey = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info or im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _geometry(width: int, height: int, size: int) -> tuple[tuple[int, int, int, int], tuple[int, int], tuple[int, int, int, int]]:
    """``(cut, resized, crop)`` of the preprocessing: the part of the image kept before resizing, the
    size it is resized to, and the centre crop of ``size`` x ``size`` from that (PIL boxes)."""
    longest = _MAX_ASPECT * min(width, height)
    # A very thin image (1 x 30000, say) would be resized to a huge strip only to be cropped;
    # keep the centre part the crop can use (aspect 4:1), so memory stays ~size x 4*size.
    kept_w, kept_h = min(width, longest), min(height, longest)
    left, top = (width - kept_w) // 2, (height - kept_h) // 2
    scale = size / min(kept_w, kept_h)
    new_w, new_h = max(size, round(kept_w * scale)), max(size, round(kept_h * scale))
    crop_left, crop_top = (new_w - size) // 2, (new_h - size) // 2
    return (left, top, left + kept_w, top + kept_h), (new_w, new_h), (crop_left, crop_top, crop_left + size, crop_top + size)


def preprocess(im: Image.Image, spec: Preprocess) -> np.ndarray:
    """RGB image -> uint8 array (size, size, 3), as ZS: shortest side resized, centre crop.

    uint8 is a quarter of the bytes of float32 between the decoding workers and the model; the
    normalisation happens in the encoder's runtime.
    """
    cut, resized, crop = _geometry(*im.size, spec.size)
    if cut != (0, 0, *im.size):
        im = im.crop(cut)
    if resized != im.size:
        im = im.resize(resized, _RESAMPLE[spec.interpolation])
    return np.array(im.crop(crop), dtype=np.uint8)


def jpeg_bytes(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The file's bytes when it is a JPEG within ``max_pixels`` (for :func:`decode_jpegs_on_device`),
    None for any other format; raises :class:`DecodeError` for a file that cannot be opened."""
    with _reasons(path), _open(path, max_pixels) as im:
        if im.format != "JPEG" or im.mode not in ("RGB", "L"):  # CMYK etc.: Pillow knows them better
            return None
    with _reasons(path), open(path, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8)


def decode_jpegs_on_device(datas: list, spec: Preprocess, device: str) -> list:
    """JPEG bytes -> uint8 images ``(size, size, 3)`` on ``device`` (nvJPEG on a GPU, through torchvision),
    EXIF orientation applied, resized and cropped as :func:`preprocess` (torch's antialiased resize: close
    to Pillow's, not bit-equal). An image the device cannot decode is None: the caller decodes that
    file on the CPU instead."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.as_tensor(d) for d in datas]
    try:
        decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    except RuntimeError:  # one bad file fails the whole batch: decode them one at a time
        decoded = []
        for t in tensors:
            try:
                decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except RuntimeError:
                decoded.append(None)
    out = []
    for image in decoded:
        if image is None or image.shape[0] != 3 or min(image.shape[1:]) < 1:
            out.append(None)
            continue
        (left, top, right, bottom), (new_w, new_h), (cl, ct, cr, cb) = _geometry(image.shape[2], image.shape[1], spec.size)
        x = image[:, top:bottom, left:right][None].float()
        if (new_w, new_h) != (right - left, bottom - top):
            mode = "bicubic" if spec.interpolation in ("bicubic", "lanczos") else spec.interpolation
            x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode=mode,
                                                antialias=mode != "nearest", **({} if mode == "nearest" else {"align_corners": False}))
        out.append(x[0, :, ct:cb, cl:cr].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0))
    return out


def decode(path: str, spec: Preprocess, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load ``path`` and preprocess it for an encoder (uint8, ``(size, size, 3)``); raises :class:`DecodeError`."""
    return decode_hashed(path, spec, max_pixels, hashed=False)[0]


def decode_hashed(path: str, spec: Preprocess, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  hashed: bool = True) -> tuple[np.ndarray, int]:
    """:func:`decode`, plus the perceptual hash (:func:`imgclust.phash.perceptual_hash`) of the image as
    decoded, before the encoder's resize (a JPEG is decoded at a reduced scale that keeps both sides at
    least the encoder's size: the hash of a large photo is that of its reduced decode). Without ``hashed``
    the hash is :data:`imgclust.phash.NO_HASH`."""
    im = load_rgb(path, draft_size=spec.size, max_pixels=max_pixels)
    try:
        return preprocess(im, spec), (perceptual_hash(im) if hashed else int(NO_HASH))
    except MemoryError:
        raise DecodeError("not enough memory to resize this image") from None
    except Exception as exc:  # as in load_rgb: one strange file must not stop the run
        raise DecodeError(f"cannot preprocess image ({type(exc).__name__}: {exc})") from None


def hash_only(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int:
    """The perceptual hash of ``path`` decoded at the smallest scale that keeps the hash's 32 x 32 input
    (for files decoded elsewhere, e.g. JPEGs on the GPU); :data:`imgclust.phash.NO_HASH` when unreadable."""
    try:
        return perceptual_hash(load_rgb(path, draft_size=32, max_pixels=max_pixels))
    except DecodeError:
        return int(NO_HASH)


def decode_or_reason(path: str, spec: Preprocess, max_pixels: int | None) -> tuple[np.ndarray | None, str, int]:
    """``(image, "", perceptual hash)``, or ``(None, reason, NO_HASH)`` for a file that cannot be decoded:
    what every engine records."""
    try:
        image, phash = decode_hashed(path, spec, max_pixels)
        return image, "", phash
    except DecodeError as exc:
        return None, str(exc), int(NO_HASH)
