"""The retrieval feature's parameters in one place: zero-shot templates, tagging, captioning and search defaults.

Nodes, CLI and engine all read these, so a default (or a tooltip) is changed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

# CLIP-style prompt ensembling: a label's embedding is the mean over these templates ("{}" is the label).
ZERO_SHOT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "{}")
TEMPLATES_TOOLTIP = ("Prompt templates, one per line; '{}' is replaced by the label. A label's embedding is the "
                     "average over its templates (prompt ensembling).")

# Tagging: a tag's prompts use the same templates; its score is calibrated against prompts that name nothing in
# particular, so "probability 0.5" means "the tag fits this image better than a generic description does".
BACKGROUND_PROMPTS: tuple[str, ...] = (
    "a photo.", "a picture.", "an image.", "a photo of something.", "a photo of a scene.",
    "a photo of an object.", "a close-up photo.", "a photo taken outside.", "a photo taken inside.",
    "a snapshot.",
)
CALIBRATIONS: tuple[str, ...] = ("auto", "background", "sigmoid", "none")
CALIBRATION_TOOLTIP = (
    "How a tag's cosine becomes a probability the threshold can mean. background: a logistic between the tag "
    "and a set of generic prompts (0.5 = fits better than 'a photo.'); sigmoid: the model's own sigmoid-loss "
    "probability (adapters trained with loss=sigmoid); auto: sigmoid for sigmoid-loss adapters, else background; "
    "none: the raw cosine (-1..1) is compared with the threshold.")


@dataclass(frozen=True)
class Param:
    """A numeric parameter: default, range and the tooltip every front-end shows."""

    default: float
    min: float
    max: float
    step: float
    tooltip: str


TAG_THRESHOLD = Param(0.5, 0.0, 1.0, 0.01, "Keep tags whose calibrated probability is at least this (0..1; with "
                                           "calibration 'none' it is a cosine).")
TAG_TOP_K = Param(8, 1, 256, 1, "At most this many tags per image (best first).")
TAG_MIN_TAGS = Param(0, 0, 64, 1, "At least this many tags per image, even below the threshold (0: none forced).")
CAPTION_TEMPLATES: tuple[str, ...] = ("a photo of {tags}.", "{tags}")
CAPTION_TOOLTIP = ("Candidate captions, one per line (or ';'-separated). A line with '{tags}' is a template: it is "
                   "filled with the image's best 1..top_k tags, and every filling competes as a candidate.")
SEARCH_TOP_K = Param(16, 1, 4096, 1, "How many images to return, best first.")
SEARCH_NEGATIVE_WEIGHT = Param(0.5, 0.0, 4.0, 0.05, "How strongly negative prompts/images push results away "
                                                    "(query = mean(positives) - weight * mean(negatives)).")
SEARCH_IMAGE_SIZE = Param(512, 64, 4096, 8, "The returned IMAGE batch is letterboxed to this size (longer side), "
                                            "since a batch needs one size.")
TAG_SEPARATOR = ", "  # what LoRA trainers (kohya, OneTrainer, ai-toolkit) read from a caption .txt
