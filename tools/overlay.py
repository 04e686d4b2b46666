"""Mask overlays: each instance in its own colour, with its label and score, on every frame; and one video
segmented with its overlay drawn on the frames the segmentation decoded (`vistr segment`, the browser demo)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vistr.video_io import iter_frames

# Distinct colours (the original demo's palette, extended), as 0..255 RGB.
PALETTE = [
    (0, 114, 189), (217, 83, 25), (237, 177, 32), (126, 47, 142), (119, 172, 48), (77, 190, 238),
    (162, 20, 47), (0, 190, 0), (255, 0, 255), (255, 128, 0), (0, 255, 191), (128, 128, 255),
]  # fmt: skip
ALPHA = 0.5
# the decoded frames a segmentation keeps for its overlay at most, in bytes: a longer video is decoded again
KEPT_FRAME_BYTES = 512 * 2**20


def colour_of(track_id: int) -> tuple[int, int, int]:
    return PALETTE[track_id % len(PALETTE)]


def _free_offset(box: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]], height: int) -> int:
    """Downward shift that moves a caption box off every caption already drawn, while it stays in the image."""
    left, top, right, bottom = box
    step, dy = bottom - top + 2, 0

    def overlaps(other):
        return left < other[2] and other[0] < right and top + dy < other[3] and other[1] < bottom + dy

    while any(overlaps(other) for other in taken) and bottom + dy + step <= height:
        dy += step
    return dy


def draw_frame(
    image: Image.Image, instances: Sequence[dict], frame: int, id2label: dict[int, str], threshold: float = 0.0
) -> Image.Image:
    """Blend the masks of `frame` onto `image` for the instances scoring at least `threshold`, and write
    'label score' at each mask's top-left; a caption that would cover another moves below it."""
    from pycocotools import mask as mask_utils

    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    captions = []
    for instance in sorted(instances, key=lambda i: -i["score"]):
        rle = instance["segmentations"][frame]
        if rle is None or instance["score"] < threshold:
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
    taken: list[tuple[int, int, int, int]] = []
    for x, y, text, colour in captions:
        left, top, right, bottom = draw.textbbox((x, y), text)
        box = (left - 1, top - 1, right + 1, bottom + 1)
        dy = _free_offset(box, taken, result.height)
        box = (box[0], box[1] + dy, box[2], box[3] + dy)
        taken.append(box)
        draw.rectangle(box, fill=colour)
        draw.text((x, y + dy), text, fill=(255, 255, 255))
    return result


def overlay_frames(
    frames: Iterator[Image.Image], instances: Sequence[dict], id2label: dict[int, str], threshold: float = 0.0
) -> Iterator[Image.Image]:
    """The overlay of each frame: instances scoring below `threshold` are left out."""
    for index, image in enumerate(frames):
        yield draw_frame(image, instances, index, id2label, threshold)


class KeptFrames:
    """The frames of one video as its segmentation decoded them (`VideoSegmenter`'s `on_frame`), kept for its
    overlay so that the video is decoded once. Only while they fit `budget` bytes: the frames of a longer video
    are dropped and `frames` decodes it again, so memory stays bounded for a video of any length."""

    def __init__(self, budget: int | None = None):
        self.budget = KEPT_FRAME_BYTES if budget is None else budget
        self.complete = True  # every frame so far is kept
        self._frames: list[Image.Image] = []
        self._bytes = 0

    def add(self, image: Image.Image) -> None:
        if not self.complete:
            return
        self._bytes += image.width * image.height * len(image.getbands())
        if self._bytes > self.budget:
            self.complete, self._frames = False, []
        else:
            self._frames.append(image)

    def frames(self, source) -> Iterator[Image.Image]:
        """The video's frames: those kept, or `source` decoded again."""
        return iter(self._frames) if self.complete else iter_frames(source)


def found_instances(instances: Sequence[dict], threshold: float) -> list[dict]:
    """The instances an overlay draws (scoring at least `threshold`), best first."""
    return sorted((i for i in instances if i["score"] >= threshold), key=lambda i: -i["score"])


def covered_frames(segmentations: Sequence[dict | None]) -> list[int]:
    """The frames in which an instance's mask (per-frame RLE) has a pixel: those its overlay colours."""
    from pycocotools import mask as mask_utils

    return [frame for frame, rle in enumerate(segmentations) if rle is not None and mask_utils.area(rle) > 0]


def segment_with_overlay(segmenter, source, overlay_file: Path | None, overlay_suffix: str, id2label: dict[int, str],
                         threshold: float, on_clip: Callable[[], None] | None = None,
                         overlay_progress: Callable[[Iterable], Iterable] = iter) -> dict:  # fmt: skip
    """Segment `source` with `segmenter` (a `VideoSegmenter`) and, given an `overlay_file`, write its overlay there
    in the format of `overlay_suffix` (the file may be a staged one), from the frames the segmentation decoded:
    the video is decoded once (`KeptFrames`). Returns the segmenter's result."""
    from vistr.tools.video_writer import encode_video
    from vistr.video_io import video_fps

    kept = KeptFrames() if overlay_file is not None else None
    video = segmenter(source, on_clip=on_clip, on_frame=kept.add if kept else None)
    if kept is not None:
        frames = overlay_frames(kept.frames(source), video["instances"], id2label, threshold)
        encode_video(overlay_progress(frames), overlay_file, video_fps(source), overlay_suffix)
    return video
