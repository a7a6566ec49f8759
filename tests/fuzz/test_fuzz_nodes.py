"""Fuzz: the shared node-boundary checks in nodes/host.py, called the way ComfyUI calls nodes (inference mode)."""

from __future__ import annotations

import pytest
import torch

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.nodes import host


def _nan_batch() -> torch.Tensor:
    img = torch.rand(2, 4, 4, 3)
    img[0, 0, 0, 0] = float("nan")
    return img


@pytest.mark.parametrize("images,match", [
    (None, "nothing is connected"), (torch.zeros(0, 4, 4, 3), "empty"), (_nan_batch(), "NaN"),
    (torch.rand(2, 4, 4, 7), "C = 1/3/4"), ("a string", "IMAGE batch"), (torch.full((1, 2, 2, 3), float("inf")), "NaN"),
])
def test_require_images_refuses_bad_batches(fuzz, images, match):
    with torch.inference_mode():
        err = fuzz(lambda: host.require_images(images, input_name="image"), "clear", match=match)
    assert isinstance(err, LitError) and err.input_name == "image"


def test_require_images_passes_good_batches_through(fuzz):
    with torch.inference_mode():
        fuzz(lambda: host.require_images(torch.rand(4, 4, 3)), "handled", check=lambda t: t.shape == (1, 4, 4, 3))


@pytest.mark.parametrize("obj,match", [(None, "nothing is connected"), (42, "not a LIT_MODEL"),
                                       (torch.zeros(1), "not a LIT_MODEL")])
def test_require_lit_model(fuzz, obj, match):
    fuzz(lambda: host.require_lit_model(obj), "clear", match=match)


def test_require_finite(fuzz):
    fuzz(lambda: host.require_finite(torch.tensor([1.0, float("nan")]), input_name="mask", what="mask values"),
         "clear", match="1 of the 2 mask values")


def test_trainable_node_lifts_inference_mode_and_clones_inputs(fuzz):
    @host.trainable_node
    def optimise(image: torch.Tensor, *, steps: int = 3) -> torch.Tensor:
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
        x = image.clone().requires_grad_(True)
        for _ in range(steps):
            loss = ((x * image) ** 2).sum()  # `image` is saved for backward: it must not be an inference tensor
            (g,) = torch.autograd.grad(loss, x)
            x = (x - 0.1 * g).detach().requires_grad_(True)
        return x.detach()

    with torch.inference_mode():
        image = torch.rand(1, 4, 4, 3)
        assert image.is_inference()
        fuzz(lambda: optimise(image, steps=2), "handled", check=lambda t: t.shape == image.shape)
        fuzz(lambda: optimise(image=image), "handled", check=lambda t: bool(torch.isfinite(t).all()))
        assert torch.is_inference_mode_enabled()  # restored after the node
