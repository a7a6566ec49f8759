"""'LiT Load Restoration Prior' in the real ComfyUI (issue 15): the original FFDNet weights, converted to .safetensors
into models/upscale_models (which core's 'Load Upscale Model' cannot read: spandrel has no FFDNet), are listed in
/object_info, restore a noisy photo through the Restoration Sampler's prior input, and also run in core's 'Upscale
Image (using Model)'. A wrong file gets the pack's clear error."""

from __future__ import annotations

import io
import pickle

import numpy as np
from hostlib import SHARED, _photo
from PIL import Image

from comfyui_lit.models.restoration.ffdnet import convert_mat

PRIOR = "lit_test_ffdnet_color.safetensors"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def _prompt(image: str, prior: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "LiTDegrade", "inputs": {"image": ["1", 0], "damage": "noise", "noise_sigma": 25.0,
                                                     "seed": 0}},
        "3": {"class_type": "LiTLoadRestorationPrior", "inputs": {"prior_name": prior, "noise_level": 25.0}},
        "4": {"class_type": "LiTRestorationSampler", "inputs": {
            "image": ["2", 0], "degradation": "denoise", "noise_sigma": 25.0, "steps": 0, "seed": 0,
            "strength": 1.0, "prior": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "lit_prior_sampler"}},
        "6": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["3", 0], "image": ["2", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "lit_prior_core"}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "lit_prior_noisy"}},
    }


def test_ffdnet_safetensors_loads_restores_and_runs_in_core_upscale_node(comfy):
    folder = comfy.comfy_dir / "models" / "upscale_models"
    folder.mkdir(parents=True, exist_ok=True)
    convert_mat(str(SHARED / "weights" / "FFDNet_color.mat"), str(folder / PRIOR))
    bad = folder / "lit_test_renamed_pickle.safetensors"
    bad.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    clean = _photo(96, 80)
    Image.fromarray(clean).save(comfy.comfy_dir / "input" / "lit_prior_test.png")
    try:
        info = comfy.get("/object_info/LiTLoadRestorationPrior")["LiTLoadRestorationPrior"]
        assert PRIOR in info["input"]["required"]["prior_name"][0], info["input"]["required"]["prior_name"]
        assert info["output"] == ["UPSCALE_MODEL"]

        status, body = comfy.queue(_prompt("lit_prior_test.png", PRIOR))
        assert status == 200, body
        entry = comfy.wait(body["prompt_id"], timeout=300)
        assert entry["status"]["status_str"] == "success", entry["status"]
        got = {nid: np.asarray(Image.open(io.BytesIO(comfy.view(entry["outputs"][nid]["images"][0]))).convert("RGB"))
               for nid in ("5", "7", "8")}
        noisy, sampler, core = _psnr(got["8"], clean), _psnr(got["5"], clean), _psnr(got["7"], clean)
        # sigma 25 noise is ~20 dB; FFDNet removes most of it, through our sampler and through core's node alike
        assert sampler > noisy + 8 and core > noisy + 8, (noisy, sampler, core)
        report = entry["outputs"]["4"].get("text") or []
        assert report and "FFDNet (" + PRIOR in report[0] and "conditioned" in report[0], entry["outputs"]["4"]

        status, body = comfy.queue(_prompt("lit_prior_test.png", bad.name))
        assert status == 200, body
        entry = comfy.wait(body["prompt_id"], timeout=300)
        assert entry["status"]["status_str"] == "error", entry["status"]
        (err,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert err["node_type"] == "LiTLoadRestorationPrior", err
        msg = err["exception_message"]
        assert "[LiT Load Restoration Prior]" in msg and "'prior_name'" in msg and "Fix:" in msg, msg
        assert comfy.alive()
    finally:
        (folder / PRIOR).unlink(missing_ok=True)
        bad.unlink(missing_ok=True)
