"""``pydarknet train``, ``partial``, ``calc-anchors``, ``finetune-cfg`` and ``synthetic``: the training side of the
command line."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

from pydarknet.cli.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from pydarknet.errors import UsageError
from pydarknet.utils.atomic import atomic_write_text


def _kind(path):
    """'data' (.data / data.yaml), 'cfg' or 'weights' from the name, then from the contents."""
    name = str(path).lower()
    if name.endswith((".data", ".yaml", ".yml")):
        return "data"
    if name.endswith(".cfg"):
        return "cfg"
    if name.endswith(".weights") or ".conv." in os.path.basename(name):
        return "weights"
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    text = head.decode("utf-8", errors="replace")
    if "[net]" in text or "[network]" in text:
        return "cfg"
    if "classes" in text and "\x00" not in text:
        return "data"
    return "weights"


def _order(files):
    """``CFG DATA [WEIGHTS]`` or Darknet's ``DATA CFG [WEIGHTS]``, told apart by extension or contents."""
    for f in files:
        if not os.path.isfile(f):
            raise UsageError(f"{f}: no such file")
    if len(files) not in (2, 3):
        raise UsageError("expected CFG DATA [WEIGHTS]")
    kinds = {}
    for f in files:
        kind = _kind(f)
        if kind in kinds:
            raise UsageError(f"{kinds[kind]} and {f} both look like {kind} files; expected CFG DATA [WEIGHTS]")
        kinds[kind] = f
    if "cfg" not in kinds or "data" not in kinds:
        raise UsageError(f"could not tell the cfg and the .data/data.yaml apart among {', '.join(files)}")
    return kinds["cfg"], kinds["data"], kinds.get("weights")


def cmd_train(args):
    from pydarknet.errors import DarknetError
    from pydarknet.train.distributed import Communicator

    if args.gpus is not None:
        return _train_on_gpus(args)

    try:
        comm = Communicator.create(timeout=args.dist_timeout)
    except (DarknetError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not comm.distributed:
        return _train(args, comm)
    # One rank's error leaves the others waiting in an exchange that cannot complete: say what happened on this
    # rank, then end the whole run (MPI_Abort) instead of letting every rank wait for its time-out.
    try:
        return _train(args, comm)
    except BaseException as e:
        message = str(e) if isinstance(e, (DarknetError, UsageError)) else f"{type(e).__name__}: {e}"
        print(f"pydarknet: error: rank {comm.rank} of {comm.size}: {message}", file=sys.stderr, flush=True)
        comm.abort(EXIT_INTERRUPTED if isinstance(e, KeyboardInterrupt) else EXIT_USAGE)
        raise


def _train(args, comm):
    from pydarknet.errors import DarknetError
    from pydarknet.train.trainer import Trainer, TrainOptions

    cfg, data, weights = _order(args.files)
    for opt in ("iterations", "max_batches", "batch", "subdivisions", "save_every", "save_last_every", "map_every"):
        value = getattr(args, opt)
        if value is not None and value < 1:
            raise UsageError(f"--{opt.replace('_', '-')} {value}: must be at least 1")
    if args.workers < 0:
        raise UsageError(f"--workers {args.workers}: must be 0 or more")
    if args.backup is not None and os.path.exists(args.backup) and not os.path.isdir(args.backup):
        raise UsageError(f"--backup {args.backup}: is a file, not a folder (the folder is created if missing)")
    options = TrainOptions(
        backup=args.backup,
        max_batches=args.max_batches,
        batch=args.batch,
        subdivisions=args.subdivisions,
        seed=args.seed,
        workers=args.workers,
        device=args.device or "cpu",
        precision=args.precision,
        clear=args.clear,
        map=args.map,
        map_every=args.map_every,
        save_every=args.save_every,
        save_last_every=args.save_last_every,
        lenient=args.lenient,
        quiet=args.quiet,
        progress=args.progress,
        sync_bn=args.sync_bn,
        dist_timeout=args.dist_timeout,
        dist_backend=args.dist_backend,
    )
    try:
        trainer = Trainer(cfg, data, weights, options, comm=comm)
        result = trainer.run(stop_after=args.iterations)
    except (DarknetError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    if not args.quiet and comm.is_root:
        done = f"{result.iterations} iterations"
        print(
            f"done: {done}; weights in {trainer.backup}"
            + (f"; best mAP@0.5 {result.best_map:.4f}" if args.map and result.best_map >= 0 else "")
        )
    return EXIT_OK


def _train_on_gpus(args):
    """``--gpus LIST``: one GPU trains in this process; several start one rank per GPU through mpirun (see
    pydarknet.train.launch), each running this command without --gpus and with --device cuda:<its GPU>."""
    from pydarknet import _core
    from pydarknet.train import launch

    gpus = launch.parse_gpus(args.gpus)
    if args.device not in (None, "cuda"):
        raise UsageError(
            f"--gpus {args.gpus} --device {args.device}: --gpus chooses each rank's GPU; drop --device "
            "(or train on one device with --device alone)"
        )
    launch.check_not_launched()
    launch.check_gpus(gpus, _core.cuda_device_count(), _core.built_with_cuda)
    cfg, _, _ = _order(args.files)  # a missing or ambiguous file is said once here, not once per rank
    if len(gpus) == 1:
        args.device, args.gpus = f"cuda:{gpus[0]}", None
        return cmd_train(args)
    if args.dist_backend == "nccl" and len(set(gpus)) < len(gpus):
        raise UsageError(
            f"--gpus {args.gpus} --dist-backend nccl: NCCL needs a GPU per rank; list each GPU once, or sum "
            "through host memory with --dist-backend mpi (the default auto does when a GPU is shared)"
        )
    _check_batch_splits(args, cfg, len(gpus))
    mpirun = launch.find_launcher()
    command = launch.mpirun_command(mpirun, [rank_argv(args, f"cuda:{g}") for g in gpus])
    env = launch.rank_environment(len(gpus))
    if not args.quiet:
        placed = ", ".join(f"rank {r} on cuda:{g}" for r, g in enumerate(gpus))
        print(
            f"--gpus {args.gpus}: {len(gpus)} ranks started by {mpirun} ({placed}; OMP_NUM_THREADS="
            f"{env['OMP_NUM_THREADS']})",
            file=sys.stderr,
            flush=True,
        )
    return launch.run_ranks(command, env)


def _check_batch_splits(args, cfg, ranks: int) -> None:
    """Refuses, once and before any rank starts, a mini-batch the ranks cannot share equally (each rank would
    otherwise stop with the same message). A cfg that does not load is left to the ranks, which name its
    problem as a single process does."""
    from pydarknet.core.graph import load_network_desc
    from pydarknet.errors import DarknetError
    from pydarknet.train.distributed import shard_slots
    from pydarknet.train.schedule import images_per_iteration

    try:
        desc = load_network_desc(cfg, lenient=args.lenient)
        for key in ("batch", "subdivisions"):
            if getattr(args, key) is not None:
                desc.net[key] = int(getattr(args, key))
        batch, subdivisions = images_per_iteration(desc), int(desc.net["subdivisions"])
    except (DarknetError, ValueError, KeyError):
        return
    try:
        shard_slots(0, ranks, batch, subdivisions)
    except DarknetError as e:
        raise UsageError(f"--gpus {args.gpus}: {e}") from None


def rank_argv(args, device: str):
    """The ``train`` command line of one rank of ``--gpus``: ``args`` (the launcher's parsed command) written back
    as options, without --gpus and with ``--device device``. Parsing it gives ``args`` again, with that device."""
    parser = argparse.ArgumentParser(add_help=False)
    add_train_arguments(parser)
    argv = ["train", *args.files]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("gpus", "device"):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        name = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(name if value else "--no-" + name[2:])
        elif isinstance(action, argparse._StoreTrueAction):
            argv.append(name)
        else:
            argv.append(f"{name}={value}")  # one token: a value that starts with '-' stays a value
    return argv + ["--device", device]


def cmd_partial(args):
    from pydarknet.errors import DarknetError
    from pydarknet.train.checkpoint import partial

    try:
        r = partial(args.cfg, args.weights, args.out, args.layers, lenient=args.lenient)
    except (DarknetError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    print(f"wrote {r.path}: layers 0..{r.layers - 1}, {r.floats} floats, {r.bytes} bytes")
    return EXIT_OK


def cmd_calc_anchors(args):
    from pydarknet.errors import DarknetError
    from pydarknet.train.anchors import calc_anchors

    try:
        r = calc_anchors(args.data, args.num_of_clusters, args.width, args.height, seed=args.seed)
    except (DarknetError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    print(f"{r.boxes} boxes in {args.data}")
    print(r.report())
    out = pathlib.Path(args.out)
    atomic_write_text(out, r.anchors_text() + "\n")
    counters = out.with_name("counters_per_class.txt")
    atomic_write_text(counters, r.counters_text() + "\n")
    print(f"saved {out} and {counters}")
    return EXIT_OK


def cmd_finetune_cfg(args):
    from pydarknet.errors import DarknetError
    from pydarknet.train.finetune import ITERATIONS_PER_CLASS, MIN_MAX_BATCHES, finetune_cfg
    from pydarknet.utils.atomic import atomic_write_text

    out = pathlib.Path(args.out)
    if out.exists() and out.resolve() == pathlib.Path(args.cfg).resolve():
        raise UsageError(f"{out}: the output would overwrite the base cfg; write it to another file")
    try:
        r = finetune_cfg(
            args.cfg,
            args.data,
            width=args.width,
            height=args.height,
            max_batches=args.max_batches,
            anchors=args.anchors,
            batch=args.batch,
            subdivisions=args.subdivisions,
            seed=args.seed,
            lenient=args.lenient,
        )
        atomic_write_text(out, r.text)
    except (DarknetError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    print(f"wrote {out}: {args.cfg} for {args.data} ({r.classes} classes, {r.train_images} training images)")
    for change in r.changes:
        print(f"  {change}")
    if args.max_batches is None:
        rule = (
            f"Darknet's rule: classes*{ITERATIONS_PER_CLASS} = {r.classes * ITERATIONS_PER_CLASS}, but not less "
            f"than the {r.train_images} training images nor {MIN_MAX_BATCHES}"
        )
    else:
        rule = "--max-batches"
    print(f"max_batches {r.max_batches} ({rule})" + (f", steps {r.steps[0]},{r.steps[1]}" if r.steps else ""))
    if r.anchors is not None:
        print(f"anchors from the training labels: average IoU {100 * r.anchors_iou:.2f} % with the closest one")
    print(
        f"train with:\n  pydarknet train {out} {args.data} [BACKBONE.weights]\n"
        "it prints the hours left after every iteration: on a CPU, look at them after a few iterations and, if "
        "the run is too long, write the cfg again with a smaller --max-batches (steps and burn_in follow it)"
    )
    return EXIT_OK


def cmd_synthetic(args):
    from pydarknet.data.synthetic import generate
    from pydarknet.train.anchors import calc_anchors
    from pydarknet.train.starter import starter_cfg

    if args.size % 32:
        raise UsageError(f"--size must be a multiple of 32 (the starter cfg's stride), got {args.size}")
    data = generate(
        args.out, n_train=args.train, n_valid=args.valid, size=args.size, classes=args.classes, seed=args.seed
    )
    anchors = calc_anchors(str(data), 6, args.size, args.size, seed=args.seed).anchors
    cfg = data.with_name(data.stem + "-tiny.cfg")
    atomic_write_text(cfg, starter_cfg(args.classes, args.size, args.size, anchors))
    print(f"wrote {data} and {cfg}; train with:\n  pydarknet train {cfg} {data}")
    return EXIT_OK


def add_train_arguments(t):
    """The options of ``pydarknet train`` (also used to write a ``--gpus`` rank's command line back)."""
    t.add_argument("files", nargs="+", metavar="FILE", help="CFG DATA [WEIGHTS]")
    t.add_argument("--backup", help="folder for weights, logs and charts (default: the .data's backup=)")
    t.add_argument("--max-batches", type=int, help="override [net] max_batches (iterations)")
    t.add_argument("--batch", type=int, help="override [net] batch (images per iteration)")
    t.add_argument("--subdivisions", type=int, help="override [net] subdivisions")
    t.add_argument("--iterations", type=int, help="stop after this many iterations (resumable with _last.weights)")
    t.add_argument("--seed", type=int, help="random seed (default: the resumed run's, else 0)")
    t.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="image loading processes (default min(4, CPUs); 0 loads in the training process)",
    )
    t.add_argument(
        "--device",
        help="cpu, cuda or cuda:N: where the forward/backward passes, the [yolo] loss and the update run (default "
        "cpu; under mpirun/srun `cuda` gives each rank of a machine its own GPU)",
    )
    t.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16"],
        help="with --device cuda: fp16 or bf16 mixed precision (the convolution and [connected] operands rounded "
        "to that type, float32 sums, storage, batch-norm and update; fp16 with dynamic loss scaling). These "
        "training kernels are not tensor-core kernels yet: no speed-up, no memory saving (default fp32)",
    )
    t.add_argument(
        "--gpus",
        metavar="LIST",
        help="train on these GPUs of this machine, as Darknet's -gpus: a comma-separated list of GPU indices "
        "(`--gpus 0,1,2,3`; `--gpus 4` is GPU 4 alone). Several GPUs start one rank per GPU through MPICH's "
        "mpirun (pydarknet[dist]), rank r on the r-th listed GPU; the cfg's batch stays the global batch, split "
        "among the ranks (Darknet gives every GPU a whole batch). A GPU listed twice is shared by two ranks "
        "(summing through host memory; NCCL needs a GPU per rank)",
    )
    t.add_argument("--clear", action="store_true", help="reset the iteration counter of WEIGHTS (Darknet's -clear)")
    t.add_argument("--map", action="store_true", help="compute mAP@0.5 on the valid list and keep _best.weights")
    t.add_argument("--map-every", type=int, help="iterations between mAP evaluations (default max(100, 4 epochs))")
    t.add_argument("--save-every", type=int, help="iterations between <cfg>_<N>.weights (default 1000)")
    t.add_argument("--save-last-every", type=int, default=100, help="iterations between _last.weights (100)")
    t.add_argument("--lenient", action="store_true", help="warn instead of failing on unknown cfg keys")
    t.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    t.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with several ranks (--gpus, mpirun, srun): batch-norm statistics over all ranks' images (default on)",
    )
    t.add_argument(
        "--dist-timeout",
        type=float,
        default=600.0,
        help="with several ranks: seconds a rank waits for the others before it names the silent ones and stops (600)",
    )
    t.add_argument(
        "--dist-backend",
        choices=("auto", "mpi", "nccl"),
        default="auto",
        help="with several GPU ranks (--gpus, or mpirun/srun with --device cuda): sum the gradients with NCCL on "
        "the GPUs (nccl), through host memory over MPI (mpi), or NCCL when every rank can load it (auto, the default)",
    )
    t.add_argument("--quiet", "-q", action="store_true")


def add_parsers(sub):
    t = sub.add_parser(
        "train",
        help="train a detector as Darknet's `detector train` does",
        description="Train CFG on the images of DATA (a Darknet .data or an ultralytics data.yaml), optionally "
        "starting from WEIGHTS (full weights, a backbone like yolov4-tiny.conv.29, or a "
        "_last.weights to resume exactly). Darknet's order DATA CFG [WEIGHTS] is accepted too.",
        epilog="Writes <backup>/<cfg>_last.weights every 100 iterations (with a .state file for exact resume), "
        "<cfg>_<N>.weights every 1000, <cfg>_final.weights at max_batches, <cfg>_best.weights with --map, "
        "results.csv and chart.png.",
    )
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    p = sub.add_parser("partial", help="keep the first N layers of a weights file (Darknet's `partial`)")
    p.add_argument("cfg")
    p.add_argument("weights")
    p.add_argument("out")
    p.add_argument("layers", type=int, metavar="N")
    p.add_argument("--lenient", action="store_true")
    p.set_defaults(func=cmd_partial)

    a = sub.add_parser("calc-anchors", help="k-means anchors for a dataset (Darknet's `detector calc_anchors`)")
    a.add_argument("data", help=".data file or image list file")
    a.add_argument("-n", "--num-of-clusters", type=int, default=9)
    a.add_argument("--width", type=int, default=416)
    a.add_argument("--height", type=int, default=416)
    a.add_argument("--seed", type=int)
    a.add_argument(
        "--out",
        default="anchors.txt",
        help="anchors file (default anchors.txt, as Darknet; counters_per_class.txt goes beside it)",
    )
    a.set_defaults(func=cmd_calc_anchors)

    f = sub.add_parser(
        "finetune-cfg",
        help="write the cfg for fine-tuning a model on a dataset (classes, filters, anchors, max_batches, steps)",
        description="Edit BASE_CFG for DATA as Darknet's custom-training guide says: classes= in every [yolo], "
        "filters=(classes+5)*<anchors in mask> in the [convolutional] before it, anchors from the training labels "
        "(k-means as calc-anchors), max_batches = classes*2000 but at least the number of training images and "
        "6000, steps at 80% and 90%, burn_in at most a third of max_batches. Every other line of BASE_CFG, "
        "comments included, is kept.",
    )
    f.add_argument("cfg", metavar="BASE_CFG", help="the released model's cfg (e.g. cfg/yolov4-tiny.cfg)")
    f.add_argument("data", metavar="DATA", help=".data file or data.yaml of the new dataset")
    f.add_argument("-o", "--out", required=True, help="the cfg to write")
    f.add_argument("--width", type=int, help="network input width (a multiple of 32; default: the base cfg's)")
    f.add_argument("--height", type=int, help="network input height (a multiple of 32; default: the base cfg's)")
    f.add_argument("--max-batches", type=int, help="iterations to train (default: Darknet's rule above)")
    f.add_argument("--batch", type=int, help="images per iteration (default: the base cfg's)")
    f.add_argument("--subdivisions", type=int, help="default: the base cfg's")
    f.add_argument(
        "--anchors",
        choices=("auto", "keep"),
        default="auto",
        help="auto: k-means on the training labels (default); keep: the base cfg's anchors",
    )
    f.add_argument("--seed", type=int, default=0, help="k-means seed")
    f.add_argument("--lenient", action="store_true", help="warn instead of failing on unknown cfg keys")
    f.set_defaults(func=cmd_finetune_cfg)

    s = sub.add_parser(
        "synthetic",
        help="write a synthetic detection dataset (shapes) with a .data file and a small cfg to train on it",
    )
    s.add_argument("out", help="output folder")
    s.add_argument("--train", type=int, default=400)
    s.add_argument("--valid", type=int, default=80)
    s.add_argument("--size", type=int, default=128, help="image and network size (a multiple of 32)")
    s.add_argument("--classes", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synthetic)
