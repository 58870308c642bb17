"""Accuracy of the CPU's fast paths against the plain float32 path, on whole networks.

The plain path is pydarknet with Winograd disabled (every convolution an im2col/1x1 GEMM in float32, checked layer
by layer against float64 references and network by network against OpenCV by the tests). Compared with it:

* ``fp32``: the default path (Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions), per instruction set;
* ``bf16``: ``precision="bf16"`` (bf16 weights and inputs of every convolution, float32 sums, Winograd on).

Reported: the largest absolute difference over all yolo outputs, split into the values that are probabilities
(x, y, objectness, classes after the logistic) and the raw box sizes (w, h, unbounded), and the detections on
real photos (yolov4-tiny with its real weights): how many match (same class, IoU >= 0.5), the worst IoU and
confidence difference among the matches, and the ones only one side finds.

    python benchmarks/accuracy_cpu.py                    # yolov4-tiny 416 (real weights), yolov4 608 (random)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = ["bus.jpg", "zidane.jpg", "astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"]


def photo_blob(paths, size):
    from PIL import Image

    blobs = []
    for p in paths:
        im = Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)
        blobs.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(blobs).astype(np.float32)


def yolo_masks(net):
    """Per yolo head, a boolean mask over its channels: True where the value is a probability."""
    masks = []
    for i in net.yolo_layers:
        o = net.layers[i].options
        per = 5 + o["classes"]
        anchors = len(o["mask"]) if o.get("mask") else o["num"]
        m = np.ones(anchors * per, bool)
        for a in range(anchors):
            m[a * per + 2 : a * per + 4] = False  # w, h
        masks.append(m)
    return masks


def diffs(net, a, b):
    prob, size = 0.0, 0.0
    for m, x, y in zip(yolo_masks(net), a, b):
        d = np.abs(x.astype(np.float64) - y.astype(np.float64))
        prob = max(prob, float(d[:, m].max()))
        size = max(size, float(d[:, ~m].max()))
    return prob, size


def iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(ref, other):
    """Greedy one-to-one matching by IoU within a class: (matches [(iou, dconf)], only_ref, only_other)."""
    used, matches, only_ref = set(), [], []
    for i in np.argsort(-ref.conf):
        best, best_j = 0.5, None
        for j in range(len(other.conf)):
            if j in used or other.class_id[j] != ref.class_id[i]:
                continue
            v = iou(ref.xyxy[i], other.xyxy[j])
            if v >= best:
                best, best_j = v, j
        if best_j is None:
            only_ref.append((ref.names[i] if ref.names else int(ref.class_id[i]), float(ref.conf[i])))
        else:
            used.add(best_j)
            matches.append((best, abs(float(ref.conf[i]) - float(other.conf[best_j]))))
    only_other = [
        (other.names[j] if other.names else int(other.class_id[j]), float(other.conf[j]))
        for j in range(len(other.conf))
        if j not in used
    ]
    return matches, only_ref, only_other


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-yolov4", action="store_true", help="only yolov4-tiny")
    args = ap.parse_args(argv)

    import pydarknet
    from pydarknet import _core
    from pydarknet.hub import assets

    sys.path.insert(0, str(ROOT / "tests"))
    from support.netcalib import calibrate, randomize, with_input_size

    isas = ["generic", "avx2", "avx512"]
    isas = isas[: isas.index(_core.cpu_best_isa()) + 1]
    print(f"CPU kernels available: {', '.join(isas)}; AVX512_BF16: {_core.cpu_has_avx512_bf16()}")
    photos = [assets.fetch(p) for p in PHOTOS]

    models = [("yolov4-tiny", 416, "real")] + ([] if args.skip_yolov4 else [("yolov4", 608, "random")])
    print("\n| model | input | weights | path | kernels | max abs diff, probabilities | max abs diff, w/h |")
    print("|---|---|---|---|---|---|---|")
    for name, size, kind in models:
        cfg = ROOT / "cfg" / f"{name}.cfg"
        nets = {p: pydarknet.load(str(cfg), width=size, height=size, precision=p) for p in ("fp32", "bf16")}
        if kind == "real":
            w = assets.fetch(f"{name}.weights")
            for n in nets.values():
                n.load_weights(str(w))
            x = photo_blob(photos, size)
        else:
            rng = np.random.default_rng(0)
            x = np.concatenate([photo_blob(photos[:1], size), rng.random((1, 3, size, size), dtype=np.float32)])
            randomize(nets["fp32"], rng)
            calibrate(nets["fp32"], with_input_size(cfg.read_text(), size, size), x[:1], rng)
            nets["bf16"].params[...] = nets["fp32"].params
        _core.set_cpu_isa("avx512")
        _core.set_cpu_winograd(False)
        plain = nets["fp32"].forward(x)
        _core.set_cpu_winograd(True)
        for isa in isas:
            _core.set_cpu_isa(isa)
            for precision in ("fp32", "bf16"):
                p, s = diffs(nets[precision], plain, nets[precision].forward(x))
                print(
                    f"| {name} | {size} | {kind}, batch {len(x)} | {precision} (Winograd on) vs plain fp32 | "
                    f"{isa} | {p:.2e} | {s:.2e} |"
                )
        _core.set_cpu_isa(isas[-1])

    print("\nDetections, yolov4-tiny 416 (real weights), bf16 vs fp32 (both Winograd on), thresh 0.25:\n")
    print("| photo | fp32 | bf16 | matched | worst IoU | max conf diff | fp32 only | bf16 only |")
    print("|---|---|---|---|---|---|---|---|")
    n32 = pydarknet.models.load("yolov4-tiny")
    n16 = pydarknet.models.load("yolov4-tiny", precision="bf16")
    for name, path in zip(PHOTOS, photos):
        r32, r16 = n32.detect(str(path)), n16.detect(str(path))
        matches, only32, only16 = match(r32, r16)
        worst = min((m[0] for m in matches), default=float("nan"))
        dconf = max((m[1] for m in matches), default=float("nan"))

        def fmt(items):
            return ", ".join(f"{c} {v:.2f}" for c, v in items) or "-"

        print(
            f"| {name} | {len(r32.conf)} | {len(r16.conf)} | {len(matches)} | {worst:.3f} | {dconf:.3f} | "
            f"{fmt(only32)} | {fmt(only16)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
