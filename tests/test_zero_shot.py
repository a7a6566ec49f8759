"""Zero-shot engine: prompt-template ensembling, classify / score / rank, on a fixed stand-in dual encoder
(duck-typed like LitModel) and on a real LitModel under inference mode."""

from __future__ import annotations

import pytest
import shapes_data as demo_data  # the shapes test fixture (tests/shapes_data.py)
import torch
import torch.nn.functional as F

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.retrieval import spec, zero_shot
from comfyui_lit.models.towers.text_tower import load_text_tower
from comfyui_lit.models.tuning.lit_model import LitModel

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class StandIn:
    """A fixed dual encoder: an image is its mean colour; a text is the sum of the colour words it contains
    plus a small template-specific offset (so template ensembling is observable)."""

    device = torch.device("cpu")
    logit_scale = torch.tensor(20.0)
    logit_bias = torch.tensor(0.0)

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images.mean(dim=(1, 2)), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        out = []
        for t in texts:
            v = sum((torch.tensor(c) for w, c in COLOURS.items() if w in t), torch.zeros(3))
            v = v + 0.2 * torch.tensor([len(t) % 3, len(t) % 5, len(t) % 7], dtype=torch.float32)
            out.append(v)
        return F.normalize(torch.stack(out), dim=-1)


def _solid(*rgb) -> torch.Tensor:
    return torch.stack([torch.tensor(c).expand(6, 6, 3) for c in rgb])


def test_classify_picks_the_right_label_and_rows_sum_to_one():
    model = StandIn()
    images = _solid((0.9, 0.1, 0.1), (0.1, 0.1, 0.8), (0.1, 0.7, 0.1))
    probs = zero_shot.classify(model, images, "red\ngreen\nblue\n", ["a photo of {}.", "a {} thing"])
    assert probs.shape == (3, 3)
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert probs.argmax(1).tolist() == [0, 2, 1]
    assert model.calls[-1] == ["a photo of red.", "a red thing", "a photo of green.", "a green thing",
                               "a photo of blue.", "a blue thing"]


def test_template_ensemble_is_renormalised_mean_of_normalised_prompts():
    model = StandIn()
    templates = ["a photo of {}.", "{}", "a picture showing something {} here"]
    got = zero_shot.label_embeddings(model, ["red", "blue"], templates)
    for i, label in enumerate(["red", "blue"]):
        single = model.encode_text([t.format(label) for t in templates])
        want = F.normalize(F.normalize(single, dim=-1).mean(0), dim=-1)
        assert torch.allclose(got[i], want, atol=1e-6)
        assert not torch.allclose(got[i], single[0], atol=1e-3)  # ensembling really changed something
    assert torch.allclose(got.norm(dim=-1), torch.ones(2))
    # no templates: the spec's (the same the nodes and the CLI default to)
    default = zero_shot.label_embeddings(model, ["red"], None)
    spec_ones = zero_shot.label_embeddings(model, ["red"], list(spec.ZERO_SHOT_TEMPLATES))
    assert torch.allclose(default, spec_ones)
    plain = zero_shot.label_embeddings(model, ["red"], "{}")
    assert torch.allclose(plain[0], model.encode_text(["red"])[0])


def test_templates_are_defined_once_for_nodes_and_cli():
    from comfyui_lit.cli import build_parser
    from comfyui_lit.nodes.zero_shot import LiTZeroShotClassify

    node_default = LiTZeroShotClassify.INPUT_TYPES()["required"]["templates"][1]["default"]
    cli_default = build_parser().parse_args(["classify", "x.png", "--adapter", "a", "--labels", "a"]).templates
    assert zero_shot.parse_templates(node_default) == zero_shot.parse_templates(cli_default) == list(
        spec.ZERO_SHOT_TEMPLATES)
    assert zero_shot.parse_templates(None) == list(spec.ZERO_SHOT_TEMPLATES)


def test_labels_split_on_lines_and_semicolons_never_commas():
    model = StandIn()
    probs = zero_shot.classify(model, _solid((0.9, 0.1, 0.1)), 'red, bright; "blue; deep"\ngreen', "{}")
    assert probs.shape == (1, 3)
    assert model.calls[-1] == ["red, bright", "blue; deep", "green"]


def test_score_and_rank():
    model = StandIn()
    images = _solid((0.9, 0.1, 0.1), (0.1, 0.1, 0.8), (0.8, 0.2, 0.1), (0.1, 0.7, 0.1))
    sims = zero_shot.score(model, images, ["red", "blue"])
    assert sims.shape == (4, 2) and float(sims.abs().max()) <= 1.0 + 1e-6
    want = model.encode_image(images) @ model.encode_text(["red", "blue"]).t()
    assert torch.allclose(sims, want)
    idx, vals = zero_shot.rank(model, images, "red", top_k=2)
    assert sorted(idx.tolist()) == [0, 2] and vals[0] >= vals[1]
    idx, vals = zero_shot.rank(model, images, "blue", top_k=10)
    assert len(idx) == 4 and idx[0] == 1
    assert torch.all(vals[:-1] >= vals[1:])


def test_bad_inputs_raise_lit_error():
    model = StandIn()
    images = _solid((1.0, 0.0, 0.0))
    with pytest.raises(LitError, match="no '\\{\\}'") as err:
        zero_shot.classify(model, images, ["red"], ["a photo of a cat"])
    assert err.value.input_name == "templates"
    with pytest.raises(LitError, match="no labels"):
        zero_shot.classify(model, images, "\n  \n")
    with pytest.raises(LitError, match="no prompts"):
        zero_shot.score(model, images, [])
    with pytest.raises(LitError, match="top_k"):
        zero_shot.rank(model, images, "red", 0)
    with pytest.raises(LitError, match="empty"):
        zero_shot.rank(model, images, "  ", 1)
    with pytest.raises(LitError, match="IMAGE"):
        zero_shot.score(model, torch.rand(2, 3), ["red"])


def test_real_lit_model_under_inference_mode():
    with torch.inference_mode():
        model = LitModel(demo_data.tiny_shapes_tower(), load_text_tower(), mode="head")
        images, _, _ = demo_data.synthetic_shapes(5, seed=7)
        probs = zero_shot.classify(model, images, ["red circle", "blue square"], ["a {}"])
        sims = zero_shot.score(model, images, ["a red circle", "a blue square", "a green triangle"])
        idx, vals = zero_shot.rank(model, images, "a red circle", 3)
    assert probs.shape == (5, 2) and torch.allclose(probs.sum(1), torch.ones(5))
    assert sims.shape == (5, 3) and torch.equal(idx, sims[:, 0].topk(3).indices)
    logits = model.logits(images, ["a red circle"])
    img = model.encode_image(images)
    cos = (img @ model.encode_text(["a red circle"]).t())[:, 0]
    assert torch.allclose(logits[:, 0], model.logit_scale.detach() * cos)
