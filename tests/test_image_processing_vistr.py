"""image_processing_vistr.py: the video processor as transformers users call it.

Preprocessing against the original's (../shared/parity); `model(**processor(video))` for any video length and
input form; the standard VideosKwargs; the settings it saves; and the options of its DETR-style
`post_process_instance_segmentation` (threshold, names, RLE, target sizes, mask score weighting). How the clips'
instances are linked into tracks and scored, as the original's post-processing: test_clip_linking.py.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from transformers import AutoVideoProcessor
from vistr import modeling_vistr  # noqa: F401  (registers the Auto classes)
from vistr.image_processing_vistr import VisTRVideoProcessor, resized_size
from vistr.video_io import VideoReadError

PARITY_SIZE = {"shortest_edge": 128, "longest_edge": 640}
SMALL = {"shortest_edge": 64}


def parity_processor(**settings) -> VisTRVideoProcessor:
    """The processor of the tiny parity model (4 frames x 10 slots)."""
    return VisTRVideoProcessor(num_frames=4, num_queries_per_frame=10, **settings)


def looped(video: np.ndarray, length: int) -> np.ndarray:
    return np.concatenate([video] * (length // len(video) + 1))[:length]


# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# As transformers users call it: `model(**processor(video))` for any video length and input form, the standard
# VideosKwargs
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [6, 50])
def test_model_on_processor_output_of_any_length_gives_instances_over_every_frame(tiny_model, parity_inputs, length):
    video = looped(parity_inputs["raw_video_uint8"].numpy(), length)
    processor = parity_processor(size=SMALL)
    inputs = processor(video, return_tensors="pt")
    assert inputs["pixel_values"].shape[1:] == (4, 3, 64, 80)
    assert sorted({f for clip in inputs["clip_frame_indices"].tolist() for f in clip}) == list(range(length))
    with torch.no_grad():
        outputs = tiny_model(**inputs)
    (instances,) = processor.post_process_instance_segmentation(outputs, threshold=0.0, clip_layout=inputs)
    assert instances
    for instance in instances:
        assert instance["masks"].shape == (length, 200, 250) and len(instance["frame_scores"]) == length
    covered = {f for instance in instances for f, score in enumerate(instance["frame_scores"]) if score is not None}
    assert covered == set(range(length))


def test_short_videos_repeat_frames_and_long_ones_overlap_to_the_end():
    processor = VisTRVideoProcessor(num_frames=4, size={"shortest_edge": 16})
    frames = lambda n: np.zeros((n, 16, 16, 3), dtype=np.uint8)
    assert processor(frames(2))["clip_frame_indices"].tolist() == [[0, 1, 0, 1]]  # the original's short-video rule
    assert processor(frames(9), stride=3)["clip_frame_indices"].tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [5, 6, 7, 8]]
    assert processor(frames(8))["clip_frame_indices"].tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [4, 5, 6, 7]]


def test_processor_path_reproduces_the_original_results_json(tiny_model, parity_inputs, parity_dir):
    """A video of exactly the model's length, processor -> float64 model -> post-processing: the golden file."""
    processor = parity_processor(size={"shortest_edge": 128, "longest_edge": 640})
    inputs = processor(parity_inputs["raw_video_uint8"], return_tensors="pt")
    with torch.no_grad():
        model = copy.deepcopy(tiny_model).double()
        outputs = model(pixel_values=inputs["pixel_values"].double(), pixel_mask=inputs["pixel_mask"])
    processed = processor.post_process_instance_segmentation(outputs, threshold=0.0, clip_layout=inputs)
    expected = json.loads((parity_dir / "postprocess.json").read_text())
    results = processor.to_youtube_vis_results(processed, video_ids=[1])
    assert len(results) == len(expected)
    for ours, theirs in zip(results, expected):  # the float64 model reproduces the original's outputs to 1e-9
        assert abs(ours.pop("score") - theirs.pop("score")) <= 1e-9 and ours == theirs


def test_every_input_form_gives_the_same_pixels(tmp_path, parity_inputs):
    video = parity_inputs["raw_video_uint8"]  # [4, 200, 250, 3] uint8
    processor = parity_processor(size=SMALL)
    expected = processor(video.numpy())["pixel_values"]
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(video.numpy()):
        Image.fromarray(frame).save(folder / f"{index}.png")
    forms = {
        "torch [T, 3, H, W] uint8": video.permute(0, 3, 1, 2).contiguous(),
        "numpy [T, 3, H, W] uint8": video.permute(0, 3, 1, 2).numpy(),
        "torch [T, H, W, 3] float 0..1": video.float() / 255,
        "PIL list": [Image.fromarray(frame) for frame in video.numpy()],
        "frame folder": str(folder),
        "list of [3, H, W] frames": list(video.permute(0, 3, 1, 2)),
        "batch [1, T, H, W, 3]": video[None],
    }
    for name, form in forms.items():
        assert torch.equal(processor(form)["pixel_values"], expected), name
    explicit = processor(video.permute(0, 3, 1, 2).numpy(), input_data_format="channels_first")["pixel_values"]
    assert torch.equal(explicit, expected)


def test_videos_of_different_sizes_and_lengths_share_one_batch():
    small, large = np.zeros((3, 40, 60, 3), dtype=np.uint8), np.full((6, 60, 80, 3), 255, dtype=np.uint8)
    batch = VisTRVideoProcessor(num_frames=4, size={"shortest_edge": 40})([small, large])
    assert batch["pixel_values"].shape == (3, 4, 3, 40, 60)
    assert batch["clip_video_indices"].tolist() == [0, 1, 1]
    assert batch["original_sizes"].tolist() == [[40, 60], [60, 80]]
    assert batch["processed_sizes"].tolist() == [[40, 60], [40, 53]]
    assert batch["pixel_mask"][1:].sum() == 2 * 4 * 40 * 53


def pil_reference(frame: np.ndarray, size: tuple[int, int], resample=Image.BILINEAR) -> np.ndarray:
    """[3, h, w] float64 0..255 of PIL's resize (what torchvision's Resize did in the original)."""
    return np.asarray(Image.fromarray(frame).resize(size[::-1], resample), dtype=np.float64).transpose(2, 0, 1)


def test_standard_video_kwargs_are_honoured_at_call_and_construction(parity_inputs):
    video = parity_inputs["raw_video_uint8"].numpy()[:1]
    resized = pil_reference(video[0], (64, 80))

    def pixels(processor=None, **call):
        processor = processor or VisTRVideoProcessor(num_frames=1, size=SMALL)
        return processor(video, **call)["pixel_values"][0, 0].double().numpy()

    assert np.abs(pixels(do_normalize=False) - resized / 255).max() < 1e-6
    unnormalized = VisTRVideoProcessor(num_frames=1, size=SMALL, do_normalize=False)
    assert np.abs(pixels(unnormalized) - resized / 255).max() < 1e-6
    assert np.array_equal(pixels(do_normalize=False, do_rescale=False), resized)
    assert np.abs(pixels(do_normalize=False, rescale_factor=1 / 100) - resized / 100).max() < 1e-5
    mean, std = [0.5, 0.25, 0.0], [0.5, 0.5, 2.0]
    custom = (resized / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert np.abs(pixels(image_mean=mean, image_std=std) - custom).max() < 1e-5
    assert pixels(do_resize=False, do_normalize=False, do_rescale=False).shape == (3, 200, 250)
    nearest = pil_reference(video[0], (64, 80), Image.NEAREST)
    assert np.array_equal(pixels(resample=Image.NEAREST, do_normalize=False, do_rescale=False), nearest)
    assert VisTRVideoProcessor(num_frames=1)(video, device="cpu")["pixel_values"].device.type == "cpu"
    gray = [Image.fromarray(video[0]).convert("L")]
    with pytest.raises(ValueError, match="do_convert_rgb=True"):
        VisTRVideoProcessor(num_frames=1)(gray, do_convert_rgb=False)


def test_return_tensors_none_and_np():
    video = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    processor = VisTRVideoProcessor(num_frames=2, size={"shortest_edge": 16})
    as_lists = processor(video, return_tensors=None)
    assert isinstance(as_lists["pixel_values"], list) and as_lists["pixel_values"][0].shape == (2, 3, 16, 16)
    assert as_lists["clip_frame_indices"] == [[0, 1]]
    assert isinstance(processor(video, return_tensors="np")["pixel_values"], np.ndarray)


@pytest.mark.parametrize("option", [{"do_sample_frames": True}, {"fps": 2}, {"do_center_crop": True},
                                    {"do_pad": False}])  # fmt: skip
def test_options_it_cannot_honour_raise_at_call_and_construction(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"{name}=.* is not supported"):
        VisTRVideoProcessor(num_frames=2)(np.zeros((2, 16, 16, 3), dtype=np.uint8), **option)
    with pytest.raises(ValueError, match=f"{name}=.* is not supported"):
        VisTRVideoProcessor(**option)


def test_unknown_settings_raise():
    with pytest.raises(TypeError, match="unknown settings .'num_frame'"):
        VisTRVideoProcessor(num_frame=4)
    with pytest.raises(TypeError, match="unexpected arguments .'strides'"):
        VisTRVideoProcessor()(np.zeros((2, 16, 16, 3), dtype=np.uint8), strides=2)


def test_settings_are_saved_and_reloaded(tmp_path):
    from transformers import AutoVideoProcessor

    VisTRVideoProcessor(num_frames=5, stride=2, do_normalize=False).save_pretrained(tmp_path)
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert (loaded.num_frames, loaded.stride, loaded.do_normalize) == (5, 2, False)
    assert loaded(np.full((1, 8, 8, 3), 255, dtype=np.uint8), size={"shortest_edge": 8})["pixel_values"].max() == 1.0


def test_the_processor_saves_its_flips_and_saves_nothing_without_them(tmp_path):
    VisTRVideoProcessor(test_time_flips=["horizontal", "both"]).save_pretrained(tmp_path / "flips")
    VisTRVideoProcessor().save_pretrained(tmp_path / "plain")
    saved = json.loads((tmp_path / "flips" / "video_preprocessor_config.json").read_text())
    assert saved["test_time_flips"] == ["horizontal", "both"]
    assert "test_time_flips" not in json.loads((tmp_path / "plain" / "video_preprocessor_config.json").read_text())
    assert VisTRVideoProcessor.from_pretrained(tmp_path / "flips").test_time_flips == ["horizontal", "both"]
    assert VisTRVideoProcessor.from_pretrained(tmp_path / "plain").test_time_flips is None


# ----------------------------------------------------------------------------------------------------------
# The options of post-processing
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def six_frame_run(tiny_model, parity_inputs):
    processor = parity_processor(size=SMALL)
    inputs = processor(looped(parity_inputs["raw_video_uint8"].numpy(), 6))
    with torch.no_grad():
        return processor, inputs, tiny_model(**inputs)


def test_threshold_keeps_the_instances_scoring_at_least_it(six_frame_run):
    processor, inputs, outputs = six_frame_run
    (every,) = processor.post_process_instance_segmentation(outputs, threshold=0.0, clip_layout=inputs)
    scores = sorted(instance["score"] for instance in every)
    cut = scores[len(scores) // 2]
    (kept,) = processor.post_process_instance_segmentation(outputs, threshold=cut, clip_layout=inputs)
    assert [i["id"] for i in kept] == [i["id"] for i in every if i["score"] >= cut] and 0 < len(kept) < len(every)
    (default,) = processor.post_process_instance_segmentation(outputs, clip_layout=inputs)
    assert all(instance["score"] >= 0.5 for instance in default)


def test_labels_are_ids_with_names_and_rle_matches_the_masks(six_frame_run, tiny_model):
    processor, inputs, outputs = six_frame_run
    id2label = tiny_model.config.id2label
    (masks,) = processor.post_process_instance_segmentation(outputs, 0.0, clip_layout=inputs, id2label=id2label)
    (rles,) = processor.post_process_instance_segmentation(outputs, 0.0, clip_layout=inputs, mask_format="rle")
    assert [set(i) for i in masks] == [{"id", "score", "label", "label_name", "frame_scores", "masks"}] * len(masks)
    for instance, encoded in zip(masks, rles):
        assert isinstance(instance["label"], int) and instance["label_name"] == id2label[instance["label"]]
        for score, mask, rle in zip(instance["frame_scores"], instance["masks"], encoded["segmentations"]):
            if score is None or score < 0.001:  # before the track began, or scored as absent
                assert rle is None
            else:
                assert mask_utils.decode(rle).astype(bool).tolist() == mask.tolist()


def test_target_sizes_are_optional_and_override_the_layout(six_frame_run):
    processor, inputs, outputs = six_frame_run
    native = processor.post_process_instance_segmentation(outputs, threshold=0.0)  # no layout: each clip a video
    assert len(native) == 2 and native[0][0]["masks"].shape == (4, *outputs.pred_masks.shape[-2:])
    (resized,) = processor.post_process_instance_segmentation(outputs, 0.0, clip_layout=inputs, target_sizes=[(50, 60)])
    assert resized[0]["masks"].shape == (6, 50, 60)
    with pytest.raises(ValueError, match="clip_layout describes 1"):
        processor.post_process_instance_segmentation(outputs, clip_layout={**inputs, "clip_video_indices": [0],
                                                                           "clip_frame_indices": [[0, 1, 2, 3]]})


# ----------------------------------------------------------------------------------------------------------
# `mask_score_weighting`: instance scores times the mean mask probability inside the masks (Mask2Former's rule)
# ----------------------------------------------------------------------------------------------------------

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


def test_frames_are_decoded_in_runs_of_the_read_ahead_budget(monkeypatch):
    """Decoding runs ahead of preprocessing by READ_AHEAD_BYTES (at least a frame), every frame in order once."""
    from vistr import image_processing_vistr as ipv

    frames = [Image.new("RGB", (8, 4), (index, 0, 0)) for index in range(7)]  # 96 bytes each
    monkeypatch.setattr(ipv, "READ_AHEAD_BYTES", 3 * 96)
    decoded = []

    def decode():
        for frame in frames:
            decoded.append(frame)
            yield frame

    handed = []
    for frame in ipv._read_ahead(decode()):
        handed.append((frame, len(decoded)))
    assert [frame for frame, _ in handed] == frames
    assert [count for _, count in handed] == [3, 3, 3, 6, 6, 6, 7]  # runs of three, then the rest
    decoded.clear()
    monkeypatch.setattr(ipv, "READ_AHEAD_BYTES", 1)  # smaller than a frame: one at a time
    assert [len(decoded) for _ in ipv._read_ahead(decode())] == [1, 2, 3, 4, 5, 6, 7]
