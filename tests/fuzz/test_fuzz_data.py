"""Fuzz: datasets, images, captions, manifests and shards, through the engine, the LiT Dataset node and the CLI."""

from __future__ import annotations

import os
import time

import pytest
import torch
from corpus import caption, captioned_folder, png, png16_grey, png_declaring, tar_shard, truncate

from comfyui_lit.models.data.dataset import (
    MAX_PIXELS_ENV,
    dataset_signature,
    from_images,
    load_dataset,
    load_folder,
    load_manifest,
    read_image,
)
from comfyui_lit.models.data.streaming import load_shards
from comfyui_lit.nodes.tuning import LiTDataset


def node_load(**kw):
    with torch.inference_mode():
        return LiTDataset().load(**{"path": "", "recursive": True, **kw})


# -- pixels ------------------------------------------------------------------------------------------------------
def test_16bit_grey_png_decodes_to_its_value(fuzz, tmp_path):
    path = png16_grey(str(tmp_path / "g16.png"), 32768)
    fuzz(lambda: read_image(path), "handled", check=lambda t: abs(float(t.mean()) - 0.5) < 0.01)
    path = png16_grey(str(tmp_path / "g16b.png"), 65535)
    fuzz(lambda: read_image(path), "handled", check=lambda t: float(t.min()) > 0.999)


@pytest.mark.parametrize("mode,colour", [("P", 3), ("LA", (128, 0)), ("CMYK", (0, 0, 0, 0)), ("1", 1), ("I;16", 0)])
def test_odd_modes_decode_to_rgb_0_1(fuzz, tmp_path, mode, colour):
    path = str(tmp_path / f"m.{'jpg' if mode == 'CMYK' else 'png'}")
    png(path, (5, 4), colour, mode=mode)
    fuzz(lambda: read_image(path), "handled",
         check=lambda t: t.shape == (4, 5, 3) and bool(torch.isfinite(t).all()) and 0 <= float(t.min())
         and float(t.max()) <= 1)


def test_decompression_bomb_is_refused_before_decoding(fuzz, tmp_path):
    path = png_declaring(str(tmp_path / "bomb.png"), 12000, 12000)
    assert os.path.getsize(path) < 100_000
    t0 = time.perf_counter()
    fuzz(lambda: read_image(path), "clear", match=MAX_PIXELS_ENV)
    assert time.perf_counter() - t0 < 2.0
    caption(path, "a bomb")
    caption(png(str(tmp_path / "ok.png")), "fine")
    caption(png(str(tmp_path / "ok2.png")), "fine too")
    ds = fuzz(lambda: load_folder(str(tmp_path)), "handled", check=lambda d: len(d) == 2)
    assert "bomb.png" in ds.report() and MAX_PIXELS_ENV in ds.report()


def test_max_pixels_is_configurable(fuzz, tmp_path, monkeypatch):
    path = png(str(tmp_path / "a.png"), (100, 100))
    monkeypatch.setenv(MAX_PIXELS_ENV, "5000")
    fuzz(lambda: read_image(path), "clear", match="5000")
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    fuzz(lambda: read_image(path), "clear", match=MAX_PIXELS_ENV)
    monkeypatch.setenv(MAX_PIXELS_ENV, "20000")
    fuzz(lambda: read_image(path), "handled", check=lambda t: t.shape == (100, 100, 3))


@pytest.mark.parametrize("payload", [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a" + b"\0" * 20, os.urandom(300)])
def test_damaged_image_files_are_skipped_or_refused(fuzz, tmp_path, payload):
    bad = tmp_path / "bad.png"
    bad.write_bytes(payload)
    fuzz(lambda: read_image(str(bad)), "clear", match="bad.png")
    caption(str(bad), "broken")
    fuzz(lambda: load_folder(str(tmp_path)), "clear", match="could be read")


def test_folder_of_unreadable_images_says_so(fuzz, tmp_path):
    for i in range(3):
        (tmp_path / f"x{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    err = fuzz(lambda: node_load(path=str(tmp_path)), "clear", match="could be read")
    assert "usable caption" not in str(err) and "LiT Dataset" in str(err)


def test_in_graph_nan_and_empty_batches_are_refused(fuzz):
    img = torch.rand(2, 8, 8, 3)
    img[1, 2, 3, 0] = float("nan")
    fuzz(lambda: node_load(images=img, captions="a\nb"), "clear", match="NaN")
    img[1, 2, 3, 0] = float("inf")
    fuzz(lambda: from_images(img, "a\nb"), "clear", match="infinite")
    fuzz(lambda: node_load(images=torch.zeros(0, 8, 8, 3), captions="a"), "clear", match="empty")
    fuzz(lambda: node_load(images=torch.rand(2, 8, 8, 3), captions="a\nb"), "handled",
         check=lambda out: len(out[0]) == 2)


# -- captions and manifests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("enc", ["utf-16", "utf-8-sig", "utf-32"])
def test_unicode_captions_with_bom_decode_right(fuzz, tmp_path, enc):
    text = "un chat noir très joli\nкот"
    caption(png(str(tmp_path / "a.png")), text.encode(enc))
    caption(png(str(tmp_path / "b.png")), "plain")
    ds = fuzz(lambda: load_folder(str(tmp_path)), "handled", check=lambda d: len(d) == 2)
    assert ds.samples[0].captions == text.splitlines()


def test_latin1_caption_is_refused_not_garbled(fuzz, tmp_path):
    caption(png(str(tmp_path / "a.png")), "un caf\xe9 cr\xe8me".encode("latin-1"))
    caption(png(str(tmp_path / "b.png")), "good")
    caption(png(str(tmp_path / "c.png")), "also good")
    ds = fuzz(lambda: load_folder(str(tmp_path)), "handled",
              check=lambda d: [s.key for s in d.samples] == ["b.png", "c.png"])
    assert "UTF-8" in dict(ds.skipped)["a.png"]
    os.remove(tmp_path / "b.txt")
    os.remove(tmp_path / "c.txt")
    fuzz(lambda: load_folder(str(tmp_path)), "clear", match="UTF-8")
    caption(str(tmp_path / "a.png"), "utf16 no bom".encode("utf-16-le"))
    fuzz(lambda: load_folder(str(tmp_path)), "clear", match="UTF-16")


@pytest.mark.parametrize("ext,data,match", [
    (".jsonl", '{"image": "a.png", "text": "caf\xe9"}\n'.encode("latin-1"), "UTF-8"),
    (".csv", "image,text\na.png,caf\xe9\n".encode("cp1252"), "UTF-8"),
    (".jsonl", b"[1, 2]\n", "not a JSON object"),
    (".jsonl", b"{oops\n", "not valid JSON"),
    (".csv", b"file,caption\na.png,x\n", "'image' and 'text'"),
    (".csv", b'image,text\n"a.png,"unterminated\n', "no usable"),
    (".jsonl", b'{"image": ["a.png"], "text": "x"}\n', "no usable"),
    (".txt", b"a.png\tx\n", "neither"),
])
def test_malformed_manifests_are_clear_errors(fuzz, tmp_path, ext, data, match):
    png(str(tmp_path / "a.png"))
    path = tmp_path / f"m{ext}"
    path.write_bytes(data)
    fn = (lambda: load_manifest(str(path))) if ext != ".txt" else (lambda: load_dataset(str(path)))
    if ext == ".txt":  # a .txt next to nothing: load_dataset takes files as manifests; .txt isn't one
        fuzz(fn, "clear", match="jsonl")
    else:
        fuzz(fn, "clear", match=match)


def test_utf16_manifest_with_bom_is_read(fuzz, tmp_path):
    png(str(tmp_path / "a.png"))
    png(str(tmp_path / "b.png"))
    (tmp_path / "m.csv").write_bytes("image,text\na.png,un café\nb.png,кот\n".encode("utf-16"))
    fuzz(lambda: load_manifest(str(tmp_path / "m.csv")), "handled",
         check=lambda d: d.captions == [["un café"], ["кот"]])


# -- paths ---------------------------------------------------------------------------------------------------------
def test_symlink_loops_are_named_as_loops(fuzz, tmp_path):
    os.symlink(str(tmp_path / "loop"), str(tmp_path / "loop"))
    fuzz(lambda: load_dataset(str(tmp_path / "loop")), "clear", match="loop")
    fuzz(lambda: node_load(path=str(tmp_path / "loop")), "clear", match="loop")
    os.symlink(str(tmp_path / "nothing"), str(tmp_path / "dangling"))
    fuzz(lambda: load_folder(str(tmp_path / "dangling")), "clear", match="broken symbolic link")
    data = captioned_folder(str(tmp_path / "data"), n=3)
    os.symlink(data, os.path.join(data, "again"))  # a -> . inside the dataset
    os.symlink(os.path.join(data, "img00.png"), os.path.join(data, "selfref.png"))
    os.symlink(os.path.join(data, "zz.png"), os.path.join(data, "zz.png"))  # a file link loop
    caption(os.path.join(data, "zz.png"), "loop")
    ds = fuzz(lambda: load_folder(data), "handled", check=lambda d: len(d) == 3)
    assert "loop" in dict(ds.skipped)["zz.png"]


def test_is_changed_is_cheap_and_bounded(fuzz, tmp_path):
    data = captioned_folder(str(tmp_path / "data"), n=3)
    before = LiTDataset.IS_CHANGED(path=data)
    assert LiTDataset.IS_CHANGED(path=data) == before
    os.makedirs(os.path.join(data, ".lit_cache", "x"))  # caching embeddings is not a dataset change
    (tmp_path / "data" / ".lit_cache" / "x" / "shard.safetensors").write_bytes(b"x")
    assert LiTDataset.IS_CHANGED(path=data) == before
    caption(os.path.join(data, "img00.png"), "an edited caption that is longer")
    assert LiTDataset.IS_CHANGED(path=data) != before
    t0 = time.perf_counter()
    fuzz(lambda: LiTDataset.IS_CHANGED(path="/"), "handled", check=lambda s: isinstance(s, str))
    assert time.perf_counter() - t0 < 5.0
    for i in range(60):
        (tmp_path / "data" / f"n{i}.txt").write_text("x")
    assert len(dataset_signature(data, max_entries=20)) == 64  # stops early, still a signature


# -- shards --------------------------------------------------------------------------------------------------------
def test_truncated_shard_keeps_its_good_samples(fuzz, tmp_path):
    good = tar_shard(str(tmp_path / "a.tar"), 4)
    cut = truncate(tar_shard(str(tmp_path / "b.tar"), 6, start=10), 0.6)
    for use_wds in (True, False):
        ds = fuzz(lambda use_wds=use_wds: load_shards([good, cut], use_webdataset=use_wds), "handled",
                  check=lambda d: 4 < len(d) < 10)
        assert "b.tar" in ds.report()
        for i in range(len(ds)):  # every kept sample really decodes
            assert ds.load_image(i).shape == (64, 64, 3)


@pytest.mark.parametrize("payload", [b"", b"not a tar at all" * 50, os.urandom(2048)])
def test_non_tar_shards_are_clear_errors(fuzz, tmp_path, payload):
    (tmp_path / "x.tar").write_bytes(payload)
    fuzz(lambda: load_shards(str(tmp_path / "x.tar"), use_webdataset=False), "clear", match="x.tar")
    fuzz(lambda: load_shards(str(tmp_path / "x.tar")), "clear", match="x.tar")


def test_shard_with_latin1_caption_is_skipped_not_garbled(fuzz, tmp_path):
    import io
    import tarfile

    path = tar_shard(str(tmp_path / "a.tar"), 2)
    from PIL import Image

    with tarfile.open(path, "a") as tar:
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, "PNG")
        for name, payload in (("z.png", buf.getvalue()), ("z.txt", "caf\xe9".encode("latin-1"))):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    ds = fuzz(lambda: load_shards(path, use_webdataset=False), "handled", check=lambda d: len(d) == 2)
    assert "UTF-8" in dict(ds.skipped)["a.tar:z"]


# -- CLI -------------------------------------------------------------------------------------------------------------
def test_cli_train_reports_bad_data_clearly(fuzz, tmp_path, monkeypatch, capsys):
    from comfyui_lit import cli
    from comfyui_lit.cli import tuning as cli_tuning

    monkeypatch.setattr(cli_tuning, "towers", lambda args: (None, None))  # the data is checked, not the towers
    for i in range(2):
        (tmp_path / f"x{i}.png").write_bytes(b"junk")
        caption(str(tmp_path / f"x{i}.png"), "junk")
    os.symlink(str(tmp_path / "loop"), str(tmp_path / "loop"))
    for data, match in ((str(tmp_path), "could be read"), (str(tmp_path / "loop"), "loop")):
        code = fuzz(lambda data=data: cli.main(["train", data, "--out", str(tmp_path / "o.safetensors")]),
                    "handled", check=lambda rc: rc == 2)
        assert code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("kind,match", [
    ("bad_json", "not valid JSON"), ("latin1_csv", "UTF-8"), ("wrong_columns", "'image' and 'text'"),
    ("non_tar_shard", "x.tar"), ("bomb_only", "size limit"), ("empty_folder", "no"),
])
def test_bad_data_through_node_and_cli(fuzz, tmp_path, monkeypatch, capsys, kind, match):
    """The same bad data given to the LiT Dataset node (path) and to ``train`` (DATA or --shards)."""
    from comfyui_lit import cli
    from comfyui_lit.cli import tuning as cli_tuning

    monkeypatch.setattr(cli_tuning, "towers", lambda args: (None, None))  # the data is checked, not the towers
    png(str(tmp_path / "a.png"))
    if kind == "bad_json":
        data = tmp_path / "m.jsonl"
        data.write_bytes(b"{oops\n")
    elif kind == "latin1_csv":
        data = tmp_path / "m.csv"
        data.write_bytes("image,text\na.png,caf\xe9\n".encode("cp1252"))
    elif kind == "wrong_columns":
        data = tmp_path / "m.csv"
        data.write_bytes(b"file,caption\na.png,x\n")
    elif kind == "non_tar_shard":
        data = tmp_path / "x.tar"
        data.write_bytes(b"not a tar at all" * 50)
    elif kind == "bomb_only":
        data = tmp_path / "bombs"
        data.mkdir()
        caption(png_declaring(str(data / "bomb.png"), 12000, 12000), "a bomb")
    else:
        data = tmp_path / "empty"
        data.mkdir()
    argv = (["train", "--shards", str(data)] if kind == "non_tar_shard" else ["train", str(data)])
    if kind != "non_tar_shard":
        err = fuzz(lambda: node_load(path=str(data)), "clear", match=match)
        assert err.input_name == "path" and "LiT Dataset" in str(err)
    fuzz(lambda: cli.main([*argv, "--out", str(tmp_path / "o.safetensors")]), "handled", check=lambda rc: rc == 2)
    out = capsys.readouterr().err
    assert match.lower() in out.lower() and "Traceback" not in out and not os.path.exists(tmp_path / "o.safetensors")
