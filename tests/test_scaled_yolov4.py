"""YOLOv4-P7 as a Darknet cfg, ScaledYOLOv4 checkpoint conversion, and once-for-all sub-networks (section 5.5).

Checkpoints are made here from models built to the authors' module structure at a reduced width and depth: written
without torch in torch.save's zip format (tests/support/scaled_yolo.py), and, where torch is installed, saved by
torch itself from a torch model (zip and legacy formats, float32 and float16). The converted network's outputs are
compared with the PyTorch model's (numpy float64 reference, or torch's own forward).
"""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
from support import scaled_yolo as sy_t

from pydarknet.cli.main import main
from pydarknet.core import graph
from pydarknet.core import subnet as sn
from pydarknet.errors import CfgError, WeightsError
from pydarknet.hub import convert as cv
from pydarknet.hub import models
from pydarknet.hub import scaled_yolov4 as sy

SIZE = 128


def _input(seed=1):
    return np.random.default_rng(seed).uniform(0, 1, (3, SIZE, SIZE)).astype(np.float32)


def _small(tmp_path, name="p7", half=False, **kw):
    spec = sy_t.small_spec(name, **kw)
    tensors = sy_t.random_tensors(spec)
    pt = sy_t.write_checkpoint(tmp_path / f"{name}.pt", spec, tensors, half=half)
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(sy.cfg_text(spec, SIZE))
    return spec, tensors, pt, cfg


def _yolo_error(engine, cfg, weights, spec, tensors, x):
    net = engine.load(cfg, weights)
    outs = net.forward(x[None])
    ref = sy_t.reference_forward(spec, tensors, x.astype(np.float64))
    na = len(spec["anchors"][0]) // 2
    assert len(outs) == len(ref) == len(spec["anchors"])
    return max(float(np.abs(o[0] - sy_t.yolo_expected(r, na)).max()) for o, r in zip(outs, ref))


# ----- the cfgs -------------------------------------------------------------------------------------------------
def _sections(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize(
    "name,cfg", [("p7", "yolov4-p7.cfg"), ("p6", "yolov4-p6-pytorch.cfg"), ("p5", "yolov4-p5-pytorch.cfg")]
)
def test_bundled_cfgs_are_the_pytorch_networks(name, cfg):
    path = models.find_data_file(cfg)
    size = sy.NATIVE_SIZE[name]
    assert _sections(path.read_text()) == _sections(sy.cfg_text(sy.SPECS[name], size))
    desc = graph.load_network_desc(path)
    learnable = sum(
        t.size for l in desc.layers for t in l.tensors if t.name not in ("rolling_mean", "rolling_variance")
    )
    params, flops = sy.pytorch_counts(sy.SPECS[name], size)
    assert learnable == params
    assert sum(l.bflops for l in desc.layers) == pytest.approx(flops / 1e9, rel=1e-12)
    assert desc.input_shape == (3, size, size) and len(desc.yolo_layers) == len(sy.SPECS[name]["anchors"])


def test_p7_counts_and_heads():
    desc = graph.load_network_desc(models.find_data_file("yolov4-p7.cfg"))
    assert sy.pytorch_counts(sy.SPECS["p7"], 1536)[0] == 287_575_580
    assert round(sum(l.bflops for l in desc.layers), 3) == 1636.729
    heads = [desc.layers[i] for i in desc.yolo_layers]
    assert [h.in_shape for h in heads] == [(340, 1536 // s, 1536 // s) for s in (8, 16, 32, 64, 128)]
    for h in heads:
        assert h.options["new_coords"] == 1 and h.options["scale_x_y"] == 2.0 and len(h.options["mask"]) == 4
    assert sn.levels(desc) == {i: f"P{k}" for i, k in zip(desc.yolo_layers, range(3, 8))}


def test_pytorch_p5_p6_are_darknets_plus_the_second_batchnorm():
    """Without the [batchnorm] + [shortcut] from=-1 pairs, the generated P5/P6 are Darknet's own cfgs layer for layer;
    the pairs hold exactly the parameters Darknet's cfg lacks (2 per channel of each CSP2 and the SPPCSP)."""
    for name in ("p5", "p6"):
        mine = graph.build_network(
            __import__("pydarknet.core.cfg", fromlist=["x"]).parse_cfg_text(sy.cfg_text(sy.SPECS[name], 640), "g"), "g"
        )
        orig = graph.load_network_desc(models.find_data_file(f"yolov4-{name}.cfg"), width=640, height=640)
        pairs = [
            l for l in mine.layers if l.type == "batchnorm" or (l.type == "shortcut" and l.inputs == [l.index - 1])
        ]
        rest = [l for l in mine.layers if l not in pairs]
        assert [(l.type, l.out_shape, [t.shape for t in l.tensors]) for l in rest] == [
            (l.type, l.out_shape, [t.shape for t in l.tensors]) for l in orig.layers
        ]
        assert sum(l.bflops for l in mine.layers) == pytest.approx(sum(l.bflops for l in orig.layers))


def test_p7_summary_and_cpu_forward(engine):
    net = engine.load(models.find_data_file("yolov4-p7.cfg"), width=SIZE, height=SIZE)
    assert "Parameters 287,575,580 learnable" in net.summary()
    outs = net.forward(_input()[None])
    assert [o.shape for o in outs] == [(1, 340, SIZE // s, SIZE // s) for s in (8, 16, 32, 64, 128)]
    assert all(np.all(np.isfinite(o)) for o in outs)


# ----- conversion ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,half", [("p7", False), ("p6", True), ("p5", False)])
def test_convert_gives_the_pytorch_outputs(engine, tmp_path, name, half):
    spec, tensors, pt, cfg = _small(tmp_path, name, half=half)
    if half:  # the checkpoint holds float16; the model it describes computes with those values
        tensors = {k: v.astype(np.float16).astype(np.float32) for k, v in tensors.items()}
    report = cv.convert(pt, cfg, tmp_path / "out.weights")
    assert report.family == "yaml" and set(report.eps) == {1e-3}
    x = _input()
    assert _yolo_error(engine, cfg, tmp_path / "out.weights", spec, tensors, x) <= 1e-4
    # Folding the eps matters: the same tensors with Darknet's eps taken as PyTorch's are far off.
    cv.convert(pt, cfg, tmp_path / "wrong.weights", bn_eps=cv.DARKNET_BN_EPS)
    assert _yolo_error(engine, cfg, tmp_path / "wrong.weights", spec, tensors, x) > 1e-2


def test_convert_refuses_a_checkpoint_of_another_network(tmp_path):
    _, _, pt6, _ = _small(tmp_path, "p6")
    _, _, _, cfg7 = _small(tmp_path, "p7")
    with pytest.raises(CfgError, match=r"checkpoint tensor model\.\d+\.\S+: .*needs") as e:
        cv.convert(pt6, cfg7, tmp_path / "x.weights")
    assert not (tmp_path / "x.weights").exists()
    # A real P6 in the P7 cfg: the first conv already differs (32 filters at width 1.0, 40 at 1.25)
    with pytest.raises(CfgError, match=r"model\.0\.conv\.weight: filters is 40 in the cfg but the checkpoint needs 8"):
        cv.convert(pt6, models.find_data_file("yolov4-p7.cfg"), tmp_path / "x.weights")
    # One conv changed deep inside: named by its tensor and the cfg line
    text = cfg7.read_text().splitlines()
    at = max(i for i, line in enumerate(text) if line == "# model.41 Conv")
    k = next(i for i in range(at, len(text)) if text[i].startswith("size="))
    text[k] = "size=1"
    header = next(i for i in range(at, len(text)) if text[i] == "[convolutional]")
    cfg7.write_text("\n".join(text))
    pt7 = tmp_path / "p7.pt"
    with pytest.raises(CfgError, match=rf"p7\.cfg:{header + 1}: checkpoint tensor model\.41\.conv\.weight: size is 1"):
        cv.convert(pt7, cfg7, tmp_path / "x.weights")
    assert e.value.path == str(cfg7) and e.value.line is not None


def test_convert_checks_anchors(tmp_path):
    spec, tensors, pt, cfg = _small(tmp_path, "p5")
    cfg.write_text(cfg.read_text().replace("anchors=13,17,31,25", "anchors=14,17,31,25"))
    with pytest.raises(CfgError, match=r"model\.\d+\.anchor_grid: the cfg's anchors \[14\.0, 17\.0"):
        cv.convert(pt, cfg, tmp_path / "x.weights")


def test_reader_refuses_code_and_damage(tmp_path):
    spec = sy_t.small_spec("p5")
    tensors = sy_t.random_tensors(spec)
    bad = sy_t.write_checkpoint(tmp_path / "bad.pt", spec, tensors, extra_globals=[("os", "system")])
    with pytest.raises(WeightsError, match=r"asks for os\.system.*nothing from the file was run"):
        cv.convert(bad, tmp_path / "none.cfg", tmp_path / "x.weights")
    good = sy_t.write_checkpoint(tmp_path / "good.pt", spec, tensors)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    at = data.index(b"archive/data/0") + 200  # inside the first storage: the zip's CRC check fails
    flipped[at] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name in ("cut.pt", "flipped.pt", "text.pt", "missing.pt"):
        with pytest.raises(WeightsError):
            cv.convert(tmp_path / name, tmp_path / "none.cfg", tmp_path / "x.weights")


def test_bare_state_dict_of_an_unknown_model_is_refused(tmp_path):
    spec = sy_t.small_spec("p5")
    tensors = sy_t.random_tensors(spec)
    from pydarknet.hub.torch_checkpoint import read_checkpoint, state_dict

    pt = sy_t.write_checkpoint(tmp_path / "m.pt", spec, tensors)
    flat, eps, _ = state_dict(read_checkpoint(pt))
    assert set(flat) == set(tensors) and set(eps.values()) == {1e-3}
    cfg = tmp_path / "m.cfg"
    cfg.write_text(sy.cfg_text(spec, SIZE))
    with pytest.raises(WeightsError, match="not the P5, P6 or P7"):
        cv.convert_arrays(flat, {}, None, cfg, where="m.pt")


def test_cli_convert_and_subnet(engine, tmp_path, capsys):
    spec, tensors, pt, cfg = _small(tmp_path, "p7")
    out = tmp_path / "p7.weights"
    assert main(["convert", str(pt), str(out), "--cfg", str(cfg)]) == 0
    assert "592 tensors" in capsys.readouterr().out
    _, _, pt5, _ = _small(tmp_path, "p5")
    assert main(["convert", str(pt5), str(tmp_path / "x.weights"), "--cfg", str(cfg)]) == 2
    assert re.search(r"p7\.cfg:\d+: checkpoint tensor model\.\d+\.\S+: filters", capsys.readouterr().err)
    sub = tmp_path / "p7-p7.cfg"
    assert main(["subnet", str(cfg), "--drop", "P7", "-o", str(sub), "--weights", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"detection levels dropped: P7 \(\[yolo\] \d+\)", text) and "wrote" in text
    net = engine.load(sub, sub.with_suffix(".weights"))
    assert len(net.yolo_layers) == 4
    assert main(["subnet", str(cfg), "--drop", "P9", "-o", str(sub)]) == 2
    assert "no detection level P9" in capsys.readouterr().err


# ----- sub-networks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("drop", [["P7"], ["P7", "P6"]])
def test_subnet_computes_the_kept_heads_unchanged(engine, tmp_path, drop):
    spec, tensors, pt, cfg = _small(tmp_path, "p7")
    cv.convert(pt, cfg, tmp_path / "full.weights")
    sub = sn.subnet(cfg, drop)
    sub.save(tmp_path / "sub.cfg")
    sn.extract_weights(cfg, tmp_path / "full.weights", sub, tmp_path / "sub.cfg", tmp_path / "sub.weights")
    full = engine.load(cfg, tmp_path / "full.weights")
    part = engine.load(tmp_path / "sub.cfg", tmp_path / "sub.weights")
    x = _input(3)[None]
    want = full.forward(x)[: 5 - len(drop)]
    got = part.forward(x)
    assert len(got) == 5 - len(drop)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    names = sn.levels(full.desc)
    assert sorted(sub.heads_removed.values()) == sorted(drop)
    assert all(names.get(i) in (None, *drop) for i in sub.removed)
    assert part.learnable_params < full.learnable_params and part.bflops < full.bflops


def test_subnet_on_darknet_cfgs_and_errors(engine, tmp_path):
    for cfg, drop, heads in (
        ("yolov4-p5.cfg", ["P5"], 2),
        ("yolov3.cfg", ["P5"], 2),
        ("yolov4-p6.cfg", ["P6", "P5"], 2),
    ):
        sub = sn.subnet(models.find_data_file(cfg), drop)
        sub.save(tmp_path / "s.cfg")
        net = engine.load(tmp_path / "s.cfg", width=128, height=128)
        assert len(net.yolo_layers) == heads
        assert len(net.layers) == len(sub.kept)
    with pytest.raises(CfgError, match="no detection level P7"):
        sn.subnet(models.find_data_file("yolov4-p5.cfg"), ["P7"])
    with pytest.raises(CfgError, match="would leave no"):
        sn.subnet(models.find_data_file("yolov3-tiny.cfg"), ["P5", "P4"])


def test_subnet_inserts_a_route_for_a_lost_implicit_input(engine, tmp_path):
    """yolov3-tiny without P5: its P4 branch starts with a conv whose implicit input was the P5 head's last layer;
    it keeps reading the same layer through an explicit route."""
    cfg = models.find_data_file("yolov3-tiny.cfg")
    sub = sn.subnet(cfg, ["P5"])
    sub.save(tmp_path / "t.cfg")
    full = engine.load(cfg, width=128, height=128, seed=1)
    part = engine.load(tmp_path / "t.cfg", width=128, height=128)
    for new, old in enumerate(sub.kept):
        if old is not None:
            for k, v in full.layers[old].params.items():
                part.layers[new].params[k][...] = v
    x = _input(4)[None]
    np.testing.assert_array_equal(part.forward(x)[0], full.forward(x)[1])


# ----- checkpoints saved by torch itself ----------------------------------------------------------------------
def _torch_model(torch, spec):
    """The authors' module classes (our own code, same structure and names), registered as models.common and
    models.yolo so that torch.save records them under those names."""
    nn = torch.nn
    common = types.ModuleType("models.common")
    yolo = types.ModuleType("models.yolo")

    class Conv(nn.Module):
        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.Mish()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c, add):
            super().__init__()
            self.cv1, self.cv2, self.add = Conv(c, c, 1), Conv(c, c, 3), add

        def forward(self, x):
            return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))

    class BottleneckCSP(nn.Module):
        def __init__(self, c1, c2, n):
            super().__init__()
            c_ = c2 // 2
            self.cv1 = Conv(c1, c_)
            self.cv2 = nn.Conv2d(c1, c_, 1, bias=False)
            self.cv3 = nn.Conv2d(c_, c_, 1, bias=False)
            self.cv4 = Conv(2 * c_, c2)
            self.bn, self.act = nn.BatchNorm2d(2 * c_), nn.Mish()
            self.m = nn.Sequential(*[Bottleneck(c_, True) for _ in range(n)])

        def forward(self, x):
            return self.cv4(self.act(self.bn(torch.cat((self.cv3(self.m(self.cv1(x))), self.cv2(x)), 1))))

    class BottleneckCSP2(nn.Module):
        def __init__(self, c1, c2, n):
            super().__init__()
            self.cv1, self.cv2, self.cv3 = Conv(c1, c2), nn.Conv2d(c2, c2, 1, bias=False), Conv(2 * c2, c2)
            self.bn, self.act = nn.BatchNorm2d(2 * c2), nn.Mish()
            self.m = nn.Sequential(*[Bottleneck(c2, False) for _ in range(n)])

        def forward(self, x):
            x1 = self.cv1(x)
            return self.cv3(self.act(self.bn(torch.cat((self.m(x1), self.cv2(x1)), 1))))

    class SPPCSP(nn.Module):
        def __init__(self, c1, c2):
            super().__init__()
            c_ = c2
            self.cv1, self.cv2 = Conv(c1, c_), nn.Conv2d(c1, c_, 1, bias=False)
            self.cv3, self.cv4 = Conv(c_, c_, 3), Conv(c_, c_)
            self.m = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13)])
            self.cv5, self.cv6 = Conv(4 * c_, c_), Conv(c_, c_, 3)
            self.bn, self.act, self.cv7 = nn.BatchNorm2d(2 * c_), nn.Mish(), Conv(2 * c_, c2)

        def forward(self, x):
            x1 = self.cv4(self.cv3(self.cv1(x)))
            y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
            return self.cv7(self.act(self.bn(torch.cat((y1, self.cv2(x)), 1))))

    class Concat(nn.Module):
        def forward(self, xs):
            return torch.cat(xs, 1)

    class Detect(nn.Module):
        def __init__(self, no, chs, anchors):
            super().__init__()
            self.m = nn.ModuleList([nn.Conv2d(c, no, 1) for c in chs])
            grid = torch.tensor(anchors, dtype=torch.float32).view(len(chs), 1, -1, 1, 1, 2)
            self.register_buffer("anchor_grid", grid)
            self.register_buffer("anchors", grid.view(len(chs), -1, 2).clone())

        def forward(self, xs):
            return [m(x) for m, x in zip(self.m, xs)]

    class Model(nn.Module):
        def __init__(self, spec):
            super().__init__()
            self.yaml = {k: spec[k] for k in ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head")}
            nodes = sy.build_nodes(spec)
            self.nodes = [(n.index, n.inputs) for n in nodes]
            layers = []
            for n in nodes:
                if n.module == "Conv":
                    layers.append(Conv(n.c1, n.c2, n.kernel, n.stride))
                elif n.module == "Upsample":
                    layers.append(nn.Upsample(None, 2, "nearest"))
                elif n.module == "Concat":
                    layers.append(Concat())
                elif n.module == "BottleneckCSP":
                    layers.append(BottleneckCSP(n.c1, n.c2, n.n))
                elif n.module == "BottleneckCSP2":
                    layers.append(BottleneckCSP2(n.c1, n.c2, n.n))
                elif n.module == "SPPCSP":
                    layers.append(SPPCSP(n.c1, n.c2))
                else:
                    layers.append(Detect(n.c2, [nodes[r].c2 for r in n.inputs], spec["anchors"]))
            self.model = nn.Sequential(*layers)
            for m in self.modules():
                if type(m) is nn.BatchNorm2d:
                    m.eps, m.momentum = 1e-3, 0.03

        def forward(self, x):
            outs = {}
            for (i, inputs), m in zip(self.nodes, self.model):
                xs = [x if r == -1 else outs[r] for r in inputs]
                outs[i] = m(xs if isinstance(m, (Concat, Detect)) else xs[0])
            return outs[self.nodes[-1][0]]

    for cls in (Conv, Bottleneck, BottleneckCSP, BottleneckCSP2, SPPCSP, Concat, Detect):
        cls.__module__, cls.__qualname__ = "models.common", cls.__name__
        setattr(common, cls.__name__, cls)
    Model.__module__, Model.__qualname__ = "models.yolo", "Model"
    yolo.Model = Model
    return Model(spec), {"models": types.ModuleType("models"), "models.common": common, "models.yolo": yolo}


@pytest.mark.parametrize("name,half,legacy", [("p7", False, False), ("p6", True, False), ("p5", False, True)])
def test_convert_torch_saved_checkpoints(engine, tmp_path, monkeypatch, name, half, legacy):
    torch = pytest.importorskip("torch")
    spec = sy_t.small_spec(name)
    torch.manual_seed(0)
    model, fake = _torch_model(torch, spec)
    state = {k: torch.from_numpy(v) for k, v in sy_t.random_tensors(spec).items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    for key, module in fake.items():
        monkeypatch.setitem(sys.modules, key, module)
    saved = model.half() if half else model
    pt = tmp_path / f"{name}.pt"
    torch.save({"epoch": -1, "model": saved, "optimizer": None}, pt, _use_new_zipfile_serialization=not legacy)
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(sy.cfg_text(spec, SIZE))
    report = cv.convert(pt, cfg, tmp_path / "out.weights")
    assert set(report.eps) == {1e-3}
    model = model.float()
    x = _input()
    with torch.no_grad():
        ref = [r[0].double().numpy() for r in model(torch.from_numpy(x[None]))]
    outs = engine.load(cfg, tmp_path / "out.weights").forward(x[None])
    for o, r in zip(outs, ref):
        assert np.abs(o[0] - sy_t.yolo_expected(r, 4)).max() <= 1e-4
