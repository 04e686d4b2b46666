"""Write assets/sample.mp4: video 1 of `vistr make-synthetic OUT --videos 1 --seed 5181` (default settings),
a seed the bundled model never trained on, encoded at 10 frames per second.

    python assets/make_sample_video.py            # rewrites assets/sample.mp4 (and its ground truth)
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from vistr.tools.outputs import Outputs, dumps_json  # noqa: E402
from vistr.tools.video_writer import encode_video  # noqa: E402
from vistr.tools.youtube_vis import synthetic_annotations, synthetic_videos  # noqa: E402

SEED = 5181
FPS = 10.0


def main() -> None:
    here = Path(__file__).resolve().parent
    video = next(synthetic_videos(1, SEED))
    with Outputs() as outputs:  # the video and its ground truth (for `vistr evaluate`) are replaced together
        video_file = outputs.file(here / "sample.mp4", what="sample video")
        truth_file = outputs.file(here / "sample_annotations.json", what="sample ground truth")
        encode_video((Image.fromarray(frame) for frame in video.frames), video_file, FPS, ".mp4")
        truth_file.write_text(dumps_json(synthetic_annotations(1, SEED), "sample_annotations.json", "report this bug"))
    print(f"wrote {here / 'sample.mp4'}: {len(video.frames)} frames, {len(video.annotations)} instances")


if __name__ == "__main__":
    main()
