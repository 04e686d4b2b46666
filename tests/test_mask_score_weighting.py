"""`mask_score_weighting`: instance scores times the mean mask probability inside the masks (Mask2Former's rule)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch
from vistr.image_processing_vistr import VisTRVideoProcessor

FRAMES, SLOTS, CLASSES, SIZE = 2, 3, 4, 8


def clip_outputs() -> SimpleNamespace:
    """One clip: random class logits, and mask logits whose slots are sure (±6), unsure (±0.8) and mixed."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(1, FRAMES * SLOTS, CLASSES + 1, generator=generator, dtype=torch.float64)
    signs = torch.where(torch.rand(FRAMES, SLOTS, SIZE, SIZE, generator=generator) > 0.6, 1.0, -1.0).double()
    scale = torch.tensor([6.0, 0.8, 1.0]).double().view(1, SLOTS, 1, 1)
    scale = scale + torch.rand(FRAMES, SLOTS, SIZE, SIZE, generator=generator, dtype=torch.float64) * 3 * (torch.arange(SLOTS) == 2).view(1, SLOTS, 1, 1)
    masks = (signs * scale).reshape(1, FRAMES * SLOTS, SIZE, SIZE)
    return SimpleNamespace(logits=logits, pred_masks=masks)


def expected_scores(outputs: SimpleNamespace, weighted: bool) -> np.ndarray:
    """Per slot, float64 numpy: mean over frames of the best real-class probability, times (weighted) the mean
    probability of the mask cells above 0.5 over all frames."""
    logits = outputs.logits[0].numpy().reshape(FRAMES, SLOTS, CLASSES + 1)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    scores = probabilities[..., :-1].max(-1).mean(0)
    if not weighted:
        return scores
    mask_probabilities = 1 / (1 + np.exp(-outputs.pred_masks[0].numpy().reshape(FRAMES, SLOTS, -1)))
    inside = mask_probabilities > 0.5
    confidence = (mask_probabilities * inside).sum((0, 2)) / inside.sum((0, 2))
    return scores * confidence


def test_weighted_scores_are_class_scores_times_mean_mask_probability():
    outputs = clip_outputs()
    processor = VisTRVideoProcessor(num_frames=FRAMES, num_queries_per_frame=SLOTS)
    for weighted in (False, True):
        instances = processor.post_process_instance_segmentation(outputs, threshold=0.0, mask_score_weighting=weighted)[0]
        assert [instance["id"] for instance in instances] == list(range(SLOTS))
        scores = np.array([instance["score"] for instance in instances])
        np.testing.assert_allclose(scores, expected_scores(outputs, weighted), rtol=1e-6)
    sure, unsure = expected_scores(outputs, True)[:2] / expected_scores(outputs, False)[:2]
    assert sure > 0.99 and unsure < 0.75, "the weighting must separate sure masks from unsure ones"


def test_the_processor_setting_is_the_default_and_is_saved_only_when_set(tmp_path):
    outputs = clip_outputs()
    weighting = VisTRVideoProcessor(num_frames=FRAMES, num_queries_per_frame=SLOTS, mask_score_weighting=True)
    scores = [instance["score"] for instance in weighting.post_process_instance_segmentation(outputs, threshold=0.0)[0]]
    np.testing.assert_allclose(scores, expected_scores(outputs, True), rtol=1e-6)
    weighting.save_pretrained(tmp_path / "weighting")
    VisTRVideoProcessor().save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "weighting" / "video_preprocessor_config.json").read_text())["mask_score_weighting"] is True
    assert "mask_score_weighting" not in json.loads((tmp_path / "plain" / "video_preprocessor_config.json").read_text())
    assert VisTRVideoProcessor.from_pretrained(tmp_path / "weighting").weights_scores_by_mask()
