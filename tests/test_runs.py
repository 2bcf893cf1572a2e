"""Runs you can reload; history with actions, CSV or Parquet; the shape from the data; one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import treemdp
from treemdp import TreeMDP, trajectory_log_probs
from treemdp.errors import UserError
from treemdp.runs import load_sweep, write_run
from treemdp.training import TrainConfig, check_device, train

SHORT = dict(sft_steps=30, daa_steps=40, log_every=5, progress=False)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "treemdp", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_load_run_gives_back_config_data_policy_reference_and_frames(tmp_path):
    result = train(loss="ipo", beta=0.5, seed=2, **SHORT)
    out = write_run(result, tmp_path / "run", plot=False)
    run = treemdp.load_run(out)
    assert run.config == result.config and run.summary == json.loads(json.dumps(result.summary))
    assert run.dataset == result.dataset
    with torch.no_grad():
        torch.testing.assert_close(trajectory_log_probs(run.policy), trajectory_log_probs(result.policy))
        torch.testing.assert_close(trajectory_log_probs(run.reference), trajectory_log_probs(result.reference))
    pd.testing.assert_frame_equal(run.metrics, result.metrics, check_dtype=False, atol=1e-12, rtol=0)
    history = run.history
    assert history["in_distribution"].dtype == bool and len(history) == len(result.history)
    # the action columns and the row name the same trajectory as the paper notation
    mdp = TreeMDP()
    for _, row in history.sample(20, random_state=0).iterrows():
        actions = [row[f"action_{t}"] for t in range(3)]
        assert mdp.trajectory_name(actions) == row["trajectory"] and mdp.trajectory_index(actions) == row["row"]


@pytest.mark.parametrize("history_format", ["csv", "parquet"])
def test_history_keeps_log_probs_below_float32s_floor(tmp_path, history_format):
    """A run pushed hard (lr 0.1) puts pi(y) near e^-125, far below float32's smallest number
    (1.4e-45): history keeps the run's log-probs (float64), so KL(ref || pi) recomputed from the
    saved file equals the summary's (both float64 from the same float32 log-probs) to 1e-9; prob
    does not underflow to 0."""
    result = train(loss="dpo", beta=0.1, daa_lr=0.1, sft_steps=100, daa_steps=300, log_every=50,
                   history_format=history_format, progress=False)
    history = treemdp.load_run(write_run(result, tmp_path / "run", plot=False)).history
    assert history["log_prob"].dtype == "float64"
    at = lambda phase: history[(history.phase == phase) & (history.step == history[history.phase == phase].step.max())]  # noqa: E731
    ref, pi = at("sft")["log_prob"].to_numpy(), at("daa")["log_prob"].to_numpy()
    assert pi.min() < -100 and (at("daa")["prob"] > 0).all()
    assert np.exp(pi) == pytest.approx(at("daa")["prob"].to_numpy(), rel=1e-15, abs=0)
    kl = float(np.sum(np.exp(ref) * (ref - pi)))
    assert kl == pytest.approx(result.summary["kl_reference_to_policy"], abs=1e-9)
    assert float(np.sum(np.exp(pi) * (pi - ref))) == pytest.approx(result.summary["kl_to_reference"], abs=1e-9)


def test_old_history_without_log_prob_reads_back_with_one(tmp_path):
    out = write_run(train(**SHORT), tmp_path / "run", plot=False)
    old = pd.read_csv(out / "history.csv").drop(columns="log_prob")
    old.to_csv(out / "history.csv", index=False)
    history = treemdp.load_run(out).history
    assert np.log(history["prob"]).to_numpy() == pytest.approx(history["log_prob"].to_numpy())


def test_parquet_history_by_flag_reads_back_equal(tmp_path):
    result = train(history_format="parquet", **SHORT)
    out = write_run(result, tmp_path / "run", plot=False)
    assert (out / "history.parquet").is_file() and not (out / "history.csv").exists()
    pd.testing.assert_frame_equal(treemdp.load_run(out).history, result.history, check_dtype=False)


def test_auto_history_switches_to_parquet_above_a_million_rows(tmp_path, monkeypatch):
    import treemdp.runs as runs
    monkeypatch.setattr(runs, "PARQUET_ROWS", 100)
    out = write_run(train(**SHORT), tmp_path / "run", plot=False)
    assert (out / "history.parquet").is_file()


def test_load_sweep_and_light_runs(tmp_path):
    from treemdp.sweep import grid, sweep
    configs = grid(TrainConfig(sft_steps=20, daa_steps=20), loss=["dpo", "slic"], seed=[0, 1])
    sweep(configs, tmp_path / "grid", light=True, progress=False)
    loaded = load_sweep(tmp_path / "grid")
    assert len(loaded.results) == 4 and "top1_ood_at_peak_trajectory" in loaded.results
    run = loaded.run(loaded.results["run"].iloc[0])
    assert run.config.loss == "dpo" and "peak_mass_chosen" in run.summary
    with pytest.raises(UserError, match="light sweep run"):
        run.history
    with pytest.raises(UserError, match="not a finished treemdp run"):
        treemdp.load_run(tmp_path)


def test_sweep_table_never_pools_settings():
    from treemdp.sweep import format_table
    table = pd.DataFrame({"loss": ["dpo"] * 4, "beta": [0.1] * 4, "seed": [0, 1, 0, 1], "hidden_size": [8, 8, 32, 32],
                          "data": ["a.json", "a.json", "b.json", "b.json"], "daa_lr": [0.01] * 4,
                          "peak_ood_mass": [0.1, 0.2, 0.3, 0.4], "final_ood_mass": [0.0, 0.0, 0.1, 0.1]})
    text = format_table(table)
    assert "hidden_size=8, data=a.json" in text and "hidden_size=32, data=b.json" in text
    assert "daa_lr" not in text and len(text.splitlines()) == 3


@pytest.mark.parametrize("make", [lambda t: t, lambda t: t.numpy(), lambda t: t.tolist(), lambda t: tuple(t.tolist())])
def test_trajectory_name_and_index_take_tensors_arrays_and_lists(make):
    mdp = TreeMDP()
    row = mdp.trajectories()[12]
    assert mdp.trajectory_name(make(row)) == "s1-a1-s3-a1-s9-a0-s∞"
    assert int(mdp.trajectory_index(make(row))) == 12
    assert mdp.trajectory_index(make(mdp.trajectories()[10:13])).tolist() == [10, 11, 12]


def test_check_device_names_what_is_available():
    assert check_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="not available.*available: cpu"):
            check_device("cuda")
    with pytest.raises(UserError, match="unknown device"):
        check_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["train", "--out", "o"], ["sweep", "--out", "o"]])
def test_cli_device_that_is_not_there_is_one_line(tmp_path, command):
    proc = cli(*command, "--device", "cuda", "--quiet", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: device 'cuda' is not available")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_shape_from_the_data_file(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"branching": 2, "demonstrations": [[0, 0, 0, 0], [1, 1, 1, 1]],
                                "preferences": [{"chosen": [1, 1, 1, 1], "rejected": [0, 0, 0, 0]}]}))
    proc = cli("train", "--data", data, "--sft-steps", 5, "--daa-steps", 5, "--quiet", "--no-plot", "--out", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["branching"], config["depth"]) == (2, 4)
    proc = cli("train", "--data", data, "--depth", 3, "--quiet", "--out", tmp_path / "r2")
    assert proc.returncode == 2 and "--depth 3 disagrees with the data file" in proc.stderr
    proc = cli("train", "--data", data, "--branching", 3, "--quiet", "--out", tmp_path / "r2")
    assert proc.returncode == 2 and "'branching' is 2" in proc.stderr
    # no branching key: actions beyond the default branching are an error that says how to name it
    data.write_text(json.dumps({"demonstrations": [[0, 4]], "preferences": [{"chosen": [4, 4], "rejected": [0, 4]}]}))
    proc = cli("train", "--data", data, "--quiet", "--out", tmp_path / "r3")
    assert proc.returncode == 2 and "action 4 is not in [0, 3)" in proc.stderr and '"branching": N' in proc.stderr


def test_cli_bad_row_in_one_of_several_data_files_names_the_file(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"demonstrations": [[0, 0, 0]], "preferences": [{"chosen": [1, 1, 0], "rejected": [0, 0, 0]}]}))
    bad.write_text(json.dumps({"demonstrations": [[0, 0, 0]], "preferences": [{"chosen": [1, 1, 0], "rejected": [1, 1, 0]}]}))
    proc = cli("sweep", "--data", good, bad, "--quiet", "--out", tmp_path / "g")
    assert proc.returncode == 2 and str(bad) in proc.stderr and "chosen equals rejected" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
