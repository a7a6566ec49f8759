"""The reference matrix: each supported tower built by its REFERENCE implementation (open_clip, transformers, and
ComfyUI's key layout), at reduced depth/width with random weights, saved the way released files are laid out,
loaded through our loaders and compared on real photos (scikit-image) within fp32 tolerance. The strict loader
refuses any tensor it would not use, so a load that passes used every tensor except the ones each test names.
Each reference model is built once per module (fixtures), the photo batch once per session."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import (
    COMFY_TEXT,
    COMFY_VISION,
    FakeComfyClipVision,
    bert_tokenizer,
    checkpoint_state,
    comfy_vision_names,
    openclip_ids,
    perturb_,
    photo_batch,
    save_state,
    write_clip_bpe,
)

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.towers.image_tower import load_image_tower, tower_from_comfy_clip_vision
from comfyui_lit.models.towers.text_tower import load_text_tower

TEXTS = ["a photo of a cat", "red square on the blue", "dog", "a bright circle on the dark green"]
TOL = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def photos():
    return photo_batch(224)


@pytest.fixture(scope="module")
def clip_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = write_clip_bpe(str(tmp_path_factory.mktemp("clip_tok") / "tok"))
    return folder, AutoTokenizer.from_pretrained(folder)


# --- open_clip ----------------------------------------------------------------------------------------------------
# (model name, quick_gelu as released (OpenAI weights use QuickGELU, LAION H/bigG GELU), LayerScale init or None)
OPENCLIP = [("ViT-B-32", True, None), ("ViT-L-14", True, None), ("ViT-H-14", False, None),
            ("ViT-bigG-14", False, None), ("ViT-B-32", False, 0.1)]


@pytest.fixture(scope="module", params=OPENCLIP, ids=lambda p: p[0] + ("-layerscale" if p[2] else ""))
def openclip_case(request, tmp_path_factory, clip_tok):
    """A reduced OpenCLIP model from the named config, saved as OpenCLIP's hub repos are:
    ``open_clip_model.safetensors`` + ``open_clip_config.json``."""
    import open_clip

    name, quick, ls = request.param
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    head_width = v.get("head_width", 64)
    v.update(layers=2, width=2 * head_width, image_size=v["patch_size"] * 4)
    t.update(layers=2, width=128, heads=2, vocab_size=len(clip_tok[1]), context_length=16)
    if ls:
        v["ls_init_value"] = t["ls_init_value"] = ls
    cfg.update(embed_dim=64, quick_gelu=quick)
    torch.manual_seed(0)
    model = perturb_(open_clip.model.CLIP(**cfg).eval())
    folder = tmp_path_factory.mktemp("openclip") / name
    folder.mkdir()
    path = save_state(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    pre = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))
    return model, path, cfg


def test_openclip_vision_matches_reference(openclip_case, photos):
    model, path, cfg = openclip_case
    tower = load_image_tower(path)
    assert tower.layout == "openclip-visual" and tower.ignored_tensors == []
    assert tower.embed_dim == cfg["embed_dim"] and tower.input_size == cfg["vision_cfg"]["image_size"]
    with torch.no_grad():
        ref = model.encode_image(tower.preprocess(photos))
    torch.testing.assert_close(tower.encode(photos), ref, **TOL)


def test_openclip_text_matches_reference(openclip_case, clip_tok):
    model, path, cfg = openclip_case
    tower = load_text_tower(path, tokenizer_path=clip_tok[0])
    assert tower.layout == "openclip-text" and tower.hidden_size == cfg["embed_dim"]
    # the file is the whole CLIP: the text tower leaves exactly the image half and the logit scale
    assert set(tower.ignored_tensors) == {k for k in model.state_dict() if k.startswith("visual.")} | {"logit_scale"}
    ids = openclip_ids(tower.tokenize(TEXTS)["input_ids"], cfg["text_cfg"]["context_length"], clip_tok[1].pad_token_id)
    with torch.no_grad():
        ref = model.encode_text(ids)
    torch.testing.assert_close(tower.encode(TEXTS), ref, **TOL)


def test_openclip_tower_with_any_tensor_unused_fails(openclip_case, tmp_path):
    model, _, _ = openclip_case
    state = dict(model.state_dict())
    state["visual.transformer.resblocks.1.mlp.ln.weight"] = torch.ones(8)  # open_clip's scale_fc variant
    state["transformer.resblocks.0.ln_attn.weight"] = torch.ones(8)  # open_clip's scale_attn variant
    path = save_state(state, str(tmp_path / "variant.safetensors"))
    with pytest.raises(LitError, match=r"mlp\.ln\.weight"):
        load_image_tower(path)
    with pytest.raises(LitError, match=r"ln_attn\.weight"):
        load_text_tower(path, tokenizer_path=None, tokenizer_search_dirs={"clip": []})


# --- timm: its ViT-family layout is refused, clearly ------------------------------------------------------------

@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2",
                                  "vit_base_patch16_siglip_224", "vit_base_patch16_224"])
def test_timm_layouts_are_refused_clearly(tmp_path, name):
    import timm

    model = timm.create_model(name, pretrained=False, depth=1, embed_dim=64, num_heads=1, img_size=28
                              if "patch14" in name else 32)
    path = save_state(model.state_dict(), str(tmp_path / f"{name}.safetensors"))
    with pytest.raises(LitError, match="timm checkpoint") as err:
        load_image_tower(path)
    assert "transformers (HF) release" in str(err.value)


# --- transformers -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_clip_full(tmp_path_factory, clip_tok):
    from transformers import CLIPConfig, CLIPModel

    tok = clip_tok[1]
    cfg = CLIPConfig(text_config={"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 256, "vocab_size": len(tok), "max_position_embeddings": 32,
                                  "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id,
                                  "hidden_act": "quick_gelu"},
                     vision_config={"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                                    "intermediate_size": 256, "image_size": 32, "patch_size": 8,
                                    "hidden_act": "quick_gelu"}, projection_dim=48)
    torch.manual_seed(0)
    model = perturb_(CLIPModel(cfg).eval())
    path = save_state(model, str(tmp_path_factory.mktemp("hfclip") / "clip.safetensors"))
    return model, path


def _features(out):
    return getattr(out, "pooler_output", out) if not torch.is_tensor(out) else out


def test_hf_clip_full_model_both_towers(hf_clip_full, photos, clip_tok):
    model, path = hf_clip_full
    image = load_image_tower(path)
    assert image.layout == "hf-clip-vision" and image.embed_dim == 48
    assert all(k.startswith(("text_model.", "text_projection", "logit_scale")) for k in image.ignored_tensors)
    with torch.no_grad():
        ref = _features(model.get_image_features(pixel_values=image.preprocess(photos)))
    torch.testing.assert_close(image.encode(photos), ref, **TOL)
    text = load_text_tower(path, tokenizer_path=clip_tok[0])
    assert text.layout == "hf-clip-text" and text.hidden_size == 48
    assert all(k.startswith(("vision_model.", "visual_projection", "logit_scale")) for k in text.ignored_tensors)
    batch = text.tokenize(TEXTS)
    with torch.no_grad():
        ref = _features(model.get_text_features(**batch))
    torch.testing.assert_close(text.encode(TEXTS), ref, **TOL)


@pytest.fixture(scope="module")
def hf_siglip_full(tmp_path_factory):
    from transformers import SiglipConfig, SiglipModel

    folder = str(tmp_path_factory.mktemp("siglip") / "siglip")
    tok = bert_tokenizer(folder)
    cfg = SiglipConfig(text_config={"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                                    "intermediate_size": 256, "vocab_size": len(tok), "max_position_embeddings": 16},
                       vision_config={"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                                      "intermediate_size": 256, "image_size": 32, "patch_size": 8})
    torch.manual_seed(0)
    model = perturb_(SiglipModel(cfg).eval())
    path = save_state(model, folder + ".safetensors")  # tokenizer in the same-name folder beside it
    return model, path, tok


def test_hf_siglip_full_model_both_towers(hf_siglip_full, photos):
    """SigLIP and SigLIP2 (fixed resolution: released as SiglipModel checkpoints) share this layout."""
    model, path, tok = hf_siglip_full
    image = load_image_tower(path)
    assert image.layout == "hf-siglip-vision" and image.embed_dim == 128
    with torch.no_grad():
        ref = _features(model.get_image_features(pixel_values=image.preprocess(photos)))
    torch.testing.assert_close(image.encode(photos), ref, **TOL)
    text = load_text_tower(path)
    assert text.layout == "hf-siglip-text"
    batch = tok(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = _features(model.get_text_features(input_ids=batch["input_ids"]))
    torch.testing.assert_close(text.encode(TEXTS), ref, **TOL)


def test_siglip2_naflex_is_refused_clearly(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    model = Siglip2VisionModel(Siglip2VisionConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                                                   intermediate_size=64, patch_size=8, num_patches=16))
    path = save_state(model, str(tmp_path / "siglip2_naflex.safetensors"))
    with pytest.raises(LitError, match="NaFlex"):
        load_image_tower(path)


def test_hf_dinov2_with_registers(tmp_path, photos):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    model = perturb_(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14, mlp_ratio=2,
        num_register_tokens=4, layer_norm_eps=1e-6)).eval())
    for layout in ("file", "folder"):
        if layout == "file":
            path = save_state(model, str(tmp_path / "dinov2_reg.safetensors"))
        else:
            path = str(tmp_path / "dinov2_reg")
            model.save_pretrained(path)
        tower = load_image_tower(path)
        assert tower.layout == "hf-dinov2" and tower.kind == "dinov2"
        assert tower.backbone.model.config.num_register_tokens == 4
        with torch.no_grad():
            ref = model(pixel_values=tower.preprocess(photos)).pooler_output
        torch.testing.assert_close(tower.encode(photos), ref, **TOL)


def _mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).float()
    return (hidden * m).sum(1) / m.sum(1)


def test_hf_xlm_roberta_folder(tmp_path):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    folder = str(tmp_path / "xlmr")
    tok = bert_tokenizer(folder)
    torch.manual_seed(0)
    model = perturb_(XLMRobertaModel(XLMRobertaConfig(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
        max_position_embeddings=40, pad_token_id=tok.pad_token_id)).eval())
    model.save_pretrained(folder)
    tower = load_text_tower(folder)
    assert tower.layout == "bert-family" and type(tower.model).__name__ == "XLMRobertaModel"
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = _mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])
    torch.testing.assert_close(tower.encode(TEXTS), ref, **TOL)


@pytest.mark.parametrize("layout", ["encoder_folder", "full_t5_file"])
def test_hf_t5_encoder(tmp_path, layout):
    from transformers import T5Config, T5EncoderModel, T5Model

    folder = str(tmp_path / "t5")
    tok = bert_tokenizer(folder)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_kv=32, d_ff=96, num_layers=2, num_heads=2,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
    torch.manual_seed(0)
    if layout == "encoder_folder":
        model = perturb_(T5EncoderModel(cfg).eval())
        model.save_pretrained(folder)
        path, encoder = folder, model
    else:  # a whole encoder-decoder file, config from the shapes: the decoder half is left alone
        full = perturb_(T5Model(cfg).eval())
        # as save_pretrained writes it: the embedding once, as shared.weight (the others are tied to it)
        state = {k: v.clone() for k, v in full.state_dict().items() if not k.endswith("embed_tokens.weight")}
        path = save_state(state, folder + ".safetensors")
        encoder = full.encoder
    tower = load_text_tower(path)
    assert tower.layout == "t5-encoder" and tower.hidden_size == 64
    if layout == "full_t5_file":
        assert tower.ignored_tensors and all(k.startswith("decoder.") for k in tower.ignored_tensors)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = _mean_pool(encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                         .last_hidden_state, batch["attention_mask"])
    torch.testing.assert_close(tower.encode(TEXTS), ref, **TOL)


# --- ComfyUI's own layouts ----------------------------------------------------------------------------------------

def _fp16_reference(model):
    """The reference model with its weights rounded as ComfyUI's fp16 files store them."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.fixture(scope="module", params=["clip_vision_h", "clip_vision_g", "sigclip_vision_patch14_384"])
def comfy_vision(request, tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipVisionConfig, SiglipVisionModel

    name = request.param
    values = dict(COMFY_VISION[name], num_hidden_layers=1, image_size=COMFY_VISION[name]["patch_size"] * 4)
    torch.manual_seed(0)
    if name.startswith("sigclip"):
        model, model_type = SiglipVisionModel(SiglipVisionConfig(**values)), "siglip_vision_model"
    else:
        model, model_type = CLIPVisionModelWithProjection(CLIPVisionConfig(**values)), "clip_vision_model"
    model = _fp16_reference(perturb_(model.eval(), scale=0.02))
    state = {k: v.half() for k, v in comfy_vision_names(checkpoint_state(model)).items()}
    assert all(k.startswith(("vision_model.", "visual_projection.weight")) for k in state)
    folder = tmp_path_factory.mktemp("clip_vision")
    path = save_state(state, str(folder / f"{name}.safetensors"))
    return name, model, model_type, path, values


def _comfy_reference(model, model_type, pixels, with_head=True):
    with torch.no_grad():
        out = model(pixel_values=pixels)
    if model_type == "clip_vision_model":
        return out.image_embeds
    return out.pooler_output if with_head else out.last_hidden_state.mean(1)


def test_comfyui_clip_vision_file(comfy_vision, photos):
    name, model, model_type, path, values = comfy_vision
    tower = load_image_tower(path)
    cfg = tower.backbone.model.config
    # what shapes cannot show comes from the released towers' widths: ComfyUI's configs must come out
    assert (cfg.num_attention_heads, cfg.hidden_act) == (values["num_attention_heads"], values["hidden_act"])
    assert tower.ignored_tensors == []
    torch.testing.assert_close(tower.encode(photos), _comfy_reference(model, model_type, tower.preprocess(photos)),
                               **TOL)


def test_comfyui_clip_vision_object(comfy_vision, photos):
    """The host's CLIP_VISION: get_sd() in ComfyUI's layout (fp16 inference tensors; SigLIP without its head)."""
    name, model, model_type, _, values = comfy_vision
    fake = FakeComfyClipVision(checkpoint_state(model), image_size=values["image_size"], model_type=model_type)
    assert all(t.is_inference() and t.dtype == torch.float16 for t in fake.get_sd().values())
    assert all(k.startswith(("vision_model.", "visual_projection.weight")) for k in fake.get_sd())
    if model_type == "siglip_vision_model":
        assert not any(k.startswith("vision_model.head.") for k in fake.get_sd())
        fake.image_mean = fake.image_std = [0.5, 0.5, 0.5]
    with torch.inference_mode():
        tower = tower_from_comfy_clip_vision(fake)
    ref = _comfy_reference(model, model_type, tower.preprocess(photos), with_head=False)
    torch.testing.assert_close(tower.encode(photos), ref, **TOL)
    x = photos[:1].clone().requires_grad_(True)
    tower.embed(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["clip_l", "clip_g", "clip_g_clipsave"])
def test_comfyui_text_encoder_files(tmp_path, clip_tok, name):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tok_dir, tok = clip_tok
    values = dict(COMFY_TEXT[name.split("_clipsave")[0]], num_hidden_layers=1, vocab_size=len(tok),
                  eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = _fp16_reference(perturb_(CLIPTextModelWithProjection(CLIPTextConfig(**values)).eval(), scale=0.02))
    state = {k: v.half() for k, v in checkpoint_state(model).items() if not k.endswith("position_ids")}
    if name.endswith("clipsave"):  # older ComfyUI CLIPSave files keep the projection as a bare, transposed matrix
        state["text_projection"] = state.pop("text_projection.weight").t().contiguous()
    folder = tmp_path / "text_encoders"
    folder.mkdir()
    path = save_state(state, str(folder / f"{name}.safetensors"))
    tower = load_text_tower(path, tokenizer_search_dirs={"clip": [tok_dir]})
    cfg = tower.model.config
    assert (cfg.num_attention_heads, cfg.hidden_act) == (values["num_attention_heads"], values["hidden_act"])
    assert tower.max_length == 77 and tower.hidden_size == values["projection_dim"]
    batch = tower.tokenize(TEXTS)
    with torch.no_grad():
        ref = model(**batch).text_embeds
    torch.testing.assert_close(tower.encode(TEXTS), ref, **TOL)


def test_embedded_tower_sees_what_its_weights_were_trained_on():
    """The embedded EfficientNet-Lite0 must run as trained: ReLU6 and inception-style pixels ((x - 127) / 128).
    Its own ImageNet classifier, fed through the tower's preprocessing, must name scikit-image's photos: the coffee
    cup an espresso (967), the cat a tabby / tiger / Egyptian cat (281, 282, 285). With the swish of the full
    EfficientNets the coffee became a coil (506); with ImageNet statistics espresso fell from 0.94 to 0.82."""
    import skimage.data

    tower = load_image_tower()
    net = tower.backbone.model
    assert isinstance(net._swish, torch.nn.ReLU6)
    expect = {"coffee": {967}, "chelsea": {281, 282, 285}}
    prob = {}
    for name, classes in expect.items():
        image = torch.from_numpy(getattr(skimage.data, name)()).float()[None] / 255
        with torch.no_grad():
            prob[name] = net(tower.preprocess(image)).softmax(-1)[0]
        assert int(prob[name].argmax()) in classes, (name, int(prob[name].argmax()))
    assert float(prob["coffee"][967]) > 0.9


def test_embedded_tower_lean_trunk_matches_the_library_module(photos):
    """The tower folds batch norms into convolutions and moves padding into them for speed: its embeddings must
    equal those of efficientnet_lite_pytorch's own, untouched module (ReLU6, eval mode) on real photos."""
    from efficientnet_lite_pytorch import EfficientNet
    from safetensors.torch import load_file

    from comfyui_lit.models.towers.image_tower import default_image_weights

    tower = load_image_tower()
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(load_file(default_image_weights()))
    reference.eval()
    with torch.no_grad():
        pixels = tower.preprocess(photos)
        want = reference.extract_features(pixels).mean(dim=(2, 3))
        got = tower.backbone(pixels)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
