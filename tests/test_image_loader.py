"""Image tower loading: each layout round-trips; the tower is locked, differentiable in its pixels, and the
embedded EfficientNet-Lite0 is the real ImageNet model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import (
    FakeComfyClipVision,
    hf_to_openclip_visual,
    save_state,
    tiny_clip_vision,
    tiny_dinov2,
    tiny_siglip_vision,
    tiny_vit,
)

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.towers.image_tower import load_image_tower, tower_from_comfy_clip_vision


def _images(b=2, h=40, w=52, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, h, w, 3, generator=g)


def _reference(model, kind, pixels):
    with torch.no_grad():
        if kind == "clip":
            return model(pixel_values=pixels).image_embeds
        if kind == "siglip":
            return model(pixel_values=pixels).pooler_output
        if kind == "dinov2":
            return model(pixel_values=pixels).pooler_output
        return model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 0]


@pytest.mark.parametrize("kind,builder,dim", [("clip", tiny_clip_vision, 64), ("siglip", tiny_siglip_vision, 128),
                                              ("dinov2", tiny_dinov2, 128), ("vit", tiny_vit, 128)])
@pytest.mark.parametrize("layout", ["single_file", "hf_folder"])
def test_vision_layouts_round_trip(tmp_path, kind, builder, dim, layout):
    model = builder()
    if layout == "single_file":
        path = save_state(model, str(tmp_path / f"{kind}.safetensors"))
    else:
        path = str(tmp_path / kind)
        model.save_pretrained(path)
    tower = load_image_tower(path)
    assert tower.kind == kind and tower.embed_dim == dim
    imgs = _images()
    pixels = tower.preprocess(imgs)
    assert pixels.shape == (2, 3, tower.input_size, tower.input_size)
    torch.testing.assert_close(tower.encode(imgs), _reference(model, kind, pixels), atol=1e-5, rtol=1e-5)


def test_clip_vision_openclip_native_layout(tmp_path):
    model = tiny_clip_vision()
    path = save_state(hf_to_openclip_visual(model.state_dict()), str(tmp_path / "open_clip.safetensors"))
    tower = load_image_tower(path)
    imgs = _images()
    torch.testing.assert_close(tower.encode(imgs), _reference(model, "clip", tower.preprocess(imgs)),
                               atol=1e-5, rtol=1e-5)


def test_full_clip_model_file_gives_the_vision_tower(tmp_path):
    """laion/openai CLIP `model.safetensors` hold both towers; the image loader takes the vision half."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1,
                                  "intermediate_size": 128, "vocab_size": 50},
                     vision_config={"hidden_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 128, "image_size": 32, "patch_size": 8}, projection_dim=48)
    full = CLIPModel(cfg).eval()
    path = save_state(full.state_dict(), str(tmp_path / "clip_full.safetensors"))
    tower = load_image_tower(path)
    imgs = _images()
    with torch.no_grad():
        ref = full.get_image_features(pixel_values=tower.preprocess(imgs))
    ref = getattr(ref, "pooler_output", ref)
    assert tower.embed_dim == 48
    torch.testing.assert_close(tower.encode(imgs), ref, atol=1e-5, rtol=1e-5)


def test_preprocess_matches_comfyui_clip_preprocess_without_rounding():
    tower = load_image_tower(None)
    imgs = _images(1, 300, 400)
    got = tower.preprocess(imgs)
    # ComfyUI's clip_preprocess: shorter side to S (bicubic, antialias), centre crop, normalise (it also rounds to
    # 8 bits, which we must not: that would kill gradients)
    x = imgs.movedim(-1, 1)
    x = torch.nn.functional.interpolate(x, size=(224, round(400 * 224 / 300)), mode="bicubic", antialias=True)
    left = (x.shape[-1] - 224) // 2
    x = x[..., :, left:left + 224].clamp(0, 1)
    want = (x - tower.mean) / tower.std
    torch.testing.assert_close(got, want)


def test_tower_is_locked_and_differentiable_in_pixels():
    tower = load_image_tower(path=None)
    assert all(not p.requires_grad for p in tower.parameters())
    tower.train()
    assert not tower.training and not tower.backbone.training  # BatchNorm stays frozen
    imgs = _images(1, 64, 64).requires_grad_(True)
    tower.embed(imgs).pow(2).sum().backward()
    assert imgs.grad is not None and imgs.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.parameters())


def test_embedded_efficientnet_lite0_is_the_imagenet_model():
    from skimage import data

    tower = load_image_tower(None)
    assert tower.embed_dim == 1280 and tower.input_size == 224 and tower.kind == "efficientnet"
    cat = torch.from_numpy(np.ascontiguousarray(data.chelsea())).float().div(255)[None]
    with torch.no_grad():
        logits = tower.backbone.model(tower.preprocess(cat))
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's domestic cat classes
    emb = tower.encode(cat)
    assert emb.shape == (1, 1280) and torch.isfinite(emb).all()
    # Cached as safetensors after the first load: the second load reads no pickle.
    assert load_image_tower(None).fingerprint == tower.fingerprint


def test_wraps_comfyui_clip_vision_with_gradients():
    model = tiny_clip_vision()
    fake = FakeComfyClipVision(model.state_dict(), image_size=32, dtype=torch.float32)
    assert all(t.is_inference() for t in fake.get_sd().values())
    with torch.inference_mode():  # as inside a node
        tower = tower_from_comfy_clip_vision(fake)
    imgs = _images()
    torch.testing.assert_close(tower.encode(imgs), _reference(model, "clip", tower.preprocess(imgs)),
                               atol=1e-5, rtol=1e-5)
    x = imgs.clone().requires_grad_(True)
    tower.embed(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_greyscale_and_rgba_inputs():
    tower = load_image_tower(None)
    grey = torch.rand(1, 50, 60, 1)
    rgba = torch.cat([grey.expand(-1, -1, -1, 3), torch.ones(1, 50, 60, 1)], dim=-1)
    # the two layouts sum in another order in fp32
    torch.testing.assert_close(tower.encode(grey), tower.encode(rgba), rtol=1e-5, atol=1e-4)


def test_bad_image_inputs(tmp_path):
    with pytest.raises(LitError, match="pickle"):
        p = tmp_path / "vit.pt"
        p.write_bytes(b"\x80\x04")
        load_image_tower(str(p))
    path = save_state({"foo": torch.zeros(2)}, str(tmp_path / "foo.safetensors"))
    with pytest.raises(LitError, match="not an image encoder"):
        load_image_tower(path)
    with pytest.raises(LitError, match="channels"):
        load_image_tower(None).encode(torch.rand(1, 8, 8, 2))
    with pytest.raises(LitError, match="CLIP_VISION"):
        tower_from_comfy_clip_vision(object())
