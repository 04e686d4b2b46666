"""Write assets/sample.mp4: video 1 of `vistr make-synthetic OUT --videos 1 --seed 5181` (default settings),
a seed the bundled model never trained on, encoded at 10 frames per second.

    python assets/make_sample_video.py            # rewrites assets/sample.mp4 (and its ground truth)
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from vistr.tools.youtube_vis import synthetic_annotations, synthetic_videos  # noqa: E402
from vistr.video_io import atomic_path, write_video  # noqa: E402

SEED = 5181
FPS = 10.0


def main() -> None:
    here = Path(__file__).resolve().parent
    video = next(synthetic_videos(1, SEED))
    write_video((Image.fromarray(frame) for frame in video.frames), here / "sample.mp4", FPS)
    with atomic_path(here / "sample_annotations.json") as temporary:  # ground truth, for `vistr evaluate`
        temporary.write_text(json.dumps(synthetic_annotations(1, SEED)))
    print(f"wrote {here / 'sample.mp4'}: {len(video.frames)} frames, {len(video.annotations)} instances")


if __name__ == "__main__":
    main()
