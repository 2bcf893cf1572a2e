"""``treemdp train`` end to end in a subprocess: files and schema, rerun from config, bad input."""

import json
import os
import stat
import subprocess

import pandas as pd
import pytest

TINY = ["--sft-steps", "40", "--daa-steps", "30", "--log-every", "10", "--quiet"]


def run(cmd, *args, env=None):
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300)


def test_train_writes_contract_files(treemdp_cmd, tmp_path):
    out = tmp_path / "dpo"
    proc = run(treemdp_cmd, "train", "--loss", "dpo", "--beta", "0.1", "--seed", "0", "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "data.json", "history.csv", "metrics.csv", "summary.json", "policy.pt",
                 "reference.pt", "run.png"):
        assert (out / name).stat().st_size > 0, name
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns)[:5] == ["phase", "step", "trajectory", "prob", "in_distribution"]  # CONTRACT, then row, actions
    assert set(history.phase) == {"sft", "daa"}
    assert set(history.in_distribution.astype(str).str.lower()) == {"true", "false"}
    assert history.trajectory.nunique() == 27 and "s1-a1-s3-a1-s9-a0-s∞" in set(history.trajectory)
    assert len(history) == 27 * (5 + 4)  # steps 0,10,...,40 and 0,...,30
    summary = json.loads((out / "summary.json").read_text())
    for key in ("loss", "beta", "seed", "final_in_distribution_mass", "final_ood_mass", "peak_ood_mass",
                "peak_ood_step", "final_chosen_prob", "final_rejected_prob", "kl_to_reference"):
        assert key in summary
    assert summary["loss"] == "dpo" and summary["beta"] == 0.1
    config = json.loads((out / "config.json").read_text())
    assert config["sft_steps"] == 40 and config["daa_steps"] == 30
    assert not list(tmp_path.glob(".*tmp*")), "temporary folder left behind"

    # rerunning from config.json gives the same numbers bit for bit
    again = tmp_path / "again"
    proc = run(treemdp_cmd, "train", "--config", str(out / "config.json"), "--out", str(again), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (again / "history.csv").read_bytes() == (out / "history.csv").read_bytes()


def test_train_with_data_file_and_other_shape(treemdp_cmd, tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"demonstrations": [[0, 0], [1, 1], [3, 2]],
                                "preferences": [{"chosen": [1, 1], "rejected": [0, 0]}]}))
    out = tmp_path / "r"
    proc = run(treemdp_cmd, "train", "--branching", "4", "--depth", "2", "--data", str(data), "--loss", "slic",
               "--policy", "tabular", "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    history = pd.read_csv(out / "history.csv")
    assert history.trajectory.nunique() == 16
    assert history.groupby(["phase", "step"]).prob.sum().sub(1).abs().max() < 1e-6


def test_help_lists_every_setting(treemdp_cmd):
    proc = run(treemdp_cmd, "train", "--help")
    assert proc.returncode == 0
    for flag in ("--loss", "--beta", "--seed", "--out", "--data", "--branching", "--depth", "--policy", "--cell",
                 "--hidden-size", "--optimizer", "--sft-lr", "--daa-lr", "--sft-steps", "--daa-steps", "--log-every"):
        assert flag in proc.stdout
    assert run(treemdp_cmd, "--help").returncode == 0


BAD_DATA = {
    "malformed.json": ("{oops", "not valid JSON"),
    "short.json": (json.dumps({"demonstrations": [[0, 0, 0], [0, 0]], "preferences": []}), "has length 2"),
    "range.json": (json.dumps({"demonstrations": [[0, 0, 5]], "preferences": []}), "action 5"),
    "equal.json": (json.dumps({"demonstrations": [[0, 0, 0]], "preferences": [{"chosen": [1, 1, 0], "rejected": [1, 1, 0]}]}),
                   "chosen equals rejected"),
    "empty.json": (json.dumps({"demonstrations": [], "preferences": []}), "non-empty"),
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_exits_2_with_one_error_line(treemdp_cmd, tmp_path, name):
    text, message = BAD_DATA[name]
    path = tmp_path / name
    path.write_text(text)
    out = tmp_path / "out"
    proc = run(treemdp_cmd, "train", "--data", str(path), "--out", str(out), *TINY)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--beta", "0"], "beta"), (["--beta", "-0.5"], "beta"), (["--beta", "nan"], "beta"), (["--beta", "inf"], "beta"),
    (["--loss", "nonsense"], "unknown loss"), (["--cell", "transformer"], "--cell"), (["--branching", "1"], "branching"),
    (["--depth", "0"], "depth"), (["--policy", "mlp"], "--policy"), (["--beta", "abc"], "--beta"),
    (["--data", "/nonexistent/d.json"], "does not exist"), (["--config", "/nonexistent/c.json"], "does not exist"),
    (["--branching", "4"], "give --data"),
])
def test_bad_values_exit_2(treemdp_cmd, tmp_path, args, message):
    proc = run(treemdp_cmd, "train", "--out", str(tmp_path / "o"), *args, *TINY)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_exits_2_nonroot(treemdp_cmd, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IREAD | stat.S_IEXEC)
    proc = run(treemdp_cmd, "train", "--out", str(locked / "run"), *TINY)
    assert proc.returncode == 2 and proc.stderr.startswith("error: cannot write")


def test_output_path_that_is_a_file_exits_2(treemdp_cmd, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    proc = run(treemdp_cmd, "train", "--out", str(target / "run"), *TINY)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_nan_during_training_exits_2_naming_the_step(treemdp_cmd, tmp_path):
    proc = run(treemdp_cmd, "train", "--optimizer", "sgd", "--sft-lr", "1e30", "--out", str(tmp_path / "o"), *TINY)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: sft step") and "Traceback" not in proc.stderr


def test_python_dash_m_works(tmp_path):
    import sys
    proc = run([sys.executable, "-m", "treemdp"], "train", "--out", str(tmp_path / "m"), *TINY)
    assert proc.returncode == 0, proc.stderr
