"""Seconds to score YouTube-VIS results: by default 1,000 synthetic videos x 100 predictions each.

Ground truth comes from the synthetic generator (annotations only, no pixels). Predictions are made per
video from its ground truth: for each instance a copy with some frames dropped, a box-shaped track around
it (IoU spread over the thresholds) and a copy with a wrong category; the rest are random boxes of random
categories and spans. Everything stays in memory; `--json` also times the same through JSON files (the
`vistr evaluate` path).

    python benchmarks/bench_evaluate.py [--videos 1000 --predictions 100 --seed 0 --json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from vistr.tools.evaluation_youtube_vis import evaluate  # noqa: E402
from vistr.tools.youtube_vis import SyntheticOptions, compress_rle, synthetic_annotations  # noqa: E402


def _box_track(boxes: np.ndarray, height: int, width: int, keep: np.ndarray) -> list:
    """Rectangle masks for `boxes` [T, 4] (x, y, w, h), None where `keep` is False."""
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
    rles = mask_utils.frPyObjects(boxes, height, width)
    return [compress_rle(rle) if kept else None for rle, kept in zip(rles, keep)]


def _random_boxes(rng: np.random.Generator, length: int, height: int, width: int) -> np.ndarray:
    size = rng.uniform(0.05, 0.6, size=2) * (width, height)
    start = rng.uniform(0, 1, size=2) * ((width, height) - size)
    drift = rng.normal(0, 2, size=(length, 2)).cumsum(axis=0)
    return np.concatenate([start + drift, np.broadcast_to(size, (length, 2))], axis=1)


def _predictions_for_video(
    rng: np.random.Generator, video: dict, truths: list[dict], num_categories: int, count: int
) -> list[dict]:
    height, width, length = video["height"], video["width"], video["length"]

    def prediction(category: int, segmentations: list, score: float) -> dict:
        return {"video_id": video["id"], "category_id": category, "score": score, "segmentations": segmentations}

    predictions = []
    for truth in truths:
        kept = rng.random(length) > 0.1
        copy = [rle if keep else None for rle, keep in zip(truth["segmentations"], kept)]
        predictions.append(prediction(truth["category_id"], copy, float(rng.uniform(0.5, 1.0))))
        boxes = np.array([box if box is not None else [0, 0, 1, 1] for box in truth["bboxes"]], dtype=np.float64)
        boxes += rng.normal(0, 2, size=boxes.shape)
        visible = np.array([box is not None for box in truth["bboxes"]])
        box_track = _box_track(boxes, height, width, visible)
        predictions.append(prediction(truth["category_id"], box_track, float(rng.uniform(0.2, 0.9))))
        wrong = int(rng.integers(1, num_categories + 1))
        predictions.append(prediction(wrong, truth["segmentations"], float(rng.uniform(0.0, 0.6))))
    while len(predictions) < count:
        span = np.sort(rng.integers(0, length + 1, size=2))
        keep = (np.arange(length) >= span[0]) & (np.arange(length) <= span[1])
        track = _box_track(_random_boxes(rng, length, height, width), height, width, keep)
        predictions.append(prediction(int(rng.integers(1, num_categories + 1)), track, float(rng.uniform(0.0, 0.7))))
    return predictions[:count]


def make_predictions(ground_truth: dict, count: int, seed: int) -> list[dict]:
    """`count` predictions per video of `ground_truth`, reproducible for a seed."""
    rng = np.random.default_rng(seed)
    by_video: dict[int, list[dict]] = {video["id"]: [] for video in ground_truth["videos"]}
    for annotation in ground_truth["annotations"]:
        by_video[annotation["video_id"]].append(annotation)
    num_categories = len(ground_truth["categories"])
    return [
        prediction
        for video in ground_truth["videos"]
        for prediction in _predictions_for_video(rng, video, by_video[video["id"]], num_categories, count)
    ]


def _timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--predictions", type=int, default=100, help="predictions per video")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-frames", type=int, default=5)
    parser.add_argument("--max-frames", type=int, default=20)
    parser.add_argument("--min-side", type=int, default=96)
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--json", action="store_true", help="also time evaluation from JSON files")
    args = parser.parse_args()
    options = SyntheticOptions(
        min_frames=args.min_frames, max_frames=args.max_frames, min_side=args.min_side, max_side=args.max_side
    )

    ground_truth, gt_seconds = _timed(synthetic_annotations, args.videos, args.seed, options)
    predictions, prediction_seconds = _timed(make_predictions, ground_truth, args.predictions, args.seed)
    metrics, evaluate_seconds = _timed(evaluate, ground_truth, predictions)
    rows = [
        ("synthesize ground truth (no pixels)", gt_seconds),
        ("synthesize predictions", prediction_seconds),
        ("evaluate (in memory)", evaluate_seconds),
    ]
    if args.json:
        with tempfile.TemporaryDirectory() as folder:
            gt_path, results_path = Path(folder, "gt.json"), Path(folder, "results.json")
            gt_path.write_text(json.dumps(ground_truth))
            results_path.write_text(json.dumps(predictions))
            _, json_seconds = _timed(evaluate, gt_path, results_path)
        rows.append(("evaluate (from JSON files)", json_seconds))

    frames = sum(video["length"] for video in ground_truth["videos"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(
        f"data: {args.videos} videos ({frames} frames, sides {args.min_side}-{args.max_side}), "
        f"{len(ground_truth['annotations'])} ground-truth tracks, {len(predictions)} predictions"
    )
    print(f"AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AR100 {metrics['AR100']:.4f}")
    print()
    print("| stage | seconds |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
