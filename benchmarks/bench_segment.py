"""Where the wall time of `vistr segment VIDEO --overlay` goes: start-up, decode, preprocessing, forward, flip
matching, post-processing, overlay drawing and encoding, exit.

Each video is segmented by `vistr segment` in a fresh interpreter, as a user runs it. Inside, the steps are timed
by wrapping the functions that do them (each step's own time: a decode inside preprocessing counts as decode);
start-up is the time from launching the interpreter to the command's first line of work (Python, torch,
transformers and the project imported), exit the time from `main` returning to the process ending. Videos: the
bundled sample and the sample looped to `--frames` frames (written once into a temporary folder).

It also times `vistr --version` and `vistr --help` (fresh interpreters, median of 3), which import neither torch
nor transformers.

    python benchmarks/bench_segment.py [--frames 300 --threads 2]
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

SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "sample.mp4"
STEPS = ["start-up", "decode", "preprocessing", "forward", "flip matching", "post-processing", "overlay drawing",
         "overlay encoding", "other", "exit"]  # fmt: skip

# Runs in the child: wraps the steps' functions, runs `vistr segment`, prints the seconds per step as JSON.
CHILD = r"""
import json, sys, time
started = float(sys.argv[1])
import vistr.tools.cli as cli
from vistr import flip_averaging, video_io
from vistr.clip_linking import ClipStitcher
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.tools import overlay, video_writer
spent = {}
imported = time.time()

def timed(owner, name, step):
    function = getattr(owner, name)
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[step] = spent.get(step, 0.0) + time.perf_counter() - begin
    setattr(owner, name, wrapper)

def timed_generator(owner, name, step):
    function = getattr(owner, name)
    def wrapper(*args, **kwargs):
        items = function(*args, **kwargs)
        while True:
            begin = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                spent[step] = spent.get(step, 0.0) + time.perf_counter() - begin
            yield item
    setattr(owner, name, wrapper)

timed_generator(video_io, "_iter_video_file", "decode")
timed(VisTRVideoProcessor, "preprocess_frame", "preprocessing")
timed(flip_averaging, "matching_queries", "flip matching")
timed(ClipStitcher, "add_clip", "post-processing")
timed(ClipStitcher, "instances", "post-processing")
timed(overlay, "draw_frame", "overlay drawing")
timed(video_writer, "encode_video", "overlay encoding")
load = cli.load_for_inference
def load_timing_forward(*args, **kwargs):
    model, processor = load(*args, **kwargs)
    model.register_forward_pre_hook(lambda module, inputs: spent.__setitem__("_forward_began", time.perf_counter()))
    model.register_forward_hook(lambda module, inputs, outputs: spent.__setitem__(
        "forward", spent.get("forward", 0.0) + time.perf_counter() - spent["_forward_began"]))
    return model, processor
cli.load_for_inference = load_timing_forward
begin = time.perf_counter()
sys.argv = ["vistr", *sys.argv[2:]]
cli.main()  # as the `vistr` program runs it
spent["main"] = time.perf_counter() - begin
spent.pop("_forward_began", None)
spent["start-up"] = imported - started
print(json.dumps({**spent, "returned": time.time()}))
"""


def looped_video(frames: int, folder: Path) -> Path:
    """The sample's frames repeated up to `frames`, as an mp4 at the sample's frame rate."""
    from vistr.tools.video_writer import write_video
    from vistr.video_io import iter_frames, video_fps

    sample = list(iter_frames(SAMPLE))
    path = folder / f"sample-{frames}.mp4"
    write_video((sample[index % len(sample)] for index in range(frames)), path, video_fps(SAMPLE))
    return path


def profile(video: Path, folder: Path, threads: int) -> dict[str, float]:
    """Seconds per step of one `vistr segment` run of `video` with an overlay, in a fresh interpreter."""
    command = ["segment", str(video), "--output", str(folder / f"{video.stem}.json"),
               "--overlay", str(folder / f"{video.stem}-overlay.mp4")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    started = time.time()
    done = subprocess.run([sys.executable, "-c", CHILD, repr(started), *command], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    ended = time.time()
    spent = json.loads(done.stdout.strip().splitlines()[-1])
    spent["overlay encoding"] -= spent.get("overlay drawing", 0.0)  # encoding pulls the drawn frames
    inner = sum(spent.get(step, 0.0) for step in STEPS[1:8])
    spent["other"] = spent["main"] - inner
    spent["exit"] = ended - spent["returned"]
    return {step: spent.get(step, 0.0) for step in STEPS} | {"wall": ended - started}


def quick_command_seconds(argument: str, runs: int = 3) -> float:
    """Median wall time of `vistr ARGUMENT` in a fresh interpreter."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vistr.tools.cli", argument], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="length of the looped sample")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from bench_forward import cpu_name

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        videos = [SAMPLE, looped_video(args.frames, folder)]
        rows = {video.name: profile(video, folder, args.threads) for video in videos}
    print(f"# vistr segment VIDEO --overlay: {cpu_name()}, {args.threads} threads, the bundled model\n")
    print(f"| step | {' | '.join(rows)} |\n|---|{'---|' * len(rows)}")
    for step in [*STEPS, "wall"]:
        cells = [f"{row[step]:.2f} s ({100 * row[step] / row['wall']:.0f} %)" for row in rows.values()]
        print(f"| {step} | {' | '.join(cells)} |")
    for argument in ("--version", "--help"):
        print(f"\nvistr {argument}: {quick_command_seconds(argument):.2f} s")


if __name__ == "__main__":
    main()
