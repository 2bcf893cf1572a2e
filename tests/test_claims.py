"""The paper's claims that hold robustly here, asserted over seeds at the settings of the figures.

Settings: treemdp.reproduce.PAPER (GRU hidden 32, Adam, SFT lr 1e-2 x 200, DAA lr 3e-2 x 1000),
the controls as in figures/optimizers.png and figures/tabular_vs_gru.png, seeds 0-3, every
(loss, beta) of the paper. Claims that do *not* hold (OOD mass at every beta; mass staying off
the data at the end) are reported in figures/README.md, not asserted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from treemdp.training import train_batch
from treemdp.reproduce import BETAS, LOSSES, PAPER
from treemdp.sweep import grid
from treemdp.training import TrainConfig

SEEDS = range(4)


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    base = TrainConfig(**PAPER)  # logs every step: the exact peak is in the history
    arms = {
        "gru_adam": base,
        "gru_sgd": dataclasses.replace(base, optimizer="sgd", sft_lr=1.0, daa_lr=1.0),
        "tabular_adam": dataclasses.replace(base, policy="tabular", sft_lr=3e-2),
    }
    rows = []
    for arm, arm_base in arms.items():
        configs = grid(arm_base, loss=LOSSES, beta=BETAS, seed=SEEDS)
        for config, result in zip(configs, train_batch(configs)):
            row = dict(arm=arm, loss=config.loss, beta=config.beta, seed=config.seed)
            if isinstance(result, Exception):  # diverged (SGD at lr 1 with IPO beta=0.5)
                rows.append(row | dict(peak=np.nan))
                continue
            s, h = result.summary, result.history
            at_peak = h[(h["phase"] == s["peak_ood_phase"]) & (h["step"] == s["peak_ood_step"]) & ~h["in_distribution"]]
            rows.append(row | dict(peak=s["peak_ood_mass"], final=s["final_ood_mass"], sft=s["sft_ood_mass"],
                                   top3=at_peak["prob"].nlargest(3).sum() / at_peak["prob"].sum()))
    return pd.DataFrame(rows)


def test_gru_adam_puts_more_peak_mass_off_the_data_than_the_controls(runs):
    mean = runs.groupby("arm")["peak"].mean()
    assert mean["gru_adam"] > 0.4, mean
    assert mean["gru_adam"] > mean["tabular_adam"] + 0.3, mean
    assert mean["gru_adam"] > mean["gru_sgd"] + 0.2, mean
    # Not one lucky seed: the ordering holds seed by seed (mean over the 9 loss x beta cells).
    per_seed = runs.groupby(["seed", "arm"])["peak"].mean().unstack()
    assert (per_seed["gru_adam"] > per_seed["tabular_adam"] + 0.2).all(), per_seed
    assert (per_seed["gru_adam"] > per_seed["gru_sgd"] + 0.1).all(), per_seed


def test_tabular_policy_stays_at_its_post_sft_leftover(runs):
    """No shared parameters, no leak: the tabular policy's OOD mass never rises above what SFT left."""
    tabular = runs[runs["arm"] == "tabular_adam"]
    assert (tabular["peak"] - tabular["sft"]).max() < 0.02


def test_ood_mass_is_substantial_for_several_settings(runs):
    """The paper: DAAs can move a significant share of mass off the data (most of it, here)."""
    cells = runs[runs["arm"] == "gru_adam"].groupby(["loss", "beta"])["peak"].mean()
    assert (cells > 0.5).sum() >= 4, cells
    assert runs[runs["arm"] == "gru_adam"]["peak"].max() > 0.95


def test_ood_mass_concentrates_on_few_trajectories(runs):
    """At its peak, the top 3 of the 24 OOD trajectories hold most of the OOD mass."""
    moved = runs[runs["peak"] > 0.1]
    assert len(moved) >= 20
    assert (moved["top3"] > 0.9).all(), moved.sort_values("top3").head()
