"""Tagging, caption by retrieval and folder search, on a fixed dual encoder whose answers are known
(tests/retrieval_fixtures.py), through engine, nodes and CLI; plus the incremental index and bad inputs."""

from __future__ import annotations

import json
import os

import pytest
import torch
from retrieval_fixtures import ColourModel, solid, write_png

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.retrieval.captioning import caption_images, fill_templates
from comfyui_lit.models.retrieval.folder_jobs import caption_folder, search_folder, tag_folder
from comfyui_lit.models.retrieval.search import SearchIndex, build_query
from comfyui_lit.models.retrieval.tagging import Tagger, parse_vocabulary, write_text_file
from comfyui_lit.models.retrieval.zero_shot import image_embeddings

RED, GREEN, BLUE, MAGENTA, GREY = (0.9, 0.05, 0.05), (0.05, 0.9, 0.05), (0.05, 0.05, 0.9), (0.8, 0.05, 0.8), \
    (0.5, 0.5, 0.5)


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "photos"
    for name, rgb in [("red1", RED), ("red2", (0.8, 0.2, 0.1)), ("green1", GREEN), ("blue1", BLUE),
                      ("magenta1", MAGENTA), ("sub/blue2", (0.1, 0.2, 0.8))]:
        write_png(str(d / f"{name}.png"), rgb)
    return str(d)


def test_calibrated_tags_are_multi_label_and_threshold_means_something():
    model = ColourModel()
    tagger = Tagger(model, "red\ngreen\nblue")
    img = image_embeddings(model, solid(RED, MAGENTA, GREY))
    probs = tagger.probabilities(img)
    # red image: red above the generic background, the others far below; magenta: both red and blue
    assert probs[0, 0] > 0.9 and probs[0, 1] < 0.1 and probs[0, 2] < 0.1
    assert probs[1, 0] > 0.5 and probs[1, 2] > 0.5 and probs[1, 1] < 0.1
    # a grey image matches the generic background best: no tag passes 0.5, whatever the raw cosine (0.58)
    assert float(probs[2].max()) < 0.5
    assert float((img[2] @ tagger.tag_emb.t()).max()) > 0.5
    res = tagger.tag(img, threshold=0.5, top_k=5)
    assert res.strings() == ["red", "blue, red", ""] or res.strings() == ["red", "red, blue", ""]
    assert res.strings(prefix="mychar, style")[0] == "mychar, style, red"
    assert [len(r) for r in tagger.tag(img, threshold=0.5, top_k=1).tags] == [1, 1, 0]
    assert [len(r) for r in tagger.tag(img, threshold=0.99, top_k=3, min_tags=1).tags] == [1, 1, 1]
    _strict_json(json.dumps(res.as_json(), allow_nan=False))


def test_sigmoid_calibration_uses_the_models_bias():
    model = ColourModel(loss_name="sigmoid", scale=10.0, bias=-5.0)
    tagger = Tagger(model, ["red", "blue"])
    assert tagger.calibration == "sigmoid"
    img = image_embeddings(model, solid(RED))
    want = torch.sigmoid(10.0 * (img @ tagger.tag_emb.t()) - 5.0)
    assert torch.allclose(tagger.probabilities(img), want)
    assert Tagger(model, ["red"], calibration="background").calibration == "background"
    with pytest.raises(LitError, match="calibration"):
        Tagger(model, ["red"], calibration="platt")


def test_vocabulary_parsing():
    assert parse_vocabulary("dog\n# animals\ncat; Dog\n\"black; white\"\nred car, parked") == [
        "dog", "cat", "black; white", "red car, parked"]
    with pytest.raises(LitError, match="empty") as err:
        parse_vocabulary(" \n# only a comment")
    assert err.value.input_name == "vocabulary"


def test_caption_files_never_overwrite_without_the_switch(tmp_path):
    path = str(tmp_path / "a.txt")
    assert write_text_file(path, "first")
    assert not write_text_file(path, "second")
    assert open(path, encoding="utf-8").read() == "first\n"
    assert write_text_file(path, "third", overwrite=True)
    assert open(path, encoding="utf-8").read() == "third\n"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]  # no temp file left behind


def test_tag_folder_writes_lora_caption_files(folder):
    model = ColourModel()
    open(os.path.join(folder, "red2.txt"), "w").write("hand-written caption\n")
    res = tag_folder(model, folder, "red;green;blue", prefix="trigger", write=True)
    names = [os.path.relpath(p, folder) for p in res.paths]
    assert names == ["blue1.png", "green1.png", "magenta1.png", "red1.png", "red2.png",
                     os.path.join("sub", "blue2.png")]
    by_name = dict(zip(names, res.lines, strict=True))
    assert by_name["red1.png"] == "trigger, red" and by_name["green1.png"] == "trigger, green"
    assert set(by_name["magenta1.png"].split(", ")) == {"trigger", "red", "blue"}
    assert open(os.path.join(folder, "red1.txt")).read() == "trigger, red\n"
    assert open(os.path.join(folder, "sub", "blue2.txt")).read() == "trigger, blue\n"
    assert open(os.path.join(folder, "red2.txt")).read() == "hand-written caption\n"  # kept
    assert res.kept == [os.path.join(folder, "red2.txt")] and len(res.written) == 5
    again = tag_folder(model, folder, "red;green;blue", write=True, overwrite=True)
    assert open(os.path.join(folder, "red2.txt")).read() == "red\n" and not again.kept
    assert "0 added" in again.report and "6 unchanged" in again.report  # the index was reused


def test_caption_by_retrieval_fills_templates_with_the_images_tags(folder):
    assert fill_templates(["a photo of {tags}"], ["red", "blue"]) == ["a photo of red", "a photo of red, blue"]
    model = ColourModel()
    img = image_embeddings(model, solid(RED, MAGENTA, GREEN))
    best = caption_images(model, img, "a green field\na red wall\na photo of {tags}",
                          [["red"], ["red", "blue"], []])
    assert [c for c, _ in best] == ["a red wall", "a photo of red, blue", "a green field"]
    assert all(-1 <= s <= 1 for _, s in best)
    with pytest.raises(LitError, match="needs tags"):
        caption_images(model, img, "a photo of {tags}")
    with pytest.raises(LitError, match="no candidate caption"):
        caption_images(model, img[:1], "a photo of {tags}", [[]])
    res = caption_folder(model, folder, "a photo of {tags}.", vocabulary="red; green; blue", write=True,
                         extension=".caption")
    assert res.lines[res.paths.index(os.path.join(folder, "green1.png"))] == "a photo of green."
    assert open(os.path.join(folder, "green1.caption")).read() == "a photo of green.\n"


def test_search_by_text_images_and_negatives(folder):
    model = ColourModel()
    paths, scores, _ = search_folder(model, folder, positive="a red thing", top_k=3)
    assert {os.path.basename(p) for p in paths[:2]} == {"red1.png", "red2.png"}
    assert scores == sorted(scores, reverse=True)
    paths, _, _ = search_folder(model, folder, positive="red; blue", top_k=1)
    assert os.path.basename(paths[0]) == "magenta1.png"  # the mean of both prompts
    paths, _, _ = search_folder(model, folder, positive="red", negative="blue", negative_weight=1.0, top_k=6)
    assert paths.index(os.path.join(folder, "magenta1.png")) > paths.index(os.path.join(folder, "red2.png"))
    paths, _, _ = search_folder(model, folder, positive_images=solid(GREEN), top_k=1)
    assert os.path.basename(paths[0]) == "green1.png"
    with pytest.raises(LitError, match="nothing to search"):
        build_query(model, negative="blue")
    with pytest.raises(LitError, match="NaN|infinite"):
        build_query(model, positive_images=solid(RED) * float("nan"))


def test_index_is_incremental_and_persistent(folder, tmp_path):
    model = ColourModel()
    index = SearchIndex(folder, model.image_tower)
    first = index.update()
    assert (first.added, first.changed, first.removed, first.unchanged) == (6, 0, 0, 0) and first.forwards >= 1
    assert index.embeddings.dtype == torch.float16 and torch.allclose(
        index.embeddings.float().norm(dim=-1), torch.ones(6), atol=1e-3)
    assert os.path.isfile(index.path) and os.path.dirname(index.path) == index.cache.dir  # beside the cache

    fresh = SearchIndex(folder, model.image_tower)  # a new session reads the saved index: no forward
    rep = fresh.update()
    assert (rep.added, rep.unchanged, rep.forwards) == (0, 6, 0)

    write_png(os.path.join(folder, "green2.png"), (0.1, 0.8, 0.2))
    write_png(os.path.join(folder, "red1.png"), (0.05, 0.9, 0.05), size=14)  # now green, new size and mtime
    os.remove(os.path.join(folder, "blue1.png"))
    rep = fresh.update()
    assert (rep.added, rep.changed, rep.removed, rep.unchanged) == (1, 1, 1, 4)
    assert rep.forwards == 1 and fresh.cache.stats["images_encoded"] == 2  # only the two new contents
    assert "blue1.png" not in fresh.paths and "green2.png" in fresh.paths
    greens = [fresh.paths[i] for i in fresh.top_k(build_query(model, positive="green"), 3)[0]]
    assert set(greens) == {"green1.png", "green2.png", "red1.png"}

    with open(fresh.path, "r+b") as fh:  # a damaged index is rebuilt from the embedding cache, no forward
        fh.seek(20)
        fh.write(b"\xff" * 64)
    rebuilt = SearchIndex(folder, model.image_tower)
    rep = rebuilt.update()
    assert rep.added == 6 and rep.forwards == 0 and rebuilt.paths == fresh.paths


def test_unreadable_files_and_symlink_loops_do_not_stop_the_index(folder):
    with open(os.path.join(folder, "broken.png"), "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\nnot really")
    os.symlink(folder, os.path.join(folder, "loop"))
    index = SearchIndex(folder, ColourModel().image_tower)
    rep = index.update()
    assert len(index) == 6 and [n for n, _ in rep.unreadable] == ["broken.png"] and "unreadable" in str(rep)
    empty = os.path.join(folder, "sub", "empty")
    os.makedirs(empty)
    with pytest.raises(LitError, match="no readable images"):
        search_folder(ColourModel(), empty, positive="red")


def test_nan_and_empty_batches_are_clear_errors_in_every_zero_shot_node():
    from comfyui_lit.nodes.retrieval import LiTCaptionByRetrieval, LiTTagImages
    from comfyui_lit.nodes.zero_shot import LiTScore, LiTSelectImages, LiTZeroShotClassify

    model = ColourModel()
    bad = solid(RED, BLUE)
    bad[1, 2, 3, 0] = float("nan")
    calls = [lambda im: LiTZeroShotClassify().run(model, im, "red\nblue", "{}", 2),
             lambda im: LiTScore().run(model, im, "red"),
             lambda im: LiTSelectImages().run(model, im, "red", 1),
             lambda im: LiTTagImages().run(model, "red", "(none: use the text above)", 0.5, 3, "auto", "", "",
                                           False, False, ".txt", image=im),
             lambda im: LiTCaptionByRetrieval().run(model, "a red thing", "red", 0.5, 3, "", "", False, False,
                                                    ".txt", image=im)]
    with torch.inference_mode():
        for call in calls:
            with pytest.raises(LitError, match="NaN") as err:
                call(bad)
            assert err.value.input_name == "image" and err.value.node
            with pytest.raises(LitError, match="empty") as err:
                call(torch.zeros(0, 6, 6, 3))
            assert err.value.input_name == "image"
        model.nan_text = True  # a broken adapter: NaN embeddings are refused, never 'nan%' or NaN-ranked
        with pytest.raises(LitError, match="NaN"):
            calls[0](solid(RED))
        with pytest.raises(LitError, match="NaN"):
            calls[2](solid(RED, BLUE))


def test_zero_shot_json_outputs_are_strict_json():
    from comfyui_lit.nodes.zero_shot import LiTScore, LiTZeroShotClassify

    model = ColourModel()
    with torch.inference_mode():
        _, probs_json, table = LiTZeroShotClassify().run(model, solid(RED, BLUE), "red; a blue, dark thing",
                                                         "{}", 2)["result"]
        scores_json, _, _ = LiTScore().run(model, solid(RED), "red\na blue, dark thing")["result"]
    assert _strict_json(probs_json)["labels"] == ["red", "a blue, dark thing"]
    assert _strict_json(scores_json)["prompts"] == ["red", "a blue, dark thing"]
    assert "a blue, dark thing" in table


def test_nodes_tag_caption_and_search_a_folder(folder, monkeypatch):
    from comfyui_lit.nodes import retrieval as nodes

    model = ColourModel()
    with torch.inference_mode():
        out = nodes.LiTTagImages().run(model, "red\ngreen\nblue", nodes.NO_FILE, 0.5, 4, "auto", "lora", folder,
                                       True, False, ".txt", image=solid(GREEN))
        tags, tags_json, paths = out["result"]
        assert tags.splitlines()[-1] == "lora, green" and len(tags.splitlines()) == 7
        assert len(paths.splitlines()) == 6 and os.path.isfile(os.path.join(folder, "magenta1.txt"))
        assert len(_strict_json(tags_json)["images"]) == 7 and "wrote 6 caption file(s)" in out["ui"]["text"][0]

        caps, scores, _ = nodes.LiTCaptionByRetrieval().run(
            model, "a photo of {tags}", "", 0.5, 3, "", "", False, False, ".txt", image=solid(RED, BLUE),
            tags="red\nblue")["result"]
        assert caps.splitlines() == ["a photo of red", "a photo of blue"] and len(scores.splitlines()) == 2

        images, found, scores = nodes.LiTImageSearch().run(model, folder, "blue", "", 2, 0.5, 64, True)["result"]
        assert images.shape == (2, 64, 64, 3) and images.dtype == torch.float32
        assert {os.path.basename(p) for p in found.splitlines()} == {"blue1.png", "blue2.png"}
        assert float(images[0, 32, 32, 2]) > 0.7  # the blue image itself, letterboxed

        with pytest.raises(LitError, match="needs a folder"):
            nodes.LiTTagImages().run(model, "red", nodes.NO_FILE, 0.5, 4, "auto", "", "", True, False, ".txt",
                                     image=solid(RED))
        with pytest.raises(LitError, match="not a folder"):
            nodes.LiTImageSearch().run(model, folder + "/nope", "blue", "", 2, 0.5, 64, True)

    lit_dir = os.path.join(os.path.dirname(folder), "models", "lit")
    os.makedirs(lit_dir)
    with open(os.path.join(lit_dir, "tags.txt"), "w", encoding="utf-8") as fh:
        fh.write("# my vocabulary\ngreen\nblue\n")
    monkeypatch.setenv("COMFYUI_LIT_MODELS", os.path.join(os.path.dirname(folder), "models"))
    assert nodes.vocabulary_files() == [nodes.NO_FILE, "tags.txt"]
    with torch.inference_mode():
        tags = nodes.LiTTagImages().run(model, "red", "tags.txt", 0.5, 4, "auto", "", "", False, False, ".txt",
                                        image=solid(RED, BLUE))["result"][0]
    assert tags.splitlines() == ["", "blue"]  # red is not in the file's vocabulary


def test_cli_tag_caption_search_score_classify(folder, monkeypatch, capsys):
    from comfyui_lit import cli
    from comfyui_lit.cli import retrieval as cli_retrieval
    from comfyui_lit.cli import zero_shot as cli_zero_shot

    model = ColourModel()
    monkeypatch.setattr(cli_retrieval, "loaded_model", lambda args: model)
    monkeypatch.setattr(cli_zero_shot, "loaded_model", lambda args: model)
    assert cli.main(["tag", folder, "--adapter", "x", "--vocabulary", "red; green; blue", "--write"]) == 0
    out = capsys.readouterr()
    assert "red1.png: red" in out.out and "wrote 6 caption file(s)" in out.err
    assert cli.main(["tag", folder, "--adapter", "x", "--vocabulary", "blue", "--write"]) == 0
    assert "kept 6 existing" in capsys.readouterr().err and open(os.path.join(folder, "red1.txt")).read() == "red\n"

    assert cli.main(["caption", folder, "--adapter", "x", "--candidates", "a photo of {tags}", "--vocabulary",
                     "red;green;blue", "--extension", ".caption", "--write"]) == 0
    assert open(os.path.join(folder, "green1.caption")).read() == "a photo of green\n"
    capsys.readouterr()
    assert cli.main(["search", folder, "--adapter", "x", "--query", "green", "-k", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("green1.png")

    with open(os.path.join(folder, "zz_broken.png"), "wb") as fh:
        fh.write(b"not an image")
    calls = model.text_calls
    assert cli.main(["classify", folder, "--adapter", "x", "--labels", "red; a blue, dark thing",
                     "--templates", "{}"]) == 0
    out = capsys.readouterr()
    assert "warning: skipped" in out.err and "zz_broken.png" in out.err
    assert "red1.png: red" in out.out and "summary: 5 image(s) classified, 1 skipped" in out.out
    assert "blue1.png: a blue, dark thing 100.0%" in out.out  # the comma stayed inside the label
    assert "  a blue, dark thing: 1 (20%)" in out.out
    assert model.text_calls == calls + 1  # the labels are encoded once for all images
    calls = model.text_calls
    assert cli.main(["score", folder, "--adapter", "x", "--prompts", "a red photo taken on a sunny day; blue"]) == 0
    out = capsys.readouterr().out
    assert "a red photo taken on a sunny day" in out.splitlines()[0]  # the header is not cut
    assert model.text_calls == calls + 1  # prompts encoded once for all images


def test_tag_and_search_templates_run_end_to_end(tmp_path, monkeypatch):
    """The two example workflows, executed with the real loaders (embedded towers) and a saved adapter, on a folder
    named as in the templates."""
    from test_workflows import _load, _run_graph

    from comfyui_lit.models.towers.image_tower import load_image_tower
    from comfyui_lit.models.towers.text_tower import load_text_tower
    from comfyui_lit.models.tuning.lit_model import LitModel, save_adapter

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv("COMFYUI_LIT_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    with torch.inference_mode():
        model = LitModel(load_image_tower(), load_text_tower(), mode="head")
    save_adapter(model, str(tmp_path / "models" / "lit" / "my_lit_adapter.safetensors"))
    for name, rgb in [("a", RED), ("b", GREEN), ("c", BLUE)]:
        write_png(str(tmp_path / "lit_dataset" / f"{name}.png"), rgb, size=40)
    open(tmp_path / "lit_dataset" / "c.txt", "w").write("my own caption\n")
    shown = []
    core = {"PreviewAny": lambda source: shown.append(source) or (),
            "PreviewImage": lambda images: shown.append(images) or ()}
    _run_graph(_load(os.path.join(root, "example_workflows", "lit_tag_folder.json")), core)
    lines = shown[0].splitlines()
    assert len(lines) == 3 and all(line.startswith("mylora") for line in lines)
    assert open(tmp_path / "lit_dataset" / "a.txt").read().startswith("mylora")
    assert open(tmp_path / "lit_dataset" / "c.txt").read() == "my own caption\n"  # overwrite is off
    _run_graph(_load(os.path.join(root, "example_workflows", "lit_search_folder.json")), core)
    images, paths = shown[1], shown[2]
    assert images.shape == (3, 512, 512, 3) and len(paths.splitlines()) == 3
    for name in ("lit_tag_folder", "lit_search_folder"):
        assert os.path.isfile(os.path.join(root, "example_workflows", name + ".jpg"))
