"""Training clips for VisTR from a YouTube-VIS `datasets.Dataset` (see `youtube_vis.load_youtube_vis`).

Reproduces the original `datasets/ytvos.py` + `datasets/transforms.py` (Epiphqny/VisTR):

* Sampling: one item per (video, frame) pair over every frame of every video. The clip of frame `f` of a
  video of `L` frames holds frames `f - inds[j]` with `inds = [i % L for i in range(T)][::-1]`; a negative
  index means a frame from the end, as Python indexing did in the original (`clip_frame_indices`).
* Targets: non-crowd instances only; per frame the annotation's box (xywh -> xyxy, clamped to the frame),
  its mask decoded from RLE or polygons, and `valid` = the frame is annotated. The class is the
  annotation's `category_id` used directly as a class index, as in the original (index 0 unused, the
  model's no-object class last); `label` (the dense index of `youtube_vis_features`) is not used.
* Training augmentation (`TrainTransform`): horizontal flip (p 0.5) -> resize (shortest edge drawn from
  288..512, longest <= 800) -> photometric distortion -> resize (400/500/600) -> random-size crop (sides
  in 384..600) -> resize (300, longest <= 540). Geometric draws are made once per clip and applied to
  every frame with its boxes and masks; the photometric distortion draws per frame, as the original's
  did (a loop over frames, each drawing its own brightness, contrast, saturation, hue and channel swap).
  Validation (`ValidationTransform`): resize shortest edge 300, longest <= 540. Both end in
  `clip_to_example`: ToTensor + ImageNet normalization, boxes to normalized (cx, cy, w, h).
  Every size is an `AugmentationOptions` field, so tiny CPU models can train at small resolutions.

Randomness: every draw uses torch's RNG, the global one unless a `torch.Generator` is passed to
`TrainTransform.__call__`. `VisTRClipDataset` uses the global one, or with a `seed` a generator per item
seeded by (seed, epoch, index), so that a run resumed in mid-epoch, with any number of DataLoader workers,
draws exactly the augmentations of an uninterrupted one (what `train_accelerate.py` uses). (The original drew from three RNGs: Python's `random` for flip, scales
and crop size, numpy's for the photometric distortion, torch's for the crop position; the distributions
here are the same.)

Deliberate differences from the original, each because the original's behaviour was a defect:

* A frame whose box the crop removes (no area left) becomes invalid; the original kept it valid with a
  degenerate box and an empty mask, training the model to find an object that is not in the frame.
* Instances with no valid frame in the clip are dropped. The original kept them (class 0, zero boxes):
  its matcher gave them a query but no loss term, so they only took a query away from a real instance.
* Invalid frames have zero boxes and empty masks (the original's were the flipped/scaled zeros, unused).
* The photometric distortion clips to 0..255 before converting to uint8; the original cast out-of-range
  floats to uint8 directly, which wraps around (bright pixels turn dark) or is undefined, by platform.
* Output layout: `pixel_values` [T, 3, H, W] (the original concatenated to [3T, H, W]) and, from
  `collate_fn`, `pixel_mask` with 1 = real pixel (the original's NestedTensor mask was True = padding).

    dataset = VisTRClipDataset(load_youtube_vis("ROOT"), num_frames=36, transform=TrainTransform())
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=True, collate_fn=collate_fn)

`VisTRClipStream` makes the same clips from a streaming source (`data_sources.open_training_data(...,
streaming=True)`): item i is the same clip with the same augmentation, in a seeded shuffled order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from datasets.utils.file_utils import is_local_path
from PIL import Image
from pycocotools import mask as mask_utils
from vistr.image_processing_vistr import VisTRVideoProcessor, rescale_and_normalize, resized_size
from vistr.tools.youtube_vis import YouTubeVISError
from vistr.video_io import check_regular_file


class TrainingDataError(YouTubeVISError):
    """A video, clip or option that cannot make a training clip; the message says which and the fix."""


# ----------------------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentationOptions:
    """Sizes and switches of `TrainTransform` and `ValidationTransform`; the defaults are the original's (R50).

    `scales` / `max_size`: the first random resize (shortest edge, longest-edge cap). `crop_scales`: the
    resize before the crop (no cap), `crop_min_size` / `crop_max_size`: the crop's side range.
    `final_scales` / `final_max_size`: the resize after the crop. `eval_scale` / `eval_max_size`: validation.
    """

    flip_probability: float = 0.5
    scales: tuple[int, ...] = (288, 320, 352, 392, 416, 448, 480, 512)
    max_size: int | None = 800
    photometric_distort: bool = True
    crop_scales: tuple[int, ...] = (400, 500, 600)
    crop_min_size: int = 384
    crop_max_size: int = 600
    final_scales: tuple[int, ...] = (300,)
    final_max_size: int | None = 540
    eval_scale: int = 300
    eval_max_size: int | None = 540

    def __post_init__(self) -> None:
        for name in ("scales", "crop_scales", "final_scales"):
            sizes = getattr(self, name)
            if not sizes or any(int(size) != size or size < 1 for size in sizes):
                raise TrainingDataError(f"{name} must be a non-empty list of positive integers, not {sizes}")
        checks = [
            (0.0 <= self.flip_probability <= 1.0, "flip_probability must be between 0 and 1"),
            (1 <= self.crop_min_size <= self.crop_max_size, "need 1 <= crop_min_size <= crop_max_size"),
            # The pre-crop resize makes both sides >= its scale, so every crop size drawn fits the frame.
            (self.crop_min_size <= min(self.crop_scales), "crop_min_size must not exceed the smallest crop_scales"),
            (self.eval_scale >= 1, "eval_scale must be positive"),
        ]
        for passed, message in checks:
            if not passed:
                raise TrainingDataError(f"{message} (got {self})")


# ----------------------------------------------------------------------------------------------------------
# Clips: sampling and targets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """T frames with their instances' targets, as the transforms pass them on (`N` instances).

    frames: T RGB images of one size. class_labels: int64 [N]. boxes: float32 [N, T, 4], absolute
    (x0, y0, x1, y1) pixels. masks: bool [N, T, H, W]. valid: bool [N, T], False where absent.
    """

    frames: list[Image.Image]
    class_labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        return self.frames[0].height, self.frames[0].width


def clip_frame_indices(frame_id: int, length: int, num_frames: int) -> list[int]:
    """Frames of the training clip ending at `frame_id`, in order, as in the original.

    The original steps back from `frame_id` by `inds = [i % length for i in range(num_frames)][::-1]`;
    a step past the first frame wraps to the end (Python's negative indexing) and a video shorter than
    the clip repeats. Returned as non-negative indices of the same frames.
    """
    if length < 1:
        raise TrainingDataError(f"a video needs at least one frame to make a clip, got length {length}")
    if not 0 <= frame_id < length:
        raise TrainingDataError(f"frame_id {frame_id} is outside a video of {length} frames")
    if num_frames < 1:
        raise TrainingDataError(f"num_frames must be at least 1, not {num_frames}")
    steps = [step % length for step in range(num_frames)][::-1]
    return [(frame_id - step) % length for step in steps]


def make_clip(row: Mapping, frame_indices: Sequence[int]) -> Clip:
    """The clip of a dataset row (schema `youtube_vis_features`) at `frame_indices`, before augmentation.

    `row["frames"]` may hold decoded PIL images or undecoded `{"path", "bytes"}` dicts (a row read
    with the arrow format); only the clip's frames are decoded.
    """
    video = row["video_id"]
    if not frame_indices:
        raise TrainingDataError(f"a clip of video {video} needs at least one frame index; see clip_frame_indices")
    if not row["frames"]:
        raise TrainingDataError(
            f"video {video} has no frames; remove it first, e.g. dataset.filter(lambda row: len(row['frames']) > 0)"
        )
    frames = _clip_frames(row, frame_indices)
    height, width = frames[0].height, frames[0].width
    instances = [instance for instance in row["instances"] if not instance["iscrowd"]]  # as the original
    per_instance = [_instance_targets(instance, frame_indices, height, width, video) for instance in instances]
    if not per_instance:
        return Clip(
            frames=frames,
            class_labels=torch.zeros(0, dtype=torch.int64),
            boxes=torch.zeros(0, len(frames), 4),
            masks=torch.zeros(0, len(frames), height, width, dtype=torch.bool),
            valid=torch.zeros(0, len(frames), dtype=torch.bool),
        )
    boxes, masks, valid = (torch.stack(parts) for parts in zip(*per_instance))
    class_labels = torch.tensor([instance["category_id"] for instance in instances], dtype=torch.int64)
    return Clip(frames=frames, class_labels=class_labels, boxes=boxes, masks=masks, valid=valid)


def _clip_frames(row: Mapping, frame_indices: Sequence[int]) -> list[Image.Image]:
    """Decode each distinct frame of the clip once, checking it has the video's size."""
    video, length = row["video_id"], len(row["frames"])
    if length != row["length"]:
        raise TrainingDataError(f"video {video} has length {row['length']} but {length} frames; rebuild the dataset")
    decoded: dict[int, Image.Image] = {}
    for index in frame_indices:
        if index not in decoded:
            if not 0 <= index < length:
                raise TrainingDataError(f"frame {index} is outside video {video} of {length} frames")
            decoded[index] = _decode_frame(row["frames"][index]).convert("RGB")
            if decoded[index].size != (row["width"], row["height"]):
                raise TrainingDataError(
                    f"video {video}, frame {index} is {decoded[index].width}x{decoded[index].height} but the video "
                    f"is {row['width']}x{row['height']}; fix the annotation's width/height or the frame file"
                )
    return [decoded[index] for index in frame_indices]


def _decode_frame(value: Image.Image | Mapping) -> Image.Image:
    """A frame as a PIL image. One given only by a local path (a YouTube-VIS folder's) must still be a regular
    file, as when the folder was loaded: a named pipe put in its place would hang training, not fail it."""
    if isinstance(value, Image.Image):
        return value
    if value.get("bytes") is None and value.get("path") and is_local_path(value["path"]):
        check_regular_file(value["path"])
    return datasets.Image().decode_example(dict(value))


def _instance_targets(
    instance: Mapping, frame_indices: Sequence[int], height: int, width: int, video: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes [T, 4] (xyxy, clamped), masks [T, H, W] and valid [T] of one instance at the clip's frames.

    A frame is valid when it has a box, as in the original; its mask is decoded from the frame's
    segmentation (empty when there is none).
    """
    for field in ("bboxes", "segmentations"):
        if len(instance[field]) <= max(frame_indices):
            raise TrainingDataError(
                f"instance {instance['id']} of video {video} has {len(instance[field])} {field} but the clip "
                f"needs frame {max(frame_indices)}; each instance needs one entry per frame"
            )
    boxes = torch.zeros(len(frame_indices), 4)
    masks = torch.zeros(len(frame_indices), height, width, dtype=torch.bool)
    valid = torch.zeros(len(frame_indices), dtype=torch.bool)
    for position, index in enumerate(frame_indices):
        box = instance["bboxes"][index]
        if box is None:
            continue
        x, y, box_width, box_height = box
        boxes[position] = torch.tensor([x, y, x + box_width, y + box_height])
        masks[position] = _decode_mask(instance["segmentations"][index], height, width)
        valid[position] = True
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)
    return boxes, masks, valid


def _decode_mask(segmentation: Mapping | None, height: int, width: int) -> torch.Tensor:
    """One frame's mask [H, W] bool from RLE (`counts`, `size`) or polygons; empty for None."""
    if segmentation is None:
        return torch.zeros(height, width, dtype=torch.bool)
    if segmentation.get("counts") is not None:
        rle = {"size": list(segmentation["size"]), "counts": segmentation["counts"].encode()}
        decoded = mask_utils.decode(rle)
    else:
        decoded = mask_utils.decode(mask_utils.frPyObjects(segmentation["polygons"], height, width)).any(axis=2)
    if decoded.shape != (height, width):
        raise TrainingDataError(
            f"a segmentation of size {list(decoded.shape)} does not match its {height}x{width} frame; fix its 'size'"
        )
    return torch.from_numpy(decoded.astype(bool))


# ----------------------------------------------------------------------------------------------------------
# Random draws: all from torch's RNG (see the module docstring)
# ----------------------------------------------------------------------------------------------------------


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), dtype=torch.float64, generator=generator).item()


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high], both included (like Python's `random.randint`)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _coin(probability: float, generator: torch.Generator | None) -> bool:
    return _uniform(0.0, 1.0, generator) < probability


def _choice(values: Sequence[int], generator: torch.Generator | None) -> int:
    return values[_randint(0, len(values) - 1, generator)]


# ----------------------------------------------------------------------------------------------------------
# Geometric transforms: frames, boxes and masks together
# ----------------------------------------------------------------------------------------------------------


def hflip_clip(clip: Clip) -> Clip:
    """Mirror every frame, box and mask left to right."""
    width = clip.size[1]
    x0, y0, x1, y1 = clip.boxes.unbind(-1)
    return replace(
        clip,
        frames=[frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for frame in clip.frames],
        boxes=torch.stack([width - x1, y0, width - x0, y1], dim=-1),
        masks=clip.masks.flip(-1),
    )


def resize_clip(clip: Clip, shortest_edge: int, longest_edge: int | None = None) -> Clip:
    """Resize as the original: the size rule of `resized_size` (the other side truncated), PIL bilinear
    for frames, boxes scaled by the size ratios, masks by nearest-neighbour interpolation."""
    height, width = clip.size
    new_height, new_width = resized_size(height, width, shortest_edge, longest_edge)
    if (new_height, new_width) == (height, width):
        return clip  # PIL returns an identical copy at the same size
    scale = torch.tensor([new_width / width, new_height / height] * 2, dtype=torch.float32)
    masks = clip.masks.flatten(0, 1)[:, None].to(torch.uint8)  # nearest on uint8 equals the original's float > 0.5
    masks = F.interpolate(masks, size=(new_height, new_width), mode="nearest")
    return replace(
        clip,
        frames=[frame.resize((new_width, new_height), Image.BILINEAR) for frame in clip.frames],
        boxes=clip.boxes * scale,
        masks=masks.view(*clip.masks.shape[:2], new_height, new_width).bool(),
    )


def crop_clip(clip: Clip, top: int, left: int, height: int, width: int) -> Clip:
    """Crop every frame to a region: boxes shifted and clipped to it, masks sliced.

    A frame whose box has no area left is marked invalid (the original kept it valid; see the module
    docstring).
    """
    boxes = clip.boxes - torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes = torch.minimum(boxes.view(*boxes.shape[:-1], 2, 2), torch.tensor([width, height], dtype=torch.float32))
    boxes = boxes.clamp(min=0)
    has_area = (boxes[..., 1, :] > boxes[..., 0, :]).all(-1)
    return replace(
        clip,
        frames=[frame.crop((left, top, left + width, top + height)) for frame in clip.frames],
        boxes=boxes.flatten(-2),
        masks=clip.masks[..., top : top + height, left : left + width],
        valid=clip.valid & has_area,
    )


def random_size_crop(clip: Clip, min_size: int, max_size: int, generator: torch.Generator | None = None) -> Clip:
    """The original's RandomSizeCrop: width, then height, each uniform in [min_size, min(side, max_size)],
    then a uniform position (top, then left), the same region for every frame."""
    height, width = clip.size
    if min(height, width) < min_size:
        raise TrainingDataError(f"cannot crop a {width}x{height} clip to at least {min_size} pixels a side")
    crop_width = _randint(min_size, min(width, max_size), generator)
    crop_height = _randint(min_size, min(height, max_size), generator)
    top = _randint(0, height - crop_height, generator)
    left = _randint(0, width - crop_width, generator)
    return crop_clip(clip, top, left, crop_height, crop_width)


# ----------------------------------------------------------------------------------------------------------
# Photometric distortion (per frame, as the original)
# ----------------------------------------------------------------------------------------------------------

BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18.0  # degrees
CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
_EPSILON = np.float32(np.finfo(np.float32).eps)


def bgr_to_hsv(image: np.ndarray) -> np.ndarray:
    """float32 [..., 3] B, G, R (any range) -> H in degrees [0, 360), S, V as OpenCV's float conversion,
    which the original used (including its epsilon guards, which decide the gray and black pixels)."""
    blue, green, red = image[..., 0], image[..., 1], image[..., 2]
    value = np.maximum(np.maximum(blue, green), red)
    spread = value - np.minimum(np.minimum(blue, green), red)
    saturation = spread / (np.abs(value) + _EPSILON)
    scale = np.float32(60.0) / (spread + _EPSILON)
    # The hue formula of the largest channel; red wins ties, then green (assigned last, so first in rank).
    hue = (red - green) * scale + 240
    is_green, is_red = value == green, value == red
    hue[is_green] = ((blue - red) * scale + 120)[is_green]
    hue[is_red] = ((green - blue) * scale)[is_red]
    hue[hue < 0] += 360
    return np.stack([hue, saturation, value], axis=-1).astype(np.float32)


def hsv_to_bgr(image: np.ndarray) -> np.ndarray:
    """Inverse of `bgr_to_hsv` (any hue, wrapped to 0..360). Each channel is V - V*S*clip(min(k, 4-k), 0, 1)
    with k = (n + H/60) mod 6, n = 1, 3, 5 for blue, green, red: OpenCV's six-sector formula, written
    without per-pixel sector lookups so that a full-size frame takes milliseconds."""
    hue, saturation, value = image[..., 0], image[..., 1], image[..., 2]
    sector_position = hue * np.float32(1 / 60)
    channels = []
    for offset in (1, 3, 5):
        k = np.mod(sector_position + offset, 6)
        channels.append(value - value * saturation * np.clip(np.minimum(k, 4 - k), 0, 1))
    return np.stack(channels, axis=-1).astype(np.float32)


def photometric_distort(clip: Clip, generator: torch.Generator | None = None) -> Clip:
    """The original's PhotometricDistort, drawn independently for each frame (its loop did so)."""
    return replace(clip, frames=[_distort_frame(frame, generator) for frame in clip.frames])


def _distort_frame(frame: Image.Image, generator: torch.Generator | None) -> Image.Image:
    """Random brightness; contrast before or after random saturation and hue; a random channel swap.

    Each step happens with probability 1/2, in the original's order of draws.
    """
    image = np.asarray(frame, dtype=np.float32).copy()
    if _coin(0.5, generator):
        image += np.float32(_uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA, generator))
    contrast_first = _coin(0.5, generator)
    if contrast_first:
        image = _random_contrast(image, generator)
    image = _random_saturation_and_hue(image, generator)
    if not contrast_first:
        image = _random_contrast(image, generator)
    if _coin(0.5, generator):
        image = image[..., CHANNEL_ORDERS[_randint(0, len(CHANNEL_ORDERS) - 1, generator)]]
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _random_contrast(image: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
    if _coin(0.5, generator):
        image = image * np.float32(_uniform(*CONTRAST_RANGE, generator))
    return image


def _random_saturation_and_hue(image: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
    """Scale saturation and rotate hue in HSV. The original handed its RGB arrays to OpenCV's BGR -> HSV
    conversion, so the hue is measured on R/B-swapped colours; kept, so a drawn hue shift means the same."""
    hsv = bgr_to_hsv(image)
    if _coin(0.5, generator):
        hsv[..., 1] *= np.float32(_uniform(*SATURATION_RANGE, generator))
    if _coin(0.5, generator):
        hue = hsv[..., 0] + np.float32(_uniform(-HUE_DELTA, HUE_DELTA, generator))
        hsv[..., 0] = np.where(hue > 360, hue - 360, np.where(hue < 0, hue + 360, hue))
    return hsv_to_bgr(hsv)


# ----------------------------------------------------------------------------------------------------------
# The training and validation transforms
# ----------------------------------------------------------------------------------------------------------


class TrainTransform:
    """The original's training augmentation (see the module docstring), sizes from `options`."""

    def __init__(self, options: AugmentationOptions = AugmentationOptions()) -> None:
        self.options = options

    def __call__(self, clip: Clip, generator: torch.Generator | None = None) -> Clip:
        """Augment a clip; draws from `generator`, or torch's global RNG when None."""
        options = self.options
        if _coin(options.flip_probability, generator):
            clip = hflip_clip(clip)
        clip = resize_clip(clip, _choice(options.scales, generator), options.max_size)
        if options.photometric_distort:
            clip = photometric_distort(clip, generator)
        clip = resize_clip(clip, _choice(options.crop_scales, generator))
        clip = random_size_crop(clip, options.crop_min_size, options.crop_max_size, generator)
        return resize_clip(clip, _choice(options.final_scales, generator), options.final_max_size)


class ValidationTransform:
    """Resize the shortest edge to `eval_scale` (longest <= `eval_max_size`), as for inference."""

    def __init__(self, options: AugmentationOptions = AugmentationOptions()) -> None:
        self.options = options

    def __call__(self, clip: Clip) -> Clip:
        return resize_clip(clip, self.options.eval_scale, self.options.eval_max_size)


# ----------------------------------------------------------------------------------------------------------
# Model inputs
# ----------------------------------------------------------------------------------------------------------


def clip_to_example(clip: Clip) -> dict:
    """A transformed clip -> {"pixel_values": float [T, 3, H, W] normalized, "labels": {...}}.

    labels: `class_labels` int64 [N], `boxes` float [N, T, 4] normalized (cx, cy, w, h) by the clip's
    H, W, `masks` bool [N, T, H, W], `valid` bool [N, T]; invalid frames have zero boxes and empty
    masks, and instances with no valid frame are dropped.
    """
    height, width = clip.size
    keep = clip.valid.any(dim=1)
    valid = clip.valid[keep]
    x0, y0, x1, y1 = clip.boxes[keep].unbind(-1)
    boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
    boxes = boxes / torch.tensor([width, height, width, height], dtype=torch.float32)
    labels = {
        "class_labels": clip.class_labels[keep],
        "boxes": boxes.masked_fill(~valid[..., None], 0),
        "masks": clip.masks[keep] & valid[..., None, None],
        "valid": valid,
    }
    return {"pixel_values": _normalized_pixels(clip.frames), "labels": labels}


def _normalized_pixels(frames: Sequence[Image.Image]) -> torch.Tensor:
    """All frames at once at the model's input scale, as the processor scales them (ToTensor + Normalize)."""
    pixels = torch.from_numpy(np.stack([np.asarray(frame, dtype=np.uint8) for frame in frames]))
    return rescale_and_normalize(pixels.permute(0, 3, 1, 2).float())


@functools.cache
def _padder() -> VisTRVideoProcessor:
    """The inference processor, so that training batches are padded exactly as inference inputs."""
    return VisTRVideoProcessor()


def collate_fn(batch: Sequence[Mapping]) -> dict:
    """Examples (`clip_to_example`) -> {"pixel_values": [B, T, 3, Hmax, Wmax] zero-padded at the bottom
    and right, "pixel_mask": long [B, T, Hmax, Wmax] (1 = real pixel), "labels": list of label dicts with
    masks zero-padded to Hmax, Wmax}."""
    if not batch:
        raise TrainingDataError("cannot collate an empty batch")
    pixel_values, pixel_mask = _padder().pad([example["pixel_values"] for example in batch])
    height, width = pixel_values.shape[-2:]
    labels = []
    for example in batch:
        masks = example["labels"]["masks"]
        padding = (0, width - masks.shape[-1], 0, height - masks.shape[-2])
        labels.append({**example["labels"], "masks": F.pad(masks, padding)})
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": labels}


# ----------------------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------------------


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator item `index` of `epoch` draws its augmentation from: a function of the three numbers
    only, so a clip is the same whichever process, worker, batch or order (map-style or streaming) makes it."""
    mixed = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index) % (1 << 63)
    return torch.Generator().manual_seed(mixed)


def _example(
    row: Mapping, frame_id: int, num_frames: int, transform: Callable[..., Clip], generator: torch.Generator | None
) -> dict:
    """Item (row, frame_id) as `clip_to_example` gives it; `transform` draws from `generator` (global RNG if None)."""
    clip = make_clip(row, clip_frame_indices(frame_id, row["length"], num_frames))
    return clip_to_example(transform(clip) if generator is None else transform(clip, generator))


def _check_clip_options(video_ids: Sequence[int], lengths: Sequence[int], num_frames: int) -> None:
    if num_frames < 1:
        raise TrainingDataError(f"num_frames must be at least 1, not {num_frames}")
    empty = [video for video, length in zip(video_ids, lengths) if length < 1]
    if empty:
        raise TrainingDataError(
            f"{len(empty)} videos have no frames (ids {empty[:10]}); remove them first, "
            "e.g. dataset.filter(lambda row: row['length'] > 0)"
        )


class VisTRClipDataset(torch.utils.data.Dataset):
    """Training clips over every (video, frame) pair of a YouTube-VIS `datasets.Dataset`, as the original.

    Item `i` is the clip (`clip_frame_indices`) ending at the `i`-th frame counted over all videos in
    row order, after `transform` (`TrainTransform`, `ValidationTransform` or any Clip -> Clip callable),
    as `clip_to_example` returns it. Without `seed`, random transforms draw from torch's global RNG. With
    `seed`, item `i` of epoch `e` (`set_epoch`) draws from `item_generator(seed, e, i)`: the same
    augmentation whatever the worker count, the batch it lands in or a resume in mid-epoch.
    """

    def __init__(
        self, dataset: datasets.Dataset, num_frames: int, transform: Callable[..., Clip], seed: int | None = None
    ) -> None:
        lengths = [int(length) for length in dataset["length"]]
        _check_clip_options(dataset["video_id"], lengths, num_frames)
        self.num_frames = num_frames
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.num_videos = len(lengths)
        self.items = [(video, frame) for video, length in enumerate(lengths) for frame in range(length)]
        self._rows = dataset.with_format("arrow")  # rows without decoding every frame of the video

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        video, frame_id = self.items[index]
        row = self._rows[video].to_pylist()[0]
        generator = None if self.seed is None else item_generator(self.seed, self.epoch, index)
        return _example(row, frame_id, self.num_frames, self.transform, generator)


def _frame_items(rows: dict[str, list], spans: Mapping[int, tuple[int, int]]) -> dict[str, list]:
    """Batched `map` over a row stream: each video -> one item per frame, numbered by `spans` (video id -> first
    item, frames) as `VisTRClipDataset` numbers them. Items hold a reference to their row, not a copy, so a
    shuffle buffer costs one row per video it has items of."""
    items: dict[str, list] = {"index": [], "frame": [], "row": []}
    for values in zip(*rows.values()):
        row = dict(zip(rows, values))
        first, length = spans.get(row["video_id"], (None, "no entry"))
        if length != row["length"]:
            raise TrainingDataError(
                f"video {row['video_id']} has {row['length']} frames in the stream but {length} in video_lengths; "
                "give the lengths of exactly the stream's videos"
            )
        for frame in range(length):
            items["index"].append(first + frame)
            items["frame"].append(frame)
            items["row"].append(row)
    return items


class VisTRClipStream(torch.utils.data.IterableDataset):
    """The clips of `VisTRClipDataset` from a streaming `datasets.IterableDataset` of YouTube-VIS rows.

    `video_lengths` (video id -> frames, in the rows' order; `data_sources.TrainingSplit.train_lengths`)
    numbers the items as `VisTRClipDataset` over the same rows would: item `i` is the same clip with the
    same augmentation (`item_generator(seed, epoch, i)`), and each example also carries `"item_index": i`.

    Order: every row expands to its frames' items, which datasets' `IterableDataset.shuffle(seed,
    shuffle_buffer)` shuffles (shard order, then a buffer of `shuffle_buffer` items) with `set_epoch`
    applied, so the order is a function of (seed, epoch) and the source's shards. Frames stay undecoded
    until their clip is made; the buffer holds one row (its frames' bytes) per video it has items of.

    Processes: item positions in that order are dealt out by position modulo `world_size` (not by
    `datasets.distributed.split_dataset_by_node`, whose shard split would change the order with the number
    of processes), before any clip is made; the last `total % world_size` positions are dropped so that
    every process gets `len(self)` items and as many batches. Each process (and worker) reads the whole row
    stream to do so. Give `world_size` > 1 only when nothing else splits the loader again (accelerate's
    `prepare` does, for an iterable dataset). DataLoader workers: worker w of K makes this process's
    batches w, w + K, ... (`batch_size` items each), so the loader's order does not depend on K.
    """

    def __init__(
        self,
        rows: datasets.IterableDataset,
        video_lengths: Mapping[int, int],
        num_frames: int,
        transform: Callable[..., Clip],
        seed: int,
        *,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 1,
    ) -> None:
        _check_clip_options(list(video_lengths), list(video_lengths.values()), num_frames)
        checks = [
            (shuffle_buffer >= 1, f"shuffle_buffer must be at least 1, not {shuffle_buffer}"),
            (0 <= rank < world_size, f"need 0 <= rank < world_size, not rank {rank} of {world_size}"),
            (batch_size >= 1, f"batch_size must be at least 1, not {batch_size}"),
        ]
        for passed, message in checks:
            if not passed:
                raise TrainingDataError(message)
        self.num_frames, self.transform, self.seed = num_frames, transform, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch, self._resume_point = 0, (0, 0)
        lengths = [int(length) for length in video_lengths.values()]
        self.num_items = sum(lengths)
        spans = dict(zip(video_lengths, zip(np.cumsum([0, *lengths[:-1]]).tolist(), lengths)))
        undecoded = rows.cast_column("frames", datasets.List(datasets.Image(decode=False)))
        columns = list(undecoded.features)
        items = undecoded.map(_frame_items, batched=True, remove_columns=columns, fn_kwargs={"spans": spans})
        self._items = items.shuffle(seed=seed, buffer_size=shuffle_buffer)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (its order and augmentations). accelerate's loader calls it at every iteration."""
        self.epoch = epoch

    def resume_at(self, epoch: int, start_batch: int) -> None:
        """A resume: of `epoch`, this process's first `start_batch` batches were used; they are skipped without
        making their clips (in that epoch only, however often `set_epoch` is called)."""
        self._resume_point = (epoch, start_batch)

    @property
    def start_batch(self) -> int:
        """This process's batches of the current epoch skipped as used before a resume."""
        epoch, start_batch = self._resume_point
        return start_batch if epoch == self.epoch else 0

    def __len__(self) -> int:
        """Items this process yields per epoch (before `start_batch` is skipped)."""
        return self.num_items // self.world_size

    def _mine(self, position: int, worker_id: int, num_workers: int) -> bool:
        """Whether this process, worker and resume point make the item at `position` of the epoch's order."""
        local_batch = position // self.world_size // self.batch_size
        return (
            position % self.world_size == self.rank
            and position < len(self) * self.world_size
            and local_batch >= self.start_batch
            and (local_batch - self.start_batch) % num_workers == worker_id
        )

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        self._items.set_epoch(self.epoch)
        position = 0
        for batch in self._items.iter(batch_size=64):  # `iter`, unlike `__iter__`, splits nothing by worker
            for index, frame, row in zip(batch["index"], batch["frame"], batch["row"]):
                if self._mine(position, worker_id, num_workers):
                    generator = item_generator(self.seed, self.epoch, index)
                    yield {**_example(row, frame, self.num_frames, self.transform, generator), "item_index": index}
                position += 1
        if position != self.num_items:
            raise TrainingDataError(
                f"the stream held {position} clips but video_lengths promise {self.num_items}; "
                "give the lengths of exactly the stream's videos"
            )
