"""Bad pixels and trained priors through the Restoration nodes and engine: clear errors, never NaN or a traceback."""

from __future__ import annotations

import pytest
import torch

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.restoration import degradations as D
from comfyui_lit.models.restoration import denoisers as DN
from comfyui_lit.models.restoration.sampler import restore
from comfyui_lit.nodes.restoration import LiTDegrade, LiTRestorationSampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 1, 48)[None, :, None].expand(40, 48, 3)
    return (base + 0.05 * torch.randn(40, 48, 3, generator=g)).clamp(0, 1)[None].contiguous()


@pytest.mark.parametrize("task", ["denoise", "deblur (gaussian)", "inpaint", "upscale x2", "jpeg artifacts"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_one_bad_pixel_is_a_clear_error(task, bad):
    img = _image()
    img[0, 7, 9, 1] = bad
    kw = {"mask": torch.zeros(1, 40, 48)} if task == "inpaint" else {}
    with torch.inference_mode(), pytest.raises(LitError, match=r"\[LiT Restoration Sampler\].*1 of the .* NaN"):
        LiTRestorationSampler().run(img, task, 0.0, steps=2, seed=0, strength=1.0, **kw)


def test_engine_refuses_nan_before_block_matching():
    y = _image().permute(0, 3, 1, 2).clone()
    y[0, 0, 3, 3] = float("nan")
    with pytest.raises(LitError, match="NaN"):  # was an IndexError deep in the block-matching pass
        restore(D.Denoise(y, 0.1), DN.DCTDenoiser(block_matching=True))
    with pytest.raises(LitError, match="NaN"):  # was an all-NaN output
        D.Deblur(y, D.gaussian_kernel(1.0), 0.01)


def test_degrade_refuses_nan():
    img = _image()
    img[0, 0, 0, 0] = float("nan")
    with torch.inference_mode(), pytest.raises(LitError, match=r"\[LiT Degrade\].*NaN"):
        LiTDegrade().run(img, "noise", 10.0, seed=0)


@pytest.mark.parametrize("channels", [1, 2])
def test_grey_images_ask_for_three_channels(channels):
    img = _image()[..., :channels].contiguous()
    with torch.inference_mode(), pytest.raises(LitError, match="3 channels"):
        LiTRestorationSampler().run(img, "denoise", 10.0, steps=1, seed=0, strength=1.0)


def test_empty_batch_is_a_clear_error():
    with torch.inference_mode(), pytest.raises(LitError, match="empty"):
        LiTRestorationSampler().run(torch.zeros(0, 40, 48, 3), "denoise", 10.0, steps=1, seed=0, strength=1.0)


def test_node_runs_an_upscale_model_prior_and_says_so():
    from spandrel import ModelLoader
    from spandrel.architectures.DRUNet import DRUNet

    torch.manual_seed(0)
    desc = ModelLoader().load_from_state_dict(DRUNet(in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=2).state_dict())
    img = _image()
    with torch.inference_mode():
        out = LiTRestorationSampler().run(img, "deblur (gaussian)", 2.0, steps=3, seed=0, strength=1.0,
                                          blur_sigma=1.0, prior=desc)
        assert out["result"][0].shape == img.shape and torch.isfinite(out["result"][0]).all()
        assert "DRUNet" in out["ui"]["text"][0] and "annealed" in out["ui"]["text"][0]
        plain = LiTRestorationSampler().run(img, "denoise", 10.0, steps=1, seed=0, strength=1.0)
        assert "built-in" in plain["ui"]["text"][0]
        with pytest.raises(LitError, match="not both"):
            LiTRestorationSampler().run(img, "denoise", 10.0, steps=1, seed=0, strength=1.0, prior=desc,
                                        model=object(), vae=object())


def test_cli_restore_with_an_ffdnet_prior(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from comfyui_lit.cli import main
    from comfyui_lit.models.restoration.ffdnet import FFDNet

    net = FFDNet(in_nc=3, nc=8, depth=3)
    save_file(net.state_dict(), str(tmp_path / "f.safetensors"), metadata={"architecture": "FFDNet"})
    Image.fromarray((_image()[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert main(["restore", str(tmp_path / "in.png"), "--task", "upscale x2", "--prior",
                 str(tmp_path / "f.safetensors"), "--out", str(out)]) == 0
    assert Image.open(out).size == (96, 80) and "FFDNet" in capsys.readouterr().out
    assert main(["restore", str(tmp_path / "in.png"), "--out", str(out)]) == 2  # exists: refused
    # the default task (denoise) reads the noise level and says so, with the flag that overrides it
    assert main(["restore", str(tmp_path / "in.png"), "--out", str(tmp_path / "o1.png")]) == 0
    said = capsys.readouterr().out
    assert "estimated from the photo: set --sigma to override" in said, said
    assert main(["restore", str(tmp_path / "in.png"), "--sigma", "10", "--out", str(tmp_path / "o3.png")]) == 0
    assert "estimated" not in capsys.readouterr().out
    # shot noise (--poisson-gain): made even before the prior in one step, and the report says so
    assert main(["restore", str(tmp_path / "in.png"), "--poisson-gain", "5", "--sigma", "2", "--prior",
                 str(tmp_path / "f.safetensors"), "--out", str(tmp_path / "o4.png")]) == 0
    assert "Anscombe transform" in capsys.readouterr().out
    assert main(["restore", str(tmp_path / "in.png"), "--poisson-gain", "5", "--sigma", "2", "--steps", "2",
                 "--out", str(tmp_path / "o5.png")]) == 0
    assert "takes one level per photo" in capsys.readouterr().out
    torch.save(net.state_dict(), tmp_path / "f.pth")
    assert main(["restore", str(tmp_path / "in.png"), "--prior", str(tmp_path / "f.pth"), "--out",
                 str(tmp_path / "o2.png")]) == 2
    assert "pickled" in capsys.readouterr().err
