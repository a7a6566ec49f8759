"""``classify`` and ``score``: a saved adapter applied to images.

Labels and prompts are one per line or ``;``-separated (quote-aware; commas never split, so "a dog in a garden, near
a fence" is one prompt), the same rule as the nodes. Templates come from the retrieval spec, as in the nodes.
Unreadable images are skipped with a warning, never the end of the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterator

import torch

from ..models.common.errors import LitError
from ..models.common.text import split_prompts
from ..models.retrieval import spec
from .common import add_tower_args, image_files, loaded_model

BATCH = 16


def image_batches(files: list[str], skipped: list[str], size: int = BATCH) -> Iterator[tuple[list[str], list]]:
    """Readable images in batches (as lists: sizes differ), each unreadable one reported on stderr and skipped."""
    from ..models.data.dataset import read_image

    names, images = [], []
    for f in files:
        try:
            images.append(read_image(f))
            names.append(f)
        except LitError as err:
            print(f"warning: skipped {f}: {err.message}", file=sys.stderr)
            skipped.append(f)
        if len(images) >= size:
            yield names, images
            names, images = [], []
    if images:
        yield names, images


def _embed(model, images: list) -> torch.Tensor:
    """Normalised embeddings of differently sized images in one tower forward (each preprocessed to the tower's
    input size first), refusing NaN pixels or embeddings."""
    import torch.nn.functional as F

    from ..models.common.validate import check_finite, check_image_batch
    from ..models.retrieval.zero_shot import image_embeddings

    tower = getattr(model, "image_tower", None)
    if tower is None or not hasattr(tower, "preprocess"):
        return torch.cat([image_embeddings(model, im[None]) for im in images])
    with torch.no_grad():
        pixels = torch.cat([tower.preprocess(check_image_batch(im[None])) for im in images])
        emb = F.normalize(tower(pixels).float(), dim=-1)
    return check_finite(emb, input_name="image_encoder", what="image embedding values")


def split_arg(text: str, name: str) -> list[str]:
    return split_prompts(text, input_name=name, fix=f"pass --{name} 'first; second' (or one per line).")


def parse_template_arg(text: str) -> list[str]:
    # '|' was the old separator; still understood when it is the only one used.
    if "|" in text and ";" not in text and "\n" not in text:
        text = text.replace("|", ";")
    from ..models.retrieval.zero_shot import parse_templates

    return parse_templates(text)


def cmd_classify(args: argparse.Namespace) -> int:
    from ..models.retrieval.zero_shot import label_embeddings, probabilities

    model = loaded_model(args)
    labels = split_arg(args.labels, "labels")
    lab = label_embeddings(model, labels, parse_template_arg(args.templates))  # once, for every image
    files = image_files(args.images)
    skipped: list[str] = []
    counts: Counter = Counter()
    k = min(3, len(labels))
    for names, images in image_batches(files, skipped):
        probs = probabilities(model, _embed(model, images), lab)
        for f, p in zip(names, probs, strict=True):
            top = p.argsort(descending=True)[:k].tolist()
            counts[labels[top[0]]] += 1
            print(f"{os.path.basename(f)}: " + ", ".join(f"{labels[i]} {100 * float(p[i]):.1f}%" for i in top))
    done = sum(counts.values())
    print(f"\nsummary: {done} image(s) classified" + (f", {len(skipped)} skipped (unreadable)" if skipped else ""))
    for label in labels:
        if counts[label]:
            print(f"  {label}: {counts[label]} ({100 * counts[label] / max(done, 1):.0f}%)")
    return 0 if done else 1


def cmd_score(args: argparse.Namespace) -> int:
    from ..models.retrieval.zero_shot import text_embeddings

    model = loaded_model(args)
    prompts = split_arg(args.prompts, "prompts")
    txt = text_embeddings(model, prompts)
    files = image_files(args.images)
    width = max(len(os.path.basename(f)) for f in files) + 2
    cols = [max(8, len(p)) + 2 for p in prompts]  # whole prompts as headers, never cut
    print(" " * width + "".join(f"{p:>{w}}" for p, w in zip(prompts, cols, strict=True)))
    skipped: list[str] = []
    for names, images in image_batches(files, skipped):
        sims = _embed(model, images) @ txt.to(model.device).t()
        for f, row in zip(names, sims, strict=True):
            print(f"{os.path.basename(f):<{width}}" + "".join(f"{float(s):>{w}.3f}"
                                                             for s, w in zip(row, cols, strict=True)))
    if skipped:
        print(f"\n{len(skipped)} image(s) skipped (unreadable)")
    return 0 if len(skipped) < len(files) else 1


def add_adapter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--adapter", required=True, help="a saved LiT adapter (.safetensors)")
    p.add_argument("--force", action="store_true", help="load onto other encoders than it was trained with")


def register(sub: argparse._SubParsersAction) -> None:
    for name, func, what in (("classify", cmd_classify, "--labels"), ("score", cmd_score, "--prompts")):
        p = sub.add_parser(name, help=f"{name} images with a saved adapter")
        p.add_argument("images", nargs="+", help="image files or folders")
        add_adapter_args(p)
        p.add_argument(what, required=True, dest=what[2:],
                       help="one per line or ';'-separated (commas stay inside an entry; quote a ';' to keep it)")
        if name == "classify":
            p.add_argument("--templates", default=";".join(spec.ZERO_SHOT_TEMPLATES),
                           help="prompt templates with '{}' for the label, ';'-separated (default: %(default)s)")
        add_tower_args(p)
        p.set_defaults(func=func)
