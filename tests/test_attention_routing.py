"""Core's CLIP text/vision encoders routed through our attention by object patches, on a fake ``comfy`` structure.

The fakes mirror what the routing relies on in ComfyUI 0.3.64 (read in its source, not copied): encoder layers
defined in ``comfy.clip_model`` / ``comfy.image_encoders.dino2`` whose ``forward`` is handed the attention function
as ``optimized_attention`` (looked up once per encoder forward with ``small_input=True``, no
``transformer_options``), CLIP's additive causal mask, and a ModelPatcher that sets object patches with
``set_attr`` when the clone is loaded and restores them when it is unloaded (the backup dict shared by clones).
Checked by hand once (2026-12-02) against the real ComfyUI 0.3.64 tree from ``../shared/comfyui`` on the CPU: a tiny
``comfy.clip_model.CLIPTextModel`` in a real ``ModelPatcher``, loaded with ``load_model_gpu``: the routed clone ran
both layers on the kernel (max diff 2.4e-7 vs core), loading the plain clone again ran none. A test against the real
host belongs to the host CI.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import sys  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from comfyui_lit.models.attention import calibrate as cal  # noqa: E402
from comfyui_lit.models.attention import dispatch as attn_mod  # noqa: E402
from comfyui_lit.models.attention import triton_kernel as ta  # noqa: E402
from comfyui_lit.models.common.errors import LitError  # noqa: E402
from comfyui_lit.nodes import attention_patch, host  # noqa: E402
from comfyui_lit.nodes.attention_patch import LiTPatchModelAttention  # noqa: E402

pytestmark = pytest.mark.skipif(not ta.TRITON_AVAILABLE, reason="triton is a declared dependency of this test")
HEADS, DIM = 2, 64  # head dim 32


# ------------------------------------------------------------------------------------------- a fake ComfyUI


CORE_CALLS: list[int] = []


def core_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                   **kwargs):
    """Core's attention_pytorch convention: [B, N, heads*d] in and out, 2-D/3-D/4-D additive masks."""
    CORE_CALLS.append(1)
    b, n, _ = q.shape
    q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.dim() == 3:
        mask = mask[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, -1)


def optimized_attention_for_device(device, mask=False, small_input=False):
    assert small_input  # what core's CLIP encoders ask for
    return core_attention


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (torch.nn.Linear(DIM, DIM) for _ in range(3))

    def forward(self, x, mask=None, optimized_attention=None):
        return optimized_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), HEADS, mask)


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = Attention()

    def forward(self, x, mask=None, optimized_attention=None):
        return x + self.self_attn(x, mask, optimized_attention)


class Encoder(torch.nn.Module):
    def __init__(self, n_layers=2):
        super().__init__()
        self.layers = torch.nn.ModuleList(Layer() for _ in range(n_layers))

    def forward(self, x, mask=None):
        attn = optimized_attention_for_device(x.device, mask=mask is not None, small_input=True)
        for layer in self.layers:
            x = layer(x, mask, attn)
        return x


class TextModel(torch.nn.Module):
    """CLIP text: a causal additive mask with the dtype's most negative value, like core's."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()

    def forward(self, x):
        n = x.shape[1]
        mask = torch.full((n, n), -torch.finfo(x.dtype).max, dtype=x.dtype).triu_(1)
        return self.encoder(x, mask=mask)


class DinoBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = Attention()

    def forward(self, x, optimized_attention):
        return x + self.attention(x, None, optimized_attention)


class DinoEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.ModuleList(DinoBlock() for _ in range(2))

    def forward(self, x):
        attn = optimized_attention_for_device(x.device, False, small_input=True)
        for block in self.layer:
            x = block(x, attn)
        return x


for _cls in (Attention, Layer, Encoder, TextModel):
    _cls.__module__ = "comfy.clip_model"
for _cls in (DinoBlock, DinoEncoder):
    _cls.__module__ = "comfy.image_encoders.dino2"


def set_attr(obj, attr, value):
    *path, last = attr.split(".")
    for name in path:
        obj = getattr(obj, name)
    prev = getattr(obj, last)
    setattr(obj, last, value)
    return prev


class Patcher:
    def __init__(self, model, backup=None):
        self.model = model
        self.object_patches = {}
        self.object_patches_backup = {} if backup is None else backup

    def clone(self):
        twin = Patcher(self.model, self.object_patches_backup)  # clones share the model and the backup
        twin.object_patches = self.object_patches.copy()
        return twin

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def patch_model(self):
        for key, value in self.object_patches.items():
            old = set_attr(self.model, key, value)
            self.object_patches_backup.setdefault(key, old)

    def unpatch_model(self):
        for key, value in list(self.object_patches_backup.items()):
            set_attr(self.model, key, value)
        self.object_patches_backup.clear()


class Clip:
    """comfy.sd.CLIP: the patcher's model is the text-encoder wrapper; clone() clones the patcher."""

    def __init__(self, patcher):
        self.patcher = patcher
        self.cond_stage_model = patcher.model

    def clone(self):
        return Clip(self.patcher.clone())


class ClipVision:
    """comfy.clip_vision.ClipVisionModel: a patcher, no clone()."""

    def __init__(self, model):
        self.model = model
        self.patcher = Patcher(model)


class FakeModel:
    def __init__(self):
        self.model_options = {"transformer_options": {}}

    def clone(self):
        return FakeModel()


class TextWrapper(torch.nn.Module):  # SD1ClipModel -> clip_l -> transformer -> text_model
    def __init__(self):
        super().__init__()
        self.clip_l = torch.nn.Module()
        self.clip_l.text_model = TextModel()

    def forward(self, x):
        return self.clip_l.text_model(x)


# ---------------------------------------------------------------------------------------------------- tests


def _spy(monkeypatch):
    calls = []
    real = ta.triton_attention

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(ta, "triton_attention", spy)
    return calls


@pytest.fixture
def encoders():
    torch.manual_seed(0)
    clip = Clip(Patcher(TextWrapper().eval()))
    vision = ClipVision(DinoEncoder().eval())
    x = torch.randn(2, 13, DIM)
    return clip, vision, x


def _run(clip, vision, x):
    CORE_CALLS.clear()
    with torch.inference_mode():
        return clip.patcher.model(x), vision.patcher.model(x)


def test_routing_is_applied_while_the_clone_is_loaded_and_removed_after(encoders, monkeypatch):
    clip, vision, x = encoders
    want_text, want_image = _run(clip, vision, x)
    assert CORE_CALLS == [1] * 4  # 2 text layers + 2 vision blocks, all through core's attention
    monkeypatch.setenv(attn_mod.ENV_VAR, "triton")  # the interpreter runs the kernel on the CPU when forced
    calls = _spy(monkeypatch)
    model, routed_clip, routed_vision = LiTPatchModelAttention().patch(FakeModel(), True, clip=clip,
                                                                       clip_vision=vision)
    assert routed_clip is not clip and routed_vision is not vision
    assert routed_clip.patcher.model is clip.patcher.model  # a clone: the same weights
    assert not clip.patcher.object_patches and not vision.patcher.object_patches  # the originals are untouched
    assert sorted(routed_clip.patcher.object_patches) == [f"clip_l.text_model.encoder.layers.{i}.forward"
                                                          for i in range(2)]
    assert sorted(routed_vision.patcher.object_patches) == [f"layer.{i}.forward" for i in range(2)]
    assert "optimized_attention_override" in model.model_options["transformer_options"]

    _run(clip, vision, x)  # patches are not applied until ComfyUI loads the clone
    assert not calls and CORE_CALLS == [1] * 4

    routed_clip.patcher.patch_model()
    routed_vision.patcher.patch_model()
    got_text, got_image = _run(routed_clip, routed_vision, x)
    assert len(calls) == 4 and not CORE_CALLS  # every layer's attention ran on our kernel
    assert (got_text - want_text).abs().max() < 1e-4 and (got_image - want_image).abs().max() < 1e-4

    routed_clip.patcher.unpatch_model()
    routed_vision.patcher.unpatch_model()
    calls.clear()
    again_text, _ = _run(clip, vision, x)
    assert not calls and CORE_CALLS == [1] * 4  # removed: core's attention again
    assert torch.equal(again_text, want_text)
    layer = clip.patcher.model.clip_l.text_model.encoder.layers[0]
    assert not isinstance(layer.forward, host.RoutedLayerForward)


def test_loading_the_plain_clone_removes_the_routing(encoders, monkeypatch):
    """ComfyUI loads one clone of a model at a time: unpatching ours, then patching the original's (none)."""
    clip, vision, x = encoders
    monkeypatch.setenv(attn_mod.ENV_VAR, "triton")
    calls = _spy(monkeypatch)
    _, routed_clip, _ = LiTPatchModelAttention().patch(FakeModel(), True, clip=clip)
    routed_clip.patcher.patch_model()
    routed_clip.patcher.unpatch_model()  # what loading the other clone does first
    clip.patcher.patch_model()
    _run(clip, vision, x)
    assert not calls and CORE_CALLS == [1] * 4


def test_the_calibration_governs_routed_encoders(encoders, monkeypatch, tmp_path):
    clip, vision, x = encoders
    monkeypatch.delenv(attn_mod.ENV_VAR, raising=False)
    calls = _spy(monkeypatch)
    _, routed_clip, routed_vision = LiTPatchModelAttention().patch(FakeModel(), True, clip=clip, clip_vision=vision)
    routed_clip.patcher.patch_model()
    routed_vision.patcher.patch_model()
    _run(routed_clip, routed_vision, x)
    assert not calls and CORE_CALLS == [1] * 4  # auto on a CPU: core's attention, nothing measured

    monkeypatch.setattr(attn_mod, "_auto_calibrates", lambda q: True)  # now behave as a GPU would

    def calibrator(kernel_ms, sdpa_ms):
        def timer(fns, reps):
            return {"triton": [kernel_ms] * reps, "sdpa": [sdpa_ms] * reps}

        c = cal.Calibrator(None, versions_={"torch": "t", "triton": "t", "pack": "p"}, timer=timer, reps=1)
        monkeypatch.setattr(attn_mod, "_calibrator", lambda: c)
        return c

    slower = calibrator(2.0, 1.0)
    calls.clear()
    _run(routed_clip, routed_vision, x)
    assert CORE_CALLS == [1] * 4  # measured slower: core's attention serves the calls
    assert {k.split("|")[5] for k in slower.decisions()} == {"bias", "none"}  # CLIP's mask, DINOv2's none
    faster = calibrator(1.0, 2.0)
    calls.clear()
    got, _ = _run(routed_clip, routed_vision, x)
    assert not CORE_CALLS and all(d.use_kernel for d in faster.decisions().values())


def test_switch_off_and_disabled_give_plain_clones(encoders):
    clip, vision, _ = encoders
    _, c1, v1 = LiTPatchModelAttention().patch(FakeModel(), True, clip=clip, clip_vision=vision, route_encoders=False)
    _, c2, v2 = LiTPatchModelAttention().patch(FakeModel(), False, clip=clip, clip_vision=vision)
    for twin in (c1, v1, c2, v2):
        assert not twin.patcher.object_patches and twin.patcher is not clip.patcher
    assert v1.patcher.model is vision.patcher.model


def test_routing_twice_wraps_once_and_keeps_earlier_object_patches(encoders, monkeypatch):
    clip, vision, x = encoders
    seen = []
    layer0 = clip.patcher.model.clip_l.text_model.encoder.layers[0]

    def earlier(x, mask=None, optimized_attention=None):  # another pack's object patch of the same forward
        seen.append(optimized_attention)
        return Layer.forward(layer0, x, mask, optimized_attention)

    clip.patcher.add_object_patch("clip_l.text_model.encoder.layers.0.forward", earlier)
    _, once, _ = LiTPatchModelAttention().patch(FakeModel(), True, clip=clip)
    _, twice, _ = LiTPatchModelAttention().patch(FakeModel(), True, clip=once)
    patch = twice.patcher.object_patches["clip_l.text_model.encoder.layers.0.forward"]
    assert patch.inner is earlier
    twice.patcher.patch_model()
    _run(twice, vision, x)
    assert len(seen) == 1 and seen[0].func is attention_patch.lit_attention_override
    assert seen[0].args == (core_attention,)  # wrapped once, around core's function


def test_only_core_clip_and_dino_layers_are_routed():
    class Other(torch.nn.Module):  # a layer of some other package taking the same argument
        def forward(self, x, optimized_attention=None):
            return x

    root = torch.nn.Module()
    root.other = Other()
    root.text = TextModel()
    assert [path for path, _ in host.routable_layers(root)] == ["text.encoder.layers.0", "text.encoder.layers.1"]


def test_bad_encoder_inputs_are_clear_errors():
    with pytest.raises(LitError, match="clip_vision"):
        LiTPatchModelAttention().patch(FakeModel(), True, clip_vision=object())
    with pytest.raises(LitError, match="CLIP"):
        LiTPatchModelAttention().patch(FakeModel(), True, clip=types.SimpleNamespace(patcher=None))


def test_node_inputs_have_tooltips_and_outputs_line_up():
    spec = LiTPatchModelAttention.INPUT_TYPES()
    for group in spec.values():
        assert all("tooltip" in options[1] for options in group.values())
    assert set(spec["optional"]) == {"clip", "clip_vision", "route_encoders"}
    assert len(LiTPatchModelAttention.RETURN_TYPES) == len(LiTPatchModelAttention.RETURN_NAMES) == \
        len(LiTPatchModelAttention.OUTPUT_TOOLTIPS) == 3


def test_registry_goes_through_host(monkeypatch):
    registry = {}
    fake = types.ModuleType("comfy.ldm.modules.attention")
    fake.REGISTERED_ATTENTION_FUNCTIONS = registry
    fake.register_attention_function = registry.__setitem__
    for name in ("comfy", "comfy.ldm", "comfy.ldm.modules"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "comfy.ldm.modules.attention", fake)
    assert attention_patch.register_comfy_attention() is True
    assert registry == {"lit_triton": attention_patch.lit_triton_attention}
    monkeypatch.setitem(sys.modules, "comfy.ldm.modules.attention", None)  # no host
    assert attention_patch.register_comfy_attention() is False
    import inspect

    assert "import comfy" not in inspect.getsource(attention_patch)  # host.py is the only bridge
