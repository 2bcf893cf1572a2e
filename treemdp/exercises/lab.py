"""Lesson 8's exercise: the exact KL of best-of-n, ties included.

``bon_kl(ref, reward, n)`` takes a reference distribution ``ref`` [T] (float64, sums to 1), a
reward [T] (with ties) and n, and returns KL(pi_bon || ref) as a float. The check compares it with
:class:`treemdp.lab.BestOfN` on random references over small sets of outcomes, names the usual
mistakes (the bound log n - (n-1)/n instead of the exact value; ties treated as distinct
outcomes; the KL the wrong way round) and reports one of the three outcomes. An answer that calls
into :mod:`treemdp.lab` (``BestOfN(ref, reward).kl(n)``, imported in the lesson's first cell) is
refused: the check compares with that very class.
"""

from __future__ import annotations

import math

import torch

from ..lab.bestofn import kl_bound
from .core import LIBRARY_ANSWERS, Exercise, Incorrect, Reference, Result, call_student, register, run_check

_PROBE = (torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))
#: :class:`treemdp.lab.BestOfN`, bound at import and verified at every check (a patched ``kl`` or
#: ``probs`` shows in the probe).
BEST_OF_N = Reference("treemdp.lab.bestofn", "BestOfN",
                      lambda cls: torch.cat([cls(*_PROBE).probs(3), torch.tensor([cls(*_PROBE).kl(3)])]))


def _cases():
    generator = torch.Generator().manual_seed(8)
    for T, levels, n in ((2, 2, 3), (5, 3, 4), (12, 4, 2), (30, 30, 16), (40, 5, 100)):
        ref = torch.rand(T, generator=generator, dtype=torch.float64) + 0.05
        reward = torch.randint(0, levels, (T,), generator=generator).double()
        yield ref / ref.sum(), reward, n


def _distinct_kl(ref: torch.Tensor, reward: torch.Tensor, n: int) -> float:
    """What ignoring ties gives: each trajectory its own outcome, ties broken by position."""
    return BEST_OF_N.get()(ref, reward + torch.arange(len(reward), dtype=torch.float64) * 1e-9).kl(n)


def _reverse_kl(ref: torch.Tensor, reward: torch.Tensor, n: int) -> float:
    p = BEST_OF_N.get()(ref, reward).probs(n)
    keep = ref > 0
    return float((ref[keep] * (ref[keep] / p[keep].clamp_min(1e-300)).log()).sum())


def check_bon_kl(bon_kl) -> Result:
    """l8.bon_kl: ``bon_kl(ref, reward, n)`` -> KL(pi_bon || ref), exact, a float."""

    def body() -> str:
        count, worst = 0, 0.0
        for ref, reward, n in _cases():
            got = call_student(bon_kl, ref.clone(), reward.clone(), n, forbidden=LIBRARY_ANSWERS["bestofn"],
                               why="the exact KL that BestOfN(ref, reward).kl(n) computes",
                               names=("ref", "reward", "n"))
            try:
                value = float(got)
            except (TypeError, ValueError, RuntimeError):
                raise Incorrect(f"bon_kl should return one number, got {type(got).__name__}") from None
            want = BEST_OF_N.get()(ref, reward).kl(n)
            if math.isfinite(value) and abs(value - want) <= 1e-6 + 1e-5 * abs(want):
                count, worst = count + 1, max(worst, abs(value - want))
                continue
            where = f"(n = {n}, {len(ref)} trajectories, {len(reward.unique())} distinct rewards)"
            if abs(value - float(kl_bound(n))) <= 1e-6:
                raise Incorrect(f"you return the bound log n - (n-1)/n = {value:.4f}; the exact KL here is "
                                f"{want:.4f} {where}: the bound holds with equality only for a continuum of rewards")
            if abs(value - _distinct_kl(ref, reward, n)) <= 1e-6 and len(reward.unique()) < len(reward):
                raise Incorrect(f"equal rewards must be one outcome: the best of n lands in a *group* of equal "
                                f"rewards with probability F^n - F_below^n {where}")
            if abs(value - _reverse_kl(ref, reward, n)) <= 1e-6:
                raise Incorrect(f"that is KL(ref || pi_bon); the question asks KL(pi_bon || ref) {where}")
            raise Incorrect(f"bon_kl returned {value:.6g}, expected {want:.6g} {where}")
        return f"matches treemdp.lab.BestOfN on {count} references with ties (max error {worst:.1e})"

    return run_check("l8.bon_kl", body)


register(Exercise(
    "l8.bon_kl", "the exact KL of best-of-n, ties included", "bon_kl", check_bon_kl,
    ("Group the trajectories by equal reward. The best of n draws lands in a group g when every "
     "draw is at or below g's reward and not every draw is strictly below it.",
     "With F = ref(reward <= r_g) and F_below = ref(reward < r_g), P(g) = F**n - F_below**n. Inside a group "
     "pi_bon is proportional to ref, so pi_bon / ref = P(g) / ref(g) on all of g.",
     "KL = sum over groups of P(g) * log(P(g) / ref(g)): values = reward.unique(); for each value v: "
     "m = ref[reward == v].sum(), F = ref[reward <= v].sum(), P = F**n - (F - m)**n; "
     "add P * log(P / m) when P > 0.")))


__all__ = ["check_bon_kl"]
