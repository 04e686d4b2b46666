"""YouTube-VIS evaluation, giving the numbers of the official evaluator without its git-installed fork.

    vistr evaluate --annotations valid.json --results results.json   # last stdout line: the 12 numbers as JSON
    metrics = evaluate("valid.json", "results.json")          # {"AP": ..., "AP50": ..., ..., "ARl": ...}

The official evaluator (`ytvoseval.py` in the youtubevos fork of cocoapi) is COCOeval with videos for
images. This module reproduces its arithmetic exactly (float64, same sort orders, same summation), also
where it is surprising, because the point is numbers comparable with published ones:

- video IoU of a result and a ground-truth track = sum over frames of intersections / sum of unions,
  pairing frames up to the shorter of the two lists (a frame-count mismatch is not an error there);
  a frame where only one side has a mask adds that mask's area to the union; a frame where both have
  masks of different sizes adds nothing (unreachable here: every mask must have its video's size); IoU is
  0 when the union is empty;
- crowd ground truth (`iscrowd`) is ignored for scoring and may absorb any number of results, but its IoU
  is the plain one above (COCO's crowd IoU, intersection / result area, is not used);
- instance area = mean of the non-empty per-frame areas (ground truth: its `areas` field; results: their
  masks); area ranges [0, 128^2], [128^2, 256^2], [256^2, 1e10] with both ends inclusive;
- at most 100 results per video and category, ordered by score with a stable sort (ties keep file order);
- greedy matching, 101-point interpolated precision, -1 for a slice without ground truth, mean over
  IoU thresholds 0.50:0.05:0.95 and categories, exactly as COCOeval does;
- results whose category is not in the annotation file are dropped, as the official loader drops them.

Unlike the official one it is vectorized (one C call per frame for all pairs of a video and category)
and it rejects malformed input with a message naming the result (or annotation), its video and frame,
instead of a traceback, a silently wrong number or a hang: every RLE, of the results and of the ground
truth, must have the video's [height, width] as its size and counts that decode to exactly
height x width pixels, checked by a decoder of its own before pycocotools (which loops forever on
counts that do not add up) sees it; scores must be finite numbers; ids must be integers, and video and
category ids unique (the official index silently keeps the last record of an id).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm.auto import tqdm
from vistr.tools.youtube_vis import (
    AnnotationError,
    YouTubeVISError,
    check_annotation_fields,
    describe_value,
    is_integer,
    read_json,
    rle_areas,
)

# The official parameters (ytvoseval.Params.setDetParams), built the same way so the floats are identical.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES = {
    "all": (0**2, 1e5**2),
    "small": (0**2, 128**2),
    "medium": (128**2, 256**2),
    "large": (256**2, 1e5**2),
}
# The 12 standard numbers: name -> (curve, IoU threshold or None for the mean over all, area range, max detections).
_METRIC_SLICES = {
    "AP": ("precision", None, "all", 100),
    "AP50": ("precision", 0.5, "all", 100),
    "AP75": ("precision", 0.75, "all", 100),
    "APs": ("precision", None, "small", 100),
    "APm": ("precision", None, "medium", 100),
    "APl": ("precision", None, "large", 100),
    "AR1": ("recall", None, "all", 1),
    "AR10": ("recall", None, "all", 10),
    "AR100": ("recall", None, "all", 100),
    "ARs": ("recall", None, "small", 100),
    "ARm": ("recall", None, "medium", 100),
    "ARl": ("recall", None, "large", 100),
}
METRIC_NAMES = tuple(_METRIC_SLICES)

# Fields the evaluation reads; the dataset loader needs more (youtube_vis.LOADER_*_FIELDS).
VIDEO_FIELDS = ("id", "width", "height")
ANNOTATION_FIELDS = ("id", "video_id", "category_id", "segmentations", "areas", "iscrowd")
CATEGORY_FIELDS = ("id",)
RESULT_FIELDS = ("video_id", "category_id", "score", "segmentations")


class ResultsError(YouTubeVISError):
    """A results file that cannot be scored; the message names the result and its video."""


# ----------------------------------------------------------------------------------------------------------
# Tracks: ground truth and results of one video and category, as per-frame RLE
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Tracks:
    """Instances of one video and category in file order. `frames[i][f]` is instance i's RLE at frame f,
    None where it has none; `ids`, `scores` and `crowd` are filled on the side they exist for."""

    frames: list[list[dict | None]]
    areas: list[float]
    ids: list[int]
    scores: list[float]
    crowd: list[int]
    ignore: list[bool]


def _new_tracks() -> _Tracks:
    return _Tracks(frames=[], areas=[], ids=[], scores=[], crowd=[], ignore=[])


def _mean_nonempty_area(areas: Sequence) -> float:
    """Instance area as the official `avg_area`: mean of the truthy per-frame areas (None and 0 skipped)."""
    nonempty = [area for area in areas if area]
    return float(np.array(nonempty).mean()) if nonempty else 0.0


def _ground_truth_rle(segmentation: Any, height: int, width: int, name: str) -> dict | None:
    """One ground-truth frame as RLE, converted like the official `annToRLE` (polygons are rasterized at
    the video's size and merged; uncompressed RLE is compressed). An RLE's size must be the video's and
    uncompressed counts must add up to it; compressed counts are checked later, all at once."""
    if not segmentation:
        return None
    is_dict = isinstance(segmentation, dict)
    if is_dict and "size" in segmentation and isinstance(segmentation.get("counts"), (str, bytes, list)):
        problem = _size_problem(segmentation["size"], height, width)
        if problem is None and isinstance(segmentation["counts"], list):
            problem = _uncompressed_counts_problem(segmentation["counts"], height, width)
        if problem is not None:
            raise AnnotationError(f"{name}: {problem}")
        if not isinstance(segmentation["counts"], list):
            return segmentation
    try:
        if isinstance(segmentation, list):
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        if is_dict and isinstance(segmentation.get("counts"), list):
            return mask_utils.frPyObjects(segmentation, height, width)
    except Exception as error:  # pycocotools raises bare Exceptions on malformed polygons and counts
        raise AnnotationError(f"{name}: segmentation is neither polygons nor RLE ({error})") from None
    raise AnnotationError(f"{name}: segmentation is neither polygons, RLE (size, counts) nor null")


def _check_video_sizes(videos: Mapping[int, dict]) -> None:
    """Video sizes are what every mask is checked against, so they must be positive integers."""
    for video_id, video in videos.items():
        for side in ("height", "width"):
            value = video[side]
            if not is_integer(value) or value <= 0:
                raise AnnotationError(
                    f'video {video_id}: "{side}" must be a positive integer, not {describe_value(value)}'
                )


def _load_ground_truth(data: Mapping) -> tuple[dict[int, dict], list[int], dict[tuple[int, int], _Tracks]]:
    """Videos by id, the sorted category ids, and ground-truth tracks per (video, category).

    Gathered the way the official index does: videos in id order, each video's annotations in file
    order, only those of listed videos and categories. That index also keeps one annotation per id (the
    last) and loads by id, so with duplicate ids the last annotation stands in for the others; that is
    reproduced too, with a warning, since the numbers must match.
    """
    check_annotation_fields(
        data,
        video_fields=VIDEO_FIELDS,
        annotation_fields=ANNOTATION_FIELDS,
        category_fields=CATEGORY_FIELDS,
        require_annotations=True,
    )
    videos = {video["id"]: video for video in data["videos"]}
    _check_video_sizes(videos)
    category_ids = sorted({category["id"] for category in data["categories"]})
    known_categories = set(category_ids)
    by_id = {annotation["id"]: annotation for annotation in data["annotations"]}
    if len(by_id) != len(data["annotations"]):
        warnings.warn(
            "annotation ids are not unique; as in the official evaluator, the last annotation with an id is "
            "scored in place of every annotation sharing it",
            stacklevel=3,
        )
    by_video = defaultdict(list)
    for annotation in data["annotations"]:
        by_video[annotation["video_id"]].append(annotation)
    groups: dict[tuple[int, int], _Tracks] = defaultdict(_new_tracks)
    for video_id in sorted(videos):
        for listed in by_video[video_id]:
            annotation = by_id[listed["id"]]
            video = videos.get(annotation["video_id"])
            if listed["category_id"] in known_categories and video is not None:
                _add_ground_truth(groups[annotation["video_id"], annotation["category_id"]], annotation, video)
    rles, places = [], []
    for tracks in groups.values():
        for annotation_id, frames in zip(tracks.ids, tracks.frames):
            rles.extend(rle for rle in frames if rle is not None)
            places.extend((annotation_id, frame) for frame, rle in enumerate(frames) if rle is not None)

    def name(index: int) -> str:
        annotation_id, frame = places[index]
        return f"annotation {annotation_id} (video {by_id[annotation_id]['video_id']}), frame {frame}"

    _check_compressed_counts(rles, name, AnnotationError)
    return videos, category_ids, groups


def _add_ground_truth(tracks: _Tracks, annotation: dict, video: dict) -> None:
    name = f"annotation {annotation['id']} (video {annotation['video_id']})"
    frames = [
        _ground_truth_rle(segmentation, video["height"], video["width"], f"{name}, frame {frame}")
        for frame, segmentation in enumerate(annotation["segmentations"])
    ]
    try:
        area = _mean_nonempty_area(annotation["areas"])
        # The official code ignores a ground truth when `iscrowd` is truthy but lets it absorb several
        # results only when int(iscrowd) is non-zero; the two agree for the usual 0 and 1.
        crowd = int(annotation["iscrowd"])
    except (TypeError, ValueError):
        raise AnnotationError(f'{name}: "areas" must hold numbers or null, and "iscrowd" must be 0 or 1') from None
    tracks.frames.append(frames)
    tracks.areas.append(area)
    tracks.ids.append(annotation["id"])
    tracks.ignore.append(bool(annotation["iscrowd"]))
    tracks.crowd.append(crowd)


def _check_result(result: Any, index: int, videos: Mapping[int, dict]) -> list[dict | None]:
    """Validate one result; return its per-frame segmentations with every falsy entry as None."""
    if not isinstance(result, dict):
        raise ResultsError(f"result #{index} is not a JSON object")
    for field in ("video_id", "category_id"):
        if field in result and not is_integer(result[field]):
            raise ResultsError(
                f'result #{index}: "{field}" must be an integer id from the annotation file, not '
                f"{describe_value(result[field])}"
            )
    missing = [field for field in RESULT_FIELDS if field not in result]
    name = f"result #{index} (video {result.get('video_id')})"
    if missing:
        raise ResultsError(f"{name} has no {', '.join(repr(field) for field in missing)}")
    video = videos.get(result["video_id"])
    if video is None:
        raise ResultsError(f"{name} is for video {result['video_id']}, which is not in the annotation file")
    if not _is_finite_number(result["score"]):
        raise ResultsError(f"{name}: score must be a finite number, not {describe_value(result['score'])}")
    if not isinstance(result["segmentations"], list):
        raise ResultsError(f"{name}: segmentations must be a list with one entry per frame")
    return [_result_rle(rle, video, f"{name}, frame {frame}") for frame, rle in enumerate(result["segmentations"])]


def _is_finite_number(value: Any) -> bool:
    """A real number other than bool, NaN and infinity (ints too large for a float are not finite)."""
    if not isinstance(value, Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _result_rle(segmentation: Any, video: dict, name: str) -> dict | None:
    if not segmentation:
        return None
    if isinstance(segmentation, list):
        raise ResultsError(f"{name}: polygons are not accepted in results; encode masks as compressed RLE")
    if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
        raise ResultsError(f"{name}: a segmentation must be a compressed RLE dict (size, counts) or null")
    if not isinstance(segmentation["counts"], (str, bytes)):
        raise ResultsError(
            f"{name}: counts must be a compressed RLE string (pycocotools.mask.encode); "
            "uncompressed RLE is not accepted"
        )
    problem = _size_problem(segmentation["size"], video["height"], video["width"])
    if problem is not None:
        raise ResultsError(f"{name}: {problem}")
    return segmentation


def _load_results(
    results: Any, videos: Mapping[int, dict], category_ids: Sequence[int]
) -> dict[tuple[int, int], _Tracks]:
    """Validated results grouped per (video, category), in file order (which breaks score ties)."""
    if not isinstance(results, list):
        raise ResultsError(f"results must be a JSON list of predictions, not {type(results).__name__}")
    if not results:
        raise ResultsError("the results list is empty: there is nothing to evaluate")
    known_categories = set(category_ids)
    groups: dict[tuple[int, int], _Tracks] = defaultdict(_new_tracks)
    length_mismatches, unknown_categories, rles, places = [], [], [], []
    for index, result in enumerate(results):
        frames = _check_result(result, index, videos)
        rles.extend(rle for rle in frames if rle is not None)
        places.extend((index, frame) for frame, rle in enumerate(frames) if rle is not None)
        video = videos[result["video_id"]]
        if "length" in video and len(frames) != video["length"]:
            length_mismatches.append(f"result #{index} has {len(frames)} frames, video {video['id']} {video['length']}")
        if result["category_id"] not in known_categories:
            unknown_categories.append(f"result #{index} has category {result['category_id']!r}")
            continue
        tracks = groups[result["video_id"], result["category_id"]]
        tracks.frames.append(frames)
        tracks.scores.append(result["score"])

    def name(index: int) -> str:
        result_index, frame = places[index]
        return f"result #{result_index} (video {results[result_index]['video_id']}), frame {frame}"

    _check_compressed_counts(rles, name, ResultsError)
    if length_mismatches:
        warnings.warn(
            f"{len(length_mismatches)} results do not have one segmentation per frame ({length_mismatches[0]}); "
            "scored as the official evaluator does, pairing frames up to the shorter list",
            stacklevel=3,
        )
    if unknown_categories:
        warnings.warn(
            f"{len(unknown_categories)} results have a category_id that is not in the annotation file "
            f"({unknown_categories[0]}); they are not scored, as in the official evaluator. Results must use the "
            "file's category ids, not 0-based class indices",
            stacklevel=3,
        )
    return groups


# ----------------------------------------------------------------------------------------------------------
# RLE validation. pycocotools trusts every RLE it is given: counts that do not add up to height x width
# make its `iou` loop forever, and characters outside its alphabet are decoded into arbitrary runs. So
# every mask is checked before pycocotools sees it, by a numpy decoder of the string format whose work
# is bounded by the string's length.
# ----------------------------------------------------------------------------------------------------------

# pycocotools' rleToString writes each run (from the fourth on, as the difference to the run two before)
# in 5-bit groups, least significant first, as the characters '0' + (group | 0x20 if more follow); the
# last group's 0x10 bit is the sign. rleFrString reads them back with int shifts, exact only up to six
# groups (30 bits), which is what masks under 2^29 pixels need; longer numbers are refused, not guessed.
_FIRST_CHAR, _LAST_CHAR = ord("0"), ord("0") + 63
_MAX_NUMBER_CHARS = 6
_MAX_RUN = 2**31 - 1  # pycocotools keeps runs as 32-bit unsigned ints; masks this large are not videos
_CHECK_BATCH = 4096  # RLEs per numpy pass: large enough to amortize numpy's call cost, small for memory

_BAD_CHARACTER, _TRUNCATED, _NUMBER_TOO_LONG, _RUN_OUT_OF_RANGE, _WRONG_TOTAL = range(1, 6)
_PROBLEMS = {
    _BAD_CHARACTER: "RLE counts contain {character!r}, which is not in pycocotools' alphabet '0'..'o'",
    _TRUNCATED: "RLE counts end in the middle of a number (the string is truncated)",
    _NUMBER_TOO_LONG: f"RLE counts hold a number of more than {_MAX_NUMBER_CHARS} characters",
    _RUN_OUT_OF_RANGE: f"RLE counts decode to a run length that is negative or over {_MAX_RUN}",
    _WRONG_TOTAL: "RLE counts add up to {total} pixels, but its size {height} x {width} has {expected}",
}


@dataclass
class DecodedCounts:
    """Compressed RLE counts of several masks, decoded: `runs` of all masks in order, `run_counts` and
    `totals` (sum of runs) per mask, and `problem`: 0 when every string decodes as pycocotools decodes
    it, else the first key of _PROBLEMS that some string has (the runs are then meaningless)."""

    runs: np.ndarray
    run_counts: np.ndarray
    totals: np.ndarray
    problem: int


def decode_compressed_counts(strings: Sequence[bytes]) -> DecodedCounts:
    """pycocotools' `rleFrString` for many counts strings at once, in exact int64 arithmetic.

    Checks are global (any string with the problem) so that the usual all-valid batch costs a few numpy
    passes over its characters; `_check_compressed_counts` looks for the culprit only when one fails."""
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    raw = np.frombuffer(b"".join(strings), dtype=np.uint8)
    groups = raw - np.uint8(_FIRST_CHAR)  # wraps below '0', so one comparison finds both ends
    more = (groups & 0x20) != 0
    string_ends = np.cumsum(lengths)[lengths > 0] - 1
    found = {_BAD_CHARACTER: (groups > _LAST_CHAR - _FIRST_CHAR).any(), _TRUNCATED: more[string_ends].any()}
    more[string_ends] = False  # a truncated string's last number stops there, not in the next string
    number_ends = np.flatnonzero(~more)
    number_starts = np.concatenate([[0], number_ends + 1])[:-1]
    number_lengths = number_ends - number_starts + 1
    found[_NUMBER_TOO_LONG] = (number_lengths > _MAX_NUMBER_CHARS).any()
    values = _number_values(groups, number_starts, number_lengths)
    run_counts = np.diff(np.searchsorted(number_ends, np.cumsum(lengths) - 1, side="right"), prepend=0)
    runs = _undo_run_differences(values, run_counts)
    found[_RUN_OUT_OF_RANGE] = ((runs < 0) | (runs > _MAX_RUN)).any()
    problem = next((problem for problem, present in found.items() if present), 0)
    totals = np.zeros(len(strings), dtype=np.int64)
    if len(runs):
        firsts = np.cumsum(run_counts) - run_counts
        totals[run_counts > 0] = np.add.reduceat(runs, firsts[run_counts > 0])
    return DecodedCounts(runs=runs, run_counts=run_counts, totals=totals, problem=problem)


def _number_values(groups: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The signed numbers spelled by the 5-bit groups at starts[i] : starts[i] + lengths[i] (at most
    _MAX_NUMBER_CHARS of them read). One pass per character position, over the shrinking set of numbers
    that long: most runs take one or two characters."""
    values = (groups[starts] & 0x1F).astype(np.int64)
    for position in range(1, _MAX_NUMBER_CHARS):
        longer = np.flatnonzero(lengths > position)
        if not len(longer):
            break
        values[longer] |= (groups[starts[longer] + position] & 0x1F).astype(np.int64) << (5 * position)
    read = np.minimum(lengths, _MAX_NUMBER_CHARS)
    negative = (groups[starts + read - 1] & 0x10) != 0
    return values - np.where(negative, np.int64(1) << (5 * read), 0)


def _undo_run_differences(values: np.ndarray, run_counts: np.ndarray) -> np.ndarray:
    """Runs from the stored numbers: run i > 2 of a mask is stored as run i - run (i - 2).

    So run i is a difference of cumulative sums taken every other number (C[p] = values[p] + values[p-2]
    + ..., over all masks at once): for a mask whose numbers start at f, run 0 = C[f] - C[f-2], odd runs
    C[p] - C[f-1] and even ones from 2 on C[p] - C[f]. int64 wrap-around cancels in the differences."""
    chained = np.zeros(len(values) + 2, dtype=np.int64)  # C shifted by two, with C[-2] = C[-1] = 0
    chained[2::2] = np.cumsum(values[0::2])
    chained[3::2] = np.cumsum(values[1::2])
    first = np.repeat(np.cumsum(run_counts) - run_counts, run_counts)
    index = np.arange(len(values)) - first
    base = first - np.where(index == 0, 2, np.where(index % 2 == 1, 1, 0))
    return chained[2:] - chained[base + 2]


def _counts_bytes(counts: str | bytes) -> bytes:
    """The bytes pycocotools reads: it UTF-8-encodes str counts (lone surrogates, from JSON escapes, are
    kept as bytes that the alphabet check refuses)."""
    return counts.encode("utf-8", "surrogatepass") if isinstance(counts, str) else counts


def _counts_problem(counts: bytes, height: int, width: int) -> int:
    """The problem of one RLE's counts (0 for none)."""
    decoded = decode_compressed_counts([counts])
    if decoded.problem:
        return decoded.problem
    return _WRONG_TOTAL if int(decoded.totals[0]) != height * width else 0


def _check_compressed_counts(rles: Sequence[Mapping], names: Callable[[int], str], error: type[Exception]) -> None:
    """Raise `error` naming the first RLE (`names(index)`) whose counts do not decode to exactly its
    height x width pixels. Sizes must have been checked already."""
    for start in range(0, len(rles), _CHECK_BATCH):
        batch = rles[start : start + _CHECK_BATCH]
        strings = [_counts_bytes(rle["counts"]) for rle in batch]
        decoded = decode_compressed_counts(strings)
        expected = np.array([height * width for height, width in (rle["size"] for rle in batch)], dtype=np.int64)
        if decoded.problem == 0 and (decoded.totals == expected).all():
            continue
        for index, (rle, counts) in enumerate(zip(batch, strings)):
            problem = _counts_problem(counts, *rle["size"])
            if problem:
                raise error(f"{names(start + index)}: {_describe_problem(problem, rle, counts)}")


def _describe_problem(problem: int, rle: Mapping, counts: bytes) -> str:
    character = next((chr(byte) for byte in counts if not _FIRST_CHAR <= byte <= _LAST_CHAR), "")
    height, width = rle["size"]
    total = int(decode_compressed_counts([counts]).totals[0])
    return _PROBLEMS[problem].format(
        character=character, total=total, height=height, width=width, expected=height * width
    )


def _uncompressed_counts_problem(counts: list, height: int, width: int) -> str | None:
    """What is wrong with uncompressed RLE counts (a list of runs), or None: pycocotools compresses them
    without a check, so a wrong sum would reach its `iou` like a bad string."""
    try:
        runs = np.asarray(counts) if counts else np.zeros(0, dtype=np.int64)
    except (TypeError, ValueError):  # ragged nesting
        runs = np.zeros((0, 0))
    if runs.ndim != 1 or runs.dtype.kind not in "iu":
        return "uncompressed RLE counts must be a flat list of integers"
    if ((runs < 0) | (runs > height * width)).any():
        return f"uncompressed RLE counts hold a run length that is negative or over {height} x {width}"
    if int(runs.sum()) != height * width:
        return (
            f"uncompressed RLE counts add up to {int(runs.sum())} pixels, but its size {height} x {width} "
            f"has {height * width}"
        )
    return None


def _size_problem(size: Any, height: int, width: int) -> str | None:
    """What is wrong with an RLE `size` for a video of height x width, or None."""
    if isinstance(size, (list, tuple)) and len(size) == 2 and is_integer(size[0]) and is_integer(size[1]):
        if size[0] == height and size[1] == width:
            return None
    return f"RLE size {describe_value(size)} is not the video's [height, width] [{height}, {width}]"


# ----------------------------------------------------------------------------------------------------------
# Video IoU
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _FrameTable:
    """Per-frame facts of a list of tracks, padded to the longest: `areas` [N, F] (0 where absent),
    `present` [N, F], `lengths` [N] (entries in the track)."""

    areas: np.ndarray
    present: np.ndarray
    lengths: np.ndarray


def _frame_table(frames: list[list[dict | None]]) -> _FrameTable:
    lengths = np.array([len(track) for track in frames], dtype=np.int64)
    shape = (len(frames), int(lengths.max(initial=0)))
    present = np.zeros(shape, dtype=bool)
    for index, track in enumerate(frames):
        present[index, : len(track)] = [rle is not None for rle in track]
    rles = [rle for track in frames for rle in track if rle is not None]
    areas = np.zeros(shape, dtype=np.int64)
    if rles:
        areas[present] = rle_areas(rles)
    return _FrameTable(areas=areas, present=present, lengths=lengths)


def _video_ious(results: _FrameTable, result_frames: list, truths: _FrameTable, truth_frames: list) -> np.ndarray:
    """IoU [results, ground truths] over whole videos, as the official per-pair frame loop defines it.

    A frame contributes to a pair only below the shorter of the two tracks' lengths. Frames where just one
    side has a mask add its area to the union; that part is a prefix sum. Frames where both have masks
    take one pycocotools `iou` call for all such pairs; the exact integer intersection is recovered from
    the IoU (i = iou * (a + b) / (1 + iou), rounded: the error is far below 0.5 for masks under 2^32 px)
    because pycocotools has no batched intersection. (The official code adds nothing for a pair of masks
    of different sizes; validation gives every mask its video's size, so that case cannot arise.)
    """
    num_results, num_truths = len(result_frames), len(truth_frames)
    intersection = np.zeros((num_results, num_truths), dtype=np.int64)
    pair_lengths = np.minimum(results.lengths[:, None], truths.lengths[None, :])
    union = _area_prefix(results.areas, pair_lengths) + _area_prefix(truths.areas, pair_lengths.T).T
    for frame in range(int(pair_lengths.max(initial=0))):
        result_rows = np.flatnonzero(results.present[:, frame])
        truth_rows = np.flatnonzero(truths.present[:, frame])
        if len(result_rows) == 0 or len(truth_rows) == 0:
            continue
        result_areas = results.areas[result_rows, frame][:, None]
        truth_areas = truths.areas[truth_rows, frame][None, :]
        ious = mask_utils.iou(
            [result_frames[row][frame] for row in result_rows],
            [truth_frames[row][frame] for row in truth_rows],
            [0] * len(truth_rows),
        )
        overlap = np.where(ious > 0, np.rint(ious * (result_areas + truth_areas) / (1.0 + ious)), 0).astype(np.int64)
        both = np.ix_(result_rows, truth_rows)
        intersection[both] += overlap
        union[both] -= overlap
    return np.divide(intersection, union, out=np.zeros(union.shape), where=union > 0)


def _area_prefix(areas: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """For each row r of `areas` and each entry n of lengths[r], the sum of areas[r, :n]."""
    prefix = np.concatenate([np.zeros((areas.shape[0], 1), dtype=np.int64), np.cumsum(areas, axis=1)], axis=1)
    return np.take_along_axis(prefix, lengths, axis=1)


# ----------------------------------------------------------------------------------------------------------
# Matching (COCOeval.evaluateImg, per video)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Matches:
    """One video, category and area range, results in score order: what accumulation reads."""

    scores: np.ndarray  # [D]
    matched: np.ndarray  # [T, D] matched to a ground truth
    ignored: np.ndarray  # [T, D]
    num_positives: int  # ground truths not ignored


def _greedy_match(ious: np.ndarray, truth_ignored: list[bool], truth_crowd: list[int]) -> np.ndarray:
    """[T, D] column of the ground truth each result takes at each IoU threshold, -1 for none.

    COCOeval's loop verbatim: results in score order take the best still-free ground truth at or above the
    threshold (ties go to the later column), non-ignored ones first; crowds stay free. A result without
    any IoU >= the lowest threshold matches nothing at any threshold and takes nothing from the others,
    so only the rest go through the loop.
    """
    matches = np.full((len(IOU_THRESHOLDS), ious.shape[0]), -1, dtype=np.int64)
    if ious.shape[1] == 0:
        return matches
    candidates = np.flatnonzero(ious.max(axis=1) >= IOU_THRESHOLDS[0])
    rows = ious[candidates].tolist()
    for threshold_index, threshold in enumerate(IOU_THRESHOLDS.tolist()):
        taken = [False] * ious.shape[1]
        for result, row in zip(candidates.tolist(), rows):
            best, best_iou = -1, min(threshold, 1 - 1e-10)
            for truth, iou in enumerate(row):
                if taken[truth] and not truth_crowd[truth]:
                    continue
                if best > -1 and not truth_ignored[best] and truth_ignored[truth]:
                    break
                if iou < best_iou:
                    continue
                best, best_iou = truth, iou
            if best > -1:
                matches[threshold_index, result] = best
                taken[best] = True
    return matches


def _match_area_range(
    ious: np.ndarray, truths: _Tracks, scores: np.ndarray, result_areas: np.ndarray, area_range: tuple[float, float]
) -> _Matches:
    low, high = area_range
    truth_areas = np.array(truths.areas, dtype=np.float64)
    ignored = np.array(truths.ignore, dtype=bool) | (truth_areas < low) | (truth_areas > high)
    order = np.argsort(ignored, kind="mergesort")  # ignored ground truth last, as COCOeval sorts it
    ignored = ignored[order]
    matches = _greedy_match(ious[:, order], ignored.tolist(), [truths.crowd[index] for index in order])
    # Index -1 (no match) reads the appended entry: id 0, not ignored. COCOeval records the matched ground
    # truth's id and reads 0 as "no match", so a ground truth with id 0 stays unmatched there as here.
    matched = np.append(np.array(truths.ids, dtype=np.int64)[order], 0)[matches] != 0
    result_ignored = np.append(ignored, False)[matches]
    outside = (result_areas < low) | (result_areas > high)
    result_ignored |= ~matched & outside[None, :]
    return _Matches(scores=scores, matched=matched, ignored=result_ignored, num_positives=int((~ignored).sum()))


def _match_video_category(truths: _Tracks, results: _Tracks) -> list[_Matches]:
    """Matches of one video and category for each area range (in AREA_RANGES order)."""
    order = np.argsort(-np.array(results.scores, dtype=np.float64), kind="mergesort")[: MAX_DETECTIONS[-1]]
    result_frames = [results.frames[index] for index in order]
    scores = np.array(results.scores, dtype=np.float64)[order]
    result_table = _frame_table(result_frames)
    result_areas = np.array([_mean_nonempty_area(row) for row in result_table.areas.tolist()], dtype=np.float64)
    ious = np.zeros((len(result_frames), len(truths.frames)))
    if result_frames and truths.frames:
        ious = _video_ious(result_table, result_frames, _frame_table(truths.frames), truths.frames)
    return [_match_area_range(ious, truths, scores, result_areas, area_range) for area_range in AREA_RANGES.values()]


# ----------------------------------------------------------------------------------------------------------
# Accumulation and summary (COCOeval.accumulate / summarize)
# ----------------------------------------------------------------------------------------------------------


def _precision_recall(matches: list[_Matches], max_detections: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Interpolated precision [T, R] and recall [T] over the videos' top `max_detections`, or None
    when there is no ground truth to recall (the official -1)."""
    num_positives = sum(entry.num_positives for entry in matches)
    if num_positives == 0:
        return None
    scores = np.concatenate([entry.scores[:max_detections] for entry in matches])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([entry.matched[:, :max_detections] for entry in matches], axis=1)[:, order]
    ignored = np.concatenate([entry.ignored[:, :max_detections] for entry in matches], axis=1)[:, order]
    true_positives = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    false_positives = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    num_results = true_positives.shape[1]
    recall_curve = true_positives / num_positives
    precision_curve = true_positives / (false_positives + true_positives + np.spacing(1))
    precision_curve = np.flip(np.maximum.accumulate(np.flip(precision_curve, axis=1), axis=1), axis=1)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    for threshold in range(len(IOU_THRESHOLDS)):
        positions = np.searchsorted(recall_curve[threshold], RECALL_THRESHOLDS, side="left")
        reached = positions < num_results
        precision[threshold, reached] = precision_curve[threshold, positions[reached]]
    recall = recall_curve[:, -1] if num_results else np.zeros(len(IOU_THRESHOLDS))
    return precision, recall


def _accumulate(per_category: list[list[list[_Matches]]]) -> tuple[np.ndarray, np.ndarray]:
    """precision [T, R, K, A, M] and recall [T, K, A, M], -1 where a slice has no ground truth."""
    shape = (len(per_category), len(AREA_RANGES), len(MAX_DETECTIONS))
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)) + shape)
    recall = -np.ones((len(IOU_THRESHOLDS),) + shape)
    for category, per_area in enumerate(per_category):
        for area, matches in enumerate(per_area):
            for detections, max_detections in enumerate(MAX_DETECTIONS):
                curves = _precision_recall(matches, max_detections) if matches else None
                if curves is not None:
                    precision[:, :, category, area, detections], recall[:, category, area, detections] = curves
    return precision, recall


def _summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """The 12 standard numbers: means over the valid (> -1) entries of each slice, as COCOeval.summarize."""
    metrics = {}
    for name, (curve, iou, area, max_detections) in _METRIC_SLICES.items():
        values = precision if curve == "precision" else recall
        if iou is not None:
            values = values[np.where(iou == IOU_THRESHOLDS)[0]]
        values = values[..., list(AREA_RANGES).index(area), MAX_DETECTIONS.index(max_detections)]
        valid = values[values > -1]
        metrics[name] = float(np.mean(valid)) if valid.size else -1.0
    return metrics


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def score_results(annotations: str | os.PathLike | Mapping, results: list[Mapping]) -> dict[str, float]:
    """`evaluate`, with zeros for a model that found nothing: the evaluator, like the official one, refuses an
    empty results list, but a training run or a split job should record the score, not stop."""
    return evaluate(annotations, results) if results else dict.fromkeys(METRIC_NAMES, 0.0)


def evaluate(
    annotations: str | os.PathLike | Mapping,
    results: str | os.PathLike | list[Mapping],
    *,
    progress: bool = False,
) -> dict[str, float]:
    """Score video instance segmentation results against YouTube-VIS ground truth.

    `annotations`: the ground-truth annotation file (path or parsed JSON). `results`: a path or a list of
    {"video_id", "category_id", "score", "segmentations": [compressed RLE dict or None per frame]}.
    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"},
    equal to the official evaluator's, -1.0 where a slice has no ground truth. Neither input is modified.
    """
    if not isinstance(annotations, Mapping):
        annotations = read_json(annotations, "annotation file")
    if isinstance(results, (str, os.PathLike)):
        results = read_json(results, "results file")
    videos, category_ids, truth_groups = _load_ground_truth(annotations)
    result_groups = _load_results(results, videos, category_ids)
    per_category: list[list[list[_Matches]]] = [[[] for _ in AREA_RANGES] for _ in category_ids]
    no_tracks = _new_tracks()
    for video_id in tqdm(sorted(videos), desc="evaluating", unit="video", disable=not progress):
        for category, category_id in enumerate(category_ids):
            truths = truth_groups.get((video_id, category_id), no_tracks)
            video_results = result_groups.get((video_id, category_id), no_tracks)
            if not truths.frames and not video_results.frames:
                continue
            for area, matches in enumerate(_match_video_category(truths, video_results)):
                per_category[category][area].append(matches)
    return _summarize(*_accumulate(per_category))


def format_summary(metrics: Mapping[str, float]) -> str:
    """The 12 numbers as the official evaluator prints them, one per line."""
    lines = []
    for name, (curve, iou, area, max_detections) in _METRIC_SLICES.items():
        title, short = ("Average Precision", "(AP)") if curve == "precision" else ("Average Recall", "(AR)")
        iou_text = f"{IOU_THRESHOLDS[0]:0.2f}:{IOU_THRESHOLDS[-1]:0.2f}" if iou is None else f"{iou:0.2f}"
        lines.append(
            f" {title:<18} {short} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={max_detections:>3d} ] = "
            f"{metrics[name]:0.3f}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Command line: `vistr evaluate`
# ----------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vistr evaluate`."""
    parser.add_argument("--annotations", type=Path, required=True, help="ground-truth YouTube-VIS annotation JSON")
    parser.add_argument("--results", type=Path, required=True, help="results JSON (list of per-video predictions)")


def run(args: argparse.Namespace) -> None:
    """Run `vistr evaluate`: the summary lines, then one JSON object with the 12 numbers as the last line."""
    metrics = evaluate(args.annotations, args.results, progress=True)
    print(format_summary(metrics))
    print(json.dumps(metrics))
