"""Segment videos of any length with a VisTR model of T frames, and the transformers pipeline for it.

A video of L frames is read one frame at a time. L < T: the frames are repeated up to T, as the
original `inference.py` does, and the first L frames' predictions are kept. L >= T: overlapping
clips of T frames start every `stride` frames (the last clip ends at the last frame); each
instance slot of a clip is linked to the instances of the previous clip by mask IoU over their
shared frames (Hungarian matching), so an object keeps one id through the whole video. Each frame
takes its masks from the first clip that covers it. Only T preprocessed frames are held at a
time, and masks are stored as RLE as soon as they are final, so memory does not grow with L
beyond the results.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from transformers import AutoModelForInstanceSegmentation, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

try:  # sibling modules of a package: Hub remote code (`trust_remote_code=True`)
    from .image_processing_vistr import MIN_FRAME_SCORE, VisTRVideoProcessor, encode_rle
    from .video_io import VideoReadError, describe, iter_frames
except ImportError:  # top-level modules: this project installed with pip
    from image_processing_vistr import MIN_FRAME_SCORE, VisTRVideoProcessor, encode_rle
    from video_io import VideoReadError, describe, iter_frames

TASK = "video-instance-segmentation"


def default_stride(num_frames: int) -> int:
    """Clips overlap by a quarter of their length (at least one frame) so instances can be linked."""
    return max(1, num_frames - max(1, num_frames // 4))


def sequence_iou(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Video IoU of every pair of instances: sum of per-frame intersections / sum of unions.

    previous [F, a, h, w], current [F, b, h, w] bool over the same F frames -> [a, b].
    """
    a = previous.flatten(2).transpose(0, 1).flatten(1).float()  # [a, F*h*w]
    b = current.flatten(2).transpose(0, 1).flatten(1).float()
    intersection = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


@dataclass
class Track:
    """One instance through the video: per-frame RLE, class score and class where a clip covered it."""

    track_id: int
    segmentations: dict[int, dict] = field(default_factory=dict)
    frame_scores: dict[int, float] = field(default_factory=dict)
    frame_labels: dict[int, int] = field(default_factory=dict)

    def add_frame(self, frame: int, mask: np.ndarray, score: float, label: int) -> None:
        self.segmentations[frame] = encode_rle(mask)
        self.frame_scores[frame] = score
        self.frame_labels[frame] = label

    def is_empty(self) -> bool:
        from pycocotools import mask as mask_utils

        return all(mask_utils.area(rle) == 0 for rle in self.segmentations.values())

    def result(self, length: int) -> dict:
        """Score, majority label and per-frame outputs over the frames this track covers."""
        frames = sorted(self.frame_scores)
        labels = torch.tensor([self.frame_labels[f] for f in frames])
        return {
            "id": self.track_id,
            "score": float(np.mean([self.frame_scores[f] for f in frames])),
            "label": VisTRVideoProcessor.majority_label(labels),
            "frame_scores": [self.frame_scores.get(f) for f in range(length)],
            "segmentations": [
                self.segmentations[f] if f in self.segmentations and self.frame_scores[f] >= MIN_FRAME_SCORE else None
                for f in range(length)
            ],
        }


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Post-process half-precision outputs in float32; keep float64 outputs exact."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class VideoSegmenter:
    """Runs a VisTR model over a whole video in clips and links the clips' instances into tracks."""

    def __init__(self, model, processor: VisTRVideoProcessor, stride: int | None = None,
                 mask_threshold: float = 0.5, min_link_iou: float = 0.1, device=None, dtype=None):
        self.model = model
        self.processor = processor
        self.num_frames = model.config.num_frames
        self.slots = model.config.num_queries_per_frame
        self.stride = stride or default_stride(self.num_frames)
        if not 1 <= self.stride <= self.num_frames:
            raise ValueError(f"stride={self.stride} must be between 1 and the model's {self.num_frames} frames")
        self.mask_threshold = mask_threshold
        self.min_link_iou = min_link_iou
        self.device = device if device is not None else next(model.parameters()).device
        self.dtype = dtype if dtype is not None else next(model.parameters()).dtype

    def __call__(self, source, on_clip: Callable[[], None] | None = None) -> dict:
        """Segment one video. Returns {"length", "height", "width", "instances": [track results]}."""
        state = _VideoState()
        window: deque[tuple[int, torch.Tensor]] = deque(maxlen=self.num_frames)
        next_start, last_end = 0, 0
        for index, image in enumerate(iter_frames(source)):
            state.check_size(image, index, source)
            window.append((index, self.processor.preprocess_frame(image)))
            if index == next_start + self.num_frames - 1:
                self._run_clip(list(window), state)
                last_end, next_start = index + 1, next_start + self.stride
                if on_clip:
                    on_clip()
        length = state.length
        if length < self.num_frames:
            repeated = [window[i % length] for i in range(self.num_frames)]
            self._run_clip(repeated, state)
        elif last_end < length:
            self._run_clip(list(window), state)
        tracks = [t for t in state.tracks if not t.is_empty()]
        height, width = state.size
        return {"length": length, "height": height, "width": width, "instances": [t.result(length) for t in tracks]}

    def clip_count(self, length: int) -> int:
        if length <= self.num_frames:
            return 1
        full = (length - self.num_frames) // self.stride + 1
        return full + (1 if (full - 1) * self.stride + self.num_frames < length else 0)

    @torch.no_grad()
    def _predict(self, frames: list[torch.Tensor]):
        pixel_values = torch.stack(frames)[None].to(self.device, self.dtype)
        outputs = self.model(pixel_values=pixel_values)
        logits, masks = (_at_least_float32(t[0]) for t in (outputs.logits, outputs.pred_masks))
        scores, labels = self.processor.frame_class_scores(logits, self.num_frames)
        masks = masks.reshape(self.num_frames, self.slots, *masks.shape[-2:])
        return scores.cpu(), labels.cpu(), masks.cpu()

    def _run_clip(self, window: list[tuple[int, torch.Tensor]], state: _VideoState) -> None:
        indices = [index for index, _ in window]
        scores, labels, masks = self._predict([frame for _, frame in window])
        first_positions = {}
        for position, index in enumerate(indices):
            first_positions.setdefault(index, position)  # repeated frames: keep the first prediction
        slot_tracks = self._link(state, first_positions, masks)
        for index, position in sorted(first_positions.items()):
            if index in state.done_frames:
                continue
            binary = self.processor.frame_masks(masks[position], state.size, None, self.mask_threshold).numpy()
            for slot, track in enumerate(slot_tracks):
                track.add_frame(index, binary[slot], float(scores[position, slot]), int(labels[position, slot]))
            state.done_frames.add(index)
        state.previous = {index: (masks[position] > 0, slot_tracks) for index, position in first_positions.items()}

    def _link(self, state: _VideoState, positions: dict[int, int], masks: torch.Tensor) -> list[Track]:
        """Track of each slot of this clip: linked to the previous clip's tracks, or new."""
        shared = sorted(set(positions) & set(state.previous))
        slot_tracks: list[Track | None] = [None] * self.slots
        if shared:
            previous_tracks = state.previous[shared[0]][1]
            previous_masks = torch.stack([state.previous[f][0] for f in shared])
            current_masks = torch.stack([masks[positions[f]] > 0 for f in shared])
            iou = sequence_iou(previous_masks, current_masks).numpy()
            for prev, cur in zip(*linear_sum_assignment(-iou)):
                if iou[prev, cur] >= self.min_link_iou:
                    slot_tracks[cur] = previous_tracks[prev]
        for slot in range(self.slots):
            if slot_tracks[slot] is None:
                slot_tracks[slot] = state.new_track()
        return slot_tracks


class _VideoState:
    """What segmenting one video keeps between clips."""

    def __init__(self):
        self.tracks: list[Track] = []
        self.done_frames: set[int] = set()
        self.previous: dict[int, tuple[torch.Tensor, list[Track]]] = {}
        self.size: tuple[int, int] | None = None
        self.length = 0

    def check_size(self, image, index: int, source) -> None:
        size = (image.height, image.width)
        if self.size is None:
            self.size = size
        elif size != self.size:
            raise VideoReadError(f"{describe(source)}: frame {index} is {size[0]}x{size[1]}, the first frame "
                                 f"{self.size[0]}x{self.size[1]}; all frames of a video must have one size")
        self.length = index + 1

    def new_track(self) -> Track:
        self.tracks.append(Track(track_id=len(self.tracks)))
        return self.tracks[-1]


def decode_masks(segmentations: list[dict | None], height: int, width: int) -> np.ndarray:
    """Per-frame RLE (None = no mask) -> bool [L, H, W]."""
    from pycocotools import mask as mask_utils

    masks = np.zeros((len(segmentations), height, width), dtype=bool)
    for frame, rle in enumerate(segmentations):
        if rle is not None:
            masks[frame] = mask_utils.decode(rle).astype(bool)
    return masks


class VideoInstanceSegmentationPipeline(Pipeline):
    """`pipeline("video-instance-segmentation", model=...)(video)`.

    A video is a video file, a folder of frames, a tuple/list of frames or a [T, H, W, C] array;
    a list of videos gives a list of results. Each result is a list of instances, each with `id`,
    `label` (name), `label_id`, `score`, `frame_scores` and per-frame `masks` (bool [L, H, W], or
    per-frame RLE with `mask_format="rle"`).
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.video_processor is None:
            self.video_processor = VisTRVideoProcessor(num_queries_per_frame=self.model.config.num_queries_per_frame)

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, list) and inputs and not isinstance(inputs[0], (str, list, tuple)) and getattr(inputs[0], "ndim", 3) < 4:
            inputs = tuple(inputs)  # a list of frames is one video, not a list of videos
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, stride=None, mask_threshold=None, mask_format=None, **kwargs):
        forward = {k: v for k, v in (("stride", stride), ("mask_threshold", mask_threshold)) if v is not None}
        postprocess = {"mask_format": mask_format} if mask_format is not None else {}
        return {}, forward, postprocess

    def preprocess(self, video):
        return {"video": video}

    def _forward(self, model_inputs, stride=None, mask_threshold=0.5):
        segmenter = VideoSegmenter(self.model, self.video_processor, stride=stride, mask_threshold=mask_threshold,
                                   device=self.device, dtype=self.model.dtype)
        return segmenter(model_inputs["video"])

    def postprocess(self, video_result, mask_format="bool"):
        if mask_format not in ("bool", "rle"):
            raise ValueError(f"mask_format={mask_format!r}: use 'bool' or 'rle'")
        id2label = self.model.config.id2label
        instances = []
        for instance in video_result["instances"]:
            masks = instance["segmentations"]
            if mask_format == "bool":
                masks = decode_masks(masks, video_result["height"], video_result["width"])
            instances.append({
                "id": instance["id"], "label": id2label.get(instance["label"], str(instance["label"])),
                "label_id": instance["label"], "score": instance["score"],
                "frame_scores": instance["frame_scores"], "masks": masks,
            })  # fmt: skip
        return instances


def save_model_folder(model, folder, processor: VisTRVideoProcessor | None = None) -> None:
    """Write everything a model folder needs to be used anywhere: weights, config (with `auto_map` and
    `custom_pipelines`), the video processor config, and the code files for `trust_remote_code`."""
    processor = processor or VisTRVideoProcessor(num_queries_per_frame=model.config.num_queries_per_frame)
    VideoInstanceSegmentationPipeline(model=model, video_processor=processor).save_pretrained(folder)
    processor.save_pretrained(folder)


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=VideoInstanceSegmentationPipeline, pt_model=AutoModelForInstanceSegmentation, type="video"
)

__all__ = [
    "VideoInstanceSegmentationPipeline", "VideoSegmenter", "decode_masks", "default_stride", "save_model_folder", "sequence_iou",
]
