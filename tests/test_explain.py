"""`treemdp explain RUN`: the exact account of where the chosen probability went, from each source."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from treemdp import TreeMDP, paper_dataset
from treemdp.cli import main
from treemdp.phenomena.explain import account, explain_run, group_masses, trajectory_groups
from treemdp.tree import make_dataset

TINY = ["--sft-steps", "30", "--daa-steps", "40", "--daa-lr", "0.03", "--hidden-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "run"
    assert main(["train", "--loss", "dpo", "--beta", "0.1", "--out", str(out), *TINY]) == 0
    return out


def test_groups_of_the_paper_data():
    mdp = TreeMDP()
    groups = trajectory_groups(mdp, paper_dataset())
    index = groups.index
    row = lambda *a: int(mdp.trajectory_index([list(a)])[0])  # noqa: E731
    assert index[row(1, 1, 0)] == 0 and index[row(0, 0, 0)] == 1 and index[row(2, 2, 2)] == 2
    assert index[row(1, 1, 2)] == 3 + 2 and index[row(1, 0, 0)] == 3 + 1 and index[row(2, 0, 0)] == 3 + 0
    assert groups.labels[5] == "OOD sharing 2 tokens"
    # one pair of several: the other pairs' answers count as other data
    two = make_dataset(mdp, [[0, 0, 0]], [{"chosen": [1, 1, 0], "rejected": [0, 0, 0]},
                                          {"chosen": [2, 2, 2], "rejected": [1, 1, 0]}])
    assert trajectory_groups(mdp, two, pair=1).index[row(1, 1, 0)] == 1
    assert trajectory_groups(mdp, two, pair=0).index[row(2, 2, 2)] == 2


def test_the_account_balances():
    mdp = TreeMDP()
    groups = trajectory_groups(mdp, paper_dataset())
    probs = torch.softmax(torch.randn(5, 27, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    table = account(group_masses(probs, groups), range(5), groups)
    assert table["residual"].abs().max() < 1e-12
    assert table["change"].iloc[0] == 0 and np.allclose(table["chosen"], probs[:, 12].numpy())


def test_the_change_column_has_the_sign_of_the_chosen_mass_move():
    """Δπ(chosen) = π_t(C) − π_0(C): positive when the chosen gains (the 'lost' column was negative then)."""
    mdp = TreeMDP()
    groups = trajectory_groups(mdp, paper_dataset())
    probs = torch.full((2, 27), 0.5 / 26, dtype=torch.float64)
    probs[0, 12], probs[1, 12] = 0.5, 0.8  # the chosen (row 12) gains 0.3
    probs[1, torch.arange(27) != 12] = 0.2 / 26
    table = account(group_masses(probs, groups), range(2), groups)
    assert table["change"].tolist() == pytest.approx([0.0, 0.3], abs=1e-12)
    assert "lost" not in table
    gains = table[[c for c in table if c.startswith("gain: ")]].iloc[1].sum()
    assert gains == pytest.approx(-0.3, abs=1e-12) and table["residual"].abs().max() < 1e-12


def test_explain_prints_a_table_and_writes_a_plot(run_dir, capsys):
    assert main(["explain", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "from metrics.csv" in out and "OOD/2" in out and "π(chosen)" in out
    assert (run_dir / "explain.png").stat().st_size > 10_000
    assert out.count("\n") >= 8


def test_every_source_gives_the_same_account(run_dir, tmp_path):
    from_metrics = explain_run(run_dir)
    from_history = explain_run(run_dir, pair=0)  # one pair: read from the history
    assert (from_metrics.source, from_history.source) == ("metrics.csv", "history")
    np.testing.assert_allclose(from_history.table.drop(columns="step"), from_metrics.table.drop(columns="step"),
                               atol=2e-6)
    bare = tmp_path / "bare"  # a light run: config and summary only -> re-run the config
    shutil.copytree(run_dir, bare)
    for name in ("history.csv", "metrics.csv", "data.json", "policy.pt", "reference.pt"):
        (bare / name).unlink()
    rerun = explain_run(bare)
    assert rerun.source == "re-run" and rerun.note == ""
    np.testing.assert_allclose(rerun.table.drop(columns="step"), from_metrics.table.drop(columns="step"), atol=2e-6)


@pytest.mark.parametrize("args, message", [
    (["explain", "{missing}"], "is not a treemdp run folder"),
    (["explain", "{file}"], "is not a treemdp run folder"),
    (["explain", "{run}", "--pair", "3"], "pair 3 is out of range"),
    (["explain", "{run}", "--rows", "1"], "--rows must be >= 2"),
    (["explain", "{run}", "--out", "{run}/table.txt"], "--out must end in .png"),
])
def test_bad_input_is_one_error_line(run_dir, tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    fill = {"missing": str(tmp_path / "nope"), "file": str(tmp_path / "file"), "run": str(run_dir)}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err
