"""VisTR video processor: frames -> `pixel_values` / `pixel_mask`, and model outputs -> instances.

Preprocessing reproduces the original exactly by default: PIL bilinear resize of the shortest
edge (300 at inference) and ImageNet normalization, as torchvision's `Resize` + `ToTensor` +
`Normalize` did in the original. A faster tensor path (`resize_backend="torchvision"`, which can
run on GPU) differs from PIL's resampling by up to a few 1e-3 and is therefore not the default.

Post-processing reproduces the original `inference.py`: per instance slot, the score is the mean
over frames of the per-frame best class probability, the label the majority of per-frame labels
(ties to the smaller id), masks are bilinearly upsampled to the original frame size and
thresholded, and a frame whose score is below 0.001 gets no segmentation. On CPU the thresholded
upsampling decides whole input cells whose corners are all clearly on one side of the threshold and
interpolates only the cells along mask edges, with the bilinear kernel's own arithmetic (the same
masks, several times faster; benchmarks/bench_postprocess.py); the masks come out column-major, as
pycocotools encodes them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoVideoProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor

try:  # sibling modules of a package: Hub remote code (`trust_remote_code=True`)
    from .video_io import VideoReadError, iter_frames
except ImportError:  # top-level modules: this project installed with pip
    from configuration_vistr import VisTRConfig  # to register with AutoVideoProcessor below
    from video_io import VideoReadError, iter_frames

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_FRAME_SCORE = 0.001  # the original writes no segmentation for a frame scored below this


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


class VisTRVideoProcessorKwargs(VideosKwargs, total=False):
    resize_backend: str
    pad_size_divisor: int
    num_queries_per_frame: int


class VisTRVideoProcessor(BaseVideoProcessor):
    r"""
    Prepares videos for VisTR and turns its outputs into per-video instances.

    Args:
        size (`dict`): `{"shortest_edge": 300}` by default (the original inference); add `"longest_edge"` to cap the other side.
        resize_backend (`str`): `"pil"` (exact, default) or `"torchvision"` (tensor resize, faster, approximate).
        image_mean, image_std: normalization (ImageNet).
        pad_size_divisor (`int`): pad height and width of a batch to a multiple of this (1: just the largest frame).
        num_queries_per_frame (`int`): the model's instance slots per frame, to split its outputs into frames.
    """

    model_input_names = ["pixel_values", "pixel_mask"]
    valid_kwargs = VisTRVideoProcessorKwargs
    size = {"shortest_edge": 300}
    image_mean = list(IMAGENET_MEAN)
    image_std = list(IMAGENET_STD)
    resize_backend = "pil"
    pad_size_divisor = 1
    num_queries_per_frame = 10
    do_convert_rgb = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.resize_backend not in ("pil", "torchvision"):
            raise ValueError(f"resize_backend={self.resize_backend!r}: use 'pil' (exact) or 'torchvision' (fast)")

    # ----------------------------------------------------------------------------------- frames

    def _target_size(self, image: Image.Image, size: dict | None) -> tuple[int, int]:
        size = size or self.size
        edges = size if isinstance(size, dict) else vars(size)  # a dict, or transformers' SizeDict
        if not edges.get("shortest_edge"):
            raise ValueError(f"size must give 'shortest_edge' (and optionally 'longest_edge'), got {size}")
        return resized_size(image.height, image.width, int(edges["shortest_edge"]), edges.get("longest_edge"))

    def preprocess_frame(self, frame, size: dict | None = None) -> torch.Tensor:
        """One frame (PIL image or array, any mode) -> normalized float32 [3, h, w] at the model's scale."""
        image = frame if isinstance(frame, Image.Image) else next(iter_frames([frame]))
        image = image.convert("RGB")
        height, width = self._target_size(image, size)
        if self.resize_backend == "pil":
            if (height, width) != (image.height, image.width):
                image = image.resize((width, height), Image.BILINEAR)
            pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        else:
            pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
            pixels = F.interpolate(pixels[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        return pixels.sub(mean).div(std)

    def preprocess_video(self, video, size: dict | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """A whole video -> ([T, 3, h, w], original (height, width))."""
        frames, original_size = [], None
        for image in iter_frames(video):
            if original_size is None:
                original_size = (image.height, image.width)
            elif (image.height, image.width) != original_size:
                raise VideoReadError(
                    f"frame {len(frames)} is {image.height}x{image.width} but the video's first frame is "
                    f"{original_size[0]}x{original_size[1]}; all frames of a video must have one size"
                )
            frames.append(self.preprocess_frame(image, size))
        return torch.stack(frames), original_size

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

    def pad(self, videos: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad [T, 3, h, w] videos at the bottom/right to one size -> pixel_values [B, T, 3, H, W], pixel_mask [B, T, H, W]."""
        frames = {video.shape[0] for video in videos}
        if len(frames) != 1:
            raise ValueError(f"videos of one batch must have the same number of frames, got {sorted(frames)}")
        divisor = self.pad_size_divisor
        height = -(-max(v.shape[-2] for v in videos) // divisor) * divisor
        width = -(-max(v.shape[-1] for v in videos) // divisor) * divisor
        pixel_values = videos[0].new_zeros((len(videos), frames.pop(), 3, height, width))
        pixel_mask = torch.zeros(pixel_values.shape[:2] + (height, width), dtype=torch.long)
        for index, video in enumerate(videos):
            h, w = video.shape[-2:]
            pixel_values[index, :, :, :h, :w] = video
            pixel_mask[index, :, :h, :w] = 1
        return pixel_values, pixel_mask

    def preprocess(self, videos, size: dict | None = None, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """
        Args:
            videos: one video or a list of videos. A video is a video file, a folder of frames, a list of
                PIL images or arrays, or a [T, H, W, C] array / tensor (uint8, or floats in 0..1).
            size: overrides `self.size` for this call.
        Returns:
            `BatchFeature` with `pixel_values` [B, T, 3, H, W] and `pixel_mask` [B, T, H, W] (1 = real pixel).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        processed = [self.preprocess_video(video, size)[0] for video in self._as_video_list(videos)]
        pixel_values, pixel_mask = self.pad(processed)
        return BatchFeature({"pixel_values": pixel_values, "pixel_mask": pixel_mask}, tensor_type=return_tensors)

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
        if processed_size is not None:
            rows, cols = -(-int(processed_size[0]) // 4), -(-int(processed_size[1]) // 4)
            mask_logits = mask_logits[..., :rows, :cols]
        leading = mask_logits.shape[:-2]
        size = tuple(int(s) for s in original_size)
        flat = mask_logits.reshape(-1, *mask_logits.shape[-2:])
        fast = _upsample_threshold_by_cells(flat, size, threshold)
        if fast is not None:
            masks, nonempty = fast
        else:
            upsampled = F.interpolate(flat[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            masks = upsampled.sigmoid() > threshold
            nonempty = masks.flatten(1).any(1)
        return masks.reshape(*leading, *size), nonempty.reshape(leading)

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

    def post_process_video_instance_segmentation(
        self,
        outputs,
        target_sizes: Sequence[Sequence[int]],
        video_lengths: Sequence[int] | None = None,
        mask_threshold: float = 0.5,
        processed_sizes: Sequence[Sequence[int]] | None = None,
    ) -> list[list[dict]]:
        """
        Args:
            outputs: model outputs with `logits` [B, T*n, C+1] and `pred_masks` [B, T*n, h, w].
            target_sizes: original (height, width) of each video.
            video_lengths: real frame count of each video (frames beyond it were repeated padding); default T.
            mask_threshold: on the mask probability.
            processed_sizes: resized (height, width) of each video before padding; default: not padded.
        Returns:
            Per video, a list of instances (slots whose mask is non-empty in some frame), each a dict with
            `slot`, `score`, `label`, `frame_scores` [L] and `masks` bool [L, H, W].
        """
        logits, pred_masks = outputs.logits, outputs.pred_masks
        batch, queries = logits.shape[:2]
        if queries % self.num_queries_per_frame:
            raise ValueError(
                f"{queries} queries do not split into frames of {self.num_queries_per_frame} "
                "(processor.num_queries_per_frame must equal the model's config.num_queries_per_frame)"
            )
        num_frames = queries // self.num_queries_per_frame
        results = []
        for index in range(batch):
            length = num_frames if video_lengths is None else int(video_lengths[index])
            scores, labels = self.frame_class_scores(logits[index], num_frames)
            masks = pred_masks[index].reshape(num_frames, -1, *pred_masks.shape[-2:])[:length]
            binary, nonempty = self._frame_masks_and_nonempty(
                masks, target_sizes[index], None if processed_sizes is None else processed_sizes[index], mask_threshold)
            results.append(self._instances(scores[:length], labels[:length], binary, nonempty.any(0)))
        return results

    def _instances(self, scores: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                   nonempty: torch.Tensor | None = None) -> list[dict]:
        """scores, labels [L, n]; masks [L, n, H, W] (nonempty [n]: a slot's mask has a pixel in some frame)
        -> instances of non-empty slots, in slot order."""
        if nonempty is None:
            nonempty = masks.flatten(2).any(2).any(0)
        instances = []
        for slot in range(scores.shape[1]):
            if not nonempty[slot]:
                continue
            instances.append({
                "slot": slot,
                "score": float(scores[:, slot].mean()),
                "label": self.majority_label(labels[:, slot]),
                "frame_scores": scores[:, slot].tolist(),
                "masks": masks[:, slot],
            })  # fmt: skip
        return instances

    @staticmethod
    def to_youtube_vis_results(processed: Sequence[Sequence[dict]], video_ids: Sequence[int]) -> list[dict]:
        """Instances per video -> the YouTube-VIS results list (compressed RLE with str counts; None below 0.001)."""
        results = []
        for video_id, instances in zip(video_ids, processed):
            for instance in instances:
                results.append({
                    "video_id": int(video_id),
                    "score": float(instance["score"]),
                    "category_id": int(instance["label"]),
                    "segmentations": [
                        None if score < MIN_FRAME_SCORE else encode_rle(mask)
                        for score, mask in zip(instance["frame_scores"], instance["masks"])
                    ],
                })  # fmt: skip
        return results


# ----------------------------------------------------------------------------------- mask upsampling


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 a * b + c rounded once, as a fused multiply-add (float32 products are exact in float64)."""
    return (a.double() * b.double() + c.double()).float()


def _combine(p: torch.Tensor, q: torch.Tensor, wp: torch.Tensor, wq: torch.Tensor, fused: bool) -> torch.Tensor:
    """p * wp + q * wq; with `fused`, the first product and the sum rounded once, as a compiler contracts it."""
    return _fma(p, wp, q * wq) if fused else p * wp + q * wq


def _linear_weights(out_size: int, in_size: int, dtype: torch.dtype, fused: bool) -> tuple[torch.Tensor, ...]:
    """First input index and the two weights of each output index of F.interpolate(mode="bilinear",
    align_corners=False), computed as its CPU kernel computes them: ratio in/out and source index
    ratio * (i + 0.5) - 0.5 in the input's float type, clamped at 0, floorf."""
    if out_size == in_size:
        return torch.arange(out_size), torch.ones(out_size, dtype=dtype), torch.zeros(out_size, dtype=dtype)
    ratio = torch.tensor(in_size, dtype=dtype) / out_size
    centers = torch.arange(out_size, dtype=dtype) + 0.5
    source = _fma(ratio, centers, torch.tensor(-0.5)) if fused else ratio * centers - 0.5
    source = source.clamp(min=0)
    index0 = source.float().floor().long().clamp(max=in_size - 1)
    lambda1 = (source - index0.to(dtype)).clamp(0, 1)
    return index0, 1 - lambda1, lambda1


def _bilinear(logits: torch.Tensor, size: tuple[int, int], fused: bool) -> torch.Tensor:
    """The whole upsampling [N, h, w] -> [N, H, W] with `_linear_weights` and `_combine` (for the probe)."""
    h, w = logits.shape[-2:]
    rows0, row_w0, row_w1 = _linear_weights(size[0], h, logits.dtype, fused)
    cols0, col_w0, col_w1 = _linear_weights(size[1], w, logits.dtype, fused)
    rows1, cols1 = (rows0 + 1).clamp(max=h - 1), (cols0 + 1).clamp(max=w - 1)
    upper = _combine(logits[:, rows0][:, :, cols0], logits[:, rows0][:, :, cols1], col_w0, col_w1, fused)
    lower = _combine(logits[:, rows1][:, :, cols0], logits[:, rows1][:, :, cols1], col_w0, col_w1, fused)
    return _combine(upper, lower, row_w0[:, None], row_w1[:, None], fused)


_BILINEAR_ARITHMETIC: dict[torch.dtype, bool | None] = {}


def _bilinear_arithmetic(dtype: torch.dtype) -> bool | None:
    """Whether this PyTorch build's CPU bilinear kernel fuses its multiply-adds (True) or not (False), found
    by reproducing it bit for bit on a probe; None if neither does (then the kernel itself is used).
    float64 is only tried unfused (an exact float64 FMA is not at hand)."""
    if dtype not in _BILINEAR_ARITHMETIC:
        probe = torch.randn(3, 11, 13, generator=torch.Generator().manual_seed(0), dtype=dtype) * 4
        size = (70, 90)  # H + W > 128: the kernel's generic path, as for frame-sized outputs
        expected = F.interpolate(probe[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        candidates = (True, False) if dtype == torch.float32 else (False,)
        _BILINEAR_ARITHMETIC[dtype] = next((f for f in candidates if torch.equal(_bilinear(probe, size, f), expected)), None)
    return _BILINEAR_ARITHMETIC[dtype]


def _output_chunks(index0: torch.Tensor, in_size: int, out_size: int) -> tuple[int, torch.Tensor, ...]:
    """Output indices reading input index i as their first tap, cut into runs of at most `g`.

    Returns g, the number of runs of each input index [in], its first run [in], and each run's start and
    length. Interior runs are whole; the border ones, longer (the kernel clamps there), are cut in two.
    """
    count = torch.bincount(index0, minlength=in_size)
    start = count.cumsum(0) - count
    g = -(-out_size // in_size)
    pieces = -(-count // g)
    first = pieces.cumsum(0) - pieces
    source = torch.repeat_interleave(torch.arange(in_size), pieces)
    run_start = start[source] + (torch.arange(len(source)) - first[source]) * g
    run_length = torch.minimum(torch.tensor(g), start[source] + count[source] - run_start)
    return g, pieces, first, run_start, run_length


def _upsample_threshold_by_cells(logits: torch.Tensor, size: tuple[int, int], threshold: float):
    """sigmoid(bilinear upsampling of logits [N, h, w] to `size`) > threshold, deciding whole cells at once.

    An output pixel interpolates the 4 corners of one input cell with non-negative weights, so it lies
    between their minimum and maximum: a cell whose 4 corners are all clearly above (below) the
    threshold's logit makes all its output pixels True (False) without computing them. Only the pixels
    of the remaining cells (along mask edges) are interpolated with the kernel's own weights and
    arithmetic (bit for bit, checked once on a probe: `_bilinear_arithmetic`) and passed through the
    sigmoid as before. Returns (masks [N, H, W] bool, stored
    column-major per mask as pycocotools wants them; nonempty [N]), or None where the plain path is the
    better one: other devices or dtypes, extreme thresholds, non-finite logits, downsampling or small
    outputs, or mostly undecided cells (noise-like logits).
    """
    n, h, w = logits.shape
    height, width = size
    if (logits.device.type != "cpu" or logits.dtype not in (torch.float32, torch.float64) or not 0.01 <= threshold <= 0.99
            or n == 0 or height < h or width < w or height * width < 16 * h * w or height + width <= 128):
        return None
    fused = _bilinear_arithmetic(logits.dtype)
    if fused is None:
        return None
    magnitude = float(logits.abs().amax())
    if not math.isfinite(magnitude):
        return None
    dtype = logits.dtype
    rows0, row_w0, row_w1 = _linear_weights(height, h, dtype, fused)
    cols0, col_w0, col_w1 = _linear_weights(width, w, dtype, fused)
    # cell (i, j) has corners at rows i, min(i + 1, h - 1) and columns j, min(j + 1, w - 1); when upsampling
    # every cell is some pixel's
    below_row = torch.cat([logits[:, 1:], logits[:, -1:]], dim=1)
    low, high = torch.minimum(logits, below_row), torch.maximum(logits, below_row)
    low = torch.minimum(low, torch.cat([low[:, :, 1:], low[:, :, -1:]], dim=2))
    high = torch.maximum(high, torch.cat([high[:, :, 1:], high[:, :, -1:]], dim=2))
    boundary = math.log(threshold / (1 - threshold))
    # far beyond any rounding of the interpolation (relative) and of the sigmoid (absolute)
    margin = 1e-3 * (1 + abs(boundary)) + 1e-5 * magnitude
    above = low > boundary + margin
    undecided = (high >= boundary - margin) & ~above
    cells = undecided.nonzero()  # [K, 3]: (mask, i, j)
    if cells.shape[0] > 0.25 * n * h * w:
        return None  # mostly undecided: plain upsampling is cheaper
    # decided cells to pixels, in column-major storage [N, W, H] (numpy's repeat copies whole runs)
    row_count, col_count = torch.bincount(rows0, minlength=h), torch.bincount(cols0, minlength=w)
    expanded = np.repeat(above.transpose(1, 2).contiguous().numpy(), row_count.numpy(), axis=2)  # [N, w, H]
    masks_t = torch.from_numpy(np.repeat(expanded, col_count.numpy(), axis=1))  # [N, W, H]
    nonempty = above.flatten(1).any(1)
    if cells.shape[0]:
        # the pixels of undecided cells, as blocks of row runs x column runs of the cell
        g_rows, row_pieces, row_first, row_start, row_length = _output_chunks(rows0, h, height)
        g_cols, col_pieces, col_first, col_start, col_length = _output_chunks(cols0, w, width)
        index, i, j = cells.unbind(1)
        blocks = row_pieces[i] * col_pieces[j]  # 1 but at the borders
        if bool((blocks != 1).any()):
            cell = torch.repeat_interleave(torch.arange(len(index)), blocks)
            local = torch.arange(len(cell)) - torch.repeat_interleave(blocks.cumsum(0) - blocks, blocks)
            row_run = row_first[i[cell]] + torch.div(local, col_pieces[j[cell]], rounding_mode="floor")
            col_run = col_first[j[cell]] + local % col_pieces[j[cell]]
            index, i, j = index[cell], i[cell], j[cell]
        else:
            row_run, col_run = row_first[i], col_first[j]
        # runs padded to g by repeating their last pixel (recomputed and rewritten with the same value)
        r = row_start[row_run, None] + torch.minimum(torch.arange(g_rows), row_length[row_run, None] - 1)  # [K, gr]
        c = col_start[col_run, None] + torch.minimum(torch.arange(g_cols), col_length[col_run, None] - 1)  # [K, gc]
        next_i, next_j = (i + 1).clamp(max=h - 1), (j + 1).clamp(max=w - 1)
        v00, v01 = logits[index, i, j, None], logits[index, i, next_j, None]
        v10, v11 = logits[index, next_i, j, None], logits[index, next_i, next_j, None]
        w0, w1 = col_w0[c], col_w1[c]  # [K, gc]
        # the CPU kernel's order: (v00 * w0 + v01 * w1) * h0 + (v10 * w0 + v11 * w1) * h1
        upper, lower = _combine(v00, v01, w0, w1, fused), _combine(v10, v11, w0, w1, fused)
        values = _combine(upper[:, :, None], lower[:, :, None], row_w0[r][:, None, :], row_w1[r][:, None, :], fused)
        decided = values.sigmoid() > threshold
        masks_t[index[:, None, None], c[:, :, None], r[:, None, :]] = decided
        nonempty[index[decided.flatten(1).any(1)]] = True
    return masks_t.transpose(1, 2), nonempty

def encode_rle(mask) -> dict:
    """Bool mask [H, W] -> COCO compressed RLE with str counts."""
    from pycocotools import mask as mask_utils

    array = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
    # a bool array is 0/1 bytes: viewed as uint8 without a copy; column-major masks (frame_masks) need none either
    array = np.asfortranarray(array.view(np.uint8) if array.dtype == np.bool_ else array.astype(np.uint8))
    rle = mask_utils.encode(array)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


VisTRVideoProcessor.register_for_auto_class("AutoVideoProcessor")

if not __package__:  # imported from our installed modules (not as Hub remote code): register
    AutoVideoProcessor.register(VisTRConfig, VisTRVideoProcessor, exist_ok=True)

__all__ = ["VisTRVideoProcessor", "encode_rle", "resized_size"]
