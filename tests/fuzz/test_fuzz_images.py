"""Fuzz: IMAGE and MASK inputs that are empty, non-finite, unconnected or the wrong size, through the zero-shot,
restoration and enhancement nodes (under inference mode), their engines and CLIs; strict JSON outputs; the
score-bar front-end on a payload of 160k scores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
from corpus import png

from comfyui_lit.models.retrieval import zero_shot as zs
from comfyui_lit.models.tuning.lit_model import LitModel, save_adapter
from comfyui_lit.nodes.enhancement import LiTApplyEnhancement, LiTEnhancementSampler
from comfyui_lit.nodes.restoration import LiTDegrade, LiTRestorationSampler
from comfyui_lit.nodes.zero_shot import LiTScore, LiTSelectImages, LiTZeroShotClassify

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def lit(lit_towers):
    return LitModel(*lit_towers, mode="head")


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def _bad(kind: str) -> torch.Tensor | None:
    img = torch.rand(2, 12, 12, 3)
    if kind == "nan":
        img[1, 3, 4, 0] = float("nan")
    elif kind == "inf":
        img[0, 0, 0, 2] = float("-inf")
    elif kind == "empty":
        img = torch.zeros(0, 12, 12, 3)
    elif kind == "none":
        img = None
    elif kind == "channels":
        img = torch.rand(2, 12, 12, 5)
    elif kind == "not_a_tensor":
        img = [[0.5]]
    return img


ZS_NODES = {
    "classify": lambda m, img: LiTZeroShotClassify().run(m, img, "red\nblue", "a photo of a {}.", 2),
    "score": lambda m, img: LiTScore().run(m, img, "a red thing\na blue thing"),
    "select": lambda m, img: LiTSelectImages().run(m, img, "a red thing", 1),
}
ZS_ENGINE = {
    "classify": lambda m, img: zs.classify(m, img, ["red", "blue"]),
    "score": lambda m, img: zs.score(m, img, ["a red thing"]),
    "select": lambda m, img: zs.rank(m, img, "a red thing", 1),
}


# -- issue 2 and 7: NaN and empty batches in Classify / Score / Select ------------------------------------------------
@pytest.mark.parametrize("node", sorted(ZS_NODES))
@pytest.mark.parametrize("kind,match", [("nan", "NaN"), ("inf", "NaN"), ("empty", "empty"),
                                        ("none", "nothing is connected"), ("channels", "C = "),
                                        ("not_a_tensor", "IMAGE")])
def test_zero_shot_nodes_and_engine_refuse_bad_batches(fuzz, lit, node, kind, match):
    with torch.inference_mode():
        fuzz(lambda: ZS_NODES[node](lit, _bad(kind)), "clear", match=match)
        if kind != "none" and kind != "not_a_tensor":
            fuzz(lambda: ZS_ENGINE[node](lit, _bad(kind)), "clear", match=match)


@pytest.mark.parametrize("node", sorted(ZS_NODES))
@pytest.mark.parametrize("obj,match", [(None, "nothing is connected"), ("a string", "LIT_MODEL")])
def test_zero_shot_nodes_without_a_model(fuzz, node, obj, match):
    with torch.inference_mode():
        fuzz(lambda: ZS_NODES[node](obj, torch.rand(1, 8, 8, 3)), "clear", match=match)


@pytest.mark.parametrize("node", sorted(ZS_NODES))
def test_a_model_gone_nan_is_refused_not_ranked(fuzz, lit_towers, node):
    model = LitModel(*lit_towers, mode="head")
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.fill_(float("nan"))
    with torch.inference_mode():
        fuzz(lambda: ZS_NODES[node](model, torch.rand(3, 8, 8, 3)), "clear", match="NaN")


@pytest.mark.parametrize("node", sorted(ZS_NODES))
@pytest.mark.parametrize("img", ["one_pixel", "unbatched", "alpha", "grey", "black"])
def test_odd_but_valid_images_are_handled(fuzz, lit, node, img):
    x = {"one_pixel": torch.rand(1, 1, 1, 3), "unbatched": torch.rand(9, 7, 3), "alpha": torch.rand(2, 9, 9, 4),
         "grey": torch.rand(2, 9, 9, 1), "black": torch.zeros(3, 9, 9, 3)}[img]
    with torch.inference_mode():
        out = fuzz(lambda: ZS_NODES[node](lit, x), "handled",
                   check=lambda o: o is not None)
    result = out["result"] if isinstance(out, dict) else out
    if node == "classify":
        probs = _strict(result[1])
        assert all(abs(sum(r["p"] for r in im) - 1) < 1e-4 for im in probs["images"])
        json.dumps(out["ui"]["lit_probs"], allow_nan=False)
    elif node == "score":
        scores = _strict(result[0])["scores"]
        assert all(-1.0001 <= v <= 1.0001 for row in scores for v in row)
        json.dumps(out["ui"]["lit_scores"], allow_nan=False)
    else:
        assert result[0].shape[0] == 1 and "nan" not in result[2].lower()


def test_select_top_k_larger_than_the_batch(fuzz, lit):
    with torch.inference_mode():
        fuzz(lambda: LiTSelectImages().run(lit, torch.rand(3, 8, 8, 3), "x", 4096), "handled",
             check=lambda o: o["result"][0].shape[0] == 3 and len(o["result"][1].split(",")) == 3)


# -- issue 11: the CLI skips an unreadable image instead of stopping ----------------------------------------------
@pytest.fixture()
def adapter(lit, tmp_path, monkeypatch, lit_towers):
    from comfyui_lit.cli import common as cli_common

    monkeypatch.setattr(cli_common, "towers", lambda args: lit_towers)
    return save_adapter(lit, str(tmp_path / "a.safetensors"))


@pytest.mark.parametrize("command", ["classify", "score"])
def test_cli_skips_unreadable_images(fuzz, adapter, tmp_path, capsys, command):
    from comfyui_lit import cli

    folder = tmp_path / "imgs"
    png(str(folder / "a.png"))
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    png(str(folder / "c.png"), (8, 8), (0, 0, 255))
    what = ["--labels", "red;blue"] if command == "classify" else ["--prompts", "a red thing;a blue thing"]
    fuzz(lambda: cli.main([command, str(folder), "--adapter", adapter, *what]), "handled", check=lambda rc: rc == 0)
    cap = capsys.readouterr()
    assert "a.png" in cap.out and "c.png" in cap.out and "b.png" in cap.err and "skipped" in cap.err
    assert "nan" not in cap.out.lower()
    for f in ("a.png", "c.png"):
        os.remove(folder / f)
    fuzz(lambda: cli.main([command, str(folder), "--adapter", adapter, *what]), "handled", check=lambda rc: rc == 1)
    assert "skipped" in capsys.readouterr().err


# -- issue 2 and 7: restoration and Degrade ---------------------------------------------------------------------------
def _restore(img, task="denoise", **kw):
    return LiTRestorationSampler().run(img, task, 10.0, steps=2, seed=0, strength=1.0, **kw)


@pytest.mark.parametrize("task", ["denoise", "inpaint", "upscale x2", "deblur (gaussian)", "jpeg artifacts"])
@pytest.mark.parametrize("kind,match", [("nan", "NaN"), ("inf", "NaN"), ("empty", "empty"),
                                        ("none", "nothing is connected")])
def test_restoration_refuses_bad_batches(fuzz, task, kind, match):
    img = _bad(kind)
    kw = {"mask": torch.zeros(2, 12, 12)} if task == "inpaint" else {}
    with torch.inference_mode():
        fuzz(lambda: _restore(img, task, **kw), "clear", match=match)


@pytest.mark.parametrize("kind,match", [("nan", "NaN"), ("empty", "empty"), ("none", "nothing is connected")])
def test_degrade_refuses_bad_batches(fuzz, kind, match):
    with torch.inference_mode():
        fuzz(lambda: LiTDegrade().run(_bad(kind), "noise", 10.0, seed=0), "clear", match=match)


def test_restoration_engine_refuses_nan_before_block_matching(fuzz):
    from comfyui_lit.models.restoration import degradations as D
    from comfyui_lit.models.restoration import denoisers as DN
    from comfyui_lit.models.restoration.sampler import restore

    y = torch.rand(1, 3, 16, 16)
    y[0, 1, 5, 5] = float("nan")
    fuzz(lambda: restore(D.Denoise(y, 0.1), DN.DCTDenoiser(block_matching=True)), "clear", match="NaN")


@pytest.mark.parametrize("mask,match", [(torch.zeros(2, 5, 5), "size"), (torch.full((2, 12, 12), float("nan")), "NaN")])
def test_restoration_refuses_a_bad_mask(fuzz, mask, match):
    with torch.inference_mode():
        fuzz(lambda: _restore(torch.rand(2, 12, 12, 3), "inpaint", mask=mask), "clear", match=match)


@pytest.fixture()
def restore_cli(capsys):
    from comfyui_lit import cli

    def run(argv):
        rc = cli.main(["restore", *argv, "--steps", "2"])
        cap = capsys.readouterr()
        return rc, cap.out + cap.err

    return run


def test_restore_cli_on_odd_files(fuzz, restore_cli, tmp_path):
    from corpus import png16_grey, png_declaring

    from comfyui_lit.models.data.dataset import MAX_PIXELS_ENV, read_image

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    rc, out = fuzz(lambda: restore_cli([str(broken), "--out", str(tmp_path / "o.png")]), "handled",
                   check=lambda r: r[0] == 2)
    assert "broken.png" in out and not os.path.exists(tmp_path / "o.png")
    bomb = png_declaring(str(tmp_path / "bomb.png"), 12000, 12000)
    rc, out = fuzz(lambda: restore_cli([bomb, "--out", str(tmp_path / "o.png")]), "handled",
                   check=lambda r: r[0] == 2)
    assert MAX_PIXELS_ENV in out
    grey = png16_grey(str(tmp_path / "g16.png"), 16384, size=(16, 16))  # a quarter grey, never "white"
    fuzz(lambda: restore_cli([grey, "--task", "deblur (gaussian)", "--out", str(tmp_path / "g.png")]), "handled",
         check=lambda r: r[0] == 0 and abs(float(read_image(str(tmp_path / "g.png")).mean()) - 0.25) < 0.03)
    fine = png(str(tmp_path / "fine.png"), (16, 16))
    fuzz(lambda: restore_cli([fine, "--out", str(tmp_path / "g.png")]), "handled", check=lambda r: r[0] == 2)
    png(str(tmp_path / "small_mask.png"), (4, 4), (255, 255, 255))
    rc, out = fuzz(lambda: restore_cli([fine, "--task", "inpaint", "--mask", str(tmp_path / "small_mask.png"),
                                        "--out", str(tmp_path / "m.png")]), "handled", check=lambda r: r[0] == 2)
    assert "mask" in out
    (tmp_path / "bad_mask.png").write_bytes(b"junk")
    rc, out = fuzz(lambda: restore_cli([fine, "--task", "inpaint", "--mask", str(tmp_path / "bad_mask.png"),
                                        "--out", str(tmp_path / "m.png")]), "handled", check=lambda r: r[0] == 2)
    assert "bad_mask.png" in out and "Traceback" not in out


# -- issue 11: Enhancement refuses a wrong-size mask like Restoration ------------------------------------------------
def _enhance(img, mask=None):
    return LiTEnhancementSampler().run(img, "", "", 1, 0.0, 1.0, 0, 1, mask=mask, proxy_size=32)


@pytest.mark.parametrize("mask,match", [(torch.ones(1, 6, 6), "mask"), (torch.ones(1, 24, 20), "mask"),
                                        (torch.full((1, 16, 16), float("nan")), "NaN")])
def test_enhancement_refuses_a_bad_mask(fuzz, mask, match):
    from comfyui_lit.models.enhancement.ops import EnhancementParams, apply_enhancement
    from comfyui_lit.models.enhancement.sampler import enhance

    img = torch.rand(1, 16, 16, 3)
    with torch.inference_mode():
        fuzz(lambda: _enhance(img, mask), "clear", match=match)
        grade = _enhance(img)["result"][1]
        fuzz(lambda: LiTApplyEnhancement().run(img, grade, mask=mask), "clear", match=match)
    fuzz(lambda: enhance(img, None, steps=1, samples=1, mask=mask, proxy_max_side=32), "clear", match=match)
    fuzz(lambda: apply_enhancement(img, EnhancementParams.identity(1), mask), "clear", match=match)


@pytest.mark.parametrize("kind,match", [("nan", "NaN"), ("empty", "empty"), ("none", "nothing is connected")])
def test_enhancement_refuses_bad_batches(fuzz, kind, match):
    with torch.inference_mode():
        fuzz(lambda: _enhance(_bad(kind)), "clear", match=match)


def test_enhancement_right_size_mask_is_handled(fuzz):
    img = torch.rand(1, 16, 16, 3)
    mask = torch.zeros(1, 16, 16)
    with torch.inference_mode():
        fuzz(lambda: _enhance(img, mask), "handled",
             check=lambda o: torch.allclose(o["result"][0], img, atol=1e-5))  # mask 0: nothing may change


# -- issue 10: the score bars on 16 images x 10k prompts -------------------------------------------------------------
_BARS = """
const { scoreRows, compactPayload } = await import(process.argv[2]);
let seed = 7;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1;
const data = { prompts: Array.from({ length: 10000 }, (_, i) => `p${i}`),
               scores: Array.from({ length: 16 }, () => Array.from({ length: 10000 }, rand)) };
const lay = scoreRows([data], { maxPrompts: 20 });
const saved = compactPayload("scores", [data]);
const again = scoreRows(JSON.parse(JSON.stringify(saved)), { maxPrompts: 20 });
console.log(JSON.stringify({ images: lay.images.length, rows: lay.images[0].rows.length,
  saved: JSON.stringify(saved).length, same: JSON.stringify(again) === JSON.stringify(lay) }));
"""


def test_score_bars_draw_160k_scores_and_reload(fuzz, tmp_path):
    node = os.environ.get("LIT_NODE") or shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.fail("node not found: install it (CI: apt-get install -y nodejs) or set $LIT_NODE.")
    script = tmp_path / "bars.mjs"
    script.write_text(_BARS)
    lib = "file://" + os.path.join(ROOT, "web", "js", "lib", "bars.js")

    def run():
        proc = subprocess.run([node, str(script), lib], capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-1000:])
        return json.loads(proc.stdout)

    fuzz(run, "handled", check=lambda r: r["images"] == 16 and r["rows"] == 20 and r["saved"] < 200_000 and r["same"])
