"""Detection on every frame of a video, stream or camera: ``net.detect_stream(source)``.

Each frame goes through the same :class:`~pydarknet.inference.detect.Detector` as an image (``net.detect``), so
a frame gives exactly the detections the same picture would give as a file. The Results of a frame carries
``frame`` (its index among all decoded frames) and ``timestamp`` (seconds from the start of the source).
"""

from __future__ import annotations

import time
from typing import Iterator, Optional

from pydarknet.inference.detect import Detector
from pydarknet.inference.results import Results
from pydarknet.video.source import VideoSource

__all__ = ["VideoDetections", "detect_stream", "frame_record"]


class VideoDetections:
    """Iterate for one :class:`Results` per processed frame; ``source`` is the opened :class:`VideoSource`
    (``fps``, ``width``, ``height``, ``expected_frames``, ``dropped``). Closing (or leaving a ``with`` block, or
    finishing the iteration) releases the source."""

    def __init__(self, detector: Detector, source: VideoSource):
        self.detector = detector
        self.source = source

    def __iter__(self) -> Iterator[Results]:
        det = self.detector
        try:
            for frame in self.source:
                t0 = time.perf_counter()
                prepared = det.prepare(frame.image)
                prepared.preprocess_ms = (time.perf_counter() - t0) * 1e3
                res = det.infer([prepared])[0]
                res.frame = frame.index
                res.timestamp = frame.timestamp
                res.path = self.source.name
                yield res
        finally:
            self.source.close()

    @property
    def dropped(self) -> int:
        """Frames a live source skipped so that detection always ran on the newest frame."""
        return self.source.dropped

    def close(self):
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def detect_stream(
    net,
    source,
    *,
    vid_stride: int = 1,
    live: Optional[bool] = None,
    queue_size: int = 1,
    timeout: float = 10.0,
    thresh: float = 0.25,
    nms: float = 0.45,
    letterbox=None,
    names=None,
    nms_kind=None,
    tta=False,
) -> VideoDetections:
    """Detect objects in every ``vid_stride``-th frame of a video file, a stream URL (``rtsp://``, ``http://``,
    ...) or a camera index (``0``); iterate the result for one Results per frame (``res.frame``,
    ``res.timestamp``).

    Live sources (streams, cameras; ``live=True`` forces it for a file, read at its frame rate) are decoded by a
    reader thread into a queue of ``queue_size`` frames that drops stale frames, so detection always runs on the
    newest frame (``.dropped`` counts the rest). ``timeout``: seconds that opening or a stalled read may take
    before a VideoError. Detection options as ``net.detect``."""
    det = Detector(net, thresh=thresh, nms=nms, letterbox=letterbox, names=names, nms_kind=nms_kind, batch=1, tta=tta)
    src = VideoSource(source, timeout=timeout, live=live, queue_size=queue_size, stride=vid_stride)
    return VideoDetections(det, src)


def frame_record(res: Results, source: Optional[str] = None) -> dict:
    """One frame as a JSON-ready dict in the spirit of Darknet's ``-out``/``-json_port`` output: ``source``,
    ``frame``, ``timestamp`` and ``objects`` (``class_id``, ``name``, ``relative_coordinates`` centre/size in
    [0, 1], ``confidence``)."""
    objects = []
    for i in range(len(res)):
        x, y, w, h = (round(float(v), 6) for v in res.xywhn[i])
        c = int(res.class_id[i])
        objects.append(
            {
                "class_id": c,
                "name": res.names[c],
                "relative_coordinates": {"center_x": x, "center_y": y, "width": w, "height": h},
                "confidence": round(float(res.conf[i]), 6),
            }
        )
    return {
        "source": source if source is not None else res.path,
        "frame": res.frame,
        "timestamp": None if res.timestamp is None else round(float(res.timestamp), 6),
        "objects": objects,
    }
