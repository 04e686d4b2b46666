"""Linking a video's clips into instance tracks, and the instances as YouTube-VIS results.

The model segments clips of a fixed number of frames; a video longer than one clip is cut into overlapping
clips (image_processing_vistr.py). `ClipStitcher` takes each clip's outputs in order and links the clip's
instance slots to the previous clip's tracks by mask IoU over the frames they share (Hungarian matching), so
that an object keeps one id through the video. The processor's `post_process_instance_segmentation`, the
pipeline, the `vistr` command, the split job and the trainer's evaluation all stitch with it; the results
they write are `to_youtube_vis_results`'s.

Per instance, as the original `inference.py` computes it: the score is the mean over frames of the per-frame
best class probability, the label the majority of per-frame labels (ties to the smaller id), masks are
bilinearly upsampled to the original frame size and thresholded, and a frame whose score is below 0.001 gets
no segmentation in the YouTube-VIS results.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .mask_upsampling import upsample_and_threshold
from .optional_dependencies import require

MIN_FRAME_SCORE = 0.001  # the original writes no segmentation for a frame scored below this
MIN_LINK_IOU = 0.1  # a clip's slot continues a track of the previous clip only if their masks overlap this much
# the YouTube-VIS evaluator (maxDets) scores a video's best 100 results of each category: more never count
RESULTS_PER_VIDEO_AND_CATEGORY = 100


# ----------------------------------------------------------------------------------- per frame


def frame_class_scores(logits: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [T*n, C+1] -> per frame and slot: best real-class probability and its class, each [T, n]."""
    probabilities = logits.softmax(-1)[:, :-1]
    scores, labels = probabilities.reshape(num_frames, -1, probabilities.shape[-1]).max(-1)
    return scores, labels

def majority_label(frame_labels: torch.Tensor) -> int:
    """Most frequent per-frame label; ties go to the smaller id (numpy's argmax of bincount)."""
    return int(torch.bincount(frame_labels).argmax())


def frame_masks_and_nonempty(mask_logits: torch.Tensor, original_size: Sequence[int],
                           processed_size: Sequence[int] | None, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits [..., h4, w4] at stride 4 of the padded input -> bool masks [..., H, W] at the original size,
    and whether each mask [...] has a positive pixel.

    The logits are first cropped to the stride-4 cells covering the unpadded frame (`processed_size`),
    so padding never stretches a mask; without padding this is the original's single bilinear resize.
    """
    mask_logits = _cells_of_frame(mask_logits, processed_size)
    leading = mask_logits.shape[:-2]
    size = tuple(int(s) for s in original_size)
    masks, nonempty = upsample_and_threshold(mask_logits.reshape(-1, *mask_logits.shape[-2:]), size, threshold)
    return masks.reshape(*leading, *size), nonempty.reshape(leading)


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


def encode_rle(mask) -> dict:
    """Bool mask [H, W] -> COCO compressed RLE with str counts."""
    mask_utils = require("pycocotools.mask", "RLE masks (mask_format='rle', YouTube-VIS results)")
    array = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
    # a bool array is 0/1 bytes: viewed as uint8 without a copy; column-major masks (frame_masks) need none either
    array = np.asfortranarray(array.view(np.uint8) if array.dtype == np.bool_ else array.astype(np.uint8))
    rle = mask_utils.encode(array)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


# ----------------------------------------------------------------------------------- tracks


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
        scores, labels = frame_class_scores(logits, num_frames)
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
            binary, nonempty = frame_masks_and_nonempty(
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
        label = majority_label(torch.tensor([track.labels[frame] for frame in frames]))
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


__all__ = [
    "MIN_FRAME_SCORE", "MIN_LINK_IOU", "RESULTS_PER_VIDEO_AND_CATEGORY", "ClipStitcher", "encode_rle",
    "frame_class_scores", "frame_masks_and_nonempty", "frame_rle", "majority_label", "mask_confidence",
    "sequence_iou", "to_youtube_vis_results",
]
