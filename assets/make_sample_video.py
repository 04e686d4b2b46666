"""Write assets/sample.mp4: video 1 of `vistr make-synthetic OUT --videos 1 --seed 5181` (default settings),
a seed the bundled model never trained on, encoded at 10 frames per second, and its ground truth
assets/sample_annotations.json (for `vistr evaluate`).

H.264's 4:2:0 colour needs even sides and the writer drops an odd last row or column, so the frames and the
ground truth are both cropped to even sides first: the annotation file describes exactly the written video.

    python assets/make_sample_video.py            # rewrites assets/sample.mp4 (and its ground truth)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from vistr.tools.outputs import Outputs, dumps_json
from vistr.tools.video_writer import encode_video
from vistr.tools.youtube_vis import SyntheticVideo, synthetic_annotations, synthetic_videos, track_fields

SEED = 5181
FPS = 10.0


def even_sides(video: dict) -> tuple[int, int]:
    """(height, width) of the video as H.264 stores it: each side rounded down to an even number."""
    return video["height"] - video["height"] % 2, video["width"] - video["width"] % 2


def crop_annotation(annotation: dict, height: int, width: int) -> dict:
    """The annotation with every frame's mask cropped to the top-left height x width (areas and boxes redone)."""
    empty = np.zeros((annotation["height"], annotation["width"]), dtype=np.uint8)
    masks = np.stack([empty if rle is None else mask_utils.decode(rle) for rle in annotation["segmentations"]])
    return {**annotation, **track_fields(masks[:, :height, :width]), "height": height, "width": width}


def even_sample(synthetic: SyntheticVideo, truth: dict) -> tuple[np.ndarray, dict]:
    """The frames and the annotation file of a one-video synthetic set, cropped to even sides."""
    height, width = even_sides(synthetic.video)
    videos = [{**video, "height": height, "width": width} for video in truth["videos"]]
    annotations = [crop_annotation(annotation, height, width) for annotation in truth["annotations"]]
    kept = [annotation for annotation in annotations if any(annotation["areas"])]
    return synthetic.frames[:, :height, :width], {**truth, "videos": videos, "annotations": kept}


def main() -> None:
    here = Path(__file__).resolve().parent
    frames, truth = even_sample(next(synthetic_videos(1, SEED)), synthetic_annotations(1, SEED))
    with Outputs() as outputs:  # the video and its ground truth (for `vistr evaluate`) are replaced together
        video_file = outputs.file(here / "sample.mp4", what="sample video")
        truth_file = outputs.file(here / "sample_annotations.json", what="sample ground truth")
        encode_video((Image.fromarray(frame) for frame in frames), video_file, FPS, ".mp4")
        truth_file.write_text(dumps_json(truth, "sample_annotations.json", "report this bug"))
    print(f"wrote {here / 'sample.mp4'}: {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]}, "
          f"{len(truth['annotations'])} instances")


if __name__ == "__main__":
    main()
