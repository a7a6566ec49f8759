"""Zero-shot nodes: classify, score and rank images with a LiT model (or any dual encoder wrapped the same way)."""

from __future__ import annotations

import json

import torch

from ..models.common.text import split_prompts
from ..models.common.validate import check_image_batch
from ..models.retrieval import spec
from ..models.retrieval.zero_shot import classify, rank, score
from .host import CATEGORY, check_interrupted, require_lit_model, with_node_errors

DEFAULT_TEMPLATES = "\n".join(spec.ZERO_SHOT_TEMPLATES)  # the same templates the CLI uses: one place, the spec
MAX_TABLE_IMAGES = 64  # the text table stays readable; JSON outputs always hold every image


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows])


class LiTZeroShotClassify:
    DISPLAY = "LiT Zero-Shot Classify"
    OUTPUT_NODE = True  # shows its bars in the graph even when nothing consumes its outputs
    DESCRIPTION = ("Picks the best label for each image among the labels you write, one per line, using prompt "
                   "templates averaged per label (prompt ensembling). No training needed beyond the LiT adapter.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("labels", "probabilities_json", "table")
    OUTPUT_TOOLTIPS = ("The best label of each image, one per line.",
                       "JSON: per image, every label with its probability, sorted.",
                       "A readable table of the top labels per image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lit_model": ("LIT_MODEL", {"tooltip": "A tuned LiT model."}),
            "image": ("IMAGE", {"tooltip": "Images to classify."}),
            "labels": ("STRING", {"multiline": True, "default": "cat\ndog\nbird",
                                  "tooltip": "Class names, one per line (or ';'-separated)."}),
            "templates": ("STRING", {"multiline": True, "default": DEFAULT_TEMPLATES,
                                     "tooltip": spec.TEMPLATES_TOOLTIP}),
            "top_k": ("INT", {"default": 3, "min": 1, "max": 100, "tooltip": "Labels shown per image in the table."}),
        }}

    @with_node_errors(DISPLAY)
    def run(self, lit_model, image: torch.Tensor, labels: str, templates: str, top_k: int = 3):
        require_lit_model(lit_model)
        names = split_prompts(labels, input_name="labels", fix="write one label per line (or ';'-separated).")
        check_interrupted()
        probs = classify(lit_model, image, names, templates).float().cpu()
        k = min(top_k, len(names))
        best, per_image, rows = [], [], []
        for i, p in enumerate(probs):
            vals, idx = p.sort(descending=True)
            ranked = [{"label": names[j], "p": round(float(v), 6)}
                      for v, j in zip(vals.tolist(), idx.tolist(), strict=True)]
            per_image.append(ranked)
            best.append(ranked[0]["label"])
            if i < MAX_TABLE_IMAGES:
                rows.append([str(i), *[f"{r['label']} {100 * r['p']:.1f}%" for r in ranked[:k]]])
        table = _table(rows, ["image", *[f"#{j + 1}" for j in range(k)]])
        data = {"labels": names, "images": per_image}
        return {"ui": {"text": [table], "lit_probs": [data]},
                "result": ("\n".join(best), json.dumps(data, allow_nan=False), table)}


class LiTScore:
    DISPLAY = "LiT Score"
    OUTPUT_NODE = True
    DESCRIPTION = "Similarity of every image to every prompt (cosine in the LiT space, -1..1)."
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("STRING", "STRING", "FLOAT")
    RETURN_NAMES = ("scores_json", "table", "first_score")
    OUTPUT_TOOLTIPS = ("JSON matrix: scores[image][prompt].", "A readable table.",
                       "Score of the first image for the first prompt (to drive other nodes).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lit_model": ("LIT_MODEL", {"tooltip": "A tuned LiT model."}),
            "image": ("IMAGE", {"tooltip": "Images to score."}),
            "prompts": ("STRING", {"multiline": True, "default": "a sharp, well-exposed photo\na blurry, dark photo",
                                   "tooltip": "Prompts, one per line (or ';'-separated)."}),
        }}

    @with_node_errors(DISPLAY)
    def run(self, lit_model, image: torch.Tensor, prompts: str):
        require_lit_model(lit_model)
        names = split_prompts(prompts, input_name="prompts", fix="write one prompt per line (or ';'-separated).")
        check_interrupted()
        sims = score(lit_model, image, names).float().cpu()
        rows = [[str(i), *[f"{v:+.3f}" for v in row.tolist()]] for i, row in enumerate(sims[:MAX_TABLE_IMAGES])]
        table = _table(rows, ["image", *names])
        data = {"prompts": names, "scores": [[round(v, 6) for v in row] for row in sims.tolist()]}
        return {"ui": {"text": [table], "lit_scores": [data]},
                "result": (json.dumps(data, allow_nan=False), table, float(sims[0, 0]))}


class LiTSelectImages:
    DISPLAY = "LiT Select Top Images"
    DESCRIPTION = ("Keeps the top-k images of a batch for a prompt, best first: filter or route generations by "
                   "what they show.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("images", "indices", "scores")
    OUTPUT_TOOLTIPS = ("The selected images, best first.", "Their positions in the input batch (comma-separated).",
                       "Their scores (comma-separated).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lit_model": ("LIT_MODEL", {"tooltip": "A tuned LiT model."}),
            "image": ("IMAGE", {"tooltip": "The batch to choose from."}),
            "prompt": ("STRING", {"multiline": True, "default": "a photo of a cat", "tooltip": "What to look for."}),
            "top_k": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "How many images to keep."}),
        }}

    @with_node_errors(DISPLAY)
    def run(self, lit_model, image: torch.Tensor, prompt: str, top_k: int = 1):
        require_lit_model(lit_model)
        image = check_image_batch(image)
        idx, vals = rank(lit_model, image, prompt, top_k)
        picked = image[idx.to(image.device)]
        shown = ", ".join(f"#{i}: {v:+.3f}" for i, v in zip(idx.tolist(), vals.tolist(), strict=True))
        return {"ui": {"text": [shown]},
                "result": (picked, ",".join(str(i) for i in idx.tolist()),
                           ",".join(f"{v:.6f}" for v in vals.tolist()))}


NODE_CLASS_MAPPINGS = {
    "LiTZeroShotClassify": LiTZeroShotClassify,
    "LiTScore": LiTScore,
    "LiTSelectImages": LiTSelectImages,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
