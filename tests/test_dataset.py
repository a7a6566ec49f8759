"""Captioned datasets: folder / manifest / in-graph batch, EXIF, colour modes, skips, split, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.data.dataset import from_images, load_dataset, load_folder, load_manifest, read_image


def _save(path: str, size=(12, 8), colour=(200, 30, 30), mode="RGB", **kw) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, colour).save(path, **kw)
    return path


def _caption(path: str, *lines: str) -> None:
    with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


@pytest.fixture()
def folder(tmp_path):
    root = str(tmp_path / "data")
    _caption(_save(f"{root}/a.jpg"), "a red square", "", "  a red block  ")
    _caption(_save(f"{root}/sub/deeper/b.png", colour=(0, 0, 255)), "a blue square")
    _caption(_save(f"{root}/sub/c.webp", colour=(0, 255, 0)), "a green square")
    _caption(_save(f"{root}/d.BMP", colour=(9, 9, 9)), "a black square")
    _save(f"{root}/no_caption.png")
    _caption(_save(f"{root}/empty.png"), "")
    with open(f"{root}/broken.jpg", "wb") as fh:
        fh.write(b"\xff\xd8 this is not a jpeg")
    _caption(f"{root}/broken.jpg", "a broken file")
    _caption(_save(f"{root}/.lit_cache/hidden.png"), "must not be indexed")
    with open(f"{root}/notes.md", "w") as fh:
        fh.write("ignored")
    return root


def test_folder_recursive_multiline_captions_and_skip_report(folder):
    ds = load_folder(folder)
    assert sorted(s.key for s in ds.samples) == ["a.jpg", "d.BMP", "sub/c.webp", "sub/deeper/b.png"]
    a = next(s for s in ds.samples if s.key == "a.jpg")
    assert a.captions == ["a red square", "a red block"]
    skipped = dict(ds.skipped)
    assert set(skipped) == {"no_caption.png", "empty.png", "broken.jpg"}
    assert "unreadable" in skipped["broken.jpg"]
    report = ds.report()
    assert "4 images" in report and "Skipped 3" in report and "broken.jpg" in report
    assert ds.default_cache_dir() == os.path.join(os.path.abspath(folder), ".lit_cache")
    img = ds.load_image(ds.samples.index(a))
    assert img.dtype == torch.float32 and img.shape == (8, 12, 3) and 0 <= float(img.min()) <= float(img.max()) <= 1
    assert float(img[..., 0].mean()) > 0.7 and float(img[..., 1].mean()) < 0.2
    flat = load_folder(folder, recursive=False)
    assert sorted(s.key for s in flat.samples) == ["a.jpg", "d.BMP"]


def test_exif_orientation_rgba_and_greyscale(tmp_path):
    im = Image.new("RGB", (20, 10), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 5, 10))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = str(tmp_path / "rot.jpg")
    im.save(path, exif=exif.tobytes(), quality=95)
    arr = read_image(path)
    assert arr.shape == (20, 10, 3)  # displayed upright: portrait
    assert float(arr[:4, :, 2].mean()) > 0.7  # the blue strip is now at the top
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.save(tmp_path / "alpha.png")
    arr = read_image(str(tmp_path / "alpha.png"))
    assert arr.shape == (4, 4, 3) and torch.allclose(arr, torch.ones_like(arr))  # transparent -> white
    Image.new("L", (5, 3), 128).save(tmp_path / "grey.png")
    arr = read_image(str(tmp_path / "grey.png"))
    assert arr.shape == (3, 5, 3) and torch.allclose(arr, torch.full_like(arr, 128 / 255))


def test_manifests_jsonl_and_csv(tmp_path):
    root = tmp_path / "m"
    _save(str(root / "imgs/x.png"))
    _save(str(root / "imgs/y.jpg"), colour=(1, 2, 3))
    with open(root / "train.jsonl", "w") as fh:
        fh.write(json.dumps({"image": "imgs/x.png", "text": "an x"}) + "\n\n")
        fh.write(json.dumps({"image": "imgs/x.png", "text": "another x"}) + "\n")
        fh.write(json.dumps({"image": "imgs/y.jpg", "text": ["a y", "why"]}) + "\n")
        fh.write(json.dumps({"image": "imgs/missing.png", "text": "gone"}) + "\n")
        fh.write(json.dumps({"image": "imgs/y.jpg", "text": ""}) + "\n")
    ds = load_manifest(str(root / "train.jsonl"))
    caps = {s.key: s.captions for s in ds.samples}
    assert caps == {"imgs/x.png": ["an x", "another x"], "imgs/y.jpg": ["a y", "why"]}
    assert ("imgs/missing.png", "file not found") in ds.skipped
    assert ds.load_image(0).shape[-1] == 3
    with open(root / "train.csv", "w", newline="") as fh:
        fh.write("image,text\nimgs/x.png,\"an x, with a comma\"\nimgs/y.jpg,a y\n")
    ds = load_dataset(str(root / "train.csv"))
    assert [s.captions for s in ds.samples] == [["an x, with a comma"], ["a y"]]
    assert os.path.isabs(ds.samples[0].path) and os.path.isfile(ds.samples[0].path)
    with open(root / "bad.csv", "w") as fh:
        fh.write("file,caption\nimgs/x.png,x\n")
    with pytest.raises(LitError, match="'image' and 'text'"):
        load_manifest(str(root / "bad.csv"))
    with open(root / "bad.jsonl", "w") as fh:
        fh.write("{not json\n")
    with pytest.raises(LitError, match="line 1"):
        load_manifest(str(root / "bad.jsonl"))


def test_empty_and_captionless_datasets_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LitError, match="no images"):
        load_folder(str(tmp_path / "empty"))
    _save(str(tmp_path / "nocap/a.png"))
    with pytest.raises(LitError, match="usable caption") as err:
        load_folder(str(tmp_path / "nocap"))
    assert err.value.input_name == "folder" and err.value.fix
    with pytest.raises(LitError, match="does not exist"):
        load_folder(str(tmp_path / "nowhere"))
    with pytest.raises(LitError, match="does not exist"):
        load_dataset(str(tmp_path / "nowhere"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(LitError, match="not a folder"):
        load_folder(str(tmp_path / "file.bin"))


def test_in_graph_batch():
    images = torch.rand(3, 6, 5, 4)  # RGBA
    with torch.inference_mode():
        ds = from_images(images, "a cat\n\na dog | a puppy\na bird\n")
    assert [s.captions for s in ds.samples] == [["a cat"], ["a dog", "a puppy"], ["a bird"]]
    assert ds.load_image(1).shape == (6, 5, 3) and not ds.load_image(1).is_inference()
    assert ds.default_cache_dir() is None
    assert ds.content_hash(0) != ds.content_hash(1)
    with pytest.raises(LitError, match="3 images but 2"):
        from_images(images, ["a", "b"])
    with pytest.raises(LitError, match="no captions"):
        from_images(images, "\n \n")
    grey = from_images(torch.rand(2, 4, 4, 1), ["x", "y"])
    assert grey.load_image(0).shape == (4, 4, 3)


def test_split_is_deterministic_disjoint_and_complete():
    ds = from_images(torch.rand(20, 2, 2, 3), [f"c{i}" for i in range(20)])
    tr1, va1 = ds.split(0.25, seed=3)
    tr2, va2 = ds.split(0.25, seed=3)
    tr3, va3 = ds.split(0.25, seed=4)
    keys = lambda d: [s.key for s in d.samples]  # noqa: E731
    assert keys(tr1) == keys(tr2) and keys(va1) == keys(va2)
    assert len(va1) == 5 and len(tr1) == 15
    assert not set(keys(tr1)) & set(keys(va1)) and set(keys(tr1)) | set(keys(va1)) == set(keys(ds))
    assert keys(va1) != keys(va3)
    tiny_tr, tiny_va = from_images(torch.rand(3, 2, 2, 3), ["a", "b", "c"]).split(0.1, seed=0)
    assert len(tiny_va) == 0 and len(tiny_tr) == 3  # too small to spare validation images


def test_class_name_detection():
    names = from_images(torch.rand(8, 2, 2, 3), ["cat", "dog"] * 4)
    assert names.class_names() == ["cat", "dog"]
    unique = from_images(torch.rand(4, 2, 2, 3), ["a", "b", "c", "d"])
    assert unique.class_names() is None
    multi = from_images(torch.rand(4, 2, 2, 3), ["a | b", "a", "b", "a"])
    assert multi.class_names() is None
    assert np.isclose(len(names), 8)
