"""Video sources in ``pydarknet detect``: video files, folders holding them, stream URLs and camera indices.

Each source gives an annotated video (``--save-dir``: same size; the source's frame rate divided by
``--vid-stride``), per-frame JSON lines (``--jsonl``: source, frame, timestamp, objects) and a frames-per-second
progress bar with an ETA for files. A source that fails (missing, corrupt, truncated, unreachable) is reported
with its name and frame, keeps what was written up to there, and the others still run (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from pydarknet.cli.common import EXIT_OK, EXIT_SOME_FAILED, error
from pydarknet.errors import DarknetError, UsageError

_WRITABLE = (".mp4", ".mkv", ".avi", ".mov", ".webm")


def add_video_options(parser):
    v = parser.add_argument_group("video and streams (video files, folders of them, rtsp:// or http:// URLs, camera 0)")
    v.add_argument("--vid-stride", type=int, default=1, metavar="N", help="detect on every N-th frame (default 1)")
    v.add_argument(
        "--jsonl",
        metavar="FILE",
        help="write one JSON line per frame (source, frame, timestamp, objects); '-' for standard output",
    )
    v.add_argument("--max-frames", type=int, metavar="N", help="stop each video source after N processed frames")
    v.add_argument(
        "--stream-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a stream or camera may take to open or to deliver a frame (default 10)",
    )


def _video_files(folder):
    from pydarknet.video.source import is_video_file

    return sorted(
        (q for q in pathlib.Path(folder).iterdir() if q.is_file() and is_video_file(q.name)), key=lambda q: q.name
    )


def split_sources(sources):
    """(video sources, image sources): video files, the videos in folders, stream URLs and camera indices go
    to the first list; everything else (and folders, which may also hold images) to the second."""
    from pydarknet.video.source import is_camera, is_stream, is_video_file

    videos, images = [], []
    for src in sources:
        p = pathlib.Path(src)
        try:
            p.is_dir()
        except OSError:  # a name the OS cannot even look up: the image path reports it as unreadable
            images.append(src)
            continue
        if is_stream(src) or (is_camera(src) and not p.exists()) or (is_video_file(src) and not p.is_dir()):
            videos.append(src)
        elif p.is_dir():
            found = _video_files(p)
            videos.extend(str(q) for q in found)
            from pydarknet.cli.common import _is_image_name

            if not found or any(q.is_file() and _is_image_name(q.name) for q in p.iterdir()):
                images.append(src)
        else:
            images.append(src)
    return videos, images


def has_video(sources):
    return bool(split_sources(sources)[0])


def _output_name(src, used):
    from pydarknet.video.source import is_camera, is_stream

    if is_stream(src):
        stem, ext = "stream", ".mp4"
    elif is_camera(src) and not os.path.exists(src):
        stem, ext = f"camera{int(src)}", ".mp4"
    else:
        stem, ext = os.path.splitext(os.path.basename(src))
        ext = ext.lower() if ext.lower() in _WRITABLE else ".mp4"
    name, k = stem + ext, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}{ext}"
    used.add(name)
    return name


def cmd_detect_video(args):
    """`pydarknet detect` when some sources are videos: the videos here, then the images as usual."""
    from pydarknet.cli.detect import _load_model, cmd_detect

    videos, images = split_sources(args.sources)
    if args.vid_stride < 1:
        raise UsageError(f"--vid-stride {args.vid_stride}: must be at least 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError(f"--max-frames {args.max_frames}: must be at least 1")
    if args.stream_timeout <= 0:
        raise UsageError(f"--stream-timeout {args.stream_timeout}: must be positive")
    if not 0 <= args.thresh <= 1:
        raise UsageError(f"--thresh {args.thresh}: must be between 0 and 1")
    save_dir = pathlib.Path(args.save_dir) if args.save_dir else None
    if save_dir is not None:
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--save-dir: cannot create the folder {save_dir} ({e.strerror or e})") from None
    try:
        import av  # noqa: F401
    except ImportError:
        raise UsageError("video sources need PyAV: pip install 'pydarknet[video]'") from None
    net, _ = _load_model(args)
    jsonl = None
    if args.jsonl:
        try:
            jsonl = sys.stdout if args.jsonl == "-" else open(args.jsonl, "w", encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--jsonl {args.jsonl}: cannot write ({e.strerror or e})") from None
    failed = 0
    used = set()
    try:
        for src in videos:
            try:
                _run_one(args, net, src, save_dir / _output_name(src, used) if save_dir else None, jsonl)
            except DarknetError as e:
                failed += 1
                error(str(e))
    finally:
        if jsonl is not None and jsonl is not sys.stdout:
            jsonl.close()
    status = EXIT_SOME_FAILED if failed else EXIT_OK
    if images:
        rest = argparse.Namespace(**vars(args))
        rest.sources = images
        rest.images_only = True  # folders that hold videos too: their images now
        try:
            status = max(status, cmd_detect(rest))
        except UsageError:
            if not failed and not videos:
                raise
            status = max(status, EXIT_SOME_FAILED)
    return status


def _run_one(args, net, src, out_path, jsonl):
    from pydarknet.video.stream import detect_stream, frame_record
    from pydarknet.video.writer import VideoWriter

    stream = detect_stream(
        net,
        src,
        vid_stride=args.vid_stride,
        timeout=args.stream_timeout,
        thresh=args.thresh,
        nms=args.nms,
        letterbox=args.letterbox,
        names=net.names,
        tta=args.tta,
    )
    source = stream.source
    live = source.live
    writer = None
    bar = None
    if not args.quiet:
        try:
            from tqdm import tqdm

            total = -(-source.expected_frames // args.vid_stride) if source.expected_frames else None
            if args.max_frames and total:
                total = min(total, args.max_frames)
            bar = tqdm(
                total=total,
                unit="frame",
                desc=os.path.basename(src) or src,
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
                disable=None,
            )
        except ImportError:
            bar = None
    echo = not args.quiet and (args.ext_output or (jsonl is None and out_path is None))
    processed = objects = 0
    t0 = time.perf_counter()
    try:
        if out_path is not None:
            fps = source.fps / args.vid_stride if source.fps else 25.0
            writer = VideoWriter(out_path, source.width, source.height, fps, timestamps=live)
        for res in stream:
            processed += 1
            objects += len(res)
            if writer is not None:
                writer.write(res.plot(res.image), res.timestamp)
            if jsonl is not None:
                jsonl.write(json.dumps(frame_record(res, src)) + "\n")
                jsonl.flush()
            if echo:
                lines = res.darknet_lines(ext_output=args.ext_output)
                text = f"{src}: frame {res.frame} ({res.timestamp:.2f} s): " + ("; ".join(lines) or "nothing")
                (bar.write(text, file=sys.stdout) if bar is not None else print(text, flush=True))
            res.image = None
            if bar is not None:
                bar.update(1)
            if args.max_frames and processed >= args.max_frames:
                break
    finally:
        stream.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()  # a valid video of the frames written so far, also when the source failed
        if not args.quiet:
            seconds = time.perf_counter() - t0
            dropped = f", {source.dropped} stale frames dropped" if live else ""
            wrote = f"; wrote {out_path} ({writer.frames} frames)" if writer is not None else ""
            print(
                f"{src}: {processed} frames in {seconds:.1f} s ({processed / max(seconds, 1e-9):.1f} frames/s), "
                f"{objects} objects{dropped}{wrote}",
                file=sys.stderr,
            )
