"""YouTube-VIS evaluation: hand-computed cases, an independent reference, and every kind of bad input.

The expected numbers never come from `evaluation_youtube_vis`: small cases are worked out by hand in the
comments, and random cases are scored by a reference built on pycocotools' own COCOeval (the class the
official ytvoseval was copied from, with identical matching, accumulation and summary) fed one "image"
per video, the official mean-of-non-empty-frames area, and the official per-frame video IoU loop.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from vistr.tools import cli as vistr_cli
from vistr.tools.evaluation_youtube_vis import ResultsError, evaluate, format_summary
from vistr.tools.youtube_vis import AnnotationError, SyntheticOptions, YouTubeVISError, synthetic_annotations

NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
YTVIS_AREA_RANGES = [[0**2, 1e5**2], [0**2, 128**2], [128**2, 256**2], [256**2, 1e5**2]]


# ----------------------------------------------------------------------------------------------------------
# Building annotation files and results
# ----------------------------------------------------------------------------------------------------------


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(side) for side in rle["size"]], "counts": rle["counts"].decode()}


def box(height: int, width: int, x: int, y: int, w: int, h: int) -> dict:
    """Compressed RLE of the w x h rectangle at (x, y) in a height x width frame."""
    mask = np.zeros((height, width), dtype=bool)
    mask[y : y + h, x : x + w] = True
    return encode(mask)


def area_of(segmentation: dict | None) -> int | None:
    return int(mask_utils.decode(segmentation).sum()) if segmentation else None


def make_video(video_id: int, length: int, height: int = 64, width: int = 64) -> dict:
    file_names = [f"v{video_id}/{frame:05d}.jpg" for frame in range(length)]
    return {"id": video_id, "width": width, "height": height, "length": length, "file_names": file_names}


def make_track(annotation_id: int, video_id: int, segmentations: list, category_id: int = 1, iscrowd: int = 0) -> dict:
    return {
        "id": annotation_id,
        "video_id": video_id,
        "category_id": category_id,
        "segmentations": segmentations,
        "areas": [area_of(segmentation) for segmentation in segmentations],
        "bboxes": [None for _ in segmentations],
        "iscrowd": iscrowd,
    }


def make_result(video_id: int, segmentations: list, score: float, category_id: int = 1) -> dict:
    return {"video_id": video_id, "category_id": category_id, "score": score, "segmentations": segmentations}


def close(expected):
    """Hand-computed values are exact fractions; COCO's precision tp / (tp + fp + eps) is within 1e-15 of them."""
    return pytest.approx(expected, abs=1e-12)


def annotation_file(videos: list[dict], annotations: list[dict], category_ids=(1, 2)) -> dict:
    categories = [{"id": category_id, "name": f"class{category_id}"} for category_id in category_ids]
    return {"videos": videos, "annotations": annotations, "categories": categories}


# ----------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ----------------------------------------------------------------------------------------------------------


def test_perfect_predictions_score_one():
    # Video 1: two class-1 tracks (one absent in frame 1) and a class-2 track; video 2: one class-1 track.
    a = [box(64, 64, 2, 2, 10, 10), None, box(64, 64, 4, 4, 10, 10)]
    b = [box(64, 64, 30, 30, 8, 12)] * 3
    c = [None, box(64, 64, 40, 5, 20, 6), box(64, 64, 41, 5, 20, 6)]
    d = [box(32, 48, 0, 0, 5, 5), box(32, 48, 1, 1, 5, 5)]
    truth = annotation_file(
        [make_video(1, 3), make_video(2, 2, 32, 48)],
        [make_track(1, 1, a), make_track(2, 1, b), make_track(3, 1, c, category_id=2), make_track(4, 2, d)],
    )
    results = [
        make_result(1, a, 0.9),
        make_result(1, b, 0.8),
        make_result(1, c, 0.7, category_id=2),
        make_result(2, d, 0.6),
    ]
    metrics = evaluate(truth, results)
    # Every track is small; nothing is medium or large, so those slices are -1.
    for name in ("AP", "AP50", "AP75", "APs", "AR10", "AR100", "ARs"):
        assert metrics[name] == close(1.0), name
    for name in ("APm", "APl", "ARm", "ARl"):
        assert metrics[name] == close(-1.0), name
    # One result per video and class finds 2 of the 3 class-1 tracks and the class-2 track: (2/3 + 1) / 2.
    assert metrics["AR1"] == close(5 / 6)
    assert list(metrics) == list(NAMES)


def missed_instance_case(false_positive_score: float) -> tuple[dict, list]:
    a = [box(64, 64, 0, 0, 10, 10)] * 2
    b = [box(64, 64, 30, 30, 10, 10)] * 2
    far_away = [box(64, 64, 50, 50, 10, 10)] * 2
    truth = annotation_file([make_video(1, 2)], [make_track(1, 1, a), make_track(2, 1, b)])
    return truth, [make_result(1, a, 0.9), make_result(1, far_away, false_positive_score)]


def test_a_missed_instance_halves_recall():
    # Recall reaches 1/2 with precision 1 and never more: precision 1 at the 51 recall thresholds 0 .. 0.50.
    metrics = evaluate(*missed_instance_case(false_positive_score=0.8))
    assert metrics["AP"] == close(51 / 101)
    assert metrics["AR100"] == close(0.5)
    assert metrics["AR1"] == close(0.5)


def test_a_false_positive_ranked_first_halves_precision():
    # The false positive comes first, so the true positive is reached at precision 1/2.
    metrics = evaluate(*missed_instance_case(false_positive_score=0.95))
    assert metrics["AP"] == close(0.5 * 51 / 101)
    assert metrics["AR100"] == close(0.5)
    assert metrics["AR1"] == close(0.0)  # the single allowed result is the false positive


def test_crowd_ground_truth_absorbs_results_with_plain_video_iou():
    crowd = [box(64, 64, 0, 0, 32, 32)] * 2
    quarter_of_crowd = [box(64, 64, 0, 0, 16, 16)] * 2
    person = [box(64, 64, 40, 40, 10, 10)] * 2
    truth = annotation_file([make_video(1, 2)], [make_track(1, 1, crowd, iscrowd=1), make_track(2, 1, person)])
    results = [
        make_result(1, quarter_of_crowd, 0.95),  # IoU 1/4 with the crowd (COCO's crowd IoU: 1): a false positive
        make_result(1, crowd, 0.9),  # matches the crowd: ignored
        make_result(1, crowd, 0.85),  # a crowd takes any number of results: ignored too
        make_result(1, person, 0.8),  # true positive, second of the two scored results
    ]
    metrics = evaluate(truth, results)
    assert metrics["AP"] == close(0.5)
    assert metrics["AR100"] == close(1.0)


def test_mean_area_of_exactly_128_squared_is_small_and_medium():
    # Ground-truth area is the mean of its non-empty `areas` (None skipped): 128^2, in both inclusive ranges.
    # The prediction's middle frame is an empty mask: area 0 is skipped for results too, and adds nothing.
    square = box(260, 260, 10, 10, 128, 128)
    empty = encode(np.zeros((260, 260), dtype=bool))
    truth = annotation_file([make_video(1, 3, 260, 260)], [make_track(1, 1, [square, None, square])])
    assert truth["annotations"][0]["areas"] == [128**2, None, 128**2]
    metrics = evaluate(truth, [make_result(1, [square, empty, square], 0.9)])
    assert (metrics["APs"], metrics["APm"], metrics["APl"]) == close((1.0, 1.0, -1.0))
    assert (metrics["ARs"], metrics["ARm"], metrics["ARl"]) == close((1.0, 1.0, -1.0))


def test_area_of_exactly_256_squared_is_medium_and_large():
    square = [box(260, 260, 2, 2, 256, 256)]
    truth = annotation_file([make_video(1, 1, 260, 260)], [make_track(1, 1, square)])
    metrics = evaluate(truth, [make_result(1, square, 0.9)])
    assert (metrics["APs"], metrics["APm"], metrics["APl"]) == close((-1.0, 1.0, 1.0))


def test_unmatched_result_of_exactly_128_squared_counts_as_medium():
    # A 150 x 150 ground truth (medium) found second, after a non-overlapping-enough 128 x 128 false
    # positive: that one is inside the medium range (inclusive), so it counts there: APm = 1/2.
    truth_mask = [box(260, 260, 0, 0, 150, 150)]
    truth = annotation_file([make_video(1, 1, 260, 260)], [make_track(1, 1, truth_mask)])
    results = [make_result(1, [box(260, 260, 132, 132, 128, 128)], 0.9), make_result(1, truth_mask, 0.8)]
    metrics = evaluate(truth, results)
    assert metrics["APm"] == close(0.5)
    assert metrics["AP"] == close(0.5)
    assert metrics["APs"] == close(-1.0)  # the only ground truth is outside the small range


@pytest.mark.parametrize("true_positive_first, expected_ap", [(True, 1.0), (False, 0.5)])
def test_score_ties_keep_file_order_within_a_video(true_positive_first, expected_ap):
    truth_mask = [box(64, 64, 0, 0, 10, 10)]
    truth = annotation_file([make_video(1, 1)], [make_track(1, 1, truth_mask)])
    hit, miss = make_result(1, truth_mask, 0.5), make_result(1, [box(64, 64, 40, 40, 10, 10)], 0.5)
    results = [hit, miss] if true_positive_first else [miss, hit]
    assert evaluate(truth, results)["AP"] == close(expected_ap)


def test_score_ties_across_videos_follow_video_id_order():
    # Video 1 (listed second) has only a false positive, video 2 a true positive, both at score 0.5. Videos
    # are taken in id order, so the false positive ranks first: precision 1/2 at full recall.
    truth_mask = [box(64, 64, 0, 0, 10, 10)]
    truth = annotation_file([make_video(2, 1), make_video(1, 1)], [make_track(1, 2, truth_mask)])
    results = [make_result(2, truth_mask, 0.5), make_result(1, truth_mask, 0.5)]
    assert evaluate(truth, results)["AP"] == close(0.5)


def none_frames_case(result_frames: list) -> tuple[dict, list]:
    a = box(64, 64, 0, 0, 10, 10)  # area 100, in both
    b = box(64, 64, 30, 30, 5, 6)  # area 30, ground truth only (the result has None)
    truth = annotation_file([make_video(1, 3)], [make_track(1, 1, [a, None, b])])
    return truth, [make_result(1, [a, *result_frames], 0.9)]


def test_frames_where_only_one_side_has_a_mask_add_to_the_union():
    # IoU = 100 / (100 + 30 + 30) = 0.625: matched at IoU thresholds 0.50, 0.55, 0.60 only.
    c = box(64, 64, 50, 0, 5, 6)  # area 30, result only
    metrics = evaluate(*none_frames_case([c, None]))
    assert (metrics["AP50"], metrics["AP75"]) == close((1.0, 0.0))
    assert metrics["AP"] == close(3 / 10)
    assert metrics["AR100"] == close(3 / 10)


def test_frame_count_mismatch_pairs_frames_up_to_the_shorter_track():
    c = box(64, 64, 50, 0, 5, 6)
    # Two frames against three: the ground truth's third frame is not paired, IoU = 100 / 130 ~ 0.77,
    # matched at 0.50 .. 0.75 (6 of the 10 thresholds).
    with pytest.warns(UserWarning, match="one segmentation per frame"):
        metrics = evaluate(*none_frames_case([c]))
    assert metrics["AP"] == close(6 / 10)
    assert metrics["AP75"] == close(1.0)
    # Four frames against three: the fourth is not paired, IoU stays 100 / 160 as with three.
    with pytest.warns(UserWarning, match="one segmentation per frame"):
        metrics = evaluate(*none_frames_case([c, None, box(64, 64, 0, 40, 20, 20)]))
    assert metrics["AP"] == close(3 / 10)


def test_results_of_unlisted_categories_are_dropped():
    truth, results = missed_instance_case(false_positive_score=0.8)
    extra = make_result(1, results[0]["segmentations"], 0.99, category_id=99)
    with pytest.warns(UserWarning, match=r"1 results have a category_id that is not in the annotation file"):
        assert evaluate(truth, [extra, *results]) == evaluate(truth, results)


def test_inputs_are_not_modified():
    truth, results = missed_instance_case(false_positive_score=0.8)
    truth_before, results_before = copy.deepcopy(truth), copy.deepcopy(results)
    evaluate(truth, results)
    assert truth == truth_before and results == results_before


# ----------------------------------------------------------------------------------------------------------
# Independent reference: pycocotools' COCOeval with videos as images
# ----------------------------------------------------------------------------------------------------------


def official_rle(segmentation, video: dict):
    """A ground-truth frame as the official `annToRLE` converts it."""
    if not segmentation:
        return None
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, video["height"], video["width"]))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, video["height"], video["width"])
    return segmentation


def official_mean_area(areas: list) -> float:
    nonempty = [area for area in areas if area]
    return np.array(nonempty).mean() if nonempty else 0


def official_video_iou(result_frames: list, truth_frames: list) -> float:
    """ytvoseval's iou_seq, frame by frame."""
    intersection = union = 0.0
    for result, truth in zip(result_frames, truth_frames):
        if result and truth:
            intersection += mask_utils.area(mask_utils.merge([result, truth], True))
            union += mask_utils.area(mask_utils.merge([result, truth], False))
        elif truth:
            union += mask_utils.area(truth)
        elif result:
            union += mask_utils.area(result)
    return intersection / union if union > 0 else 0.0


class VideoCOCOeval(COCOeval):
    """COCOeval whose IoU is the video IoU of the official evaluator; everything else is COCOeval's own."""

    def computeIoU(self, imgId, catId):  # noqa: N802, N803 (COCOeval's names)
        truths, results = self._gts[imgId, catId], self._dts[imgId, catId]
        if not truths and not results:
            return []
        order = np.argsort([-result["score"] for result in results], kind="mergesort")[: self.params.maxDets[-1]]
        ious = np.zeros((len(order), len(truths)))
        for row, index in enumerate(order):
            for column, truth in enumerate(truths):
                ious[row, column] = official_video_iou(results[index]["frames"], truth["frames"])
        return ious


def coco_index(images: list, annotations: list, categories: list) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def run_coco_eval(evaluator: COCOeval) -> dict[str, float]:
    evaluator.params.areaRng = YTVIS_AREA_RANGES
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(NAMES, (float(value) for value in evaluator.stats)))


def reference_metrics(truth: dict, results: list) -> dict[str, float]:
    videos = {video["id"]: video for video in truth["videos"]}
    images = [{"id": video["id"], "height": video["height"], "width": video["width"]} for video in truth["videos"]]
    truths = [
        {
            "id": annotation["id"],
            "image_id": annotation["video_id"],
            "category_id": annotation["category_id"],
            "iscrowd": annotation["iscrowd"],
            "area": official_mean_area(annotation["areas"]),
            "frames": [official_rle(frame, videos[annotation["video_id"]]) for frame in annotation["segmentations"]],
        }
        for annotation in truth["annotations"]
    ]
    predictions = [
        {
            "id": index + 1,
            "image_id": result["video_id"],
            "category_id": result["category_id"],
            "score": result["score"],
            "iscrowd": 0,
            "area": official_mean_area([mask_utils.area(f) if f else None for f in result["segmentations"]]),
            "frames": result["segmentations"],
        }
        for index, result in enumerate(results)
    ]
    categories = truth["categories"]
    coco_truth, coco_results = coco_index(images, truths, categories), coco_index(images, predictions, categories)
    evaluator = VideoCOCOeval(coco_truth, coco_results, "bbox")
    return run_coco_eval(evaluator)


def assert_metrics_equal(ours: dict, reference: dict) -> None:
    assert list(ours) == list(NAMES)
    for name in NAMES:
        assert abs(ours[name] - reference[name]) <= 1e-9, (name, ours[name], reference[name])


# ----------------------------------------------------------------------------------------------------------
# Random cases
# ----------------------------------------------------------------------------------------------------------


def shape_mask(height: int, width: int, box_xywh: np.ndarray, ellipse: bool) -> np.ndarray:
    x, y, w, h = box_xywh
    rows, columns = np.mgrid[0:height, 0:width] + 0.5
    if ellipse:
        return ((columns - x - w / 2) / (w / 2)) ** 2 + ((rows - y - h / 2) / (h / 2)) ** 2 <= 1.0
    return (columns >= x) & (columns < x + w) & (rows >= y) & (rows < y + h)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Uncompressed RLE (counts as a list, zeros first, column-major), as in YouTube-VIS 2019 train."""
    flat = mask.flatten(order="F")
    boundaries = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], boundaries, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": [0] + runs if flat[0] else runs}


def rectangle_polygon(box_xywh: np.ndarray) -> list:
    x, y, w, h = (float(value) for value in box_xywh)
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


class RandomCase:
    """A random annotation file and results, with every feature the evaluator must get right."""

    def __init__(self, seed: int, *, max_length: int = 6, absent: float = 0.25, crowd: float = 0.2, one_frame=False):
        self.rng = np.random.default_rng(seed)
        self.absent, self.crowd_probability, self.one_frame = absent, crowd, one_frame
        self.category_ids = [7, 3, 11]
        self.videos, self.annotations, self.results = [], [], []
        for video_id in self.rng.permutation(np.arange(1, 9)).tolist():  # listed out of id order
            length = 1 if one_frame else int(self.rng.integers(1, max_length + 1))
            height, width = (int(side) for side in self.rng.integers(40, 480, size=2))
            self.videos.append(make_video(video_id, length, height, width))
            self.add_video(self.videos[-1])

    def boxes(self, video: dict) -> np.ndarray:
        height, width, length = video["height"], video["width"], video["length"]
        size = self.rng.uniform(0.05, 0.9, size=2) * (width, height)
        start = self.rng.uniform(0, 1, size=2) * ((width, height) - size)
        drift = self.rng.normal(0, 0.03 * min(width, height), size=(length, 2)).cumsum(axis=0)
        return np.concatenate([start + drift, np.broadcast_to(size, (length, 2))], axis=1)

    def present(self, length: int) -> np.ndarray:
        return self.rng.random(length) >= self.absent

    def add_video(self, video: dict) -> None:
        for _ in range(int(self.rng.integers(0, 4))):
            boxes, present, ellipse = self.boxes(video), self.present(video["length"]), bool(self.rng.random() < 0.5)
            masks = [shape_mask(video["height"], video["width"], box_xywh, ellipse) for box_xywh in boxes]
            category = int(self.rng.choice(self.category_ids))
            self.add_truth(video, boxes, masks, present, ellipse, category)
            for _ in range(int(self.rng.integers(0, 4))):
                self.add_prediction_near(video, boxes, ellipse, category)
        for _ in range(int(self.rng.integers(0, 5))):
            self.add_prediction_near(video, self.boxes(video), bool(self.rng.random() < 0.5), self.category_ids[0])

    def add_truth(
        self, video: dict, boxes: np.ndarray, masks: list, present: np.ndarray, ellipse: bool, category: int
    ) -> None:
        segmentations, areas = [], []
        for box_xywh, mask, visible in zip(boxes, masks, present):
            form = self.rng.integers(3) if not ellipse else self.rng.integers(2)
            if not visible or not mask.any():
                segmentations.append(None if self.rng.random() < 0.5 else [])
            elif form == 0:
                segmentations.append(encode(mask))
            elif form == 1:
                segmentations.append(uncompressed_rle(mask))
            else:
                segmentations.append(rectangle_polygon(box_xywh))
            rle = official_rle(segmentations[-1], video)
            areas.append(int(mask_utils.area(rle)) if rle else None)
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "video_id": video["id"],
                "category_id": category,
                "segmentations": segmentations,
                "areas": areas,
                "bboxes": [None] * len(segmentations),
                "iscrowd": int(self.rng.random() < self.crowd_probability),
            }
        )

    def add_prediction_near(self, video: dict, boxes: np.ndarray, ellipse: bool, category: int) -> None:
        """A prediction of `category` around `boxes`; sometimes of another or an unlisted category instead."""
        boxes = boxes + self.rng.normal(0, 0.1, size=boxes.shape) * boxes[:, 2:].repeat(2, axis=1)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 2.0)
        present = np.ones(video["length"], dtype=bool) if self.one_frame else self.present(video["length"])
        segmentations = [
            encode(shape_mask(video["height"], video["width"], box_xywh, ellipse)) if visible else None
            for box_xywh, visible in zip(boxes, present)
        ]
        if not self.one_frame and self.rng.random() < 0.2:  # too few or too many frames
            extra = encode(shape_mask(video["height"], video["width"], boxes[-1], ellipse))
            segmentations = segmentations[:-1] if self.rng.random() < 0.5 else [*segmentations, extra]
        if self.rng.random() < 0.3:
            category = int(self.rng.choice(self.category_ids))
        if self.rng.random() < 0.05:
            category = 99  # unlisted: dropped
        score = float(np.round(self.rng.random(), 1))  # coarse, so that ties are frequent
        self.results.append(make_result(video["id"], segmentations, score, category))

    def truth(self) -> dict:
        shuffled = [self.annotations[index] for index in self.rng.permutation(len(self.annotations))]
        categories = [{"id": category_id, "name": f"class{category_id}"} for category_id in self.category_ids]
        return {"videos": self.videos, "annotations": shuffled, "categories": categories}


def describe(truth: dict, results: list) -> set[str]:
    """Which of the features the random cases are meant to exercise this case has."""
    lengths = {video["id"]: video["length"] for video in truth["videos"]}
    scores = [result["score"] for result in results]
    areas = [official_mean_area(annotation["areas"]) for annotation in truth["annotations"]]
    features = {
        "crowd": any(annotation["iscrowd"] for annotation in truth["annotations"]),
        "truth None": any(not frame for annotation in truth["annotations"] for frame in annotation["segmentations"]),
        "result None": any(frame is None for result in results for frame in result["segmentations"]),
        "frame-count mismatch": any(len(result["segmentations"]) != lengths[result["video_id"]] for result in results),
        "score ties": len(set(scores)) < len(scores),
        "polygons": any(isinstance(f, list) and f for a in truth["annotations"] for f in a["segmentations"]),
        "medium": any(128**2 < area < 256**2 for area in areas),
        "large": any(area > 256**2 for area in areas),
    }
    return {name for name, present in features.items() if present}


@pytest.mark.filterwarnings("ignore:.*one segmentation per frame", "ignore:.*category_id that is not in")
@pytest.mark.parametrize("seed", range(6))
def test_equals_reference_on_random_cases(seed):
    case = RandomCase(seed)
    truth, results = case.truth(), case.results
    ours, reference = evaluate(truth, results), reference_metrics(truth, results)
    assert_metrics_equal(ours, reference)
    assert 0.0 < reference["AP"] < 1.0  # a case that scores everything 0, 1 or -1 would prove little


def test_random_cases_exercise_every_feature():
    features = set()
    for seed in range(6):
        case = RandomCase(seed)
        features |= describe(case.truth(), case.results)
    assert features == {
        "crowd", "truth None", "result None", "frame-count mismatch", "score ties", "polygons", "medium", "large"
    }


@pytest.mark.filterwarnings("ignore:.*one segmentation per frame", "ignore:.*category_id that is not in")
def test_only_the_100_best_results_per_video_and_category_count():
    case = RandomCase(11)
    annotation = next(annotation for annotation in case.annotations if not annotation["iscrowd"])
    video = next(video for video in case.videos if video["id"] == annotation["video_id"])
    for _ in range(100):
        case.add_prediction_near(video, case.boxes(video), False, annotation["category_id"])
        case.results[-1].update(category_id=annotation["category_id"], score=1.0)
    truth, results = case.truth(), case.results
    found_too_late = make_result(video["id"], annotation["segmentations"], 0.0, annotation["category_id"])
    ours = evaluate(truth, [*results, found_too_late])
    assert_metrics_equal(ours, reference_metrics(truth, [*results, found_too_late]))
    assert ours == evaluate(truth, results)  # the perfect 101st result is not scored


@pytest.mark.filterwarnings("ignore:.*one segmentation per frame", "ignore:.*category_id that is not in")
def test_duplicate_annotation_ids_are_resolved_as_the_official_index_does():
    # Both indexes keep the last annotation of an id and load by id, so it is scored in place of the first.
    case = RandomCase(4)
    truth, results = case.truth(), case.results
    first, second = truth["annotations"][:2]
    assert (first["video_id"], first["segmentations"]) != (second["video_id"], second["segmentations"])
    second["id"] = first["id"]
    with pytest.warns(UserWarning, match="annotation ids are not unique"):
        ours = evaluate(truth, results)
    assert_metrics_equal(ours, reference_metrics(truth, results))


def test_equals_reference_on_synthetic_ground_truth():
    truth = synthetic_annotations(12, seed=5, options=SyntheticOptions(min_side=64, max_side=320, max_frames=8))
    rng = np.random.default_rng(5)
    for annotation in truth["annotations"]:
        annotation["iscrowd"] = int(rng.random() < 0.1)
    videos = {video["id"]: video for video in truth["videos"]}
    results = []
    for annotation in truth["annotations"]:
        video = videos[annotation["video_id"]]
        for _ in range(2):  # the track with frames dropped, shifted by a few pixels
            shift = rng.integers(-6, 7, size=2)
            frames = [
                encode(np.roll(mask_utils.decode(frame).astype(bool), shift, axis=(0, 1))) if frame and keep else None
                for frame, keep in zip(annotation["segmentations"], rng.random(video["length"]) > 0.15)
            ]
            category = annotation["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 7))
            results.append(make_result(video["id"], frames, float(np.round(rng.random(), 2)), category))
    assert_metrics_equal(evaluate(truth, results), reference_metrics(truth, results))


@pytest.mark.filterwarnings("ignore:.*category_id that is not in")
def test_one_frame_videos_equal_coco_segmentation_metrics():
    case = RandomCase(21, absent=0.0, crowd=0.0, one_frame=True)
    truth, results = case.truth(), case.results
    images = [{"id": video["id"], "height": video["height"], "width": video["width"]} for video in truth["videos"]]
    videos = {video["id"]: video for video in truth["videos"]}
    coco_truths = [
        {
            "id": annotation["id"],
            "image_id": annotation["video_id"],
            "category_id": annotation["category_id"],
            "iscrowd": 0,
            "area": annotation["areas"][0],
            "segmentation": official_rle(annotation["segmentations"][0], videos[annotation["video_id"]]),
        }
        for annotation in truth["annotations"]
    ]
    coco_results = [
        {
            "image_id": result["video_id"],
            "category_id": result["category_id"],
            "score": result["score"],
            "segmentation": result["segmentations"][0],
        }
        for result in results
    ]
    coco_truth = coco_index(images, coco_truths, truth["categories"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_detections = coco_truth.loadRes(copy.deepcopy(coco_results))
    reference = run_coco_eval(COCOeval(coco_truth, coco_detections, "segm"))
    assert_metrics_equal(evaluate(truth, results), reference)
    assert 0.0 < reference["AP"] < 1.0


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------


def valid_pair() -> tuple[dict, list]:
    return missed_instance_case(false_positive_score=0.8)


def polygon_frame(results):
    results[0]["segmentations"][0] = [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0]]


def uncompressed_frame(results):
    results[0]["segmentations"][1] = uncompressed_rle(np.ones((64, 64), dtype=bool))


def wrong_size(results):
    results[1]["segmentations"][0] = box(32, 64, 0, 0, 5, 5)


def unknown_video(results):
    results[1]["video_id"] = 42


def no_score(results):
    del results[0]["score"]


def nan_score(results):
    results[1]["score"] = math.nan


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (unknown_video, r"result #1 \(video 42\) is for video 42, which is not in the annotation file"),
        (wrong_size, r"result #1 \(video 1\), frame 0: RLE size \[32, 64\] is not the video's .* \[64, 64\]"),
        (polygon_frame, r"result #0 \(video 1\), frame 0: polygons are not accepted"),
        (uncompressed_frame, r"result #0 \(video 1\), frame 1: .*uncompressed RLE is not accepted"),
        (no_score, r"result #0 \(video 1\) has no 'score'"),
        (nan_score, r"result #1 \(video 1\): score must be a finite number"),
    ],
)
def test_bad_results_name_the_result_and_video(corrupt, message):
    truth, results = valid_pair()
    corrupt(results)
    with pytest.raises(ResultsError, match=message):
        evaluate(truth, results)


@pytest.mark.parametrize("results, message", [([], "the results list is empty"), ({"video_id": 1}, "JSON list")])
def test_results_must_be_a_non_empty_list(results, message):
    with pytest.raises(ResultsError, match=message):
        evaluate(valid_pair()[0], results)


@pytest.mark.parametrize(
    "section, index, field, message",
    [
        ("videos", 0, "height", 'video 1 has no "height" field'),
        ("annotations", 1, "areas", r'annotation 2 \(video 1\) has no "areas" field'),
        ("annotations", 0, "iscrowd", r'annotation 1 \(video 1\) has no "iscrowd" field'),
        ("annotations", 0, "segmentations", r'annotation 1 \(video 1\) has no "segmentations" field'),
        ("annotations", 0, "video_id", 'annotation 1 has no "video_id" field'),
        ("categories", 0, "id", 'category #0 has no "id" field'),
        ("annotations", None, None, 'the annotation file has no "annotations" list'),
        ("videos", None, None, 'the annotation file has no "videos" list'),
    ],
)
def test_annotation_files_missing_required_fields_are_named(section, index, field, message):
    truth, results = valid_pair()
    if index is None:
        del truth[section]
    else:
        del truth[section][index][field]
    with pytest.raises(AnnotationError, match=message):
        evaluate(truth, results)


def test_malformed_ground_truth_segmentation_is_named():
    truth, results = valid_pair()
    truth["annotations"][1]["segmentations"][1] = {"counts": 17}
    with pytest.raises(AnnotationError, match=r"annotation 2 \(video 1\), frame 1: segmentation is neither"):
        evaluate(truth, results)


def test_unreadable_files_are_named(tmp_path):
    not_json = tmp_path / "broken.json"
    not_json.write_text("{not json")
    with pytest.raises(YouTubeVISError, match="annotation file .*broken.json is not valid JSON"):
        evaluate(not_json, [])
    with pytest.raises(YouTubeVISError, match="results file .*missing.json does not exist"):
        evaluate(valid_pair()[0], tmp_path / "missing.json")


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def write_pair(folder, truth: dict, results) -> tuple[str, str]:
    truth_path, results_path = folder / "truth.json", folder / "results.json"
    truth_path.write_text(json.dumps(truth))
    results_path.write_text(json.dumps(results))
    return str(truth_path), str(results_path)


def test_cli_prints_the_summary_then_one_json_line(tmp_path, capsys):
    truth, results = valid_pair()
    truth_path, results_path = write_pair(tmp_path, truth, results)
    vistr_cli.main(["evaluate", "--annotations", truth_path, "--results", results_path])
    lines = capsys.readouterr().out.splitlines()
    metrics = json.loads(lines[-1])
    assert list(metrics) == list(NAMES)
    assert metrics == evaluate(truth, results)
    assert lines[:-1] == format_summary(metrics).splitlines()
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.50")


def test_cli_reports_bad_results_without_a_traceback(tmp_path):
    truth, results = valid_pair()
    unknown_video(results)
    truth_path, results_path = write_pair(tmp_path, truth, results)
    with pytest.raises(SystemExit) as exit_info:
        vistr_cli.main(["evaluate", "--annotations", truth_path, "--results", results_path])
    assert str(exit_info.value.code).startswith("error: result #1 (video 42) is for video 42")


def test_score_results_gives_zeros_when_nothing_was_found():
    from vistr.tools.evaluation_youtube_vis import METRIC_NAMES, ResultsError, evaluate, score_results

    truth = {"videos": [{"id": 1, "width": 4, "height": 4, "length": 1}], "categories": [{"id": 1, "name": "a"}],
             "annotations": []}
    with pytest.raises(ResultsError):  # the evaluator itself refuses an empty list, as the official one does
        evaluate(truth, [])
    assert score_results(truth, []) == dict.fromkeys(METRIC_NAMES, 0.0)
