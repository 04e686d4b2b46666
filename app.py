"""VisTR in the browser: `python app.py` starts a Gradio demo, the way a Hugging Face Space runs it.

A video (an upload, or the bundled sample) goes through the steps of `vistr segment`, done by the same functions:
the model loads as the CLI loads it (`load_for_inference`), `segment_with_overlay` segments the video clip by clip
(one step of the progress bar per clip) and draws the instances scoring at least the threshold on the frames it
decoded, and `video_results` gives the results JSON that `vistr segment --output` writes. Outputs go only into a staging folder the app creates
and removes when it stops. Gradio is an optional extra: pip install -e ".[demo]".

    python app.py                                  # the bundled model; http://127.0.0.1:7860
    python app.py --model vistr-r50 --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType

from vistr.flip_averaging import FLIP_DIMS
from vistr.optional_dependencies import require
from vistr.pipeline_vistr import VideoSegmenter
from vistr.tools.cli import BUNDLED_MODEL, SAMPLE_VIDEO, debug_requested, load_for_inference, run_reporting_errors
from vistr.tools.outputs import UsageError, dumps_json
from vistr.tools.overlay import covered_frames, found_instances, segment_with_overlay
from vistr.tools.youtube_vis_inference import NON_FINITE_FIX, video_results
from vistr.video_io import VIDEO_EXTENSIONS, iter_frames

DEMO_INSTALL = 'pip install -e ".[demo]"'
COLUMNS = ["id", "label", "score", "frames"]
DEFAULT_THRESHOLD = 0.5  # as `vistr segment --threshold`


def frame_count(source: str) -> int:
    """Read every frame once before the model runs: an unreadable or empty video fails here, with the reader's
    message, and the count tells the progress bar how many clips to expect."""
    return sum(1 for _ in iter_frames(source))


def frame_spans(frames: Sequence[int]) -> str:
    """Frame indices as runs numbered from 1, as a viewer counts frames: [0, 1, 2, 5] -> "1–3, 6"."""
    runs: list[list[int]] = []
    for frame in frames:
        if runs and frame == runs[-1][1] + 1:
            runs[-1][1] = frame
        else:
            runs.append([frame, frame])
    return ", ".join(str(first + 1) if first == last else f"{first + 1}–{last + 1}" for first, last in runs)


def instance_rows(instances: Sequence[dict], threshold: float) -> list[list]:
    """The table: the instances scoring at least `threshold` (those the overlay draws), best first as `vistr
    segment` prints them, with their label, score and the frames they cover."""
    return [[i["id"], i["label_name"], round(i["score"], 3), frame_spans(covered_frames(i["segmentations"]))]
            for i in found_instances(instances, threshold)]  # fmt: skip


def segment_video(model, processor, source: str, threshold: float, flips: bool, folder: Path,
                  on_clip: Callable[[int, int], None]) -> tuple[Path, list[list], Path]:  # fmt: skip
    """What `vistr segment SOURCE --threshold T --output folder/results.json --overlay folder/overlay.mp4` does, with
    `on_clip(done, total)` after each clip. `flips` on averages every flipped view, off runs one view. Returns the
    overlay, the table rows and the results JSON (every instance, as the evaluator takes them)."""
    segmenter = VideoSegmenter(model, processor, test_time_flips=list(FLIP_DIMS) if flips else [])
    clips, done = segmenter.clip_count(frame_count(source)), itertools.count(1)
    overlay = folder / "overlay.mp4"
    video = segment_with_overlay(segmenter, source, overlay, overlay.suffix, model.config.id2label, threshold,
                                 lambda: on_clip(next(done), clips))  # fmt: skip
    results = folder / "results.json"
    results.write_text(dumps_json(video_results(1, video), results.name, NON_FINITE_FIX))
    return overlay, instance_rows(video["instances"], threshold), results


def one_line(error: Exception, source: str) -> str:
    """The error on one line, naming the file the user chose rather than Gradio's copy of it."""
    return " ".join(str(error).replace(source, Path(source).name).split())


def build_demo(gr: ModuleType, model, processor, model_name: str, staging: Path):
    """The page: video, threshold and flips in; overlay, instance table and results JSON out."""

    def run(video: str | None, threshold: float, flips: bool, progress=gr.Progress()):
        if not video:
            raise gr.Error("No video: upload one, or click the sample below.", print_exception=False)
        progress(0, desc="reading the video")
        try:
            overlay, rows, results = segment_video(
                model, processor, video, threshold, flips, Path(tempfile.mkdtemp(dir=staging)),
                lambda done, total: progress((done, total), desc="segmenting", unit="clips"))
        except (ValueError, OSError) as error:  # the project's errors a user can act on are these, in one line
            raise gr.Error(one_line(error, video), print_exception=False) from None
        return str(overlay), rows, str(results)  # Gradio takes paths as str

    flip_names = ", ".join(FLIP_DIMS)
    with gr.Blocks(title="VisTR video instance segmentation") as demo:
        gr.Markdown(f"# VisTR video instance segmentation\nSegment, classify and track every instance of a video "
                    f"with `{model_name}`.")  # fmt: skip
        with gr.Row():
            with gr.Column():
                # a file box, not gr.Video: the page does not try to play the upload, so a bad one gets one message
                video = gr.File(label="video", file_types=sorted(VIDEO_EXTENSIONS), elem_id="video")
                gr.Examples([[str(SAMPLE_VIDEO)]], inputs=[video], label="bundled sample")
                threshold = gr.Slider(0, 1, value=DEFAULT_THRESHOLD, step=0.01, label="score threshold",
                                      info="instances scoring less are left out of the overlay and the table "
                                           "(the results JSON keeps them all)", elem_id="threshold")  # fmt: skip
                flips = gr.Checkbox(value=bool(processor.test_time_flips), label="test-time flips",
                                    info=f"average each clip with its flipped views ({flip_names}); off: one view",
                                    elem_id="flips")  # fmt: skip
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Video(label="overlay", interactive=False, loop=True, elem_id="overlay")
                table = gr.Dataframe(headers=COLUMNS, datatype=["number", "str", "number", "str"], interactive=False,
                                     label="instances", elem_id="instances")  # fmt: skip
                results = gr.File(label="results JSON (YouTube-VIS, every instance)", elem_id="results")
        button.click(run, [video, threshold, flips], [overlay, table, results])
    return demo


def load_gradio() -> ModuleType:
    """Gradio, or a usage error naming the extra that installs it."""
    try:
        return require("gradio", "the browser demo")
    except ImportError:
        raise UsageError(f"the browser demo needs gradio, which is not installed: {DEMO_INSTALL}") from None


def serve(args: argparse.Namespace) -> None:
    """Load the model, then serve the page until stopped; the staging folder goes with it."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a process manager's stop acts as Ctrl+C: cleaned up
    with tempfile.TemporaryDirectory(prefix="vistr-demo-") as staging:
        os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(staging, "gradio")))  # Gradio's copies stay inside too
        gr = load_gradio()
        model, processor = load_for_inference(args.model, None, "fp32")
        demo = build_demo(gr, model, processor, Path(args.model).name, Path(staging))
        demo.launch(server_name=args.host, server_port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="VisTR video instance segmentation in the browser (Gradio)")
    parser.add_argument("--model", default=str(BUNDLED_MODEL),
                        help="model folder or Hub id (default: the bundled model)")  # fmt: skip
    parser.add_argument("--host", help="address to listen on (default: Gradio's, GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: Gradio's, GRADIO_SERVER_PORT or 7860)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Errors end in one `error: ...` line, as every `vistr` command's do (VISTR_DEBUG=1 shows the traceback)."""
    args = build_parser().parse_args(argv)
    run_reporting_errors(partial(serve, args), debug_requested(args))


if __name__ == "__main__":
    main()
