"""LiT Load Restoration Prior: FFDNet .safetensors (which core's 'Load Upscale Model' cannot read, spandrel has no
FFDNet) and spandrel denoisers from models/upscale_models, as an UPSCALE_MODEL the Restoration Sampler takes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import skimage.data as skdata
import torch
from safetensors.torch import save_file

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.restoration import ffdnet as FF
from comfyui_lit.models.restoration import priors as P
from comfyui_lit.nodes.restoration import NO_PRIORS, NODE_CLASS_MAPPINGS, LiTLoadRestorationPrior, LiTRestorationSampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def upscale_dir(tmp_path, monkeypatch):
    """An empty models/upscale_models of the host-free fallback (``$COMFYUI_LIT_MODELS``)."""
    monkeypatch.setenv("COMFYUI_LIT_MODELS", str(tmp_path))
    folder = tmp_path / "upscale_models"
    folder.mkdir()
    return folder


def _small_ffdnet(seed: int = 0) -> FF.FFDNet:
    torch.manual_seed(seed)
    return FF.FFDNet(in_nc=3, nc=8, depth=3).eval()


def _save_ffdnet(net: FF.FFDNet, path) -> None:
    """The file layout ``convert_mat`` writes (weights + ``architecture`` metadata)."""
    meta = {"architecture": FF.ARCH_NAME, **{k: str(v) for k, v in FF.config_from_state_dict(net.state_dict()).items()}}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)


def _names() -> list[str]:
    return LiTLoadRestorationPrior.INPUT_TYPES()["required"]["prior_name"][0]


def test_loader_is_registered_and_lists_only_safetensors(upscale_dir):
    assert NODE_CLASS_MAPPINGS["LiTLoadRestorationPrior"] is LiTLoadRestorationPrior
    assert _names() == [NO_PRIORS]
    with pytest.raises(LitError, match="restore-convert") as err:
        LiTLoadRestorationPrior().run(NO_PRIORS)
    assert "prior_name" in str(err.value) and "[LiT Load Restoration Prior]" in str(err.value)
    _save_ffdnet(_small_ffdnet(), upscale_dir / "ffdnet.safetensors")
    (upscale_dir / "sub").mkdir()
    _save_ffdnet(_small_ffdnet(1), upscale_dir / "sub" / "other.safetensors")
    torch.save({"w": torch.zeros(1)}, upscale_dir / "esrgan.pth")  # a pickle: never offered
    assert _names() == ["ffdnet.safetensors", "sub/other.safetensors"]


def test_ffdnet_file_becomes_an_upscale_model_the_sampler_conditions_per_step(upscale_dir):
    from spandrel import ImageModelDescriptor

    net = _small_ffdnet()
    _save_ffdnet(net, upscale_dir / "ffdnet.safetensors")
    (desc,) = LiTLoadRestorationPrior().run("ffdnet.safetensors", 20.0)
    # a real spandrel descriptor: what core's 'Upscale Image (using Model)' calls, at the node's noise level
    assert isinstance(desc, ImageModelDescriptor) and desc.scale == 1 and desc.input_channels == 3
    x = torch.rand(1, 3, 32, 30, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(desc(x), net(x, 20 / 255).clamp(0, 1), atol=1e-6)
        # as the sampler's prior it gets each step's noise level, not the node's
        prior = P.as_prior(desc)
        assert prior.conditioned and "FFDNet (ffdnet.safetensors)" in prior.note
        assert torch.allclose(prior(x, 0.3), net(x, 0.3), atol=1e-5)
        assert not torch.allclose(prior(x, 0.3), prior(x, 0.05), atol=1e-4)
    # the sampler node takes it on its 'prior' input and says which prior ran
    img = torch.from_numpy(skdata.chelsea()[60:108, 120:168].astype(np.float32) / 255)[None]
    out = LiTRestorationSampler().run(img, "denoise", 25.0, 0, 0, 1.0, prior=desc)
    assert out["result"][0].shape == img.shape and torch.isfinite(out["result"][0]).all()
    assert "FFDNet (ffdnet.safetensors)" in out["ui"]["text"][0]
    # and using it did not change the descriptor core's nodes would run (device/dtype copies, same weights)
    assert desc.model.body[0].weight.dtype == torch.float32 and desc(x).shape == x.shape


def test_spandrel_denoiser_file_loads_and_wrong_files_are_refused(upscale_dir):
    from spandrel.architectures.DRUNet import DRUNet
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    drunet = DRUNet(in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=2)
    save_file({k: v.contiguous() for k, v in drunet.state_dict().items()}, str(upscale_dir / "drunet.safetensors"))
    (desc,) = LiTLoadRestorationPrior().run("drunet.safetensors", 15.0)
    assert str(desc.architecture.id) == "DRUNet" and P.as_prior(desc).conditioned

    def refused(name: str, *words: str) -> str:
        with pytest.raises(LitError) as err:
            LiTLoadRestorationPrior().run(name, 15.0)
        msg = str(err.value)
        assert "[LiT Load Restoration Prior]" in msg and "input 'prior_name'" in msg and "Fix:" in msg, msg
        for w in words:
            assert w.lower() in msg.lower(), (w, msg)
        return msg

    esrgan = ESRGAN(num_filters=8, num_blocks=1)  # a x4 upscaler is not a prior
    save_file({k: v.contiguous() for k, v in esrgan.state_dict().items()}, str(upscale_dir / "x4.safetensors"))
    refused("x4.safetensors", "1x denoiser", "Upscale Image (using Model)")
    (upscale_dir / "renamed_pickle.safetensors").write_bytes(pickle.dumps({"w": [1.0]}))
    refused("renamed_pickle.safetensors", "readable")
    save_file({"foo.weight": torch.zeros(2, 2)}, str(upscale_dir / "unknown.safetensors"))
    refused("unknown.safetensors", "spandrel")
    sd = {k: v.clone() for k, v in _small_ffdnet().state_dict().items()}
    sd["body.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(sd, str(upscale_dir / "nan.safetensors"), metadata={"architecture": FF.ARCH_NAME})
    refused("nan.safetensors", "NaN")
    refused("gone.safetensors", "not found", "upscale_models")
    # the sampler's prior input refuses a non-descriptor with the loader's name in the fix
    with pytest.raises(LitError, match="Load Restoration Prior"):
        P.as_prior(object())
