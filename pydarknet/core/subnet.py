"""Once-for-all sub-networks of FPN/PAN detectors: drop the top detection levels of a trained network.

Scaled-YOLOv4 (section 5.5) shows that an FPN-like detector is a naive once-for-all model: removing the top stages
and their detection branches from the trained YOLOv4-P7 gives YOLOv4-P7\\P7 and YOLOv4-P7\\P7\\P6, which are the most
accurate at middle and low input sizes, with no retraining. Here a level is named by its stride: the [yolo] layer
whose grid is the input size / 2^k is Pk. Dropping levels keeps only the layers that the remaining [yolo] layers
still read (following routes, shortcuts and each layer's implicit input); everything used only by the dropped heads
goes: their head convs and the path stages that feed only them (in the PAN, the down-sampling convs, concatenations
and CSP blocks above the highest level kept). The remaining layers keep their order and their parameters, so their
tensors are a subsequence of the full ``.weights`` file; :attr:`Subnet.kept` maps each new layer to the old one and
:func:`extract_weights` re-saves the full file's tensors for the sub-network. A kept layer whose implicit input was
another kept layer that no longer precedes it gets an explicit ``[route]`` (no parameters) in front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np

from pydarknet.core import graph
from pydarknet.core import weights as weights_io
from pydarknet.core.cfg import read_cfg
from pydarknet.errors import CfgError

__all__ = ["Subnet", "levels", "subnet", "extract_weights"]

_REF_KEYS = {"route": "layers", "shortcut": "from", "sam": "from", "scale_channels": "from"}


@dataclass
class Subnet:
    """A sub-network: its cfg text, for each of its layers the full network's layer (None for an inserted
    route), and the full network's layers it leaves out."""

    source: str
    dropped: List[str]
    text: str
    kept: List[Optional[int]]
    removed: List[int]
    heads_removed: Dict[int, str] = field(default_factory=dict)

    def save(self, path) -> Path:
        from pydarknet.utils.atomic import atomic_write_text

        atomic_write_text(Path(path), self.text)
        return Path(path)


def levels(desc) -> Dict[int, str]:
    """{[yolo] layer index: 'Pk'} with 2^k the ratio of the input width to the layer's grid width."""
    out = {}
    width = desc.input_shape[2]
    for index in desc.yolo_layers:
        grid = desc.layers[index].out_shape[2]
        k = math.log2(width / grid) if grid else -1
        if k != int(k):
            raise CfgError(
                f"[yolo] layer {index} has a {grid}-wide grid for a {width}-wide input, not a power-of-two stride",
                desc.path,
                desc.layers[index].line,
            )
        out[index] = f"P{int(k)}"
    return out


def _deps(layer) -> List[int]:
    deps = list(layer.inputs)
    if layer.type != "route" and layer.index > 0:
        deps.append(layer.index - 1)
    return deps


def subnet(cfg, drop: Iterable[str], *, lenient: bool = False) -> Subnet:
    """The cfg without the detection levels ``drop`` (e.g. ``["P7"]`` or ``["P7", "P6"]``) and every layer only
    they need. Raises CfgError for an unknown level or one that would leave no head."""
    path = Path(cfg)
    sections = read_cfg(path, lenient)
    desc = graph.build_network(read_cfg(path, lenient), path, lenient)
    names = levels(desc)
    drop = [d.strip().upper() for d in drop if d.strip()]
    available = sorted(set(names.values()), key=lambda n: int(n[1:]))
    for d in drop:
        if d not in available:
            raise CfgError(f"no detection level {d} to drop; the [yolo] layers are {', '.join(available)}", path)
    kept_heads = [i for i, n in names.items() if n not in drop]
    if not kept_heads:
        raise CfgError(f"dropping {', '.join(drop)} would leave no [yolo] layer", path)
    needed = set()
    stack = list(kept_heads)
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(_deps(desc.layers[i]))
    new_index: Dict[int, int] = {}
    kept: List[Optional[int]] = []
    blocks: List[str] = []
    for layer in desc.layers:
        if layer.index not in needed:
            continue
        prev = layer.index - 1
        if layer.type != "route" and layer.index > 0 and (not kept or kept[-1] != prev):
            blocks.append(f"[route]\nlayers={new_index[prev]}\n")
            kept.append(None)
        new_index[layer.index] = len(kept)
        kept.append(layer.index)
        blocks.append(_section_text(sections[layer.index + 1], layer, new_index))
    removed = [l.index for l in desc.layers if l.index not in needed]
    heads = {i: names[i] for i in removed if i in names}
    header = [
        f"# {path.name} without detection level(s) {', '.join(drop)} (Scaled-YOLOv4 section 5.5 sub-network).",
        f"# Layers of the full network kept, in order (new <- old): {_ranges(kept)}.",
        "# Their weights are those layers' tensors in the full .weights file (pydarknet subnet --weights).",
    ]
    text = "\n".join(header) + "\n\n" + _section_text(sections[0], None, {}) + "\n" + "\n".join(blocks)
    return Subnet(str(path), drop, text, kept, removed, heads)


def _section_text(sec, layer, new_index) -> str:
    lines = [f"[{sec.name}]"]
    ref_key = _REF_KEYS.get(layer.type) if layer is not None else None
    for key, (value, _) in sec.items.items():
        if key == ref_key:
            old_refs = layer.options.get(key, layer.inputs)
            old_refs = old_refs if isinstance(old_refs, list) else [old_refs]
            raw = [v for v in value.split("#")[0].split(",") if v]
            me = new_index[layer.index]
            parts = []
            for r, written in zip(old_refs, raw):
                n = new_index[r]
                parts.append(str(n - me) if written.strip().startswith("-") else str(n))
            value = ",".join(parts)
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _ranges(kept) -> str:
    parts, run = [], []
    for old in kept:
        if old is not None and run and old == run[-1] + 1:
            run.append(old)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [old] if old is not None else []
        if old is None:
            parts.append("route")
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts)


def extract_weights(full_cfg, full_weights, sub: Subnet, sub_cfg, out) -> Path:
    """Write the sub-network's ``.weights``: each kept layer's tensors copied from the full network's file."""
    full = graph.load_network_desc(full_cfg)
    part = graph.load_network_desc(sub_cfg)
    params = np.zeros(full.param_count, dtype=np.float32)
    version, seen, _ = weights_io.load_into(full, params, full_weights)
    target = np.zeros(part.param_count, dtype=np.float32)
    if len(part.layers) != len(sub.kept):
        raise CfgError(f"{sub_cfg} has {len(part.layers)} layers, the sub-network {len(sub.kept)}", sub_cfg)
    for layer, old in zip(part.layers, sub.kept):
        if old is None:
            continue
        source = full.layers[old]
        for t in layer.tensors:
            s = source.tensor(t.name)
            if s.shape != t.shape:
                raise CfgError(
                    f"layer {layer.index} tensor {t.name} is {t.shape}, layer {old} of the full network {s.shape}",
                    sub_cfg,
                    layer.line,
                )
            target[t.offset : t.offset + t.size] = params[s.offset : s.offset + s.size]
    weights_io.save_from(part, target, out, seen=seen, version=version)
    return Path(out)
