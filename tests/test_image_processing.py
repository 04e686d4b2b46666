"""The video processor against the original's preprocessing and post-processing (../shared/parity)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoVideoProcessor
from vistr import modeling_vistr  # noqa: F401  (registers the Auto classes)
from vistr.image_processing_vistr import VisTRVideoProcessor, resized_size
from vistr.video_io import VideoReadError

PARITY_SIZE = {"shortest_edge": 128, "longest_edge": 640}


class Outputs:
    def __init__(self, logits, pred_masks):
        self.logits, self.pred_masks = logits, pred_masks


def test_preprocessing_equals_the_original(parity_inputs):
    processor = VisTRVideoProcessor(num_frames=4)  # the tiny model's clip: the 4 frames as they are
    batch = processor(videos=[parity_inputs["raw_video_uint8"]], size=PARITY_SIZE, return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 4, 3, 128, 160)
    assert (batch["pixel_values"][0] - parity_inputs["pixel_values"]).abs().max() <= 1e-6
    assert batch["pixel_mask"].bool().all()


def test_fast_resize_backend_is_close_but_not_the_default(parity_inputs):
    """Tensor resizing differs from PIL's by a few 1e-3, which is why the exact PIL path is the default."""
    assert VisTRVideoProcessor().resize_backend == "pil"
    fast_processor = VisTRVideoProcessor(resize_backend="torchvision", num_frames=4)
    fast = fast_processor(videos=[parity_inputs["raw_video_uint8"]], size=PARITY_SIZE)
    difference = (fast["pixel_values"][0] - parity_inputs["pixel_values"]).abs()
    assert 1e-6 < difference.max() < 0.1 and difference.mean() < 5e-3


def assert_same_results(results: list[dict], expected: list[dict]) -> None:
    """Every field identical except the score, which may differ in its last bits: it is a float64 mean over
    frames, and for 8 of the 10 instances its last bit depends on the summation order, which a CPU's vector width
    can change (CI failed the exact comparison on another CPU). The RLEs must be identical: no float64 mask logit
    lies within rounding of the threshold (../shared/parity)."""
    assert len(results) == len(expected)
    for index, (result, reference) in enumerate(zip(results, expected)):
        assert result.keys() == reference.keys(), f"instance {index}: keys"
        for key in ("video_id", "category_id", "segmentations"):
            assert result[key] == reference[key], f"instance {index}: {key} differs"
        assert result["score"] == pytest.approx(reference["score"], rel=1e-12, abs=1e-15), f"instance {index}: score"


def test_post_processing_reproduces_the_original_results_json(parity_dir, reference_fp64):
    reference = reference_fp64["unpadded"]
    processor = VisTRVideoProcessor(num_queries_per_frame=10)
    processed = processor.post_process_video_instance_segmentation(
        Outputs(reference["pred_logits"], reference["pred_masks"]), target_sizes=[(200, 250)]
    )
    results = processor.to_youtube_vis_results(processed, video_ids=[1])
    expected = json.loads((parity_dir / "postprocess.json").read_text())
    assert_same_results(results, expected)
    first = processed[0][0]
    assert first["masks"].shape == (4, 200, 250) and first["masks"].dtype == torch.bool
    frame_scores = torch.tensor([i["frame_scores"] for i in processed[0]], dtype=torch.float64).T
    expected_scores = reference["postprocess.frame_scores"][:, [i["id"] for i in processed[0]]]
    assert (frame_scores - expected_scores).abs().max() <= 1e-12


def test_post_processing_keeps_the_first_frames_of_a_short_video_and_crops_padding(reference_fp64):
    reference = reference_fp64["unpadded"]
    processor = VisTRVideoProcessor()
    outputs = Outputs(reference["pred_logits"].repeat(2, 1, 1), reference["pred_masks"].repeat(2, 1, 1, 1))
    full, short = processor.post_process_video_instance_segmentation(
        outputs, target_sizes=[(200, 250), (100, 125)], video_lengths=[4, 2], processed_sizes=[(128, 160), (64, 80)]
    )
    assert all(len(i["frame_scores"]) == 2 and i["masks"].shape == (2, 100, 125) for i in short)
    # the second video's masks come from the top-left 16x20 cells only (its unpadded area)
    cropped = processor.frame_masks(reference["pred_masks"][0, :1, :16, :20], (100, 125), None)
    assert torch.equal(processor.frame_masks(reference["pred_masks"][0, :1], (100, 125), (64, 80)), cropped)
    assert len(full) == 10


def test_majority_label_ties_go_to_the_smaller_id():
    assert VisTRVideoProcessor.majority_label(torch.tensor([7, 3, 7, 3])) == 3
    assert VisTRVideoProcessor.majority_label(torch.tensor([5, 9, 9])) == 9


def test_resized_size_follows_the_original_rule():
    assert resized_size(200, 250, 128, 640) == (128, 160)
    assert resized_size(720, 1280, 300) == (300, 533)  # int() truncation, as torchvision's Resize
    assert resized_size(300, 3000, 300, 540) == (54, 540)  # longest edge caps the scale
    assert resized_size(300, 400, 300) == (300, 400)


def _default_size(height: int, width: int) -> tuple[int, int]:
    options = VisTRVideoProcessor().preprocess_options({})
    return resized_size(height, width, options.shortest_edge, options.longest_edge)


def test_default_size_caps_the_long_side_of_thin_frames():
    """Shortest edge to 300 alone made a 3 x 1000 frame 300 x 100000 (1.4 GB in one allocation)."""
    assert _default_size(3, 1000) == (4, 1333)
    assert _default_size(640, 32) == (1340, 67)  # the other side scaled and truncated, as the original's max_size
    frames = np.zeros((1, 20, 400, 3), dtype=np.uint8)
    assert VisTRVideoProcessor(num_frames=1)(videos=frames)["pixel_values"].shape == (1, 1, 3, 67, 1340)


@pytest.mark.parametrize("height,width,expected", [(720, 1280, (300, 533)), (1280, 720, (533, 300)),
                                                   (480, 640, (300, 400)), (817, 1920, (300, 705))])
def test_default_size_is_the_originals_for_camera_aspect_ratios(height, width, expected):
    assert _default_size(height, width) == expected  # 4:3, 16:9 either way, 2.35:1: the cap does not bite


def test_training_scales_pixels_exactly_as_the_processor():
    from vistr.tools.training_data import _normalized_pixels

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)) for _ in range(2)]
    batch = VisTRVideoProcessor(num_frames=2)(videos=frames, do_resize=False)
    assert torch.equal(batch["pixel_values"][0], _normalized_pixels(frames))


@pytest.mark.parametrize("mode", ["L", "RGBA", "RGB"])
def test_grayscale_rgba_and_odd_sizes(mode):
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (37, 51, 3), dtype=np.uint8)).convert(mode) for _ in range(3)]
    batch = VisTRVideoProcessor(num_frames=3)(videos=frames, size={"shortest_edge": 30})
    assert batch["pixel_values"].shape == (1, 3, 3, 30, 41)
    rgb = VisTRVideoProcessor(num_frames=3)(videos=[f.convert("RGB") for f in frames], size={"shortest_edge": 30})
    if mode == "RGBA":
        assert torch.equal(batch["pixel_values"], rgb["pixel_values"])


def test_a_batch_of_different_sizes_is_padded_with_a_mask():
    small = np.zeros((2, 40, 60, 3), dtype=np.uint8)
    large = np.full((2, 60, 80, 3), 255, dtype=np.uint8)
    batch = VisTRVideoProcessor(num_frames=2)(videos=[small, large], size={"shortest_edge": 40})
    assert batch["pixel_values"].shape == (2, 2, 3, 40, 60)  # 40x60 stays, 60x80 becomes 40x53
    assert batch["pixel_mask"][0].all() and batch["pixel_mask"][1].sum() == 2 * 40 * 53
    assert (batch["pixel_values"][1, :, :, :, 53:] == 0).all() and (batch["pixel_mask"][1, :, :, 53:] == 0).all()


def test_folders_of_frames_and_errors(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in (10, 2, 1):  # natural order: 1, 2, 10
        Image.new("RGB", (32, 24), (index * 20, 0, 0)).save(folder / f"{index}.png")
    batch = VisTRVideoProcessor()(videos=str(folder), size={"shortest_edge": 24})
    red = batch["pixel_values"][0, :, 0, 0, 0]
    assert red[0] < red[1] < red[2]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="no frames found"):
        VisTRVideoProcessor()(videos=str(empty))
    with pytest.raises(VideoReadError, match="no such video"):
        VisTRVideoProcessor()(videos=str(tmp_path / "missing.mp4"))


def test_saved_with_its_settings_and_loaded_by_auto_class(tmp_path):
    VisTRVideoProcessor(size={"shortest_edge": 128}, num_queries_per_frame=7).save_pretrained(tmp_path)
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VisTRVideoProcessor
    assert loaded.num_queries_per_frame == 7 and loaded.resize_backend == "pil"
    assert json.loads((tmp_path / "video_preprocessor_config.json").read_text())["size"] == {"shortest_edge": 128}
