"""Best-of-n exactly: draw n answers from ref, keep the one the proxy scores highest.

With outcomes grouped by equal proxy value and F-, F the reference probability of a proxy value
below / at-or-below a group's, the group wins with probability ``F^n - (F-)^n`` (the max of n
draws lands in it), shared among its members in proportion to ref(y) (a tie among the n draws is
broken uniformly, which keeps each member's share proportional to its ref mass). So

    pi_bon(y) = ref(y) / ref(g) * (F_g^n - F-_g^n),      KL(pi_bon || ref) = sum_g P_g log(P_g / ref(g))

and KL <= log n - (n - 1)/n (Beirami et al. 2024), tight only when ref spreads over a continuum of
distinct proxy values. One sort serves every n; a group-level pass costs O(groups) per n.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import pandas as pd
import torch


def kl_bound(n) -> np.ndarray:
    """The best-of-n KL bound log n - (n - 1) / n (Beirami et al. 2024; Gao et al. 2023 use it as the KL)."""
    n = np.asarray(n, dtype=float)
    return np.log(n) - (n - 1) / n


class BestOfN:
    """Best-of-n under ``proxy`` from ``ref``, for any n, exactly (float64, numpy).

    Args:
        ref_probs: [T] reference probabilities (normalised here).
        proxy: [T] the score that picks the best of n (a reward model, or r* itself).
    """

    def __init__(self, ref_probs, proxy):
        ref = np.asarray(torch.as_tensor(ref_probs, dtype=torch.float64).reshape(-1))
        proxy = np.asarray(torch.as_tensor(proxy, dtype=torch.float64).reshape(-1))
        self.ref = ref / ref.sum()
        self.order = np.argsort(proxy)  # ties are grouped below, so the sort need not be stable
        ordered = proxy[self.order]
        starts = np.empty(len(ordered), dtype=bool)
        starts[:1] = True
        starts[1:] = ordered[1:] != ordered[:-1]
        self.group = np.cumsum(starts) - 1  # group of each sorted outcome, ascending proxy
        self.mass = np.bincount(self.group, weights=self.ref[self.order])  # ref(g)
        # F and F- as 1 minus the mass above, so that log F keeps its precision near 1.
        above = np.cumsum(self.mass[::-1])[::-1] - self.mass  # mass strictly above each group
        with np.errstate(divide="ignore"):
            self.log_F = np.log1p(-np.minimum(above, 1.0))  # ascending
            self.log_F_below = np.log1p(-np.minimum(above + self.mass, 1.0))  # -inf for the lowest group
            self.log_mass = np.log(self.mass)

    def _live(self, n: float) -> int:
        """First group whose F^n is not below exp(-745) (every lower group has P_g == 0 in float64)."""
        return int(np.searchsorted(self.log_F, -745.0 / n))

    def _log_group_probs(self, n: float, start: int) -> np.ndarray:
        """log P_g = n log F + log(1 - (F-/F)^n) for groups ``start:``."""
        with np.errstate(divide="ignore"):
            return n * self.log_F[start:] + np.log(-np.expm1(n * (self.log_F_below[start:] - self.log_F[start:])))

    def group_probs(self, n: int) -> np.ndarray:
        """P(the best of n lands in group g) = F^n - (F-)^n, [groups], ascending proxy."""
        n = float(n)
        start = self._live(n)
        P = np.zeros_like(self.mass)
        P[start:] = np.exp(self._log_group_probs(n, start))
        return P

    def probs(self, n: int) -> torch.Tensor:
        """pi_bon(y) for every trajectory, float64 [T] (original order); sums to 1."""
        P = self.group_probs(n)
        share = np.divide(P, self.mass, out=np.zeros_like(P), where=self.mass > 0)
        out = np.empty_like(self.ref)
        out[self.order] = self.ref[self.order] * share[self.group]
        return torch.from_numpy(out)

    def kl(self, n: int) -> float:
        """KL(pi_bon || ref) exactly: sum_g P_g log(P_g / ref(g))."""
        return self.point(n)["kl"]

    def point(self, n: int, means: Optional[dict] = None) -> dict:
        """``{"kl": KL(pi_bon || ref), name: E_bon[v] for name, group means of v in means}``, one pass."""
        n = float(n)
        start = self._live(n)
        log_P = self._log_group_probs(n, start)
        keep = np.isfinite(log_P)
        P = np.exp(log_P[keep])
        out = {"kl": max(0.0, float(np.dot(P, log_P[keep] - self.log_mass[start:][keep])))}
        for name, m in (means or {}).items():
            out[name] = float(np.dot(P, m[start:][keep]))
        return out

    def group_means(self, values) -> np.ndarray:
        """E_ref[v | group g] per group (0 for groups without ref mass)."""
        values = np.asarray(torch.as_tensor(values, dtype=torch.float64).reshape(-1))
        weighted = np.bincount(self.group, weights=(self.ref * values)[self.order], minlength=len(self.mass))
        return np.divide(weighted, self.mass, out=np.zeros_like(weighted), where=self.mass > 0)

    def expected(self, values, n: int) -> float:
        """E_{pi_bon}[v] = sum_g P_g E_ref[v | g]."""
        return self.point(n, {"v": self.group_means(values)})["v"]


def best_of_n_probs(ref_probs, proxy, n: int) -> torch.Tensor:
    """pi_bon [T] for one n (see :class:`BestOfN`)."""
    return BestOfN(ref_probs, proxy).probs(n)


def best_of_n_table(ref_probs, proxy, ns: Iterable[int], *, gold=None, win_score=None,
                    bon: Optional[BestOfN] = None) -> pd.DataFrame:
    """One row per n: ``n, kl, kl_bound, sqrt_kl`` and, when given, ``gold`` (E[r*]) and ``win_rate`` (E[G])."""
    bon = bon or BestOfN(ref_probs, proxy)
    means = {name: bon.group_means(v) for name, v in (("gold", gold), ("win_rate", win_score)) if v is not None}
    rows = []
    for n in ns:
        n = int(n)
        point = bon.point(n, means)
        rows.append({"n": n, "kl": point.pop("kl"), "kl_bound": float(kl_bound(n)), **point})
    table = pd.DataFrame(rows)
    table.insert(3, "sqrt_kl", np.sqrt(table["kl"]))
    return table


__all__ = ["BestOfN", "best_of_n_probs", "best_of_n_table", "kl_bound"]
