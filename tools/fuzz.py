"""Seeded mutation fuzzing of pydarknet's input readers (not run in CI).

Valid seed files (a small detector cfg with most layer types, its weights, small PNG/JPEG/BMP/GIF/TIFF images, a
label file, a data.yaml and a Darknet .data with its list and names) are mutated (byte flips, truncation,
duplication, insertion, numbers replaced by huge/negative/non-finite/non-ASCII ones, a UTF-8 BOM, NULs, PNG
headers declaring huge sizes...) and each mutant is fed, in-process, to the public entry points:

    cfg      pydarknet.load(cfg); when it builds (and is small), net.detect on a small image
    weights  net.load_weights(file) on the seed cfg, then net.detect
    image    pydarknet.data.images.load_image(file), then a Detector on it
    label    pydarknet.data.labels.parse_labels and read_yolo_labels
    data     pydarknet.data.dataset.load_dataset on a mutated data.yaml, .data, image list or names file

Inputs run in worker processes (one per core) under an address-space limit (``resource.setrlimit(RLIMIT_AS)``),
so a memory blow-up shows as MemoryError instead of taking the machine down; the parent gives each input a time
limit and restarts a worker that overran it (a hang) or died (a crash), attributing it to the input. Every
outcome is one of: ok, typed (a pydarknet.DarknetError), untyped (any other exception), crash, hang.

Every input is a function of (campaign seed, index): ``--replay INDEX`` re-creates one, writes it to a file and
runs it in the foreground, so a finding can be turned into a regression test.

Usage (from the repository root, with the package importable)::

    python tools/fuzz.py --count 100000 --seed 1 --workers 2 --json fuzz-results.json
    python tools/fuzz.py --seed 1 --replay 4711          # one input again, with its traceback
    python tools/fuzz.py --count 2000 --seed 7            # a quick run

Throughput is printed at the end: on the project's two shared cores 100,000 inputs take 5 to 7 minutes (260 to 330
inputs/s with two workers); the campaigns and what they found are in benchmarks/RESULTS.md ("Fuzzing"). The exit
status is 1 when any input ended untyped, crashed or hung.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib

KINDS = ("cfg", "weights", "image", "label", "data")
OUTCOMES = ("ok", "typed", "untyped", "crash", "hang")

SEED_CFG = """\
[net]
batch=1
width=32
height=32
channels=3
letter_box=0

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=mish

[convolutional]
filters=16
size=1
stride=1
activation=swish

[shortcut]
from=-2
activation=linear

[route]
layers=-1,-3

[convolutional]
filters=21
size=1
stride=1
activation=linear

[yolo]
mask=3,4,5
anchors=4,4, 8,8, 12,12, 16,16, 24,24, 32,32
classes=2
num=6
scale_x_y=1.05
nms_kind=greedynms

[route]
layers=-3

[upsample]
stride=2

[route]
layers=-1,1

[convolutional]
filters=21
size=1
stride=1
activation=logistic

[yolo]
mask=0,1,2
anchors=4,4, 8,8, 12,12, 16,16, 24,24, 32,32
classes=2
num=6
new_coords=0
"""

SEED_LABEL = "0 0.5 0.5 0.25 0.25\n1 0.2 0.3 0.1 0.2\n"
SEED_NAMES = "cat\ndog\n"
NUMBERS = [
    "0",
    "-1",
    "-2147483649",
    "2147483648",
    "99999999999999999999",
    "9" * 5000,
    "1e39",
    "-1e39",
    "1e-45",
    "nan",
    "inf",
    "-inf",
    "0x10",
    "\uff13\uff12",
    "\u0663",
    "1.5",
    "65537",
    "3",
    "",
]
JUNK = [
    b"\0",
    b"\xef\xbb\xbf",
    b"\r\n",
    b"\xff\xfe",
    "\u2028".encode(),
    "\U0001f600".encode(),
    b"[",
    b"]",
    b"=",
    b"*a",
    b"&a",
]


# ----- seeds ------------------------------------------------------------------------------------------------------
def make_seeds(folder):
    """Write the valid seed files into ``folder``; returns {kind: [(name, bytes), ...]} and the seed paths."""
    import numpy as np
    from PIL import Image

    import pydarknet

    cfg = os.path.join(folder, "seed.cfg")
    with open(cfg, "w") as f:
        f.write(SEED_CFG)
    net = pydarknet.load(cfg, seed=0)
    for layer in net.layers:  # small weights keep the seed's detections finite
        for name, view in layer.params.items():
            if name == "weights":
                view *= 0.5
    weights = os.path.join(folder, "seed.weights")
    net.save_weights(weights)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image_seeds = []
    for fmt, ext, mode in (("PNG", "png", "RGB"), ("JPEG", "jpg", "RGB"), ("BMP", "bmp", "RGB"), ("GIF", "gif", "P")):
        buf = io.BytesIO()
        im = Image.fromarray(pixels)
        (im.convert(mode) if mode != "RGB" else im).save(buf, fmt)
        image_seeds.append((f"seed.{ext}", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(np.dstack([pixels, pixels[:, :, :1]])).save(buf, "PNG")  # RGBA
    image_seeds.append(("seed_rgba.png", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "TIFF")
    image_seeds.append(("seed.tif", buf.getvalue()))
    # a dataset: images/ + labels/, a list, names, .data and data.yaml
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for k in range(2):
        Image.fromarray(pixels).save(os.path.join(folder, "images", f"im{k}.png"))
        with open(os.path.join(folder, "labels", f"im{k}.txt"), "w") as f:
            f.write(SEED_LABEL)
    listing = "images/im0.png\n# a comment\nimages/im1.png\n"
    data = "classes = 2\ntrain = train.txt\nvalid = train.txt\nnames = obj.names\nbackup = backup/\n"
    yaml = "path: .\ntrain: images\nval: images\nnc: 2\nnames: [cat, dog]\n"
    seeds = {
        "cfg": [("seed.cfg", SEED_CFG.encode())],
        "weights": [("seed.weights", open(weights, "rb").read())],
        "image": image_seeds,
        "label": [("seed.txt", SEED_LABEL.encode())],
        "data": [
            ("data.yaml", yaml.encode()),
            ("obj.data", data.encode()),
            ("train.txt", listing.encode()),
            ("obj.names", SEED_NAMES.encode()),
        ],
    }
    return seeds, cfg, weights


# ----- mutations ------------------------------------------------------------------------------------------------
def _png_with_size(rng, data):
    """Rewrite a PNG's IHDR width/height (with a valid CRC), e.g. a decompression bomb's header."""
    if not data.startswith(b"\x89PNG") or len(data) < 33:
        return data
    w = rng.choice([0, 1, 2**31 - 1, 2**31, 65535, 13000, 100000, rng.randrange(1, 1 << 20)])
    h = rng.choice([0, 1, 2**31 - 1, 65535, 13000, 100000, rng.randrange(1, 1 << 20)])
    body = bytearray(data[12:29])
    body[4:12] = struct.pack(">II", w, h)
    crc = struct.pack(">I", zlib.crc32(bytes(body)) & 0xFFFFFFFF)
    return data[:12] + bytes(body) + crc + data[33:]


def _replace_number(rng, data):
    """Replace one decimal number in a text file by a hostile one."""
    text = data.decode("utf-8", errors="replace")
    starts = [i for i in range(len(text)) if text[i].isdigit() and (i == 0 or not text[i - 1].isdigit())]
    if not starts:
        return data
    i = rng.choice(starts)
    j = i
    while j < len(text) and (text[j].isdigit() or text[j] in ".e-"):
        j += 1
    return (text[:i] + rng.choice(NUMBERS) + text[j:]).encode("utf-8", errors="replace")


def mutate(rng, data, binary):
    data = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 3, 4, 8])):
        op = rng.randrange(10 if not binary else 9)
        n = len(data)
        if op == 0 and n:  # bit flip
            i = rng.randrange(n)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # random byte
            data[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:  # insert junk
            i = rng.randrange(n + 1)
            data[i:i] = rng.choice(JUNK) * rng.choice([1, 1, 2, 64])
        elif op == 3 and n:  # truncate
            del data[rng.randrange(n) :]
        elif op == 4 and n:  # delete a range
            i = rng.randrange(n)
            del data[i : i + rng.randrange(1, 64)]
        elif op == 5 and n:  # duplicate a range (sometimes many times)
            i = rng.randrange(n)
            chunk = data[i : i + rng.randrange(1, 256)]
            data[i:i] = chunk * rng.choice([1, 2, 16, 1000])
        elif op == 6 and n >= 4:  # overwrite 4 bytes with an extreme int/float
            i = rng.randrange(n - 3)
            value = rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0x7F800000, 0x7FC00000, 0xFF800000, 0xBF800000])
            data[i : i + 4] = struct.pack("<I", value)
        elif op == 7:
            data = bytearray(_png_with_size(rng, bytes(data)))
        elif op == 8 and n:  # swap two ranges
            i, j = sorted(rng.randrange(n) for _ in range(2))
            data[i:j] = data[i:j][::-1]
        elif op == 9:
            data = bytearray(_replace_number(rng, bytes(data)))
    return bytes(data)


def make_case(seeds, campaign_seed, index):
    """(kind, file name, bytes) of input ``index``: a deterministic function of the campaign seed and index."""
    rng = random.Random(f"{campaign_seed}:{index}")
    kind = KINDS[index % len(KINDS)]
    name, data = rng.choice(seeds[kind])
    return kind, name, mutate(rng, data, binary=kind in ("weights", "image"))


# ----- running one input ----------------------------------------------------------------------------------------
class Runner:
    """Holds the seed network and detector; ``run(kind, path)`` feeds one file to the entry points."""

    def __init__(self, folder, cfg, weights):
        import numpy as np

        import pydarknet
        from pydarknet.inference.detect import Detector

        self.folder = folder
        self.np = np
        self.pydarknet = pydarknet
        self.net = pydarknet.load(cfg, weights)
        self.detector = Detector(self.net, thresh=0.9)  # few candidates: NMS time stays small
        self.seed_params = np.array(self.net.params, copy=True)
        self.image = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)

    def run(self, kind, path):
        from pydarknet.data import dataset, images, labels

        if kind == "cfg":
            net = self.pydarknet.load(path)
            activations = sum(layer.out_size for layer in net.desc.layers)
            if net.yolo_layers and activations < 4_000_000:
                net.detect(self.image, thresh=0.9)
        elif kind == "weights":
            try:
                self.net.load_weights(path)
                self.detector(self.image)
            finally:
                self.net.params[:] = self.seed_params
        elif kind == "image":
            images.load_image(path)
            self.detector(path)
        elif kind == "label":
            labels.parse_labels(path, 2)
            labels.read_yolo_labels(path)
        elif kind == "data":
            target = path
            if not path.endswith((".yaml", ".data")):
                target = os.path.join(os.path.dirname(path), "obj.data")
            dataset.load_dataset(target)


def classify(exc):
    from pydarknet.errors import DarknetError

    if exc is None:
        return "ok"
    return "typed" if isinstance(exc, DarknetError) else "untyped"


def worker(args):
    """Read case indices on stdin, answer one JSON line per case on stdout."""
    import resource

    limit = int(args.memory_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    folder = tempfile.mkdtemp(prefix="pydarknet-fuzz-")
    seeds, cfg, weights = make_seeds(folder)
    runner = Runner(folder, cfg, weights)
    case_dir = os.path.join(folder, "case")
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the code under test prints must not corrupt the protocol
    for line in sys.stdin:
        index = int(line)
        kind, name, data = make_case(seeds, args.seed, index)
        # data files are mutated in a copy of the dataset folder, so relative paths still resolve
        if os.path.isdir(case_dir):
            for entry in os.listdir(case_dir):
                p = os.path.join(case_dir, entry)
                if os.path.isfile(p):
                    os.unlink(p)
        else:
            os.makedirs(case_dir)
            os.symlink(os.path.join(folder, "images"), os.path.join(case_dir, "images"))
            os.symlink(os.path.join(folder, "labels"), os.path.join(case_dir, "labels"))
        if kind == "data":
            for other, content in seeds["data"]:
                with open(os.path.join(case_dir, other), "wb") as f:
                    f.write(content)
        path = os.path.join(case_dir, name)
        with open(path, "wb") as f:
            f.write(data)
        exc = None
        try:
            runner.run(kind, path)
        except Exception as e:
            exc = e
        outcome = classify(exc)
        record = {"index": index, "kind": kind, "outcome": outcome}
        if outcome == "untyped":
            record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if f"{os.sep}pydarknet{os.sep}" in f.filename] or frames
            record["where"] = f"{os.path.basename(ours[-1].filename)}:{ours[-1].lineno} {ours[-1].name}"
        out.write(json.dumps(record) + "\n")
        out.flush()


# ----- the campaign ---------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, args):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--seed", str(args.seed)]
        cmd += ["--memory-gib", str(args.memory_gib)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, bufsize=0
        )
        self.current = None
        self.started = 0.0
        self.buffer = b""

    def send(self, index):
        self.current = index
        self.started = time.monotonic()
        self.proc.stdin.write(f"{index}\n".encode())

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def campaign(args):
    results = collections.Counter()
    findings = []
    todo = collections.deque(range(args.start, args.start + args.count))
    workers = [Worker(args) for _ in range(args.workers)]
    t0 = time.monotonic()
    done = 0
    # The first input of a fresh worker also pays for its start-up (imports, seeds): allow for it.
    startup_allowance = 60.0
    fresh = {id(w): True for w in workers}

    def record(kind, index, outcome, detail=None):
        nonlocal done
        results[(kind, outcome)] += 1
        done += 1
        if outcome not in ("ok", "typed"):
            findings.append({"index": index, "kind": kind, "outcome": outcome, **(detail or {})})
        if args.progress and done % args.progress == 0:
            rate = done / (time.monotonic() - t0)
            print(f"{done:,} inputs, {rate:.0f}/s, findings {len(findings)}", file=sys.stderr, flush=True)

    for w in workers:
        if todo:
            w.send(todo.popleft())
    while any(w.current is not None for w in workers):
        busy = [w for w in workers if w.current is not None]
        ready, _, _ = select.select([w.proc.stdout for w in busy], [], [], 0.2)
        now = time.monotonic()
        for i, w in enumerate(workers):
            if w.current is None:
                continue
            if w.proc.stdout in ready:
                chunk = os.read(w.proc.stdout.fileno(), 65536)
                if not chunk:  # the worker died: a crash of the current input
                    kind = KINDS[w.current % len(KINDS)]
                    code = w.proc.wait()
                    record(kind, w.current, "crash", {"error": f"worker exit status {code}"})
                    workers[i] = w = Worker(args)
                    fresh[id(w)] = True
                    if todo:
                        w.send(todo.popleft())
                    continue
                w.buffer += chunk
                while b"\n" in w.buffer and w.current is not None:
                    line, w.buffer = w.buffer.split(b"\n", 1)
                    rec = json.loads(line)
                    detail = {k: rec[k] for k in ("error", "where") if k in rec}
                    record(rec["kind"], rec["index"], rec["outcome"], detail)
                    fresh[id(w)] = False
                    w.current = None
                    if todo:
                        w.send(todo.popleft())
            elif now - w.started > args.timeout + (startup_allowance if fresh.get(id(w)) else 0):
                kind = KINDS[w.current % len(KINDS)]
                record(kind, w.current, "hang", {"error": f"no answer within {args.timeout} s"})
                w.kill()
                workers[i] = w = Worker(args)
                fresh[id(w)] = True
                if todo:
                    w.send(todo.popleft())
    for w in workers:
        w.proc.stdin.close()
        w.proc.wait()
    elapsed = time.monotonic() - t0
    return results, findings, elapsed


def replay(args):
    """Re-create input ``args.replay`` and run it in this process, with its traceback."""
    folder = tempfile.mkdtemp(prefix="pydarknet-replay-")
    seeds, cfg, weights = make_seeds(folder)
    kind, name, data = make_case(seeds, args.seed, args.replay)
    if kind == "data":
        for other, content in seeds["data"]:
            with open(os.path.join(folder, other), "wb") as f:
                f.write(content)
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    print(f"input {args.replay} ({kind}) written to {path} ({len(data):,} bytes)")
    try:
        Runner(folder, cfg, weights).run(kind, path)
        print("outcome: ok")
    except Exception as e:
        print(f"outcome: {classify(e)}")
        traceback.print_exc()


def main(argv=None):
    p = argparse.ArgumentParser(description="Seeded mutation fuzzing of pydarknet's input readers.")
    p.add_argument("--count", type=int, default=100_000, help="inputs to run (default 100,000)")
    p.add_argument("--start", type=int, default=0, help="first input index")
    p.add_argument("--seed", type=int, default=1, help="campaign seed")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take before it is a hang")
    p.add_argument("--memory-gib", type=float, default=2.0, help="address-space limit of a worker")
    p.add_argument("--json", help="write the counts and findings here")
    p.add_argument("--progress", type=int, default=5000, help="print progress every N inputs (0: never)")
    p.add_argument("--replay", type=int, help="re-create one input and run it here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.replay is not None:
        return replay(args)
    results, findings, elapsed = campaign(args)
    last = args.start + args.count - 1
    print(f"{args.count:,} inputs (seed {args.seed}, indices {args.start}..{last}) in {elapsed:.0f} s")
    print(f"{'kind':8s} " + " ".join(f"{o:>8s}" for o in OUTCOMES))
    for kind in KINDS:
        print(f"{kind:8s} " + " ".join(f"{results[(kind, o)]:8d}" for o in OUTCOMES))
    print(f"{'total':8s} " + " ".join(f"{sum(results[(k, o)] for k in KINDS):8d}" for o in OUTCOMES))
    groups = collections.Counter(
        (f["kind"], f["outcome"], f.get("where", ""), f.get("error", "")[:80]) for f in findings
    )
    for (kind, outcome, where, error), n in groups.most_common(40):
        example = next(f["index"] for f in findings if (f["kind"], f["outcome"]) == (kind, outcome))
        print(f"  {n:6d} x {kind} {outcome}: {error} [{where}] (e.g. --replay {example})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "seed": args.seed,
                    "start": args.start,
                    "count": args.count,
                    "seconds": round(elapsed, 1),
                    "counts": {k: {o: results[(k, o)] for o in OUTCOMES} for k in KINDS},
                    "findings": findings,
                },
                f,
                indent=1,
            )
    return 0 if not findings else 1


if __name__ == "__main__":
    sys.exit(main())
