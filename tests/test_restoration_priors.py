"""Trained priors: FFDNet from its original MatConvNet weights (published numbers), spandrel plumbing, the sampler."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import shared_path

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.restoration import degradations as D
from comfyui_lit.models.restoration import denoisers as DN
from comfyui_lit.models.restoration import ffdnet as FF
from comfyui_lit.models.restoration import priors as P
from comfyui_lit.models.restoration.sampler import restore

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def psnr255(out: torch.Tensor, clean: torch.Tensor) -> float:
    """PSNR as FFDNet's paper measures it: the output quantised to uint8 against the uint8 clean image."""
    o = (out.clamp(0, 1) * 255).round()
    return float(10 * torch.log10(255 ** 2 / ((o - clean * 255) ** 2).mean()))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a.clamp(0, 1) - b) ** 2).mean()))


def load(path: str) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float().permute(2, 0, 1)[None] / 255


@pytest.fixture(scope="module")
def ffdnet_file(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("ffdnet") / "ffdnet_color.safetensors")
    return FF.convert_mat(shared_path("weights", "FFDNet_color.mat"), out)


@pytest.fixture(scope="module")
def ffdnet(ffdnet_file) -> P.NetworkPrior:
    return P.load_prior(ffdnet_file)


def test_converter_reads_the_published_layer_list(ffdnet_file):
    from safetensors import safe_open

    with safe_open(ffdnet_file, "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["architecture"] == "FFDNet" and (meta["nc"], meta["depth"], meta["in_nc"]) == ("96", "12", "3")
    assert len(keys) == 24  # 12 conv layers, weight + bias
    grey = FF.read_mat(shared_path("weights", "FFDNet_gray.mat"))
    assert FF.config_from_state_dict(grey) == {"in_nc": 1, "nc": 64, "depth": 15}


def test_ffdnet_reproduces_cbsd68_subset(ffdnet):
    """Eight CBSD68 images (128x128 centre crops), seeded noise: values measured once with this converter. The full
    68-image run (bench/restoration.py) gives 33.86 / 31.20 / 27.95 against the published 33.87 / 31.21 / 27.96."""
    files = sorted(glob.glob(os.path.join(shared_path("data", "restoration", "CBSD68"), "*.png")))[::9]
    assert len(files) == 8
    clean = torch.cat([load(f)[..., 96:224, 176:304] for f in files])
    g = torch.Generator().manual_seed(0)
    got = {}
    for sigma in (15, 50):
        y = clean + torch.randn(clean.shape, generator=g) * sigma / 255
        out = ffdnet(y, sigma / 255)
        got[sigma] = float(np.mean([psnr255(out[i:i + 1], clean[i:i + 1]) for i in range(len(files))]))
    assert abs(got[15] - MEASURED[15]) < 0.03 and abs(got[50] - MEASURED[50]) < 0.03, got
    # a wrong phase order or noise-map scale costs whole dB: the check above could fail
    wrong = ffdnet(clean + torch.randn(clean.shape, generator=g) * 50 / 255, 15 / 255)
    assert np.mean([psnr255(wrong[i:i + 1], clean[i:i + 1]) for i in range(8)]) < MEASURED[50] - 2


MEASURED = {15: 32.909, 50: 27.147}  # measured 2026-12-02 with this converter and seeds


def test_ffdnet_prior_beats_classical_on_deblur(ffdnet):
    x = load(shared_path("data", "restoration", "CBSD68", "103070.png"))[..., :128, :128]
    k = D.gaussian_kernel(1.6)
    y = D.add_noise(D.Deblur(x, k).apply(x), 0.01, generator=torch.Generator().manual_seed(1))
    net = restore(D.Deblur(y, k, 0.01), ffdnet)
    classical = restore(D.Deblur(y, k, 0.01), DN.DCTDenoiser())
    assert psnr(net, x) > psnr(classical, x) + 0.1, (psnr(net, x), psnr(classical, x))  # measured +0.21 dB


def test_ffdnet_prior_beats_bicubic_on_sr(ffdnet):
    x = load(shared_path("data", "restoration", "Set5", "HR", "bird.png"))[..., :128, :128]
    y = (D.downscale(x, 4).clamp(0, 1) * 255).round() / 255
    op = D.Upscale(y, 4)
    out = restore(op, ffdnet)
    assert psnr(out, x) > psnr(op.init(), x) + 1.0, (psnr(out, x), psnr(op.init(), x))


# ------------------------------------------------------------------------------------------- spandrel plumbing


def _descriptor(arch: str):
    from spandrel import ModelLoader
    from spandrel.architectures.DnCNN import DnCNN
    from spandrel.architectures.DRUNet import DRUNet
    from spandrel.architectures.SCUNet import SCUNet

    torch.manual_seed(0)
    net = {"DRUNet": lambda: DRUNet(in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=2),
           "DnCNN": lambda: DnCNN(in_nc=3, out_nc=3, nc=8, nb=9, act_mode="R"),
           "FDnCNN": lambda: DnCNN(in_nc=4, out_nc=3, nc=8, nb=9, act_mode="R", mode="FDnCNN"),
           "SCUNet": lambda: SCUNet(in_nc=3, config=[1, 1, 1, 1, 1, 1, 1], dim=64)}[arch]()
    return ModelLoader().load_from_state_dict(net.state_dict())


def test_scunet_is_blind():
    prior = P.as_prior(_descriptor("SCUNet"), "cpu")
    assert not prior.conditioned and "blind" in prior.note
    x = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))  # its minimum size: a fast forward
    out = prior(x, 0.1)
    assert out.shape == x.shape and torch.allclose(out, prior(x, 0.4))


@pytest.mark.parametrize("arch,conditioned", [("DRUNet", True), ("FDnCNN", True), ("DnCNN", False)])
def test_spandrel_priors(arch, conditioned):
    desc = _descriptor(arch)
    prior = P.as_prior(desc, "cpu", tile=48, overlap=8)
    assert prior.conditioned is conditioned and ("blind" in prior.note) is (not conditioned)
    x = torch.rand(2, 3, 70, 54, generator=torch.Generator().manual_seed(0))
    out = prior(x, torch.tensor([0.05, 0.1]))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.device.type == "cpu"
    if conditioned:  # the noise level reaches the network: another sigma gives another answer
        assert not torch.allclose(out, prior(x, torch.tensor([0.3, 0.3])), atol=1e-4)
        # and it is the extra input channel spandrel's own call would fix at 15/255
        small = x[:1, :, :48, :48]
        with torch.no_grad():
            ref = desc.model(torch.cat([small, torch.full((1, 1, 48, 48), 0.05)], 1))
        assert torch.allclose(prior(small, 0.05), ref, atol=1e-5)
    else:
        assert torch.allclose(out[:1], prior(x[:1], 0.3), atol=1e-5)
    # tiles blend into the whole-image answer for a pointwise-enough network (overlap hides the seams)
    whole = P.as_prior(desc, "cpu", tile=4096)(x, 0.05)
    assert (whole - prior(x, 0.05)).abs().mean() < 0.05


def test_spandrel_prior_from_safetensors_and_refusals(tmp_path):
    from safetensors.torch import save_file

    desc = _descriptor("DRUNet")
    path = tmp_path / "drunet.safetensors"
    save_file({k: v.contiguous() for k, v in desc.model.state_dict().items()}, str(path))
    prior = P.load_prior(str(path))
    assert prior.name == "DRUNet" and prior.conditioned
    torch.save(desc.model.state_dict(), tmp_path / "drunet.pth")
    with pytest.raises(LitError, match="pickled"):
        P.load_prior(str(tmp_path / "drunet.pth"))
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(LitError, match="readable"):
        P.load_prior(str(tmp_path / "junk.safetensors"))
    sd = {k: v.clone() for k, v in desc.model.state_dict().items()}
    sd["m_head.weight"][0, 0, 0, 0] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    with pytest.raises(LitError, match="NaN"):
        P.load_prior(str(tmp_path / "nan.safetensors"))
    from spandrel.architectures.ESRGAN import ESRGAN

    with pytest.raises(LitError, match="1x denoiser"):
        P.as_prior(P._spandrel_loader()().load_from_state_dict(ESRGAN(num_filters=8, num_blocks=1).state_dict()))


def test_grey_ffdnet_runs_per_channel():
    net = FF.FFDNet(in_nc=1, nc=8, depth=3)
    prior = P.from_ffdnet(net)
    x = torch.rand(1, 3, 33, 31)
    out = prior(x, 0.1)
    with torch.no_grad():
        ref = net(x[:, 1:2], 0.1)
    assert out.shape == x.shape and torch.allclose(out[:, 1:2], ref, atol=1e-6)


def test_bad_mat_files_are_refused(tmp_path):
    (tmp_path / "x.mat").write_bytes(b"MATLAB 5.0 not hdf5")
    with pytest.raises(LitError, match="HDF5"):
        FF.read_mat(str(tmp_path / "x.mat"))
    with pytest.raises(LitError, match="FFDNet"):
        FF.build_from_state_dict({"w": torch.zeros(1)})


# ------------------------------------------------------------------------------------ black-and-white photos


def _set12(sigma: float, every: int = 1, crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Set12 as ComfyUI loads a grey photo (three equal channels) and the same grey noise on all three, seeded per
    image: the clean and the noisy batch (one image per call, the photos differ in size)."""
    files = sorted(glob.glob(os.path.join(shared_path("data", "restoration", "Set12"), "*.png")))[::every]
    assert files
    for i, f in enumerate(files):
        x = torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255)[None, None]
        if crop:
            x = x[..., :crop, :crop]
        n = torch.randn(x.shape, generator=torch.Generator().manual_seed(i)) * sigma / 255
        yield x.expand(1, 3, *x.shape[-2:]), (x + n).expand(1, 3, *x.shape[-2:])


def test_grey_ffdnet_reproduces_its_published_set12_numbers(tmp_path):
    """The grey FFDNet (15 layers of 64) through the converter, on all 12 photos given as ComfyUI's three equal
    channels: FFDNet's published Set12 numbers (TIP 2018) within 0.05 dB, one network pass per photo, not three."""
    prior = P.load_prior(FF.convert_mat(shared_path("weights", "FFDNet_gray.mat"), str(tmp_path / "g.safetensors")))
    assert prior.channels == 1
    calls = []
    inner = prior.call
    prior.call = lambda x, s: calls.append(x.shape[0]) or inner(x, s)
    for sigma, published in ((15, 32.75), (50, 27.32)):
        got, count = [], 0
        for clean, noisy in _set12(sigma):
            out = prior(noisy, sigma / 255)
            assert torch.equal(out[:, 0], out[:, 2])  # stays a grey photo
            got.append(psnr255(out[:, :1], clean[:, :1]))
            count += 1
        assert abs(np.mean(got) - published) < 0.05, (sigma, np.mean(got))  # measured 32.755 / 27.310
        assert sum(calls) == count  # one pass per photo
        calls.clear()


def test_colour_priors_on_a_grey_photo(ffdnet):
    """Identical noise in the three channels of a grey photo is sqrt(3) times stronger in the luma than the
    independent noise a colour denoiser assumes: both priors account for it (before, 5-6 dB were lost)."""
    classical = DN.DCTDenoiser(block_matching=True)
    for clean, noisy in _set12(25, every=4, crop=128):
        ours = classical(noisy, 25 / 255)
        assert torch.allclose(ours[:, 0], ours[:, 2])
        coloured = noisy.clone()
        coloured[:, 1] += 1e-3  # no longer exactly grey: the colour path, told the wrong noise in the luma
        old = classical(coloured, 25 / 255)
        assert psnr255(ours[:, :1], clean[:, :1]) > psnr255(old[:, :1], clean[:, :1]) + 3
        net = ffdnet(noisy, 25 / 255)
        with torch.no_grad():  # the colour network told the plain sigma: what the prior did before
            plain = ffdnet.call(noisy, torch.full((1,), 25 / 255))
        assert psnr255(net.mean(1, keepdim=True), clean[:, :1]) > psnr255(plain.mean(1, keepdim=True),
                                                                            clean[:, :1]) + 3


# ------------------------------------------------------------------------------------------ shot noise


def _one_level(monkeypatch) -> None:
    """What every prior got before: one noise level per photo, no Anscombe transform."""
    from comfyui_lit.models.restoration import sampler as S

    monkeypatch.setattr(S, "_anscombe_case", lambda *a: None)


def _shot_photo(name: str, gain: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = load(os.path.join(shared_path("data", "restoration", "CBSD68"), f"{name}.png"))
    return x, D.add_noise(x, 2 / 255, gain, torch.Generator().manual_seed(seed)).clamp(0, 1)


def test_anscombe_inverse_is_unbiased_where_few_photons_are_counted():
    """Makitalo and Foi's point, checked by simulation: a denoiser returns (about) the mean of the transformed
    noise, and from one photon per pixel up their inverse of that mean reads the brightness closer than the plain
    algebraic inverse (measured 0.966 / 0.990 / 1.001 of the truth at 1 / 2 / 30 photons, algebraic 0.933 / 0.952 /
    0.997; at half a photon both are within 7%: 0.934 and 0.967); the transformed noise has unit variance."""
    from comfyui_lit.models.restoration import anscombe as A

    gain, s2 = torch.tensor([0.01]), torch.tensor([(1 / 255) ** 2])
    gen = torch.Generator().manual_seed(0)
    for x in (0.005, 0.01, 0.02, 0.3):
        shape = (1, 1, 400, 400)
        photons = torch.poisson(torch.full(shape, x / float(gain)), gen)
        y = gain * photons + torch.randn(shape, generator=gen) * s2.sqrt()
        d = A.forward(y, s2, gain)
        unbiased = float(A.inverse(torch.full((1, 1, 1, 1), float(d.mean())), s2, gain))
        algebraic = float(gain) * ((float(d.mean()) / 2) ** 2 - 3 / 8) - float(s2)
        assert abs(unbiased - x) < 0.07 * x, (x, unbiased)
        if x >= 0.01:
            assert abs(unbiased - x) < abs(algebraic - x) and abs(unbiased - x) < 0.04 * x, (x, unbiased, algebraic)
        if x >= 0.02:
            assert abs(float(d.var()) - 1) < 0.05, float(d.var())


@pytest.mark.parametrize("prior_name", ["classical", "ffdnet"])
def test_one_shot_denoise_of_shot_noise_goes_through_anscombe(prior_name, ffdnet, monkeypatch):
    """Poisson-Gaussian noise on a real photo of dark rocks and bright sky: the one-shot denoise makes it Gaussian
    first, for any prior, against the same prior told one level (the level at the photo's mean brightness, what
    every prior got before), with the gain given and with it read from the photo (the node's defaults).
    Measured on 4 other CBSD68 photos: +1.5-2.1 dB for the built-in prior, +1.5-2.2 for FFDNet."""
    prior = DN.DCTDenoiser(block_matching=True) if prior_name == "classical" else ffdnet
    x, y = _shot_photo("216081", 0.02, 7)
    x, y = x[..., :256, :], y[..., :256, :]
    given, read = D.Denoise(y, 2 / 255, 0.02), D.Denoise(y)
    assert read.shot_model() is not None and float(read.shot_model()[1][0]) > 0
    ours = [psnr255(restore(op, prior), x) for op in (given, read)]
    with pytest.MonkeyPatch.context() as mp:
        _one_level(mp)
        before = [psnr255(restore(op, prior), x) for op in (given, read)]
    assert ours[0] > before[0] + 0.5 and ours[1] > before[1] + 0.5, (ours, before)
    white = D.Denoise(D.add_noise(x, 15 / 255, 0, torch.Generator().manual_seed(7)).clamp(0, 1))
    assert white.shot_model() is None  # white noise: one level, as before


def test_the_report_says_how_shot_noise_reached_the_prior(ffdnet):
    from comfyui_lit.models.restoration.tasks import shot_noise_note

    x, y = _shot_photo("216081", 0.02, 8)
    op = D.Denoise(y, 2 / 255, 0.02)
    assert "Anscombe" in shot_noise_note(op, ffdnet, 1) and "Anscombe" in shot_noise_note(op, DN.DCTDenoiser(), 1)
    assert "one level per photo" in shot_noise_note(op, ffdnet, 3)
    assert "grows with brightness" in shot_noise_note(D.Denoise(y), ffdnet, 1)
    assert shot_noise_note(D.Denoise(y, 2 / 255), ffdnet, 1) == ""
    assert shot_noise_note(D.Denoise(D.add_noise(x, 15 / 255, 0, torch.Generator().manual_seed(7)).clamp(0, 1)),
                           ffdnet, 1) == ""
