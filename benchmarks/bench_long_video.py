"""Wall time, peak memory and results size of `vistr segment` on one long video, at several lengths.

The video is tiny: `vistr make-synthetic OUT --videos 1 --min-frames N --max-frames N --min-side 24
--max-side 32`. Its few shapes pass through the middle of the video, so every length holds the same objects
and only the background around them grows, where the bundled model (assets/vistr-tiny-synthetic, with its
processor's settings: test-time flips included) keeps seeing short-lived shapes, each a track of its own.
Results and memory should grow at most linearly with the frames, and the time per frame stay flat.

Each length runs `vistr segment FOLDER --output results.json --device cpu` in a fresh process, so that its
peak RSS is its own; the frames are written to FOLDER as JPEG first, untimed. The time per frame includes
the start (interpreter, model loading).

    OMP_NUM_THREADS=1 python benchmarks/bench_long_video.py [--frames 1000 3000 10000 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from bench_forward import cpu_name
from vistr.tools.youtube_vis import SyntheticOptions, synthetic_videos

BUNDLED = Path(__file__).resolve().parent.parent / "assets" / "vistr-tiny-synthetic"


def write_frames(folder: Path, frames: int, seed: int) -> str:
    """The synthetic video of `frames` frames as numbered JPEG files in `folder` -> its size, "WxH"."""
    options = SyntheticOptions(min_frames=frames, max_frames=frames, min_side=24, max_side=32)
    video = next(synthetic_videos(1, seed, options))
    folder.mkdir()
    for index, frame in enumerate(video.frames):
        Image.fromarray(frame).save(folder / f"{index:05d}.jpg", quality=90)
    return f"{video.video['width']}x{video.video['height']}"


def segment(folder: Path, results: Path) -> tuple[float, float]:
    """Run `vistr segment` on `folder` in a new process -> (wall seconds, its peak RSS in MiB)."""
    command = [sys.executable, "-m", "vistr.tools.cli", "segment", str(folder), "--model", str(BUNDLED),
               "--output", str(results), "--device", "cpu"]  # fmt: skip
    errors = results.with_suffix(".stderr")
    with errors.open("w") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"vistr segment failed on {folder}:\n{errors.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 3000, 10000], help="video lengths to run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic video")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, model {BUNDLED.name}")
    print("| frames | video | wall s | ms per frame | peak RSS MiB | results | JSON MB |")
    print("|---|---|---|---|---|---|---|")
    for frames in args.frames:
        with tempfile.TemporaryDirectory() as scratch:
            folder, results = Path(scratch) / "frames", Path(scratch) / "results.json"
            size = write_frames(folder, frames, args.seed)
            seconds, peak = segment(folder, results)
            count = len(json.loads(results.read_text()))
            print(f"| {frames} | {size} | {seconds:.1f} | {1000 * seconds / frames:.1f} | {peak:.0f} | {count} | "
                  f"{results.stat().st_size / 1e6:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
