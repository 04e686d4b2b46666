"""Mask overlays: each instance in its own colour, with its label and score, on every frame."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Distinct colours (the original demo's palette, extended), as 0..255 RGB.
PALETTE = [
    (0, 114, 189), (217, 83, 25), (237, 177, 32), (126, 47, 142), (119, 172, 48), (77, 190, 238),
    (162, 20, 47), (0, 190, 0), (255, 0, 255), (255, 128, 0), (0, 255, 191), (128, 128, 255),
]  # fmt: skip
ALPHA = 0.5


def colour_of(track_id: int) -> tuple[int, int, int]:
    return PALETTE[track_id % len(PALETTE)]


def draw_frame(image: Image.Image, instances: Sequence[dict], frame: int, id2label: dict[int, str]) -> Image.Image:
    """Blend the masks of `frame` onto `image` and write 'label score' at each mask's top-left."""
    from pycocotools import mask as mask_utils

    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    captions = []
    for instance in instances:
        rle = instance["segmentations"][frame]
        if rle is None:
            continue
        mask = mask_utils.decode(rle).astype(bool)
        if not mask.any():
            continue
        colour = np.array(colour_of(instance["id"]), dtype=np.float32)
        canvas[mask] = canvas[mask] * (1 - ALPHA) + colour * ALPHA
        rows, cols = np.nonzero(mask)
        name = id2label.get(instance["label"], str(instance["label"]))
        captions.append((int(cols.min()), int(rows.min()), f"{name} {instance['score']:.2f}", colour_of(instance["id"])))
    result = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for x, y, text, colour in captions:
        left, top, right, bottom = draw.textbbox((x, y), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        draw.text((x, y), text, fill=(255, 255, 255))
    return result


def overlay_frames(frames: Iterator[Image.Image], instances: Sequence[dict], id2label: dict[int, str]) -> Iterator[Image.Image]:
    for index, image in enumerate(frames):
        yield draw_frame(image, instances, index, id2label)
