"""The Triton attention kernel (run by Triton's CPU interpreter), its dispatch, and its transformers/ComfyUI wiring.

Tolerances (max abs error vs SDPA computed in fp32 from the same inputs): fp32 1e-4 (observed ~2e-6);
fp16 5e-3 (observed <1e-3) / bf16 3e-2 (observed <2e-2) on outputs and gradients (gradients relative to their
largest entry), because probabilities are rounded to the input dtype before the P @ V product (as every flash
kernel does) and outputs/gradients are stored in the input dtype. Under the
interpreter the bf16 dot products run in fp32 (its bf16 dot is broken); on a GPU they are native bf16.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import copy  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from comfyui_lit.models.attention import dispatch as attn_mod  # noqa: E402
from comfyui_lit.models.attention import triton_kernel as ta  # noqa: E402
from comfyui_lit.models.attention.dispatch import (  # noqa: E402
    attention,
    preferred_attn_implementation,
    register_transformers_attention,
)
from comfyui_lit.models.common.errors import LitError  # noqa: E402

pytestmark = pytest.mark.skipif(not ta.TRITON_AVAILABLE, reason="triton is a declared dependency of this test")

TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def reference(q, k, v, *, causal=False, kpm=None, bias=None, scale=None):
    """SDPA in fp32 with every mask folded into one additive mask ([B, H, N, d] inputs)."""
    q, k, v = q.float(), k.float(), v.float()
    mask = torch.zeros(q.shape[0], 1, q.shape[2], k.shape[2])
    if kpm is not None:
        mask = mask.masked_fill(~kpm[:, None, None, :], float("-inf"))
    if causal:
        tri = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
        mask = mask.masked_fill(~tri, float("-inf"))
    if bias is not None:
        mask = mask + bias.float()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def make(b, h, n_q, n_k, d, dtype=torch.float32, layout="bhnd", seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(n):
        x = torch.randn(b, h, n, d, generator=g).to(dtype)
        if layout == "bnhd":
            x = x.transpose(1, 2).contiguous()
        return x.requires_grad_(True)

    return t(n_q), t(n_k), t(n_k)


def to_bhnd(x, layout):
    return x.transpose(1, 2) if layout == "bnhd" else x


def run_and_compare(b, h, n_q, n_k, d, *, dtype=torch.float32, layout="bhnd", causal=False, padding=False,
                    bias=False, scale=None):
    q, k, v = make(b, h, n_q, n_k, d, dtype, layout)
    g = torch.Generator().manual_seed(1)
    kpm = None
    if padding:
        kpm = torch.rand(b, n_k, generator=g) > 0.3
        kpm[:, 0] = True  # every row keeps a key (fully masked rows are tested separately)
    attn_bias = torch.randn(1, h, n_q, n_k, generator=g).to(dtype).requires_grad_(True) if bias else None
    out = attention(q, k, v, layout=layout, causal=causal, key_padding_mask=kpm, attn_bias=attn_bias, scale=scale,
                    backend="triton")
    assert out.dtype == dtype and out.shape == q.shape
    ref = reference(to_bhnd(q, layout), to_bhnd(k, layout), to_bhnd(v, layout), causal=causal, kpm=kpm,
                    bias=attn_bias, scale=scale)
    ref = to_bhnd(ref, layout)
    tol = TOL[dtype]
    assert (out.float() - ref).abs().max().item() < tol
    grad = torch.randn(out.shape, generator=g).to(dtype)
    inputs = [q, k, v] + ([attn_bias] if bias else [])
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(ref, inputs, grad.float())
    for name, a, w in zip("q k v bias".split(), got, want, strict=False):
        assert a.shape == w.shape and a.dtype == dtype, name
        err = (a.float() - w).abs().max().item()
        assert err < tol * max(1.0, w.abs().max().item()), f"d{name}: {err}"


# --------------------------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("d", [32, 64, 80, 96, 128])
def test_head_dims_fp32(d):
    run_and_compare(1, 2, 13, 13, d)


@pytest.mark.parametrize("n_q,n_k,causal,padding,bias,layout", [
    (77, 77, True, False, False, "bhnd"),   # CLIP text: causal, several key tiles
    (77, 77, True, True, False, "bnhd"),    # padded causal batch, transformers layout
    (1, 13, False, False, True, "bhnd"),    # single query, one key tile, additive bias (gets a gradient)
    (40, 77, False, True, True, "bnhd"),    # cross-attention with both masks
    (77, 13, True, False, True, "bhnd"),    # causal cross-attention, N_q > N_k
    (13, 77, True, False, True, "bnhd"),    # causal, key tiles right of the diagonal: dBias zero-filled there
])
def test_masks_lengths_layouts_fp32(n_q, n_k, causal, padding, bias, layout):
    run_and_compare(2, 2, n_q, n_k, 64, causal=causal, padding=padding, bias=bias, layout=layout)


def _raw_grads(q, k, v, bias, kpm, causal, blocks):
    """Forward + backward through the raw kernels with fixed block sizes (what one autotune config runs)."""
    scale = q.shape[-1] ** -0.5
    expanded = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    keep = kpm.view(torch.uint8)
    o, lse = ta._forward(q, k, v, expanded, keep, causal, scale, blocks=blocks)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(5))
    dq, dk, dv, dbias = ta._backward(do, q, k, v, o, lse, expanded, keep, causal, scale, True, blocks=blocks)
    return o, do, (dq, dk, dv, ta._reduce_to(dbias, bias.shape))


def test_every_autotune_config_is_correct():
    """Each block shape the GPU autotuner may pick gives the SDPA result (masks, causal, partial tiles)."""
    q, k, v = (t.detach() for t in make(1, 2, 77, 140, 32))
    bias = torch.randn(1, 2, 77, 140, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    kpm = torch.rand(1, 140, generator=torch.Generator().manual_seed(4)) > 0.2
    kpm[:, 0] = True
    ref_inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = reference(*ref_inputs, causal=True, kpm=kpm, bias=bias)
    shapes = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"])
              for kernel in ta.CONFIGS.values() for configs in kernel.values() for c in configs}
    want = None
    for blocks in sorted(shapes):
        o, do, grads = _raw_grads(q, k, v, bias.detach(), kpm, True, blocks)
        assert (o - ref).abs().max() < 1e-4, blocks
        if want is None:
            want = torch.autograd.grad(ref, ref_inputs + [bias], do)
        for a, w in zip(grads, want, strict=True):
            assert (a - w).abs().max() < 1e-4, blocks


def _stub_autotune(monkeypatch):
    monkeypatch.setattr(ta, "AUTOTUNE_UNDER_INTERPRETER", True)
    timings = iter(range(10_000))
    for tuner in (ta._fwd_tuned, ta._dkdv_tuned, ta._dq_tuned):
        monkeypatch.setattr(tuner, "_do_bench", lambda fn, quantiles: (fn(), [float(next(timings))] * 3)[1])
        monkeypatch.setattr(tuner, "cache", {})
        monkeypatch.setattr(tuner, "configs_timings", None, raising=False)


def test_autotuned_launchers_run(monkeypatch):
    """The GPU launch path (autotune + heuristics + grid lambdas), with the benchmark stubbed out on the CPU."""
    _stub_autotune(monkeypatch)
    q, k, v = make(1, 1, 40, 77, 32, dtype=torch.float16, seed=7)  # 77 keys: BLOCK_N 128 is one tile, 32/64 loop
    bias = torch.randn(1, 1, 40, 77).half().requires_grad_(True)
    out = attention(q, k, v, attn_bias=bias, causal=True, backend="triton")
    ref = reference(q, k, v, causal=True, bias=bias)
    assert (out.float() - ref).abs().max() < TOL[torch.float16]
    got = torch.autograd.grad(out.float().sum(), [q, k, v, bias])
    want = torch.autograd.grad(ref.sum(), [q, k, v, bias])
    for a, w in zip(got, want, strict=True):
        assert (a.float() - w).abs().max() < TOL[torch.float16] * max(1.0, w.abs().max().item())
    # every config of the head-dim-64 class was timed (none pruned: 77 keys allow 128-wide tiles)
    assert set(ta._fwd_tuned.configs_timings) == set(ta.CONFIGS["fwd"]["d64"])
    assert set(ta._dkdv_tuned.configs_timings) == set(ta.CONFIGS["dkdv"]["d64"])
    assert set(ta._dq_tuned.configs_timings) == set(ta.CONFIGS["dq"]["d64"])
    assert ta._dq_tuned.best_config == ta.CONFIGS["dq"]["d64"][0]  # the stub timed the first one fastest
    q, k, v = (t[:, :, :, :16].detach() for t in make(1, 1, 20, 20, 32, dtype=torch.float16, seed=8))
    out = attention(q, k, v, backend="triton")  # 20 keys: the prune leaves only 32-wide key tiles
    assert (out.float() - reference(q, k, v)).abs().max() < TOL[torch.float16]
    assert ta._fwd_tuned.best_config.kwargs["BLOCK_N"] <= 32


def test_autotune_draws_configs_by_head_dim_and_dtype(monkeypatch):
    """Head dims 65..128 get the 8-warp set, fp32 its small-tile set: the sets the compile report checked."""
    _stub_autotune(monkeypatch)
    q, k, v = make(1, 1, 24, 100, 80, dtype=torch.float16, seed=3)
    out = attention(q, k, v, backend="triton")
    assert (out.float() - reference(q, k, v)).abs().max() < TOL[torch.float16]
    assert set(ta._fwd_tuned.configs_timings) == set(ta.CONFIGS["fwd"]["d128"])
    out.float().sum().backward()
    assert set(ta._dkdv_tuned.configs_timings) == set(ta.CONFIGS["dkdv"]["d128"])
    q, k, v = make(1, 1, 24, 24, 32, seed=3)
    out = attention(q, k, v, backend="triton")
    assert (out - reference(q, k, v)).abs().max() < TOL[torch.float32]
    assert ta._fwd_tuned.best_config == ta.CONFIGS["fwd"]["fp32"][0]
    assert ta.config_class(torch.bfloat16, 128) == "d128" and ta.config_class(torch.bfloat16, 32) == "d64"


def test_custom_scale():
    run_and_compare(1, 1, 13, 40, 32, scale=0.3, causal=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    run_and_compare(1, 2, 77, 77, 64, dtype=dtype, causal=True, padding=True)
    run_and_compare(1, 1, 13, 40, 80, dtype=dtype, bias=True, layout="bnhd")


def test_fully_masked_rows_are_zero_like_sdpa():
    q, k, v = make(1, 1, 40, 40, 32)
    bias = torch.zeros(1, 1, 40, 40)
    bias[..., 5, :] = float("-inf")  # one row sees nothing
    bias[..., 35, :] = float("-inf")  # in the second query tile too
    out = attention(q, k, v, attn_bias=bias, backend="triton")
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert torch.all(out[..., [5, 35], :] == 0)
    assert (out - ref).abs().max() < 1e-4
    dq, dk, dv = torch.autograd.grad(out.sum(), [q, k, v])
    assert all(torch.isfinite(t).all() for t in (dq, dk, dv))
    assert torch.all(dq[..., [5, 35], :] == 0)


def test_bool_bias_is_a_keep_mask():
    q, k, v = make(2, 2, 13, 20, 32)
    keep = torch.rand(2, 1, 13, 20, generator=torch.Generator().manual_seed(3)) > 0.4
    keep[..., 0] = True
    out = attention(q, k, v, attn_bias=keep, backend="triton")
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert (out - ref).abs().max() < 1e-4


def test_bnhd_output_keeps_the_input_memory_layout():
    q, k, v = make(1, 2, 13, 13, 32, layout="bnhd")
    out = attention(q, k, v, layout="bnhd", backend="triton")
    assert out.shape == (1, 13, 2, 32) and out.is_contiguous()  # no transposing copy on the way out


def test_runs_under_inference_mode():
    q, k, v = (t.detach() for t in make(1, 2, 13, 13, 32))
    with torch.inference_mode():
        out = attention(q, k, v, backend="triton", causal=True)
    assert (out - F.scaled_dot_product_attention(q, k, v, is_causal=True)).abs().max() < 1e-4


# ------------------------------------------------------------------------------------------------- dispatch


def _spy(monkeypatch):
    calls = []
    real = ta.triton_attention

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(ta, "triton_attention", spy)
    return calls


def test_auto_on_cpu_uses_sdpa_with_same_semantics(monkeypatch):
    monkeypatch.delenv(attn_mod.ENV_VAR, raising=False)
    calls = _spy(monkeypatch)
    q, k, v = make(2, 2, 13, 20, 32, layout="bnhd")
    kpm = torch.ones(2, 20, dtype=torch.bool)
    kpm[1, 15:] = False
    bias = torch.randn(2, 1, 13, 20, requires_grad=True)
    out = attention(q, k, v, layout="bnhd", causal=True, key_padding_mask=kpm, attn_bias=bias)
    assert not calls
    tri = attention(q, k, v, layout="bnhd", causal=True, key_padding_mask=kpm, attn_bias=bias, backend="triton")
    assert calls
    assert out.shape == tri.shape == q.shape and out.dtype == tri.dtype
    assert (out - tri).abs().max() < 1e-4
    ga = torch.autograd.grad(out.sum(), [q, bias])
    gb = torch.autograd.grad(tri.sum(), [q, bias])
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(ga, gb, strict=True))


def test_env_var_forces_a_path(monkeypatch):
    calls = _spy(monkeypatch)
    q, k, v = (t.detach() for t in make(1, 1, 13, 13, 32))
    monkeypatch.setenv(attn_mod.ENV_VAR, "triton")
    attention(q, k, v)
    assert len(calls) == 1
    monkeypatch.setenv(attn_mod.ENV_VAR, "torch")
    attention(q, k, v)
    assert len(calls) == 1
    monkeypatch.setenv(attn_mod.ENV_VAR, "fastest")
    with pytest.raises(LitError, match="COMFYUI_LIT_ATTENTION"):
        attention(q, k, v)


def test_forced_triton_explains_why_it_cannot_run(monkeypatch):
    q, k, v = (t.detach() for t in make(1, 1, 13, 13, 32))
    with pytest.raises(LitError, match="head dim"):
        big = torch.randn(1, 1, 13, 256)
        attention(big, big, big, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a plain CPU: no kernel
    with pytest.raises(LitError, match="CUDA"):
        attention(q, k, v, backend="triton")
    out = attention(q, k, v)  # auto still works
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v))
    monkeypatch.setattr(ta, "TRITON_AVAILABLE", False)
    with pytest.raises(LitError, match="not installed"):
        attention(q, k, v, backend="triton")


def test_bad_inputs_raise_lit_errors():
    q, k, v = (t.detach() for t in make(1, 2, 13, 13, 32))
    with pytest.raises(LitError, match="key_padding_mask"):
        attention(q, k, v, key_padding_mask=torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(LitError, match="attn_bias"):
        attention(q, k, v, attn_bias=torch.zeros(3, 1, 13, 13))
    with pytest.raises(LitError, match="layout"):
        attention(q, k, v, layout="nbhd")
    with pytest.raises(LitError):
        attention(q, k[:, :1], v)


def test_module_imports_without_triton():
    code = ("import sys, importlib.util; sys.modules['triton'] = None; "
            f"spec = importlib.util.spec_from_file_location('ta', {ta.__file__!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "import torch; x = torch.zeros(1, 1, 2, 8); "
            "print(m.TRITON_AVAILABLE, m.supports(x, x, x))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False triton is not installed"


# --------------------------------------------------------------------------------------------- transformers


def _twin_models(cls, config, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv(attn_mod.ENV_VAR, "triton")
    name = preferred_attn_implementation("cpu")
    ref = cls._from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    ours = cls._from_config(copy.deepcopy(config), attn_implementation=name).eval()
    ours.load_state_dict(ref.state_dict())
    assert ours.config._attn_implementation == "lit_triton" and ref.config._attn_implementation == "sdpa"
    return ref, ours


@pytest.mark.parametrize("arch", ["bert", "clip"])
def test_transformers_towers_match_sdpa(arch, monkeypatch):
    from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    if arch == "bert":
        ref, ours = _twin_models(BertModel, BertConfig(vocab_size=100, max_position_embeddings=32, **small),
                                 monkeypatch)
    else:
        ref, ours = _twin_models(CLIPTextModel, CLIPTextConfig(vocab_size=100, max_position_embeddings=32,
                                                               bos_token_id=0, eos_token_id=1, **small), monkeypatch)
    calls = _spy(monkeypatch)
    ids = torch.randint(2, 100, (2, 13), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 8:] = 0  # a padded batch
    for attention_mask in (mask, None):
        a = ref(input_ids=ids, attention_mask=attention_mask).last_hidden_state
        b = ours(input_ids=ids, attention_mask=attention_mask).last_hidden_state
        assert (a - b).abs().max() < 1e-4
    assert len(calls) == 4  # two layers, two forwards: the kernel really ran
    # locked tuning trains through the text tower: gradients must agree too
    ga = torch.autograd.grad(ref(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()].sum(),
                             list(ref.parameters()), allow_unused=True)
    gb = torch.autograd.grad(ours(input_ids=ids, attention_mask=mask).last_hidden_state[mask.bool()].sum(),
                             list(ours.parameters()), allow_unused=True)
    for x, y in zip(ga, gb, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert (x - y).abs().max() < 1e-3 * max(1.0, x.abs().max().item())


@pytest.mark.parametrize("cls_name", ["CLIPVisionModel", "SiglipVisionModel", "SiglipTextModel", "Dinov2Model",
                                      "ViTModel"])
def test_other_tower_classes_match_sdpa(cls_name, monkeypatch):
    import transformers

    small = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)
    cls = getattr(transformers, cls_name)
    config_cls = getattr(transformers, cls_name.replace("Model", "Config"))
    text = "Text" in cls_name
    config = config_cls(vocab_size=100, max_position_embeddings=16, **small) if text else \
        config_cls(image_size=32, patch_size=8, **small)
    ref, ours = _twin_models(cls, config, monkeypatch)
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, 100, (2, 16), generator=g)} if text else \
        {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    with torch.no_grad():
        a, b = ref(**inputs).last_hidden_state, ours(**inputs).last_hidden_state
    assert calls and (a - b).abs().max() < 1e-4


def test_preferred_implementation_and_registration(monkeypatch):
    from transformers import AttentionInterface, BertConfig, BertModel
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    monkeypatch.delenv(attn_mod.ENV_VAR, raising=False)
    assert preferred_attn_implementation("cpu") == "sdpa"
    assert preferred_attn_implementation(torch.device("cpu")) == "sdpa"
    monkeypatch.setenv(attn_mod.ENV_VAR, "torch")
    assert preferred_attn_implementation("cuda") == "sdpa"
    assert register_transformers_attention() == register_transformers_attention() == "lit_triton"
    assert "lit_triton" in AttentionInterface() and "lit_triton" in ALL_MASK_ATTENTION_FUNCTIONS
    model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=16))
    model.set_attn_implementation("lit_triton")
    assert model.config._attn_implementation == "lit_triton"


def test_registered_function_falls_back_on_cpu_and_for_dropout(monkeypatch):
    from transformers import BertConfig, BertModel

    register_transformers_attention()
    monkeypatch.delenv(attn_mod.ENV_VAR, raising=False)
    calls = _spy(monkeypatch)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    ref = BertModel._from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval()
    ours = BertModel._from_config(copy.deepcopy(cfg), attn_implementation="lit_triton").eval()
    ours.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 50, (2, 9))
    assert torch.allclose(ref(input_ids=ids).last_hidden_state, ours(input_ids=ids).last_hidden_state, atol=1e-5)
    assert not calls  # auto on a CPU: SDPA
    monkeypatch.setenv(attn_mod.ENV_VAR, "triton")
    ours.train()  # attention dropout active: the kernel has none, transformers' SDPA takes the call
    ours(input_ids=ids)
    assert not calls


# -------------------------------------------------------------------------------------------- ComfyUI node


class FakeModel:
    def __init__(self, options=None):
        self.model_options = options or {"transformer_options": {"keep": 1}}

    def clone(self):
        return FakeModel(copy.deepcopy(self.model_options))


def _comfy_sdpa(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                **kwargs):
    """Reference in ComfyUI's attention-function convention."""
    if not skip_reshape:
        b, _, dh = q.shape
        q, k, v = (t.view(b, -1, heads, dh // heads).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.dim() == 3:
        mask = mask[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out if skip_output_reshape else out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def test_patch_node_sets_the_override_on_a_clone():
    from comfyui_lit.nodes.attention_patch import NODE_CLASS_MAPPINGS, LiTPatchModelAttention, lit_attention_override

    node = NODE_CLASS_MAPPINGS["LiTPatchModelAttention"]()
    inputs = LiTPatchModelAttention.INPUT_TYPES()["required"]
    assert all("tooltip" in spec[1] for spec in inputs.values())
    model = FakeModel()
    with torch.inference_mode():
        patched, no_clip, no_vision = node.patch(model, True)
        (plain, _, _) = node.patch(model, False)
    assert no_clip is None and no_vision is None
    assert patched is not model
    assert patched.model_options["transformer_options"]["optimized_attention_override"] is lit_attention_override
    assert patched.model_options["transformer_options"]["keep"] == 1
    assert "optimized_attention_override" not in model.model_options["transformer_options"]
    assert "optimized_attention_override" not in plain.model_options["transformer_options"]
    with pytest.raises(LitError, match="LiT Triton Attention"):
        node.patch(object(), True)


@pytest.mark.parametrize("skip_reshape,skip_output_reshape,mask_kind", [
    (False, False, None), (False, True, "bool3d"), (True, False, "additive2d"), (True, True, None)])
def test_override_uses_the_kernel_and_keeps_comfy_conventions(monkeypatch, skip_reshape, skip_output_reshape,
                                                              mask_kind):
    from comfyui_lit.nodes.attention_patch import lit_attention_override

    monkeypatch.setenv(attn_mod.ENV_VAR, "triton")  # CPU + interpreter: forced on
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(0)
    b, heads, d, n_q, n_k = 2, 2, 32, 20, 13
    if skip_reshape:
        q, k, v = (torch.randn(b, heads, n, d, generator=g) for n in (n_q, n_k, n_k))
    else:
        q, k, v = (torch.randn(b, n, heads * d, generator=g) for n in (n_q, n_k, n_k))
    mask = None
    if mask_kind == "bool3d":
        mask = torch.rand(b, n_q, n_k, generator=g) > 0.3
        mask[..., 0] = True
    elif mask_kind == "additive2d":
        mask = torch.randn(n_q, n_k, generator=g)
    original = []

    def original_func(*a, **kw):
        original.append(kw)
        return _comfy_sdpa(*a, **kw)

    kwargs = dict(mask=mask, skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape,
                  transformer_options={}, _inside_attn_wrapper=True)
    with torch.inference_mode():
        out = lit_attention_override(original_func, q, k, v, heads, **kwargs)
    want = _comfy_sdpa(q, k, v, heads, **kwargs)
    assert calls and not original
    assert out.shape == want.shape and (out - want).abs().max() < 1e-4


def test_override_falls_back_for_unsupported_calls(monkeypatch):
    from comfyui_lit.nodes.attention_patch import lit_attention_override, lit_triton_attention

    calls = _spy(monkeypatch)
    seen = []

    def original_func(*a, **kw):
        seen.append(kw)
        return _comfy_sdpa(*a, **kw)

    q = torch.randn(1, 10, 2 * 256)  # head dim 256: beyond the kernel
    monkeypatch.setenv(attn_mod.ENV_VAR, "triton")
    out = lit_attention_override(original_func, q, q, q, 2, transformer_options={}, _inside_attn_wrapper=True)
    assert seen and seen[-1]["_inside_attn_wrapper"] and not calls
    assert torch.allclose(out, _comfy_sdpa(q, q, q, 2))
    q = torch.randn(1, 10, 64)
    monkeypatch.delenv(attn_mod.ENV_VAR)  # auto on a CPU: ComfyUI's own attention
    lit_attention_override(original_func, q, q, q, 2)
    assert len(seen) == 2 and not calls
    bad_mask = torch.zeros(3, 7, 5)  # does not broadcast: falls back instead of crashing
    monkeypatch.setenv(attn_mod.ENV_VAR, "triton")
    lit_attention_override(lambda *a, **kw: seen.append(kw) or q, q, q, q, 2, mask=bad_mask)
    assert len(seen) == 3 and not calls
    # the registry entry (no original_func) works on its own
    assert torch.allclose(lit_triton_attention(q, q, q, 2), _comfy_sdpa(q, q, q, 2), atol=1e-5)
    assert calls


def test_patch_chains_an_earlier_override(monkeypatch):
    from comfyui_lit.nodes.attention_patch import LiTPatchModelAttention

    earlier = []

    def previous(original_func, *a, **kw):
        earlier.append(1)
        return original_func(*a, **kw)

    model = FakeModel({"transformer_options": {"optimized_attention_override": previous}})
    patched = LiTPatchModelAttention().patch(model, True)[0]
    override = patched.model_options["transformer_options"]["optimized_attention_override"]
    q = torch.randn(1, 10, 2 * 256)  # unsupported: goes to the earlier patch, then to the original
    out = override(_comfy_sdpa, q, q, q, 2)
    assert earlier == [1] and torch.allclose(out, _comfy_sdpa(q, q, q, 2))
