"""Stacked runs: each run in a batch equals the run alone; grids resume after a kill; CLI errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from treemdp.errors import UserError
from treemdp.engine import stack_parameters
from treemdp.exact import trajectory_log_probs
from treemdp.policies import make_policy
from treemdp.sweep import grid, parse_seeds, run_names, sweep
from treemdp.tree import TreeMDP
from treemdp.training import TrainConfig, TrainingDiverged, shape_key, train, train_batch

SHORT = dict(sft_steps=30, daa_steps=60, log_every=3)


def _compare(alone, batched, atol=1e-4):
    pd.testing.assert_frame_equal(batched.history, alone.history, check_exact=False, atol=atol, rtol=0)
    assert set(alone.metrics.columns) == set(batched.metrics.columns)
    for column in ("loss", "ood_mass", "chosen_prob", "rejected_prob", "kl_to_reference", "entropy"):
        np.testing.assert_allclose(batched.metrics[column], alone.metrics[column], atol=atol, rtol=1e-4,
                                   err_msg=column)
    for key, value in alone.summary.items():
        if key in ("train_seconds", "top_ood", "top_ood_at_peak"):
            continue
        if isinstance(value, float):
            assert batched.summary[key] == pytest.approx(value, abs=atol, rel=1e-3), key
        else:
            assert batched.summary[key] == value, key
    # The returned modules are the trained policy and the frozen SFT reference (weights can differ
    # more than outputs: Adam's step on a near-zero gradient is sign-sensitive).
    for a, b in ((alone.policy, batched.policy), (alone.reference, batched.reference)):
        torch.testing.assert_close(trajectory_log_probs(b).exp(), trajectory_log_probs(a).exp(), atol=atol, rtol=0)
    final = alone.history[alone.history["step"] == alone.history["step"].max()]
    final = final[final["phase"] == final["phase"].iloc[-1]]
    np.testing.assert_allclose(trajectory_log_probs(batched.policy).exp(), final["prob"], atol=atol)


@pytest.mark.parametrize("shape", [
    dict(cell="gru", optimizer="adam"),
    dict(cell="lstm", optimizer="rmsprop", hidden_size=8),
    dict(cell="rnn", optimizer="sgd", hidden_size=8, sft_lr=0.1, daa_lr=0.05),
    dict(policy="tabular", optimizer="adam"),
])
def test_stacked_runs_equal_each_run_alone(shape):
    """Runs differing in loss, beta, seed and learning rates, stacked in one batch (other rows,
    several parameter groups, shared SFT), equal each run trained alone (a batch of one)."""
    base = TrainConfig(**SHORT, **shape)
    lr = base.daa_lr
    configs = [TrainConfig(**{**base.to_dict(), "loss": loss, "beta": beta, "seed": seed, "daa_lr": lr * f})
               for loss, beta, seed, f in [("dpo", 0.1, 0, 1), ("ipo", 0.5, 1, 2), ("slic", 0.01, 2, 1), ("dpo", 0.5, 3, 0.5)]]
    results = train_batch(configs)
    for config, batched in zip(configs, results):
        _compare(train(config, progress=False), batched)


def test_runs_sharing_a_seed_share_sft_correctly():
    """Same seed, several losses / DAA lrs and two SFT lrs in one batch: each equals train() alone."""
    configs = [TrainConfig(**SHORT, loss=loss, beta=0.1, seed=7, sft_lr=sft_lr, daa_lr=daa_lr)
               for loss, sft_lr, daa_lr in [("dpo", 1e-2, 1e-2), ("slic", 1e-2, 3e-2), ("ipo", 3e-2, 1e-2),
                                            ("dpo", 3e-2, 3e-2)]] + [TrainConfig(**SHORT, seed=8)]
    for config, batched in zip(configs, train_batch(configs)):
        _compare(train(config, progress=False), batched)


def test_a_stacked_forward_pass_is_the_lone_one_up_to_rounding():
    """Row r of a stacked forward pass is run r's own log-probs up to float32 rounding.

    Stacking changes only where a run's numbers sit in the kernels' vectors (ATen's vector body vs
    scalar tail, MKL's blocking), so per tree level each dot product of length H (hidden gates, head)
    may round differently: the standard bound gamma_n = n u (u = 2^-24) per level, summed over the
    depth, gives |delta log p| <= depth (H + b) u max(1, |log p|). Measured: at most ~3 ulps."""
    u = 2.0 ** -24
    for hidden, (b, d) in [(32, (3, 3)), (24, (4, 4)), (7, (4, 4))]:
        mdp = TreeMDP(b, d)
        policies = [make_policy(mdp, seed=s, hidden_size=hidden) for s in range(7)]
        with torch.no_grad():
            crowd = policies[0].stacked_log_probs(stack_parameters(policies))
            for r, policy in enumerate(policies):
                alone = policy.stacked_log_probs(stack_parameters([policy]))[0]
                scale = alone.abs().clamp(min=1.0)
                assert ((crowd[r] - alone).abs() <= d * (hidden + b) * u * scale).all(), (hidden, b, d, r)


def test_runs_in_a_batch_do_not_interact():
    """A run's numbers do not depend on which other runs share its batch beyond float32 rounding.

    The forward pass of a stacked run equals its lone one up to a few ulps (test above), and no
    run's loss reaches another row; but Adam's g / (sqrt(v) + eps) turns ulp-level differences into
    slowly growing ones over the steps, so the promise after 90 steps is a tolerance, not bit
    identity. Measured worst case over hidden 7/16/24/32, 1-20 batch mates, first or last in the
    batch: 4.6e-6 in probability (AMD EPYC, both kernel settings of treemdp/kernels.py); 2.5e-6 on
    an Intel Xeon. atol = 1e-4 (as in the other stacking tests) leaves a 20x margin, while runs
    that did interact (a loss or an update reading another row) move by the learning rate's scale,
    1e-2, within a few steps. Resuming a grid is bit for bit (its batches are fixed by the grid)."""
    config = TrainConfig(**SHORT, loss="ipo", beta=0.1, seed=5)
    alone = train_batch([config])[0]
    mates = [TrainConfig(**SHORT, loss="dpo", beta=0.01, seed=s) for s in range(6)]
    for batch, index in ((mates + [config], -1), ([config] + mates, 0)):
        crowd = train_batch(batch)[index]
        np.testing.assert_allclose(alone.history["prob"], crowd.history["prob"], atol=1e-4, rtol=0)


def test_divergence_is_reported_per_run():
    """A diverging run comes back as the TrainingDiverged that train() raises; its neighbours finish."""
    bad = TrainConfig(**SHORT, optimizer="sgd", sft_lr=0.5, daa_lr=100.0, loss="ipo", beta=0.5)
    good = TrainConfig(**{**bad.to_dict(), "daa_lr": 0.1})
    out_bad, out_good = train_batch([bad, good])
    assert isinstance(out_bad, TrainingDiverged)
    with pytest.raises(TrainingDiverged) as alone:
        train(bad, progress=False)
    assert str(out_bad) == str(alone.value)  # same phase, step and message
    assert not isinstance(out_good, Exception) and out_good.summary["final_chosen_prob"] > 0.5


def test_shapes_and_grid():
    configs = grid(TrainConfig(), loss=["dpo", "ipo"], beta=[0.1, 0.5], seed=parse_seeds(["0-2"]))
    assert len(configs) == 12 and len({shape_key(c) for c in configs}) == 1
    assert shape_key(TrainConfig(hidden_size=8)) != shape_key(TrainConfig())
    names = run_names(configs)
    assert names[0] == "loss=dpo,beta=0.1,seed=0" and len(set(names)) == 12
    assert parse_seeds(["0-2", "7", "9,11"]) == [0, 1, 2, 7, 9, 11]
    for bad in (["x"], ["3-1"], ["1", "1"]):
        with pytest.raises(UserError):
            parse_seeds(bad)
    with pytest.raises(UserError):
        grid(TrainConfig(), lerning_rate=[1])
    with pytest.raises(UserError):
        grid(TrainConfig(), beta=[0.0])


def test_sweep_writes_contract_runs_and_skips_finished(tmp_path):
    configs = grid(TrainConfig(**SHORT), loss=["dpo", "slic"], beta=[0.1], seed=[0, 1])
    table = sweep(configs, tmp_path, plot=False, progress=False)
    assert len(table) == 4 and (tmp_path / "results.csv").is_file()
    stored = pd.read_csv(tmp_path / "results.csv")
    assert list(stored["run"]) == run_names(configs)
    for name in stored["run"]:
        run = tmp_path / name
        for file in ("config.json", "history.csv", "metrics.csv", "summary.json", "policy.pt"):
            assert (run / file).is_file(), file
        history = pd.read_csv(run / "history.csv")
        assert list(history.columns) == ["phase", "step", "trajectory", "prob", "in_distribution", "row",
                                         "log_prob", "action_0", "action_1", "action_2"]
        summary = json.loads((run / "summary.json").read_text())
        alone = train(TrainConfig.from_dict(json.loads((run / "config.json").read_text())), progress=False)
        assert summary["peak_ood_mass"] == pytest.approx(alone.summary["peak_ood_mass"], abs=1e-4)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/summary.json")}
    again = sweep(configs, tmp_path, plot=False, progress=False)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/summary.json")} == before  # nothing retrained
    pd.testing.assert_frame_equal(again, table, check_dtype=False)
    changed = grid(TrainConfig(**{**SHORT, "daa_steps": 61}), loss=["dpo"], beta=[0.1], seed=[0])
    with pytest.raises(UserError, match="other settings"):
        sweep(changed, tmp_path, progress=False)


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "treemdp", *args], capture_output=True, text=True, **kw)


def test_sweep_resumes_after_kill(tmp_path):
    """Kill a sweep subprocess after some runs landed; rerun: every run exactly once, no partial files."""
    out = tmp_path / "grid"
    args = ["sweep", "--loss", "dpo", "ipo", "slic", "--beta", "0.1", "--seeds", "0-1",
            "--sft-steps", "40", "--daa-steps", "400", "--log-every", "1", "--batch-size", "1", "--workers", "1",
            "--out", str(out), "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "treemdp", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("loss=*/summary.json"))) < 2:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    landed = len(list(out.glob("loss=*/summary.json")))
    assert 2 <= landed < 6, f"{landed} runs landed before the kill"
    finished = _cli(*args)
    assert finished.returncode == 0, finished.stderr
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(runs) == 6 and all(not name.startswith(".") for name in runs)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp leftovers
    for run in runs:
        assert sorted(f.name for f in (out / run).iterdir()) == sorted(
            ["config.json", "data.json", "history.csv", "metrics.csv", "summary.json", "policy.pt",
             "reference.pt", "run.png"])
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["run"]) == runs and table["run"].is_unique


def test_sweep_cli_errors(tmp_path, capsys):
    from treemdp.cli import main
    blocker = tmp_path / "file"
    blocker.write_text("")
    for args, needle in [(["--loss", "dpx"], "unknown loss"), (["--beta", "-1"], "beta"),
                         (["--seeds", "a-b"], "seed"), (["--hidden-size", "0"], "hidden_size"),
                         (["--out", str(blocker / "grid")], "cannot write")]:
        code = main(["sweep", "--out", str(tmp_path / "x"), "--daa-steps", "2", "--sft-steps", "2", "--quiet", *args])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert err.startswith("error:") and needle in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").glob("loss=*"))


def test_a_resumed_sweep_gives_the_uninterrupted_numbers_bit_for_bit(tmp_path):
    """A stacked run's last bits depend on its stack; a resume recomputes each unfinished stack whole."""
    configs = grid(TrainConfig(sft_steps=20, daa_steps=30), loss=["dpo", "ipo"], beta=[0.1], seed=range(12))
    whole = sweep(configs, tmp_path / "whole", light=True, batch_size=24, progress=False)
    sweep(configs, tmp_path / "resumed", light=True, batch_size=24, progress=False)
    lost = [tmp_path / "resumed" / name for name in run_names(configs)[2:5]]  # killed inside a stack's writes
    for run in lost:
        shutil.rmtree(run)
    (tmp_path / "resumed" / "results.csv").unlink()
    resumed = sweep(configs, tmp_path / "resumed", light=True, batch_size=24, progress=False)
    assert all((run / "summary.json").is_file() for run in lost)
    timing = [c for c in whole if c.endswith("seconds")]  # wall time, the one thing allowed to differ
    assert timing
    pd.testing.assert_frame_equal(resumed.drop(columns=timing), whole.drop(columns=timing), check_exact=True)
    for run in lost:
        mine, theirs = (json.loads((d / "summary.json").read_text()) for d in (run, tmp_path / "whole" / run.name))
        assert {k: v for k, v in mine.items() if k not in timing} == {k: v for k, v in theirs.items() if k not in timing}
