"""LiT Restoration Sampler / LiT Degrade node functions, called the way ComfyUI calls them."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data as skdata  # a test extra: missing it must fail, not skip
import torch

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.restoration.spec import DAMAGE, DEGRADE, RESTORE_TASKS, SAMPLER
from comfyui_lit.nodes.restoration import NODE_CLASS_MAPPINGS, LiTDegrade, LiTRestorationSampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _restore(*args, **kwargs):
    """The sampler node's outputs (it also returns a ``ui`` dict for the before/after preview)."""
    out = LiTRestorationSampler().run(*args, **kwargs)
    assert set(out) == {"ui", "result"} and "lit_compare" in out["ui"]
    return out["result"]


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """ComfyUI IMAGE [1,80,96,3] from a real photo."""
    return torch.from_numpy(skdata.chelsea()[60:140, 120:216].astype(np.float32) / 255)[None]


def psnr(a, b):
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_node_metadata():
    for cls in NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for name, (_, opts) in group.items():
                assert opts.get("tooltip"), name
        assert cls.CATEGORY.startswith("LiT") and cls.DESCRIPTION and len(cls.OUTPUT_TOOLTIPS) == len(
            cls.RETURN_TYPES)
    assert LiTRestorationSampler.INPUT_TYPES()["optional"]["lit_model"][0] == "LIT_MODEL"


@pytest.mark.parametrize(("damage", "task", "kwargs"), [
    ("noise", "denoise", {"noise_sigma": 25.0}),
    ("blur (gaussian)", "deblur (gaussian)", {"noise_sigma": 2.0}),
    ("random pixels", "inpaint", {"noise_sigma": 0.0}),
    ("downscale x2", "upscale x2", {"noise_sigma": 0.0}),
    ("jpeg", "jpeg artifacts", {"noise_sigma": 0.0}),
])
def test_degrade_then_restore_under_inference_mode(image, damage, task, kwargs):
    with torch.inference_mode():
        bad, mask = LiTDegrade().run(image, damage, kwargs["noise_sigma"], seed=1)
        assert bad.dtype == torch.float32 and bad.shape[-1] == 3 and mask.ndim == 3
        (out,) = _restore(bad, task, kwargs["noise_sigma"], steps=0, seed=0, strength=1.0,
                                            mask=mask if task == "inpaint" else None)
    assert out.shape == image.shape and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    ref = bad if bad.shape == image.shape else torch.nn.functional.interpolate(
        bad.permute(0, 3, 1, 2), size=image.shape[1:3], mode="bicubic").permute(0, 2, 3, 1)
    assert psnr(out, image) > psnr(ref, image)


def test_sampler_batch_seed_and_stochastic(image):
    small = image[:, :48, :56]
    batch = torch.cat([small, small.flip(2)])
    with torch.inference_mode():
        bad, _ = LiTDegrade().run(batch, "noise", 20.0, seed=3)
        run = _restore
        a = run(bad, "denoise", 20.0, steps=2, seed=7, strength=1.0, stochastic=0.5)[0]
        b = run(bad, "denoise", 20.0, steps=2, seed=7, strength=1.0, stochastic=0.5)[0]
        c = run(bad, "denoise", 20.0, steps=2, seed=8, strength=1.0, stochastic=0.5)[0]
    assert a.shape == batch.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_guidance_under_inference_mode(image):
    class Lit:
        device = torch.device("cpu")
        logit_scale = torch.tensor(10.0)

        def encode_image(self, images):
            f = images.mean(dim=(1, 2)) - 0.3
            return f / f.norm(dim=-1, keepdim=True)

        def encode_text(self, texts):
            t = torch.tensor([[1.0, 0.0, 0.0] if s == "red" else [0.0, 0.0, 1.0] for s in texts])
            return t / t.norm(dim=-1, keepdim=True)

    image = image[:, :48, :56]
    with torch.inference_mode():
        plain = _restore(image, "denoise", 10.0, steps=3, seed=0, strength=1.0)[0]
        guided = _restore(image, "denoise", 10.0, steps=3, seed=0, strength=1.0,
                                             lit_model=Lit(), positive="red", negative="blue", guidance=1.0)[0]
    assert (guided[..., 0] - guided[..., 2]).mean() > (plain[..., 0] - plain[..., 2]).mean() + 0.01


def test_node_errors_name_the_node(image):
    with torch.inference_mode():
        with pytest.raises(LitError, match=r"\[LiT Restoration Sampler\].*mask"):
            _restore(image, "inpaint", 0.0, steps=2, seed=0, strength=1.0)
        with pytest.raises(LitError, match="same height and width"):
            _restore(image, "inpaint", 0.0, steps=2, seed=0, strength=1.0,
                                        mask=torch.zeros(1, 10, 10))
        with pytest.raises(LitError, match="noise level"):
            _restore(image, "denoise", -1.0, steps=2, seed=0, strength=1.0)
        with pytest.raises(LitError, match="larger than the image"):
            _restore(image[:, :20, :20], "deblur (gaussian)", 0.0, steps=2, seed=0,
                                        strength=1.0, blur_sigma=10.0)
        with pytest.raises(LitError, match="both MODEL and VAE"):
            _restore(image, "denoise", 5.0, steps=2, seed=0, strength=1.0, model=object())
        with pytest.raises(LitError, match=r"\[LiT Degrade\]"):
            LiTDegrade().run(image, "noise", -5.0, seed=0)
    assert set(RESTORE_TASKS) and set(DAMAGE)


def test_node_and_cli_inputs_come_from_the_spec():
    import argparse

    from comfyui_lit.cli import restoration as cli
    from comfyui_lit.models.restoration import degradations as D
    from comfyui_lit.models.restoration.sampler import schedule_for
    from comfyui_lit.models.restoration.spec import schedule

    inputs = LiTRestorationSampler.INPUT_TYPES()
    flat = {**inputs["required"], **inputs["optional"]}
    for name, prm in SAMPLER.items():
        widget = flat[name]
        if prm.kind == "CHOICE":
            assert widget[0] == prm.choices
        assert widget[1]["default"] == prm.default and widget[1]["tooltip"] == prm.tooltip
        if prm.low is not None:
            assert (widget[1]["min"], widget[1]["max"]) == (prm.low, prm.high)
    degrade = {**LiTDegrade.INPUT_TYPES()["required"], **LiTDegrade.INPUT_TYPES()["optional"]}
    assert all(degrade[k][1]["default"] == p.default for k, p in DEGRADE.items())
    assert flat["degradation"][0] == RESTORE_TASKS and degrade["damage"][0] == DAMAGE
    sub = argparse.ArgumentParser().add_subparsers()
    cli.register(sub)
    args = sub.choices["restore"].parse_args(["in.png", "--out", "o.png"])
    assert (args.task, args.noise_sigma, args.blur_sigma, args.jpeg_quality) == (
        SAMPLER["degradation"].default, SAMPLER["noise_sigma"].default, SAMPLER["blur_sigma"].default,
        SAMPLER["jpeg_quality"].default)
    # schedules are keyed by task name: each upscale factor ends at its own level, as DPIR's SR does
    assert schedule("upscale x2", True).sigma_min == 2 / 255 and schedule("upscale x4", True).sigma_min == 4 / 255
    assert schedule_for(D.Upscale(torch.rand(1, 3, 16, 16), 4), True) == schedule("upscale x4", True)
    # x4 with a trained prior starts higher than DPIR's 49/255 (measured); x2 and the classical schedules do not
    assert schedule("upscale x4", True).sigma_max == 120 / 255 and schedule("upscale x2", True).sigma_max == 49 / 255
    assert schedule("upscale x4", False) == schedule("upscale x2", False)
