"""IPO's argument (Azar et al. 2023, §4-5) on a bandit, exactly, against closed forms.

With a preference that holds with probability 1, Bradley-Terry needs an infinite reward gap:
DPO's objective −log σ(β h) has no minimiser, only h → ∞, so π(y_l) → 0 *whatever β* (the KL
term that β weighs stops acting). IPO's (β h − 1)² has a finite optimum, h = 1/β in the paper's
convention (the IPO paper's (h − 1/(2τ))² with τ = β/2).

The bandit is a depth-1 tree with a :class:`~treemdp.TabularPolicy` (one logit per arm), the
reference its initial policy. Because h = (z_w − z_l) − (z_w⁰ − z_l⁰) is linear in the logits
(the normalisers cancel) and ∂h/∂z = e_w − e_l, plain gradient descent with step η is *exactly*
the scalar recursion (closed form, no approximation)::

    h_{t+1} = h_t − 2 η β g'(β h_t)      DPO: g'(x) = −σ(−x);   IPO: g'(x) = 2 (x − 1)
    z_w = z_w⁰ + h/2,  z_l = z_l⁰ − h/2,  every other logit unchanged

:func:`bandit_experiment` trains it on the engine and puts the closed form beside every step.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch

from ..policies import TabularPolicy
from ..tree import Dataset, Preference, TreeMDP
from .stacked import daa_stacked, sft_stacked

def _dpo_g_prime(x: float) -> float:
    """d/dx −log σ(x) = −σ(−x), written to stay finite for large |x|."""
    return -1.0 / (1.0 + math.exp(x)) if x < 700 else 0.0


#: g'(x) of each loss, on Python floats (the recursion is scalar).
G_PRIME = {"dpo": _dpo_g_prime, "ipo": lambda x: 2.0 * (x - 1.0)}


def margin_recursion(loss: str, beta: float, lr: float, steps: int, h0: float = 0.0) -> torch.Tensor:
    """h_0 .. h_steps of gradient descent on g(β h) for a tabular bandit (exact), float64 [steps + 1]."""
    g_prime = G_PRIME[loss]
    h = [float(h0)]
    for _ in range(steps):
        h.append(h[-1] - 2.0 * lr * beta * g_prime(beta * h[-1]))
    return torch.tensor(h, dtype=torch.float64)


def bandit_log_probs(ref_logits: torch.Tensor, chosen: int, rejected: int, h: torch.Tensor) -> torch.Tensor:
    """The bandit policy at margin h (gradient descent splits it evenly): [..., arms] log-probs."""
    h = torch.as_tensor(h, dtype=torch.float64)[..., None]
    logits = ref_logits.double().expand(*h.shape[:-1], -1).clone()
    logits[..., chosen] += h[..., 0] / 2
    logits[..., rejected] -= h[..., 0] / 2
    return torch.log_softmax(logits, -1)


def ipo_optimal_margin(beta: float) -> float:
    """argmin_h (β h − 1)² = 1/β (paper convention; the IPO paper's target 1/(2τ) with τ = β/2)."""
    return 1.0 / beta


def ipo_rejected_at_optimum(ref_logits: torch.Tensor, chosen: int, rejected: int, beta: float) -> float:
    """π(y_l) of the bandit policy gradient descent reaches under IPO: finite, and larger for larger β."""
    return float(bandit_log_probs(ref_logits, chosen, rejected, torch.tensor(ipo_optimal_margin(beta)))[rejected].exp())


def bandit_experiment(*, arms: int = 3, betas: Sequence[float] = (0.01, 0.1, 0.5, 1.0), losses=("dpo", "ipo"),
                      steps: int = 2000, rate: float = 0.05, seed: int = 0, chosen: int = 0,
                      rejected: int = 1) -> pd.DataFrame:
    """DPO and IPO on a bandit with one deterministic preference, on the engine, closed form beside.

    The learning rate is ``rate / β²`` per run, so that β h moves on the same scale for every β
    (the dynamics of x = β h do not depend on β then; π(y_l) does, through z_l = z_l⁰ − x/(2β)).
    Reference: the initial tabular policy (logits N(0, 0.1²), seeded).

    Returns:
        One row per (loss, beta, step): ``h``, ``p_rejected``, ``p_chosen``, their closed forms
        ``h_closed`` and ``p_rejected_closed``, and ``h_target`` (1/β for IPO, ∞ for DPO).
    """
    mdp = TreeMDP(arms, 1)
    data = Dataset(torch.tensor([[chosen], [rejected]]), (Preference((chosen,), (rejected,)),))
    runs = [(loss, float(beta)) for loss in losses for beta in betas]
    policies = [TabularPolicy(mdp, seed=seed) for _ in runs]
    ref_logits = policies[0].logits.detach().double()[0]
    template, params = sft_stacked(policies, [data] * len(runs), steps=0)
    lrs = [rate / beta**2 for _, beta in runs]
    run = daa_stacked(template, params, [data] * len(runs), loss=[loss for loss, _ in runs],
                      beta=[beta for _, beta in runs], steps=steps, lr=lrs, optimizer="sgd")
    logp = run.logp  # [S + 1, R, arms]
    ref = logp[0]
    frames = []
    for r, (loss, beta) in enumerate(runs):
        h = (logp[:, r, chosen] - ref[r, chosen]) - (logp[:, r, rejected] - ref[r, rejected])
        closed = margin_recursion(loss, beta, lrs[r], steps)
        closed_logp = bandit_log_probs(ref_logits, chosen, rejected, closed)
        frames.append(pd.DataFrame({
            "loss": loss, "beta": beta, "step": range(steps + 1), "h": h.numpy(),
            "p_rejected": logp[:, r, rejected].exp().numpy(), "p_chosen": logp[:, r, chosen].exp().numpy(),
            "h_closed": closed.numpy(), "p_rejected_closed": closed_logp[:, rejected].exp().numpy(),
            "h_target": ipo_optimal_margin(beta) if loss == "ipo" else math.inf}))
    return pd.concat(frames, ignore_index=True)


__all__ = ["G_PRIME", "margin_recursion", "bandit_log_probs", "ipo_optimal_margin", "ipo_rejected_at_optimum",
           "bandit_experiment"]
