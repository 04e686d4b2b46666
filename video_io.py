"""Reading videos and frame folders one frame at a time, and writing videos atomically.

Frames are streamed so that a long video never sits in memory at full resolution; every read
error names the file and what to do about it, and every write goes to a temporary file that is
renamed into place only when complete.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

FRAME_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
CHANNEL_COUNTS = (1, 3, 4)  # grayscale, RGB, RGBA
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}


class VideoReadError(ValueError):
    """A video or frame folder that cannot be read; the message names the file and the fix."""


def _natural_key(path: Path) -> list:
    """Sort `frame2.jpg` before `frame10.jpg`, as people number frames."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS), key=_natural_key)
    if not files:
        raise VideoReadError(
            f"{folder}: no frames found (expected image files with one of {sorted(FRAME_EXTENSIONS)}). "
            "Point to a folder of frames or to a video file."
        )
    return files


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except Exception as error:
        raise VideoReadError(f"{path}: unreadable frame ({error}). Replace or remove the file.") from error


def _iter_video_file(path: Path) -> Iterator[Image.Image]:
    import av

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
                yield frame.to_image()
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
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _iter_frame_folder(list_frame_files(path))
        if not path.is_file():
            raise VideoReadError(f"{path}: no such video file or frame folder.")
        if path.suffix.lower() in FRAME_EXTENSIONS:
            return _iter_frame_folder([path])
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
    """Frame rate of a video file (for the overlay), or `default` for frames without timing."""
    if not is_video_path(source):
        return default
    import av

    try:
        with av.open(str(source)) as container:
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else default
    except Exception:
        return default


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_video(frames: Iterable[Image.Image], path: str | os.PathLike, fps: float) -> int:
    """Write RGB frames to `path` (.gif through Pillow, other containers through PyAV); atomic. Returns the frame count."""
    path = Path(path)
    with atomic_path(path) as temporary:
        if path.suffix.lower() == ".gif":
            count = _write_gif(frames, temporary, fps)
        else:
            count = _write_with_pyav(frames, temporary, fps)
    return count


def _write_gif(frames: Iterable[Image.Image], path: Path, fps: float) -> int:
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to write")
    duration = max(20, int(round(1000 / fps)))
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return len(frames)


def _write_with_pyav(frames: Iterable[Image.Image], path: Path, fps: float) -> int:
    from fractions import Fraction

    import av

    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for image in frames:
            if stream is None:
                codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height = image.width - image.width % 2, image.height - image.height % 2
                stream.pix_fmt = "yuv420p"
            if image.size != (stream.width, stream.height):
                image = image.crop((0, 0, stream.width, stream.height))
            for packet in stream.encode(av.VideoFrame.from_image(image.convert("RGB"))):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError("no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return count
