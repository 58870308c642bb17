"""Fingerprints of the CPU engine's outputs on every shipped cfg, to show a refactoring changed no bit.

Each cfg gets seeded random weights and a seeded random input at a small size; the script prints one sha256 per
cfg over the raw float32 bytes of every output head (and of a training forward + backward where the cfg trains).
Run it before and after a change and diff the two listings.

    python tools/output_fingerprint.py > before.txt
"""

import hashlib
import sys
from pathlib import Path

import numpy as np

import pydarknet

CFG_DIR = Path(__file__).resolve().parent.parent / "cfg"


def fingerprint(cfg: Path, size: int) -> str:
    net = pydarknet.load(str(cfg), width=size, height=size, seed=1234)
    c, h, w = net.input_shape if hasattr(net, "input_shape") else net.desc.input_shape
    x = np.random.default_rng(99).random((2, c, h, w), dtype=np.float32)
    digest = hashlib.sha256()
    for out in net.forward(x):
        digest.update(np.ascontiguousarray(out, dtype=np.float32).tobytes())
    inference = digest.hexdigest()[:16]
    try:
        heads = net.forward_train(x, seed=7, iteration=3)
    except pydarknet.DarknetError:
        return f"{inference} (not trainable)"
    train = hashlib.sha256()
    grad_rng = np.random.default_rng(5)
    for out in heads.values():
        train.update(np.ascontiguousarray(out, dtype=np.float32).tobytes())
    net.zero_grads()
    input_grad = net.backward(
        {i: grad_rng.standard_normal(o.shape).astype(np.float32) for i, o in heads.items()}, input_grad=True
    )
    train.update(np.ascontiguousarray(net.grads).tobytes())
    train.update(np.ascontiguousarray(input_grad, dtype=np.float32).tobytes())
    return f"{inference} {train.hexdigest()[:16]}"


def main() -> int:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 96
    for cfg in sorted(CFG_DIR.glob("*.cfg")):
        try:
            print(f"{cfg.name:44s} {fingerprint(cfg, size)}", flush=True)
        except pydarknet.DarknetError as exc:
            print(f"{cfg.name:44s} error: {type(exc).__name__}: {str(exc)[:80]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
