"""The one grid (treemdp.grid) and its executors: the plan, names, resume, and the same numbers on
a local pool, a Dask LocalCluster and submitit's local executor, bit for bit."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from treemdp.cli import main
from treemdp.errors import UserError
from treemdp.grid import Study, finished_runs, plan, run_grid, run_names
from treemdp.lab.config import LabConfig
from treemdp.lab.store import grid as lab_grid
from treemdp.lab.store import lab_sweep
from treemdp.runs import atomic_directory
from treemdp.sweep import grid, sweep
from treemdp.training import TrainConfig

#: Wall-clock columns: the only ones that may differ between two computations of a run.
TIMINGS = ("train_seconds", "seconds")


# ----- the plan -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n,limit", [(1, 4), (7, 7), (10, 4), (96, 96), (97, 96), (200, 96), (13, 1)])
def test_equal_layout_is_numpys_array_split_of_each_shape(n, limit):
    shapes = [i % 3 for i in range(n)]  # three shapes, interleaved
    got = plan(shapes, [limit] * n, workers=4, layout="equal")
    want = []
    for s in dict.fromkeys(shapes):
        idx = np.array([i for i in range(n) if shapes[i] == s])
        want += [part.tolist() for part in np.array_split(idx, -(-len(idx) // limit))]
    assert got == want


def test_fill_layout_and_spread_by_hand():
    # One shape of 10, at most 4 a stack: 3 parts; spread over 2 workers: 4 parts of ceil(10/4) = 3.
    assert plan([0] * 10, [4] * 10, workers=2, spread=True, layout="fill") == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert plan([0] * 10, [4] * 10, workers=2, layout="fill") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plan([0] * 10, [4] * 10, workers=2, spread=True) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    # Two shapes and two workers: one worker per shape, no further cut; a lone run is never cut.
    assert plan([0, 1, 0, 1, 0], [8] * 5, workers=2, spread=True, layout="fill") == [[0, 2, 4], [1, 3]]
    assert plan(["a"], [1], workers=8, spread=True) == [[0]]
    with pytest.raises(ValueError):
        plan([0], [1], layout="ragged")


# ----- a study of its own ---------------------------------------------------------------------------
class Square(Study):
    """The smallest study: a run squares its settings' x (stacks of at most 2, 'fill')."""

    label, name_fields, max_batch, layout = "square", ("x",), 2, "fill"

    def __init__(self):
        self.stacks = []

    def shape(self, config):
        return config["parity"]

    def run_batch(self, configs, on_work):
        self.stacks.append([c["x"] for c in configs])
        on_work(len(configs))
        return [c["x"] ** 2 for c in configs]

    def write_run(self, folder, config, result):
        with atomic_directory(folder) as tmp:
            (tmp / "config.json").write_text(json.dumps(config.to_dict()))
            (tmp / "summary.json").write_text(json.dumps({"square": result}))
        return {"square": result}


class Point(dict):
    def to_dict(self):
        return dict(self)


def test_a_study_of_its_own_gets_names_stacks_results_and_resume(tmp_path):
    configs = [Point(x=x, parity=x % 2, tag="t") for x in range(5)]
    assert run_names(Square(), configs) == ["x=0,parity=0", "x=1,parity=1", "x=2,parity=0", "x=3,parity=1",
                                            "x=4,parity=0"]
    study = Square()
    table = run_grid(study, configs, tmp_path, progress=False)
    assert list(table["square"]) == [0, 1, 4, 9, 16] and list(table.columns) == ["run", "x", "parity", "tag", "square"]
    assert sorted(study.stacks) == [[0, 2], [1, 3], [4]]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results.csv"), table)
    shutil.rmtree(tmp_path / "x=2,parity=0")
    study = Square()
    again = run_grid(study, configs, tmp_path, progress=False)
    assert study.stacks == [[0, 2]]  # the stack of the lost run, whole; only the lost run is rewritten
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(UserError, match="repeats a run"):
        run_names(Square(), [Point(x=1, parity=1)] * 2)
    done, todo = finished_runs(tmp_path, ["x=0,parity=0"], [Point(x=0, parity=0, tag="other")], replace_changed=True)
    assert not done and todo == [0]


# ----- the executors, bit for bit ----------------------------------------------------------------------
TOY = TrainConfig(sft_steps=12, daa_steps=12, log_every=4, hidden_size=8)


def _toy(out: Path, **kwargs) -> pd.DataFrame:
    configs = grid(TOY, loss=["dpo", "ipo", "slic"], seed=[0, 1])
    return sweep(configs, out, plot=False, workers=2, progress=False, **kwargs)


def _lab(out: Path, **kwargs) -> pd.DataFrame:
    base = LabConfig(tree="3x2", pairs=4, demos=12, sft_steps=10, steps=8, rm_steps=10, hidden_size=8, rm_hidden_size=8)
    configs = lab_grid(base, loss=["dpo", "ipo"], beta=[0.1, 0.5], seed=[0, 1])
    return lab_sweep(configs, out, workers=2, progress=False, **kwargs)


def _same_folders(a: Path, b: Path) -> None:
    """Two grid folders hold the same runs: equal tables (timings aside) and equal files, byte for byte."""
    ta, tb = (pd.read_csv(p / "results.csv").drop(columns=list(TIMINGS), errors="ignore") for p in (a, b))
    pd.testing.assert_frame_equal(ta, tb, check_exact=True)
    files = sorted(p.relative_to(a) for p in a.glob("*/*") if p.suffix == ".csv")
    assert files and files == sorted(p.relative_to(b) for p in b.glob("*/*") if p.suffix == ".csv")
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _resume_through(run, reference: Path, out: Path, **kwargs) -> None:
    """Lose every finished run but one, and the table, of a copy of ``reference``, then resume it with
    ``run``: every stack is recomputed through the executor, the kept run is not rewritten."""
    shutil.copytree(reference, out)
    kept, *lost = sorted(p for p in out.iterdir() if p.is_dir())
    for victim in lost:
        shutil.rmtree(victim)
    stamp = (kept / "summary.json").stat().st_mtime_ns
    (out / "results.csv").unlink()
    run(out, **kwargs)
    _same_folders(reference, out)
    assert (kept / "summary.json").stat().st_mtime_ns == stamp


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    _toy(root / "toy")
    _lab(root / "lab")
    return root


@pytest.mark.slow
def test_dask_local_cluster_gives_the_local_numbers_and_resumes(local, tmp_path):
    pytest.importorskip("distributed")
    _resume_through(_toy, local / "toy", tmp_path / "toy-resumed", executor="dask:local")
    _resume_through(_lab, local / "lab", tmp_path / "lab-resumed", executor="dask:local")


@pytest.mark.slow
def test_submitit_local_executor_gives_the_local_numbers_and_resumes(local, tmp_path):
    pytest.importorskip("submitit")
    options = dict(executor="slurm:local", folder=str(tmp_path / "jobs" / "%j"))
    _resume_through(_toy, local / "toy", tmp_path / "toy-resumed", **options)
    assert len(list((tmp_path / "jobs").glob("*/*_result.pkl"))) == 2  # each stack (2) ran as a submitit job
    _resume_through(_lab, local / "lab", tmp_path / "lab-resumed", **options)


# ----- the command line --------------------------------------------------------------------------
SWEEP = ["sweep", "--sft-steps", "4", "--daa-steps", "4", "--hidden-size", "4", "--light", "--quiet"]


@pytest.mark.parametrize("args,message", [
    (["--executor", "spark"], "unknown executor 'spark'"),
    (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time must be >= 1"),
    (["--executor", "slurm", "--slurm-gpus", "-1"], "--slurm-gpus must be >= 0"),
])
def test_bad_executor_flags_are_one_error_line(args, message, tmp_path, capsys):
    assert main([*SWEEP, "--out", str(tmp_path / "g"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("module,extra", [("distributed", "dask"), ("submitit", "slurm")])
def test_a_missing_extra_is_one_error_line(module, extra, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    spec = "dask:local" if extra == "dask" else "slurm"
    assert main([*SWEEP, "--seeds", "0-1", "--workers", "2", "--out", str(tmp_path / "g"), "--executor", spec]) == 2
    err = capsys.readouterr().err
    assert f"pip install 'treemdp[{extra}]'" in err and len(err.strip().splitlines()) == 1


def test_an_unreachable_dask_scheduler_is_one_error_line(monkeypatch, tmp_path, capsys):
    pytest.importorskip("distributed")
    monkeypatch.setattr("treemdp.executors.DASK_TIMEOUT", 1)
    out = tmp_path / "g"
    assert main([*SWEEP, "--out", str(out), "--executor", "dask:tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'")
    assert len(err.strip().splitlines()) == 1 and not [p for p in out.iterdir() if p.is_dir()]


def test_help_names_the_executors(capsys):
    for command in (["sweep"], ["lab", "run"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for flag in ("--executor", "dask:tcp://HOST:PORT", "slurm:local", "--slurm-partition", "--slurm-time",
                     "--slurm-gpus", "--slurm-cpus", "--slurm-folder"):
            assert flag in text, (command, flag)
