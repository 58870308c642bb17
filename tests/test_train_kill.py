"""A training run killed with SIGKILL: its loader workers die with it, and a resumed run finds no leftovers --
no stray temporaries, a results.csv with exactly one row per iteration, a chart drawn from the whole history."""

import csv
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pydarknet.data import synthetic
from pydarknet.train.anchors import calc_anchors
from pydarknet.train.starter import starter_cfg
from pydarknet.train.trainer import (
    RESULTS_HEADER,
    ChartData,
    Trainer,
    TrainOptions,
    chart_figure,
    read_results,
    reconcile_results,
)

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads processes from /proc")


# ----- processes, read from /proc (psutil is not a dependency) ------------------------------------------------
def _children(pid):
    out = set()
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def _alive(pid):
    """Running or sleeping; a zombie (dead, not yet reaped) counts as gone."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_until(predicate, seconds, step=0.05):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _tiny(tmp_path, max_batches, batch=4):
    data = synthetic.generate(tmp_path / "data", n_train=16, n_valid=4, size=64, classes=2, seed=4)
    anchors = calc_anchors(str(data), 6, 64, 64, seed=0).anchors
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(starter_cfg(2, 64, 64, anchors, max_batches=max_batches, batch=batch))
    return cfg, data


def _train_cmd(cfg, data, backup, *extra, weights=None):
    # cwd outside the checkout: `python -m` puts the working folder first on sys.path, and the source tree's
    # pydarknet has no compiled engine unless it was installed in place.
    files = [str(cfg), str(data)] + ([str(weights)] if weights else [])
    return [sys.executable, "-m", "pydarknet", "train", *files, "--backup", str(backup), "--no-progress", *extra]


# ----- defect: loader workers outlived a killed trainer -------------------------------------------------------
@linux_only
def test_loader_workers_die_with_a_killed_trainer(tmp_path):
    cfg, data = _tiny(tmp_path, max_batches=100000)
    proc = subprocess.Popen(
        _train_cmd(cfg, data, tmp_path / "b", "--workers", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        # training has started, so the pool has forked its workers and fed them batches
        for line in proc.stdout:
            if line.startswith(b" 2: "):
                break
        else:
            pytest.fail(f"the run ended early (exit {proc.wait()})")
        workers = _children(proc.pid)
        assert len(workers) == 2 and all(_alive(w) for w in workers)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    try:
        assert _wait_until(lambda: not any(_alive(w) for w in workers), 5), "loader workers outlived the trainer"
        # nothing holds the trainer's stdout any more: a pipe reader (`| tee log`) gets its end of file
        proc.stdout.read()
    finally:
        proc.stdout.close()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


OWNER = textwrap.dedent("""
    import sys
    from pydarknet.data import loader as L
    from pydarknet.data.augment import AugmentSettings

    L._USE_PDEATHSIG = sys.argv[2] == "1"
    images = open(sys.argv[1]).read().split()
    with L.Loader(images, 2, AugmentSettings(width=64, height=64), batch=2, workers=2) as loader:
        loader.batch(0)
        print("ready", flush=True)
        sys.stdin.read()
""")


@linux_only
@pytest.mark.parametrize("deathsig", [True, False], ids=["parent-death-signal", "watcher-thread-alone"])
def test_each_mechanism_alone_ends_the_workers(tmp_path, deathsig):
    _, data = _tiny(tmp_path, max_batches=10)
    train = pathlib.Path(data).parent / "train.txt"
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(train), "1" if deathsig else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        workers = _children(proc.pid)
        assert len(workers) == 2
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    try:
        # the signal is immediate; the watcher polls every 0.25 s
        assert _wait_until(lambda: not any(_alive(w) for w in workers), 3)
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


# ----- defect: a killed run left temporaries, lost or duplicated results rows, charted only the resumed part ---
def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_removed_at_start(tmp_path):
    cfg, data = _tiny(tmp_path, max_batches=2)
    backup = tmp_path / "b"
    backup.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = _dead_pid()
        stale = [backup / f".tiny_last.weights.{dead}.0123abcd.tmp", backup / f".chart.png.{dead}.89abcdef.tmp"]
        kept = [backup / f".tiny_last.state.{live.pid}.deadbeef.tmp", backup / "notes.tmp", backup / "x.weights"]
        for p in stale + kept:
            p.write_bytes(b"partial")
        lines = []
        Trainer(cfg, data, None, TrainOptions(backup=str(backup), workers=0), log=lines.append)
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)  # a live writer's temporary and files that are not temporaries
        assert sum("left by a run killed while writing" in line for line in lines) == 2
    finally:
        live.stdin.close()
        live.wait()


def _iteration_lines(stream, seen):
    """The iteration numbers of the progress lines ` N: loss, ...` of a training run's output; every line goes
    to ``seen``."""
    for line in stream:
        text = line.decode(errors="replace")
        seen.append(text)
        head = text[1:].split(":", 1)[0]
        if text.startswith(" ") and head.isdigit():
            yield int(head)


def _csv_iterations(path):
    with open(path, newline="") as f:
        return [int(r[0]) for r in list(csv.reader(f))[1:] if r and r[0].isdigit()]


def test_kill_at_random_points_then_resume_leaves_a_whole_history(tmp_path):
    from pydarknet.train.checkpoint import load_state

    max_batches, batch, every = 40, 4, 5
    cfg, data = _tiny(tmp_path, max_batches=max_batches, batch=batch)
    backup = tmp_path / "b"
    last = backup / "tiny_last.weights"
    rng = random.Random(11)
    rows_past_checkpoint = []
    for _ in range(5):
        weights = last if last.exists() else None
        cmd = _train_cmd(cfg, data, backup, "--workers", "1", "--save-last-every", str(every), weights=weights)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
        output = []
        try:
            stop = None
            for it in _iteration_lines(proc.stdout, output):
                stop = stop or it + rng.randint(0, 6)
                if it >= stop:
                    time.sleep(rng.uniform(0, 0.3))
                    break
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            code = proc.wait()
            proc.stdout.close()
        if code == 0:  # on a slow, busy machine the run may reach max_batches before the kill lands
            break
        assert code == -signal.SIGKILL, "".join(output)  # killed, not ended by some error
        if last.exists():
            saved = load_state(last.with_suffix(".state"), arrays=False).iteration
            rows_past_checkpoint.append(sum(i > saved for i in _csv_iterations(backup / "results.csv")))
    # the kills did land between checkpoints, where results.csv runs ahead of _last
    assert sum(rows_past_checkpoint) > 0, rows_past_checkpoint
    resumed = Trainer(cfg, data, str(last), TrainOptions(backup=str(backup), workers=0, save_last_every=every))
    start = resumed.state.iteration
    assert 0 < start <= max_batches  # max_batches when the last run ended by itself before its kill
    resumed.run()
    assert not [p.name for p in backup.iterdir() if p.name.endswith(".tmp")]
    iterations = _csv_iterations(backup / "results.csv")
    assert iterations == list(range(1, max_batches + 1))  # one row per iteration: none lost, none twice
    with open(backup / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == RESULTS_HEADER and all(int(r[5]) == int(r[0]) * batch for r in rows[1:])  # images seen
    # this process trained only the iterations after the resume; the chart shows all of them
    assert [e.iteration for e in resumed.history] == list(range(start + 1, max_batches + 1))
    drawn = resumed.draw_chart()
    assert drawn.iterations == list(range(1, max_batches + 1))
    assert drawn.avg_loss == [float(r[2]) for r in rows[1:]]
    assert (backup / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reconcile_drops_rows_after_the_checkpoint_and_torn_rows(tmp_path):
    path = tmp_path / "results.csv"
    row = "{},1.5,2.5,0.001,0.1,{},64,64,0,\r\n"
    body = "".join(row.format(i, 4 * i) for i in range(1, 8))
    # a resumed run wrote 3 and 4 again; the last row was cut by a crash
    path.write_text(",".join(RESULTS_HEADER) + "\r\n" + body + row.format(3, 12) + row.format(4, 16) + "9,1.2,")
    kept = reconcile_results(path, 5)
    assert [int(r[0]) for r in kept] == [1, 2, 3, 4, 5]
    assert _csv_iterations(path) == [1, 2, 3, 4, 5] and path.read_text().startswith("iteration,loss,")
    assert [r[0] for r in read_results(path)] == ["1", "2", "3", "4", "5"]


# ----- the chart: the mAP line has a legend entry and its values, the last point is inside -------------------
def test_chart_has_a_map_legend_values_and_an_unclipped_last_point():
    data = ChartData(
        iterations=list(range(1, 301)),
        loss=[5.0] * 300,
        avg_loss=[4.0] * 300,
        map_iterations=[100, 200, 300],
        maps=[0.25, 0.5, 1.0],
    )
    fig = chart_figure(data, "t", max_batches=300)
    try:
        ax, ax2 = fig.axes
        assert [t.get_text() for t in ax2.get_legend().get_texts()] == ["loss", "avg loss", "mAP@0.5 %"]
        labels = list(ax2.texts)
        assert [t.get_text() for t in labels] == ["25.0%", "50.0%", "100.0%"]
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        inside = fig.bbox
        legend = ax2.get_legend().get_window_extent(renderer)
        for t in labels:
            box = t.get_window_extent(renderer)
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and box.y1 <= inside.y1, t.get_text()
            assert not box.overlaps(legend), t.get_text()
        assert legend.y0 >= ax2.bbox.y1 and legend.y1 <= inside.y1  # above the plot, inside the picture
        # the last mAP point (300, 100 %) lies strictly inside the axes, so its marker is drawn whole
        x, y = ax2.transData.transform((300, 100))
        assert ax2.bbox.x0 < x < ax2.bbox.x1 and ax2.bbox.y0 < y < ax2.bbox.y1
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
