"""Trust (issue 10): devices are checked, non-finite embeddings never reach the cache, decodes in threads
keep their own pixel limits."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from imgclust.cache import Cache
from imgclust.decode import DecodeError, load_rgb
from imgclust.embed import NON_FINITE_REASON, embed
from imgclust.encoders import Encoder, EncoderSpec, available_devices, best_device
from imgclust.errors import UsageError
from imgclust.runtimes import Pending
from imgclust.decode import Preprocess

from .conftest import TINY_ENCODER, make_image


# -- devices ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["foo", "cuda:7", "tpu"])
def test_unknown_or_absent_device_is_a_usage_error_listing_the_devices_here(name):
    with pytest.raises(UsageError) as raised:
        best_device(name)
    assert f"--device {name}" in raised.value.message and "cpu" in raised.value.message
    assert set(available_devices()) <= set(raised.value.message.replace(",", " ").replace(")", " ").split())


def test_cuda_or_mps_where_there_is_none_is_refused():
    for name in ("cuda", "mps"):
        if name in " ".join(available_devices()):
            continue
        with pytest.raises(UsageError, match="no such device"):
            best_device(name)
    assert best_device("cpu") == "cpu" and best_device("CPU") == "cpu"


def test_device_reaches_the_trained_heads():
    from imgclust.clusterers._heads import resolve_device

    assert str(resolve_device("cpu")) == "cpu"
    with pytest.raises(UsageError, match="no such device"):
        resolve_device("foo")


def test_cli_device_foo_exits_2_with_one_line(image_folder, tmp_path):
    from typer.testing import CliRunner

    from imgclust.cli import app

    result = CliRunner().invoke(app, ["embed", str(image_folder), "--encoder", TINY_ENCODER, "--weights", "random",
                                      "--cache", str(tmp_path / "c.h5"), "--device", "foo"])
    assert result.exit_code == 2
    assert "error: --device foo: this machine has no such device" in result.output
    assert "Traceback" not in result.output


# -- non-finite embeddings ------------------------------------------------------------------------


class _Scale:
    """A model whose output overflows float16 (max 65504) for bright inputs but not in float32."""

    def __new__(cls, factor: float, nan_on_negative: bool = False):
        import torch

        class Model(torch.nn.Module):
            def forward(self, x):
                out = x.mean(dim=(2, 3)) * factor
                if nan_on_negative:
                    out = torch.where(out < 0, torch.full_like(out, float("nan")), out)
                return out

        return Model()


def _half_encoder(factor: float, nan_on_negative: bool = False) -> Encoder:
    """An encoder whose runner computes in float16 (as the torch runtime does on a GPU), on the CPU."""
    import torch

    from imgclust.runtimes import TorchRunner

    spec = EncoderSpec("scale", "timm", "scale", "none", 3, Preprocess(8, (0.5,) * 3, (0.5,) * 3))
    enc = Encoder(spec, _Scale(factor, nan_on_negative), "cpu", runtime="torch", batch_size=4)
    enc.runner = TorchRunner(enc.runner.network, "cpu", dtype=torch.float16)
    return enc


def test_a_half_precision_overflow_is_recomputed_in_float32():
    enc = _half_encoder(1e5)
    batch = np.full((2, 8, 8, 3), 255, np.uint8)  # normalised to 1.0: 1e5 overflows float16
    batch[1] = 128  # normalised to 1/255
    assert not np.isfinite(enc.encode(batch)).all()  # the half-precision result overflows
    vectors, finite, recomputed = enc.encode_finite(batch)
    assert recomputed and finite.all() and np.allclose(vectors[0], 1e5)
    assert enc.runner.dtype == torch_float16() and enc.runner.reduced_precision  # back to half afterwards


def torch_float16():
    import torch

    return torch.float16


def test_rows_still_not_finite_in_float32_are_marked():
    enc = _half_encoder(1.0, nan_on_negative=True)
    batch = np.full((3, 8, 8, 3), 255, np.uint8)
    batch[2] = 0  # normalised to -1: NaN
    _, finite, recomputed = enc.encode_finite(batch)
    assert recomputed and finite.tolist() == [True, True, False]


def test_embed_records_non_finite_rows_as_failures_and_never_stores_them(image_folder, tmp_path, monkeypatch):
    import sys

    embed_module = sys.modules["imgclust.embed"]  # (the package exports a function of the same name)
    real = embed_module.create_encoder

    def nan_for_blue(*args, **kwargs):
        enc = real(*args, **kwargs)
        submit = enc.submit

        def poisoned(images):
            pending = submit(images)
            x = np.asarray(images, dtype=np.float32)
            blue = x[..., 2].mean(axis=(1, 2)) > x[..., 0].mean(axis=(1, 2))  # the blue_things images

            def result():
                out = pending.result().copy()
                out[blue] = np.nan
                return out

            return Pending(result)

        enc.submit = poisoned
        return enc

    monkeypatch.setattr(embed_module, "create_encoder", nan_for_blue)
    summary = embed([image_folder], encoder=TINY_ENCODER, cache=tmp_path / "c.h5", weights="random", device="cpu",
                    batch_size=4, workers=0)
    assert summary.embedded == 6 and summary.failed == 6
    cache = Cache(tmp_path / "c.h5")
    assert np.isfinite(cache.read_embeddings(TINY_ENCODER)).all()
    failures = cache.read_failures(TINY_ENCODER)
    assert len(failures) == 6 and set(map(str, failures.reasons)) == {NON_FINITE_REASON}
    assert all("blue_things" in str(p) for p in failures.paths)


# -- the pixel limit is per call, also in threads -----------------------------------------------------


def test_concurrent_decodes_keep_their_own_pixel_limits(tmp_path, monkeypatch):
    big = make_image(tmp_path / "big.png", size=(100, 100))  # 10,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)  # Pillow alone would refuse it (> 2 x 2,000)
    outcomes = {"strict": [], "lifted": []}

    def decode_many(kind: str, max_pixels):
        for _ in range(150):
            try:
                load_rgb(str(big), max_pixels=max_pixels)
                outcomes[kind].append("ok")
            except DecodeError as exc:
                outcomes[kind].append(str(exc))

    threads = [threading.Thread(target=decode_many, args=("strict", 5_000)),
               threading.Thread(target=decode_many, args=("lifted", None))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes["lifted"] == ["ok"] * 150
    assert len(outcomes["strict"]) == 150 and all("over the limit of 5000" in o for o in outcomes["strict"])
    assert Image.MAX_IMAGE_PIXELS == 2_000  # Pillow's global is as it was
