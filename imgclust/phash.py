"""A 64-bit perceptual hash of an image's pixels, and Hamming distances between hashes.

The DCT hash ("pHash") of Zauner, *Implementation and Benchmarking of Perceptual Image Hash
Functions* (2010), in the form of the ``imagehash`` package's ``phash`` (J. Buchner, BSD licence),
which it matches bit for bit: the image in greyscale (Pillow's ``L``), resized to 32 x 32 (Lanczos),
a 2-D DCT-II (unnormalised, as ``scipy.fft.dct``), the top-left 8 x 8 coefficients (the lowest
frequencies), and one bit per coefficient: 1 when it is above their median. Bits are read row by row,
the first one the most significant (``int(str(imagehash.phash(image)), 16)``).

The hash sees pixels, not meaning: a re-encoded, rescaled or brightened copy keeps nearly all bits,
which an ImageNet encoder's embedding does not promise (a half-size copy can fall far from its
original). :mod:`imgclust.duplicates` combines the two.

At most 32 of the 64 bits are set (a coefficient must be *above* the median of the 64), so the hash
with every bit set, :data:`NO_HASH`, never occurs: it marks a row whose hash is not known.
"""

from __future__ import annotations

import numpy as np

#: Stands for "no perceptual hash" (a row imported, or embedded before hashes were stored).
NO_HASH = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
HASH_BITS = 64
_SIDE = 8  # coefficients per side kept: 8 x 8 = 64 bits
_RESIZED = 32  # the side the image is resized to (4 x 8: imagehash's highfreq_factor)


def perceptual_hash(image) -> int:
    """The 64-bit DCT perceptual hash of a Pillow image (any mode), as an unsigned integer.

    Parameters
    ----------
    image : PIL.Image.Image
        The decoded image.

    Returns
    -------
    int
        The hash, in ``[0, 2**64)``; never :data:`NO_HASH`.
    """
    from PIL import Image
    from scipy.fft import dct

    small = image.convert("L").resize((_RESIZED, _RESIZED), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.float64)
    low = dct(dct(pixels, axis=0), axis=1)[:_SIDE, :_SIDE]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between hashes ``a`` and ``b`` (uint64 arrays, broadcast); a pair where either
    is :data:`NO_HASH` gets ``HASH_BITS + 1`` (farther than any two known hashes)."""
    a, b = np.asarray(a, np.uint64), np.asarray(b, np.uint64)
    distance = np.bitwise_count(a ^ b).astype(np.int16)
    return np.where((a == NO_HASH) | (b == NO_HASH), HASH_BITS + 1, distance)
