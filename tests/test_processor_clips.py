"""The video processor as transformers users call it: `model(**processor(video))` for any video length and
input form, the standard VideosKwargs, and DETR-style `post_process_instance_segmentation` stitching clips."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from test_pipeline import OracleModel, iou, moving_squares
from torch import nn
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.pipeline_vistr import VideoSegmenter, decode_masks

SMALL = {"shortest_edge": 64}


def parity_processor(**settings) -> VisTRVideoProcessor:
    """The processor of the tiny parity model (4 frames x 10 slots)."""
    return VisTRVideoProcessor(num_frames=4, num_queries_per_frame=10, **settings)


def looped(video: np.ndarray, length: int) -> np.ndarray:
    return np.concatenate([video] * (length // len(video) + 1))[:length]


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


class ClipBatchOracle(nn.Module):
    """OracleModel (one clip per call) over a batch of clips."""

    def __init__(self, num_frames: int):
        super().__init__()
        self.oracle = OracleModel(num_frames=num_frames)
        self.config = self.oracle.config

    def forward(self, pixel_values, pixel_mask=None, **layout):
        outputs = [self.oracle(clip[None]) for clip in pixel_values]
        logits, masks = torch.cat([o.logits for o in outputs]), torch.cat([o.pred_masks for o in outputs])
        return SimpleNamespace(logits=logits, pred_masks=masks)


def test_stitched_clips_give_one_track_per_object_the_same_as_the_streaming_segmenter():
    video, truth = moving_squares(13)
    processor = VisTRVideoProcessor(num_frames=4, num_queries_per_frame=5, size=SMALL, stride=3)
    inputs = processor(video)
    outputs = ClipBatchOracle(4)(**inputs)
    (instances,) = processor.post_process_instance_segmentation(outputs, 0.0, clip_layout=inputs, mask_format="rle")
    assert len(instances) == 3
    for k, masks in truth.items():
        frames = [t for t in range(13) if masks[t].any()]
        tracked = [decode_masks(i["segmentations"], 64, 96) for i in instances if i["label"] == k]
        assert len(tracked) == 1 and all(iou(tracked[0][t], masks[t]) > 0.6 for t in frames)
    streamed = VideoSegmenter(OracleModel(num_frames=4), processor, stride=3)(video)["instances"]
    assert [{k: v for k, v in i.items() if k != "label_name"} for i in streamed] == [
        {k: v for k, v in i.items() if k != "label_name"} for i in instances]


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


# ----------------------------------------------------------------------------------- post-processing


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
