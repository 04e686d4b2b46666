"""pipeline_vistr.py: `VideoSegmenter` over videos of any length and the `video-instance-segmentation` pipeline.

The pipeline on the parity video gives the original's results; its options (threshold, mask_threshold, stride,
batch_size, dtype), its strictness about unknown ones, and that it returns exactly what the processor's
post-processing returns; VideoSegmenter's clips, and its bf16 path (`vistr segment --dtype bf16`). Linking the
clips into tracks: test_clip_linking.py; `vistr segment`: tools/test_cli.py.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import MIN_IOU, MIN_IOU_FLIPS, SAMPLE, OracleModel, assert_same_slots
from PIL import Image
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.pipeline_vistr import VideoInstanceSegmentationPipeline, VideoSegmenter

SMALL = {"shortest_edge": 64}


def test_every_clip_covers_the_model_length_and_the_video_end():
    segmenter = VideoSegmenter(OracleModel(num_frames=4), VisTRVideoProcessor(), stride=3)
    assert [segmenter.clip_count(n) for n in (1, 4, 5, 7, 8, 10)] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="stride=5"):
        VideoSegmenter(OracleModel(num_frames=4), VisTRVideoProcessor(), stride=5)


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------


def test_pipeline_on_the_parity_video_gives_the_original_results(fixture_model_folder, parity_inputs, parity_dir):
    from transformers import pipeline

    pipe = pipeline("video-instance-segmentation", model=str(fixture_model_folder), dtype=torch.float64, trust_remote_code=True)
    instances = pipe(parity_inputs["raw_video_uint8"], mask_format="rle", threshold=0.0)  # every slot, as the original
    expected = json.loads((parity_dir / "postprocess.json").read_text())
    assert len(instances) == len(expected)
    for ours, theirs in zip(instances, expected):
        assert ours["label"] == theirs["category_id"] and ours["segmentations"] == theirs["segmentations"]
        assert abs(ours["score"] - theirs["score"]) <= 1e-9
        assert ours["label_name"] == pipe.model.config.id2label[theirs["category_id"]]


def test_pipeline_lists_frames_and_dtype(fixture_model_folder, parity_inputs):
    pipe = VideoInstanceSegmentationPipeline(
        model=VisTRForVideoInstanceSegmentation.from_pretrained(fixture_model_folder).eval(),
        video_processor=VisTRVideoProcessor(size={"shortest_edge": 128}), device="cpu",
    )  # fmt: skip
    video = parity_inputs["raw_video_uint8"].numpy()
    results = pipe([video, video[:2]], threshold=0.0)
    assert len(results) == 2 and results[1][0]["masks"].shape == (2, 200, 250)
    as_frames = pipe([Image.fromarray(frame) for frame in video[:3]], threshold=0.0)  # a list of frames is one video
    assert as_frames and as_frames[0]["masks"].shape == (3, 200, 250)
    pipe.model.to(torch.bfloat16)
    low_precision = pipe(video, threshold=0.0)
    assert low_precision and low_precision[0]["masks"].dtype == torch.bool


@pytest.fixture(scope="module")
def pipe(tiny_model):
    processor = VisTRVideoProcessor(size=SMALL)
    return VideoInstanceSegmentationPipeline(model=copy.deepcopy(tiny_model), video_processor=processor, device="cpu")


@pytest.fixture(scope="module")
def video(parity_inputs) -> np.ndarray:
    """10 frames: three clips of the 4-frame model at the default stride (3)."""
    frames = parity_inputs["raw_video_uint8"].numpy()
    return np.concatenate([frames, frames[::-1], frames[:2]])


def forwards(pipe, *args, **kwargs) -> tuple[list, list[int]]:
    """The pipeline's result and the batch size of each model forward it made."""
    batches = []
    handle = pipe.model.register_forward_pre_hook(lambda module, inputs, kw: batches.append(len(kw["pixel_values"])),
                                                  with_kwargs=True)  # fmt: skip
    try:
        return pipe(*args, **kwargs), batches
    finally:
        handle.remove()


def test_pipeline_returns_what_the_processor_post_processing_returns(pipe, video):
    result = pipe(video, threshold=0.0)
    processor = pipe.video_processor
    inputs = processor(video)
    with torch.no_grad():
        outputs = pipe.model(**inputs)
    (expected,) = processor.post_process_instance_segmentation(outputs, threshold=0.0, clip_layout=inputs,
                                                               id2label=pipe.model.config.id2label)  # fmt: skip
    assert [set(instance) for instance in result] == [set(instance) for instance in expected]
    for ours, theirs in zip(result, expected):
        assert (ours["id"], ours["label"], ours["label_name"]) == (theirs["id"], theirs["label"], theirs["label_name"])
        assert abs(ours["score"] - theirs["score"]) < 1e-5 and ours["masks"].shape == (10, 200, 250)


def test_threshold_and_mask_threshold(pipe, video):
    every = pipe(video, threshold=0.0)
    cut = sorted(instance["score"] for instance in every)[len(every) // 2]
    kept = pipe(video, threshold=cut)
    assert [i["id"] for i in kept] == [i["id"] for i in every if i["score"] >= cut] and len(kept) < len(every)
    assert all(instance["score"] >= 0.5 for instance in pipe(video))  # the default, as the processor's
    strict = pipe(video, threshold=0.0, mask_threshold=0.9)
    assert sum(int(i["masks"].sum()) for i in strict) < sum(int(i["masks"].sum()) for i in every)


def test_stride_and_batch_size_set_the_clips_and_forwards(pipe, video):
    plain, batches = forwards(pipe, video, threshold=0.0)
    assert batches == [1, 1, 1]
    _, batches = forwards(pipe, video, threshold=0.0, stride=1)
    assert batches == [1] * 7
    together, batches = forwards(pipe, [video], threshold=0.0, batch_size=2)
    assert batches == [2, 1]
    assert [(i["id"], i["label"]) for i in together[0]] == [(i["id"], i["label"]) for i in plain]
    assert np.allclose([i["score"] for i in together[0]], [i["score"] for i in plain], atol=1e-5)


def test_batch_size_and_dtype_at_construction(tiny_model, video):
    processor = VisTRVideoProcessor(size=SMALL)
    pipe = VideoInstanceSegmentationPipeline(model=copy.deepcopy(tiny_model), video_processor=processor, device="cpu",
                                             batch_size=3, dtype=torch.float64)  # fmt: skip
    assert pipe.model.dtype == torch.float64
    _, batches = forwards(pipe, [video[:7]], threshold=0.0)
    assert batches == [2]


def test_unknown_arguments_raise(pipe, tiny_model, video):
    with pytest.raises(TypeError, match="unexpected pipeline arguments .'treshold'"):
        pipe(video, treshold=0.5)
    with pytest.raises(TypeError, match="unexpected pipeline arguments .'top_k'"):
        VideoInstanceSegmentationPipeline(model=tiny_model, device="cpu", top_k=3)


# ----------------------------------------------------------------------------------------------------------
# bf16 (`vistr segment --dtype bf16`): the same slots as float32 (the rule: conftest's assert_same_slots)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flips", [[], None], ids=["one view", "the bundled test-time flips"])
def test_bundled_segmenter_bf16_finds_the_fp32_instances(bundled, flips):
    """The path of `vistr segment --dtype bf16`: VideoSegmenter hands the bf16 model bf16 clips; per clip (its
    overlapping clips), the same slots as float32, with one view and with the processor's flips averaged.

    Whole-video tracks are not compared: this model's slots are near-duplicates of one another, and linking
    them across clips by mask IoU is a discrete choice that any rounding can flip.
    """
    model, low, processor = bundled
    segmenters = [VideoSegmenter(m, processor, test_time_flips=flips) for m in (model, low)]
    assert segmenters[1].dtype == torch.bfloat16 and len(segmenters[1].test_time_flips) == (0 if flips == [] else 3)
    frames = model.config.num_frames
    dtype, min_iou = (torch.bfloat16, MIN_IOU) if flips == [] else (torch.float32, MIN_IOU_FLIPS)
    for _, pixels in processor.video_clips(SAMPLE, num_frames=frames, stride=segmenters[0].stride):
        assert_same_slots(*(segmenter._predict(pixels[None]) for segmenter in segmenters), frames, dtype, min_iou)
