"""A small captioned photo set that needs no download, for the CLI's demo and bench/locked_tuning.py:
:func:`skimage_captioned_set`, the photos bundled with scikit-image, with written captions and augmented crops.
(The shapes test fixture lives in tests/shapes_data.py.)"""

from __future__ import annotations

import os

import numpy as np

from ..common.errors import LitError

# The scikit-image photos that ship inside the wheel (no pooch download), with written captions.
SKIMAGE_PHOTOS = {
    "astronaut": ["an astronaut in a white spacesuit with the american flag",
                  "portrait of a smiling astronaut", "a woman astronaut in a space suit"],
    "coffee": ["a cup of coffee on a saucer", "a coffee mug with foam, seen from above", "an espresso cup"],
    "chelsea": ["a tabby cat", "a ginger cat lying down", "close-up photo of a cat's face"],
    "rocket": ["a rocket on the launch pad", "a space rocket ready for launch", "a spacecraft launch tower"],
    "coins": ["old coins on a table", "a grey photo of many coins", "a collection of metal coins"],
    "camera": ["a man with a camera on a tripod", "a photographer in a field, black and white",
               "a cameraman outdoors"],
    "moon": ["the surface of the moon", "lunar craters", "a grey photo of the moon's surface"],
    "hubble_deep_field": ["galaxies in deep space", "the hubble deep field full of galaxies",
                          "a starry night sky with many galaxies"],
    "immunohistochemistry": ["a microscope image of stained tissue", "cells under the microscope",
                             "a histology slide stained brown and blue"],
    "colorwheel": ["a colour wheel", "a rainbow colour circle", "a circle with all hues"],
    "brick": ["a brick wall", "a grey brick wall texture", "bricks and mortar"],
    "grass": ["grass", "a texture of green grass blades", "a lawn seen up close"],
    "gravel": ["gravel", "small stones on the ground", "a pebble texture"],
    "text": ["printed text on paper", "a page of writing", "black letters on a white background"],
    "clock": ["a clock", "a wall clock", "a round clock face"],
    "page": ["a scanned book page", "a page of old printed text", "a document with text lines"],
    "retina": ["a photo of a retina", "the back of the eye with blood vessels", "a fundus image"],
    "cell": ["a cell under a microscope", "a microscopy image of a cell", "a grey microscopy image"],
    "horse": ["the silhouette of a horse", "a black and white horse shape", "a horse outline"],
    "logo": ["the scikit-image logo", "a snake logo", "a colourful logo on a white background"],
}


def _photo(name: str) -> np.ndarray | None:
    import skimage.data as data

    try:
        arr = np.asarray(getattr(data, name)())
    except Exception:  # noqa: BLE001 - photos that need a download (pooch) are skipped
        return None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    if arr.shape[-1] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    if arr.dtype != np.uint8:
        arr = (255 * (arr - arr.min()) / max(1e-8, float(arr.max() - arr.min()))).astype(np.uint8)
    return arr


def skimage_captioned_set(folder: str, *, crops_per_photo: int = 4, seed: int = 0, max_side: int = 320) -> str:
    """Write the bundled scikit-image photos (those available offline) to ``folder`` as JPEGs with 2-3 written
    captions each, plus ``crops_per_photo`` random crops/flips of each, so there is enough to tune on.

    Returns ``folder``. Needs scikit-image (a test/demo extra)."""
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        raise LitError("the demo photo set needs scikit-image.", input_name="dataset",
                       fix="`pip install scikit-image`, or point the trainer at your own captioned folder.") from None
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    written = 0
    for name, caps in SKIMAGE_PHOTOS.items():
        arr = _photo(name)
        if arr is None:
            continue
        base = Image.fromarray(arr)
        base.thumbnail((max_side, max_side))
        variants = [base]
        w, h = base.size
        for _ in range(crops_per_photo):
            s = rng.uniform(0.6, 0.9)
            cw, ch = int(w * s), int(h * s)
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            v = base.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                v = v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            variants.append(v)
        for k, v in enumerate(variants):
            stem = os.path.join(folder, f"{name}_{k}")
            v.save(stem + ".jpg", quality=90)
            with open(stem + ".txt", "w", encoding="utf-8") as fh:
                fh.write("\n".join(caps) + "\n")
            written += 1
    if written == 0:
        raise LitError("no scikit-image photo could be read.", input_name="dataset",
                       fix="reinstall scikit-image.")
    return folder
