"""Data drawn from a gold reward: SFT demonstrations and Bradley-Terry-labelled preference pairs.

    demonstrations   y ~ p_data(y) ∝ exp(r*(y) / tau_demo) on the gold's support (a softmax of r*)
    pairs            y1, y2 ~ source (the SFT reference, or uniform), independently, redrawn while equal
    labels           y1 preferred with probability sigma((r*(y1) - r*(y2)) / tau)   (Bradley-Terry)
                     tau = 0: deterministic, the higher r* wins (a tie is a fair coin)

Every draw comes from a named stream of the run's seed (:func:`treemdp.rng.stream`): a run's data depend on its
seed only. Pairs are drawn as one stream per seed and a dataset of N pairs takes the first N, so the
datasets of one seed are nested (N = 16 is a prefix of N = 64).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UserError
from ..rng import stream
from ..tree import Dataset, Preference, TreeMDP
from .gold import GoldReward



def data_distribution(gold: GoldReward, temperature: float) -> torch.Tensor:
    """p_data(y) ∝ exp(r*(y) / temperature) on the gold's support, float64 [T]."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise UserError(f"demo_temperature must be a finite number > 0, got {temperature!r}")
    logits = gold.values / temperature
    if gold.support is not None:
        logits = logits.masked_fill(~gold.support, -math.inf)
    return torch.softmax(logits, -1)


def bradley_terry_probability(r1, r2, temperature: float):
    """P(y1 preferred over y2) = sigma((r1 - r2) / temperature); temperature 0: 1, 0 or 1/2 on ties."""
    diff = np.asarray(r1, dtype=float) - np.asarray(r2, dtype=float)
    if temperature == 0:
        return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    return 1.0 / (1.0 + np.exp(-diff / temperature))


def _probabilities(probs) -> np.ndarray:
    p = np.asarray(torch.as_tensor(probs, dtype=torch.float64)).reshape(-1).clip(min=0.0)
    return p / p.sum()


def sample_demonstrations(mdp: TreeMDP, gold: GoldReward, n: int, *, temperature: float = 1.0,
                          seed: int = 0) -> torch.Tensor:
    """``n`` trajectory rows drawn i.i.d. from :func:`data_distribution`, LongTensor [n]."""
    rng = stream(seed, "demonstrations")
    return torch.from_numpy(rng.choice(mdp.n_trajectories, size=int(n), p=_probabilities(data_distribution(gold, temperature))))


def sample_pairs(source_probs, gold: GoldReward, n: int, *, temperature: float = 1.0,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled pairs: (chosen rows [n], rejected rows [n]).

    Args:
        source_probs: [T] where y1 and y2 come from (the reference policy, or uniform).
        gold: labels follow Bradley-Terry under ``gold.values``.
        temperature: label noise; 0 is deterministic.
        seed: the run's seed (the stream is shared by every N of that seed: nested datasets).
    """
    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"label_temperature must be a finite number >= 0, got {temperature!r}")
    p = _probabilities(source_probs)
    if (p > 0).sum() < 2:
        raise UserError("the pair source puts all its mass on one trajectory: no pair of distinct answers")
    rng = stream(seed, "pairs")
    cdf = np.cumsum(p)
    draw = lambda: min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(p) - 1)  # noqa: E731
    first, second, coins = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n)
    for i in range(int(n)):  # one pair at a time, so the first N of a longer stream are the N-pair data
        a, b = draw(), draw()
        while a == b:
            b = draw()
        first[i], second[i], coins[i] = a, b, rng.random()
    r = gold.values.numpy()
    first_wins = coins < bradley_terry_probability(r[first], r[second], temperature)
    chosen = np.where(first_wins, first, second)
    rejected = np.where(first_wins, second, first)
    return torch.from_numpy(chosen), torch.from_numpy(rejected)


def lab_dataset(mdp: TreeMDP, demonstrations: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> Dataset:
    """A :class:`~treemdp.tree.Dataset` from trajectory rows (demonstrations [D], pairs [N])."""
    paths = mdp.trajectories()
    prefs = tuple(Preference(tuple(paths[w].tolist()), tuple(paths[l].tolist())) for w, l in zip(chosen.tolist(), rejected.tolist()))
    return Dataset(demonstrations=paths[demonstrations], preferences=prefs)


__all__ = ["data_distribution", "bradley_terry_probability", "sample_demonstrations", "sample_pairs", "lab_dataset"]
