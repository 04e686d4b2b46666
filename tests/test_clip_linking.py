"""clip_linking.py: a video's clips linked into one track per instance by mask IoU, the instances scored,
labelled and encoded as the original's post-processing does, and long videos kept linear.

Linking is checked against known tracks (conftest's OracleModel puts the instances in other slots in every clip),
through the processor's post-processing and the streaming VideoSegmenter; the scores, labels and RLEs against the
original's results (../shared/parity).

Long videos: tracks that end are closed, each clip is linked only with the open tracks, and the results keep
what the YouTube-VIS evaluator can score, so they grow linearly with the video's length even where the model
keeps seeing short-lived objects (a new track in every clip).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import RED_STEP, OracleModel
from torch import nn
from vistr import clip_linking
from vistr.clip_linking import RESULTS_PER_VIDEO_AND_CATEGORY, encode_rle
from vistr.configuration_vistr import VisTRConfig
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.pipeline_vistr import VideoSegmenter, decode_masks
from vistr.tools.evaluation_youtube_vis import MAX_DETECTIONS, evaluate

SMALL = {"shortest_edge": 64}


# ----------------------------------------------------------------------------------------------------------
# Linking clips into tracks
# ----------------------------------------------------------------------------------------------------------


def moving_squares(length: int, height: int = 64, width: int = 96) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Three squares in their own rows moving right; 2 enters at frame 2, 3 enters half way and leaves before the end."""
    video = np.zeros((length, height, width, 3), dtype=np.uint8)
    truth = {k: np.zeros((length, height, width), dtype=bool) for k in (1, 2, 3)}
    lifetimes = {1: range(length), 2: range(min(2, length - 1), length), 3: range(length // 2, max(length // 2 + 1, length - 1))}
    for k, frames in lifetimes.items():
        for t in frames:
            x = (5 + 4 * t + 10 * k) % (width - 20)
            y = 2 + (k - 1) * 21
            video[t, y : y + 18, x : x + 18, 0] = RED_STEP * k
            truth[k][t, y : y + 18, x : x + 18] = True
    return video, truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


@pytest.mark.parametrize("flips", [None, ["horizontal", "vertical", "both"]])
@pytest.mark.parametrize("length", [1, 3, 4, 7, 9, 13])
def test_clips_are_linked_into_one_track_per_instance(length, flips):
    """Also with test-time flips: every view puts the instances in other slots, so the views' slots must be
    matched before they are averaged."""
    video, truth = moving_squares(length)
    model = OracleModel(num_frames=4)
    processor = VisTRVideoProcessor(size={"shortest_edge": 64}, test_time_flips=flips)
    segmenter = VideoSegmenter(model, processor, stride=3)
    result = segmenter(video)
    assert model.clips == segmenter.clip_count(length) * (1 + len(flips or []))
    assert (result["length"], result["height"], result["width"]) == (length, 64, 96)
    tracks = {inst["id"]: decode_masks(inst["segmentations"], 64, 96) for inst in result["instances"]}
    labels = {inst["id"]: inst["label"] for inst in result["instances"]}
    present = {k: m for k, m in truth.items() if m.any()}
    assert len(tracks) == len(present), "one track per instance, no duplicates"
    for k, masks in present.items():
        frames = [t for t in range(length) if masks[t].any()]
        owners = {track_id for t in frames for track_id, track in tracks.items() if iou(track[t], masks[t]) > 0.5}
        assert len(owners) == 1, f"instance {k} is split over tracks {owners}"
        owner = owners.pop()
        assert labels[owner] == k
        assert all(iou(tracks[owner][t], masks[t]) > 0.6 for t in frames)


class ClipBatchOracle(nn.Module):
    """OracleModel (one clip per call) over a batch of clips."""

    def __init__(self, num_frames: int):
        super().__init__()
        self.oracle = OracleModel(num_frames=num_frames)
        self.config = self.oracle.config

    def forward(self, pixel_values, pixel_mask=None, **layout):
        outputs = [self.oracle(clip[None]) for clip in pixel_values]
        logits, masks = torch.cat([o.logits for o in outputs]), torch.cat([o.pred_masks for o in outputs])
        return SimpleNamespace(logits=logits, pred_masks=masks)


def test_stitched_clips_give_one_track_per_object_the_same_as_the_streaming_segmenter():
    video, truth = moving_squares(13)
    processor = VisTRVideoProcessor(num_frames=4, num_queries_per_frame=5, size=SMALL, stride=3)
    inputs = processor(video)
    outputs = ClipBatchOracle(4)(**inputs)
    (instances,) = processor.post_process_instance_segmentation(outputs, 0.0, clip_layout=inputs, mask_format="rle")
    assert len(instances) == 3
    for k, masks in truth.items():
        frames = [t for t in range(13) if masks[t].any()]
        tracked = [decode_masks(i["segmentations"], 64, 96) for i in instances if i["label"] == k]
        assert len(tracked) == 1 and all(iou(tracked[0][t], masks[t]) > 0.6 for t in frames)
    streamed = VideoSegmenter(OracleModel(num_frames=4), processor, stride=3)(video)["instances"]
    assert [{k: v for k, v in i.items() if k != "label_name"} for i in streamed] == [
        {k: v for k, v in i.items() if k != "label_name"} for i in instances]


# ----------------------------------------------------------------------------------------------------------
# Scores, labels and masks as the original's post-processing
# ----------------------------------------------------------------------------------------------------------


class Outputs:
    def __init__(self, logits, pred_masks):
        self.logits, self.pred_masks = logits, pred_masks


def assert_same_results(results: list[dict], expected: list[dict]) -> None:
    """Every field identical except the score, which may differ in its last bits: it is a float64 mean over
    frames, and for 8 of the 10 instances its last bit depends on the summation order, which a CPU's vector width
    can change (CI failed the exact comparison on another CPU). The RLEs must be identical: no float64 mask logit
    lies within rounding of the threshold (../shared/parity)."""
    assert len(results) == len(expected)
    for index, (result, reference) in enumerate(zip(results, expected)):
        assert result.keys() == reference.keys(), f"instance {index}: keys"
        for key in ("video_id", "category_id", "segmentations"):
            assert result[key] == reference[key], f"instance {index}: {key} differs"
        assert result["score"] == pytest.approx(reference["score"], rel=1e-12, abs=1e-15), f"instance {index}: score"


def test_post_processing_reproduces_the_original_results_json(parity_dir, reference_fp64):
    reference = reference_fp64["unpadded"]
    processor = VisTRVideoProcessor(num_queries_per_frame=10)
    processed = processor.post_process_video_instance_segmentation(
        Outputs(reference["pred_logits"], reference["pred_masks"]), target_sizes=[(200, 250)]
    )
    results = processor.to_youtube_vis_results(processed, video_ids=[1])
    expected = json.loads((parity_dir / "postprocess.json").read_text())
    assert_same_results(results, expected)
    first = processed[0][0]
    assert first["masks"].shape == (4, 200, 250) and first["masks"].dtype == torch.bool
    frame_scores = torch.tensor([i["frame_scores"] for i in processed[0]], dtype=torch.float64).T
    expected_scores = reference["postprocess.frame_scores"][:, [i["id"] for i in processed[0]]]
    assert (frame_scores - expected_scores).abs().max() <= 1e-12


def test_post_processing_keeps_the_first_frames_of_a_short_video_and_crops_padding(reference_fp64):
    reference = reference_fp64["unpadded"]
    processor = VisTRVideoProcessor()
    outputs = Outputs(reference["pred_logits"].repeat(2, 1, 1), reference["pred_masks"].repeat(2, 1, 1, 1))
    full, short = processor.post_process_video_instance_segmentation(
        outputs, target_sizes=[(200, 250), (100, 125)], video_lengths=[4, 2], processed_sizes=[(128, 160), (64, 80)]
    )
    assert all(len(i["frame_scores"]) == 2 and i["masks"].shape == (2, 100, 125) for i in short)
    # the second video's masks come from the top-left 16x20 cells only (its unpadded area)
    cropped = processor.frame_masks(reference["pred_masks"][0, :1, :16, :20], (100, 125), None)
    assert torch.equal(processor.frame_masks(reference["pred_masks"][0, :1], (100, 125), (64, 80)), cropped)
    assert len(full) == 10


def test_majority_label_ties_go_to_the_smaller_id():
    assert VisTRVideoProcessor.majority_label(torch.tensor([7, 3, 7, 3])) == 3
    assert VisTRVideoProcessor.majority_label(torch.tensor([5, 9, 9])) == 9


# ----------------------------------------------------------------------------------------------------------
# Long videos
# ----------------------------------------------------------------------------------------------------------

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
