"""Benchmark data sets as inputs: ``sklearn:digits`` and ``torchvision:<Dataset>``.

A source is written out once as a class-folder tree of PNG files under ``data_root`` (default
``~/.cache/imgclust/datasets``), so every later stage sees ordinary image files whose parent
folder is the label.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ImgclustError, UsageError

PREFIXES = ("sklearn:", "torchvision:")


def is_source(text: str) -> bool:
    return isinstance(text, str) and text.startswith(PREFIXES) and not os.path.exists(text)


def default_data_root() -> Path:
    return Path(os.environ.get("IMGCLUST_DATA_ROOT", Path.home() / ".cache" / "imgclust" / "datasets"))


def expand_sources(inputs, labels: str | None, data_root=None, split: str = "test"):
    """Replace data-set sources among ``inputs`` by their folders; their labels come from the folders."""
    expanded, any_source = [], False
    for item in inputs:
        if is_source(os.fspath(item)):
            expanded.append(materialise(os.fspath(item), data_root, split))
            any_source = True
        else:
            expanded.append(item)
    return expanded, (labels or ("folder" if any_source else None))


def materialise(source: str, data_root: str | os.PathLike | None = None, split: str = "test") -> Path:
    """Write ``source`` as ``<data_root>/<name>/<label>/<index>.png`` (once) and return that folder."""
    root = Path(data_root) if data_root else default_data_root()
    kind, _, name = source.partition(":")
    if kind == "sklearn":
        if name != "digits":
            raise UsageError(f"unknown source '{source}'", hint="sklearn:digits is the scikit-learn data set that ships offline")
        return _write_once(root / "sklearn-digits", _sklearn_digits)
    return _write_once(root / f"torchvision-{name}-{split}", lambda: _torchvision(name, root, split))


def _write_once(folder: Path, load) -> Path:
    done = folder / ".complete"
    if done.exists():
        return folder
    import numpy as np
    from PIL import Image

    images, labels, classes = load()
    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(len(images)))
    for i, (array, label) in enumerate(zip(images, labels)):
        target = folder / str(classes[label]) / f"{i:0{width}d}.png"
        target.parent.mkdir(exist_ok=True)
        Image.fromarray(np.asarray(array)).save(target)
    done.write_text("ok\n")  # written last: a half-written folder is redone
    return folder


def _sklearn_digits():
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8x8 images with values 0..16 -> 8-bit greyscale.
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    return images, digits.target, [str(c) for c in digits.target_names]


def _torchvision(name: str, root: Path, split: str):
    import numpy as np
    import torchvision.datasets as datasets

    cls = getattr(datasets, name, None)
    if cls is None or not isinstance(cls, type):
        raise UsageError(f"torchvision has no data set '{name}'", hint="e.g. torchvision:CIFAR10, torchvision:CIFAR100, torchvision:STL10")
    kwargs = {"train": split == "train"} if "train" in cls.__init__.__code__.co_varnames else {"split": split}
    try:
        dataset = cls(root=str(root / "torchvision"), download=True, **kwargs)
    except (OSError, RuntimeError) as exc:
        raise ImgclustError(f"cannot download torchvision:{name} into {root / 'torchvision'}: {exc}",
                            hint="connect to the network once, or pass --data-root where the data set already is") from None
    pairs = [dataset[i] for i in range(len(dataset))]
    images = [np.asarray(image.convert("RGB")) for image, _ in pairs]
    labels = [int(label) for _, label in pairs]
    classes = list(getattr(dataset, "classes", sorted(set(labels))))
    return images, labels, [str(c) for c in classes]
