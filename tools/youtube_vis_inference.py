"""Segment a whole YouTube-VIS split, as the original `inference.py` does, on one process or many.

    vistr segment --annotations valid/instances_val_sub.json --frames-root valid/JPEGImages \\
        --model vistr-r50 --output results.json --zip results.zip
    accelerate launch -m vistr.tools.cli segment --annotations ... (same options: videos are split over processes)

Every video of the annotation file is read in its `file_names` order and segmented like a single
video (short ones repeat frames, long ones are linked across clips). Each finished video is kept in
`OUTPUT.parts/` at once, so a run that stops can be started again and skips what is done; the results
file (and the zip the competition server expects, `results.json` at its root) is written, atomically,
only when every video is there, and is identical whatever the number of processes or interruptions.
An existing `OUTPUT.parts/` is resumed only if it holds nothing but what this job writes, and only those
files are deleted at the end.
"""

from __future__ import annotations

import json
import os
import re
import resource
import time
import zipfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from vistr.image_processing_vistr import VisTRVideoProcessor
from vistr.pipeline_vistr import VideoSegmenter
from vistr.tools.evaluation_youtube_vis import format_summary, score_results
from vistr.tools.outputs import Outputs, UsageError, atomic_path, dumps_json, foreign_folder, is_temporary, json_object
from vistr.tools.youtube_vis import (
    AnnotationError,
    check_file_names,
    check_unique_ids,
    describe_value,
    frame_files,
    is_integer,
    read_json,
)
from vistr.video_io import VideoReadError

RUN_FILE = "run.json"
# the files a parts folder holds besides RUN_FILE: one per finished video, one speed report per process
_PART_FILE = re.compile(r"video--?\d+\.json|speed-\d+\.json")
NON_FINITE_FIX = "the model's weights probably hold NaN or infinite values: convert or train it again"


@dataclass
class SpeedReport:
    """Frames per second inside the model forward and end to end, plus peak memory (per process, summed)."""

    frames: int = 0
    model_seconds: float = 0.0
    total_seconds: float = 0.0
    peak_memory_mib: float = 0.0

    def add(self, other: SpeedReport) -> None:
        self.frames += other.frames
        self.model_seconds += other.model_seconds
        self.total_seconds = max(self.total_seconds, other.total_seconds)
        self.peak_memory_mib = max(self.peak_memory_mib, other.peak_memory_mib)

    def table(self, device: str, processes: int) -> str:
        model_fps = self.frames / self.model_seconds if self.model_seconds else float("nan")
        total_fps = self.frames / self.total_seconds if self.total_seconds else float("nan")
        return (
            f"| frames | model-only FPS | end-to-end FPS | peak memory MiB | device | processes |\n"
            f"|---|---|---|---|---|---|\n"
            f"| {self.frames} | {model_fps:.1f} | {total_fps:.1f} | {self.peak_memory_mib:.0f} | {device} | {processes} |"
        )


# ------------------------------------------------------------------------------------------------- input


def split_videos(annotations: Mapping, source: str) -> list[dict]:
    """The videos to segment, checked for what the job needs (ids, frame file names)."""
    videos = annotations.get("videos") if isinstance(annotations, Mapping) else None
    if not isinstance(videos, list) or not videos:
        raise AnnotationError(f'{source} has no "videos" list; pass a YouTube-VIS annotation file (e.g. instances_val_sub.json)')
    for index, video in enumerate(videos):
        if not isinstance(video, Mapping) or "id" not in video or not video.get("file_names"):
            raise AnnotationError(f'{source}: video #{index} needs an "id" and a non-empty "file_names" list')
        if not is_integer(video["id"]):
            raise AnnotationError(f'{source}: video #{index} has "id" {describe_value(video["id"])}; YouTube-VIS '
                                  'video ids are integers (write 1, not "1")')  # fmt: skip
        check_file_names(video)
    check_unique_ids(videos, "video")
    return videos


def check_model_classes(model, annotations: Mapping, source: str) -> None:
    """Results carry the model's class indices as category ids: they must name the file's categories."""
    category_ids = [category["id"] for category in annotations.get("categories") or []]
    unknown = [category_id for category_id in category_ids if not 0 <= category_id < model.config.num_labels]
    if unknown:
        raise AnnotationError(
            f"{source} has categories {unknown[:10]} that the model (classes 0..{model.config.num_labels - 1}) cannot "
            "predict: use a model trained on these categories"
        )


# ------------------------------------------------------------------------------------------------- per-video parts


def _is_part_file(name: str) -> bool:
    """Whether `name` is one the split job writes in its parts folder (a temporary file of a killed run included)."""
    return name == RUN_FILE or bool(_PART_FILE.fullmatch(name)) or is_temporary(name)


def _not_a_run(folder: Path) -> str | None:
    """Why the files of `folder` are not a split job's: it always writes its settings (RUN_FILE) first."""
    return None if "annotations" in json_object(folder / RUN_FILE) else f"holds no {RUN_FILE} of a segment job"


def foreign_parts_folder(folder: Path) -> str | None:
    """Why `folder` is not a parts folder this job wrote, or None when it is (and may be resumed, then deleted):
    only its settings and part files are there. A folder that merely has the name (`results.json.parts`
    holding the user's files) is never used, so nothing in it is ever deleted."""
    return foreign_folder(folder, _is_part_file, _not_a_run)


class PartsFolder:
    """`OUTPUT.parts/`: one JSON file per finished video, written atomically, plus the run's settings."""

    def __init__(self, output: Path, settings: Mapping):
        self.folder = output.with_name(output.name + ".parts")
        self.settings = dict(settings)

    def prepare(self) -> None:
        """Create the folder, or check that an existing one (which `check_split_outputs` has recognised as one
        this job wrote) belongs to the same run."""
        self.folder.mkdir(parents=True, exist_ok=True)
        run_file = self.folder / RUN_FILE
        if run_file.exists():
            previous = json.loads(run_file.read_text())
            if previous != self.settings:
                changed = "; ".join(f"{key} {previous.get(key)!r} there, {self.settings.get(key)!r} now"
                                    for key in sorted(set(previous) | set(self.settings))
                                    if previous.get(key) != self.settings.get(key))  # fmt: skip
                raise AnnotationError(
                    f"{self.folder} holds results of another run ({changed}); delete it, or rerun with the same "
                    "annotations, model, --dtype and options to resume"
                )
        else:
            with atomic_path(run_file) as temporary:
                temporary.write_text(dumps_json(self.settings, str(run_file), "pass finite option values"))

    def path(self, video_id) -> Path:
        return self.folder / f"video-{video_id}.json"

    def done(self, video_id) -> bool:
        return self.path(video_id).is_file()

    def save(self, video_id, results: list[dict]) -> None:
        with atomic_path(self.path(video_id)) as temporary:
            temporary.write_text(dumps_json(results, f"video {video_id}", NON_FINITE_FIX))

    def load(self, video_id) -> list[dict]:
        return json.loads(self.path(video_id).read_text())

    def save_speed(self, rank: int, report: SpeedReport) -> None:
        with atomic_path(self.folder / f"speed-{rank}.json") as temporary:
            temporary.write_text(json.dumps(report.__dict__))  # may hold NaN: read back only by load_speeds

    def load_speeds(self) -> SpeedReport:
        total = SpeedReport()
        for path in sorted(self.folder.glob("speed-*.json")):
            total.add(SpeedReport(**json.loads(path.read_text())))
        return total

    def remove(self) -> None:
        """Delete the files this job wrote, and the folder when nothing else is left: a file put there during the
        run is not ours to delete."""
        for entry in self.folder.iterdir():
            if _is_part_file(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink()
        with suppress(OSError):  # not empty: what is left stays, with the folder
            self.folder.rmdir()


# ------------------------------------------------------------------------------------------------- timing


@contextmanager
def model_timer(model: torch.nn.Module, report: SpeedReport):
    """Accumulate the time spent inside `model.forward` (synchronized on GPU) into `report.model_seconds`."""
    device = next(model.parameters()).device
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = []

    def before(module, args, kwargs):
        synchronize()
        started.append(time.perf_counter())

    def after(module, args, kwargs, output):
        synchronize()
        report.model_seconds += time.perf_counter() - started.pop()

    handles = [model.register_forward_pre_hook(before, with_kwargs=True),
               model.register_forward_hook(after, with_kwargs=True)]  # fmt: skip
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ------------------------------------------------------------------------------------------------- the job


def video_results(video_id, segmented: Mapping) -> list[dict]:
    """One segmented video (`VideoSegmenter`) -> its entries of the YouTube-VIS results file."""
    return VisTRVideoProcessor.to_youtube_vis_results([segmented["instances"]], [video_id])


def segment_videos(segmenter: VideoSegmenter, videos: Sequence[Mapping], frames_root: Path, parts: PartsFolder,
                   report: SpeedReport, show_progress: bool = True) -> None:
    """Segment the videos not yet in `parts`, saving each as soon as it is done."""
    start = time.perf_counter()
    with model_timer(segmenter.model, report), tqdm(videos, desc="videos", unit="video", disable=not show_progress) as bar:
        for video in bar:
            if parts.done(video["id"]):
                continue
            paths = frame_files(video, frames_root)
            try:
                segmented = segmenter(paths)
            except VideoReadError as error:
                raise VideoReadError(f"video {video['id']}: {error}") from error
            parts.save(video["id"], video_results(video["id"], segmented))
            report.frames += len(paths)
    report.total_seconds += time.perf_counter() - start
    report.peak_memory_mib = peak_memory_mib(segmenter.device)


def check_split_outputs(annotation_file: str | os.PathLike, frames_root: str | os.PathLike, output: str | os.PathLike,
                        zip_path: str | os.PathLike | None) -> None:
    """Refuse unusable outputs before any work, writing nothing (every process of a distributed job may run it)."""
    outputs = Outputs(inputs=[annotation_file, frames_root])
    outputs.check_file(output, "--output")
    parts = PartsFolder(Path(output), {}).folder
    outputs.check_folder(parts, "--output (its .parts folder)", replace_unless=foreign_parts_folder)  # resumed if ours
    outputs.check_file(parts / RUN_FILE, "--output (its .parts folder)")  # and can be written in
    if zip_path is not None:
        if Path(zip_path).resolve() == Path(output).resolve():
            raise UsageError(f"--zip {zip_path} is the --output file; give the archive another name")
        outputs.check_file(zip_path, "--zip", suffixes=(".zip",))


def write_results(results: list[dict], outputs: Outputs, output: Path, zip_path: Path | None) -> None:
    """The results JSON and, if asked, the archive the competition server takes (`results.json` at its root),
    staged in `outputs` so that both appear together."""
    text = dumps_json(results, f"--output {output}", NON_FINITE_FIX)
    outputs.file(output, "--output").write_text(text)
    if zip_path is not None:
        with zipfile.ZipFile(outputs.file(zip_path, "--zip", suffixes=(".zip",)), "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("results.json", text)


def run_split(
    model,
    processor,
    annotation_file: str | os.PathLike,
    frames_root: str | os.PathLike,
    output: str | os.PathLike,
    *,
    zip_path: str | os.PathLike | None = None,
    score: bool = False,
    stride: int | None = None,
    mask_threshold: float = 0.5,
    model_name: str = "",
    test_time_flips: Sequence[str] | None = None,
    mask_score_weighting: bool | None = None,
) -> dict | None:
    """The whole job on this process's share of the videos; the main process writes the results.

    `test_time_flips`, `mask_score_weighting`: as `VideoSegmenter` takes them (None: the processor's).
    Returns the 12 metrics when `score` is set (main process), else None.
    """
    from accelerate import PartialState

    state = PartialState()
    annotations = read_json(annotation_file, "annotation file")
    videos = split_videos(annotations, str(annotation_file))
    check_model_classes(model, annotations, str(annotation_file))
    if score and not annotations.get("annotations"):
        raise AnnotationError(f'{annotation_file} holds no ground truth ("annotations"), so --evaluate cannot score it')
    check_split_outputs(annotation_file, frames_root, output, zip_path)
    output = Path(output)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # resuming in another precision would mix
    segmenter = VideoSegmenter(model, processor, stride=stride, mask_threshold=mask_threshold,
                               test_time_flips=test_time_flips, mask_score_weighting=mask_score_weighting)  # fmt: skip
    settings = {"annotations": str(Path(annotation_file).resolve()), "model": model_name, "stride": stride,
                "mask_threshold": mask_threshold, "dtype": dtype,
                "test_time_flips": list(segmenter.test_time_flips),
                "mask_score_weighting": segmenter.mask_score_weighting}  # fmt: skip
    parts = PartsFolder(output, settings)
    if state.is_main_process:
        parts.prepare()
    state.wait_for_everyone()
    report = SpeedReport()
    share = videos[state.process_index :: state.num_processes]
    segment_videos(segmenter, share, Path(frames_root), parts, report, show_progress=state.is_local_main_process)
    parts.save_speed(state.process_index, report)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    results = [result for video in videos for result in parts.load(video["id"])]
    with Outputs(inputs=[annotation_file, frames_root]) as outputs:
        write_results(results, outputs, output, Path(zip_path) if zip_path else None)
    total = parts.load_speeds()
    parts.remove()
    print(f"results: {output} ({len(videos)} videos, {len(results)} instances)" + (f", archive: {zip_path}" if zip_path else ""))
    print(total.table(str(segmenter.device), state.num_processes))
    if not score:
        return None
    metrics = score_results(annotations, results)
    print(format_summary(metrics))
    print(json.dumps(metrics))
    return metrics


__all__ = ["SpeedReport", "run_split"]
