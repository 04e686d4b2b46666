"""Reading videos, frame folders and frame arrays one frame at a time (the processor's input side).

Frames are streamed so that a long video never sits in memory at full resolution; every read error
names the file and what to do about it. Frames come upright (EXIF orientation, the video's display
matrix) and in 8 bits. Writing videos is a tool's job: `vistr.tools.video_writer`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence

from .optional_dependencies import require

FRAME_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
CHANNEL_COUNTS = (1, 3, 4)  # grayscale, RGB, RGBA
VIDEO_EXTENSIONS = {
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".m2ts", ".mts",
    ".3gp", ".ogv",
}
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}  # how Pillow opens 16-bit grayscale PNG and TIFF
# Quarter turns that bring a decoded video frame upright, by the display matrix's counter-clockwise angle.
_UPRIGHT = {0: None, 90: Image.Transpose.ROTATE_90, -90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180,
            -180: Image.Transpose.ROTATE_180}


class VideoReadError(ValueError):
    """A video or frame folder that cannot be read; the message names the file and the fix."""


# What a path is when it is not a regular file, by `stat.S_IFMT` of its mode.
_FILE_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def check_regular_file(path: str | os.PathLike) -> None:
    """Refuse anything but a regular file (symlinks followed) before it is opened: reading a named pipe
    waits forever for a writer, a device can be endless or act on being opened, a socket cannot be read.
    Every frame or video read from a path passes here first."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VideoReadError(f"{path} does not exist (or is a broken link). Check the path.") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL character in the name
        reason = getattr(error, "strerror", None) or error
        raise VideoReadError(f"{path}: cannot be read ({reason}). Check the path and its permissions.") from None
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
        raise VideoReadError(
            f"{path} is {kind}, not a regular file; only regular files are read as frames or videos. "
            "Remove it or replace it with the image or video file."
        )


def _natural_key(path: Path) -> list:
    """Sort `frame2.jpg` before `frame10.jpg`, as people number frames."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frame files of a folder in natural order, each checked to be a regular file now, so that a pipe or
    a folder among them is named before any frame is decoded rather than after most of a long video."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS), key=_natural_key)
    for path in files:
        check_regular_file(path)
    if not files:
        raise VideoReadError(
            f"{folder}: no frames found (expected image files with one of {sorted(FRAME_EXTENSIONS)}). "
            "Point to a folder of frames or to a video file."
        )
    return files


def _open_image(path: Path) -> Image.Image:
    """One frame file, as displayed (see `_as_displayed`). An animated image cannot be one frame: reading
    only its first picture would silently drop the rest."""
    check_regular_file(path)
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise VideoReadError(
                    f"{path}: an animated image ({frames} frames) cannot be one frame of a video. "
                    "Give it alone as the video, or extract its frames."
                )
            image.load()
            return _as_displayed(image, path)
    except VideoReadError:
        raise
    except Exception as error:
        raise VideoReadError(f"{path}: unreadable frame ({error}). Replace or remove the file.") from error


def _iter_image_file(path: Path) -> Iterator[Image.Image]:
    """An image file given as the video: each of its frames (an animated PNG, GIF, WebP or a multi-page
    TIFF is a video; a still image is a one-frame video)."""
    try:
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                frame.load()
                yield _as_displayed(frame.copy(), path)
    except VideoReadError:
        raise
    except Exception as error:
        raise VideoReadError(f"{path}: unreadable image ({error}). Replace the file.") from error


def _as_displayed(image: Image.Image, path: Path) -> Image.Image:
    """The picture a viewer shows: EXIF orientation applied (phones store pictures sideways and rely on
    it) and 16-bit grayscale scaled to 8 bits (a plain convert to RGB clips it to 0 and 255). 32-bit
    integer and float pixels have no agreed range, so they are refused rather than guessed."""
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray(np.rint(np.asarray(image, dtype=np.float64) / 257.0).astype(np.uint8))
    if image.mode in ("I", "F"):
        raise VideoReadError(
            f"{path}: {image.mode} pixels (32-bit {'integer' if image.mode == 'I' else 'float'}) have no standard "
            "range. Save the frames as 8- or 16-bit images."
        )
    return image


def _upright_video_frame(frame, path: Path) -> Image.Image:
    """A decoded frame turned as its display matrix says (phone videos are stored sideways with a
    rotation for the player); rotations other than quarter turns are refused."""
    rotation = frame.rotation
    if rotation not in _UPRIGHT:
        raise VideoReadError(
            f"{path}: the video's display matrix rotates it by {rotation} degrees, and only multiples of 90 are "
            "supported. Re-encode it upright (e.g. ffmpeg -i in.mp4 out.mp4)."
        )
    image = frame.to_image()
    return image if _UPRIGHT[rotation] is None else image.transpose(_UPRIGHT[rotation])


def _iter_video_file(path: Path) -> Iterator[Image.Image]:
    av = require("av", "reading video files")
    try:
        container = av.open(str(path))
    except Exception as error:
        raise VideoReadError(f"{path}: cannot open video ({error}). Check the file or re-encode it (e.g. to H.264 MP4).") from error
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{path}: the video has no frames (no video stream found).")
        stream = container.streams.video[0]
        count = 0
        try:
            for frame in container.decode(stream):
                count += 1
                yield _upright_video_frame(frame, path)
        except av.FFmpegError as error:
            raise VideoReadError(f"{path}: decoding failed after {count} frames ({error}). The video is corrupt; re-encode it.") from error
        if count == 0:
            raise VideoReadError(f"{path}: the video has no frames.")


def _iter_frame_folder(files: list[Path]) -> Iterator[Image.Image]:
    for path in files:
        yield _open_image(path)


def _channels_last(array: np.ndarray, channels_first: bool | None) -> np.ndarray:
    """A frame [C, H, W] or video [T, C, H, W] -> channels last. `channels_first` None: inferred as transformers
    does, channels first when that axis has 1, 3 or 4 entries and the last axis has not."""
    if channels_first is None:
        channels_first = array.shape[-3] in CHANNEL_COUNTS and array.shape[-1] not in CHANNEL_COUNTS
    return np.moveaxis(array, -3, -1) if channels_first else array


def _iter_array(video, channels_first: bool | None = None) -> Iterator[Image.Image]:
    array = np.asarray(video.cpu() if hasattr(video, "cpu") else video)
    if array.ndim == 3:  # [T, H, W] grayscale
        array = array[..., None]
    elif array.ndim == 4:
        array = _channels_last(array, channels_first)
    if array.ndim != 4 or array.shape[-1] not in CHANNEL_COUNTS:
        raise VideoReadError(
            f"a video array must be [T, H, W, C] or [T, C, H, W] with C in 1, 3 or 4, got shape {list(array.shape)}"
        )
    if len(array) == 0:
        raise VideoReadError("the video array has no frames")
    for frame in array:
        yield frame_to_image(frame, channels_first=False)


def frame_to_image(frame, channels_first: bool | None = None) -> Image.Image:
    """A PIL image or an [H, W], [H, W, C] or [C, H, W] uint8 (or 0..1 float) array -> PIL image."""
    if isinstance(frame, Image.Image):
        return frame
    array = np.asarray(frame.cpu() if hasattr(frame, "cpu") else frame)
    if array.ndim == 3:
        array = _channels_last(array, channels_first)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise VideoReadError(f"a frame must be [H, W], [H, W, 3|4] or [3|4, H, W], got shape {list(array.shape)}")
    return Image.fromarray(array)


def is_video_path(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in VIDEO_EXTENSIONS


def iter_frames(source, channels_first: bool | None = None) -> Iterator[Image.Image]:
    """Yield the frames of `source` as PIL images (mode as stored), one at a time.

    `source`: a video file, a folder of frames, a list of frame files (in that order), a list of PIL images /
    arrays, or a [T, H, W, C] or [T, C, H, W] array or tensor (`channels_first`: which, None to infer it).
    Files are read as displayed: EXIF orientation and a video's display rotation applied, 16-bit grayscale
    scaled to 8 bits. A single image file is a video of its frames (an animated PNG or GIF has several);
    an animated image among the frames of a folder or list is refused.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _iter_frame_folder(list_frame_files(path))
        if not path.exists():
            raise VideoReadError(f"{path}: no such video file or frame folder.")
        check_regular_file(path)
        if path.suffix.lower() in FRAME_EXTENSIONS:
            return _iter_image_file(path)
        return _iter_video_file(path)
    if isinstance(source, (list, tuple)):
        if not source:
            raise VideoReadError("the video is an empty list of frames")
        if all(isinstance(frame, (str, os.PathLike)) for frame in source):
            return _iter_frame_folder([Path(frame) for frame in source])
        return (frame_to_image(frame, channels_first) for frame in source)
    return _iter_array(source, channels_first)


def describe(source) -> str:
    """A short name for messages and results."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__} video>"


def video_fps(source, default: float = 10.0) -> float:
    """Frame rate of a video or animated image file (for the overlay), or `default` for frames without
    timing. Any file that is not a frame image is probed, whatever its extension."""
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_file():
        return default
    path = Path(source)
    if path.suffix.lower() in FRAME_EXTENSIONS:
        return _animated_image_fps(path) or default
    av = require("av", "reading video files")
    try:
        with av.open(str(path)) as container:
            return _stream_fps(container.streams.video[0]) or default
    except Exception:
        return default


def _stream_fps(stream) -> float | None:
    """The first rate the container knows: the measured average, FFmpeg's guess, the base rate, and last
    the frame count over the duration (time-base units)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return float(rate)
    if stream.frames and stream.duration and stream.time_base:
        return stream.frames / float(stream.duration * stream.time_base)
    return None


def _animated_image_fps(path: Path) -> float | None:
    """Frames per second of an animated image (Pillow's `duration`, milliseconds per frame), None for a still."""
    try:
        with Image.open(path) as image:
            duration = image.info.get("duration") if getattr(image, "n_frames", 1) > 1 else None
    except Exception:
        return None
    return 1000.0 / duration if isinstance(duration, (int, float)) and duration > 0 else None
