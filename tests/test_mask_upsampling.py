"""mask_upsampling.py: the processor's fast mask thresholding gives exactly the masks of the plain computation.

Plain: F.interpolate(bilinear, align_corners=False) to the frame size, sigmoid, > threshold. Fast:
cells decided from their corners, only edge cells interpolated, with the kernel's arithmetic
reproduced bit for bit (mask_upsampling.upsample_and_threshold_by_cells).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from vistr import mask_upsampling as mu
from vistr.clip_linking import MIN_FRAME_SCORE, encode_rle, frame_masks_and_nonempty
from vistr.image_processing_vistr import VisTRVideoProcessor


def plain_masks(logits: torch.Tensor, size, threshold: float) -> torch.Tensor:
    upsampled = F.interpolate(logits.reshape(-1, 1, *logits.shape[-2:]), size=tuple(size), mode="bilinear", align_corners=False)
    return (upsampled.sigmoid() > threshold).reshape(*logits.shape[:-2], *size)


def blobs(n: int, h: int, w: int, seed: int, scale: float = 6.0) -> torch.Tensor:
    """Smooth mask logits: an ellipse per map, plus noise; some maps empty, one near zero everywhere."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.arange(h).view(-1, 1).float(), torch.arange(w).view(1, -1).float()
    out = torch.empty(n, h, w)
    for k in range(n):
        cy, cx = torch.rand(2, generator=g) * torch.tensor([h, w])
        ry, rx = 2 + torch.rand(2, generator=g) * torch.tensor([h / 3, w / 3])
        out[k] = scale * (1 - ((ys - cy) / ry) ** 2 - ((xs - cx) / rx) ** 2)
    out += torch.randn(n, h, w, generator=g) * 0.3
    out[0] = -20  # empty
    out[1] = torch.randn(h, w, generator=g) * 1e-3  # everything near the threshold
    return out


def needs_fast_path():
    if mu.bilinear_arithmetic(torch.float32) is None:
        pytest.skip("this PyTorch build's bilinear kernel is not reproduced bit for bit: the plain path is used")


@pytest.mark.parametrize("h,w,size", [(75, 134, (720, 1280)), (32, 40, (200, 250)), (17, 23, (301, 333)), (20, 30, (480, 643))])
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
def test_fast_masks_equal_plain_masks(h, w, size, threshold):
    needs_fast_path()
    logits = blobs(12, h, w, seed=h * w)
    fast = mu.upsample_and_threshold_by_cells(logits, size, threshold)
    assert fast is not None
    masks, nonempty = fast
    expected = plain_masks(logits, size, threshold)
    assert masks.shape == expected.shape and masks.dtype == torch.bool
    assert torch.equal(masks, expected)
    assert torch.equal(nonempty, expected.flatten(1).any(1))
    assert not nonempty[0]


def test_fast_path_reproduces_the_kernel_values_bit_for_bit():
    needs_fast_path()
    fused = mu.bilinear_arithmetic(torch.float32)
    logits = torch.randn(4, 19, 27, generator=torch.Generator().manual_seed(1)) * 7
    expected = F.interpolate(logits[:, None], size=(333, 517), mode="bilinear", align_corners=False)[:, 0]
    assert torch.equal(mu._bilinear(logits, (333, 517), fused), expected)


def test_masks_are_column_major_and_encode_like_a_contiguous_copy():
    needs_fast_path()
    processor = VisTRVideoProcessor()
    logits = blobs(6, 30, 40, seed=3).view(2, 3, 30, 40)
    masks = processor.frame_masks(logits, (240, 320), None)
    assert masks.shape == (2, 3, 240, 320) and masks.stride()[-2:] == (1, 240)
    for mask in masks.flatten(0, 1):
        assert encode_rle(mask) == encode_rle(mask.contiguous().numpy())
        assert encode_rle(mask) == encode_rle(mask.numpy().astype(np.uint8))


@pytest.mark.parametrize("case", ["float64", "non-finite", "noise", "extreme threshold", "small output"])
def test_other_cases_take_the_plain_path_with_the_same_result(case):
    logits, size, threshold = blobs(4, 20, 30, seed=5), (200, 300), 0.5
    if case == "float64":
        logits = logits.double()
    elif case == "non-finite":
        logits[2, 3, 4] = float("inf")
    elif case == "noise":
        logits = torch.randn(4, 20, 30) * 1e-3
    elif case == "extreme threshold":
        threshold = 0.999
    else:
        size = (40, 60)
    if case != "float64" or mu.bilinear_arithmetic(torch.float64) is None:
        assert mu.upsample_and_threshold_by_cells(logits, size, threshold) is None
    masks, nonempty = frame_masks_and_nonempty(logits, size, None, threshold)
    assert torch.equal(masks, plain_masks(logits, size, threshold))
    assert torch.equal(nonempty, masks.flatten(1).any(1))


def test_post_processing_of_a_float32_clip_equals_the_plain_computation(reference_fp64):
    """The golden clip's outputs in float32 (fast path) against the plain computation, JSON included."""
    reference = reference_fp64["unpadded"]
    logits, masks = reference["pred_logits"].float(), reference["pred_masks"].float()
    processor = VisTRVideoProcessor(num_queries_per_frame=10)
    processed = processor.post_process_video_instance_segmentation(
        SimpleNamespace(logits=logits, pred_masks=masks), target_sizes=[(200, 250)])
    scores, labels = processor.frame_class_scores(logits[0], 4)
    binary = plain_masks(masks[0].view(4, 10, *masks.shape[-2:]), (200, 250), 0.5)
    kept = [slot for slot in range(10) if binary[:, slot].any()]
    assert [instance["id"] for instance in processed[0]] == kept
    for instance in processed[0]:
        assert torch.equal(instance["masks"], binary[:, instance["id"]])
    results = processor.to_youtube_vis_results(processed, video_ids=[1])
    plain = [{"video_id": 1, "score": float(scores[:, s].mean()), "category_id": processor.majority_label(labels[:, s]),
              "segmentations": [None if scores[t, s] < MIN_FRAME_SCORE else encode_rle(binary[t, s]) for t in range(4)]}
             for s in kept]
    assert json.dumps(results) == json.dumps(plain)
