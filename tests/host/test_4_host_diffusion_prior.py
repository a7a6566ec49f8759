"""The Restoration Sampler's diffusion prior runs through ComfyUI's own sampler (issue 15): patches on the MODEL
(unet wrappers, sampler CFG functions, attention overrides such as LiT's own attention patch) apply at every
prior step. Checked in the host's venv with ComfyUI 0.3.64's real model classes (a tiny SD UNet, random weights).
"""

from __future__ import annotations

import json
import subprocess

from hostlib import HOST_TESTS, ROOT


def test_diffusion_prior_goes_through_comfy_samplers_so_model_patches_apply(comfy):
    proc = subprocess.run([str(comfy.venv / "bin" / "python"), str(HOST_TESTS / "diffusion_prior_probe.py"),
                           str(ROOT), str(comfy.comfy_dir)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = result["steps"]
    # One model evaluation per HQS step, each through the MODEL's own options.
    assert result["unet_wrapper"] == steps, result
    assert result["sampler_cfg_function"] == steps, result
    assert result["attention_override"] >= steps, result
    assert result["shape"] == [1, 64, 72, 3] and result["finite"], result
    assert "diffusion" in result["report"], result
    err = result["no_conditioning_error"]
    assert err and "conditioning" in err and "CLIP Text Encode" in err, err
