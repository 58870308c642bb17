"""The CUDA network's activation plan (csrc/core/plan.h), checked without a GPU.

The plan decides where every layer's output lives in the device arena: views for identity layers and sliced
routes, routes written in place by the layers they concatenate, shortcuts folded into the convolution before
them, and buffers reused once their last reader has run. These tests replay the plan on numpy "device memory"
for every cfg the project ships: each running layer first checks that every input it reads holds exactly that
layer's true output (a random token array; routes and identities get the values their semantics give), then
writes its own true output into its place; layers that run no kernel must find their true output already in
place; kept layers must still hold theirs at the end. A plan that lets a write clobber a live value, places a
view wrongly or frees a buffer too early fails here.
"""

import pathlib

import numpy as np
import pytest

import pydarknet
from pydarknet import _core

CFG_DIR = pathlib.Path(__file__).resolve().parents[1] / "cfg"
CFGS = sorted(p.stem for p in CFG_DIR.glob("*.cfg"))
IDENTITY = {"dropout", "cost", "empty"}


def reads(layer, residual):
    """Layers whose outputs `layer` reads when its kernel runs."""
    refs = [] if layer.type == "route" or layer.index == 0 else [layer.index - 1]
    refs += [r for r in layer.inputs if r not in refs]
    if residual >= 0:
        refs.append(residual)
    return refs


def true_outputs(net, batch, rng):
    """One token array (batch, size) per layer: random, except where the layer's semantics fix it."""
    truth = []
    for layer in net.desc.layers:
        size = int(np.prod(layer.out_shape))
        if layer.type == "route":
            groups, group_id = layer.options["groups"], layer.options["group_id"]
            parts = []
            for r in layer.inputs:
                part = truth[r].shape[1] // groups
                parts.append(truth[r][:, part * group_id : part * (group_id + 1)])
            truth.append(np.concatenate(parts, axis=1))
        elif layer.type in IDENTITY and layer.index > 0:
            truth.append(truth[-1])
        else:
            truth.append(rng.random((batch, size), dtype=np.float32))
    return truth


class Arena:
    """The plan's buffers as numpy arrays, addressed through the layers' views."""

    def __init__(self, net, plan, batch):
        self.net, self.plan, self.batch = net, plan, batch
        self.buffers = [np.full(batch * c, np.nan, np.float32) for c in plan["capacity"]]

    def place(self, i):
        s = self.plan["storage"][i]
        return self.plan["buffer_of"][s], self.plan["storage_size"][s], self.plan["offset"][i]

    def spans(self, i):
        buffer, stride, offset = self.place(i)
        size = int(np.prod(self.net.desc.layers[i].out_shape))
        return buffer, [(b * stride + offset, b * stride + offset + size) for b in range(self.batch)]

    def read(self, i):
        buffer, spans = self.spans(i)
        return np.stack([self.buffers[buffer][a:z] for a, z in spans])

    def write(self, i, values):
        buffer, spans = self.spans(i)
        for b, (a, z) in enumerate(spans):
            assert z <= len(self.buffers[buffer]), f"layer {i} writes past its buffer"
            self.buffers[buffer][a:z] = values[b]


def replay(net, plan, batch=2, seed=0):
    layers = net.desc.layers
    truth = true_outputs(net, batch, np.random.default_rng(seed))
    arena = Arena(net, plan, batch)
    kept = set(net._core.keep)
    for i, layer in enumerate(layers):
        residual = plan["residual"][i]
        if plan["runs"][i]:
            out_buffer, out_spans = arena.spans(i)
            for r in reads(layer, residual):
                np.testing.assert_array_equal(
                    arena.read(r), truth[r], err_msg=f"layer {i} ({layer.type}) reads layer {r}: wrong values"
                )
                in_buffer, in_spans = arena.spans(r)
                if in_buffer == out_buffer:
                    for a, z in out_spans:
                        for c, d in in_spans:
                            assert z <= c or d <= a, f"layer {i} writes over its input {r}"
            # a convolution with a folded shortcut writes the shortcut's output
            arena.write(i, truth[i + 1] if residual >= 0 else truth[i])
        else:
            np.testing.assert_array_equal(
                arena.read(i), truth[i], err_msg=f"layer {i} ({layer.type}) runs no kernel but its output is wrong"
            )
    for i in range(len(layers)):
        if i in kept:
            np.testing.assert_array_equal(arena.read(i), truth[i], err_msg=f"kept layer {i} lost its output")
    return truth


MIN_SIZE = {"yolov4-p7": 128}  # its coarsest level has stride 128


def load(name, size=64):
    size = max(size, MIN_SIZE.get(name, 0))
    return pydarknet.load(str(CFG_DIR / f"{name}.cfg"), width=size, height=size)


# Views and folding both on (the default) and both off for every cfg; one without the other for a few.
MIXED = ["yolov3", "yolov4", "yolov4-tiny", "yolov4-p5", "yolov7-tiny"]
REPLAYS = (
    [(name, True, True) for name in CFGS]
    + [(name, False, False) for name in CFGS]
    + [(name, a, f) for name in MIXED for a, f in ((True, False), (False, True))]
)


@pytest.mark.parametrize("name,alias,fuse", REPLAYS)
def test_plan_replays_correctly(name, alias, fuse):
    net = load(name)
    for keep_all in (False, True):
        plan = _core.plan_views(net._core, keep_all, alias, fuse)
        replay(net, plan)
        if keep_all:
            assert all(end == plan["forever"] for end in plan["storage_end"])
            assert all(r < 0 for r in plan["residual"]), "keep_all must keep every convolution's own output"


@pytest.mark.parametrize("name", ["yolov3", "yolov4", "yolov4-csp", "yolov4-p5"])
def test_plan_uses_views_and_folds_shortcuts(name):
    """The target networks actually get routes written in place, views and folded shortcuts."""
    net = load(name)
    plan = _core.plan_views(net._core, False, True, True)
    types = [l.type for l in net.desc.layers]
    routes_in_place = sum(1 for i, t in enumerate(types) if t == "route" and not plan["runs"][i])
    folded = sum(1 for r in plan["residual"] if r >= 0)
    assert routes_in_place == types.count("route"), "every route of these networks can be a view or in place"
    if "shortcut" in types:
        assert folded == types.count("shortcut"), "every shortcut of these networks follows its convolution"
    plain = _core.plan_views(net._core, False, False, False)
    assert sum(plan["capacity"]) <= sum(plain["capacity"]) * 1.1


def test_plan_reuses_memory():
    net = load("yolov4", 128)
    plan = _core.plan_views(net._core, False, True, True)
    everything = sum(int(np.prod(l.out_shape)) for l in net.desc.layers)
    assert sum(plan["capacity"]) < everything / 4


def test_tiny_slices_and_concatenations():
    """yolov4-tiny's CSP blocks: routes of one layer (whole or a slice) are views of it, concatenations are
    written in place, except the head's route of layers 33 and 23: 23 already lives inside route 24, so that one
    copies."""
    net = load("yolov4-tiny")
    plan = _core.plan_views(net._core, False, True, True)
    layers = net.desc.layers
    copies = []
    for i, layer in enumerate(layers):
        if layer.type != "route":
            continue
        if plan["runs"][i]:
            copies.append(i)
        elif len(layer.inputs) == 1:
            src, groups = layer.inputs[0], layer.options["groups"]
            assert plan["storage"][i] == plan["storage"][src]
            share = int(np.prod(layers[src].out_shape)) // groups * layer.options["group_id"]
            assert plan["offset"][i] == plan["offset"][src] + share
        else:
            a, b = layer.inputs
            assert plan["storage"][a] == plan["storage"][b] == plan["storage"][i]
            assert plan["offset"][a] == plan["offset"][i]
            assert plan["offset"][b] == plan["offset"][i] + int(np.prod(layers[a].out_shape))
    assert copies == [34] and layers[34].inputs == [33, 23] and not plan["runs"][24]


def test_plan_of_a_layer_listed_twice_copies(tmp_path):
    path = tmp_path / "twice.cfg"
    path.write_text(
        "[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=4\nsize=1\n\n"
        "[route]\nlayers=-1,-1\n\n[convolutional]\nfilters=2\nsize=1\n"
    )
    net = pydarknet.load(str(path))
    plan = _core.plan_views(net._core, False, True, True)
    assert plan["runs"][1], "a route listing one layer twice cannot be written in place"
    replay(net, plan)


def test_identity_first_layer_copies(tmp_path):
    path = tmp_path / "dropout.cfg"
    path.write_text(
        "[net]\nwidth=8\nheight=8\nchannels=3\n\n[dropout]\n\n[convolutional]\nfilters=2\nsize=1\n\n[dropout]\n"
    )
    net = pydarknet.load(str(path))
    plan = _core.plan_views(net._core, False, True, True)
    assert plan["runs"][0] and not plan["runs"][2]
    replay(net, plan)
