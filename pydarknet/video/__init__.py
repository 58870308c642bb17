"""Video files, network streams and cameras through a detector (PyAV, the ``video`` extra).

for res in net.detect_stream("traffic.mp4"):        # or "rtsp://...", or 0 for the first camera
    print(res.frame, res.timestamp, res.counts())
"""

from pydarknet.video.source import LatestFrameQueue, VideoSource, is_camera, is_stream, is_video_file
from pydarknet.video.stream import VideoDetections, detect_stream, frame_record
from pydarknet.video.writer import VideoWriter

__all__ = [
    "detect_stream",
    "VideoDetections",
    "frame_record",
    "VideoSource",
    "VideoWriter",
    "LatestFrameQueue",
    "is_video_file",
    "is_stream",
    "is_camera",
]
