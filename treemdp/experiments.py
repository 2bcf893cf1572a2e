"""Every pinned experiment plan, in one place: what ``treemdp reproduce`` runs and draws.

The settings of the committed figures are written here, not taken from the configs' defaults, so a
change of defaults cannot silently change a figure. Plain data (no torch); the modules that run
the experiments read it:

- :data:`PAPER`, :data:`LOSSES`, :data:`BETAS`, :class:`Plan` (:data:`FULL`, :data:`QUICK`): the
  toy sweeps of :mod:`treemdp.reproduce` (paper grid, atlas, controls, zoo);
- :class:`PhenPlan` (:data:`PHEN_FULL`, :data:`PHEN_QUICK`): the phenomena experiments
  (:mod:`treemdp.phenomena.figures`);
- :data:`LAB_BASE`, :class:`LabPlan` (:data:`LAB_FULL`, :data:`LAB_QUICK`): the over-optimization
  lab's grids (:mod:`treemdp.lab.experiments`).

``--quick`` uses the QUICK plans.
"""

from __future__ import annotations

import dataclasses

# ----- the toy sweeps (treemdp.reproduce) ----------------------------------------------------------
LOSSES = ("dpo", "ipo", "slic")
BETAS = (0.01, 0.1, 0.5)

#: The paper-style figures (7, 9-17, 18): chosen from the atlas because the effect shows there
#: (a larger DAA step than SFT's); stated on every figure.
PAPER = dict(policy="rnn", cell="gru", hidden_size=32, optimizer="adam", sft_lr=1e-2, daa_lr=3e-2,
             sft_steps=200, daa_steps=1000, log_every=1, branching=3, depth=3, threads=1, device="cpu",
             data=None)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one reproduction (full or ``--quick``)."""

    seeds: tuple
    sft_steps: int
    daa_steps: int
    atlas_hidden: tuple
    atlas_lr: tuple
    dpo_seeds: tuple  # figure 18


FULL = Plan(seeds=tuple(range(5)), sft_steps=200, daa_steps=1000, atlas_hidden=(8, 16, 32),
            atlas_lr=(3e-3, 1e-2, 3e-2), dpo_seeds=(1, 2, 3))
QUICK = Plan(seeds=(0, 1, 2, 3), sft_steps=60, daa_steps=120, atlas_hidden=(8, 16),
             atlas_lr=(1e-2, 3e-2), dpo_seeds=(1, 2, 3))


# ----- the phenomena experiments (treemdp.phenomena.figures) -------------------------------------
@dataclasses.dataclass(frozen=True)
class PhenPlan:
    """Sizes of the phenomena experiments (full or ``--quick``)."""

    token_seeds: tuple
    ches_seeds: tuple
    ches_demos: int
    ches_steps: int
    squeeze_seeds: tuple
    squeeze_steps: int
    ipo_steps: int
    unseen_seeds: tuple


PHEN_FULL = PhenPlan(token_seeds=tuple(range(40)), ches_seeds=tuple(range(5)), ches_demos=8, ches_steps=150,
                     squeeze_seeds=tuple(range(5)), squeeze_steps=300, ipo_steps=2000, unseen_seeds=tuple(range(10)))
PHEN_QUICK = PhenPlan(token_seeds=tuple(range(8)), ches_seeds=(0, 1), ches_demos=4, ches_steps=40,
                      squeeze_seeds=(0, 1), squeeze_steps=60, ipo_steps=300, unseen_seeds=(0, 1))


# ----- the over-optimization lab (treemdp.lab.experiments) ----------------------------------------
#: Every lab setting of the committed figures.
LAB_BASE = dict(tree="4x4", gold="random", gold_seed=0, demos=64, demo_temperature=1.0, pair_source="reference",
                label_temperature=1.0, policy="rnn", cell="gru", hidden_size=16, optimizer="adam", sft_lr=1e-2,
                sft_steps=200, lr=1e-2, steps=1000, batch_size=0, rm="rnn", rm_hidden_size=16, rm_lr=1e-2,
                rm_steps=300, rm_normalize=True, n=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096), log_every=1,
                threads=1,
                device="cpu")


@dataclasses.dataclass(frozen=True)
class LabPlan:
    """Sizes of one reproduction of the lab (full or quick)."""

    tree: str
    seeds: tuple
    steps: int
    sft_steps: int
    rm_steps: int
    betas: tuple
    rlhf_betas: tuple
    pairs: tuple
    hidden: tuple
    spurious_betas: tuple
    epoch_pairs: tuple
    epoch_batch: int
    epoch_steps: int


LAB_FULL = LabPlan(tree="4x4", seeds=tuple(range(10)), steps=1000, sft_steps=200, rm_steps=300,
                   betas=(0.01, 0.05, 0.1, 0.5), rlhf_betas=(0.1, 0.3, 1.0, 3.0), pairs=(16, 64, 256),
                   hidden=(4, 8, 32, 64),
                   spurious_betas=(0.01, 0.1, 0.5), epoch_pairs=(256, 2048), epoch_batch=8, epoch_steps=1024)
LAB_QUICK = LabPlan(tree="3x3", seeds=(0, 1), steps=40, sft_steps=40, rm_steps=40, betas=(0.1, 0.5), rlhf_betas=(0.3, 1.0),
                    pairs=(8, 32),
                    hidden=(4,), spurious_betas=(0.1,), epoch_pairs=(64,), epoch_batch=8, epoch_steps=24)


__all__ = ["PAPER", "LOSSES", "BETAS", "Plan", "FULL", "QUICK", "PhenPlan", "PHEN_FULL", "PHEN_QUICK", "LAB_BASE",
           "LabPlan", "LAB_FULL", "LAB_QUICK"]
