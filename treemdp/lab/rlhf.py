"""Classical RLHF in the toy: reward-model scorers for the Bradley-Terry fit, and their checks.

A reward model here is a :class:`~treemdp.policies.TreePolicy` whose per-step outputs are *not*
normalised: the tree walk that sums a policy's per-token log-probs then sums per-token rewards,
so ``scorer.stacked_log_probs(params)`` is r_phi(y) [R, T] (a token-additive reward, like a dense
per-token reward head). The engine fits it with :func:`treemdp.engine.bradley_terry_loss` and then
maximises E_pi[r_phi] - beta * KL(pi || ref) with :func:`treemdp.engine.kl_regularised_loss`.

    rnn       the GRU policy's network, its head read as per-token rewards: shares parameters across
              states, so it generalises (rightly or wrongly) to trajectories no pair mentions
    tabular   one free reward per (state, action): r_phi can be any function of y (the last level
              alone already is), and it learns nothing about trajectories outside the pairs
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError
from ..policies import RNNPolicy, TabularPolicy, TreePolicy
from ..tree import TreeMDP


class RNNScorer(RNNPolicy):
    """:class:`~treemdp.policies.RNNPolicy` whose head gives per-token rewards (no softmax)."""

    def next_log_probs(self, prep, state):
        h = state[0] if self.cell_type == "lstm" else state
        params = prep["params"]
        return torch.baddbmm(params["head_bias"], h, params["head_weight"])


class TabularScorer(TabularPolicy):
    """One reward per (state, action), summed along the trajectory (no softmax)."""

    def next_log_probs(self, prep, state):
        return prep["logits"][:, state]


#: name -> builder(mdp, *, seed, hidden_size, cell) -> scorer.
SCORERS: dict[str, Callable[..., TreePolicy]] = {
    "rnn": lambda mdp, *, seed, hidden_size, cell: RNNScorer(mdp, hidden_size=hidden_size, cell=cell, seed=seed),
    "tabular": lambda mdp, *, seed, hidden_size, cell: TabularScorer(mdp, seed=seed, init_scale=0.0),
}


def make_scorer(mdp: TreeMDP, kind: str = "rnn", *, seed: int = 0, hidden_size: int = 16, cell: str = "gru") -> TreePolicy:
    """A reward-model scorer by name (:data:`SCORERS`)."""
    if kind not in SCORERS:
        raise UserError(f"unknown reward model {kind!r}; choose one of: {', '.join(SCORERS)}")
    return SCORERS[kind](mdp, seed=seed, hidden_size=hidden_size, cell=cell)


def ranking_accuracy(reward: torch.Tensor, gold: torch.Tensor, ref_probs: torch.Tensor) -> torch.Tensor:
    """P[r_phi orders y, y' as r* does | y, y' ~ ref, r*(y) != r*(y')], exact; ties of r_phi count 1/2.

    The reward model's accuracy on fresh pairs from the reference. O(T^2) per run: [R, T] -> [R].
    """
    dg = torch.sign(gold[:, None] - gold[None, :])  # [T, T]
    weight = ref_probs[:, :, None] * ref_probs[:, None, :] * (dg != 0)  # [R, T, T]
    dr = torch.sign(reward[:, :, None] - reward[:, None, :])
    agree = torch.where(dr == 0, 0.5, (dr == dg).double())
    return (weight * agree).sum((1, 2)) / weight.sum((1, 2))


#: A KL-regularised optimum with at least this share of its mass on the reward's argmax is "the argmax policy".
ARGMAX_SHARE = 0.99


def degenerate_betas(results) -> list[float]:
    """The betas at which every RLHF run's exact optimum pi*_beta = ref exp(r/beta) / Z is the reward
    model's argmax policy (summary ``optimum_argmax_mass`` >= :data:`ARGMAX_SHARE`): such betas give
    the same policy, so a sweep over them sweeps nothing. ``results``: results.csv as a DataFrame."""
    if "optimum_argmax_mass" not in results or "method" not in results:
        return []
    rlhf = results[(results["method"] == "rlhf") & results["optimum_argmax_mass"].notna()]
    share = (rlhf["optimum_argmax_mass"] >= ARGMAX_SHARE).groupby(rlhf["beta"]).all()
    return sorted(float(b) for b in share[share].index)


def degenerate_warning(results) -> str | None:
    """A one-line warning when two or more RLHF betas are degenerate (:func:`degenerate_betas`), else None."""
    betas = degenerate_betas(results)
    if len(betas) < 2:
        return None
    rlhf = results[results["method"] == "rlhf"]
    scale = f"; the reward model's std under the reference is {rlhf['rm_scale'].mean():.3g}" if "rm_scale" in rlhf else ""
    normalized = bool(rlhf["rm_normalized"].all()) if "rm_normalized" in rlhf else False
    return (f"RLHF beta sweep is degenerate: at beta {', '.join(f'{b:g}' for b in betas)} the KL-regularised optimum "
            f"puts >= {ARGMAX_SHARE:.0%} of its mass on the reward model's argmax (the same policy for each){scale}; "
            "use larger betas" + ("" if normalized else " or --rm-normalize true"))


__all__ = ["RNNScorer", "TabularScorer", "SCORERS", "make_scorer", "ranking_accuracy", "ARGMAX_SHARE",
           "degenerate_betas", "degenerate_warning"]
