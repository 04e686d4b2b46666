"""flip_averaging.py, test-time flips: slots matched across views, views un-flipped and averaged (the
processor saving its flips: test_image_processing_vistr.py; `--test-time-flips`: tools/test_cli.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vistr.flip_averaging import check_flips, flip_averaged
from vistr.image_processing_vistr import VisTRVideoProcessor

FRAMES, SLOTS, CLASSES, HEIGHT, WIDTH = 3, 3, 4, 32, 48
ALL_FLIPS = ("horizontal", "vertical", "both")
NUMPY_AXES = {"horizontal": (-1,), "vertical": (-2,), "both": (-2, -1)}


def blob_clips(clips: int = 2) -> torch.Tensor:
    """[clips, T, 3, H, W]: channel c of every frame holds one bright blob, each channel's at its own place."""
    generator = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(HEIGHT).float(), torch.arange(WIDTH).float(), indexing="ij")
    pixels = 0.05 * torch.rand(clips, FRAMES, 3, HEIGHT, WIDTH, generator=generator)
    for clip in range(clips):
        for frame in range(FRAMES):
            for channel, (cy, cx) in enumerate(((8, 8), (20, 22), (12, 38))):
                cy, cx = cy + 2 * frame + clip, cx + 3 * frame - clip
                pixels[clip, frame, channel] += torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 30)
    return pixels


def channel_masks(pixels: torch.Tensor) -> torch.Tensor:
    """[N, T, 3, H, W] -> mask logits [N, T, 3, H/4, W/4]: one slot per channel, positive on its blob."""
    pooled = F.avg_pool2d(pixels.flatten(0, 1), 4).unflatten(0, pixels.shape[:2])
    return 12 * (pooled - 0.25)


def box_of(masks: torch.Tensor) -> torch.Tensor:
    """Mask logits [..., h, w] -> (cx, cy, w, h) of their probability's centroid and spread, normalized."""
    weights = masks.sigmoid()
    weights = weights / weights.sum((-2, -1), keepdim=True)
    height, width = masks.shape[-2:]
    ys = (torch.arange(height).float() + 0.5) / height
    xs = (torch.arange(width).float() + 0.5) / width
    cx, cy = (weights.sum(-2) * xs).sum(-1), (weights.sum(-1) * ys).sum(-1)
    spread_x = (weights.sum(-2) * (xs - cx[..., None]) ** 2).sum(-1).sqrt()
    spread_y = (weights.sum(-1) * (ys - cy[..., None]) ** 2).sum(-1).sqrt()
    return torch.stack([cx, cy, spread_x, spread_y], -1)


def equivariant_model(pixels: torch.Tensor) -> SimpleNamespace:
    """A model that mirrors its masks and boxes with its input, and, as DETR's slots, orders its slots by
    position (the blobs' x), so a horizontal flip reverses which slot holds which blob."""
    masks = channel_masks(pixels)  # [N, T, 3, h, w]
    boxes = box_of(masks)
    order = boxes[..., 0].mean(1).argsort(-1)  # per clip: slots by mean x over the clip
    gather = order[:, None, :, None, None].expand_as(masks)
    masks = masks.gather(2, gather)
    boxes = boxes.gather(2, order[:, None, :, None].expand_as(boxes))
    logits = torch.stack([masks.mean((-2, -1)), masks.amax((-2, -1)), masks.std((-2, -1)), -masks.mean((-2, -1))], -1)
    return SimpleNamespace(logits=logits.flatten(1, 2), pred_masks=masks.flatten(1, 2), pred_boxes=boxes.flatten(1, 2))


def position_biased_model(pixels: torch.Tensor) -> SimpleNamespace:
    """A model in fixed slot order whose outputs also depend on where a pixel is (a ramp it does not mirror),
    so each flipped view predicts something else."""
    ramp = torch.linspace(-1, 1, WIDTH // 4)[None, :] + torch.linspace(0, 0.5, HEIGHT // 4)[:, None]
    masks = channel_masks(pixels) + ramp
    weights = torch.linspace(0.5, 2, CLASSES)
    logits = masks.mean((-2, -1))[..., None] * weights + (masks * ramp).mean((-2, -1))[..., None]
    return SimpleNamespace(logits=logits.flatten(1, 2), pred_masks=masks.flatten(1, 2),
                           pred_boxes=box_of(masks).flatten(1, 2))


def test_a_model_that_mirrors_its_predictions_gains_nothing_from_averaging_whatever_its_slot_order():
    pixels = blob_clips()
    plain = equivariant_model(pixels)
    mirrored = equivariant_model(pixels.flip(-1))
    assert not torch.equal(mirrored.pred_masks.flip(-1), plain.pred_masks), "the flip must permute the slots"
    averaged = flip_averaged(equivariant_model, pixels, ALL_FLIPS, SLOTS)
    torch.testing.assert_close(averaged.pred_masks, plain.pred_masks, atol=1e-5, rtol=0)
    torch.testing.assert_close(averaged.pred_boxes, plain.pred_boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(averaged.logits.softmax(-1), plain.logits.softmax(-1), atol=1e-6, rtol=0)


def test_the_views_are_unflipped_and_averaged_as_float64_numpy_computes_it():
    pixels = blob_clips()
    views = [position_biased_model(pixels)] + [position_biased_model(pixels.flip(NUMPY_AXES[f])) for f in ALL_FLIPS]
    masks = [views[0].pred_masks.double().numpy()]
    boxes = [views[0].pred_boxes.double().numpy()]
    for flip, view in zip(ALL_FLIPS, views[1:]):
        masks.append(np.flip(view.pred_masks.double().numpy(), NUMPY_AXES[flip]))
        box = view.pred_boxes.double().numpy().copy()
        if flip in ("horizontal", "both"):
            box[..., 0] = 1 - box[..., 0]
        if flip in ("vertical", "both"):
            box[..., 1] = 1 - box[..., 1]
        boxes.append(box)
    logits = [view.logits.double().numpy() for view in views]
    probabilities = [np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)
                     for x in logits]  # fmt: skip
    averaged = flip_averaged(position_biased_model, pixels, ALL_FLIPS, SLOTS)
    np.testing.assert_allclose(averaged.pred_masks.numpy(), np.mean(masks, 0), atol=1e-5)
    np.testing.assert_allclose(averaged.pred_boxes.numpy(), np.mean(boxes, 0), atol=1e-6)
    np.testing.assert_allclose(averaged.logits.exp().numpy(), np.mean(probabilities, 0), atol=1e-6)
    assert not np.allclose(masks[0], masks[1], atol=1e-2), "the views must differ for the average to mean something"


def test_unknown_or_repeated_flips_are_one_clear_error():
    assert check_flips(None) == () and check_flips("both") == ("both",)
    with pytest.raises(ValueError, match=r"unknown \['diagonal'\].*horizontal, vertical, both"):
        check_flips(["horizontal", "diagonal"])
    with pytest.raises(ValueError, match="named twice"):
        check_flips(["vertical", "vertical"])
    with pytest.raises(ValueError, match="diagonal"):
        VisTRVideoProcessor(test_time_flips=["diagonal"])
