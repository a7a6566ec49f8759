"""``classify`` and ``score``: a saved adapter applied to images."""

from __future__ import annotations

import argparse
import os

from .common import add_tower_args, loaded_model, read_images


def _split(text: str) -> list[str]:
    sep = ";" if ";" in text else ","
    return [t.strip() for t in text.split(sep) if t.strip()]


def cmd_classify(args: argparse.Namespace) -> int:
    from ..models.retrieval.zero_shot import classify

    model = loaded_model(args)
    labels = _split(args.labels)
    files, images = read_images(args.images)
    for f, img in zip(files, images, strict=True):
        probs = classify(model, img[None], labels, args.templates.split("|"))[0]
        top = probs.argsort(descending=True)[:3].tolist()
        print(f"{os.path.basename(f)}: " + ", ".join(f"{labels[i]} {100 * float(probs[i]):.1f}%" for i in top))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from ..models.retrieval.zero_shot import score

    model = loaded_model(args)
    prompts = _split(args.prompts)
    files, images = read_images(args.images)
    width = max(len(os.path.basename(f)) for f in files) + 2
    print(" " * width + "".join(f"{p[:18]:>20}" for p in prompts))
    for f, img in zip(files, images, strict=True):
        sims = score(model, img[None], prompts)[0]
        print(f"{os.path.basename(f):<{width}}" + "".join(f"{float(s):>20.3f}" for s in sims))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for name, func, what in (("classify", cmd_classify, "--labels"), ("score", cmd_score, "--prompts")):
        p = sub.add_parser(name, help=f"{name} images with a saved adapter")
        p.add_argument("images", nargs="+", help="image files or folders")
        p.add_argument("--adapter", required=True)
        p.add_argument("--force", action="store_true", help="load onto other encoders than it was trained with")
        p.add_argument(what, required=True, dest=what[2:], help="comma- or semicolon-separated")
        if name == "classify":
            p.add_argument("--templates", default="a photo of a {}.|{}", help="'|'-separated prompt templates")
        add_tower_args(p)
        p.set_defaults(func=func)
