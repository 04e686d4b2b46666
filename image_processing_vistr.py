"""VisTR video processor: videos -> model-ready clips, and model outputs -> instances over every input frame.

Clips. The model sees clips of exactly `num_frames` frames (its config's). A shorter video repeats its frames
up to a clip, as the original `inference.py` does; a longer one becomes consecutive overlapping clips, one
starting every `stride` frames (default: a quarter of a clip overlaps), plus one ending at the last frame.
The processor returns all clips as one batch (`pixel_values` [clips, num_frames, 3, H, W]) with their layout
(the video and input frames of each clip, each video's sizes), and `post_process_instance_segmentation`
stitches the clips of each video back together: a clip's instance slots are linked to the previous clip's
tracks by mask IoU over the frames they share, so every instance has one id and covers every input frame.
Clips rather than frame sampling (`do_sample_frames`): instance segmentation must cover every frame.

Preprocessing reproduces the original exactly by default: PIL bilinear resize of the shortest edge (300 at
inference; the longest edge capped at 1333, which only frames thinner than 4.4:1 reach) and ImageNet
normalization, as torchvision's `Resize` + `ToTensor` + `Normalize` did in the original. A faster tensor path
(`resize_backend="torchvision"`, which can run on GPU) differs from PIL's resampling by up to a few 1e-3 and
is therefore not the default.

Post-processing reproduces the original `inference.py`: per instance, the score is the mean over frames of
the per-frame best class probability, the label the majority of per-frame labels (ties to the smaller id),
masks are bilinearly upsampled to the original frame size and thresholded, and a frame whose score is below
0.001 gets no segmentation in the YouTube-VIS results. It runs on the CPU, where the thresholded upsampling
(mask_upsampling.py) computes only the pixels along mask edges: the same masks, several times faster.
"""

from __future__ import annotations

import copy
import heapq
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor

from .flip_averaging import check_flips
from .mask_upsampling import upsample_and_threshold
from .optional_dependencies import require
from .video_io import VideoReadError, describe, iter_frames

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_FRAME_SCORE = 0.001  # the original writes no segmentation for a frame scored below this
MIN_LINK_IOU = 0.1  # a clip's slot continues a track of the previous clip only if their masks overlap this much
# the YouTube-VIS evaluator (maxDets) scores a video's best 100 results of each category: more never count
RESULTS_PER_VIDEO_AND_CATEGORY = 100
TORCH_RESAMPLING = {int(Image.Resampling.BILINEAR): "bilinear", int(Image.Resampling.BICUBIC): "bicubic"}
# keys transformers itself writes into a saved processor config
BOOKKEEPING_KEYS = frozenset(
    {"video_processor_type", "image_processor_type", "processor_class", "_processor_class", "auto_map"}
)

Frame = TypeVar("Frame")


# ----------------------------------------------------------------------------------- clips


def default_stride(num_frames: int) -> int:
    """Clips overlap by a quarter of their length (at least one frame) so instances can be linked."""
    return max(1, num_frames - max(1, num_frames // 4))


def clip_stride(num_frames: int, stride: int | None) -> int:
    """`stride`, or the default for clips of `num_frames`; a stride beyond a clip would skip frames."""
    stride = default_stride(num_frames) if stride is None else stride
    if not 1 <= stride <= num_frames:
        raise ValueError(
            f"stride={stride} must be between 1 and the clip length num_frames={num_frames} (no frame may be skipped)"
        )
    return stride


def iter_clips(frames: Iterable[Frame], num_frames: int, stride: int) -> Iterator[list[tuple[int, Frame]]]:
    """The clips of a video as lists of `num_frames` (frame index, frame) pairs, reading `frames` lazily.

    Clips start every `stride` frames; if they miss the end, one more ends at the last frame. A video shorter
    than a clip repeats its frames (0, 1, .., L-1, 0, 1, ..) as the original does. Only one clip of frames is
    held at a time, so a long video never sits in memory.
    """
    window: deque[tuple[int, Frame]] = deque(maxlen=num_frames)
    next_start = last_end = 0
    for index, frame in enumerate(frames):
        window.append((index, frame))
        if index == next_start + num_frames - 1:
            yield list(window)
            last_end, next_start = index + 1, next_start + stride
    length = window[-1][0] + 1 if window else 0
    if 0 < length < num_frames:
        yield [window[i % length] for i in range(num_frames)]
    elif last_end < length:
        yield list(window)


def clip_count(length: int, num_frames: int, stride: int) -> int:
    """How many clips `iter_clips` makes of a video of `length` frames."""
    return sum(1 for _ in iter_clips(range(length), num_frames, stride))


def resized_size(height: int, width: int, shortest_edge: int, longest_edge: int | None = None) -> tuple[int, int]:
    """Output (height, width) of the original's resize: shortest edge to `shortest_edge`, the other
    scaled and truncated, the shortest edge reduced first if the longest would exceed `longest_edge`."""
    short, long = min(height, width), max(height, width)
    if longest_edge is not None and long / short * shortest_edge > longest_edge:
        shortest_edge = int(round(longest_edge * short / long))
    if short == shortest_edge:
        return height, width
    if width < height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


def rescale_and_normalize(pixels: torch.Tensor, rescale_factor: float | None = 1 / 255,
                          mean: Sequence[float] | None = IMAGENET_MEAN,
                          std: Sequence[float] | None = IMAGENET_STD) -> torch.Tensor:
    """Float pixels [..., 3, h, w] in 0..255 -> the model's input scale, by default exactly the original's
    torchvision `ToTensor` (x / 255) and ImageNet `Normalize` ((x - mean) / std per channel), for inference
    (the processor) and training (tools/training_data.py) alike. None skips a step."""
    if rescale_factor is not None:
        pixels = pixels / (1 / rescale_factor)  # x / 255 for the default: ToTensor's division, not a product
    if mean is not None and std is not None:
        mean = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        pixels = pixels.sub(mean).div(std)
    return pixels


# ----------------------------------------------------------------------------------- options

# what the processor honours, at construction and per call
PREPROCESS_OPTIONS = (
    "do_convert_rgb", "do_resize", "size", "resample", "resize_backend", "do_rescale", "rescale_factor", "do_normalize",
    "image_mean", "image_std", "input_data_format", "device", "num_frames", "stride", "pad_size_divisor",
)  # fmt: skip
_NO_SAMPLING = "VisTR covers every frame with overlapping clips of num_frames (set stride) instead of sampling frames"
_WHOLE_FRAMES = "VisTR sees whole frames resized by their shortest edge: set size={'shortest_edge': N}"
# BaseVideoProcessor options VisTR cannot honour: the values that leave them unused, and why
UNSUPPORTED_OPTIONS = {
    "do_sample_frames": ((None, False), _NO_SAMPLING),
    "fps": ((None,), _NO_SAMPLING),
    "video_metadata": ((None,), _NO_SAMPLING),
    "return_metadata": ((None, False), _NO_SAMPLING),
    "do_center_crop": ((None, False), _WHOLE_FRAMES),
    "crop_size": ((None,), _WHOLE_FRAMES),
    "default_to_square": ((None, False), _WHOLE_FRAMES),
    "do_pad": ((None, True), "the clips of a batch are always padded to one size (pixel_mask marks the padding)"),
    "data_format": ((None, "channels_first"), "pixel_values are always [clips, frames, 3, height, width]"),
}
CHANNEL_ORDERS = {None: None, "channels_first": True, "channels_last": False}


@dataclass(frozen=True)
class PreprocessOptions:
    """One call's preprocessing settings: the processor's, overridden by the call's arguments, checked."""

    do_convert_rgb: bool
    do_resize: bool
    shortest_edge: int
    longest_edge: int | None
    resample: int
    resize_backend: str
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    channels_first: bool | None
    device: str | torch.device | None
    num_frames: int
    stride: int
    pad_size_divisor: int


def _size_edges(size) -> tuple[int, int | None]:
    """`size` (an int, a dict or transformers' SizeDict) -> (shortest edge, longest edge or None)."""
    if isinstance(size, int):
        return size, None
    edges = size if isinstance(size, Mapping) else vars(size)
    if not edges.get("shortest_edge"):
        raise ValueError(f"size must give 'shortest_edge' (and optionally 'longest_edge'), got {size}")
    return int(edges["shortest_edge"]), edges.get("longest_edge")


def _per_channel(name: str, value) -> tuple[float, ...]:
    """image_mean / image_std: one number for all channels, or one per RGB channel."""
    values = (float(value),) * 3 if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} needs one value per RGB channel (3), got {value}")
    return values


def _resample_filter(resample, backend: str) -> int:
    """The resampling filter as PIL's int; the tensor backend has bilinear and bicubic."""
    try:
        resample = int(Image.Resampling(int(resample)))
    except ValueError as error:
        raise ValueError(f"resample={resample!r} is not a PIL resampling filter (e.g. PIL.Image.BILINEAR)") from error
    if backend == "torchvision" and resample not in TORCH_RESAMPLING:
        raise ValueError(
            f"resample={resample} with resize_backend='torchvision': use bilinear (2), bicubic (3) or the PIL backend"
        )
    return resample


# ----------------------------------------------------------------------------------- clip layout


@dataclass
class ClipLayout:
    """Which video of a batch each clip (row of the model's outputs) belongs to, the input frame at each of
    its positions, and each video's original and resized (unpadded) size."""

    video_indices: list[int]
    frame_indices: list[list[int]]
    original_sizes: list[tuple[int, int]] | None = None
    processed_sizes: list[tuple[int, int]] | None = None

    @classmethod
    def from_inputs(cls, inputs: Mapping) -> ClipLayout:
        """The layout in the processor's output (the keys next to `pixel_values`)."""
        missing = [key for key in ("clip_video_indices", "clip_frame_indices") if key not in inputs]
        if missing:
            raise ValueError(f"clip_layout has no {missing}: pass the processor's output for these clips")

        def rows(key: str) -> list | None:
            value = inputs.get(key)
            return None if value is None else value.tolist() if hasattr(value, "tolist") else list(value)

        def sizes(key: str) -> list[tuple[int, int]] | None:
            return None if rows(key) is None else [(int(height), int(width)) for height, width in rows(key)]

        video_indices = [int(video) for video in rows("clip_video_indices")]
        frame_indices = [[int(frame) for frame in clip] for clip in rows("clip_frame_indices")]
        return cls(video_indices, frame_indices, sizes("original_sizes"), sizes("processed_sizes"))

    @classmethod
    def whole_videos(cls, clips: int, num_frames: int, video_lengths: Sequence[int] | None = None) -> ClipLayout:
        """Each clip a whole video: its first L positions its frames, the others repeats (the original's short
        videos)."""
        lengths = [num_frames] * clips if video_lengths is None else [int(length) for length in video_lengths]
        return cls(list(range(clips)), [[i % length for i in range(num_frames)] for length in lengths])

    def clips_of(self, video: int) -> list[int]:
        return [clip for clip, owner in enumerate(self.video_indices) if owner == video]


# ----------------------------------------------------------------------------------- stitching


def sequence_iou(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Video IoU of every pair of instances: sum of per-frame intersections / sum of unions.

    previous [F, a, h, w], current [F, b, h, w] bool over the same F frames -> [a, b].
    """
    a = previous.flatten(2).transpose(0, 1).flatten(1).float()  # [a, F*h*w]
    b = current.flatten(2).transpose(0, 1).flatten(1).float()
    intersection = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Post-process half-precision outputs in float32; keep float64 outputs exact."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _cells_of_frame(mask_logits: torch.Tensor, processed_size: Sequence[int] | None) -> torch.Tensor:
    """Mask logits [..., h4, w4] at stride 4 of the padded input -> the cells covering the unpadded frame."""
    if processed_size is None:
        return mask_logits
    return mask_logits[..., : -(-int(processed_size[0]) // 4), : -(-int(processed_size[1]) // 4)]


def frame_rle(mask: torch.Tensor, score: float | None) -> dict | None:
    """A frame's segmentation in the YouTube-VIS results: its RLE, or None where the frame scores below 0.001
    (or the instance has no score there: it began in a later clip)."""
    return None if score is None or score < MIN_FRAME_SCORE else encode_rle(mask)


def mask_confidence(mask_logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits [..., h, w] -> per mask, the sum of the probabilities of the cells above `threshold` and
    their count: how sure the model is of the mask it draws (Mask2Former weights instance scores by the mean)."""
    probabilities = mask_logits.float().sigmoid()
    inside = probabilities > threshold
    return (probabilities * inside).sum((-2, -1)), inside.sum((-2, -1))


@dataclass(eq=False)
class _Track:
    """One instance while clips can still extend it: per frame it covers, its class score, class and mask (bool
    tensor, or RLE), and its mask confidence summed over those frames."""

    track_id: int
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    labels: dict[int, int] = field(default_factory=dict)
    masks: dict[int, torch.Tensor | dict | None] = field(default_factory=dict)
    nonempty: bool = False
    # over its frames: the mask probabilities summed over the cells above the mask threshold, and how many cells
    probability_sum: float = 0.0
    cells: int = 0


@dataclass(frozen=True)
class _ClosedTrack:
    """A track no later clip can extend, reduced to its instance: score, label, and the scores and masks of the
    frames it covers (the video's other frames are filled in only when the instances are listed)."""

    track_id: int
    score: float
    label: int
    frame_scores: dict[int, float]
    masks: dict[int, torch.Tensor | dict | None]


class ClipStitcher:
    """One video's instances from the model's outputs on its consecutive clips, added in order.

    Each clip's slots are linked to the previous clip's tracks by mask IoU over the frames the clips share
    (Hungarian matching, at least `min_link_iou`; others start new tracks), so an object keeps one id through
    the video. Each frame takes its scores, labels and masks from the first clip that covers it. A track that
    the next clip does not continue has ended: it is closed at once, so each clip is compared with the open
    tracks only (one per slot), and reduced to its instance, or dropped if it never drew a mask.

    An instance covers every frame of the video, so the YouTube-VIS results of a long video in which the model
    keeps seeing short-lived objects would grow with the square of its length. With `max_instances_per_label`
    only the best that many instances of each label are kept (by score, ties to the smaller id): the evaluator
    scores no more of a video and category (RESULTS_PER_VIDEO_AND_CATEGORY), so the others could never count.
    With `mask_format="rle"` masks are encoded as soon as they are final, so memory does not grow with full masks.
    With `mask_score_weighting` an instance's score is also multiplied by its mask confidence (`mask_confidence`).
    """

    def __init__(self, target_size: Sequence[int] | None = None, processed_size: Sequence[int] | None = None,
                 mask_threshold: float = 0.5, mask_format: str = "bool", min_link_iou: float = MIN_LINK_IOU,
                 mask_score_weighting: bool = False, max_instances_per_label: int | None = None):  # fmt: skip
        if mask_format not in ("bool", "rle"):
            raise ValueError(f"mask_format={mask_format!r}: use 'bool' (mask tensors) or 'rle' (COCO run-length code)")
        if max_instances_per_label is not None and max_instances_per_label < 1:
            raise ValueError(f"max_instances_per_label={max_instances_per_label} must be at least 1 (or None for all)")
        self.target_size = None if target_size is None else tuple(int(s) for s in target_size)
        self.processed_size = processed_size
        self.mask_threshold = mask_threshold
        self.mask_format = mask_format
        self.min_link_iou = min_link_iou
        self.mask_score_weighting = mask_score_weighting
        self.max_instances_per_label = max_instances_per_label
        self._opened = 0  # tracks opened so far: the next one's id
        self._open: list[_Track] = []  # the previous clip's tracks, by slot: the only ones a clip can continue
        self._closed: dict[int, list[tuple[float, int, _ClosedTrack]]] = {}  # per label a min-heap by (score, -id)
        self._done: set[int] = set()
        self._previous: dict[int, torch.Tensor] = {}  # frame -> the previous clip's binary mask logits [n, h, w]
        self._size: tuple[int, int] | None = None  # of the masks, known with the first clip

    def add_clip(self, frame_indices: Sequence[int], logits: torch.Tensor, mask_logits: torch.Tensor) -> None:
        """One clip's outputs, logits [T*n, C+1] and mask logits [T*n, h, w], for its input frames `frame_indices`."""
        num_frames = len(frame_indices)
        logits, mask_logits = (_at_least_float32(t.detach().cpu()) for t in (logits, mask_logits))
        scores, labels = VisTRVideoProcessor.frame_class_scores(logits, num_frames)
        masks = _cells_of_frame(mask_logits.reshape(num_frames, -1, *mask_logits.shape[-2:]), self.processed_size)
        positions: dict[int, int] = {}
        for position, frame in enumerate(frame_indices):
            positions.setdefault(int(frame), position)  # repeated frames: the first prediction
        slot_tracks = self._link(positions, masks)
        for track in self._open:
            if track not in slot_tracks:
                self._close(track)
        new_frames = sorted(frame for frame in positions if frame not in self._done)
        if new_frames:
            chosen = [positions[frame] for frame in new_frames]
            self._size = self.target_size or tuple(masks.shape[-2:])
            binary, nonempty = VisTRVideoProcessor._frame_masks_and_nonempty(
                masks[chosen], self._size, None, self.mask_threshold
            )
            if self.mask_score_weighting:
                probability_sums, cells = (t.tolist() for t in mask_confidence(masks[chosen], self.mask_threshold))
            for k, (frame, position) in enumerate(zip(new_frames, chosen)):
                for slot, track in enumerate(slot_tracks):
                    score = scores[position, slot]
                    track.scores[frame], track.labels[frame] = score, int(labels[position, slot])
                    mask = binary[k, slot]
                    track.masks[frame] = mask if self.mask_format == "bool" else frame_rle(mask, float(score))
                    track.nonempty = track.nonempty or bool(nonempty[k, slot])
                    if self.mask_score_weighting:
                        track.probability_sum += probability_sums[k][slot]
                        track.cells += cells[k][slot]
            self._done.update(new_frames)
        self._previous = {frame: masks[position] > 0 for frame, position in positions.items()}
        self._open = slot_tracks

    def _link(self, positions: dict[int, int], masks: torch.Tensor) -> list[_Track]:
        """The track of each slot of this clip: the open track (the previous clip's) it overlaps best, or a new one."""
        shared = sorted(set(positions) & set(self._previous))
        slot_tracks: list[_Track | None] = [None] * masks.shape[1]
        if shared:
            optimize = require("scipy.optimize", "linking the clips of a video longer than one clip")
            previous = torch.stack([self._previous[frame] for frame in shared])
            current = torch.stack([masks[positions[frame]] > 0 for frame in shared])
            iou = sequence_iou(previous, current).numpy()
            for before, now in zip(*optimize.linear_sum_assignment(-iou)):
                if iou[before, now] >= self.min_link_iou:
                    slot_tracks[now] = self._open[before]
        return [track if track is not None else self._new_track() for track in slot_tracks]

    def _new_track(self) -> _Track:
        self._opened += 1
        return _Track(track_id=self._opened - 1)

    def _close(self, track: _Track) -> None:
        """An ended track: its instance is kept if it drew a mask (and is among the best of its label)."""
        if track.nonempty:
            self._keep(self._closed, self._closed_track(track))

    def _keep(self, kept: dict[int, list[tuple[float, int, _ClosedTrack]]], closed: _ClosedTrack) -> None:
        """Add `closed` to the per-label heaps `kept`, dropping the worst of its label beyond the limit."""
        heap = kept.setdefault(closed.label, [])
        entry = (closed.score, -closed.track_id, closed)
        if self.max_instances_per_label is None or len(heap) < self.max_instances_per_label:
            heapq.heappush(heap, entry)
        else:
            heapq.heappushpop(heap, entry)

    def _closed_track(self, track: _Track) -> _ClosedTrack:
        """The track's instance. The score is the mean of the frame scores, times the track's mask confidence
        with `mask_score_weighting`; the label the majority of the frame labels."""
        frames = sorted(track.scores)  # a track that starts in a later clip covers the frames from there on
        score = float(torch.stack([track.scores[frame] for frame in frames]).mean())
        if self.mask_score_weighting:
            score *= track.probability_sum / track.cells if track.cells else 0.0  # mean probability in its masks
        label = VisTRVideoProcessor.majority_label(torch.tensor([track.labels[frame] for frame in frames]))
        return _ClosedTrack(track.track_id, score, label, {frame: float(track.scores[frame]) for frame in frames},
                            track.masks)  # fmt: skip

    def instances(self, threshold: float = 0.0, id2label: Mapping[int, str] | None = None) -> list[dict]:
        """The tracks with a mask in some frame and a score of at least `threshold` (the best
        `max_instances_per_label` of each label), in id order, each with `id`, `score`, `label` (class id),
        `label_name` (None without `id2label`), `frame_scores` [L] and `masks` bool [L, H, W] or, for "rle",
        `segmentations` (per frame RLE or None, as YouTube-VIS results)."""
        kept = {label: list(heap) for label, heap in self._closed.items()}
        for track in self._open:  # the tracks of the last clip end with the video
            if track.nonempty:
                self._keep(kept, self._closed_track(track))
        found = []
        length = len(self._done)
        for closed in sorted((entry[2] for heap in kept.values() for entry in heap), key=lambda c: c.track_id):
            if closed.score < threshold:
                continue
            no_mask = self._no_mask()
            masks = [closed.masks.get(frame, no_mask) for frame in range(length)]
            found.append({
                "id": closed.track_id, "score": closed.score, "label": closed.label,
                "label_name": None if id2label is None else id2label.get(closed.label, str(closed.label)),
                "frame_scores": [closed.frame_scores.get(frame) for frame in range(length)],
                **({"masks": torch.stack(masks)} if self.mask_format == "bool" else {"segmentations": masks}),
            })  # fmt: skip
        return found

    def _no_mask(self) -> torch.Tensor | None:
        """A frame outside a track: an empty mask, or no segmentation."""
        return torch.zeros(self._size, dtype=torch.bool) if self.mask_format == "bool" else None


# ----------------------------------------------------------------------------------- the processor


class VisTRVideoProcessorKwargs(VideosKwargs, total=False):
    resize_backend: str
    pad_size_divisor: int
    num_queries_per_frame: int
    stride: int
    test_time_flips: list[str]
    mask_score_weighting: bool


class VideoClips:
    """One video as the model's clips of preprocessed frames, read one frame at a time when iterated.

    Yields (input frame indices [T], pixel values [T, 3, h, w]); after the first frame `original_size` and
    `processed_size` are known, after the last `length`.
    """

    def __init__(self, processor: VisTRVideoProcessor, video, options: PreprocessOptions):
        self.processor, self.video, self.options = processor, video, options
        self.original_size: tuple[int, int] | None = None
        self.processed_size: tuple[int, int] | None = None
        self.length = 0

    def __iter__(self) -> Iterator[tuple[list[int], torch.Tensor]]:
        for clip in iter_clips(self._frames(), self.options.num_frames, self.options.stride):
            yield [index for index, _ in clip], torch.stack([frame for _, frame in clip])

    def _frames(self) -> Iterator[torch.Tensor]:
        for index, image in enumerate(iter_frames(self.video, self.options.channels_first)):
            size = (image.height, image.width)
            if self.original_size is None:
                self.original_size = size
            elif size != self.original_size:
                raise VideoReadError(
                    f"{describe(self.video)}: frame {index} is {size[0]}x{size[1]} but the first frame is "
                    f"{self.original_size[0]}x{self.original_size[1]}; all frames of a video must have one size"
                )
            frame = self.processor.preprocess_frame(image, self.options)
            self.processed_size, self.length = tuple(frame.shape[-2:]), index + 1
            yield frame


class VisTRVideoProcessor(BaseVideoProcessor):
    r"""
    Prepares videos for VisTR as clips of the model's length and turns its outputs into per-video instances.

    Args:
        num_frames (`int`): frames per clip, the model's `config.num_frames` (36 for the released models).
        stride (`int`, *optional*): frames between the starts of consecutive clips of a longer video
            (default: 3/4 of a clip, so that clips overlap and their instances can be linked).
        size (`dict`): `{"shortest_edge": 300, "longest_edge": 1333}` by default: the original inference's
            shortest edge, and DETR's cap on the longest (the shortest edge is reduced so that the longest stays
            near it), which leaves every aspect ratio up to 4.4:1 as the original resizes it and keeps thin
            frames (3 x 1000) from growing to 300 x 100000.
        resize_backend (`str`): `"pil"` (exact, default) or `"torchvision"` (tensor resize, faster, approximate).
        do_resize, resample, do_rescale, rescale_factor, do_normalize, image_mean, image_std, do_convert_rgb,
        input_data_format, device: as `BaseVideoProcessor` defines them (ImageNet normalization by default).
        pad_size_divisor (`int`): pad height and width of a batch to a multiple of this (1: just the largest frame).
        num_queries_per_frame (`int`): the model's instance slots per frame, to split outputs without a clip layout.
        test_time_flips (`list[str]`, *optional*): flips ("horizontal", "vertical", "both") whose predictions
            `VideoSegmenter` (`vistr segment`, the pipeline) averages with the plain view's
            (flip_averaging.py); None: one view, as the original. Preprocessing itself ignores it.
        mask_score_weighting (`bool`, *optional*): post-processing multiplies each instance's score by the mean
            mask probability inside its masks, as Mask2Former's does, so that confident masks rank first (the
            original: no weighting, None).

    Frame sampling and cropping options (`do_sample_frames`, `fps`, `do_center_crop`, ...) raise: VisTR
    covers every frame of whole frames.
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = VisTRVideoProcessorKwargs
    size = {"shortest_edge": 300, "longest_edge": 1333}
    do_resize = True
    resample = int(Image.Resampling.BILINEAR)
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = list(IMAGENET_MEAN)
    image_std = list(IMAGENET_STD)
    do_convert_rgb = True
    default_to_square = False
    num_frames = 36
    stride = None
    resize_backend = "pil"
    pad_size_divisor = 1
    num_queries_per_frame = 10
    test_time_flips = None
    mask_score_weighting = None

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self.valid_kwargs.__annotations__) - BOOKKEEPING_KEYS)
        if unknown:
            raise TypeError(f"VisTRVideoProcessor got unknown settings {unknown}; it takes "
                            f"{sorted(PREPROCESS_OPTIONS)}, num_queries_per_frame, test_time_flips and mask_score_weighting")  # fmt: skip
        super().__init__(**kwargs)
        self.test_time_flips = list(check_flips(self.test_time_flips)) or None  # saved only when there are some
        self.preprocess_options({})  # a setting it cannot honour fails here, not at the first call

    # ----------------------------------------------------------------------------------- frames

    def preprocess_options(self, overrides: Mapping) -> PreprocessOptions:
        """The processor's settings with a call's `overrides`; what it cannot honour raises."""
        unknown = sorted(set(overrides) - set(PREPROCESS_OPTIONS) - set(UNSUPPORTED_OPTIONS))
        if unknown:
            raise TypeError(f"unexpected arguments {unknown}; VisTRVideoProcessor takes {sorted(PREPROCESS_OPTIONS)} "
                            "and return_tensors")  # fmt: skip

        def value(name: str):
            return overrides[name] if overrides.get(name) is not None else getattr(self, name, None)

        for name, (allowed, reason) in UNSUPPORTED_OPTIONS.items():
            if value(name) not in allowed:
                raise ValueError(f"{name}={value(name)!r} is not supported: {reason}")
        backend, order = value("resize_backend"), value("input_data_format")
        if backend not in ("pil", "torchvision"):
            raise ValueError(f"resize_backend={backend!r}: use 'pil' (exact) or 'torchvision' (fast)")
        if order not in CHANNEL_ORDERS:
            raise ValueError(f"input_data_format={order!r}: use 'channels_first', 'channels_last' or None (inferred)")
        num_frames, divisor = int(value("num_frames")), int(value("pad_size_divisor"))
        factor = float(value("rescale_factor"))
        for name, number in (("num_frames", num_frames), ("pad_size_divisor", divisor), ("rescale_factor", factor)):
            if number <= 0:
                raise ValueError(f"{name}={number} must be positive")
        return PreprocessOptions(
            do_convert_rgb=bool(value("do_convert_rgb")), do_resize=bool(value("do_resize")),
            shortest_edge=_size_edges(value("size"))[0], longest_edge=_size_edges(value("size"))[1],
            resample=_resample_filter(value("resample"), backend), resize_backend=backend,
            do_rescale=bool(value("do_rescale")), rescale_factor=factor, do_normalize=bool(value("do_normalize")),
            image_mean=_per_channel("image_mean", value("image_mean")),
            image_std=_per_channel("image_std", value("image_std")),
            channels_first=CHANNEL_ORDERS[order], device=value("device"), num_frames=num_frames,
            stride=clip_stride(num_frames, value("stride")), pad_size_divisor=divisor,
        )  # fmt: skip

    def preprocess_frame(self, image: Image.Image, options: PreprocessOptions) -> torch.Tensor:
        """One frame -> float32 [3, h, w] at the model's scale (on `options.device`)."""
        if image.mode != "RGB":
            if not options.do_convert_rgb:
                raise VideoReadError(f"a frame is in mode {image.mode}, not RGB: pass do_convert_rgb=True")
            image = image.convert("RGB")
        height, width = (image.height, image.width)
        if options.do_resize:
            height, width = resized_size(image.height, image.width, options.shortest_edge, options.longest_edge)
        if options.resize_backend == "pil" and (height, width) != (image.height, image.width):
            image = image.resize((width, height), options.resample)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).to(options.device).float()
        if (height, width) != tuple(pixels.shape[-2:]):  # the tensor backend
            mode = TORCH_RESAMPLING[options.resample]
            pixels = F.interpolate(pixels[None], (height, width), mode=mode, antialias=True, align_corners=False)[0]
        mean, std = (options.image_mean, options.image_std) if options.do_normalize else (None, None)
        return rescale_and_normalize(pixels, options.rescale_factor if options.do_rescale else None, mean, std)

    def video_clips(self, video, **kwargs) -> VideoClips:
        """One video as lazily read clips (for videos too long to preprocess at once); kwargs as for a call."""
        return VideoClips(self, video, self.preprocess_options(kwargs))

    @staticmethod
    def _as_video_list(videos) -> list:
        """One video (file, folder, frame list, 4-D array) or a list of videos -> a list of videos."""
        if isinstance(videos, (str, os.PathLike)):
            return [videos]
        if isinstance(videos, (list, tuple)):
            if not videos:
                raise VideoReadError("no videos given")
            first = videos[0]
            if isinstance(first, Image.Image) or (hasattr(first, "ndim") and first.ndim in (2, 3)):
                return [videos]  # a list of frames is one video
            return list(videos)
        if hasattr(videos, "ndim") and videos.ndim == 5:
            return list(videos)
        return [videos]

    def pad(self, videos: Sequence[torch.Tensor], pad_size_divisor: int | None = None) -> tuple[torch.Tensor, ...]:
        """Pad [T, 3, h, w] clips at the bottom/right to one size -> pixel_values [B, T, 3, H, W] and pixel_mask
        [B, T, H, W]."""
        frames = {video.shape[0] for video in videos}
        if len(frames) != 1:
            raise ValueError(f"clips of one batch must have the same number of frames, got {sorted(frames)}")
        divisor = pad_size_divisor or self.pad_size_divisor
        height = -(-max(v.shape[-2] for v in videos) // divisor) * divisor
        width = -(-max(v.shape[-1] for v in videos) // divisor) * divisor
        pixel_values = videos[0].new_zeros((len(videos), frames.pop(), 3, height, width))
        pixel_mask = torch.zeros(pixel_values.shape[:2] + (height, width), dtype=torch.long, device=pixel_values.device)
        for index, video in enumerate(videos):
            h, w = video.shape[-2:]
            pixel_values[index, :, :, :h, :w] = video
            pixel_mask[index, :, :h, :w] = 1
        return pixel_values, pixel_mask

    def preprocess(self, videos, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """
        Args:
            videos: one video or a list of videos (of any lengths and sizes). A video is a video file, a folder
                of frames, a list of PIL images or arrays, or a [T, H, W, C] / [T, C, H, W] array or tensor
                (uint8, or floats in 0..1).
            return_tensors: "pt" (default), "np", or None for lists (one tensor per clip).
            kwargs: any setting of the processor, for this call (`num_frames`, `stride`, `size`, `do_normalize`, ...).
        Returns:
            `BatchFeature` with the model's inputs `pixel_values` [N, T, 3, H, W] and `pixel_mask` [N, T, H, W]
            (1 = real pixel) for the N clips of all videos, and their layout for post-processing:
            `clip_video_indices` [N] (the video of each clip), `clip_frame_indices` [N, T] (the input frame at each
            position), `original_sizes` and `processed_sizes` [videos, 2] (height, width before and after resizing).
        """
        options = self.preprocess_options(kwargs)
        clips, video_indices, frame_indices, original_sizes, processed_sizes = [], [], [], [], []
        for index, video in enumerate(self._as_video_list(videos)):
            reader = VideoClips(self, video, options)
            for frames, pixels in reader:
                clips.append(pixels)
                video_indices.append(index)
                frame_indices.append(frames)
            original_sizes.append(reader.original_size)
            processed_sizes.append(reader.processed_size)
        pixel_values, pixel_mask = self.pad(clips, options.pad_size_divisor)
        layout = {"clip_video_indices": video_indices, "clip_frame_indices": frame_indices,
                  "original_sizes": original_sizes, "processed_sizes": processed_sizes}  # fmt: skip
        if return_tensors is None:
            return BatchFeature({"pixel_values": list(pixel_values), "pixel_mask": list(pixel_mask), **layout})
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: use 'pt', 'np' or None")
        tensors = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        tensors |= {key: torch.tensor(value) for key, value in layout.items()}
        if return_tensors == "np":
            tensors = {key: tensor.cpu().numpy() for key, tensor in tensors.items()}
        return BatchFeature(tensors, tensor_type=return_tensors)

    def __call__(self, videos=None, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    # ----------------------------------------------------------------------------------- outputs

    @staticmethod
    def frame_masks(mask_logits: torch.Tensor, original_size: Sequence[int], processed_size: Sequence[int] | None,
                    threshold: float = 0.5) -> torch.Tensor:
        """Mask logits [..., h4, w4] at stride 4 of the padded input -> bool masks [..., H, W] at the original size.

        The logits are first cropped to the stride-4 cells covering the unpadded frame (`processed_size`),
        so padding never stretches a mask; without padding this is the original's single bilinear resize.
        """
        return VisTRVideoProcessor._frame_masks_and_nonempty(mask_logits, original_size, processed_size, threshold)[0]

    @staticmethod
    def _frame_masks_and_nonempty(mask_logits: torch.Tensor, original_size: Sequence[int],
                                  processed_size: Sequence[int] | None, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """`frame_masks`, and whether each mask [...] has a positive pixel."""
        mask_logits = _cells_of_frame(mask_logits, processed_size)
        leading = mask_logits.shape[:-2]
        size = tuple(int(s) for s in original_size)
        masks, nonempty = upsample_and_threshold(mask_logits.reshape(-1, *mask_logits.shape[-2:]), size, threshold)
        return masks.reshape(*leading, *size), nonempty.reshape(leading)

    def weights_scores_by_mask(self, mask_score_weighting: bool | None = None) -> bool:
        """`mask_score_weighting` as given, else the processor's setting (None: no weighting)."""
        return bool(self.mask_score_weighting if mask_score_weighting is None else mask_score_weighting)

    @staticmethod
    def frame_class_scores(logits: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [T*n, C+1] -> per frame and slot: best real-class probability and its class, each [T, n]."""
        probabilities = logits.softmax(-1)[:, :-1]
        scores, labels = probabilities.reshape(num_frames, -1, probabilities.shape[-1]).max(-1)
        return scores, labels

    @staticmethod
    def majority_label(frame_labels: torch.Tensor) -> int:
        """Most frequent per-frame label; ties go to the smaller id (numpy's argmax of bincount)."""
        return int(torch.bincount(frame_labels).argmax())

    def _frames_per_clip(self, logits: torch.Tensor) -> int:
        """Frames of the clips behind `logits` [N, T*n, C+1], from the model's slots per frame."""
        queries = logits.shape[1]
        if queries % self.num_queries_per_frame:
            raise ValueError(
                f"{queries} queries do not split into frames of {self.num_queries_per_frame} "
                "(processor.num_queries_per_frame must equal the model's config.num_queries_per_frame)"
            )
        return queries // self.num_queries_per_frame

    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        target_sizes: Sequence[Sequence[int]] | None = None,
        clip_layout: Mapping | None = None,
        mask_format: str = "bool",
        id2label: Mapping[int, str] | None = None,
        mask_score_weighting: bool | None = None,
    ) -> list[list[dict]]:
        """
        Model outputs on a batch of clips -> the instances of each video, over all its frames (DETR's
        `post_process_instance_segmentation`, per video and with per-frame masks).

        Args:
            outputs: model outputs with `logits` [N, T*n, C+1] and `pred_masks` [N, T*n, h, w] for N clips.
            threshold: keep instances scoring at least this (0: every instance, as the YouTube-VIS results).
            mask_threshold: on the mask probability.
            target_sizes: (height, width) of each video's masks; default: its original size from `clip_layout`,
                else the masks' own resolution (no resizing).
            clip_layout: the processor's output for these clips (`inputs`): which clips and frames make which
                video, and the videos' sizes. Default: each clip is one whole video.
            mask_format: "bool" (`masks` bool [L, H, W]) or "rle" (`segmentations`: per-frame COCO RLE, None
                where the frame scores below 0.001, as in the YouTube-VIS results; needs pycocotools).
            id2label: class names (`model.config.id2label`) for `label_name`.
            mask_score_weighting: multiply each score by its mask confidence (default: the processor's setting).
        Returns:
            Per video, its instances in id order, each a dict with `id`, `score`, `label` (class id),
            `label_name`, `frame_scores` [L] and `masks` or `segmentations`.
        """
        logits, pred_masks = outputs.logits, outputs.pred_masks
        layout = (ClipLayout.from_inputs(clip_layout) if clip_layout is not None
                  else ClipLayout.whole_videos(logits.shape[0], self._frames_per_clip(logits)))  # fmt: skip
        if len(layout.video_indices) != logits.shape[0]:
            raise ValueError(f"the outputs hold {logits.shape[0]} clips but clip_layout describes "
                             f"{len(layout.video_indices)}: pass the processor's output for exactly these clips")
        sizes = target_sizes if target_sizes is not None else layout.original_sizes
        results = []
        for video in range(max(layout.video_indices) + 1):
            stitcher = ClipStitcher(None if sizes is None else sizes[video],
                                    None if layout.processed_sizes is None else layout.processed_sizes[video],
                                    mask_threshold, mask_format, mask_score_weighting=self.weights_scores_by_mask(
                                        mask_score_weighting))  # fmt: skip
            for clip in layout.clips_of(video):
                stitcher.add_clip(layout.frame_indices[clip], logits[clip], pred_masks[clip])
            results.append(stitcher.instances(threshold, id2label))
        return results

    def post_process_video_instance_segmentation(
        self,
        outputs,
        target_sizes: Sequence[Sequence[int]],
        video_lengths: Sequence[int] | None = None,
        mask_threshold: float = 0.5,
        processed_sizes: Sequence[Sequence[int]] | None = None,
    ) -> list[list[dict]]:
        """
        The original's results for clips that are each one whole video: every instance (no score threshold),
        bool masks; `to_youtube_vis_results` turns them into the benchmark's file.

        Args:
            outputs: model outputs with `logits` [B, T*n, C+1] and `pred_masks` [B, T*n, h, w].
            target_sizes: original (height, width) of each video.
            video_lengths: real frame count of each video (frames beyond it were repeated padding); default T.
            mask_threshold: on the mask probability.
            processed_sizes: resized (height, width) of each video before padding; default: not padded.
        """
        layout = ClipLayout.whole_videos(outputs.logits.shape[0], self._frames_per_clip(outputs.logits), video_lengths)
        inputs = {"clip_video_indices": layout.video_indices, "clip_frame_indices": layout.frame_indices,
                  "original_sizes": target_sizes, "processed_sizes": processed_sizes}  # fmt: skip
        return self.post_process_instance_segmentation(
            outputs, threshold=0.0, mask_threshold=mask_threshold, clip_layout=inputs
        )

    @staticmethod
    def to_youtube_vis_results(processed: Sequence[Sequence[dict]], video_ids: Sequence[int]) -> list[dict]:
        """Instances per video (either mask format) -> the YouTube-VIS results list (compressed RLE with str
        counts; None where a frame scores below 0.001)."""
        results = []
        for video_id, instances in zip(video_ids, processed):
            for instance in instances:
                segmentations = instance.get("segmentations")
                if segmentations is None:
                    frames = zip(instance["frame_scores"], instance["masks"])
                    segmentations = [frame_rle(mask, score) for score, mask in frames]
                results.append({
                    "video_id": int(video_id),
                    "score": float(instance["score"]),
                    "category_id": int(instance["label"]),
                    "segmentations": segmentations,
                })  # fmt: skip
        return results


def processor_for_model(config, processor: VisTRVideoProcessor | None = None) -> VisTRVideoProcessor:
    """`processor` (a copy) or the default one, with the clip length and slots per frame of the model that
    `config` describes: the model runs clips of no other length."""
    processor = copy.deepcopy(processor) if processor is not None else VisTRVideoProcessor()
    processor.num_frames, processor.num_queries_per_frame = config.num_frames, config.num_queries_per_frame
    return processor


def encode_rle(mask) -> dict:
    """Bool mask [H, W] -> COCO compressed RLE with str counts."""
    mask_utils = require("pycocotools.mask", "RLE masks (mask_format='rle', YouTube-VIS results)")
    array = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
    # a bool array is 0/1 bytes: viewed as uint8 without a copy; column-major masks (frame_masks) need none either
    array = np.asfortranarray(array.view(np.uint8) if array.dtype == np.bool_ else array.astype(np.uint8))
    rle = mask_utils.encode(array)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


VisTRVideoProcessor.register_for_auto_class("AutoVideoProcessor")


__all__ = [
    "ClipLayout", "ClipStitcher", "VideoClips", "VisTRVideoProcessor", "clip_count", "clip_stride", "default_stride",
    "encode_rle", "frame_rle", "iter_clips", "processor_for_model", "rescale_and_normalize", "resized_size",
    "sequence_iou",
]
