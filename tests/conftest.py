"""Shared fixtures: real image files made with Pillow, a tiny deterministic encoder, the shared data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_ENCODER = "timm:test_efficientnet"  # a few-layer timm model; with weights="random" it is seeded and fast


@pytest.fixture(autouse=True, scope="session")
def _model_cache(tmp_path_factory):
    """Converted models (OpenVINO) go to one folder per test session, not the user's ~/.cache."""
    import os

    os.environ["IMGCLUST_MODEL_CACHE"] = str(tmp_path_factory.mktemp("models"))


def make_image(path: Path, color=(200, 30, 30), size=(48, 40), mode="RGB", fmt=None, noise_seed=None) -> Path:
    """Write a real image file; ``noise_seed`` adds texture so different seeds give different embeddings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size[1], size[0], 3), np.uint8) + np.array(color, np.uint8)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        array = np.clip(array.astype(int) + rng.integers(-60, 60, array.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(array, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two class folders of textured JPEG/PNG images: red_things (6) and blue_things (6)."""
    root = tmp_path / "photos"
    for i in range(6):
        make_image(root / "red_things" / f"r{i}.jpg", (210, 40, 40), noise_seed=i)
        make_image(root / "blue_things" / f"b{i}.png", (30, 40, 220), noise_seed=100 + i)
    return root


def shared_set(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data set {path} is not present")
    return path


@pytest.fixture
def env_python():
    """The interpreter running the tests, for subprocess CLI tests."""
    import sys

    return sys.executable


@pytest.fixture
def chdir_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path



@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one thread is fastest, and on a busy shared CPU 2 spinning threads are ~15x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def zygote():
    """The fork server of the kill harness (tests/killing.py), shared by a module's tests."""
    from .killing import Zygote

    z = Zygote()
    yield z
    z.close()
