"""Run inside the host's venv by test_4: the diffusion prior through ComfyUI's own sampler, on a tiny real SD UNet.

Prints one JSON line: how often each patch on the MODEL was called, and what the restored image looks like.
Usage: python diffusion_prior_probe.py <pack root> <ComfyUI dir>
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

ROOT, COMFY = sys.argv[1], sys.argv[2]
sys.path.insert(0, COMFY)
os.chdir(COMFY)
from comfy.cli_args import args  # noqa: E402

args.cpu = True  # before comfy.model_management is imported: there is no CUDA here

import comfy.model_management  # noqa: E402,F401
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402

# The pack as ComfyUI loads it: by path, as a package.
spec = importlib.util.spec_from_file_location("custom_nodes.ComfyUI-LiT", os.path.join(ROOT, "__init__.py"),
                                              submodule_search_locations=[ROOT])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
Restore = pack.NODE_CLASS_MAPPINGS["LiTRestorationSampler"]

# A tiny SD1.5-family UNet (one attention block), built by ComfyUI's own model classes, random weights.
UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
        "transformer_depth": [1, 0], "channel_mult": [1, 2], "transformer_depth_middle": 0,
        "use_linear_in_transformer": False, "context_dim": 32, "num_heads": 2, "num_head_channels": -1,
        "transformer_depth_output": [1, 1, 0, 0], "use_temporal_attention": False, "use_temporal_resblock": False}
torch.manual_seed(0)
model = comfy.supported_models.SD15(UNET).get_model({}, "")
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0.0, 0.02)
cpu = torch.device("cpu")
base = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


class StandInVAE:
    """Pixels <-> a 4-channel latent at 1/8 size (the plumbing only; a real VAE is too big for this check)."""

    def encode(self, pixels):
        x = pixels.permute(0, 3, 1, 2)
        x = torch.nn.functional.avg_pool2d(x, 8) * 2 - 1
        return torch.cat([x, x.mean(1, keepdim=True)], 1)

    def decode(self, latent):
        x = torch.nn.functional.interpolate(latent[:, :3], scale_factor=8, mode="nearest")
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


calls = {"unet_wrapper": 0, "attention_override": 0, "sampler_cfg_function": 0}


def unet_wrapper(apply_model, a):
    calls["unet_wrapper"] += 1
    return apply_model(a["input"], a["timestep"], **a["c"])


def attention_override(func, *a, **kw):
    # The hook ComfyUI's attention consults; LiT's own attention patch installs itself the same way.
    calls["attention_override"] += 1
    return func(*a, **kw)


def cfg_function(a):
    calls["sampler_cfg_function"] += 1
    return a["cond"]


patched = base.clone()
patched.set_model_unet_function_wrapper(unet_wrapper)
patched.set_model_sampler_cfg_function(cfg_function)
options = dict(patched.model_options)
options["transformer_options"] = {**options.get("transformer_options", {}),
                                  "optimized_attention_override": attention_override}
patched.model_options = options

cond = [[torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)), {}]]
image = torch.rand(1, 64, 72, 3, generator=torch.Generator().manual_seed(2))
steps = 3
result = {"steps": steps}
with torch.inference_mode():  # as ComfyUI runs nodes
    out = Restore().run(image, "denoise", 25.0, steps, 0, 1.0, model=patched, vae=StandInVAE(), conditioning=cond)
    restored = out["result"][0]
    result.update(calls)
    result["shape"] = list(restored.shape)
    result["finite"] = bool(torch.isfinite(restored).all())
    result["report"] = out["ui"]["text"][0]
    try:
        Restore().run(image, "denoise", 25.0, steps, 0, 1.0, model=base, vae=StandInVAE(), conditioning=None)
        result["no_conditioning_error"] = None
    except Exception as err:  # noqa: BLE001 - reported to the test
        result["no_conditioning_error"] = f"{type(err).__name__}: {err}"
print(json.dumps(result))
