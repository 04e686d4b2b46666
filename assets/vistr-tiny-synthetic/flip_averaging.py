"""Test-time flip averaging: the model sees each clip as it is and flipped, and its predictions are averaged.

A model that errs differently on a mirrored view gains from averaging the views (the bundled model's mask AP
with and without them: docs/training-from-scratch.md). The views do not share slot order (DETR slots specialise
by position, so a mirrored object is picked up by another slot): each flipped view's slots are first matched to
the plain view's by soft mask IoU over the whole clip (Hungarian), and only then are class probabilities, mask
logits and boxes averaged.

`VideoSegmenter` (so `vistr segment`, also with `--annotations ... --evaluate`, and the pipeline) averages the flips its processor's
`test_time_flips` names. None, the default, is the original's single view; a plain `model(**processor(video))`
is always one view. Flipping is exact when the clip's sides are multiples of 4 (the masks' stride); otherwise
a mirrored mask lands within one stride-4 cell of its place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .optional_dependencies import require

# the pixel dimensions of a [..., height, width] tensor that each flip reverses
FLIP_DIMS = {"horizontal": (-1,), "vertical": (-2,), "both": (-2, -1)}


def check_flips(flips: Iterable[str] | None) -> tuple[str, ...]:
    """`flips` (None or names from FLIP_DIMS) as a tuple; unknown or repeated names raise one clear line."""
    if flips is None:
        return ()
    if isinstance(flips, str):
        flips = [flips]
    flips = tuple(flips)
    unknown = [flip for flip in flips if flip not in FLIP_DIMS]
    if unknown or len(set(flips)) != len(flips):
        problem = f"unknown {unknown}" if unknown else "a flip is named twice"
        raise ValueError(f"test_time_flips={list(flips)!r}: {problem}; name each of {', '.join(FLIP_DIMS)} at most once "
                         "(or none for the single view)")  # fmt: skip
    return flips


def soft_mask_iou(masks: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Mask logits [..., n, P] and [..., m, P] -> [..., n, m] IoU of their probabilities (sum of products over
    union)."""
    first, second = masks.sigmoid(), other.sigmoid()
    intersection = first @ second.transpose(-2, -1)
    union = first.sum(-1)[..., :, None] + second.sum(-1)[..., None, :] - intersection
    return intersection / union.clamp(min=1e-6)


def matching_queries(reference_masks: torch.Tensor, masks: torch.Tensor, num_queries_per_frame: int) -> torch.Tensor:
    """Clips' mask logits [N, T*n, h, w] of two views -> per clip, the index [N, T*n] into `masks`' queries that
    puts, at each query of the reference, the same frame's query of the slot matched to its slot (Hungarian on
    soft IoU over the clip; one transfer to the host for all clips)."""
    linear_sum_assignment = require("scipy.optimize", "test-time flip averaging").linear_sum_assignment
    clips, queries = reference_masks.shape[:2]
    slots = num_queries_per_frame
    frames = queries // slots

    def per_slot(clip_masks: torch.Tensor) -> torch.Tensor:  # [N, T*n, h, w] -> [N, n, T*h*w]
        return clip_masks.unflatten(1, (frames, slots)).transpose(1, 2).flatten(2)

    ious = soft_mask_iou(per_slot(reference_masks), per_slot(masks)).cpu().numpy()
    slot_of_view = torch.empty(clips, slots, dtype=torch.long)
    for clip, iou in enumerate(ious):
        reference_slots, view_slots = linear_sum_assignment(iou, maximize=True)
        slot_of_view[clip, torch.as_tensor(reference_slots)] = torch.as_tensor(view_slots)
    order = torch.arange(frames)[None, :, None] * slots + slot_of_view[:, None, :]
    return order.flatten(1).to(masks.device)


def unflip_boxes(boxes: torch.Tensor, flip: str) -> torch.Tensor:
    """Normalized (cx, cy, w, h) boxes predicted on a flipped view -> boxes on the plain view."""
    boxes = boxes.clone()
    for dim in FLIP_DIMS[flip]:
        center = 0 if dim == -1 else 1  # width flips move cx, height flips move cy
        boxes[..., center] = 1 - boxes[..., center]
    return boxes


def flip_averaged(predict: Callable[[torch.Tensor], object], pixel_values: torch.Tensor, flips: Iterable[str],
                  num_queries_per_frame: int):  # fmt: skip
    """`predict(pixel_values)` ([N, T, 3, H, W], unpadded clips) averaged with its `flips`: the plain view's
    outputs with `logits` = log of the views' mean class probabilities, and the views' mean `pred_masks`
    (logits) and `pred_boxes`, each flipped view's slots matched to the plain view's first (float32)."""
    outputs = predict(pixel_values)
    probabilities = [outputs.logits.float().softmax(-1)]
    masks, boxes = [outputs.pred_masks.float()], [outputs.pred_boxes.float()]
    for flip in check_flips(flips):
        dims = FLIP_DIMS[flip]
        view = predict(pixel_values.flip(dims))
        view_masks, view_boxes = view.pred_masks.float().flip(dims), unflip_boxes(view.pred_boxes.float(), flip)
        order = matching_queries(masks[0], view_masks, num_queries_per_frame)
        clip = torch.arange(order.shape[0], device=order.device)[:, None]
        probabilities.append(view.logits.float().softmax(-1)[clip, order])
        masks.append(view_masks[clip, order])
        boxes.append(view_boxes[clip, order])
    outputs.logits = torch.stack(probabilities).mean(0).clamp(min=torch.finfo(torch.float32).tiny).log()
    outputs.pred_masks = torch.stack(masks).mean(0)
    outputs.pred_boxes = torch.stack(boxes).mean(0)
    return outputs


__all__ = ["FLIP_DIMS", "check_flips", "flip_averaged", "matching_queries"]
