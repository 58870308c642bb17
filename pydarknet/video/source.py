"""Video sources decoded with PyAV (FFmpeg): files, network streams and cameras, frame by frame.

* a **file** (mp4, avi, mkv, ...) is read in order, every frame; a decode error or a file that ends before the
  length its header announces raises :class:`~pydarknet.errors.VideoError` naming the file and the frame;
* a **stream** (``rtsp://``, ``http://``, ...) or a **camera** (``0``: ``/dev/video0`` on Linux) is *live*: a
  reader thread decodes continuously into a :class:`LatestFrameQueue`, so whoever consumes the frames always gets
  the newest one and stale frames are dropped (and counted) instead of piling up: latency stays bounded however
  slow detection is. Opening or reading that stalls for ``timeout`` seconds raises VideoError, never hangs.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import numpy as np

from pydarknet.errors import VideoError

__all__ = [
    "VIDEO_EXTENSIONS",
    "STREAM_SCHEMES",
    "Frame",
    "LatestFrameQueue",
    "VideoSource",
    "is_video_file",
    "is_stream",
    "is_camera",
    "open_source",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - the extra is missing
        raise VideoError("video needs PyAV (FFmpeg): pip install 'pydarknet[video]'") from None
    return av


def is_video_file(name) -> bool:
    return str(name).lower().endswith(VIDEO_EXTENSIONS)


def is_stream(name) -> bool:
    return str(name).lower().startswith(STREAM_SCHEMES)


def is_camera(name) -> bool:
    return isinstance(name, int) or bool(re.fullmatch(r"\d{1,3}", str(name)))


@dataclass
class Frame:
    """One decoded frame: its index in the source (0-based, counting every decoded frame), its time in seconds,
    and its pixels (HxWx3 uint8 RGB)."""

    index: int
    timestamp: float
    image: np.ndarray


class LatestFrameQueue:
    """A bounded queue that keeps the newest ``size`` items: ``put`` on a full queue drops the oldest item and
    counts it in ``dropped``. ``get`` waits for an item (or ``close``), so a consumer slower than the producer
    always works on recent frames and memory stays bounded."""

    def __init__(self, size: int = 1):
        if size < 1:
            raise ValueError(f"queue size must be at least 1; got {size}")
        self.size = size
        self._items = []
        self._cond = threading.Condition()
        self._closed = False
        self._error = None
        self.dropped = 0

    def put(self, item):
        with self._cond:
            if len(self._items) >= self.size:
                self._items.pop(0)
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def close(self, error: Optional[BaseException] = None):
        """No more items; ``get`` returns None once the queue is empty, or raises ``error`` when given."""
        with self._cond:
            self._closed = True
            self._error = error
            self._cond.notify_all()

    def get(self, timeout: Optional[float] = None):
        """The oldest kept item; None when closed and empty. Raises the producer's error, or TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no frame arrived in time")
                self._cond.wait(left)
            if self._items:
                return self._items.pop(0)
            if self._error is not None:
                raise self._error
            return None


def _camera_url(index: int):
    if sys.platform.startswith("linux"):
        return f"/dev/video{index}", "v4l2"
    if sys.platform == "darwin":
        return str(index), "avfoundation"
    raise VideoError(f"camera {index}: camera indices are supported on Linux and macOS; pass the device's name", index)


class VideoSource:
    """An opened video file, stream or camera; iterate it for :class:`Frame` objects (see the module doc).

    ``timeout``: seconds that opening, or waiting for the next frame of a live source, may take.
    ``live``: None decides from the source (streams and cameras are live); True/False force it (a file read
    live is paced at its frame rate, as a camera would deliver it). ``queue_size``: frames a live source keeps
    (1: only the newest). ``stride``: keep every stride-th decoded frame (indices stay those of all frames).
    ``dropped``: frames a live source skipped because the consumer was busy."""

    def __init__(
        self,
        source: Union[str, int, os.PathLike],
        *,
        timeout: float = 10.0,
        live: Optional[bool] = None,
        queue_size: int = 1,
        stride: int = 1,
    ):
        av = _av()
        if int(stride) < 1:
            raise ValueError(f"stride must be at least 1; got {stride}")
        self.stride = int(stride)
        self.name = str(source)
        self.timeout = float(timeout)
        self.is_camera = is_camera(source) and not os.path.exists(str(source))
        self.is_stream = is_stream(self.name)
        self.live = (self.is_camera or self.is_stream) if live is None else bool(live)
        self.queue_size = int(queue_size)
        self.dropped = 0
        self.decoded = 0
        self._queue = None
        self._thread = None
        self._stop = threading.Event()
        url, fmt, options = self.name, None, {}
        if self.is_camera:
            url, fmt = _camera_url(int(source))
            self.name = f"camera {int(source)}"
            if fmt == "v4l2" and not os.path.exists(url):
                raise VideoError(f"{url} does not exist (no camera with this index)", self.name)
        elif not self.is_stream:
            if not os.path.exists(url):
                raise VideoError("no such file", self.name)
            if os.path.isdir(url):
                raise VideoError("is a folder, not a video", self.name)
        if self.name.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"  # UDP through NAT and firewalls often delivers nothing
        try:
            self._container = av.open(url, format=fmt, options=options, timeout=(self.timeout, self.timeout))
        except av.error.ExitError:
            raise VideoError(f"no answer within {self.timeout:g} s (timed out)", self.name) from None
        except (av.error.FFmpegError, OSError) as e:
            raise VideoError(f"cannot open ({_reason(e)})", self.name) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError("holds no video stream", self.name)
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.width = self._stream.codec_context.width
        self.height = self._stream.codec_context.height
        self.expected_frames = self._expected_frames()

    # ----- properties of the source --------------------------------------------------------------------------
    def _expected_frames(self):
        """Frames the header announces (0 when it does not say), for the progress bar and truncation checks."""
        if self.live:
            return 0
        if self._stream.frames:
            return int(self._stream.frames)
        duration = self._duration()
        return int(round(duration * self.fps)) if duration and self.fps else 0

    def _duration(self):
        s = self._stream
        if s.duration is not None and s.time_base is not None:
            return float(s.duration * s.time_base)
        if self._container.duration is not None:
            return self._container.duration / 1e6
        return None

    # ----- reading -------------------------------------------------------------------------------------------
    def _decode(self) -> Iterator[Frame]:
        av = _av()
        index = 0
        last_time = None
        start = None
        try:
            packets = self._container.demux(self._stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                for frame in packet.decode():
                    t = frame.time
                    if t is None:
                        t = index / self.fps if self.fps else 0.0
                    if start is None:
                        start = t
                    last_time = t - start
                    if index % self.stride == 0:
                        yield Frame(index, last_time, frame.to_ndarray(format="rgb24"))
                    index += 1
                    self.decoded = index
                if self._stop.is_set():
                    return
        except av.error.ExitError:
            raise VideoError(f"no data for {self.timeout:g} s (timed out)", self.name, index) from None
        except (av.error.FFmpegError, OSError) as e:
            raise VideoError(
                f"cannot decode ({_reason(e)}); the video is corrupt or truncated", self.name, index
            ) from None
        if not self.live:
            self._check_complete(index, last_time)

    def _check_complete(self, count, last_time):
        """A file that ends well before the length its header announces is truncated."""
        duration = self._duration()
        frame_time = 1.0 / self.fps if self.fps else 0.04
        if count == 0:
            raise VideoError("no frame could be decoded; the video is empty or corrupt", self.name, 0)
        ended = (last_time or 0.0) + frame_time
        short_by_time = duration is not None and duration - ended > max(3 * frame_time, 0.02 * duration)
        short_by_count = self._stream.frames and count < self._stream.frames - max(3, 0.02 * self._stream.frames)
        if short_by_time or short_by_count:
            announced = f"{self._stream.frames} frames" if self._stream.frames else f"{duration:.2f} s"
            raise VideoError(
                f"the video ends early: the header announces {announced}, decoding stopped after {count} frames "
                f"({ended:.2f} s); the file is truncated",
                self.name,
                count,
            )

    def _read_live(self):
        """The reader thread: decode into the latest-frame queue (paced at the frame rate for a file read live)."""
        t0 = time.monotonic()
        try:
            for frame in self._decode():
                if self._stop.is_set():
                    break
                if not (self.is_stream or self.is_camera) and self.fps:
                    delay = t0 + frame.index / self.fps - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self._queue.put(frame)
            self._queue.close()
        except BaseException as e:  # handed to the consumer, raised there
            self._queue.close(e)

    def __iter__(self) -> Iterator[Frame]:
        if not self.live:
            yield from self._decode()
            return
        self._queue = LatestFrameQueue(self.queue_size)
        self._thread = threading.Thread(target=self._read_live, name=f"pydarknet-video-{self.name}", daemon=True)
        self._thread.start()
        try:
            while True:
                try:
                    # The reader itself times out on a stalled source; this bound is the last resort.
                    frame = self._queue.get(timeout=self.timeout + 5.0)
                except TimeoutError:
                    raise VideoError(
                        f"no frame for {self.timeout + 5.0:g} s (timed out)", self.name, self.decoded
                    ) from None
                finally:
                    self.dropped = self._queue.dropped
                if frame is None:
                    return
                yield frame
        finally:
            self._stop.set()

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1.0)
            if self._thread.is_alive():
                return  # still inside FFmpeg; closing under it would crash, and its timeout ends it soon
        try:
            self._container.close()
        except Exception:  # closing a broken stream must not hide the error that broke it
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        kind = "camera" if self.is_camera else "stream" if self.is_stream else "file"
        return f"<VideoSource {kind} {self.name} {self.width}x{self.height} {self.fps:g} fps>"


def _reason(e):
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.strip()


def open_source(source, **options) -> VideoSource:
    """:class:`VideoSource` of a file path, stream URL or camera index."""
    return VideoSource(source, **options)
