"""Writing annotated frames as a video with PyAV: the container from the file's extension, H.264 where the FFmpeg
build has it (MPEG-4 part 2 otherwise; VP9 for .webm), the frame size of the source. Every frame is encoded as it
comes and ``close`` flushes the encoder and finishes the container, so a run that stops early (a corrupt input,
an interrupt) still leaves a playable video of the frames written so far."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Optional

import numpy as np

from pydarknet.errors import VideoError
from pydarknet.video.source import _av, _reason

__all__ = ["VideoWriter"]


def _codec_for(path, av):
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".webm":
        return "libvpx-vp9"
    if ext == ".avi":
        return "mpeg4"
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class VideoWriter:
    """Frames (HxWx3 uint8 RGB, all ``width x height``) into ``path`` at ``fps`` frames per second.

    ``timestamps=True`` (live sources, where frames are dropped) places each frame at the time given to
    :meth:`write` (millisecond resolution), so the video plays at the pace it was captured; otherwise frames follow
    each other at ``fps``."""

    def __init__(self, path, width: int, height: int, fps: float, *, timestamps: bool = False):
        av = _av()
        self.path = str(path)
        self.width, self.height = int(width), int(height)
        self.frames = 0
        self._timestamps = timestamps
        self._last_pts = -1
        rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(25)
        codec = _codec_for(path, av)
        try:
            self._container = av.open(self.path, "w")
            self._stream = self._container.add_stream(codec, rate=rate)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"cannot create the video ({_reason(e)})", self.path) from None
        self._stream.width, self._stream.height = self.width, self.height
        # 4:2:0 needs even sizes; an odd-sized source keeps its size in 4:4:4.
        even = self.width % 2 == 0 and self.height % 2 == 0
        self._stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"
        if not even and codec != "libx264":
            raise VideoError(f"{codec} cannot encode an odd frame size ({self.width}x{self.height})", self.path)
        if timestamps:
            self._stream.time_base = Fraction(1, 1000)
        self._av = av

    def write(self, image, timestamp: Optional[float] = None):
        image = np.asarray(image, np.uint8)
        if image.shape[:2] != (self.height, self.width):
            raise VideoError(
                f"frame {self.frames} is {image.shape[1]}x{image.shape[0]}, the video {self.width}x{self.height}",
                self.path,
            )
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:, :, :3]), format="rgb24")
        if self._timestamps and timestamp is not None:
            pts = max(int(round(timestamp * 1000)), self._last_pts + 1)
            frame.pts = pts
            frame.time_base = Fraction(1, 1000)
            self._last_pts = pts
        else:
            frame.pts = self.frames
            frame.time_base = self._stream.codec_context.time_base or Fraction(1, 25)
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (self._av.error.FFmpegError, OSError) as e:
            raise VideoError(f"cannot write frame {self.frames} ({_reason(e)})", self.path) from None
        self.frames += 1

    def close(self):
        """Flush the encoder and finish the file (safe to call twice)."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        except (self._av.error.FFmpegError, OSError) as e:
            raise VideoError(f"cannot finish the video ({_reason(e)})", self.path) from None
        finally:
            container, self._container = self._container, None
            container.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
