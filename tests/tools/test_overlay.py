"""Overlay drawing: the score threshold, captions that never cover each other, and the frames it draws on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from vistr import video_io
from vistr.tools import cli, overlay

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "sample.mp4"


def instance(track_id: int, score: float, box: tuple[int, int, int, int], size=(60, 80)) -> dict:
    mask = np.zeros(size, dtype=np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"id": track_id, "score": score, "label": 1, "segmentations": [rle]}


def test_instances_below_the_threshold_are_not_drawn():
    image = Image.new("RGB", (80, 60), (0, 0, 0))
    strong, weak = instance(1, 0.9, (5, 5, 20, 20)), instance(2, 0.3, (35, 45, 55, 75))
    drawn = np.asarray(overlay.draw_frame(image, [strong, weak], 0, {1: "disc"}, threshold=0.5))
    assert drawn[30:55, 50:75].max() == 0  # the weak one's area stays black (its caption would sit at 45, 35)
    assert drawn[12:20, 5:20].any()  # the strong one is blended in
    every = np.asarray(overlay.draw_frame(image, [strong, weak], 0, {1: "disc"}, threshold=0.0))
    assert every[40:55, 50:75].any()


def test_captions_at_the_same_place_do_not_overprint(monkeypatch):
    image = Image.new("RGB", (80, 60), (0, 0, 0))
    boxes = []
    rectangle = ImageDraw.ImageDraw.rectangle
    monkeypatch.setattr(ImageDraw.ImageDraw, "rectangle",
                        lambda self, xy, *a, **k: boxes.append(tuple(xy)) or rectangle(self, xy, *a, **k))
    same_corner = [instance(1, 0.9, (5, 5, 40, 40)), instance(2, 0.8, (5, 5, 30, 60)), instance(3, 0.7, (5, 5, 25, 25))]
    overlay.draw_frame(image, same_corner, 0, {1: "disc"}, threshold=0.5)
    assert len(boxes) == 3
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def _segment_counting_decodes(tmp_path, monkeypatch, name: str) -> tuple[list, list[np.ndarray]]:
    """`vistr segment` of the sample with an overlay: the video files it decoded, and the overlay's frames."""
    decoded, decode = [], video_io._iter_video_file
    monkeypatch.setattr(video_io, "_iter_video_file", lambda path: decoded.append(path) or decode(path))
    cli.main(["segment", str(SAMPLE), "--output", str(tmp_path / f"{name}.json"),
              "--overlay", str(tmp_path / f"{name}.mp4")])  # fmt: skip
    monkeypatch.setattr(video_io, "_iter_video_file", decode)
    return decoded, [np.asarray(frame) for frame in video_io.iter_frames(tmp_path / f"{name}.mp4")]


def test_segment_decodes_the_video_once_overlay_included(tmp_path, monkeypatch):
    once, overlay_frames = _segment_counting_decodes(tmp_path, monkeypatch, "kept")
    assert once == [SAMPLE]
    # frames beyond the memory budget are not kept: the overlay decodes the video again, and draws the same
    monkeypatch.setattr(overlay, "KEPT_FRAME_BYTES", 1)
    twice, redecoded_frames = _segment_counting_decodes(tmp_path, monkeypatch, "redecoded")
    assert twice == [SAMPLE, SAMPLE]
    assert len(overlay_frames) == len(redecoded_frames) == 14
    assert all(np.array_equal(a, b) for a, b in zip(overlay_frames, redecoded_frames))
