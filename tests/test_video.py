"""Video files, live streams and bad media through `net.detect_stream` and `pydarknet detect`.

The videos are made here: the sample photos encoded with PyAV. A live stream is simulated on loopback: a small
HTTP server that sends an MPEG-TS file at its real pace (or accepts and never answers, for the timeout test).
"""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import threading
import time

import numpy as np
import pytest
from support.assets import fetch_or_skip

av = pytest.importorskip("av")

FPS = 10
SIZE = (320, 240)
PHOTOS = ["bus.jpg", "zidane.jpg", "coffee.png"]
PER_PHOTO = 4


def encode(path, frames, fps=FPS, codec="libx264", fmt=None, options=None):
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def decode_all(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, s.width, s.height, float(s.average_rate)


@pytest.fixture(scope="module")
def photo_frames():
    from PIL import Image

    frames = []
    for name in PHOTOS:
        im = Image.open(fetch_or_skip(name)).convert("RGB").resize(SIZE)
        frames += [np.asarray(im)] * PER_PHOTO
    return frames


@pytest.fixture(scope="module")
def net():
    import pydarknet

    fetch_or_skip("yolov4-tiny.weights")
    return pydarknet.models.load("yolov4-tiny")


@pytest.fixture(scope="module")
def video(tmp_path_factory, photo_frames):
    return encode(tmp_path_factory.mktemp("video") / "photos.mkv", photo_frames)


# ----- files -------------------------------------------------------------------------------------------------
def test_detect_stream_gives_each_frame_as_an_image(engine, net, video):
    decoded, *_ = decode_all(video)
    results = list(net.detect_stream(video))
    assert [r.frame for r in results] == list(range(len(decoded))) == list(range(len(PHOTOS) * PER_PHOTO))
    assert [r.timestamp for r in results] == pytest.approx([i / FPS for i in range(len(decoded))])
    for res, frame in zip(results, decoded):
        want = net.detect(frame)  # the same decoded picture as an image
        assert res.class_id.tolist() == want.class_id.tolist()
        np.testing.assert_array_equal(res.xyxy, want.xyxy)
        np.testing.assert_array_equal(res.conf, want.conf)
    assert results[0].counts().get("person", 0) >= 2  # bus.jpg's persons, still found at 320x240
    strided = list(net.detect_stream(video, vid_stride=3))
    assert [r.frame for r in strided] == [0, 3, 6, 9]
    assert strided[1].counts() == results[3].counts()


def test_cli_video_end_to_end(engine, net, video, tmp_path, capsys):
    from pydarknet.cli.main import main

    out = tmp_path / "out"
    rc = main(["detect", str(video), "--save-dir", str(out), "--jsonl", str(tmp_path / "frames.jsonl")])
    assert rc == 0
    frames, width, height, fps = decode_all(out / "photos.mkv")
    assert (width, height) == SIZE and fps == FPS and len(frames) == len(PHOTOS) * PER_PHOTO
    source, *_ = decode_all(video)
    assert np.abs(frames[0].astype(int) - source[0].astype(int)).mean() > 1  # boxes were drawn
    lines = [json.loads(line) for line in (tmp_path / "frames.jsonl").read_text().splitlines()]
    assert [d["frame"] for d in lines] == list(range(12))
    assert lines[5]["timestamp"] == pytest.approx(0.5)
    expected = net.detect(source[0])
    assert [o["name"] for o in lines[0]["objects"]] == expected.labels
    box = lines[0]["objects"][0]["relative_coordinates"]
    assert box["center_x"] == pytest.approx(float(expected.xywhn[0][0]), abs=1e-6)
    err = capsys.readouterr().err
    assert "photos.mkv: 12 frames" in err and "wrote" in err


def test_cli_stride_and_folder_of_videos(engine, net, video, tmp_path):
    import shutil

    from pydarknet.cli.main import main

    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(video, folder / "a.mkv")
    shutil.copy(video, folder / "b.mkv")
    rc = main(
        [
            "detect",
            str(folder),
            "--vid-stride",
            "4",
            "--save-dir",
            str(tmp_path / "o"),
            "-q",
            "--jsonl",
            str(tmp_path / "f.jsonl"),
        ]
    )
    assert rc == 0
    for name in ("a.mkv", "b.mkv"):
        frames, *_, fps = decode_all(tmp_path / "o" / name)
        assert len(frames) == 3 and fps == pytest.approx(FPS / 4)
    lines = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [(d["source"].rsplit("/", 1)[-1], d["frame"]) for d in lines] == [
        (n, i) for n in ("a.mkv", "b.mkv") for i in (0, 4, 8)
    ]


# ----- bad media ---------------------------------------------------------------------------------------------
def test_truncated_video_names_file_and_frame_and_keeps_output(engine, net, video, tmp_path, capsys):
    from pydarknet.cli.main import main

    cut = tmp_path / "cut.mkv"
    data = video.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(engine.VideoError, match=r"cut\.mkv: frame \d+: the video ends early.*truncated") as e:
        for _ in net.detect_stream(cut):
            pass
    stopped = e.value.frame
    assert 0 < stopped < 12
    rc = main(["detect", str(cut), "--save-dir", str(tmp_path / "o")])
    assert rc == 1
    assert f"cut.mkv: frame {stopped}: the video ends early" in capsys.readouterr().err
    frames, width, height, _ = decode_all(tmp_path / "o" / "cut.mkv")  # a valid video up to that frame
    assert len(frames) == stopped and (width, height) == SIZE


def test_corrupt_videos(engine, net, photo_frames, tmp_path):
    # mp4 with its index first (faststart): the data ends mid-stream; the demuxer or decoder stops at a known frame
    mp4 = encode(tmp_path / "clip.mp4", photo_frames, options={"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4.read_bytes()[: int(mp4.stat().st_size * 0.6)])
    with pytest.raises(engine.VideoError, match=r"cut\.mp4: frame \d+: (cannot decode|the video ends early)") as e:
        list(net.detect_stream(cut))
    assert 0 < e.value.frame < 12
    garbage = tmp_path / "noise.avi"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 50000, dtype=np.uint8).tobytes())
    with pytest.raises(engine.VideoError, match=r"noise\.avi: cannot open"):
        net.detect_stream(garbage)
    with pytest.raises(engine.VideoError, match=r"missing\.mp4: no such file"):
        net.detect_stream(tmp_path / "missing.mp4")


def test_missing_camera(engine, net):
    with pytest.raises(engine.VideoError, match="camera 97: .*no camera with this index"):
        net.detect_stream(97)


# ----- live sources on loopback ------------------------------------------------------------------------------
class _Server:
    """An HTTP server on 127.0.0.1 that streams `data` in `chunks` pieces `interval` seconds apart."""

    def __init__(self, data, chunks=20, interval=0.1):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                step = -(-len(data) // chunks)
                try:
                    for i in range(0, len(data), step):
                        self.wfile.write(data[i : i + step])
                        self.wfile.flush()
                        time.sleep(interval)
                except OSError:
                    pass  # the client left

            def log_message(self, *args):
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/live.ts"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_live_stream_detects_on_the_newest_frame(engine, net, photo_frames, tmp_path):
    frames = [f for f in photo_frames for _ in range(4)]  # 48 frames, 2.4 s at 20 fps
    ts = encode(tmp_path / "live.ts", frames, fps=20, fmt="mpegts")
    server = _Server(ts.read_bytes(), chunks=24, interval=0.1)
    try:
        stream = net.detect_stream(server.url, timeout=5)
        assert stream.source.live
        seen = []  # (frame index, frames decoded by then)
        for res in stream:
            seen.append((res.frame, stream.source.decoded))
            time.sleep(0.15)  # a slow consumer: about 3 frames arrive while one is processed
    finally:
        server.close()
    indices = [i for i, _ in seen]
    assert indices == sorted(set(indices)) and indices[-1] == len(frames) - 1
    assert stream.dropped > 0 and len(seen) + stream.dropped == len(frames)  # every frame seen or counted
    # latency stays bounded: whenever the consumer comes back for a frame it gets the newest one, at least as new
    # as the last frame decoded before it came back (a first-in-first-out backlog would hand out index + 1)
    for (_, decoded_then), (next_index, _) in zip(seen, seen[1:]):
        assert next_index >= decoded_then - 1


def test_latest_frame_queue():
    from pydarknet.video.source import LatestFrameQueue

    q = LatestFrameQueue(2)
    for i in range(5):
        q.put(i)
    assert (q.get(), q.get(), q.dropped) == (3, 4, 3)
    with pytest.raises(TimeoutError):
        q.get(timeout=0.05)
    q.put(7)
    q.close(RuntimeError("broken"))
    assert q.get() == 7
    with pytest.raises(RuntimeError, match="broken"):
        q.get()


def test_unreachable_streams_fail_fast(engine, net):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections, never answers
    try:
        t0 = time.monotonic()
        with pytest.raises(engine.VideoError, match=r"127\.0\.0\.1:\d+/cam\.ts: no answer within 1\.5 s"):
            net.detect_stream(f"http://127.0.0.1:{silent.getsockname()[1]}/cam.ts", timeout=1.5)
        assert time.monotonic() - t0 < 6
    finally:
        silent.close()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    with pytest.raises(engine.VideoError, match="cannot open"):
        net.detect_stream(f"rtsp://127.0.0.1:{port}/stream", timeout=2)
