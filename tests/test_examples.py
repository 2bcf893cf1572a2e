"""The scripts in examples/ (what a newcomer reads first) do what they say."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from treemdp import trajectory_log_probs
from treemdp.lab.quality import expected, win_scores
from treemdp.losses import OBJECTIVES
from treemdp.training import train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("beta,seed", [(0.1, 0), (0.5, 3)])
def test_tabular_dpo_by_hand_equals_the_engine_bit_for_bit(beta, seed):
    by_hand = load("tabular_dpo").tabular_dpo(beta=beta, seed=seed, sft_steps=40, daa_steps=60)
    run = train(policy="tabular", loss="dpo", beta=beta, seed=seed, sft_steps=40, daa_steps=60, progress=False)
    engine = trajectory_log_probs(run.policy).detach().exp()
    assert torch.equal(by_hand, engine)
    assert math.isclose(float(by_hand.sum()), 1.0, rel_tol=1e-5)


def test_custom_objective_is_dpo_at_zero_margin():
    saved = dict(OBJECTIVES)
    try:
        example = load("custom_objective")
        ood = example.compare(gammas=(0.0, 2.0), sft_steps=40, daa_steps=60)
    finally:
        OBJECTIVES.clear()
        OBJECTIVES.update(saved)
    assert ood["margin_dpo(gamma=0.0)"] == ood["dpo"]  # -log sigmoid(beta*h - 0) is DPO, same steps
    assert ood["margin_dpo(gamma=2.0)"] != ood["dpo"]


def test_lab_run_starts_at_the_reference_and_ends_where_its_policy_is():
    result = load("lab_run").lab_run(tree="3x3", pairs=16, demos=16, sft_steps=30, steps=40, rm_steps=10)
    curve = result.curve
    assert abs(curve["win_gain"].iloc[0]) < 1e-6 and curve["kl_to_reference"].iloc[0] == 0.0  # pi = ref
    # the last row's win rate, recomputed from the final policy: E_pi[G], G(y) = ref(r* < r*(y)) + ties/2
    win = expected(result.final_probs, win_scores(result.ref_probs, result.gold.values))
    assert math.isclose(curve["win_gain"].iloc[-1], float(win) - 0.5, rel_tol=1e-9, abs_tol=1e-12)
    assert result.summary["peak_win_gain"] >= curve["win_gain"].iloc[-1]


@pytest.mark.slow
def test_tabular_dpo_script_runs():
    out = subprocess.run([sys.executable, str(EXAMPLES / "tabular_dpo.py")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mass on the 24 never shown (OOD)" in out.stdout
