"""``tag``, ``caption`` and ``search``: a saved adapter on a whole folder (its embeddings cached and indexed in
``<folder>/.lit_cache``, shared by the three commands and the nodes).

    python -m comfyui_lit tag FOLDER --adapter a.safetensors --vocabulary-file tags.txt --prefix mychar --write
    python -m comfyui_lit caption FOLDER --adapter a.safetensors --candidates "a photo of {tags}" \\
        --vocabulary "dog; grass; beach" --write --extension .caption
    python -m comfyui_lit search FOLDER --adapter a.safetensors --query "a dog on a beach" --like ref.png -k 10
"""

from __future__ import annotations

import argparse
import os
import sys

from ..models.common.errors import LitError
from ..models.retrieval import spec
from .common import add_tower_args, loaded_model
from .zero_shot import add_adapter_args


def _vocabulary(args: argparse.Namespace, required: bool = True) -> list[str]:
    from ..models.retrieval.tagging import parse_vocabulary, read_vocabulary_file

    if args.vocabulary_file:
        return read_vocabulary_file(args.vocabulary_file)
    if args.vocabulary:
        return parse_vocabulary(args.vocabulary)
    if required:
        raise LitError("no tag vocabulary.", input_name="vocabulary",
                       fix="pass --vocabulary 'dog; cat; grass' or --vocabulary-file tags.txt.")
    return []


def _progress():
    if not sys.stderr.isatty():
        return None

    def cb(done: int, total: int) -> None:
        print(f"\rindexing {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    return cb


def _print_files(res, args) -> None:
    for path, line in zip(res.paths, res.lines, strict=True):
        print(f"{os.path.relpath(path, args.folder)}: {line}")
    print("\n" + res.summary("tagged" if args.command == "tag" else "captioned"), file=sys.stderr)
    for path in res.kept[:20]:
        print(f"  kept existing {path}", file=sys.stderr)


def cmd_tag(args: argparse.Namespace) -> int:
    from ..models.retrieval.folder_jobs import tag_folder

    model = loaded_model(args)
    res = tag_folder(model, args.folder, _vocabulary(args), threshold=args.threshold, top_k=args.top_k,
                     min_tags=args.min_tags, calibration=args.calibration, prefix=args.prefix, write=args.write,
                     overwrite=args.overwrite, extension=args.extension, cache_dir=args.cache_dir or None,
                     progress=_progress())
    _print_files(res, args)
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from ..models.retrieval.folder_jobs import caption_folder

    model = loaded_model(args)
    vocab = _vocabulary(args, required="{tags}" in args.candidates)
    res = caption_folder(model, args.folder, args.candidates, vocabulary=vocab, threshold=args.threshold,
                         top_k=args.top_k, calibration=args.calibration, prefix=args.prefix, write=args.write,
                         overwrite=args.overwrite, extension=args.extension, cache_dir=args.cache_dir or None,
                         progress=_progress())
    _print_files(res, args)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..models.data.dataset import read_image
    from ..models.retrieval.folder_jobs import search_folder

    def images(paths: list[str], name: str) -> list | None:
        out = []
        for p in paths:
            try:
                out.append(read_image(p))
            except LitError as err:
                raise LitError(err.message, input_name=name, fix="pass readable image files.") from None
        return out or None

    model = loaded_model(args)
    paths, scores, report = search_folder(model, args.folder, positive=args.query or "", negative=args.negative or "",
                                          positive_images=images(args.like, "like"),
                                          negative_images=images(args.unlike, "unlike"), top_k=args.top_k,
                                          negative_weight=args.negative_weight, cache_dir=args.cache_dir or None,
                                          recursive=not args.no_recursive, progress=_progress())
    print(report, file=sys.stderr)
    for p, s in zip(paths, scores, strict=True):
        print(f"{s:+.4f}  {p}")
    return 0


def _folder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a folder of images (sub-folders included)")
    add_adapter_args(p)
    p.add_argument("--cache-dir", default="", help="where embeddings and the index live (default FOLDER/.lit_cache)")
    add_tower_args(p)


def _tag_args(p: argparse.ArgumentParser, *, vocab_help: str) -> None:
    p.add_argument("--vocabulary", default="", help=vocab_help)
    p.add_argument("--vocabulary-file", default="", help="a UTF-8 .txt with one tag per line")
    p.add_argument("--threshold", type=float, default=spec.TAG_THRESHOLD.default, help=spec.TAG_THRESHOLD.tooltip)
    p.add_argument("--top-k", type=int, default=int(spec.TAG_TOP_K.default), help=spec.TAG_TOP_K.tooltip)
    p.add_argument("--calibration", choices=spec.CALIBRATIONS, default="auto", help=spec.CALIBRATION_TOOLTIP)
    p.add_argument("--prefix", default="", help="put first on every line, e.g. a LoRA trigger word")
    p.add_argument("--write", action="store_true", help="write a same-name caption file beside each image")
    p.add_argument("--overwrite", action="store_true", help="replace caption files that exist (default: keep them)")
    p.add_argument("--extension", default=".txt", choices=(".txt", ".caption"), help="caption file extension")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tag", help="tag every image of a folder from a vocabulary (LoRA-trainer caption files)",
                       description="Multi-label tags per image, calibrated so the threshold means the same on every "
                                   "image; prints 'file: tag, tag, ...' and with --write saves them beside the images.")
    _folder_args(p)
    _tag_args(p, vocab_help="the tags, one per line or ';'-separated")
    p.add_argument("--min-tags", type=int, default=0, help=spec.TAG_MIN_TAGS.tooltip)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("caption", help="the best caption per image among candidates / tag-filled templates")
    _folder_args(p)
    p.add_argument("--candidates", default=";".join(spec.CAPTION_TEMPLATES), help=spec.CAPTION_TOOLTIP)
    _tag_args(p, vocab_help="tags for '{tags}' templates, one per line or ';'-separated")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("search", help="find images of a folder by text and/or example images",
                       description="Indexes the folder once (incrementally afterwards) and ranks its images by "
                                   "cosine with the query: mean(positives) - weight * mean(negatives).")
    _folder_args(p)
    p.add_argument("--query", default="", help="what to find (several ';'-separated prompts are averaged)")
    p.add_argument("--negative", default="", help="what to avoid (';'-separated)")
    p.add_argument("--like", nargs="*", default=[], help="example images to find more of")
    p.add_argument("--unlike", nargs="*", default=[], help="example images to steer away from")
    p.add_argument("-k", "--top-k", type=int, default=int(spec.SEARCH_TOP_K.default), help=spec.SEARCH_TOP_K.tooltip)
    p.add_argument("--negative-weight", type=float, default=spec.SEARCH_NEGATIVE_WEIGHT.default,
                   help=spec.SEARCH_NEGATIVE_WEIGHT.tooltip)
    p.add_argument("--no-recursive", action="store_true", help="only the folder itself, not sub-folders")
    p.set_defaults(func=cmd_search)
