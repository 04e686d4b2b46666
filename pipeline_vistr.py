"""Segment videos of any length with a VisTR model of T frames, and the transformers pipeline for it.

A video of L frames is read and preprocessed one frame at a time and cut into the processor's clips (L < T:
its frames repeated up to T, as the original `inference.py` does; L >= T: overlapping clips every `stride`
frames, the last ending at the last frame). Each clip's outputs go straight into the clips' linking
(clip_linking.py's `ClipStitcher`, as in `post_process_instance_segmentation`): slots are linked to the
previous clip's tracks by mask IoU, so an object keeps one id through the whole video. Only the frames of
the clips of one forward are held at a time; a track that ends is closed at once (no later clip is compared
with it) and only the instances the YouTube-VIS evaluator can score are kept (RESULTS_PER_VIDEO_AND_CATEGORY
per label), so with RLE masks memory and results grow linearly with L.
With `test_time_flips` (the processor's, or given) each clip's predictions are averaged with its flipped
views' (flip_averaging.py) before stitching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from .clip_linking import RESULTS_PER_VIDEO_AND_CATEGORY, ClipStitcher
from .flip_averaging import check_flips, flip_averaged
from .image_processing_vistr import VisTRVideoProcessor, clip_count, clip_stride, processor_for_model
from .optional_dependencies import require

TASK = "video-instance-segmentation"
# the pipeline's defaults: the processor's post-processing defaults (DETR's threshold, every instance), masks as
# tensors
PIPELINE_DEFAULTS = {"threshold": 0.5, "mask_format": "bool", "max_instances_per_label": None}


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class VideoSegmenter:
    """Runs a VisTR model over whole videos in clips and stitches them with the processor's post-processing.

    `threshold` 0 keeps every instance (the YouTube-VIS results); `clips_per_forward` clips go through the
    model at once; `mask_format` as for `post_process_instance_segmentation` ("rle" by default: the memory
    of a long video stays small); `test_time_flips` (default: the processor's) are averaged with each clip;
    `mask_score_weighting` (default: the processor's) multiplies scores by mask confidence;
    `max_instances_per_label` keeps the best that many instances of each label (default: as many as the
    YouTube-VIS evaluator scores, so the results of a long video grow linearly with it; None: all).
    """

    def __init__(self, model, processor: VisTRVideoProcessor, stride: int | None = None, mask_threshold: float = 0.5,
                 threshold: float = 0.0, clips_per_forward: int = 1, mask_format: str = "rle", device=None, dtype=None,
                 test_time_flips: Sequence[str] | None = None, mask_score_weighting: bool | None = None,
                 max_instances_per_label: int | None = RESULTS_PER_VIDEO_AND_CATEGORY):  # fmt: skip
        self.model = model
        self.processor = processor
        self.num_frames = model.config.num_frames
        self.stride = clip_stride(self.num_frames, stride)
        self.test_time_flips = check_flips(processor.test_time_flips if test_time_flips is None else test_time_flips)
        self.mask_score_weighting = processor.weights_scores_by_mask(mask_score_weighting)
        if clips_per_forward < 1:
            raise ValueError(f"batch_size={clips_per_forward} must be at least 1 (clips per forward)")
        self.mask_threshold, self.threshold, self.mask_format = mask_threshold, threshold, mask_format
        self.clips_per_forward = clips_per_forward
        self.max_instances_per_label = max_instances_per_label
        self.device = device if device is not None else next(model.parameters()).device
        self.dtype = dtype if dtype is not None else next(model.parameters()).dtype

    def __call__(self, source, on_clip: Callable[[], None] | None = None,
                 on_frame: Callable[[Image.Image], None] | None = None) -> dict:  # fmt: skip
        """Segment one video. Returns {"length", "height", "width", "instances": the processor's instances}.
        `on_clip` is called after each clip, `on_frame` with each decoded frame (`VideoClips`)."""
        clips = self.processor.video_clips(source, on_frame, num_frames=self.num_frames, stride=self.stride)
        stitcher = None
        for batch in _batches(clips, self.clips_per_forward):
            outputs = self._predict(torch.stack([pixels for _, pixels in batch]))
            if stitcher is None:
                sizes = (clips.original_size, clips.processed_size)
                stitcher = ClipStitcher(*sizes, self.mask_threshold, self.mask_format,
                                        mask_score_weighting=self.mask_score_weighting,
                                        max_instances_per_label=self.max_instances_per_label)  # fmt: skip
            for index, (frames, _) in enumerate(batch):
                stitcher.add_clip(frames, outputs.logits[index], outputs.pred_masks[index])
                if on_clip:
                    on_clip()
        instances = stitcher.instances(self.threshold, self.model.config.id2label)
        height, width = clips.original_size
        return {"length": clips.length, "height": height, "width": width, "instances": instances}

    def clip_count(self, length: int) -> int:
        return clip_count(length, self.num_frames, self.stride)

    @torch.no_grad()
    def _predict(self, pixel_values: torch.Tensor):
        def predict(pixels: torch.Tensor):
            return self.model(pixel_values=pixels.to(self.device, self.dtype))

        if not self.test_time_flips:
            return predict(pixel_values)
        return flip_averaged(predict, pixel_values, self.test_time_flips, self.model.config.num_queries_per_frame)


def decode_masks(segmentations: list[dict | None], height: int, width: int) -> np.ndarray:
    """Per-frame RLE (None = no mask) -> bool [L, H, W]."""
    mask_utils = require("pycocotools.mask", "decoding RLE masks")
    masks = np.zeros((len(segmentations), height, width), dtype=bool)
    for frame, rle in enumerate(segmentations):
        if rle is not None:
            masks[frame] = mask_utils.decode(rle).astype(bool)
    return masks


class VideoInstanceSegmentationPipeline(Pipeline):
    """`pipeline("video-instance-segmentation", model=...)(video, threshold=0.5)`.

    A video is a video file, a folder of frames, a tuple/list of frames or a [T, H, W, C] / [T, C, H, W]
    array; a list of videos gives a list of results. Each result is the processor's
    `post_process_instance_segmentation` of that video: instances with `id`, `score`, `label` (class id),
    `label_name`, `frame_scores` and per-frame `masks` (bool [L, H, W]) or, with `mask_format="rle"`,
    `segmentations`. Options: `threshold`, `mask_threshold`, `stride` (frames between clips), `batch_size`
    (clips per forward), `mask_format`, `test_time_flips` (default: the processor's; [] for one view),
    `mask_score_weighting` (default: the processor's); `device` and `dtype` when creating it. Unknown
    options raise.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _load_video_processor = True

    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        if dtype not in (None, "auto"):
            self.model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        self.video_processor = processor_for_model(self.model.config, self.video_processor)

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        if isinstance(inputs, list) and inputs and not isinstance(inputs[0], (str, list, tuple)) and getattr(inputs[0], "ndim", 3) < 4:
            inputs = tuple(inputs)  # a list of frames is one video, not a list of videos
        clips_per_forward = batch_size or self._batch_size or 1  # clips of a video per forward, not videos
        return super().__call__(inputs, batch_size=1, clips_per_forward=clips_per_forward, **kwargs)

    def _sanitize_parameters(self, threshold=None, mask_threshold=None, stride=None, mask_format=None,
                             clips_per_forward=None, test_time_flips=None, mask_score_weighting=None, **unknown):
        if unknown:
            raise TypeError(f"unexpected pipeline arguments {sorted(unknown)}; it takes threshold, mask_threshold, "
                            "stride, batch_size, mask_format, test_time_flips and mask_score_weighting (and device, dtype when "
                            "created)")  # fmt: skip
        given = {"threshold": threshold, "mask_threshold": mask_threshold, "stride": stride, "mask_format": mask_format,
                 "clips_per_forward": clips_per_forward, "test_time_flips": test_time_flips,
                 "mask_score_weighting": mask_score_weighting}  # fmt: skip
        return {}, {name: value for name, value in given.items() if value is not None}, {}

    def preprocess(self, video):
        return {"video": video}

    def _forward(self, model_inputs, **options):
        segmenter = VideoSegmenter(self.model, self.video_processor, **{**PIPELINE_DEFAULTS, **options},
                                   device=self.device, dtype=self.model.dtype)  # fmt: skip
        return segmenter(model_inputs["video"])

    def postprocess(self, video_result):
        return video_result["instances"]

    def save_pretrained(self, save_directory, **kwargs):
        """transformers' `save_pretrained` (model, config with this pipeline, code), plus the video processor."""
        super().save_pretrained(save_directory, **kwargs)
        self.video_processor.save_pretrained(save_directory)


# the config entry `Pipeline.save_pretrained` writes: `pipeline(TASK, model=folder, trust_remote_code=True)` finds
# this code through it
CUSTOM_PIPELINES = {TASK: {"impl": f"pipeline_vistr.{VideoInstanceSegmentationPipeline.__name__}",
                           "pt": ["AutoModelForInstanceSegmentation"], "type": "video"}}  # fmt: skip

__all__ = [
    "CUSTOM_PIPELINES", "TASK", "VideoInstanceSegmentationPipeline", "VideoSegmenter", "decode_masks",
]
