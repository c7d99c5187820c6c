"""Embeddings of augmented views of every image, for contrastive clustering (``cc``, METHODS.md §5).

``embed --views N`` stores N views per image next to the plain embedding, as ``views`` (N_rows, N, D)
in a result file of the cache that records the rows it belongs to (a set of views of other rows
is stale and never used). Each view is a SimCLR/CC-style augmentation as in ViT-IC (Low,
§augmentations): random resized crop, colour jitter, random greyscale, Gaussian blur, solarize,
horizontal flip (:func:`view_pipeline`). A view's randomness is seeded by its row and view number,
so the stored views are the same on every run.
"""

from __future__ import annotations

import numpy as np

from .cache import Cache
from .decode import DecodeError, Preprocess, load_rgb, preprocess


#: Solarize (invert pixels >= threshold) as ViT-IC lists it; probability and threshold as BYOL (0.2, 128 of 255),
#: which ViT-IC's paper does not give.
SOLARIZE_P = 0.2
SOLARIZE_THRESHOLD = 128


def view_pipeline(size: int):
    """The random augmentation of one view (torchvision, on PIL RGB images of any size)."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel_size=23, sigma=(0.1, 2.0))], p=0.5),
        T.RandomSolarize(SOLARIZE_THRESHOLD, p=SOLARIZE_P),
        T.RandomHorizontalFlip(),
    ])


def augment(image, spec: Preprocess, seed: int) -> np.ndarray:
    """One augmented view of ``image`` (PIL RGB), preprocessed for the encoder (uint8, ``(size, size, 3)``)."""
    import torch

    pipeline = view_pipeline(spec.size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        view = pipeline(image)
    return preprocess(view, Preprocess(spec.size, spec.mean, spec.std, spec.interpolation))


def add_views(cache: Cache, encoder_name: str, encoder, n_views: int, max_pixels=None, progress=None) -> int:
    """Compute and store ``n_views`` views for every row of ``encoder_name``.

    Returns the number of rows whose views were computed: 0 when views of exactly these rows are stored.
    """
    rows = cache.rows(encoder_name)
    if any(a.get("n_views") == n_views for a in cache.current(encoder_name, "views", rows.fingerprint).values()):
        return 0
    index = rows.index()
    plain = rows.read_embeddings()
    # A file unreadable now, or a view whose embedding is not finite even in float32, keeps its plain embedding.
    out = np.repeat(plain[:, None, :], n_views, axis=1)
    jobs = [(row, view) for row in range(len(index)) for view in range(n_views)]
    batch_size = encoder.batch_size
    for start in range(0, len(jobs), batch_size):
        chunk, arrays = [], []
        for row, view in jobs[start:start + batch_size]:
            try:
                image = load_rgb(str(index.paths[row]), draft_size=encoder.preprocess.size * 2, max_pixels=max_pixels)
            except DecodeError:
                continue
            chunk.append((row, view))
            arrays.append(augment(image, encoder.preprocess, seed=row * 1000 + view))
        if arrays:
            vectors, finite, _ = encoder.encode_finite(np.stack(arrays))
            for (row, view), vector, ok in zip(chunk, vectors, finite):
                if ok:
                    out[row, view] = vector
        if progress:
            progress(min(start + batch_size, len(jobs)), len(jobs))
    cache.store_result(encoder_name, "views", f"views-{n_views}-{rows.fingerprint[:8]}", {"views": out},
                       {"n_views": n_views, "shape": list(out.shape)}, rows.fingerprint)
    return len(index)
