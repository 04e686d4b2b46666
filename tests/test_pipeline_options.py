"""The pipeline's options (threshold, mask_threshold, stride, batch_size, dtype), its strictness about unknown
ones, and that it returns exactly what the processor's post-processing returns."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.pipeline_vistr import VideoInstanceSegmentationPipeline

SMALL = {"shortest_edge": 64}


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
