"""Unseen answers (Xu et al. 2024, "Is DPO Superior to PPO for LLM Alignment?", §4).

DPO's optima are every policy with the right margins on the pairs (the null space of
:mod:`treemdp.theory`), so they include policies that put *more* probability than the reference
on answers no preference mentions. KL-regularised RLHF with a reward model fit on the same pairs
has one optimum per reward model, the closed form

    π_RLHF(y) = ref(y) exp(r_φ(y)/β) / Z,       Z = E_ref[exp(r_φ/β)]

If r_φ is 0 on every answer no pair mentions (a reward model that learns nothing there, like a
zero-initialised per-answer table with weight decay), every unseen answer gets π/ref = 1/Z, and
Z ≥ exp(E_ref[r_φ]/β) ≥ 1 whenever E_ref[r_φ] ≥ 0 (Jensen): no unseen answer rises.

**Interim baseline.** The lab's classical-RLHF code (issue 10: reward-model scorers in
``treemdp.lab.rlhf`` fit with ``engine.bradley_terry_loss``, then ``engine.kl_regularised_loss`` on
the engine, wired in ``treemdp.lab.runner``) was on branch ``lab``, not on ``main``, when this was
written. Until it is merged, RLHF here is that closed-form optimum with a tabular per-answer
reward model fit by :func:`fit_tabular_reward` (L2-regularised Bradley-Terry, exact convex fit).
TODO(lab): once merged, fit r_φ with the lab's scorers (tabular, and the GRU one, which
extrapolates to unseen answers) and add the engine-trained RLHF policy beside the closed form.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch

from ..exact import trajectory_log_probs
from ..tree import Dataset, TreeMDP, paper_dataset


def unseen_mask(mdp: TreeMDP, dataset: Dataset) -> torch.Tensor:
    """Bool [T]: the answers no preference mentions (as chosen or rejected)."""
    mask = torch.ones(mdp.n_trajectories, dtype=torch.bool)
    if dataset.preferences:
        mask[mdp.trajectory_index(dataset.chosen())] = False
        mask[mdp.trajectory_index(dataset.rejected())] = False
    return mask


def fit_tabular_reward(mdp: TreeMDP, dataset: Dataset, *, weight_decay: float = 1e-2) -> torch.Tensor:
    """A per-answer reward r_φ [T] minimising mean_i −log σ(r(y_w,i) − r(y_l,i)) + λ‖r‖² (convex, exact).

    Answers no pair mentions get exactly 0 (their gradient is the decay alone). With λ > 0 the
    optimum is finite even for deterministic preferences (Bradley-Terry alone would need an
    infinite gap: IPO's argument). Solved by Newton's method on the mentioned answers.
    """
    chosen, rejected = mdp.trajectory_index(dataset.chosen()), mdp.trajectory_index(dataset.rejected())
    reward = torch.zeros(mdp.n_trajectories, dtype=torch.float64, requires_grad=True)

    def objective(r):
        margin = r[chosen] - r[rejected]
        return torch.nn.functional.softplus(-margin).mean() + weight_decay * (r * r).sum()

    for _ in range(50):  # Newton: the objective is smooth and strongly convex
        grad = torch.autograd.grad(objective(reward), reward, create_graph=True)[0]
        hessian = torch.stack([torch.autograd.grad(grad[i], reward, retain_graph=True)[0]
                               for i in range(mdp.n_trajectories)])
        with torch.no_grad():
            reward -= torch.linalg.solve(hessian, grad)
        if float(grad.detach().abs().max()) < 1e-12:
            break
    return reward.detach()


def rlhf_optimum(ref_logp: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """log π_RLHF = log_softmax(log ref + r_φ/β): the maximiser of E_π[r_φ] − β KL(π‖ref), [T]."""
    return torch.log_softmax(ref_logp.double() + reward.double() / beta, dim=-1)


def unseen_ratios(logp: torch.Tensor, ref_logp: torch.Tensor, unseen: torch.Tensor) -> torch.Tensor:
    """π(y)/ref(y) of every unseen answer, [n_unseen]."""
    return (logp.double() - ref_logp.double())[unseen].exp()


def unseen_experiment(*, seeds: Sequence[int] = range(10), betas: Sequence[float] = (0.01, 0.1, 0.5),
                      weight_decay: float = 1e-2, daa_steps: int = 1000, progress: bool = False) -> pd.DataFrame:
    """DPO (GRU and tabular policies, the paper's settings) vs the RLHF optimum on the paper's data.

    One row per (method, beta, seed): the largest π/ref over the unseen answers at the end
    (``max_ratio``), which answer, how many unseen answers rose above their reference, and the
    mass they hold before and after.
    """
    from ..reproduce import PAPER
    from ..training import TrainConfig, train_batch
    mdp, data = TreeMDP(), paper_dataset()
    unseen = unseen_mask(mdp, data)
    names = mdp.trajectory_names()
    reward = fit_tabular_reward(mdp, data, weight_decay=weight_decay)
    base = TrainConfig(**{**PAPER, "daa_steps": daa_steps, "log_every": daa_steps})
    arms = {"DPO, GRU": base, "DPO, tabular": TrainConfig(**{**base.to_dict(), "policy": "tabular", "sft_lr": 3e-2})}
    rows = []
    for method, arm in arms.items():
        configs = [TrainConfig(**{**arm.to_dict(), "loss": "dpo", "beta": float(b), "seed": int(s)})
                   for b in betas for s in seeds]
        for config, result in zip(configs, train_batch(configs, keep_history=False)):
            with torch.no_grad():
                logp = trajectory_log_probs(result.policy).double()
                ref = trajectory_log_probs(result.reference).double()
            for label, policy_logp in ((method, logp), (f"RLHF optimum, tabular r_φ ({method.split(', ')[1]} ref)",
                                                        rlhf_optimum(ref, reward, config.beta))):
                if label.startswith("RLHF") and method != "DPO, GRU":
                    continue  # one RLHF row per (beta, seed): the GRU's reference
                ratios = unseen_ratios(policy_logp, ref, unseen)
                top = int(ratios.argmax())
                rows.append({"method": label, "beta": config.beta, "seed": config.seed,
                             "max_ratio": float(ratios.max()), "raised": int((ratios > 1 + 1e-9).sum()),
                             "top_unseen": names[int(unseen.nonzero()[top])],
                             "unseen_mass_ref": float(ref.exp()[unseen].sum()),
                             "unseen_mass": float(policy_logp.exp()[unseen].sum())})
    return pd.DataFrame(rows)


__all__ = ["unseen_mask", "fit_tabular_reward", "rlhf_optimum", "unseen_ratios", "unseen_experiment"]
