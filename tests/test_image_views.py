"""The image tower's views: 'whole photo' averages the locked tower over fixed views of the whole image."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.data.embedding_cache import EmbeddingCache
from comfyui_lit.models.towers.image_tower import load_image_tower


@pytest.fixture(scope="module")
def tower():
    return load_image_tower(None)


@pytest.fixture(scope="module")
def whole():
    return load_image_tower(None, views="whole photo")


def _landscape(seed=0):
    # exactly 224 x 448: no resize, so every view is an exact crop that the test can cut out by hand
    return torch.rand(2, 224, 448, 3, generator=torch.Generator().manual_seed(seed))


def test_centre_crop_is_the_default_and_keeps_its_cache_key(tower):
    assert tower.views == "centre crop" and tower.n_views == 1
    assert "views" not in json.loads(tower.preprocess_id)  # caches and adapters made before views still match
    assert tower.preprocess(_landscape()).shape == (2, 3, 224, 224)


def test_whole_photo_views_are_the_documented_crops(tower, whole):
    x = _landscape()
    got = whole.preprocess(x).view(2, 5, 3, 224, 224)
    norm = lambda v: (v.movedim(-1, 1) - whole.mean) / whole.std  # noqa: E731
    centre = norm(x[:, :, 112:336])
    torch.testing.assert_close(got[:, 0], centre)
    torch.testing.assert_close(got[:, 1], centre.flip(-1))
    torch.testing.assert_close(got[:, 2], norm(x[:, :, :224]))
    torch.testing.assert_close(got[:, 3], norm(x[:, :, 224:]))
    squash = F.interpolate(x.movedim(-1, 1), size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    torch.testing.assert_close(got[:, 4], (squash - whole.mean) / whole.std)
    assert json.loads(whole.preprocess_id)["views"] == "whole photo"
    assert whole.fingerprint == tower.fingerprint  # the same locked weights


def test_whole_photo_embedding_is_the_mean_of_its_views(tower, whole):
    x = _landscape(1)
    views = [x[:, :, 112:336], x[:, :, 112:336].flip(2), x[:, :, :224], x[:, :, 224:]]
    squash = F.interpolate(x.movedim(-1, 1), size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    views.append(squash.movedim(1, -1))
    want = torch.stack([tower.encode(v) for v in views]).mean(0)  # each a 224 px square: no further resize
    got = whole.encode(x)
    assert got.shape == (2, tower.embed_dim)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, tower.encode(x), atol=1e-2)  # the side squares change it


def test_views_are_differentiable_and_checked(whole):
    x = torch.rand(1, 100, 150, 3).requires_grad_(True)
    whole.embed(x).sum().backward()
    assert x.grad is not None and x.grad[:, :, :20].abs().sum() > 0  # the left edge, outside the centre crop
    with pytest.raises(LitError, match="views"):
        whole(torch.zeros(3, 3, 224, 224))
    with pytest.raises(LitError, match="unknown views"):
        load_image_tower(None, views="everything")


def test_cache_keys_and_embeds_by_views(tower, whole, tmp_path):
    from PIL import Image

    from comfyui_lit.models.data.dataset import CaptionedDataset, Sample

    img = (torch.rand(120, 200, 3, generator=torch.Generator().manual_seed(3)) * 255).byte().numpy()
    Image.fromarray(img).save(tmp_path / "a.png")
    ds = CaptionedDataset([Sample("a.png", ["a photo"], path=str(tmp_path / "a.png"))], root=str(tmp_path))
    a, b = EmbeddingCache(tower, str(tmp_path / "c")), EmbeddingCache(whole, str(tmp_path / "c"))
    assert a.dir != b.dir
    emb, _ = b.embed_dataset(ds)
    torch.testing.assert_close(emb[0], whole.encode(ds.load_image(0)[None])[0], atol=1e-5, rtol=1e-5)
    again, _ = EmbeddingCache(whole, str(tmp_path / "c")).embed_dataset(ds)  # from disk
    assert torch.equal(again, emb)


def test_loader_node_offers_views():
    from comfyui_lit.nodes.loaders import EMBEDDED_IMAGE, LiTImageEncoderLoader

    spec_ = LiTImageEncoderLoader.INPUT_TYPES()["optional"]["views"]
    assert spec_[0] == ["centre crop", "whole photo"] and spec_[1]["default"] == "centre crop"
    with torch.inference_mode():
        (tower,) = LiTImageEncoderLoader().load(EMBEDDED_IMAGE, "auto", "cpu", "whole photo")
    assert tower.views == "whole photo" and tower.n_views == 5
