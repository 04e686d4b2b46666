"""Bad or unusual inputs at the reading boundaries: results and annotation files for the evaluator, and
videos, frames and images for `video_io`, frame paths of YouTube-VIS files for the loader, the split job
and training, and model folders and checkpoints for inference, `--init-from` and the converter. Each is made
inside its test (PIL, numpy, PyAV, pycocotools, safetensors, torch.save).

To add a case: write a function that builds the bad input, add it to the table of its section (or a test
beside them) with the message, or the value, the reader must give. Expected values come from independent
references (pycocotools itself, numpy), never from the module under test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, failed_command
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import load_file, save_file
from vistr import convert_checkpoint
from vistr.configuration_vistr import VisTRConfig, config_problems
from vistr.tools.model_card import save_model_folder
from vistr.modeling_vistr import VisTRForVideoInstanceSegmentation
from vistr.tools import cli as vistr_cli
from vistr.tools.evaluation_youtube_vis import ResultsError, decode_compressed_counts, evaluate
from vistr.tools.model_source import read_model_source
from vistr.tools.outputs import UsageError
from vistr.tools.training_data import make_clip
from vistr.tools.youtube_vis import AnnotationError, YouTubeVISError, load_youtube_vis
from vistr.video_io import VideoReadError, iter_frames, video_fps

HEIGHT, WIDTH = 8, 8


# ----------------------------------------------------------------------------------------------------------
# Evaluator: RLE masks and scores
# ----------------------------------------------------------------------------------------------------------


def encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(side) for side in rle["size"]], "counts": rle["counts"].decode()}


def square() -> dict:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[2:6, 2:6] = True
    return encode(mask)


def pair() -> tuple[dict, list]:
    """One 2-frame video with one track, and a perfect result for it."""
    video = {"id": 1, "height": HEIGHT, "width": WIDTH, "length": 2}
    track = {"id": 1, "video_id": 1, "category_id": 1, "segmentations": [square(), square()], "areas": [16, 16],
             "iscrowd": 0}
    truth = {"videos": [video], "annotations": [track], "categories": [{"id": 1, "name": "a"}]}
    result = {"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [square(), square()]}
    return truth, [dict(result), dict(result, segmentations=[square(), square()])]


def counts_of_runs(runs: list[int]) -> str:
    """Compressed counts for any runs (also ones that do not add up), through pycocotools' own encoder."""
    return mask_utils.frPyObjects({"size": [HEIGHT, WIDTH], "counts": runs}, HEIGHT, WIDTH)["counts"].decode()


SHORT_BY_ONE = counts_of_runs([HEIGHT * WIDTH - 1])  # counts sum to h*w - 1: pycocotools' iou never returns


def test_counts_short_of_the_size_are_refused_instead_of_hanging(tmp_path):
    truth, results = pair()
    results[1]["segmentations"][1] = {"size": [HEIGHT, WIDTH], "counts": SHORT_BY_ONE}
    truth_path, results_path = tmp_path / "truth.json", tmp_path / "results.json"
    truth_path.write_text(json.dumps(truth))
    results_path.write_text(json.dumps(results))
    code = (
        "import sys\nfrom vistr.tools.evaluation_youtube_vis import ResultsError, evaluate\n"
        "try:\n    evaluate(sys.argv[1], sys.argv[2])\nexcept ResultsError as error:\n    print(error)\n"
    )
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    try:
        finished = subprocess.run(
            [sys.executable, "-c", code, str(truth_path), str(results_path)],
            capture_output=True, text=True, timeout=120, env=environment,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the evaluator hangs on RLE counts that do not add up to the mask size")
    assert finished.stdout.strip() == (
        f"result #1 (video 1), frame 1: RLE counts add up to {HEIGHT * WIDTH - 1} pixels, but its size "
        f"{HEIGHT} x {WIDTH} has {HEIGHT * WIDTH}"
    )


# Bad counts strings: (counts, message after "result #1 (video 1), frame 0: ").
BAD_COUNTS = [
    ("hello world", r"RLE counts contain ' ', which is not in pycocotools' alphabet"),
    ("0\x00`0", r"RLE counts contain '\\x00'"),
    ("0\ud800", r"RLE counts contain "),
    ("0`", r"RLE counts end in the middle of a number \(the string is truncated\)"),
    ("0" + "P" * 6 + "0", r"RLE counts hold a number of more than 6 characters"),
    ("050F", "RLE counts decode to a run length that is negative"),  # runs 0, 5, 0, then 5 - 10
    (counts_of_runs([HEIGHT * WIDTH + 1]), rf"RLE counts add up to {HEIGHT * WIDTH + 1} pixels, but its size"),
    ("", rf"RLE counts add up to 0 pixels, but its size {HEIGHT} x {WIDTH} has {HEIGHT * WIDTH}"),
]


@pytest.mark.parametrize("counts, message", BAD_COUNTS)
def test_results_with_bad_counts_name_the_result_video_and_frame(counts, message):
    truth, results = pair()
    results[1]["segmentations"][0] = {"size": [HEIGHT, WIDTH], "counts": counts}
    with pytest.raises(ResultsError, match=r"^result #1 \(video 1\), frame 0: " + message):
        evaluate(truth, results)


@pytest.mark.parametrize("size", [[HEIGHT, WIDTH, 1], [float(HEIGHT), float(WIDTH)], [True, WIDTH], "8x8", None])
def test_results_with_a_malformed_size_are_refused(size):
    truth, results = pair()
    results[0]["segmentations"][1] = dict(square(), size=size)
    with pytest.raises(ResultsError, match=r"result #0 \(video 1\), frame 1: RLE size .* is not the video's"):
        evaluate(truth, results)


# Bad ground-truth masks: (segmentation, message after "annotation 1 (video 1), frame 1: ").
BAD_TRUTH = [
    ({"size": [HEIGHT, WIDTH], "counts": SHORT_BY_ONE}, "RLE counts add up to 63 pixels"),
    ({"size": [HEIGHT, WIDTH], "counts": [10, 53]}, "uncompressed RLE counts add up to 63 pixels"),
    ({"size": [HEIGHT, WIDTH], "counts": [10, -5, 59]}, "uncompressed RLE counts hold a run length that is negative"),
    ({"size": [HEIGHT, WIDTH], "counts": [10.0, 54.0]}, "uncompressed RLE counts must be a flat list of integers"),
    ({"size": [HEIGHT, 2 * WIDTH], "counts": counts_of_runs([HEIGHT * WIDTH])}, r"RLE size \[8, 16\] is not"),
]


@pytest.mark.parametrize("segmentation, message", BAD_TRUTH)
def test_ground_truth_with_bad_masks_names_the_annotation_and_frame(segmentation, message):
    truth, results = pair()
    truth["annotations"][0]["segmentations"][1] = segmentation
    with pytest.raises(AnnotationError, match=r"^annotation 1 \(video 1\), frame 1: " + message):
        evaluate(truth, results)


@pytest.mark.parametrize("height", [0, -8, 8.0, "8"])
def test_videos_need_a_positive_integer_size(height):
    truth, results = pair()
    truth["videos"][0]["height"] = height
    with pytest.raises(AnnotationError, match='video 1: "height" must be a positive integer'):
        evaluate(truth, results)


@pytest.mark.parametrize("score", [float("nan"), float("inf"), -float("inf"), 10**400, "0.9", True])
def test_non_finite_or_non_numeric_scores_are_refused(score):
    truth, results = pair()
    results[0]["score"] = score
    with pytest.raises(ResultsError, match=r"result #0 \(video 1\): score must be a finite number"):
        evaluate(truth, results)


def numpy_runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths, zeros first: the uncompressed RLE that pycocotools compresses."""
    flat = mask.flatten(order="F")
    boundaries = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], boundaries, [flat.size]])).tolist()
    return [0] + runs if flat[0] else runs


def test_decoder_reads_pycocotools_strings_back_to_numpy_runs():
    rng = np.random.default_rng(0)
    masks = [rng.random((int(h), int(w))) < rng.random() for h, w in rng.integers(1, 300, size=(200, 2))]
    masks += [np.ones((400, 500), dtype=bool), np.zeros((1, 1), dtype=bool)]
    strings = [mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"] for mask in masks]
    decoded = decode_compressed_counts(strings)
    assert decoded.problem == 0
    runs = np.split(decoded.runs, np.cumsum(decoded.run_counts)[:-1])
    assert [part.tolist() for part in runs] == [numpy_runs(mask) for mask in masks]
    assert decoded.totals.tolist() == [mask.size for mask in masks]


def test_decoder_agrees_with_pycocotools_area_on_random_strings():
    """Any string of the alphabet with short numbers: the odd runs add up to what pycocotools' `area`
    reads from the same string (area loops over the runs only, so it is safe on bad totals)."""
    rng = np.random.default_rng(1)
    alphabet = np.frombuffer(bytes(range(ord("0"), ord("0") + 64)), dtype=np.uint8)
    strings = [bytes(alphabet[rng.integers(0, 64, size=int(n))]) + b"0" for n in rng.integers(0, 30, size=1000)]
    decoded = decode_compressed_counts(strings)
    runs = np.split(decoded.runs, np.cumsum(decoded.run_counts)[:-1])
    checked = 0
    for string, string_runs in zip(strings, runs):
        if decode_compressed_counts([string]).problem:
            continue
        rle = {"size": [1, int(string_runs.sum()) or 1], "counts": string}
        assert int(mask_utils.area([rle])[0]) == int(string_runs[1::2].sum())
        checked += 1
    assert checked > 60


# ----------------------------------------------------------------------------------------------------------
# Readers: frames, images and videos
# ----------------------------------------------------------------------------------------------------------


def halves(height: int, width: int) -> np.ndarray:
    """An RGB picture whose left half is white: any rotation or flip moves it."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = 255
    array[: height // 4, :, 0] = 128
    return array


def write_video(path, frames: list[np.ndarray], fps=25, rotation: int | None = None, codec: str = "mpeg4") -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def arrays(source) -> list[np.ndarray]:
    return [np.asarray(frame.convert("RGB")) for frame in iter_frames(source)]


def test_16_bit_png_frames_are_scaled_to_8_bits(tmp_path):
    values = (np.arange(12 * 10).reshape(12, 10) * 547).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "00000.png")
    assert Image.open(tmp_path / "00000.png").mode == "I;16"
    (frame,) = arrays(tmp_path)
    np.testing.assert_array_equal(frame[..., 0], np.rint(values / 257.0).astype(np.uint8))


def test_32_bit_float_frames_are_refused(tmp_path):
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "frame.tif")
    with pytest.raises(VideoReadError, match=r"frame.tif: F pixels \(32-bit float\) have no standard range"):
        arrays(tmp_path)


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(tmp_path, orientation, turns):
    picture = halves(16, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(picture).save(tmp_path / "frame.jpg", exif=exif, quality=95)
    (frame,) = arrays(tmp_path)
    expected = np.rot90(picture, k=turns)  # orientation 6: the camera was turned, show it 90 degrees clockwise
    assert frame.shape == expected.shape
    assert np.abs(frame.astype(int) - expected).mean() < 8


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_video_display_rotation_is_applied(tmp_path, rotation):
    pictures = [halves(16, 32), 255 - halves(16, 32)]
    write_video(tmp_path / "plain.mp4", pictures)
    write_video(tmp_path / "turned.mp4", pictures, rotation=rotation)
    plain, turned = arrays(tmp_path / "plain.mp4"), arrays(tmp_path / "turned.mp4")
    assert len(turned) == len(plain) == 2
    for got, reference in zip(turned, plain):
        np.testing.assert_array_equal(got, np.rot90(reference, k=rotation // 90))  # both counter-clockwise


def test_video_rotation_that_is_not_a_quarter_turn_is_refused(tmp_path):
    write_video(tmp_path / "tilted.mp4", [halves(16, 32)], rotation=45)
    with pytest.raises(VideoReadError, match=r"tilted.mp4: the video's display matrix rotates it by 45 degrees"):
        arrays(tmp_path / "tilted.mp4")


def animated_png(path, colours=((255, 0, 0), (0, 255, 0), (0, 0, 255)), duration=40) -> list[np.ndarray]:
    frames = [np.full((6, 8, 3), colour, dtype=np.uint8) for colour in colours]
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)
    return frames


def test_an_animated_png_given_as_the_video_is_read_as_all_its_frames(tmp_path):
    expected = animated_png(tmp_path / "clip.png")
    got = arrays(tmp_path / "clip.png")
    assert len(got) == 3
    for frame, reference in zip(got, expected):
        np.testing.assert_array_equal(frame, reference)
    assert video_fps(tmp_path / "clip.png") == pytest.approx(25.0)


def test_an_animated_png_among_frames_is_refused(tmp_path):
    Image.fromarray(halves(6, 8)).save(tmp_path / "00000.png")
    animated_png(tmp_path / "00001.png")
    with pytest.raises(VideoReadError, match=r"00001.png: an animated image \(3 frames\) cannot be one frame"):
        arrays(tmp_path)


@pytest.mark.parametrize("fps", [25, Fraction(30000, 1001)])
def test_frame_rate_of_an_mpeg_ts_is_read(tmp_path, fps):
    write_video(tmp_path / "clip.ts", [halves(16, 32)] * 6, fps=fps, codec="mpeg2video")
    assert video_fps(tmp_path / "clip.ts") == pytest.approx(float(fps))
    assert len(arrays(tmp_path / "clip.ts")) == 6


@pytest.mark.parametrize("name, content", [("00000.png", b"not a png"), ("clip.mp4", b"\x00" * 64)])
def test_unreadable_files_give_one_line_naming_the_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(VideoReadError) as error:
        arrays(tmp_path / name)
    assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)


# ----------------------------------------------------------------------------------------------------------
# Frame files: only regular files are opened (a pipe would hang the reader, a device never end)
# ----------------------------------------------------------------------------------------------------------


@contextmanager
def reader_unblocked(fifo: Path):
    """While the block runs, open `fifo` for writing whenever a reader waits on it and close it at once: a
    reader that (wrongly) opened the pipe gets an empty file and fails instead of hanging the test suite.
    Nothing is done where `fifo` is not a named pipe."""
    stop = threading.Event()
    if not stat.S_ISFIFO(os.stat(fifo).st_mode if os.path.exists(fifo) else 0):
        yield
        return

    def release() -> None:
        while not stop.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only while a reader waits
            except OSError:
                stop.wait(0.05)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def named_pipe(path: Path) -> None:
    os.mkfifo(path)


def unix_socket(path: Path) -> None:
    """A socket file at `path` (bound through a relative name: socket paths are limited to about 100 bytes)."""
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(os.path.relpath(path))


def character_device(path: Path) -> None:
    path.symlink_to("/dev/zero")  # links are followed: what counts is what the name leads to


def folder(path: Path) -> None:
    path.mkdir()


SPECIAL_FILES = [(named_pipe, "a named pipe"), (unix_socket, "a socket"), (character_device, "a character device"),
                 (folder, "a folder")]  # fmt: skip


def frame_folder(path: Path, count: int = 3) -> Path:
    path.mkdir()
    for index in range(count):
        Image.fromarray(halves(8, 8)).save(path / f"{index:05d}.jpg")
    return path


@pytest.mark.parametrize("given_as", ["folder", "list of files", "the video itself"])
@pytest.mark.parametrize("make, kind", SPECIAL_FILES)
def test_only_regular_files_are_opened_as_frames_or_videos(tmp_path, monkeypatch, make, kind, given_as):
    monkeypatch.chdir(tmp_path)
    frames = frame_folder(tmp_path / "frames")
    special = tmp_path / "clip.mp4" if given_as == "the video itself" else frames / "00003.jpg"
    if given_as == "the video itself" and make is folder:
        special = frames / "00003.jpg"  # a folder given as the video is a frame folder; test it among frames
        given_as = "folder"
    make(special)
    source = {"folder": frames, "list of files": sorted(frames.iterdir()), "the video itself": special}[given_as]
    with reader_unblocked(special), pytest.raises(VideoReadError) as error:
        video = iter_frames(source)  # a folder or a file is checked when given, before any frame is decoded
        assert given_as == "list of files"
        list(video)
    assert str(error.value) == (
        f"{special} is {kind}, not a regular file; only regular files are read as frames or videos. "
        "Remove it or replace it with the image or video file."
    )


def test_frames_with_non_utf8_names_are_read_like_any_other(tmp_path):
    """Linux file names are bytes; Python reads the non-UTF-8 ones with surrogates, which must not break sorting,
    opening or messages."""
    frames = frame_folder(tmp_path / "frames", count=2)
    odd = os.fsdecode(bytes(frames / "00001.jpg").replace(b"00001.jpg", b"\xff\xfe00002.png"))
    Image.fromarray(255 - halves(8, 8)).save(odd)  # PNG: the last frame read back exactly
    got = arrays(frames)
    assert len(got) == 3
    np.testing.assert_array_equal(got[2], 255 - halves(8, 8))


# ----------------------------------------------------------------------------------------------------------
# YouTube-VIS frame paths: the image folder is a wall (loader, split job and training read them)
# ----------------------------------------------------------------------------------------------------------


def youtube_vis_folder(root: Path) -> dict:
    """ROOT/JPEGImages/clip/{0,1}.jpg and one video (id 5) listing them; a file outside the root beside it."""
    (root / "JPEGImages" / "clip").mkdir(parents=True)
    for index in range(2):
        Image.fromarray(halves(8, 8)).save(root / "JPEGImages" / "clip" / f"{index}.jpg")
    (root.parent / "outside").mkdir()
    Image.fromarray(halves(8, 8)).save(root.parent / "outside" / "secret.jpg")
    video = {"id": 5, "width": 8, "height": 8, "length": 2, "file_names": ["clip/0.jpg", "clip/1.jpg"]}
    return {"videos": [video], "categories": [{"id": 1, "name": "disc"}], "annotations": []}


def absolute_name(root, data):
    data["videos"][0]["file_names"][1] = str(root.parent / "outside" / "secret.jpg")


def parent_name(root, data):
    data["videos"][0]["file_names"][1] = "../../outside/secret.jpg"


def linked_file(root, data):
    (root / "JPEGImages" / "clip" / "1.jpg").unlink()
    (root / "JPEGImages" / "clip" / "1.jpg").symlink_to(root.parent / "outside" / "secret.jpg")


def linked_folder(root, data):
    (root / "JPEGImages" / "more").symlink_to(root.parent / "outside", target_is_directory=True)
    data["videos"][0]["file_names"][1] = "more/secret.jpg"


def linked_root_file_back_out(root, data):
    """A link inside the root to a folder inside it, and `..` from there: the resolved path decides."""
    (root / "JPEGImages" / "deep").mkdir()
    (root / "JPEGImages" / "up").symlink_to(root / "JPEGImages" / "deep")
    data["videos"][0]["file_names"][1] = "up/../../../outside/secret.jpg"


def pipe_frame(root, data):
    (root / "JPEGImages" / "clip" / "1.jpg").unlink()
    os.mkfifo(root / "JPEGImages" / "clip" / "1.jpg")


def link_loop(root, data):
    (root / "JPEGImages" / "clip" / "1.jpg").unlink()
    (root / "JPEGImages" / "clip" / "1.jpg").symlink_to("1.jpg")


def number_name(root, data):
    data["videos"][0]["file_names"][1] = 1


def list_name(root, data):
    data["videos"][0]["file_names"][1] = ["clip", "1.jpg"]


def null_name(root, data):
    data["videos"][0]["file_names"][1] = None


LEAVES = r"video 5: file name '{name}' leaves the image folder .*JPEGImages \(it leads to .*outside/secret.jpg\)"
FRAME_PATH_CASES = [
    (absolute_name, LEAVES.format(name="/.*/outside/secret.jpg")),
    (parent_name, LEAVES.format(name=r"\.\./\.\./outside/secret.jpg")),
    (linked_file, LEAVES.format(name="clip/1.jpg")),
    (linked_folder, LEAVES.format(name="more/secret.jpg")),
    (linked_root_file_back_out, LEAVES.format(name=r"up/\.\./\.\./\.\./outside/secret.jpg")),
    (pipe_frame, r"video 5: .*JPEGImages/clip/1.jpg is a named pipe, not a regular file"),
    (link_loop, r"video 5: file name 'clip/1.jpg' cannot be followed \(.*\); fix the name or the link"),
    (number_name, r"video 5: file_names entry #1 is 1, not a string; file_names are frame file paths"),
    (list_name, r"video 5: file_names entry #1 is \['clip', '1.jpg'\], not a string"),
    (null_name, r"video 5: file_names entry #1 is None, not a string"),
]


def write_annotations(root: Path, data: dict) -> Path:
    (root / "annotations.json").write_text(json.dumps(data))
    return root / "annotations.json"


@pytest.mark.parametrize("corrupt, message", FRAME_PATH_CASES)
def test_the_loader_reads_only_regular_files_inside_the_image_folder(tmp_path, corrupt, message):
    root = tmp_path / "ytvis"
    data = youtube_vis_folder(root)
    corrupt(root, data)
    write_annotations(root, data)
    with reader_unblocked(root / "JPEGImages" / "clip" / "1.jpg"), pytest.raises(AnnotationError, match=message):
        load_youtube_vis(root)


def folder_with_a_non_utf8_frame_name(tmp_path) -> Path:
    """A YouTube-VIS folder whose video 5 names its second frame with a byte that is not UTF-8."""
    root = tmp_path / "ytvis"
    data = youtube_vis_folder(root)
    odd = os.fsdecode(b"clip/\xff1.jpg")
    (root / "JPEGImages" / "clip" / "1.jpg").rename(root / "JPEGImages" / odd)
    data["videos"][0]["file_names"][1] = odd
    write_annotations(root, data)
    return root


def test_the_loader_names_a_non_utf8_file_name_it_cannot_store(tmp_path):
    root = folder_with_a_non_utf8_frame_name(tmp_path)
    with pytest.raises(AnnotationError, match=r"video 5: file name 'clip/\\udcff1.jpg' is not UTF-8, .* rename"):
        load_youtube_vis(root)


@pytest.fixture(scope="module")
def bundled_model() -> str:
    return str(Path(__file__).resolve().parents[2] / "assets" / "vistr-tiny-synthetic")


def split_job(root: Path, model: str, output: Path) -> str:
    """`vistr segment --annotations` on ROOT: the one line it exits with ('' when it succeeds)."""
    command = ["segment", "--annotations", str(root / "annotations.json"), "--frames-root", str(root / "JPEGImages"),
               "--model", model, "--output", str(output), "--device", "cpu"]  # fmt: skip
    try:
        vistr_cli.main(command)
    except SystemExit as exit_info:
        return str(exit_info.code)
    return ""


def string_file_names(root, data):
    data["videos"][0]["file_names"] = "clip/0.jpg"


SPLIT_CASES = [*FRAME_PATH_CASES, (string_file_names, r'video 5: "file_names" must be a list of frame file names')]


@pytest.mark.parametrize("corrupt, message", SPLIT_CASES)
def test_the_split_job_reads_only_regular_files_inside_the_frames_root(tmp_path, bundled_model, corrupt, message):
    root = tmp_path / "ytvis"
    data = youtube_vis_folder(root)
    corrupt(root, data)
    write_annotations(root, data)
    with reader_unblocked(root / "JPEGImages" / "clip" / "1.jpg"):
        line = split_job(root, bundled_model, tmp_path / "results.json")
    assert re.fullmatch("error: " + message + ".*", line) and "\n" not in line
    assert not (tmp_path / "results.json").exists()


def test_the_split_job_reads_non_utf8_file_names(tmp_path, bundled_model):
    root = folder_with_a_non_utf8_frame_name(tmp_path)
    assert split_job(root, bundled_model, tmp_path / "results.json") == ""
    assert {result["video_id"] for result in json.loads((tmp_path / "results.json").read_text())} == {5}


def test_training_opens_a_frame_path_only_if_it_is_still_a_regular_file(tmp_path):
    """The loader checked the frames; a pipe put in a frame's place afterwards must not hang training."""
    root = tmp_path / "ytvis"
    write_annotations(root, youtube_vis_folder(root))
    row = load_youtube_vis(root).with_format("arrow")[0:1].to_pylist()[0]
    frame = root / "JPEGImages" / "clip" / "1.jpg"
    frame.unlink()
    os.mkfifo(frame)
    with reader_unblocked(frame), pytest.raises(VideoReadError, match=rf"{frame} is a named pipe, not a regular file"):
        make_clip(row, [0, 1])


# ----------------------------------------------------------------------------------------------------------
# Evaluator and readers of JSON: ids, duplicates, nesting
# ----------------------------------------------------------------------------------------------------------


def set_field(section: str, field: str, value):
    """A corruption of `pair()`'s ground truth (section "videos", "annotations" or "categories") or results."""

    def corrupt(truth: dict, results: list) -> None:
        records = results if section == "results" else truth[section]
        records[0][field] = value

    corrupt.__name__ = f"{section}_{field}_{type(value).__name__}"
    return corrupt


def string_ids_everywhere(truth, results):
    """Ids that agree with each other but are not integers (the split job and the loader refuse them too)."""
    truth["videos"][0]["id"] = "1"
    truth["annotations"][0]["video_id"] = "1"
    for result in results:
        result["video_id"] = "1"


def duplicate_video(truth, results):
    truth["videos"].append(dict(truth["videos"][0]))


def duplicate_video_of_another_size(truth, results):
    truth["videos"].append(dict(truth["videos"][0], height=2 * HEIGHT))


def duplicate_category(truth, results):
    truth["categories"].append({"id": 1, "name": "b"})


def long_score(truth, results):
    results[0]["score"] = [0.5] * 100_000


ID_CASES = [
    (set_field("videos", "id", [1]), AnnotationError, r'video #0: "id" must be an integer id, not \[1\]'),
    (set_field("videos", "id", True), AnnotationError, r'video #0: "id" must be an integer id, not True'),
    (set_field("annotations", "id", {"a": 1}), AnnotationError, r"annotation #0: \"id\" must be an integer id, not"),
    (set_field("annotations", "video_id", [1]), AnnotationError, r'annotation #0: "video_id" must be an integer id'),
    (set_field("annotations", "category_id", [1]), AnnotationError, r'annotation #0: "category_id" must be an'),
    (set_field("categories", "id", [1]), AnnotationError, r'category #0: "id" must be an integer id, not \[1\]'),
    (string_ids_everywhere, AnnotationError, r"video #0: \"id\" must be an integer id, not '1' \(YouTube-VIS ids"),
    (set_field("results", "video_id", [1]), ResultsError, r'result #0: "video_id" must be an integer id from the'),
    (set_field("results", "video_id", {"id": 1}), ResultsError, r'result #0: "video_id" must be an integer id'),
    (set_field("results", "category_id", [1]), ResultsError, r'result #0: "category_id" must be an integer id'),
    (duplicate_video, AnnotationError, r"video id 1 appears twice in the annotation file; give each video its own"),
    (duplicate_video_of_another_size, AnnotationError, r"video id 1 appears twice in the annotation file"),
    (duplicate_category, AnnotationError, r"category id 1 appears twice in the annotation file"),
    (long_score, ResultsError, r"result #0 \(video 1\): score must be a finite number, not \[0.5, 0.5, .*\.\.\.\]$"),
]


@pytest.mark.parametrize("corrupt, error, message", ID_CASES)
def test_evaluator_ids_must_be_unique_integers(corrupt, error, message):
    truth, results = pair()
    corrupt(truth, results)
    with pytest.raises(error, match="^" + message) as raised:
        evaluate(truth, results)
    assert len(str(raised.value)) < 200 and "\n" not in str(raised.value)


def test_the_loader_refuses_ids_that_are_not_integers(tmp_path):
    root = tmp_path / "ytvis"
    data = youtube_vis_folder(root)
    data["videos"][0]["id"] = [5]
    write_annotations(root, data)
    with pytest.raises(AnnotationError, match=r'video #0: "id" must be an integer id, not \[5\]'):
        load_youtube_vis(root)


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("role", ["annotation file", "results file", "dataset loader"])
def test_deeply_nested_json_is_refused_in_one_line(tmp_path, role):
    truth, results = pair()
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    message = rf"^{role.replace('dataset loader', 'annotation file')} {deep} nests arrays or objects too deeply"
    with pytest.raises(YouTubeVISError, match=message):
        if role == "annotation file":
            evaluate(deep, results)
        elif role == "results file":
            evaluate(truth, deep)
        else:
            load_youtube_vis(tmp_path, deep)


@pytest.mark.parametrize(
    "truth_text, results_text, message",
    [
        (None, json.dumps([{"video_id": [1], "category_id": 1, "score": 0.5, "segmentations": []}]),
         r'error: result #0: "video_id" must be an integer id from the annotation file, not \[1\]'),
        (DEEP, None, r"error: annotation file .*truth.json nests arrays or objects too deeply"),
    ],
)  # fmt: skip
def test_vistr_evaluate_gives_one_error_line_for_bad_ids_and_nesting(tmp_path, truth_text, results_text, message):
    truth, results = pair()
    (tmp_path / "truth.json").write_text(truth_text or json.dumps(truth))
    (tmp_path / "results.json").write_text(results_text or json.dumps(results))
    with pytest.raises(SystemExit) as exit_info:
        vistr_cli.main(["evaluate", "--annotations", str(tmp_path / "truth.json"),
                        "--results", str(tmp_path / "results.json")])  # fmt: skip
    assert re.match(message, str(exit_info.value.code)) and "\n" not in str(exit_info.value.code)


# ----------------------------------------------------------------------------------------------------------
# Model folders and checkpoints: what runs is the stored model, or one line says why not
# ----------------------------------------------------------------------------------------------------------


def small_config() -> VisTRConfig:
    """test_resnet with the default frozen norms (their buffers are in the weights), tiny transformer."""
    return VisTRConfig(backbone="test_resnet", num_frames=2, num_queries_per_frame=2, d_model=96, encoder_layers=1,
                       decoder_layers=1, ffn_dim=64, id2label={0: "N/A", 1: "shape"})  # fmt: skip


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vistr") / "model"
    save_model_folder(VisTRForVideoInstanceSegmentation(small_config()).eval(), folder)
    return folder


def edited_weights(change):
    """A folder edit: `change` maps the stored tensors to the tensors written back."""

    def edit(folder: Path) -> None:
        weights = folder / "model.safetensors"
        save_file(change(load_file(weights)), weights, metadata={"format": "pt"})

    return edit


def without(prefix: str):
    return edited_weights(lambda weights: {name: t for name, t in weights.items() if not name.startswith(prefix)})


def every_weight_as(dtype: torch.dtype):
    return edited_weights(lambda weights: {name: t.to(dtype) for name, t in weights.items()})


def poisoned(name_part: str, value: float):
    """`value` in one element of the first tensor whose name holds `name_part`."""

    def change(weights: dict) -> dict:
        name = next(name for name in sorted(weights) if name_part in name)
        weights[name].view(-1)[0] = value
        return weights

    return edited_weights(change)


def config_with(**fields):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | fields))

    return edit


class RunsCode:
    """Pickled, it calls os.system: a payload that must never run."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def code_running_bin(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    payload = {"vistr.query_position_embeddings.weight": RunsCode(folder / "payload-ran")}
    torch.save(payload, folder / "pytorch_model.bin")


def truncated_weights(folder: Path) -> None:
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])


def shards_outside(folder: Path) -> None:
    names = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").rename(folder.parent / "elsewhere.safetensors")
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "../elsewhere.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


MISSING = "tensors the model needs are missing from its weights, so they would run with random values"
NAN = "1 tensors hold NaN or infinite values"
MODEL_FOLDER_CASES = [  # (edit, piece of the message); the inference commands refuse each
    (without("class_labels_classifier."), f"2 {MISSING} (first: class_labels_classifier.bias"),
    (without("vistr.query_position_embeddings."), f"1 {MISSING} (first: vistr.query_position_embeddings.weight)"),
    (without("vistr.backbone.model.bn1."), f"4 {MISSING} (first: vistr.backbone.model.bn1.bias"),
    (edited_weights(lambda w: w | {"extra.weight": torch.zeros(3)}), "1 tensors in its weights are not in the model"),
    (edited_weights(lambda w: w | {"class_labels_classifier.bias": torch.zeros(5)}), "weights do not fit its config"),
    (every_weight_as(torch.int8), "tensors are stored in a dtype that does not hold the model's floating-point"),
    (every_weight_as(torch.bool), "(first: bbox_attention.k_linear.bias (bool)"),
    (poisoned("mask_head.lay1.weight", float("nan")), f"{NAN} (first: mask_head.lay1.weight)"),
    (poisoned("running_var", float("inf")), f"{NAN} (first: vistr.backbone.model.bn1.running_var)"),
    (config_with(d_model=100), "d_model=100 must be a positive multiple of 48"),
    (config_with(num_frames="5"), "num_frames='5' must be an integer"),
    (config_with(id2label=["N/A", "shape"]), "id2label=['N/A', 'shape'] must map class indices to names"),
    (config_with(num_frames=10**7), "num_frames=10000000 is over the limit of 1024"),
    (code_running_bin, "pytorch_model.bin holds Python objects other than tensors, which are refused"),
    (truncated_weights, "model.safetensors is damaged"),
    (shards_outside, "model.safetensors.index.json names shards outside the model folder"),
]  # fmt: skip
CASE_IDS = [f"{i}-{piece[:30]}" for i, (_, piece) in enumerate(MODEL_FOLDER_CASES)]


def edited_copy(saved_model: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    edit(folder)
    return folder


@pytest.mark.parametrize("edit, piece", MODEL_FOLDER_CASES, ids=CASE_IDS)
def test_inference_refuses_a_model_folder_that_is_not_the_stored_model(saved_model, tmp_path, capsys, edit, piece):
    folder = edited_copy(saved_model, tmp_path, edit)
    exit_code, message = failed_command(capsys, vistr_cli.main, "inspect", str(folder))
    assert_one_line_error(message, f"error: --model {folder}: ")
    assert piece in message and "weights_only" not in message and exit_code == 1
    assert not (folder / "payload-ran").exists()


NOT_MISSING = [i for i, (_, piece) in enumerate(MODEL_FOLDER_CASES) if MISSING not in piece]


@pytest.mark.parametrize("edit, piece", [MODEL_FOLDER_CASES[i] for i in NOT_MISSING],
                         ids=[CASE_IDS[i] for i in NOT_MISSING])  # fmt: skip
def test_init_from_refuses_the_same_folders_but_missing_tensors(saved_model, tmp_path, edit, piece):
    """The trainer reports and bounds missing tensors itself (--allow-partial-init); everything else is refused."""
    folder = edited_copy(saved_model, tmp_path, edit)
    with pytest.raises(UsageError) as error:
        read_model_source(str(folder))
    assert str(error.value).startswith(f"--init-from {folder}: ") and "\n" not in str(error.value)
    assert piece in str(error.value) and "weights_only" not in str(error.value)
    assert not (folder / "payload-ran").exists()


def test_init_from_leaves_missing_tensors_out_of_the_source(saved_model, tmp_path):
    folder = edited_copy(saved_model, tmp_path, without("class_labels_classifier."))
    source = read_model_source(str(folder))
    assert "class_labels_classifier.weight" not in source.weights and "mask_head.lay1.weight" in source.weights


def test_weights_stored_in_another_float_dtype_load(saved_model, tmp_path, capsys):
    folder = edited_copy(saved_model, tmp_path, every_weight_as(torch.float16))
    vistr_cli.main(["inspect", str(folder), "--height", "32", "--width", "32"])
    assert "pred_masks" in capsys.readouterr().out


def nan_where_uninitialised(tensor: torch.Tensor) -> torch.Tensor:
    """What uninitialised memory may hold, made visible: NaN in every floating-point element."""
    return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor


@pytest.mark.parametrize("built", ["on the meta device", "from state_dict={}"])
def test_a_model_initialised_from_nothing_is_finite(built, monkeypatch):
    """Every parameter and buffer is initialised (the frozen norms' and the deformable convolution's too), so a model
    built on the meta device, or loaded without any weight, holds no uninitialised memory."""
    config = small_config()
    if built == "on the meta device":
        with torch.device("meta"):
            model = VisTRForVideoInstanceSegmentation(config)
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                nan_where_uninitialised(tensor)
        model.init_weights()
    else:
        empty_like = torch.empty_like
        with monkeypatch.context() as patch:  # how from_pretrained allocates what the state dict lacks
            patch.setattr(torch, "empty_like", lambda *args, **kw: nan_where_uninitialised(empty_like(*args, **kw)))
            model = VisTRForVideoInstanceSegmentation.from_pretrained(None, config=config, state_dict={})
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert [name for name, tensor in tensors if tensor.is_floating_point() and not tensor.isfinite().all()] == []
    frozen_norm = model.vistr.backbone.model.bn1
    assert frozen_norm.running_var.eq(1).all() and frozen_norm.weight.eq(1).all() and not frozen_norm.bias.any()
    with torch.no_grad():
        outputs = model.eval()(torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert outputs.logits.isfinite().all() and outputs.pred_masks.isfinite().all()


@pytest.mark.parametrize("fields, piece", [
    ({"num_frames": 10**7}, "num_frames=10000000 is over the limit of 1024"),
    ({"num_queries_per_frame": 5000}, "num_queries_per_frame=5000 is over the limit of 1024"),
    ({"encoder_layers": 1000}, "encoder_layers=1000 is over the limit of 64"),
    ({"id2label": {index: "x" for index in range(200_000)}}, "num_labels=200000 is over the limit of 100000"),
    ({"d_model": 4032, "ffn_dim": 65536}, "make about 7.7e+09 weights, over the limit of 1e+09"),
    ({"d_model": 384.0}, "d_model=384.0 must be an integer"),
    ({"pre_norm": "no"}, "pre_norm='no' must be true or false"),
    ({"dropout": float("nan")}, "dropout=nan must be a finite number"),
    ({"id2label": {"0": "N/A", "2": "shape"}}, "id2label keys ['0', '2'] must be the class indices 0 to 1"),
    ({"id2label": {0: "N/A", 1: 7}}, "id2label names ['N/A', 7] must be strings"),
    ({"dtype": "int8"}, "dtype='int8' must be one of the floating-point dtypes"),
])  # fmt: skip
def test_config_values_of_the_wrong_type_or_past_any_vistr_model_are_refused_before_allocation(fields, piece):
    """Checked when the config is built, before a model (the converter's, from_pretrained's) allocates a weight."""
    with pytest.raises(ValueError) as error:
        VisTRConfig(**fields)
    assert piece in config_problems(error.value)


# Original checkpoints for `vistr convert` (and `--init-from`): made small here, each refused before any work.
def resnet18_keys() -> dict[str, torch.Tensor]:
    """The backbone key names of a ResNet-18 (what `infer_config` counts), each with one value."""
    return {f"vistr.backbone.0.body.layer{stage}.{block}.conv1.weight": torch.zeros(1)
            for stage in range(1, 5) for block in range(2)}  # fmt: skip


def sized_state(**overrides) -> dict[str, torch.Tensor]:
    """The tensors `infer_config` reads its sizes from (d_model 96, 8 heads, 4 queries, 2 classes), tiny otherwise."""
    state = resnet18_keys() | {
        "vistr.input_proj.weight": torch.zeros(96, 1), "mask_head.lay1.weight": torch.zeros(1, 104),
        "vistr.query_embed.weight": torch.zeros(4, 1), "vistr.class_embed.weight": torch.zeros(3, 1),
        "vistr.transformer.encoder.layers.0.linear1.weight": torch.zeros(64, 1),
        "insmask_head.0.weight": torch.zeros(12, 1), "mask_head.dcn.weight": torch.zeros(1),
    }  # fmt: skip
    return {name: tensor for name, tensor in (state | overrides).items() if tensor is not None}


def many_layers() -> dict[str, torch.Tensor]:
    return {f"vistr.transformer.encoder.layers.{i}.norm1.weight": torch.zeros(1) for i in range(100)}


CHECKPOINT_CASES = [  # (what torch.save writes, piece of the message)
    ({"model": {"vistr.query_embed.weight": torch.zeros(1, 384).expand(3_000_000, 384)}},
     "its tensors stand for 4.3 GiB of values, over the limit of 4 GiB (vistr.query_embed.weight alone is "
     "[3000000, 384], stored in 1536 bytes)"),
    ({"model": sized_state(**{"vistr.class_embed.weight": torch.zeros(3, 1, dtype=torch.int8)})},
     "1 tensors are not floating point (vistr.class_embed.weight (int8))"),
    ({"model": sized_state(**{"vistr.extra": torch.zeros(1).bool()})}, "(vistr.extra (bool))"),
    ({"model": sized_state(**{"vistr.extra": 5})}, "1 entries of its state dict are no tensors (vistr.extra (int))"),
    ({"model": sized_state(**{"vistr.input_proj.weight": None}), "args": argparse.Namespace(num_frames=2)},
     "vistr.input_proj.weight is missing or has fewer than 1 dimensions"),
    ({"model": sized_state(**{"mask_head.lay1.weight": torch.zeros(3)}), "args": argparse.Namespace(num_frames=2)},
     "mask_head.lay1.weight is missing or has fewer than 2 dimensions"),
    ({"model": sized_state(**many_layers()), "args": argparse.Namespace(num_frames=2)},
     "its tensors describe a model VisTR cannot build: encoder_layers=100 is over the limit of 64"),
    ({"model": sized_state(), "args": argparse.Namespace(num_frames="2")},
     "its stored training args hold values of the wrong type (num_frames='2')"),
]  # fmt: skip


@pytest.mark.parametrize("checkpoint, piece", CHECKPOINT_CASES, ids=[piece[:30] for _, piece in CHECKPOINT_CASES])
def test_convert_refuses_a_checkpoint_in_one_line_before_any_work(tmp_path, capsys, checkpoint, piece):
    torch.save(checkpoint, tmp_path / "bad.pth")
    exit_code, message = failed_command(capsys, vistr_cli.main, "convert", "--checkpoint", str(tmp_path / "bad.pth"),
                                        "--output", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(message, f"error: {tmp_path / 'bad.pth'}")
    assert piece in message and exit_code == 1 and not (tmp_path / "out").exists()


def test_convert_refuses_a_checkpoint_that_unpacks_past_the_limit(tmp_path, capsys, monkeypatch):
    """torch.load reads deflated records too: a small file could unpack to any size. (The limit is lowered here so
    that the test needs no gigabytes.)"""
    torch.save({"model": {"vistr.query_embed.weight": torch.zeros(1000, 1000)}}, tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as plain, \
            zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as deflated:  # fmt: skip
        for record in plain.infolist():
            deflated.writestr(record.filename, plain.read(record))
    assert (tmp_path / "deflated.pth").stat().st_size < 100_000
    monkeypatch.setattr(convert_checkpoint, "MAX_CHECKPOINT_BYTES", 2**21)
    exit_code, message = failed_command(capsys, vistr_cli.main, "convert", "--checkpoint",
                                        str(tmp_path / "deflated.pth"), "--output", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(message, f"{tmp_path / 'deflated.pth'} unpacks to ")
    assert "GiB, over the limit of" in message and exit_code == 1 and not (tmp_path / "out").exists()
