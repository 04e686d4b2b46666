"""Long videos: tracks that end are closed, each clip is linked only with the open tracks, and the results
keep what the YouTube-VIS evaluator can score, so they grow linearly with the video's length even where the
model keeps seeing short-lived objects (a new track in every clip)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from vistr import clip_linking
from vistr.configuration_vistr import VisTRConfig
from vistr.clip_linking import RESULTS_PER_VIDEO_AND_CATEGORY, encode_rle
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.pipeline_vistr import VideoSegmenter
from vistr.tools.evaluation_youtube_vis import MAX_DETECTIONS, evaluate

FRAMES, SLOTS, SIDE = 4, 5, 16  # clips of 4 frames, every 3 frames: clip k covers 3k..3k+3, only it sees 3k+1
OBJECT, FLASH = 1, 2  # labels: one object through the whole video, and one short-lived object in every clip


def flash_score(clip: int) -> float:
    """The class probability of the short-lived object of `clip`: distinct, in no order."""
    return 0.05 + 0.9 * ((clip * 0.6180339887) % 1.0)


def object_mask() -> torch.Tensor:
    """The stride-4 cells [4, 4] of the object that stays: the top-left quarter."""
    cells = torch.zeros(SIDE // 4, SIDE // 4, dtype=torch.bool)
    cells[:2, :2] = True
    return cells


def flash_mask(clip: int) -> torch.Tensor:
    """The one cell the short-lived object of `clip` covers, away from the object that stays."""
    cells = torch.zeros(SIDE // 4, SIDE // 4, dtype=torch.bool)
    cells[2 + clip % 2, 2 + clip // 2 % 2] = True
    return cells


class FlickeringModel(nn.Module):
    """Stands in for VisTR on a long video, whatever the pixels: slot 0 sees the object that stays in every
    frame; slot 1 sees a new short-lived object in the one frame of each clip that no other clip covers (a
    new track every clip, as the bundled model makes on long videos); the other slots see nothing."""

    def __init__(self):
        super().__init__()
        self.config = VisTRConfig(num_frames=FRAMES, num_queries_per_frame=SLOTS, num_labels=3)
        self.anchor = nn.Parameter(torch.zeros(()))
        self.clips = 0

    def forward(self, pixel_values, pixel_mask=None):
        classes = self.config.num_labels + 1  # the last one: no object
        probabilities = torch.full((FRAMES, SLOTS, classes), 1e-6)
        probabilities[..., -1] = 1.0
        probabilities[:, 0, OBJECT], probabilities[:, 0, -1] = 0.9, 0.1
        score = flash_score(self.clips)
        probabilities[:, 1, FLASH], probabilities[:, 1, -1] = score, 1 - score
        masks = torch.zeros(FRAMES, SLOTS, SIDE // 4, SIDE // 4, dtype=torch.bool)
        masks[:, 0] = object_mask()
        masks[1, 1] = flash_mask(self.clips)
        self.clips += 1
        logits = probabilities.log().reshape(1, FRAMES * SLOTS, classes)
        mask_logits = torch.where(masks, 10.0, -10.0).reshape(1, FRAMES * SLOTS, SIDE // 4, SIDE // 4)
        return SimpleNamespace(logits=logits, pred_masks=mask_logits)


def segment(clips: int, **options) -> dict:
    """The video of `clips` clips (3 * clips + 1 frames) through VideoSegmenter and the flickering model."""
    video = np.zeros((3 * clips + 1, SIDE, SIDE, 3), dtype=np.uint8)
    processor = VisTRVideoProcessor(num_frames=FRAMES, num_queries_per_frame=SLOTS, size={"shortest_edge": SIDE})
    segmenter = VideoSegmenter(FlickeringModel(), processor, **options)
    assert segmenter.clip_count(len(video)) == clips
    return segmenter(video)


def results_json(video: dict) -> str:
    return json.dumps(VisTRVideoProcessor.to_youtube_vis_results([video["instances"]], [1]))


def test_results_of_a_long_video_grow_linearly_with_its_length():
    """Before, every clip's short-lived object was written over every frame: 4x the frames, 16x the results."""
    short, long = segment(150), segment(600)
    growth = len(results_json(long)) / len(results_json(short))
    assert growth < 1.25 * long["length"] / short["length"]
    labels = [instance["label"] for instance in long["instances"]]
    assert labels.count(OBJECT) == 1 and labels.count(FLASH) == RESULTS_PER_VIDEO_AND_CATEGORY


def ground_truth(length: int, flash_clips: list[int]) -> dict:
    """The object that stays, and a true object at the short-lived ones of `flash_clips`."""
    def annotation(annotation_id: int, category: int, frames: dict[int, torch.Tensor]) -> dict:
        pixels = {frame: cells.repeat_interleave(4, 0).repeat_interleave(4, 1) for frame, cells in frames.items()}
        rles = [encode_rle(pixels[frame]) if frame in pixels else None for frame in range(length)]
        areas = [int(pixels[frame].sum()) if frame in pixels else None for frame in range(length)]
        return {"id": annotation_id, "video_id": 1, "category_id": category, "segmentations": rles, "areas": areas,
                "bboxes": [None] * length, "iscrowd": 0}  # fmt: skip

    annotations = [annotation(1, OBJECT, {frame: object_mask() for frame in range(length)})]
    annotations += [annotation(2 + i, FLASH, {3 * clip + 1: flash_mask(clip)}) for i, clip in enumerate(flash_clips)]
    video = {"id": 1, "width": SIDE, "height": SIDE, "length": length,
             "file_names": [f"{frame:05d}.jpg" for frame in range(length)]}  # fmt: skip
    categories = [{"id": OBJECT, "name": "object"}, {"id": FLASH, "name": "flash"}]
    return {"videos": [video], "categories": categories, "annotations": annotations}


def test_instances_left_out_are_those_the_evaluator_never_scores():
    """The evaluator ranks a video's results of a category by score and scores the first 100: keeping those
    (and only those) of the short-lived objects leaves every metric as it is with all of them."""
    assert RESULTS_PER_VIDEO_AND_CATEGORY == MAX_DETECTIONS[-1]
    clips = 250
    everything, kept = segment(clips, max_instances_per_label=None), segment(clips)
    assert sum(instance["label"] == FLASH for instance in everything["instances"]) == clips
    truth = ground_truth(kept["length"], flash_clips=list(range(0, clips, 9)))
    assert 0 < evaluate(truth, json.loads(results_json(kept)))["AP"] < 1
    assert evaluate(truth, json.loads(results_json(kept))) == evaluate(truth, json.loads(results_json(everything)))


@pytest.mark.parametrize("limit", [1, 3])
def test_the_best_instances_of_each_label_are_kept_in_id_order(limit):
    kept = segment(20, max_instances_per_label=limit)["instances"]
    flashes = [instance for instance in kept if instance["label"] == FLASH]
    best = sorted(range(20), key=lambda clip: -flash_score(clip))[:limit]
    expected = [flash_score(clip) for clip in sorted(best)]  # the model's probabilities, renormalised by softmax
    assert [instance["score"] for instance in flashes] == pytest.approx(expected, rel=1e-4)
    assert [instance["id"] for instance in kept] == sorted(instance["id"] for instance in kept)
    with pytest.raises(ValueError, match="max_instances_per_label=0"):
        segment(2, max_instances_per_label=0)


def test_each_clip_is_compared_only_with_the_open_tracks(monkeypatch):
    """Tracks that ended are closed: linking a clip compares its slots with the previous clip's, however many
    tracks the video has opened."""
    compared, sequence_iou = [], clip_linking.sequence_iou

    def counting_iou(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        compared.append(previous.shape[1] * current.shape[1])
        return sequence_iou(previous, current)

    monkeypatch.setattr(clip_linking, "sequence_iou", counting_iou)
    video = segment(200, max_instances_per_label=None)
    assert len(video["instances"]) == 201
    assert compared == [SLOTS * SLOTS] * 199
