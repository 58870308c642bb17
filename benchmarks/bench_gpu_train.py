"""GPU training speed: pydarknet's CUDA training step against PyTorch + cuDNN training the same network.

One iteration as Darknet runs it: ``batch`` images in ``subdivisions`` forward/backward passes, then one update.
Both engines train the network built from the same cfg with the same starting parameters, in one process:

* pydarknet on ``device="cuda"`` in fp32, fp16 or bf16 (mixed precision: the convolution operands rounded to
  that type, float32 sums and master weights, fp16 with loss scaling; the training kernels are direct float32
  kernels, so mixed precision changes the numerics, not yet the speed). The step calls the pieces
  ``pydarknet.train.trainer.Trainer.step`` calls on a GPU -- ``Network.forward_train`` (no head copied to the host),
  the [yolo] loss on the device (``pydarknet.train.yolo_loss.device_yolo_loss``, Darknet's real loss),
  ``Network.backward_device``, then the update (``Optimizer.step_device``, Darknet's SGD on the GPU) -- without the
  data loader, logging or checkpoints. Every one of these calls returns after its stream has finished, so
  wall-clock time between them is the time of each phase. pydarknet uploads the input inside ``forward_train``:
  its "upload" column is empty and its forward includes it. On the CPU (``--device cpu``) the host loss runs.
* PyTorch: the module of ``benchmarks/torch_darknet.py`` with real ``nn.BatchNorm2d`` layers in training mode
  (Darknet's epsilon and momentum), channels_last, cuDNN autotuning, ``torch.optim.SGD`` with the cfg's momentum
  and decay; fp32 with TF32 off (as pydarknet computes), and automatic mixed precision (``torch.autocast`` fp16
  with a ``GradScaler``, or bf16). Phases timed with CUDA events.

THE PYTORCH LOSS IS NOT A YOLO LOSS: it is the sum of squared differences between the [yolo] heads' outputs and
random targets held on the GPU (one element-wise pass over the heads, cheaper than Darknet's loss). A real yolo
loss in PyTorch is out of scope; compare the forward, backward and optimizer columns, and read the loss column
for what it is.

Inputs are synthetic: random images and random truth boxes made once; each step uploads its images from host
memory (pinned for PyTorch). Before timing, the PyTorch module (eval mode, rolling statistics) is checked against
pydarknet's inference forward on two images (normalized MSE <= 1e-5 in fp32): a mismatch makes the exit status 1.

    python benchmarks/bench_gpu_train.py                                   # yolov4-tiny 416 and yolov4 608
    python benchmarks/bench_gpu_train.py --models yolov4-tiny --iterations 5 --precision fp32,fp16
    python benchmarks/bench_gpu_train.py --models yolov4 --batch 8 --subdivisions 1 --json out.json
    python benchmarks/bench_gpu_train.py --models yolov4-tiny:416,yolov4:608:8/1   # yolov4: one pass of 8
    python benchmarks/bench_gpu_train.py --smoke      # no GPU: the code paths at 64x64 (not a speed measurement)

``--device cpu`` (and ``--smoke``) runs PyTorch on the CPU and pydarknet on its CUDA device when the engine is the
CPU emulation of CUDA (``PYDARKNET_CUDA=EMULATE``), else on the CPU engine: a check that the code runs, whose
timings say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import pathlib
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402  (load_network: real or calibrated random weights; nmse)
from torch_darknet import build_torch_model  # noqa: E402

DEFAULT_MODELS = "yolov4-tiny:416,yolov4:608"
PHASES = ("upload", "forward", "loss", "backward", "optimizer")
PRECISIONS = ("fp32", "fp16", "bf16")
GRAPH_AGREEMENT = 1e-5  # normalized MSE between the torch module (eval) and pydarknet's forward, fp32
TORCH_LOSS = "sum of squared differences to random targets (not a yolo loss)"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models",
        default=None,
        help=f"cfg names from cfg/ as NAME[:SIZE[:BATCH[/SUBDIVISIONS]]], comma-separated (default {DEFAULT_MODELS})",
    )
    ap.add_argument("--size", type=int, default=None, help="input size for every model (overrides :SIZE)")
    ap.add_argument("--batch", type=int, default=None, help="images per iteration (default: the cfg's batch)")
    ap.add_argument("--subdivisions", type=int, default=None, help="passes per iteration (default: the cfg's)")
    ap.add_argument("--iterations", type=int, default=None, help="timed iterations (default 10; smoke 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 2; smoke 1)")
    ap.add_argument(
        "--precisions", "--precision", default=None, help="comma list of fp32, fp16, bf16 (default fp32,fp16)"
    )
    ap.add_argument("--engines", default="pydarknet,torch", help="comma list of pydarknet, torch")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="cuda (default) or cpu (see above)")
    ap.add_argument(
        "--pydarknet-device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="with --device cpu: pydarknet's device (auto: the CUDA emulation when the engine is built with it)",
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=300.0,
        help="stop timing a configuration after this long (at least one timed iteration is kept)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--progress",
        action="store_true",
        help="print every iteration's time, and each pydarknet phase as it ends (a run cut short still shows them)",
    )
    ap.add_argument("--json", default=None, help="write the rows as JSON here (rewritten after each row)")
    ap.add_argument("--smoke", action="store_true", help="yolov4-tiny at 64, batch 4 in 2 passes, 1 iteration, CPU")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models = args.models or "yolov4-tiny:64"
        args.batch = args.batch or 4
        args.subdivisions = args.subdivisions or 2
        args.iterations = args.iterations or 1
        args.warmup = 1 if args.warmup is None else args.warmup
        args.device = args.device or "cpu"
        args.precisions = args.precisions or "fp32,fp16,bf16"
    args.models = args.models or DEFAULT_MODELS
    args.iterations = 10 if args.iterations is None else args.iterations
    args.warmup = 2 if args.warmup is None else args.warmup
    args.device = args.device or "cuda"
    args.precisions = args.precisions or "fp32,fp16"
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for p in precisions:
        if p not in PRECISIONS:
            ap.error(f"unknown precision {p!r}; use {', '.join(PRECISIONS)}")
    for e in engines:
        if e not in ("pydarknet", "torch"):
            ap.error(f"unknown engine {e!r}; use pydarknet, torch")
    for key in ("batch", "subdivisions", "iterations", "size"):
        value = getattr(args, key)
        if value is not None and value < 1:
            ap.error(f"--{key} must be at least 1, got {value}")
    if args.warmup < 0:
        ap.error(f"--warmup must be at least 0, got {args.warmup}")
    args.precision_list, args.engine_list = precisions, engines
    return args


def parse_model(spec: str, args):
    """``NAME[:SIZE[:BATCH[/SUBDIVISIONS]]]`` -> (name, size, [net] overrides). --size replaces every SIZE;
    --batch and --subdivisions apply where the spec leaves them out."""
    parts = spec.strip().split(":")
    if not parts[0] or len(parts) > 3:
        raise SystemExit(f"bench_gpu_train: bad model {spec!r}; use NAME[:SIZE[:BATCH[/SUBDIVISIONS]]]")
    try:
        size = args.size or int(parts[1] if len(parts) > 1 and parts[1] else 416)
        batch, _, subdivisions = (parts[2] if len(parts) > 2 else "").partition("/")
        overrides = {
            "batch": int(batch) if batch else args.batch,
            "subdivisions": int(subdivisions) if subdivisions else args.subdivisions,
        }
    except ValueError:
        raise SystemExit(f"bench_gpu_train: bad model {spec!r}; use NAME[:SIZE[:BATCH[/SUBDIVISIONS]]]") from None
    if min([size] + [v for v in overrides.values() if v is not None]) < 1:
        raise SystemExit(f"bench_gpu_train: {spec!r}: size, batch and subdivisions must be at least 1")
    return parts[0], size, {k: v for k, v in overrides.items() if v is not None}


# ----- results ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    network: str
    size: int
    batch: int
    subdivisions: int
    engine: str
    precision: str
    device: str
    status: str  # "ok", "not available" or "failed"
    reason: str = ""
    iterations: int = 0  # timed iterations
    ms_step: Optional[float] = None  # mean wall-clock time of a timed iteration
    images_per_s: Optional[float] = None
    phases_ms: Dict[str, Optional[float]] = dataclasses.field(default_factory=dict)  # mean per iteration
    skipped_updates: int = 0  # pydarknet: updates skipped for a non-finite gradient (less work than a real one)
    loss: str = ""
    ratio: Optional[float] = None  # torch rows: pydarknet img/s / this row's img/s
    ratio_against: str = ""


def ratios(rows: List[Row]) -> None:
    """Each torch row gets pydarknet's img/s (same network, same precision if pydarknet ran it, else fp32) over
    its own."""
    for row in rows:
        if row.engine != "torch" or row.status != "ok":
            continue
        ours = {
            r.precision: r
            for r in rows
            if r.engine == "pydarknet" and r.status == "ok" and (r.network, r.size) == (row.network, row.size)
        }
        mine = ours.get(row.precision) or ours.get("fp32")
        if mine is not None and row.images_per_s:
            row.ratio = mine.images_per_s / row.images_per_s
            row.ratio_against = f"pydarknet {mine.precision}"


def table(rows: List[Row]) -> str:
    head = (
        "| network | size | batch/subdiv | engine | precision | img/s | ms/step | "
        + " | ".join(f"{p} ms" for p in PHASES)
        + " | pydarknet/torch img/s | note |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def ms(v):
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        if r.status == "ok":
            note = f"{r.iterations} timed iteration(s), {r.device}"
            if r.skipped_updates:
                note += f"; {r.skipped_updates} update(s) skipped (non-finite)"
            if r.engine == "torch":
                note += "; loss: squared error (not yolo)"
            cells = [f"{r.images_per_s:,.1f}", ms(r.ms_step)] + [ms(r.phases_ms.get(p)) for p in PHASES]
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f} (vs {r.ratio_against})"
        else:
            note = f"{r.status.upper()}: {r.reason}"
            cells, ratio = ["-", "-"] + ["-"] * len(PHASES), "-"
        lines.append(
            f"| {r.network} | {r.size} | {r.batch}/{r.subdivisions} | {r.engine} | {r.precision} | "
            + " | ".join(cells)
            + f" | {ratio} | {note} |"
        )
    return "\n".join(lines)


def write_json(path, meta, rows):
    from pydarknet.utils.atomic import atomic_write_text

    atomic_write_text(path, json.dumps({"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))


# ----- synthetic data --------------------------------------------------------------------------------------------


def synthetic_batch(rng, batch, size, classes):
    """Random images in [0, 1) and 1..10 random truth boxes per image ([x, y, w, h, class], relative)."""
    images = rng.random((batch, 3, size, size), dtype=np.float32)
    truths = []
    for _ in range(batch):
        k = int(rng.integers(1, 11))
        boxes = np.empty((k, 5), np.float32)
        boxes[:, 0:2] = rng.uniform(0.1, 0.9, (k, 2))
        boxes[:, 2:4] = rng.uniform(0.05, 0.5, (k, 2))
        boxes[:, 4] = rng.integers(0, classes, k)
        truths.append(boxes)
    return images, truths


# ----- timing ----------------------------------------------------------------------------------------------------


class PhaseClock:
    """Marks where each phase of a step begins; ``totals()`` sums the time from each mark to the next by phase.
    With ``events`` the marks are CUDA events on the current stream (GPU time), else wall-clock times (for code
    whose calls return once their work is done)."""

    def __init__(self, events: bool, echo=None):
        self.events = events
        self.echo = echo  # wall-clock marks only: called with (phase, ms) as each phase ends
        self.marks = []

    def mark(self, phase: Optional[str]):
        if self.events:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((phase, event))
        else:
            now = time.perf_counter()
            if self.echo and self.marks and self.marks[-1][0] is not None:
                self.echo(self.marks[-1][0], (now - self.marks[-1][1]) * 1e3)
            self.marks.append((phase, now))

    def totals(self) -> Dict[str, float]:
        """Milliseconds per phase (call after the work has finished); the clock is emptied."""
        out = {}
        for (phase, a), (_, b) in zip(self.marks, self.marks[1:]):
            if phase is None:
                continue
            if self.events:
                b.synchronize()
                elapsed = a.elapsed_time(b)
            else:
                elapsed = (b - a) * 1e3
            out[phase] = out.get(phase, 0.0) + elapsed
        self.marks = []
        return out


def run_timed(step, sync, warmup, iterations, max_seconds, label=None):
    """Run step(k) warmup + iterations times; returns (mean ms per timed step, mean phase ms, timed count,
    extra values summed over timed steps). Stops early once max_seconds have passed and one timed step is in.
    With a label, each iteration's time is printed as it ends."""
    start = time.perf_counter()
    walls, phases, extra = [], [], {}
    for k in range(warmup + iterations):
        t0 = time.perf_counter()
        result = step(k)
        sync()
        wall = (time.perf_counter() - t0) * 1e3
        if label:
            kind = "warm-up" if k < warmup else "timed"
            print(f"  {label}: iteration {k + 1} ({kind}) {wall:.1f} ms", flush=True)
        if k >= warmup:
            walls.append(wall)
            phases.append(result.pop("phases"))
            for key, value in result.items():
                extra[key] = extra.get(key, 0) + value
        if walls and time.perf_counter() - start > max_seconds:
            break
    mean_phases = {p: statistics.fmean(ph.get(p, 0.0) for ph in phases) for p in phases[0]}
    return statistics.fmean(walls), mean_phases, len(walls), extra


# ----- pydarknet -------------------------------------------------------------------------------------------------


def pydarknet_row(base: Row, name, size, precision, device, images, truths, args):
    """Time pydarknet's training step; a DeviceError from the engine (a precision or layer that cannot train
    there) makes the row "not available" with the engine's own words."""
    from pydarknet.errors import DeviceError
    from pydarknet.train.optim import LossScaler, Optimizer
    from pydarknet.train.schedule import learning_rate
    from pydarknet.train.yolo_loss import device_yolo_loss, yolo_loss

    row = dataclasses.replace(base, engine="pydarknet", precision=precision, loss="Darknet yolo loss")
    try:
        net, weights = bench_gpu.load_network(name, size, precision, device, disk_cache=True)
    except DeviceError as e:
        row.status, row.reason = "not available", str(e)
        return row
    desc = net.desc
    desc.net["batch"], desc.net["subdivisions"] = base.batch, base.subdivisions
    heads = net.yolo_layers
    optimizer = Optimizer(net)
    on_device = getattr(net, "_cuda", None) is not None
    scaler = LossScaler() if on_device and precision == "fp16" else None
    row.loss = f"Darknet yolo loss ({'device' if on_device else 'host'})"
    mini = base.batch // base.subdivisions
    row.device = f"{device}{' (CPU emulation)' if on_device and _emulated() else ''}"

    label = f"pydarknet {name} {size} {precision}" if args.progress else None

    def echo(phase, ms):
        print(f"  {label}: {phase} {ms:.1f} ms", flush=True)

    def step(k):
        # wall clock: every call below returns after its stream has finished
        clock = PhaseClock(events=False, echo=echo if label else None)
        clock.mark("optimizer")
        net.zero_grads()
        for s in range(base.subdivisions):
            part = slice(s * mini, (s + 1) * mini)
            clock.mark("forward")
            outputs = net.forward_train(
                images[part], seed=args.seed, iteration=k * base.subdivisions + s, copy_outputs=not on_device
            )
            clock.mark("loss")
            if on_device:
                for i in heads:
                    device_yolo_loss(net, i, truths[part], size, size)
                if scaler is not None:
                    scaler.apply(net)
                clock.mark("backward")
                net.backward_device()
            else:
                grads = {i: yolo_loss(outputs[i], truths[part], desc.layers[i], size, size).grad for i in heads}
                clock.mark("backward")
                net.backward(grads)
        clock.mark("optimizer")
        rate = float(learning_rate(k + 1, desc))
        if on_device:
            if scaler is not None:
                scaler.unscale(net)
            result = optimizer.step_device(net, k + 1, rate=rate)
            if scaler is not None:
                scaler.update(not result.skipped)
        else:
            result = optimizer.step(net.flat_params, net.grads, k + 1, rate=rate)
            net.touch_params()
        clock.mark(None)
        return {"phases": clock.totals(), "skipped": int(result.skipped)}

    try:
        ms_step, phases, count, extra = run_timed(
            step, lambda: None, args.warmup, args.iterations, args.max_seconds, label
        )
    except DeviceError as e:
        row.status, row.reason = "not available", str(e)
        return row
    phases["upload"] = None  # inside forward_train (input and parameters)
    row.status, row.reason = "ok", f"weights {weights}"
    row.ms_step, row.phases_ms, row.iterations = ms_step, phases, count
    row.images_per_s = base.batch / ms_step * 1e3
    row.skipped_updates = extra.get("skipped", 0)
    return row


def _emulated():
    from pydarknet import _core

    return bool(getattr(_core, "cuda_emulated", False))


# ----- PyTorch ---------------------------------------------------------------------------------------------------


def torch_row(base: Row, cpu_model, precision, images, args, momentum, decay, rate):
    import torch

    dev = torch.device(base.device)
    row = dataclasses.replace(base, engine="torch", precision=precision, loss=TORCH_LOSS)
    model = copy.deepcopy(cpu_model).to(dev).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=rate, momentum=momentum, weight_decay=decay)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    mini = base.batch // base.subdivisions
    host = torch.from_numpy(images)
    if dev.type == "cuda":
        host = host.pin_memory()
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    with torch.no_grad():  # the heads' shapes, in eval mode: it leaves the batch-norm statistics alone
        shapes = [o.shape[1:] for o in model.eval()(torch.zeros((1, *images.shape[1:]), device=dev))]
    model.train()
    targets = [torch.rand((mini, *s), device=dev, generator=gen) for s in shapes]
    events = dev.type == "cuda"

    def sync():
        if events:
            torch.cuda.synchronize()

    def step(k):
        clock = PhaseClock(events)
        for s in range(base.subdivisions):
            clock.mark("upload")
            x = host[s * mini : (s + 1) * mini].to(dev, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            clock.mark("forward")
            with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(x)
            clock.mark("loss")
            loss = sum(((o.float() - t) ** 2).sum() for o, t in zip(outputs, targets)) / base.batch
            clock.mark("backward")
            scaler.scale(loss).backward()
        clock.mark("optimizer")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        clock.mark(None)
        sync()
        return {"phases": clock.totals()}

    label = f"torch {base.network} {base.size} {precision}" if args.progress else None
    ms_step, phases, count, _ = run_timed(step, sync, args.warmup, args.iterations, args.max_seconds, label)
    row.status, row.reason = "ok", ""
    row.ms_step, row.phases_ms, row.iterations = ms_step, phases, count
    row.images_per_s = base.batch / ms_step * 1e3
    del model, optimizer, targets
    return row


def graph_check(net, cpu_model, images) -> float:
    """Normalized MSE between the torch module in eval mode (rolling statistics, fp32, on the CPU) and
    pydarknet's inference forward on two images: both must be the same network before their speeds compare."""
    import torch

    x = images[:2]
    want = net.forward(x)
    model = copy.deepcopy(cpu_model).eval()
    with torch.inference_mode():
        got = [t.numpy() for t in model(torch.from_numpy(x))]
    return max(bench_gpu.nmse(g, w) for g, w in zip(got, want))


# ----- main ------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    import torch

    from pydarknet import _core
    from pydarknet.core.graph import load_network_desc
    from pydarknet.train.schedule import images_per_iteration

    gpu = args.device == "cuda"
    if gpu:
        if not torch.cuda.is_available() or _core.cuda_device_count() == 0 or _emulated():
            print(
                "bench_gpu_train: --device cuda needs a CUDA GPU for both PyTorch and pydarknet (this pydarknet "
                f"engine: built_with_cuda={_core.built_with_cuda}, emulated={_emulated()}, "
                f"devices={_core.cuda_device_count()}; torch.cuda.is_available()={torch.cuda.is_available()}); "
                "use --smoke or --device cpu to check the code paths without one",
                file=sys.stderr,
            )
            return 2
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        ours_device, torch_device = "cuda", "cuda"
        where = f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        emulated = _core.built_with_cuda and _emulated() and _core.cuda_device_count() > 0
        if args.pydarknet_device == "auto":
            ours_device = "cuda" if emulated else "cpu"
        elif args.pydarknet_device == "cuda" and not emulated:
            print("bench_gpu_train: --pydarknet-device cuda with --device cpu needs the CUDA emulation build")
            return 2
        else:
            ours_device = args.pydarknet_device
        torch_device = "cpu"
        where = f"CPU ({platform.processor() or platform.machine()}); NOT A GPU"
    meta = {
        "script": "benchmarks/bench_gpu_train.py",
        "argv": sys.argv[1:] if argv is None else list(argv),
        "device": args.device,
        "where": where,
        "smoke": bool(args.smoke),
        "torch": torch.__version__,
        "pydarknet_device": ours_device + (" (CPU emulation of CUDA)" if ours_device == "cuda" and not gpu else ""),
        "torch_loss": TORCH_LOSS,
        "phases": list(PHASES),
        "note": "pydarknet's upload happens inside forward_train (its upload column is empty)",
    }
    print(f"# bench_gpu_train: {where}; PyTorch {torch.__version__}; pydarknet on {meta['pydarknet_device']}")
    if args.smoke or not gpu:
        print("# a check that the code runs: these timings are not GPU speed figures")
    loss_place = "host" if args.device == "cpu" else "device"
    print(f"# torch loss: {TORCH_LOSS}; pydarknet: Darknet's yolo loss on the {loss_place}", flush=True)
    rows: List[Row] = []
    failed = False
    for spec in args.models.split(","):
        name, size, overrides = parse_model(spec, args)
        cfg = ROOT / "cfg" / f"{name}.cfg"
        desc = load_network_desc(str(cfg), width=size, height=size)
        desc.net.update(overrides)
        batch = images_per_iteration(desc)
        subdivisions = int(desc.net["subdivisions"])
        classes = int(desc.layers[desc.yolo_layers[0]].options["classes"])
        rng = np.random.default_rng(args.seed)
        images, truths = synthetic_batch(rng, batch, size, classes)
        base = Row(name, size, batch, subdivisions, "", "", ours_device, "")

        # The torch module is built from the starting parameters (before pydarknet trains them), on the CPU.
        cpu_model = None
        if "torch" in args.engine_list:
            ref, _ = bench_gpu.load_network(name, size, "fp32", "cpu", disk_cache=True)
            try:
                cpu_model = build_torch_model(ref, fold_batchnorm=False)
                agree = graph_check(ref, cpu_model, images)
                if not agree <= GRAPH_AGREEMENT:
                    failed = True
                    print(f"{name} {size}: the torch module differs from pydarknet's forward (nmse {agree:.1e})")
                else:
                    print(f"{name} {size}: torch module = pydarknet forward (eval mode, nmse {agree:.1e})")
            except NotImplementedError as e:
                cpu_model = None
                rows.append(dataclasses.replace(base, engine="torch", precision="-", status="failed", reason=str(e)))
                failed = True
            del ref
        opts = desc.net
        for precision in args.precision_list if "pydarknet" in args.engine_list else []:
            try:
                row = pydarknet_row(base, name, size, precision, ours_device, images, truths, args)
            except Exception as e:  # a failed configuration is reported, the others still run
                row = dataclasses.replace(
                    base, engine="pydarknet", precision=precision, status="failed", reason=f"{type(e).__name__}: {e}"
                )
            failed |= row.status == "failed"
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            gc.collect()
            if args.json:
                write_json(args.json, meta, rows)
        for precision in args.precision_list if cpu_model is not None else []:
            base_t = dataclasses.replace(base, device=torch_device)
            try:
                row = torch_row(
                    base_t,
                    cpu_model,
                    precision,
                    images,
                    args,
                    float(opts.get("momentum", 0.9)),
                    float(opts.get("decay", 0.0005)),
                    float(opts.get("learning_rate", 0.001)),
                )
            except Exception as e:  # likewise
                row = dataclasses.replace(
                    base_t, engine="torch", precision=precision, status="failed", reason=f"{type(e).__name__}: {e}"
                )
            failed |= row.status == "failed"
            rows.append(row)
            ratios(rows)
            print(table([row]).splitlines()[-1], flush=True)
            if gpu:
                torch.cuda.empty_cache()
            if args.json:
                write_json(args.json, meta, rows)
    ratios(rows)
    print("\n" + table(rows))
    if any(r.status == "not available" for r in rows):
        print("\nnot available: the engine refused that precision or layer (its own message is in the note)")
    if args.json:
        write_json(args.json, meta, rows)
    return 1 if failed or not any(math.isfinite(r.ms_step or math.nan) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
