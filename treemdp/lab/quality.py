"""Exact quality of a distribution over trajectories: gold reward, win rate, the KL frontiers.

Every function takes probabilities (or log-probs) over all T trajectories, so every number is a
sum, never an estimate (PAPER_NOTES, "The over-optimization lab: exact quantities"):

    gold       E_pi[r*] = sum_y pi(y) r*(y)
    win rate   W(pi) = sum_{y, y'} pi(y) ref(y') ([r*(y) > r*(y')] + 1/2 [r*(y) = r*(y')])
             = sum_y pi(y) G(y),  G(y) = ref(r* < r*(y)) + 1/2 ref(r* = r*(y))    (W(ref) = 1/2)
    frontier   pi*_lam = ref * exp(s / lam) / Z maximises E_pi[s] - lam * KL(pi || ref)
               (s = r* for gold, s = G for the win rate, which is linear in pi)

Shapes: the last dimension is always the T trajectories; leading dimensions (runs, steps) broadcast.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
import torch

from ..exact import kl_divergence


def expected(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """E_pi[v] = sum_y pi(y) v(y): [..., T] x [..., T] -> [...]."""
    return (probs * values).sum(-1)


#: KL(pi || ref) = sum_y pi(y) (log pi(y) - log ref(y)), exact; 0 * log 0 = 0. [..., T] -> [...].
kl = kl_divergence


def win_scores(ref_probs: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """G(y) = ref(r* < r*(y)) + 1/2 ref(r* = r*(y)): the chance y beats a draw from ref, ties half.

    Sorting by r* once makes it O(T log T) (ties are exact equality).

    Args:
        ref_probs: [..., T] reference probabilities.
        gold: [T] gold rewards.

    Returns:
        [..., T], so that the win rate of any pi against ref is ``expected(pi, G)``.
    """
    order = torch.argsort(gold)
    sorted_gold = gold[order]
    _, group, counts = torch.unique_consecutive(sorted_gold, return_inverse=True, return_counts=True)
    mass = ref_probs[..., order]  # [..., T] in gold order
    group_mass = torch.zeros(*mass.shape[:-1], len(counts), dtype=mass.dtype, device=mass.device)
    group_mass.index_add_(-1, group.to(mass.device), mass)
    below = torch.cumsum(group_mass, -1) - group_mass  # ref mass strictly below each group
    score_sorted = (below + 0.5 * group_mass)[..., group.to(mass.device)]
    out = torch.empty_like(score_sorted)
    out[..., order.to(mass.device)] = score_sorted
    return out


def win_rate(probs: torch.Tensor, ref_probs: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """W(pi) against ref: P[r*(y) > r*(y')] + 1/2 P[r*(y) = r*(y')], y ~ pi, y' ~ ref. [..., T] -> [...]."""
    return expected(probs, win_scores(ref_probs, gold))


def tilted_log_probs(ref_logp: torch.Tensor, score: torch.Tensor, lam) -> torch.Tensor:
    """log pi*_lam = log ref + s / lam - log Z: the maximiser of E_pi[s] - lam * KL(pi || ref).

    (Gibbs variational principle; the frontier of the lab and the optimum of KL-regularised RLHF
    with a tabular policy, lam = beta.) ``lam`` broadcasts against the leading dims; lam > 0.
    """
    logits = ref_logp + score / torch.as_tensor(lam, dtype=ref_logp.dtype)
    return logits - torch.logsumexp(logits, -1, keepdim=True)


def frontier_lambdas(ref_probs: torch.Tensor, score: torch.Tensor, count: int = 121) -> torch.Tensor:
    """A log-spaced grid of lam from 'barely moves' (KL ~ 1e-6) to 'nearly the argmax' of s."""
    spread = float(torch.sqrt(expected(ref_probs, (score - expected(ref_probs, score)) ** 2)))
    spread = spread if spread > 0 else 1.0
    return spread * torch.logspace(3, -3, count, dtype=torch.float64)


def frontier(ref_logp: torch.Tensor, gold: torch.Tensor, *, kind: str = "gold",
             lambdas: Optional[torch.Tensor] = None) -> pd.DataFrame:
    """The best value reachable at each KL budget, traced over lam (PAPER_NOTES, frontier).

    Args:
        ref_logp: [T] the reference's log-probs.
        gold: [T] r*.
        kind: ``"gold"`` tilts by r* (best E[r*] per KL), ``"win"`` by G (best win rate per KL).
        lambdas: the lam grid (default :func:`frontier_lambdas`).

    Returns:
        One row per lam, KL increasing: ``kind, lambda, kl, sqrt_kl, gold_gain, win_gain`` (gains
        over ref: E_pi[r*] - E_ref[r*] and W(pi) - 1/2); lam = inf (pi = ref) first.
    """
    ref_logp = ref_logp.double()
    ref = ref_logp.exp()
    G = win_scores(ref, gold)
    score = {"gold": gold, "win": G}[kind]
    lambdas = frontier_lambdas(ref, score) if lambdas is None else torch.as_tensor(lambdas, dtype=torch.float64)
    logp = tilted_log_probs(ref_logp, score, lambdas[:, None])  # [L, T]
    p = logp.exp()
    table = pd.DataFrame({
        "kind": kind, "lambda": np.concatenate([[math.inf], lambdas.numpy()]),
        "kl": np.concatenate([[0.0], kl(logp, ref_logp).clamp_min(0).numpy()]),
        "gold_gain": np.concatenate([[0.0], (expected(p, gold) - expected(ref, gold)).numpy()]),
        "win_gain": np.concatenate([[0.0], (expected(p, G) - 0.5).numpy()]),
    })
    table.insert(3, "sqrt_kl", np.sqrt(table["kl"]))
    return table


def frontier_at(table: pd.DataFrame, kl_values, column: str) -> np.ndarray:
    """The frontier's ``column`` at given KL values (linear in sqrt KL between its points; its maximum past the end)."""
    d = np.sqrt(np.maximum(np.asarray(kl_values, dtype=float), 0.0))
    order = np.argsort(table["sqrt_kl"].to_numpy())
    x, y = table["sqrt_kl"].to_numpy()[order], table[column].to_numpy()[order]
    return np.interp(d, x, y)  # past its end the frontier stays at its supremum (the budget is slack)


def weighted_r2(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, *, floor: float = 1e-12) -> torch.Tensor:
    """R^2 of the weighted least-squares line y ~ a + b x: corr_w(x, y)^2. [..., T] -> [...].

    The toy's paper eq. 6: regress the implicit reward of answers drawn from pi on their length;
    weighting by pi(y) is the infinite-sample version. NaN where y (or x) is constant under w.
    """
    w = weights / weights.sum(-1, keepdim=True)
    mx, my = expected(w, x)[..., None], expected(w, y)[..., None]
    cov = expected(w, (x - mx) * (y - my))
    vx, vy = expected(w, (x - mx) ** 2), expected(w, (y - my) ** 2)
    r2 = cov ** 2 / (vx * vy)
    return torch.where((vx > floor) & (vy > floor), r2, torch.full_like(r2, math.nan))


__all__ = ["expected", "kl", "win_scores", "win_rate", "tilted_log_probs", "frontier", "frontier_at",
           "frontier_lambdas", "weighted_r2"]
