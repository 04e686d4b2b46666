"""VisTR video processor: videos -> model-ready clips, and model outputs -> instances over every input frame.

Clips. The model sees clips of exactly `num_frames` frames (its config's). A shorter video repeats its frames
up to a clip, as the original `inference.py` does; a longer one becomes consecutive overlapping clips, one
starting every `stride` frames (default: a quarter of a clip overlaps), plus one ending at the last frame.
The processor returns all clips as one batch (`pixel_values` [clips, num_frames, 3, H, W]) with their layout
(the video and input frames of each clip, each video's sizes), and `post_process_instance_segmentation`
stitches the clips of each video back together (clip_linking.py): a clip's instance slots are linked to the
previous clip's tracks by mask IoU over the frames they share, so every instance has one id and covers every
input frame. Clips rather than frame sampling (`do_sample_frames`): instance segmentation must cover every frame.

Preprocessing reproduces the original exactly by default: PIL bilinear resize of the shortest edge (300 at
inference; the longest edge capped at 1333, which only frames thinner than 4.4:1 reach) and ImageNet
normalization, as torchvision's `Resize` + `ToTensor` + `Normalize` did in the original. A faster tensor path
(`resize_backend="torchvision"`, which can run on GPU) differs from PIL's resampling by up to a few 1e-3 and
is therefore not the default.

Post-processing reproduces the original `inference.py` (clip_linking.py says how). It runs on the CPU, where
the thresholded upsampling (mask_upsampling.py) computes only the pixels along mask edges: the same masks,
computed faster.
"""

from __future__ import annotations

import copy
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor

from .clip_linking import (
    ClipStitcher,
    frame_class_scores,
    frame_masks_and_nonempty,
    majority_label,
    to_youtube_vis_results,
)
from .flip_averaging import check_flips
from .video_io import VideoReadError, describe, iter_frames

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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


# ----------------------------------------------------------------------------------- the processor


class VisTRVideoProcessorKwargs(VideosKwargs, total=False):
    resize_backend: str
    pad_size_divisor: int
    num_queries_per_frame: int
    stride: int
    test_time_flips: list[str]
    mask_score_weighting: bool


# Decoded frames read ahead of their preprocessing, in bytes: decoding a run of frames between the torch operations
# of preprocessing and forward, instead of one frame between each, keeps it clear of the threads those operations
# leave spinning (on a 2-core AMD EPYC, 300 frames decoded in 1.2 s one by one inside `vistr segment`, 0.11 s alone).
READ_AHEAD_BYTES = 64 << 20


def _read_ahead(frames: Iterator[Image.Image]) -> Iterator[Image.Image]:
    """`frames`, decoded in runs of up to READ_AHEAD_BYTES (at least one frame) before any is handed on."""
    pending: list[Image.Image] = []
    held = 0
    for frame in frames:
        pending.append(frame)
        held += frame.width * frame.height * len(frame.getbands())
        if held >= READ_AHEAD_BYTES:
            yield from pending
            pending, held = [], 0
    yield from pending


class VideoClips:
    """One video as the model's clips of preprocessed frames, read one frame at a time when iterated.

    Yields (input frame indices [T], pixel values [T, 3, h, w]); after the first frame `original_size` and
    `processed_size` are known, after the last `length`. `on_frame` sees each decoded frame as read, so that a
    caller that needs the frames again (an overlay) need not decode the video twice.
    """

    def __init__(self, processor: VisTRVideoProcessor, video, options: PreprocessOptions,
                 on_frame: Callable[[Image.Image], None] | None = None):  # fmt: skip
        self.processor, self.video, self.options, self.on_frame = processor, video, options, on_frame
        self.original_size: tuple[int, int] | None = None
        self.processed_size: tuple[int, int] | None = None
        self.length = 0

    def __iter__(self) -> Iterator[tuple[list[int], torch.Tensor]]:
        for clip in iter_clips(self._frames(), self.options.num_frames, self.options.stride):
            yield [index for index, _ in clip], torch.stack([frame for _, frame in clip])

    def _frames(self) -> Iterator[torch.Tensor]:
        for index, image in enumerate(_read_ahead(iter_frames(self.video, self.options.channels_first))):
            size = (image.height, image.width)
            if self.original_size is None:
                self.original_size = size
            elif size != self.original_size:
                raise VideoReadError(
                    f"{describe(self.video)}: frame {index} is {size[0]}x{size[1]} but the first frame is "
                    f"{self.original_size[0]}x{self.original_size[1]}; all frames of a video must have one size"
                )
            if self.on_frame is not None:
                self.on_frame(image)
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

    def video_clips(self, video, on_frame: Callable[[Image.Image], None] | None = None, **kwargs) -> VideoClips:
        """One video as lazily read clips (for videos too long to preprocess at once); kwargs as for a call,
        `on_frame` as for `VideoClips`."""
        return VideoClips(self, video, self.preprocess_options(kwargs), on_frame)

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
        return frame_masks_and_nonempty(mask_logits, original_size, processed_size, threshold)[0]

    def weights_scores_by_mask(self, mask_score_weighting: bool | None = None) -> bool:
        """`mask_score_weighting` as given, else the processor's setting (None: no weighting)."""
        return bool(self.mask_score_weighting if mask_score_weighting is None else mask_score_weighting)

    frame_class_scores = staticmethod(frame_class_scores)
    majority_label = staticmethod(majority_label)

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

    to_youtube_vis_results = staticmethod(to_youtube_vis_results)


def processor_for_model(config, processor: VisTRVideoProcessor | None = None) -> VisTRVideoProcessor:
    """`processor` (a copy) or the default one, with the clip length and slots per frame of the model that
    `config` describes: the model runs clips of no other length."""
    processor = copy.deepcopy(processor) if processor is not None else VisTRVideoProcessor()
    processor.num_frames, processor.num_queries_per_frame = config.num_frames, config.num_queries_per_frame
    return processor


VisTRVideoProcessor.register_for_auto_class("AutoVideoProcessor")


__all__ = [
    "ClipLayout", "VideoClips", "VisTRVideoProcessor", "clip_count", "clip_stride", "default_stride", "iter_clips",
    "processor_for_model", "rescale_and_normalize", "resized_size",
]
