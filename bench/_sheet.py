"""A contact sheet a person can look at: rows of same-size image tiles under a label, saved as one PNG."""

from __future__ import annotations

import numpy as np


def contact_sheet(rows: list[list[np.ndarray]], labels: list[str], path: str, width: int = 240) -> None:
    """Each row's images (``[H,W,3]`` floats in 0..1) resized to ``width`` px wide, side by side, with its label."""
    from PIL import Image, ImageDraw

    tiles = []
    for row in rows:
        ims = [Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)) for a in row]
        ims = [im.resize((width, round(im.height * width / im.width))) for im in ims]
        tiles.append(ims)
    heights = [max(im.height for im in r) + 16 for r in tiles]
    columns = max(len(r) for r in tiles)
    sheet = Image.new("RGB", (columns * (width + 6) + 2, sum(heights) + 4), "white")
    d = ImageDraw.Draw(sheet)
    y = 14
    for r, lab, rh in zip(tiles, labels, heights, strict=True):
        d.text((4, y - 13), lab, fill="black")
        for j, im in enumerate(r):
            sheet.paste(im, (4 + j * (width + 6), y))
        y += rh
    sheet.save(path)
