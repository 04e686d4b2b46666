"""Writing frames as a video (.gif, .mp4, .mkv, .mov, .avi) through PyAV, for overlays and the sample video.

Every frame given is a frame written: GIFs go through FFmpeg's encoder rather than Pillow's, which merges
identical consecutive frames (a 14-frame overlay of a still scene would come out as one frame).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

from PIL import Image
from vistr.tools.outputs import OVERLAY_SUFFIXES, atomic_path


class VideoWriteError(ValueError):
    """Frames that cannot be written in the format asked for; the message says what to use instead."""


def write_video(frames: Iterable[Image.Image], path: str | os.PathLike, fps: float) -> int:
    """Write RGB frames to `path`, atomically (nothing at `path` changes unless all are written). Returns the count."""
    with atomic_path(path, what="video") as temporary:
        return encode_video(frames, temporary, fps, Path(path).suffix)


def encode_video(frames: Iterable[Image.Image], path: str | os.PathLike, fps: float, suffix: str) -> int:
    """Write RGB frames to `path` (not atomic: give it a staged temporary file) in the format of `suffix`."""
    import av

    suffix = suffix.lower()
    if suffix not in OVERLAY_SUFFIXES:
        raise VideoWriteError(f"{path}: unknown video format {suffix!r}; use one of {', '.join(OVERLAY_SUFFIXES)}")
    count = 0
    with av.open(str(path), mode="w", format="gif" if suffix == ".gif" else None) as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = _add_stream(container, image.size, fps, suffix)
            if image.size != (stream.width, stream.height):
                image = image.crop((0, 0, stream.width, stream.height))
            for packet in stream.encode(av.VideoFrame.from_image(image.convert("RGB"))):
                container.mux(packet)
            count += 1
        if stream is None:
            raise VideoWriteError(f"{path}: no frames to write; the input holds none")
        for packet in stream.encode():
            container.mux(packet)
    return count


def _add_stream(container, size: tuple[int, int], fps: float, suffix: str):
    """A GIF stream (any size) or an H.264/MPEG-4 one, whose 4:2:0 colour needs even sides of at least 2."""
    import av

    width, height = size
    rate = Fraction(fps).limit_denominator(1000)
    if suffix == ".gif":
        stream = container.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb8"
        return stream
    if width < 2 or height < 2:
        raise VideoWriteError(f"frames of {width}x{height} pixels are too small for a {suffix} video (at least "
                              "2x2); write the overlay as .gif instead")  # fmt: skip
    stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
    return stream


__all__ = ["VideoWriteError", "encode_video", "write_video"]
