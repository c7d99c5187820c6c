"""Runtimes: what executes an encoder's forward pass (PyTorch, ONNX Runtime, OpenVINO) and in which precision.

Every runtime takes the loader's uint8 images, ``(n, size, size, 3)``, normalises them where the model runs
(inside the graph for ONNX Runtime and OpenVINO, on the device for PyTorch) and returns float32 embeddings.
``auto`` picks per device and encoder family (:data:`AUTO`), from the side-by-side measurements in
BENCHMARKS.md (effnet-lite0 on 2 cores: OpenVINO float32 over 5x eager float32 PyTorch, per-row cosine
to it 1.0000).

A runtime is part of a cache's identity: two runtimes agree to ~1e-3 (cosine), not bit for bit, so one
cache's rows are all made by one runtime, and a resumed run uses the runtime recorded in the cache.
Within one runtime, on one machine, a row's bits depend only on its image: every forward pass has the
same batch size (padded) and thread count.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._registry import Registry
from .errors import UsageError

LEGACY_RUNTIME = "torch"  # caches written before runtimes were recorded were made by eager PyTorch


@dataclass(frozen=True)
class RuntimeSpec:
    """A named way to run an encoder: the devices it runs on, what it needs installed, how to build it."""

    name: str
    devices: tuple[str, ...]  # device kinds: "cpu", "cuda", "mps"
    description: str
    build: Callable  # (network, preprocess, device, batch_size, threads) -> a runner
    module: str | None = None  # the Python module it needs
    install: str = ""  # how to get that module
    reduced_precision: bool = False

    def missing(self, device: str) -> str | None:
        """Why this runtime cannot run on ``device`` here (None when it can)."""
        kind = device.split(":")[0]
        if kind not in self.devices:
            return f"runs on {' or '.join(self.devices)}, not {device}"
        if self.module is not None and not _importable(self.module):
            return f"needs the Python package for '{self.module}' ({self.install})"
        if self.name == "openvino-bf16" and not _openvino_has_bf16():
            return "this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX)"
        return None


RUNTIMES: Registry[RuntimeSpec] = Registry("runtime")

# Preference per (device kind, encoder family), best first; the first runtime available here is used.
# On CPUs float32 only: bfloat16 (OpenVINO or autocast) is faster but moved effnet-lite0's embeddings of
# real photos further than the bar of per-row cosine 0.999 to eager float32 (BENCHMARKS.md).
AUTO: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "*"): ("openvino", "onnxruntime", "torch"),
    ("cuda", "*"): ("torch-amp", "torch"),
    ("mps", "*"): ("torch",),
}


def _import_whole(module: str):
    """Import ``module`` with Ctrl-C held back until it is done: a C extension interrupted while it
    initialises fails with "ImportError: initialization failed" instead of stopping cleanly."""
    import importlib
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return importlib.import_module(module)
    # The mask keeps the signal from this thread; a Ctrl-C that another thread of the process receives (a
    # library's worker pool) still runs the Python handler here, so that handler only records it meanwhile.
    held = []
    handler = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return importlib.import_module(module)
    finally:
        # unmasking delivers a Ctrl-C the mask held back, to the recording handler still in place
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        signal.signal(signal.SIGINT, handler)
        if held and handler is signal.default_int_handler:
            raise KeyboardInterrupt
        if held and callable(handler):
            handler(signal.SIGINT, None)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@lru_cache(maxsize=1)
def _openvino_has_bf16() -> bool:
    ov = _import_whole("openvino")

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_runtime(requested: str | None, family: str, device: str, recorded: str | None = None) -> str:
    """The runtime to use: ``requested`` (a name, or ``auto``/None), checked against this machine.

    ``recorded`` is the runtime a cache's rows were made with: ``auto`` keeps it (rows of one cache
    come from one runtime); a different explicit name is a usage error.
    """
    kind = device.split(":")[0]
    if requested in (None, "auto"):
        if recorded is None:
            for name in AUTO.get((kind, family)) or AUTO.get((kind, "*")) or AUTO[("cpu", "*")]:
                if RUNTIMES.get(name).missing(device) is None:
                    return name
            return LEGACY_RUNTIME
        why = RUNTIMES.get(recorded).missing(device) if recorded in RUNTIMES else "unknown to this imgclust"
        if why is not None:
            raise UsageError(f"this cache's rows were made with runtime '{recorded}', which cannot run here: {why}",
                             hint="embed where it runs (another --device, or after installing it), or use another --cache")
        return recorded
    spec = RUNTIMES.get(requested)
    if recorded is not None and recorded != requested:
        raise UsageError(f"--runtime {requested}: this cache's rows were made with runtime '{recorded}'; "
                         "one cache holds the rows of one runtime",
                         hint=f"leave --runtime out (or pass --runtime {recorded}) to continue it, or use another --cache")
    why = spec.missing(device)
    if why is not None:
        hint = f"pip install {spec.install.split('pip install ')[-1]}" if "needs the Python package" in why else \
            "leave --runtime out to pick the best one this machine has"
        raise UsageError(f"--runtime {requested}: {why}", hint=hint)
    return requested


def default_threads() -> int:
    """Threads for a CPU forward pass: every core this process may use.

    Decoding workers share the cores with the model as their costs need (a worker waiting for a free
    slot in the queue uses none). The count depends only on the machine, never on ``--workers``: the
    last bits of a forward pass can depend on it, and a resumed run must give the same bits.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# -- the network every runtime runs: uint8 NHWC in, float32 embeddings out -------------------------


def normalised_network(forward: Callable, preprocess, module):
    """``module`` (called through ``forward``) behind the normalisation of uint8 ``(n, h, w, 3)`` images.

    ``(x / 255 - mean) / std`` in float32, elementwise in this order, gives the same bits as the
    numpy preprocessing caches were made with before (tensors, not Python scalars: CUDA turns a
    division by a scalar into a multiplication by its reciprocal).
    """
    import torch

    class Normalised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = module
            # Which output of the module (its own, CLIP's encode_image, CLS + patch mean): part of a converted model's key.
            self.output = f"{getattr(forward, '__module__', '')}.{getattr(forward, '__qualname__', repr(forward))}"
            self.register_buffer("scale", torch.tensor([255.0]))
            self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1))

        def normalise(self, images):
            return (images.permute(0, 3, 1, 2).float() / self.scale - self.mean) / self.std

        def embed(self, x):
            return forward(self.net, x)

        def forward(self, images):
            return self.embed(self.normalise(images))

    return Normalised().eval()


def is_cnn(module) -> bool:
    """More than one 2-D convolution: a CNN (a ViT has one, its patch embedding)."""
    import torch

    return sum(isinstance(m, torch.nn.Conv2d) for m in module.modules()) > 1


class Pending:
    """The embeddings of a submitted batch, ready when :meth:`result` returns."""

    def __init__(self, wait: Callable[[], np.ndarray]):
        self._wait = wait

    def result(self) -> np.ndarray:
        return self._wait()


class TorchRunner:
    """Eager PyTorch, optionally with autocast (bfloat16 on CPUs, float16 on GPUs) and channels-last.

    On CUDA, a batch is copied from pinned memory on a side stream (so the copy of batch n+1 overlaps
    the forward pass of batch n), normalised on the device, and its result copied back into pinned
    memory without waiting: :meth:`Pending.result` waits for that batch's event only.
    """

    def __init__(self, network, device: str, dtype=None, autocast_dtype=None, channels_last: bool = False,
                 threads: int | None = None):
        import torch

        self.device, self.autocast_dtype, self.channels_last = device, autocast_dtype, channels_last
        self.dtype = dtype or torch.float32
        self.threads = threads
        self.network = network.to(device=device)
        self.network.net.to(dtype=self.dtype)
        if channels_last:
            self.network.net.to(memory_format=torch.channels_last)
        self.cuda = device.startswith("cuda")
        self.copy_stream = torch.cuda.Stream(device=device) if self.cuda else None

    @property
    def reduced_precision(self) -> bool:
        import torch

        return self.dtype != torch.float32 or self.autocast_dtype is not None

    def _to_device(self, images):
        import torch

        images = torch.as_tensor(images)
        if not self.cuda or images.device.type != "cpu":  # (decoded on the device already: --decode gpu)
            return images.to(self.device)
        if not images.is_pinned():
            images = images.pin_memory()
        with torch.cuda.stream(self.copy_stream):
            on_device = images.to(self.device, non_blocking=True)
        torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
        on_device.record_stream(torch.cuda.current_stream(self.device))
        return on_device

    def _forward(self, images):
        import torch

        x = self.network.normalise(self._to_device(images))
        # Channels-last CNNs take the NHWC layout as it comes; the plain path keeps the contiguous layout
        # caches were made with before (a layout can change which kernel runs, so the last bits).
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        x = x.to(self.dtype)
        if self.autocast_dtype is None:
            return self.network.embed(x)
        with torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype):
            return self.network.embed(x)

    def submit(self, images) -> Pending:
        import torch

        threads = torch.get_num_threads()
        if self.threads and not self.cuda:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                out = self._forward(images).float()
                if not self.cuda:
                    result = out.cpu().numpy()
                    return Pending(lambda: result)
                host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                host.copy_(out, non_blocking=True)
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(self.device))
        finally:
            torch.set_num_threads(threads)

        def wait():
            done.synchronize()
            return host.numpy()

        return Pending(wait)

    @contextlib.contextmanager
    def in_float32(self) -> Iterator[TorchRunner]:
        """This runner in float32 without autocast (the model converted in place, and back after),
        for a batch with rows that are not finite in reduced precision."""
        import torch

        saved = self.dtype, self.autocast_dtype
        self.network.net.float()
        self.dtype, self.autocast_dtype = torch.float32, None
        try:
            yield self
        finally:
            self.dtype, self.autocast_dtype = saved
            self.network.net.to(self.dtype)


def onnx_bytes(network, size: int, batch_size: int) -> bytes:
    """``network`` exported to ONNX (uint8 ``(batch_size, size, size, 3)`` in), in memory."""
    import io

    import torch

    buffer = io.BytesIO()
    example = torch.zeros((batch_size, size, size, 3), dtype=torch.uint8)
    # The TorchScript exporter: the dynamo one needs onnxscript and more time; torch is capped at a release that has both.
    # nn.MultiheadAttention's fused inference path (open_clip's ViTs) is one op ONNX has no export for: the
    # export traces the unfused path (the same arithmetic), then the fast path is restored.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(network, (example,), buffer, input_names=["images"], output_names=["embeddings"],
                              dynamo=False, opset_version=17)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return buffer.getvalue()


def model_cache_dir() -> Path:
    """Where converted models are kept: ``$IMGCLUST_MODEL_CACHE``, else ``~/.cache/imgclust/models``."""
    if os.environ.get("IMGCLUST_MODEL_CACHE"):
        return Path(os.environ["IMGCLUST_MODEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgclust" / "models"


def network_digest(network, size: int, batch_size: int) -> str:
    """Identifies a converted network: its class and output, every parameter and buffer, input shape and versions."""
    import hashlib

    import torch

    from . import __version__

    digest = hashlib.sha256(f"{type(network.net).__name__}|{network.output}|{size}|{batch_size}|{__version__}|"
                            f"{torch.__version__}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()[:32]


def _openvino_model(network, size: int, batch_size: int):
    """The OpenVINO model of ``network``, converted once (through ONNX, faster than tracing) and kept on
    disk in full precision under :func:`model_cache_dir`; later runs read it in well under a second."""
    import tempfile

    ov = _import_whole("openvino")

    path = model_cache_dir() / f"openvino-{ov.get_version().split('-')[0]}-{network_digest(network, size, batch_size)}.xml"
    if path.exists() and path.with_suffix(".bin").exists():
        try:
            return ov.Core().read_model(str(path))
        except RuntimeError:
            pass  # a damaged file: convert again
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(onnx_bytes(network, size, batch_size))
        model = ov.convert_model(str(onnx_path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # written aside, then renamed: never half a model
            ov.save_model(model, str(Path(tmp) / path.name), compress_to_fp16=False)
            os.replace(Path(tmp) / path.with_suffix(".bin").name, path.with_suffix(".bin"))
            os.replace(Path(tmp) / path.name, path)
    except OSError:
        pass  # a read-only home: convert again next time
    return model


class OnnxRunner:
    """ONNX Runtime on the CPU (the network exported once to ONNX in memory, normalisation included)."""

    reduced_precision = False

    def __init__(self, network, size: int, batch_size: int, threads: int):
        ort = _import_whole("onnxruntime")

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # Idle threads sleep instead of spinning, leaving the cores to the decoding workers between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_bytes(network, size, batch_size), options,
                                            providers=["CPUExecutionProvider"])

    def submit(self, images) -> Pending:
        result = self.session.run(None, {"images": np.ascontiguousarray(images)})[0]
        return Pending(lambda: result)

    @contextlib.contextmanager
    def in_float32(self) -> Iterator[OnnxRunner]:
        yield self  # float32 already


@contextlib.contextmanager
def _signal_stack_kept() -> Iterator[None]:
    """Give the calling thread its own alternate signal stack back after the block.

    OpenVINO's ``compile_model`` points the thread's alternate signal stack at memory of its own that
    it frees later; a Python signal handler (they run on that stack) called afterwards, such as the
    SIGCHLD handler torch's DataLoader installs, then makes the kernel kill the process with SIGSEGV.
    """
    import ctypes

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    try:
        sigaltstack = ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):  # no C library to ask (not a POSIX system): nothing to keep
        yield
        return
    saved = StackT()
    if sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        saved.ss_flags &= ~1  # SS_ONSTACK is a state, not a setting
        sigaltstack(ctypes.byref(saved), None)


class OpenVinoRunner:
    """OpenVINO on the CPU, normalisation inside the graph, compiled for one static batch size.

    Two inference requests alternate, so batch n+1 can be submitted while batch n runs.
    """

    def __init__(self, network, size: int | None, batch_size: int, threads: int, precision: str):
        """``network``: a torch module (converted here), or an already converted OpenVINO model."""
        ov = _import_whole("openvino")
        import torch

        if isinstance(network, torch.nn.Module):
            network = _openvino_model(network, size, batch_size)
        self.model, self.threads, self.precision = network, threads, precision
        self.reduced_precision = precision != "f32"
        self.float32_runner: OpenVinoRunner | None = None
        with _signal_stack_kept():
            compiled = ov.Core().compile_model(self.model, "CPU", {
                "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
                "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        self.requests = [compiled.create_infer_request() for _ in range(2)]
        self.turn = 0

    def submit(self, images) -> Pending:
        request = self.requests[self.turn]
        self.turn = 1 - self.turn
        request.wait()  # the request's previous batch (already collected by the caller)
        request.start_async({0: np.ascontiguousarray(images)}, share_inputs=False)

        def wait():
            request.wait()
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

        return Pending(wait)

    @contextlib.contextmanager
    def in_float32(self) -> Iterator[OpenVinoRunner]:
        if self.precision == "f32":
            yield self
            return
        if self.float32_runner is None:
            self.float32_runner = OpenVinoRunner(self.model, None, 0, self.threads, "f32")
        yield self.float32_runner


def legacy_torch_threads() -> int:
    """The CPU thread count caches without a recorded runtime were made with (the cores left beside a
    quarter of them for decoding, as imgclust split them before runtimes): the last bits of a forward
    pass depend on it, so the ``torch`` runtime keeps it and such caches resume bit for bit."""
    cores = os.cpu_count() or 2
    return max(1, cores - max(1, min(4, cores // 4)))


def _torch(network, preprocess, device, batch_size, threads):
    import torch

    return TorchRunner(network, device, dtype=torch.float16 if device.startswith("cuda") else torch.float32,
                       threads=legacy_torch_threads())


def _torch_amp(network, preprocess, device, batch_size, threads):
    import torch

    dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    return TorchRunner(network, device, autocast_dtype=dtype, channels_last=is_cnn(network.net), threads=threads)


for _runtime in (
    RuntimeSpec("torch", ("cpu", "cuda", "mps"), "eager PyTorch: float32 on CPUs (with the thread count of earlier "
                "versions), float16 on GPUs -- what caches without a recorded runtime were made with", _torch),
    RuntimeSpec("torch-amp", ("cpu", "cuda"), "PyTorch autocast (bfloat16 on CPUs, float16 on GPUs), float32 outputs; "
                "channels-last for CNNs", _torch_amp, reduced_precision=True),
    RuntimeSpec("onnxruntime", ("cpu",), "ONNX Runtime, float32", lambda net, pre, dev, bs, th: OnnxRunner(net, pre.size, bs, th),
                module="onnxruntime", install="pip install 'imgclust[onnx]'"),
    RuntimeSpec("openvino", ("cpu",), "OpenVINO, float32", lambda net, pre, dev, bs, th: OpenVinoRunner(net, pre.size, bs, th, "f32"),
                module="openvino", install="pip install openvino"),
    RuntimeSpec("openvino-bf16", ("cpu",), "OpenVINO, bfloat16 (CPUs with AVX-512 BF16 or AMX)",
                lambda net, pre, dev, bs, th: OpenVinoRunner(net, pre.size, bs, th, "bf16"),
                module="openvino", install="pip install openvino", reduced_precision=True),
):
    RUNTIMES.register(_runtime.name, _runtime)
