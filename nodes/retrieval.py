"""Tag, caption and search nodes: the everyday jobs of a tuned LiT model (preparing LoRA training sets, sorting
an output folder). Thin wrappers over ``models/retrieval``; defaults and tooltips come from its spec."""

from __future__ import annotations

import json
import math
import os

import torch

from ..models.common.errors import LitError
from ..models.retrieval import spec
from ..models.retrieval.captioning import caption_images
from ..models.retrieval.folder_jobs import caption_folder, search_folder, tag_folder
from ..models.retrieval.search import load_letterboxed
from ..models.retrieval.tagging import Tagger, parse_vocabulary, read_vocabulary_file
from ..models.retrieval.zero_shot import image_embeddings
from .host import (
    CATEGORY,
    LIT_FOLDER,
    check_interrupted,
    embedding_progress,
    folder_dirs,
    input_directory,
    require_lit_model,
    with_node_errors,
)

NO_FILE = "(none: use the text above)"
DEFAULT_VOCABULARY = "person\ndog\ncat\ncar\ntree\nwater\nsky\nbuilding\nflower\nfood"
EXTENSIONS = [".txt", ".caption"]


def _num(p: spec.Param, kind: str = "FLOAT", **extra) -> tuple:
    cast = float if kind == "FLOAT" else int
    opts = {"default": cast(p.default), "min": cast(p.min), "max": cast(p.max), "step": cast(p.step),
            "tooltip": p.tooltip}
    opts.update(extra)
    return (kind, opts)


def vocabulary_files() -> list[str]:
    """``.txt`` files in the ``models/lit`` folder(s), top level only (a symlink loop cannot hang the list)."""
    names = set()
    for root in folder_dirs(LIT_FOLDER):
        try:
            names.update(f for f in os.listdir(root) if f.lower().endswith(".txt") and not f.startswith("."))
        except OSError:
            continue
    return [NO_FILE, *sorted(names)]


def _vocabulary(text: str, file: str) -> list[str]:
    if file and file != NO_FILE:
        for root in folder_dirs(LIT_FOLDER):
            path = os.path.join(root, os.path.basename(file))
            if os.path.isfile(path):
                return read_vocabulary_file(path)
        raise LitError(f"vocabulary file '{file}' was not found in models/{LIT_FOLDER}.", input_name="vocabulary_file",
                       fix="put the .txt file in models/lit and refresh the page (press 'r').")
    return parse_vocabulary(text)


def _folder(path: str) -> str:
    path = os.path.expanduser(str(path).strip().strip('"'))
    if path and not os.path.isabs(path):
        base = input_directory()
        if base and os.path.isdir(os.path.join(base, path)):
            return os.path.join(base, path)
    return path


def _finite(x: float) -> float:
    return round(float(x), 6) if math.isfinite(float(x)) else 0.0


FOLDER_TOOLTIP = ("A folder of images to work on instead of (or as well as) the image input: absolute, or relative "
                  "to ComfyUI's input folder. Its embeddings are cached in <folder>/.lit_cache (shared with search).")


class LiTTagImages:
    DISPLAY = "LiT Tag Images"
    OUTPUT_NODE = True
    DESCRIPTION = ("Multi-label tags for each image from your own vocabulary, with calibrated probabilities (so the "
                   "threshold means the same on every image). Gives one comma-separated line per image - the caption "
                   "format LoRA trainers read - and can write same-name .txt files beside the images of a folder.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("tags", "tags_json", "paths")
    OUTPUT_TOOLTIPS = ("One comma-separated tag line per image (folder images first, then the image input).",
                       "JSON: per image, its kept tags with their probabilities.",
                       "The folder images' paths, one per line, in the same order as the tag lines.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lit_model": ("LIT_MODEL", {"tooltip": "A tuned LiT model."}),
            "vocabulary": ("STRING", {"multiline": True, "default": DEFAULT_VOCABULARY,
                                      "tooltip": "The tags to choose from, one per line (or ';'-separated)."}),
            "vocabulary_file": (vocabulary_files(), {"tooltip": "Or a .txt vocabulary in models/lit (one tag per "
                                                                "line); it replaces the text above."}),
            "threshold": _num(spec.TAG_THRESHOLD),
            "top_k": _num(spec.TAG_TOP_K, "INT"),
            "calibration": (list(spec.CALIBRATIONS), {"default": "auto", "tooltip": spec.CALIBRATION_TOOLTIP}),
            "prefix": ("STRING", {"default": "", "tooltip": "Tags put first on every line, e.g. a LoRA trigger word "
                                                            "(comma-separated)."}),
            "folder": ("STRING", {"default": "", "tooltip": FOLDER_TOOLTIP}),
            "write_captions": ("BOOLEAN", {"default": False, "tooltip": "Write each folder image's tags to a "
                                                                        "same-name caption file beside it."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace caption files that already exist "
                                                                   "(off: they are kept and listed)."}),
            "caption_extension": (EXTENSIONS, {"tooltip": "The caption file's extension (.txt for kohya/"
                                                          "OneTrainer/ai-toolkit)."}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "Images to tag (optional when a folder is given)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, folder="", **_):
        # A folder's files change outside the graph; the index update is incremental, so re-running is cheap.
        return float("nan") if str(folder).strip() else ""

    @with_node_errors(DISPLAY)
    def run(self, lit_model, vocabulary: str, vocabulary_file: str, threshold: float, top_k: int,
            calibration: str, prefix: str, folder: str, write_captions: bool, overwrite: bool,
            caption_extension: str = ".txt", image: torch.Tensor | None = None):
        require_lit_model(lit_model)
        vocab = _vocabulary(vocabulary, vocabulary_file)
        folder = _folder(folder)
        if not folder and image is None:
            raise LitError("nothing to tag.", input_name="image", fix="connect images, or give a folder.")
        if write_captions and not folder:
            raise LitError("write_captions needs a folder (images from the graph have no file to sit beside).",
                           input_name="folder", fix="give the folder of the images, or turn write_captions off.")
        lines, rows, paths, summary = [], [], [], []
        if folder:
            res = tag_folder(lit_model, folder, vocab, threshold=threshold, top_k=top_k, calibration=calibration,
                             prefix=prefix, write=write_captions, overwrite=overwrite, extension=caption_extension,
                             progress=embedding_progress("LiT index"))
            lines += res.lines
            rows += res.tags.as_json()["images"]
            paths = res.paths
            summary.append(res.summary("tagged"))
        if image is not None:
            check_interrupted()
            result = Tagger(lit_model, vocab, calibration=calibration).tag(
                image_embeddings(lit_model, image), threshold=threshold, top_k=top_k)
            lines += result.strings(prefix=prefix)
            rows += result.as_json()["images"]
            summary.append(f"tagged {len(result.tags)} image(s) from the graph")
        names = [os.path.basename(p) for p in paths] + [f"#{i}" for i in range(len(lines) - len(paths))]
        shown = "\n".join(summary + [f"{n}: {t}" for n, t in zip(names, lines, strict=True)][:200])
        data = {"vocabulary": vocab, "images": rows, "paths": paths}
        return {"ui": {"text": [shown]}, "result": ("\n".join(lines), json.dumps(data, allow_nan=False),
                                                    "\n".join(paths))}


class LiTCaptionByRetrieval:
    DISPLAY = "LiT Caption by Retrieval"
    OUTPUT_NODE = True
    DESCRIPTION = ("The best caption for each image among your candidates. A candidate with '{tags}' is a template "
                   "filled with the image's own best tags ('a photo of {tags}' -> 'a photo of dog, grass'), from the "
                   "tags input or, when that is not connected, from the vocabulary here.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("captions", "scores", "paths")
    OUTPUT_TOOLTIPS = ("One caption per image (folder images first, then the image input).",
                       "Each caption's cosine with its image, one per line.",
                       "The folder images' paths, one per line.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lit_model": ("LIT_MODEL", {"tooltip": "A tuned LiT model."}),
            "candidates": ("STRING", {"multiline": True, "default": "\n".join(spec.CAPTION_TEMPLATES),
                                      "tooltip": spec.CAPTION_TOOLTIP}),
            "vocabulary": ("STRING", {"multiline": True, "default": DEFAULT_VOCABULARY,
                                      "tooltip": "Tags for '{tags}' templates when the tags input is not connected."}),
            "threshold": _num(spec.TAG_THRESHOLD),
            "top_k": _num(spec.TAG_TOP_K, "INT"),
            "prefix": ("STRING", {"default": "", "tooltip": "Put first on every caption, e.g. a LoRA trigger word."}),
            "folder": ("STRING", {"default": "", "tooltip": FOLDER_TOOLTIP}),
            "write_captions": ("BOOLEAN", {"default": False, "tooltip": "Write each folder image's caption to a "
                                                                        "same-name caption file beside it."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace caption files that already exist."}),
            "caption_extension": (EXTENSIONS, {"tooltip": "The caption file's extension."}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "Images to caption (optional when a folder is given)."}),
            "tags": ("STRING", {"forceInput": True, "tooltip": "Tag lines for the image input, one per image (from "
                                                               "LiT Tag Images)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, folder="", **_):
        return float("nan") if str(folder).strip() else ""

    @with_node_errors(DISPLAY)
    def run(self, lit_model, candidates: str, vocabulary: str, threshold: float, top_k: int, prefix: str,
            folder: str, write_captions: bool, overwrite: bool, caption_extension: str = ".txt",
            image: torch.Tensor | None = None, tags: str | None = None):
        require_lit_model(lit_model)
        folder = _folder(folder)
        if not folder and image is None:
            raise LitError("nothing to caption.", input_name="image", fix="connect images, or give a folder.")
        if write_captions and not folder:
            raise LitError("write_captions needs a folder.", input_name="folder",
                           fix="give the folder of the images, or turn write_captions off.")
        lines, scores, paths, summary = [], [], [], []
        if folder:
            res = caption_folder(lit_model, folder, candidates, vocabulary=vocabulary, threshold=threshold,
                                 top_k=top_k, prefix=prefix, write=write_captions, overwrite=overwrite,
                                 extension=caption_extension, progress=embedding_progress("LiT index"))
            lines += res.lines
            scores += res.scores
            paths = res.paths
            summary.append(res.summary("captioned"))
        if image is not None:
            check_interrupted()
            img = image_embeddings(lit_model, image)
            tag_rows = None
            if "{tags}" in candidates:
                if tags is not None and str(tags).strip():
                    tag_rows = [[t.strip() for t in line.split(",") if t.strip()] for line in str(tags).splitlines()]
                    if len(tag_rows) < img.shape[0]:
                        raise LitError(f"{len(tag_rows)} tag line(s) for {img.shape[0]} image(s).", input_name="tags",
                                       fix="connect the tags output of LiT Tag Images run on the same images.")
                    tag_rows = tag_rows[-img.shape[0]:]
                else:
                    tagged = Tagger(lit_model, parse_vocabulary(vocabulary)).tag(img, threshold=threshold,
                                                                                 top_k=top_k)
                    tag_rows = [[t for t, _ in row] for row in tagged.tags]
            best = caption_images(lit_model, img, candidates, tag_rows)
            lines += [(prefix.strip() + ", " if prefix.strip() else "") + c for c, _ in best]
            scores += [s for _, s in best]
            summary.append(f"captioned {len(best)} image(s) from the graph")
        shown = "\n".join(summary + [f"{s:+.3f}  {c}" for c, s in zip(lines, scores, strict=True)][:200])
        return {"ui": {"text": [shown]},
                "result": ("\n".join(lines), "\n".join(f"{_finite(s):.6f}" for s in scores), "\n".join(paths))}


class LiTImageSearch:
    DISPLAY = "LiT Image Search"
    OUTPUT_NODE = True
    DESCRIPTION = ("Finds the images of a folder that best match a text and/or example images (and least match the "
                   "negatives). The folder is indexed once (cached embeddings, updated incrementally when files are "
                   "added, changed or removed); each query is one matrix product.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("images", "paths", "scores")
    OUTPUT_TOOLTIPS = ("The top-k images, best first, letterboxed to one size.", "Their paths, one per line.",
                       "Their cosine scores, one per line.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lit_model": ("LIT_MODEL", {"tooltip": "A tuned LiT model."}),
            "folder": ("STRING", {"default": "", "tooltip": "The folder to search (absolute, or relative to "
                                                            "ComfyUI's input folder), e.g. ComfyUI's output folder."}),
            "positive": ("STRING", {"multiline": True, "default": "a photo of a dog",
                                    "tooltip": "What to find, one prompt per line (averaged)."}),
            "negative": ("STRING", {"multiline": True, "default": "",
                                    "tooltip": "What to avoid, one prompt per line (optional)."}),
            "top_k": _num(spec.SEARCH_TOP_K, "INT"),
            "negative_weight": _num(spec.SEARCH_NEGATIVE_WEIGHT),
            "image_size": _num(spec.SEARCH_IMAGE_SIZE, "INT"),
            "recursive": ("BOOLEAN", {"default": True, "tooltip": "Include sub-folders (hidden ones are skipped)."}),
        }, "optional": {
            "positive_images": ("IMAGE", {"tooltip": "Example images to find more of."}),
            "negative_images": ("IMAGE", {"tooltip": "Example images to steer away from."}),
        }}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")  # the folder changes outside the graph; the incremental update is cheap

    @with_node_errors(DISPLAY)
    def run(self, lit_model, folder: str, positive: str, negative: str, top_k: int, negative_weight: float,
            image_size: int, recursive: bool = True, positive_images: torch.Tensor | None = None,
            negative_images: torch.Tensor | None = None):
        require_lit_model(lit_model)
        folder = _folder(folder)
        if not folder:
            raise LitError("no folder given.", input_name="folder", fix="give the folder to search.")
        paths, scores, report = search_folder(lit_model, folder, positive=positive, negative=negative,
                                              positive_images=positive_images, negative_images=negative_images,
                                              top_k=top_k, negative_weight=negative_weight, recursive=recursive,
                                              progress=embedding_progress("LiT index"))
        images = load_letterboxed(paths, int(image_size))
        shown = "\n".join([str(report)] + [f"{s:+.3f}  {os.path.basename(p)}"
                                           for p, s in zip(paths, scores, strict=True)])
        return {"ui": {"text": [shown]},
                "result": (images, "\n".join(paths), "\n".join(f"{_finite(s):.6f}" for s in scores))}


NODE_CLASS_MAPPINGS = {
    "LiTTagImages": LiTTagImages,
    "LiTCaptionByRetrieval": LiTCaptionByRetrieval,
    "LiTImageSearch": LiTImageSearch,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
