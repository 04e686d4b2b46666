"""Bad or unusual inputs at the reading boundaries: results and annotation files for the evaluator, and
videos, frames and images for `video_io`. Each is made inside its test (PIL, numpy, PyAV, pycocotools).

To add a case: write a function that builds the bad input, add it to the table of its section (or a test
beside them) with the message, or the value, the reader must give. Expected values come from independent
references (pycocotools itself, numpy), never from the module under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from vistr.tools.evaluation_youtube_vis import ResultsError, decode_compressed_counts, evaluate
from vistr.tools.youtube_vis import AnnotationError
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
