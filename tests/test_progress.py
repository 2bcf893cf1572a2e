"""Progress bars: off in the Python API and in logs, forced by --progress, moving inside a batch."""

from __future__ import annotations

import queue
import re
import subprocess

from treemdp.progress import StepReports, show_progress


class _Bar:
    def __init__(self):
        self.n = 0.0

    def update(self, x):
        self.n += x


class _Manager:
    Queue = queue.Queue


def test_worker_steps_move_the_bar_before_the_batch_ends():
    bar = _Bar()
    reports = StepReports(_Manager(), bar, every=0.0)
    on_step = reports.callback("batch", runs=4, steps=100)
    on_step(25)
    reports.drain()
    assert bar.n == 1.0  # a quarter of the steps of 4 runs
    on_step(50)
    reports.drain()
    assert bar.n == 3.0
    reports.finish("batch", 4)
    assert bar.n == 4.0
    reports.finish("batch", 4)  # a late duplicate changes nothing
    assert bar.n == 4.0


def test_no_manager_no_reports():
    reports = StepReports(None, _Bar())
    assert reports.callback("b", 1, 10) is None
    reports.drain()


def test_flag_wins_else_only_a_terminal_gets_a_bar():
    assert show_progress(True, quiet=True) is True
    assert show_progress(False) is False
    assert show_progress(None) is False  # pytest captures stderr: not a terminal


def test_cli_bar_only_when_asked_on_a_pipe(treemdp_cmd, tmp_path):
    args = treemdp_cmd + ["train", "--daa-steps", "1500", "--no-plot", "--quiet"]
    piped = subprocess.run(args + ["--out", str(tmp_path / "a")], capture_output=True, text=True)
    forced = subprocess.run(args + ["--out", str(tmp_path / "b"), "--progress"], capture_output=True, text=True)
    assert piped.returncode == forced.returncode == 0, piped.stderr + forced.stderr
    assert piped.stderr == ""
    # the bar moved (tqdm throttles redraws and clears a finished bar, so its last frame may be
    # any count: assert a frame of this run's 1700 steps, not the final one)
    assert "step" in forced.stderr and re.search(r"\b\d+/1700\b", forced.stderr)


def test_train_prints_no_bar_by_default(capsys):
    from treemdp.training import train
    train(sft_steps=600, daa_steps=1500)  # > 1 s: the bar's delay has passed
    assert capsys.readouterr().err == ""
