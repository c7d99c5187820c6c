"""Runtimes: the same embeddings from every runtime, bit-exact repeats, the choice of ``auto``, the cache's record."""

from __future__ import annotations

import numpy as np
import os

import pytest
import torch

from imgclust import runtimes
from imgclust.cache import Cache
from imgclust.decode import Preprocess, decode, hash_only
from imgclust.phash import NO_HASH
from imgclust.embed import _Journal, _JournalWriter, _Block, collate_uint8, embed, encode_files
from imgclust.discover import discover
from imgclust.encoders import create_encoder
from imgclust.errors import UsageError
from imgclust.runtimes import RUNTIMES, normalised_network, resolve_runtime

from .conftest import TINY_ENCODER

CPU_RUNTIMES = ["torch", "torch-amp", "onnxruntime", "openvino"] + (
    ["openvino-bf16"] if RUNTIMES.get("openvino-bf16").missing("cpu") is None else [])


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(1, 160, 160, 3))
    # Textured, related images (as photos are), not white noise: cosines are meaningful.
    return np.clip(base + rng.integers(-40, 40, size=(10, 160, 160, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def reference(images):
    return create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime="torch", batch_size=4).encode(images)


@pytest.mark.parametrize("name", CPU_RUNTIMES)
def test_every_runtime_gives_the_same_embeddings_and_repeats_them_bit_for_bit(name, images, reference):
    enc = create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime=name, batch_size=4)
    assert enc.runtime == name
    out = enc.encode(images)
    assert out.dtype == np.float32 and out.shape == reference.shape
    cosine = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > (0.99 if RUNTIMES.get(name).reduced_precision else 0.9999)
    assert np.array_equal(out, enc.encode(images))  # the same call, the same bits
    # A row's bits do not depend on the other images in its (padded) batch: resume is bit-exact.
    alone = enc.encode(images[5:6])
    other_company = enc.encode(np.concatenate([images[5:6], images[:2]]))
    assert np.array_equal(alone[0], out[5]) and np.array_equal(other_company[0], out[5])


def test_torch_runtime_normalises_like_the_numpy_preprocessing_caches_were_made_with():
    """Caches written before runtimes existed resume with the same bits (legacy 'torch' runtime)."""
    spec = Preprocess(8, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    x = np.random.default_rng(1).integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    numpy_way = ((x.astype(np.float32) / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32))
    network = normalised_network(lambda net, t: net(t), spec, torch.nn.Identity())
    assert np.array_equal(network.normalise(torch.from_numpy(x)).numpy(), numpy_way.transpose(0, 3, 1, 2))
    # ... and with the thread count they were made with (the last bits depend on it).
    enc = create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime="torch", batch_size=2)
    assert enc.runner.threads == runtimes.legacy_torch_threads()


def test_openvino_models_are_converted_once_and_kept(tmp_path, monkeypatch, images):
    monkeypatch.setenv("IMGCLUST_MODEL_CACHE", str(tmp_path))
    first = create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime="openvino", batch_size=4)
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == 2 and kept[0].endswith(".bin") and kept[1].endswith(".xml")
    second = create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime="openvino", batch_size=4)
    assert np.array_equal(first.encode(images), second.encode(images))  # the kept model gives the same bits
    other_batch = create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime="openvino", batch_size=2)
    assert other_batch.batch_size == 2 and len(list(tmp_path.glob("*.xml"))) == 2  # another shape, another model


def test_an_encoder_refuses_what_is_not_a_batch_of_uint8_images():
    enc = create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime="torch", batch_size=2)
    with pytest.raises(ValueError, match="uint8 images of shape"):
        enc.encode(np.zeros((2, 3, 160, 160), np.float32))
    with pytest.raises(ValueError, match="up to 2"):
        enc.submit(np.zeros((3, 160, 160, 3), np.uint8))


def test_auto_picks_per_device_keeps_the_recorded_runtime_and_refuses_a_different_one(monkeypatch):
    assert resolve_runtime("auto", "timm", "cpu") == "openvino"
    assert resolve_runtime(None, "open_clip", "cuda") == "torch-amp"
    assert resolve_runtime(None, "timm", "mps") == "torch"
    assert resolve_runtime("auto", "timm", "cpu", recorded="onnxruntime") == "onnxruntime"
    assert resolve_runtime("torch", "timm", "cpu", recorded="torch") == "torch"
    with pytest.raises(UsageError, match="made with runtime 'torch'") as info:
        resolve_runtime("openvino", "timm", "cpu", recorded="torch")
    assert "--runtime torch" in info.value.hint
    with pytest.raises(UsageError, match="runs on cpu, not cuda"):
        resolve_runtime("openvino", "timm", "cuda")
    with pytest.raises(UsageError, match="made with runtime 'openvino', which cannot run here: runs on cpu, not cuda"):
        resolve_runtime("auto", "timm", "cuda", recorded="openvino")  # a CPU cache continued on a GPU
    monkeypatch.setattr(runtimes, "_importable", lambda module: module != "openvino")
    assert resolve_runtime("auto", "effnet-lite", "cpu") == "onnxruntime"  # the next best, when openvino is missing
    with pytest.raises(UsageError, match="needs the Python package") as info:
        resolve_runtime("openvino", "timm", "cpu")
    assert info.value.hint == "pip install openvino"
    with pytest.raises(Exception, match="unknown runtime"):
        resolve_runtime("tensorrt", "timm", "cpu")


def test_the_cache_records_the_runtime_and_a_resume_keeps_it(image_folder, tmp_path):
    cache = tmp_path / "c.h5"
    first = embed([image_folder / "red_things"], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu",
                  batch_size=4, workers=0, runtime="onnxruntime")
    assert first.runtime == "onnxruntime" and Cache(cache).info(TINY_ENCODER)["runtime"] == "onnxruntime"
    again = embed([image_folder], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu", batch_size=4, workers=0)
    assert again.runtime == "onnxruntime" and again.embedded == 6  # auto continues with the cache's runtime
    with pytest.raises(UsageError, match="made with runtime 'onnxruntime'"):
        embed([image_folder], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu", runtime="torch")


def test_a_cache_from_a_runtime_this_device_lacks_is_refused_only_when_there_is_work(image_folder, tmp_path, monkeypatch):
    cache = tmp_path / "c.h5"
    embed([image_folder / "red_things"], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu",
          batch_size=4, workers=0, runtime="onnxruntime")
    monkeypatch.setattr(runtimes, "_importable", lambda module: module != "onnxruntime")  # another machine
    nothing_new = embed([image_folder / "red_things"], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu")
    assert nothing_new.embedded == 0 and nothing_new.runtime == "onnxruntime"
    with pytest.raises(UsageError, match="made with runtime 'onnxruntime', which cannot run here"):
        embed([image_folder], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu")
    assert Cache(cache).read_index(TINY_ENCODER).paths.size == 6  # nothing lost


def test_a_cache_without_a_recorded_runtime_continues_with_eager_torch(image_folder, tmp_path):
    import h5py

    cache = tmp_path / "c.h5"
    embed([image_folder / "red_things"], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu",
          batch_size=4, workers=0, runtime="torch")
    with h5py.File(cache, "a") as fh:  # as written before runtimes were recorded
        for group in fh["encoders"].values():
            del group.attrs["runtime"]
    summary = embed([image_folder], encoder=TINY_ENCODER, cache=cache, weights="random", device="cpu", batch_size=4, workers=0)
    assert summary.runtime == "torch" and Cache(cache).info(TINY_ENCODER)["runtime"] == "torch"


def test_workers_hand_over_one_uint8_tensor_per_batch_through_shared_memory(image_folder):
    files = discover([image_folder])
    dataset_items = [(0, np.zeros((4, 4, 3), np.uint8), "", None, 5), (1, None, "bad file", None, 6),
                     (2, np.ones((4, 4, 3), np.uint8), "", None, 7), (3, None, "", np.frombuffer(b"\xff\xd8jpeg", np.uint8), 8)]
    indices, batch, failures, jpegs, hashes = collate_uint8(dataset_items)
    assert indices == [0, 2] and failures == [(1, "bad file")] and hashes == {0: 5, 1: 6, 2: 7, 3: 8}
    assert batch.dtype == torch.uint8 and batch.shape == (2, 4, 4, 3) and batch[1].eq(1).all()
    assert [i for i, _ in jpegs] == [3] and bytes(jpegs[0][1].numpy()) == b"\xff\xd8jpeg"
    assert collate_uint8([(0, None, "x", None, 0)])[1] is None

    from imgclust.embed import _DecodeDataset, _worker_init

    enc_pre = Preprocess(16)
    loader = torch.utils.data.DataLoader(_DecodeDataset(files, enc_pre, None), batch_size=4, num_workers=1,
                                         collate_fn=collate_uint8, worker_init_fn=_worker_init)
    batches = list(loader)
    assert all(b[1].is_shared() for b in batches)  # came from the worker through shared memory, not a pipe
    assert np.array_equal(batches[0][1][0].numpy(), decode(files[0].path, enc_pre))


def test_the_pipelined_loader_gives_the_rows_of_one_batch_at_a_time(image_folder):
    enc = create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime="torch", batch_size=4)
    files = discover([image_folder])
    rows = [(f.path, v) for results, _ in encode_files(enc, files, 0, None) for f, v, _, _ in results]
    expected = enc.encode(np.stack([decode(f.path, enc.preprocess) for f in files]))
    assert [p for p, _ in rows] == [f.path for f in files]
    assert all(np.array_equal(v, e) for (_, v), e in zip(rows, expected))


def test_a_failed_journal_write_is_raised_in_the_main_thread(tmp_path):
    class Failing(_Journal):
        def __init__(self):
            pass

        def write(self, block, dim):
            raise OSError("disk full")

    writer = _JournalWriter(Failing(), 3)
    writer.put(_Block())
    with pytest.raises(OSError, match="disk full"):
        writer.close()


# -- decoding JPEGs on the device (--decode gpu); the same code runs on the CPU here -----------------


def test_jpegs_decoded_by_torchvision_match_pillow_closely(tmp_path):
    from imgclust.decode import decode_jpegs_on_device, jpeg_bytes

    from .conftest import make_image

    spec = Preprocess(32)
    paths = [make_image(tmp_path / f"{k}.jpg", size=size, noise_seed=k) for k, size in enumerate([(64, 48), (30, 200), (32, 32)])]
    png = make_image(tmp_path / "x.png", size=(40, 40), noise_seed=9)
    assert jpeg_bytes(str(png)) is None  # other formats are decoded by the workers
    decoded = decode_jpegs_on_device([jpeg_bytes(str(p)) for p in paths], spec, "cpu")
    for path, image in zip(paths, decoded):
        pillow = decode(str(path), spec)
        assert image.shape == (32, 32, 3) and image.dtype == torch.uint8
        assert np.abs(image.numpy().astype(int) - pillow.astype(int)).mean() < 8  # another resize, not another image
    assert np.array_equal(decoded[2].numpy(), decode(str(paths[2]), spec))  # no resize: the same pixels
    assert decode_jpegs_on_device([np.frombuffer(b"\xff\xd8garbage", np.uint8)], spec, "cpu") == [None]


def test_decode_on_the_device_falls_back_to_the_cpu_per_file(image_folder, tmp_path, monkeypatch):
    import sys

    from imgclust.decode import decode_jpegs_on_device

    embed_module = sys.modules["imgclust.embed"]
    enc = create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime="torch", batch_size=4)
    files = discover([image_folder])  # JPEGs (red) and PNGs (blue)
    whole = (image_folder / "red_things" / "r0.jpg").read_bytes()
    (tmp_path / "bad.jpg").write_bytes(whole[:len(whole) // 2])  # the header intact, the data cut short
    files += discover([tmp_path / "bad.jpg"])
    refused = (image_folder / "red_things" / "r1.jpg").read_bytes()
    on_device = []

    def device_refusing_r1(datas, spec, device):  # as nvJPEG refuses some JPEGs: r1.jpg must come from the CPU
        out = decode_jpegs_on_device(datas, spec, device)
        on_device.extend(len(datas) * [1])
        return [None if bytes(np.asarray(d)) == refused else image for d, image in zip(datas, out)]

    monkeypatch.setattr(embed_module, "decode_jpegs_on_device", device_refusing_r1)
    results = [r for batch, _ in encode_files(enc, files, 0, None, decode_on="gpu") for r in batch]
    rows = {f.path: (v, reason) for f, v, reason, _ in results}
    phashes = {f.path: h for f, _, _, h in results}  # JPEGs sent to the device: hashed from a reduced decode
    assert phashes[str(image_folder / "red_things" / "r0.jpg")] == hash_only(str(image_folder / "red_things" / "r0.jpg"))
    assert phashes[str(tmp_path / "bad.jpg")] == int(NO_HASH)
    assert len(on_device) == 7 and len(rows) == 13  # 6 good JPEGs and the cut one went to the device
    bad_vector, bad_reason = rows[str(tmp_path / "bad.jpg")]
    assert bad_vector is None and ("truncated" in bad_reason or "corrupt" in bad_reason)
    for name in ("red_things/r1.jpg", "blue_things/b0.png"):  # the CPU fallback, and a PNG decoded by a worker
        path = str(image_folder / name)
        assert np.array_equal(rows[path][0], enc.encode(decode(path, enc.preprocess)[None])[0])
    assert sum(v is not None for v, _ in rows.values()) == 12


def test_decode_gpu_is_refused_without_a_cuda_device(image_folder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="--decode gpu needs a CUDA device"):
        embed([image_folder], encoder=TINY_ENCODER, cache=tmp_path / "c.h5", weights="random", device="cpu", decode_on="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runner_overlaps_pinned_copies_and_returns_the_same_rows(images):
    enc = create_encoder(TINY_ENCODER, weights="random", device="cuda", runtime="torch-amp", batch_size=4)
    first = enc.submit(torch.from_numpy(images[:4]).pin_memory())
    second = enc.submit(torch.from_numpy(images[4:8]))  # submitted before the first is collected
    a, b = first.result(), second.result()
    assert a.dtype == np.float32 and np.array_equal(np.concatenate([a, b]), enc.encode(images[:8]))


def test_cli_runtime_option_names_the_choices_on_a_bad_name(image_folder, tmp_path):
    from typer.testing import CliRunner

    from imgclust.cli import app

    result = CliRunner().invoke(app, ["embed", str(image_folder), "--encoder", TINY_ENCODER, "--weights", "random",
                                      "--cache", str(tmp_path / "c.h5"), "--runtime", "tensorrt"])
    assert result.exit_code == 2 and "unknown runtime 'tensorrt'" in result.output and "openvino" in result.output
    assert not (tmp_path / "c.h5").exists()
    result = CliRunner().invoke(app, ["embed", str(image_folder), "--encoder", TINY_ENCODER, "--weights", "random",
                                      "--cache", str(tmp_path / "c.h5"), "--runtime", "onnxruntime", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert '"runtime": "onnxruntime"' in result.output


def test_openvino_leaves_the_threads_signal_stack_as_it_was():
    # compile_model points the thread's alternate signal stack at memory OpenVINO frees later; a signal handled
    # afterwards (SIGCHLD from a DataLoader worker) then killed the process with SIGSEGV.
    import ctypes

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    def current():
        stack = StackT()
        ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
        return stack.ss_sp, stack.ss_size

    before = current()
    encoder = create_encoder(TINY_ENCODER, weights="random", device="cpu", runtime="openvino", batch_size=2)
    encoder.encode(np.zeros((2, encoder.preprocess.size, encoder.preprocess.size, 3), np.uint8))
    assert current() == before


def test_a_ctrl_c_while_a_runtime_is_imported_stops_after_the_import(tmp_path):
    # OpenVINO's extension interrupted mid-initialisation failed with "ImportError: initialization failed".
    # In a child process: the Ctrl-C must not reach the test runner.
    import subprocess
    import sys

    (tmp_path / "interrupted_ext.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nDONE = True\n")
    script = ("import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from imgclust.runtimes import _import_whole\n"
              "try:\n    _import_whole('interrupted_ext')\nexcept KeyboardInterrupt:\n"
              "    print('interrupted after the import:', sys.modules['interrupted_ext'].DONE)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip() == "interrupted after the import: True", done.stderr


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_open_clip_vits_export_to_the_cpu_runtimes_and_give_the_same_embeddings(name, images, tmp_path, monkeypatch):
    """open_clip's attention takes PyTorch's fused inference path, which ONNX cannot export (the default
    encoder clip-vitb16 failed on CPUs); the export traces the unfused path, the same arithmetic."""
    import torch

    monkeypatch.setenv("IMGCLUST_MODEL_CACHE", str(tmp_path))
    clip = "open_clip:ViT-S-32:none"
    small = np.ascontiguousarray(np.tile(images[:4], (1, 2, 2, 1))[:, :224, :224])  # ViT-S-32 takes 224 px
    eager = create_encoder(clip, weights="random", device="cpu", runtime="torch", batch_size=4).encode(small)
    converted = create_encoder(clip, weights="random", device="cpu", runtime=name, batch_size=4).encode(small)
    cosine = (eager * converted).sum(1) / np.linalg.norm(eager, axis=1) / np.linalg.norm(converted, axis=1)
    assert cosine.min() > 0.999
    assert torch.backends.mha.get_fastpath_enabled()  # restored for everything else
