import time

import numpy as np
import pytest

from imgclust import encoders
from imgclust.decode import decode
from imgclust.encoders import ENCODERS, create_encoder, list_encoders, resolve_spec
from imgclust.errors import NotFoundError, UsageError, WeightsUnavailableError

from .conftest import TINY_ENCODER, shared_set

REQUIRED = ["clip-vitb16", "clip-vitb32", "clip-vitl14", "dinov2-vits14", "dinov2-vitb14", "dinov2-vitl14",
            "dino-vitb16", "mae-vitb16", "supervised-vitb16", "supervised-rn50", "effnet-lite0",
            "effnet-lite1", "effnet-lite2"]


def test_registry_has_the_documented_encoders_with_specs():
    assert set(REQUIRED) <= set(ENCODERS.names())
    for spec in list_encoders():
        assert spec.embedding_dim and spec.preprocess.size == {"effnet-lite1": 240, "effnet-lite2": 260}.get(spec.name, 224)
        assert spec.family in ("open_clip", "timm", "effnet-lite")
    assert resolve_spec("clip-vitb16").preprocess.mean == encoders.CLIP_MEAN
    assert [s.name for s in list_encoders("dinov2*")] == ["dinov2-vits14", "dinov2-vitb14", "dinov2-vitl14"]


def test_prefixed_names_resolve_from_timm_and_open_clip_configs():
    spec = resolve_spec("timm:vit_base_patch16_224.augreg_in1k")
    assert spec.family == "timm" and spec.preprocess.mean == (0.5, 0.5, 0.5)
    clip = resolve_spec("open_clip:ViT-B-32:laion2b_s34b_b79k")
    assert clip.family == "open_clip" and clip.weights == "laion2b_s34b_b79k"


@pytest.mark.parametrize("name, error", [
    ("clip-vit-b-99", NotFoundError), ("timm:no_such_model", UsageError), ("open_clip:ViT-B-32", UsageError),
    ("weights/model.pth", UsageError),
])
def test_bad_names_fail_with_a_hint(name, error):
    with pytest.raises(error) as info:
        resolve_spec(name)
    assert info.value.hint


def test_unknown_name_lists_close_choices():
    with pytest.raises(NotFoundError) as info:
        resolve_spec("dinov2")
    assert "dinov2-vitb14" in info.value.hint


def test_missing_weights_fail_fast_offline_naming_where_and_what_to_use(monkeypatch):
    monkeypatch.setattr(encoders, "_hub_reachable", lambda timeout=3.0: False)
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        create_encoder("timm:test_vit.r160_in1k", device="cpu")
    assert time.monotonic() - started < 30  # no retry loop
    assert "test_vit" in info.value.message and "local cache" in info.value.message
    assert "effnet-lite0" in info.value.hint and "--weights" in info.value.hint


def test_random_weights_are_seeded_and_shapes_are_probed():
    a, b = create_encoder(TINY_ENCODER, weights="random", device="cpu"), create_encoder(TINY_ENCODER, weights="random", device="cpu")
    x = np.random.default_rng(0).integers(0, 256, size=(2, a.preprocess.size, a.preprocess.size, 3), dtype=np.uint8)
    out = a.encode(x)
    assert out.shape == (2, a.embedding_dim) and out.dtype == np.float32
    assert np.array_equal(out, b.encode(x))


def test_local_weights_file_is_loaded(tmp_path):
    import torch

    enc = create_encoder(TINY_ENCODER, weights="random", device="cpu")
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in enc.model.state_dict().items()}
    torch.save(state, tmp_path / "ckpt.pth")
    loaded = create_encoder(TINY_ENCODER, weights=str(tmp_path / "ckpt.pth"), device="cpu")
    first = next(iter(state))
    assert torch.equal(loaded.model.state_dict()[first], state[first])
    with pytest.raises(UsageError, match="not found"):
        create_encoder(TINY_ENCODER, weights=str(tmp_path / "none.pth"))


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_offline_encoders_have_real_imagenet_weights(variant):
    """The positional load of the lukemelas weights is right: ImageNet classes come out right."""
    import timm
    import torch

    data = shared_set("imagenette-mini")
    name, architecture = f"effnet-lite{variant}", f"tf_efficientnet_lite{variant}"
    enc = create_encoder(name, device="cpu", runtime="torch")
    cfg = timm.models.get_pretrained_cfg(architecture)  # the model's own preprocessing, not lite0's
    assert (enc.preprocess.size, enc.preprocess.mean, enc.preprocess.std, enc.preprocess.interpolation) == \
        (cfg.input_size[-1], tuple(cfg.mean), tuple(cfg.std), cfg.interpolation)
    classifier = timm.create_model(architecture, num_classes=1000)
    state = torch.load(encoders.effnet_weights_path(architecture), map_location="cpu", weights_only=True)
    classifier.load_state_dict(dict(zip(classifier.state_dict().keys(), state.values())))
    classifier.load_state_dict(enc.model.state_dict(), strict=False)  # classify with the encoder's own backbone
    files = sorted((data / "tench").iterdir())[:20] + sorted((data / "golf_ball").iterdir())[:20]
    x = np.stack([decode(str(f), enc.preprocess) for f in files])
    with torch.inference_mode():
        predicted = classifier.eval()(enc.runner.network.normalise(torch.from_numpy(x))).argmax(1).numpy()
    # tench, golf ball: 16-18 of 20 right for each model (wrong weights: chance is 1 in 1000)
    assert (predicted[:20] == 0).sum() >= 14 and (predicted[20:] == 574).sum() >= 14
    assert enc.encode(x[:4]).shape == (4, 1280)


# --- --features cls+patchmean (ICCE's ViT features), on a tiny random-weight timm ViT -------------


def test_cls_patchmean_features_are_stored_as_their_own_table(image_folder, tmp_path):
    import torch

    from imgclust.cache import Cache
    from imgclust.embed import embed

    opts = dict(weights="random", device="cpu", workers=0, cache=tmp_path / "vit.h5")
    embed([image_folder], encoder="timm:test_vit", **opts)
    summary = embed([image_folder], encoder="timm:test_vit", features="cls+patchmean", **opts)
    assert summary.encoder == "timm:test_vit+cls+patchmean" and summary.embedded == 12
    cache = Cache(tmp_path / "vit.h5")
    assert set(cache.encoders()) == {"timm:test_vit", "timm:test_vit+cls+patchmean"}
    plain = cache.read_embeddings("timm:test_vit")
    both = cache.read_embeddings("timm:test_vit+cls+patchmean")
    d = plain.shape[1]
    assert both.shape == (12, 2 * d)
    np.testing.assert_allclose(both[:, :d], plain, atol=1e-5)  # the first half is the CLS embedding
    # the second half is the mean of the last block's patch tokens, computed here by hand
    enc = create_encoder("timm:test_vit", weights="random", device="cpu")
    path = str(cache.read_index("timm:test_vit").paths[0])
    pre = enc.preprocess  # decode gives uint8 (size, size, 3); the model takes normalised NCHW float32
    image = (decode(path, pre) / 255.0 - np.array(pre.mean)) / np.array(pre.std)
    x = torch.as_tensor(image.transpose(2, 0, 1)[None], dtype=torch.float32)
    with torch.inference_mode():
        tokens = enc.model.forward_features(x)
    # the stored rows come from the default runtime (OpenVINO on a CPU): agreement to ~1e-5, not bit for bit
    np.testing.assert_allclose(both[0, d:], tokens[0, enc.model.num_prefix_tokens:].mean(0).numpy(), atol=1e-4)


def test_cls_patchmean_needs_a_vit():
    from imgclust.encoders import features_name

    with pytest.raises(UsageError, match="needs a ViT with a CLS token"):
        create_encoder(TINY_ENCODER + "+cls+patchmean", weights="random", device="cpu")
    with pytest.raises(UsageError, match="needs a ViT from timm"):
        resolve_spec("clip-vitb16+cls+patchmean")
    with pytest.raises(UsageError, match="not known"):
        features_name("dinov2-vitb14", "patchmax")
    spec = resolve_spec("dinov2-vitb14+cls+patchmean")
    assert spec.embedding_dim == 1536 and spec.features == "cls+patchmean" and spec.architecture.startswith("vit_base")


def test_converted_models_are_keyed_by_their_output_too():
    # Same weights, other output (CLS + patch mean): a kept OpenVINO model of one must never serve the other.
    import timm

    from imgclust.encoders import cls_patchmean
    from imgclust.runtimes import network_digest, normalised_network

    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    spec = resolve_spec("timm:test_vit")
    plain = normalised_network(lambda net, x: net(x), spec.preprocess, model)
    both = normalised_network(cls_patchmean, spec.preprocess, model)
    assert network_digest(plain, spec.preprocess.size, 2) != network_digest(both, spec.preprocess.size, 2)
