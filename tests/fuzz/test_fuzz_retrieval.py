"""Fuzz (our own cases): the folder-level retrieval jobs (tag, caption, search) on folders that lie, through the
nodes (under inference mode), the engine and the CLI: unreadable files, link loops, missing or empty folders, bad
in-graph batches, and a vocabulary file in another encoding."""

from __future__ import annotations

import os

import pytest
import torch
from corpus import png

from comfyui_lit.models.tuning.lit_model import LitModel, save_adapter
from comfyui_lit.nodes import retrieval as nodes


@pytest.fixture(scope="module")
def lit(lit_towers):
    return LitModel(*lit_towers, mode="head")


@pytest.fixture()
def messy(tmp_path):
    """Two good images, a broken one, a file-link loop, a folder link loop and a hidden cache folder."""
    root = tmp_path / "imgs"
    png(str(root / "a.png"), (20, 14), (250, 10, 10))
    png(str(root / "sub" / "b.png"), (9, 9), (10, 10, 250))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    os.symlink(str(root / "zz.png"), str(root / "zz.png"))
    os.symlink(str(root), str(root / "sub" / "up"))
    return str(root)


def _tag(model, folder="", image=None, write=False):
    return nodes.LiTTagImages().run(model, "red\nblue", nodes.NO_FILE, 0.5, 2, "auto", "", folder, write, False,
                                    ".txt", image=image)


def _caption(model, folder="", image=None):
    return nodes.LiTCaptionByRetrieval().run(model, "a photo of {tags};a photo", "red;blue", 0.5, 2, "", folder, False,
                                             False, ".txt", image=image)


def _search(model, folder, **kw):
    return nodes.LiTImageSearch().run(model, folder, "a red thing", "", 5, 0.5, 32, True, **kw)


@pytest.mark.parametrize("job", ["tag", "caption", "search"])
def test_a_messy_folder_is_indexed_with_its_bad_files_skipped(fuzz, lit, messy, job):
    run = {"tag": lambda: _tag(lit, messy), "caption": lambda: _caption(lit, messy),
           "search": lambda: _search(lit, messy)}[job]
    with torch.inference_mode():
        out = fuzz(run, "handled", check=lambda o: o is not None)
    result = out["result"]
    paths = (result[2] if job == "tag" else result[1] if job == "search" else
             "\n".join(p for p in out["ui"]["text"][0].splitlines()))
    names = {os.path.basename(p) for p in paths.splitlines() if p.endswith(".png")}
    if job != "caption":
        assert names == {"a.png", "b.png"}, paths
    if job == "search":
        assert result[0].shape == (2, 32, 32, 3) and bool(torch.isfinite(result[0]).all())
        assert "nan" not in result[2].lower()


@pytest.mark.parametrize("job", ["tag", "caption", "search"])
@pytest.mark.parametrize("where,match", [("missing", "not a folder"), ("loop", "loop"),
                                         ("empty", "no readable images")])
def test_folders_that_are_not_there(fuzz, lit, tmp_path, job, where, match):
    folder = tmp_path / where
    if where == "loop":
        os.symlink(str(folder), str(folder))
    elif where == "empty":
        folder.mkdir()
    run = {"tag": lambda: _tag(lit, str(folder)), "caption": lambda: _caption(lit, str(folder)),
           "search": lambda: _search(lit, str(folder))}[job]
    with torch.inference_mode():
        err = fuzz(run, "clear", match=match)
    assert err.input_name == "folder"


@pytest.mark.parametrize("job", ["tag", "caption"])
@pytest.mark.parametrize("kind,match", [("nan", "NaN"), ("empty", "empty"), ("channels", "C = ")])
def test_bad_in_graph_batches(fuzz, lit, job, kind, match):
    img = {"nan": torch.full((1, 6, 6, 3), float("nan")), "empty": torch.zeros(0, 6, 6, 3),
           "channels": torch.rand(1, 6, 6, 2)}[kind]
    with torch.inference_mode():
        fuzz(lambda: (_tag if job == "tag" else _caption)(lit, image=img), "clear", match=match)


def test_search_with_bad_example_images(fuzz, lit, messy):
    with torch.inference_mode():
        err = fuzz(lambda: _search(lit, messy, positive_images=torch.full((1, 6, 6, 3), float("nan"))), "clear",
                   match="NaN")
    assert err.input_name == "positive_images"


def test_write_captions_never_replaces_and_says_so(fuzz, lit, messy):
    with open(os.path.join(messy, "a.txt"), "w") as fh:
        fh.write("my own caption")
    with torch.inference_mode():
        out = fuzz(lambda: _tag(lit, messy, write=True), "handled", check=lambda o: o is not None)
    with open(os.path.join(messy, "a.txt")) as fh:
        assert fh.read() == "my own caption"  # kept, and the report lists it
    assert "a.txt" in out["ui"]["text"][0] or "kept" in out["ui"]["text"][0]
    assert os.path.isfile(os.path.join(messy, "sub", "b.txt"))


@pytest.mark.parametrize("command", ["tag", "caption", "search"])
def test_cli_jobs_on_a_messy_folder(fuzz, lit, lit_towers, messy, tmp_path, monkeypatch, capsys, command):
    from comfyui_lit import cli
    from comfyui_lit.cli import common as cli_common

    monkeypatch.setattr(cli_common, "towers", lambda args: lit_towers)
    adapter = save_adapter(lit, str(tmp_path / "a.safetensors"))
    extra = {"tag": ["--vocabulary", "red;blue"],
             "caption": ["--vocabulary", "red;blue", "--candidates", "a photo of {tags};a photo"],
             "search": ["--query", "a red thing"]}[command]
    fuzz(lambda: cli.main([command, messy, "--adapter", adapter, *extra]), "handled", check=lambda rc: rc == 0)
    cap = capsys.readouterr()
    assert "a.png" in cap.out and "Traceback" not in cap.err and "nan" not in cap.out.lower()
    fuzz(lambda: cli.main([command, str(tmp_path / "nowhere"), "--adapter", adapter, *extra]), "handled",
         check=lambda rc: rc == 2)
    assert "folder" in capsys.readouterr().err


def test_cli_vocabulary_file_in_latin1_is_refused(fuzz, lit, lit_towers, messy, tmp_path, monkeypatch, capsys):
    from comfyui_lit import cli
    from comfyui_lit.cli import common as cli_common

    monkeypatch.setattr(cli_common, "towers", lambda args: lit_towers)
    adapter = save_adapter(lit, str(tmp_path / "a.safetensors"))
    vocab = tmp_path / "v.txt"
    vocab.write_bytes("caf\xe9\nrouge\n".encode("latin-1"))
    fuzz(lambda: cli.main(["tag", messy, "--adapter", adapter, "--vocabulary-file", str(vocab)]), "handled",
         check=lambda rc: rc == 2)
    assert "UTF-8" in capsys.readouterr().err
