"""The squeezing effect (Ren & Sutherland, "Learning Dynamics of LLM Finetuning", ICLR 2025).

A negative gradient on an answer ȳ (lowering log π(ȳ), as DPO does to y_l) does not spread the
freed mass evenly: it goes mostly to the answer that is already most likely. For a softmax over
logits z (a tabular bandit, their linear-softmax toy with one input), one gradient step of size η
on log π(ȳ) is, to first order (closed form)::

    Δz = −η (e_ȳ − π)                     # every other logit rises by η π_k: the rich get more
    Δ log π_k = Δz_k − π · Δz = η (π_k − Σ_j π_j² + π_ȳ)      (k ≠ ȳ)

so answer k gains iff π_k > Σ_j π_j² − π_ȳ: with π peaked (Σπ² near max π) and π(ȳ) small, only
the argmax gains and every other answer is *squeezed*. :func:`first_order_negative_step` is the
closed form, :func:`negative_step` the exact step; :func:`squeeze_measures` reads, from exact
log-probs of a run, per step: π(ȳ), the peakedness Σπ², the argmax's change of probability and
its share of everything that gained. :func:`ood_winners` asks whether squeezing explains which
OOD trajectories win in the paper's runs (figures 9-18).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..exact import in_distribution_mask
from ..policies import RNNPolicy, TabularPolicy
from ..rng import stream
from ..tree import Dataset, TreeMDP, paper_dataset
from .displacement import shared_prefix
from .stacked import daa_stacked, sft_stacked


# ----- the closed form (softmax, one step) -------------------------------------------------------------
def negative_step(logits: torch.Tensor, negative: int, lr: float) -> torch.Tensor:
    """Exact log-probs after one gradient-descent step of size ``lr`` on log softmax(logits)[negative]."""
    logits = logits.double()
    probs = torch.softmax(logits, -1)
    grad = -probs
    grad[..., negative] += 1.0  # ∂ log π(ȳ) / ∂z = e_ȳ − π
    return torch.log_softmax(logits - lr * grad, -1)


def first_order_negative_step(probs: torch.Tensor, negative: int, lr: float) -> torch.Tensor:
    """First-order Δ log π of that step: η (π_k − Σπ² + π_ȳ) for k ≠ ȳ (and the matching value at ȳ)."""
    probs = probs.double()
    dz = lr * probs
    dz[..., negative] -= lr
    return dz - (probs * dz).sum(-1, keepdim=True)


def peakedness(probs: torch.Tensor) -> torch.Tensor:
    """Σ_y π(y)², the collision probability: 1/T for uniform, 1 for a point mass."""
    return (probs * probs).sum(-1)


def gain_threshold(probs: torch.Tensor, negative: int) -> torch.Tensor:
    """Σπ² − π(ȳ): to first order, answer k gains from a negative step on ȳ iff π_k exceeds it."""
    return peakedness(probs) - probs[..., negative]


# ----- per-step measures from exact log-probs -------------------------------------------------------------
def squeeze_measures(logp: torch.Tensor, negative: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each step did, from exact log-probs [S + 1, R, T] and the negative answer's row per run [R].

    Returns ``[S, R]`` tensors: ``p_negative`` π_t(ȳ), ``peakedness`` Σπ_t², ``argmax`` the most likely
    answer other than ȳ at step t, ``argmax_change`` π_{t+1}(argmax_t) − π_t(argmax_t), ``share`` its
    share of the total gain of every answer that gained (in [0, 1]; NaN if nothing gained),
    ``squeezed`` the fraction of the other answers (not ȳ, not the argmax) whose probability fell.
    """
    probs = logp.double().exp()
    before, after = probs[:-1], probs[1:]
    S, R, T = before.shape
    neg = negative.reshape(1, R, 1).expand(S, R, 1)
    p_negative = before.gather(2, neg)[..., 0]
    masked = before.scatter(2, neg, -1.0)
    argmax = masked.argmax(-1)
    change = after - before
    argmax_change = change.gather(2, argmax[..., None])[..., 0]
    gains = change.clamp(min=0).scatter(2, neg, 0.0).sum(-1)
    share = torch.where(gains > 0, argmax_change.clamp(min=0) / gains, torch.full_like(gains, float("nan")))
    others = torch.ones_like(change, dtype=torch.bool).scatter(2, neg, False).scatter(2, argmax[..., None], False)
    squeezed = ((change < 0) & others).sum(-1) / others.sum(-1).clamp(min=1)
    return {"p_negative": p_negative, "peakedness": peakedness(before), "argmax": argmax,
            "argmax_change": argmax_change, "share": share, "squeezed": squeezed.double()}


def measures_frame(measures: dict[str, torch.Tensor], **labels) -> pd.DataFrame:
    """:func:`squeeze_measures` as a tidy frame (one row per step and run), with label columns."""
    S, R = measures["share"].shape
    frame = pd.DataFrame({name: value.reshape(-1).numpy() for name, value in measures.items()})
    frame.insert(0, "step", np.repeat(np.arange(S), R))
    frame.insert(1, "run", np.tile(np.arange(R), S))
    for name, value in labels.items():
        frame[name] = np.tile(np.asarray(value), S) if np.ndim(value) else value
    return frame


# ----- experiments -------------------------------------------------------------------------------------------
def bandit_experiment(*, classes: int = 100, temperatures: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
                      seeds: Sequence[int] = range(5), quantiles: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99),
                      lr: float = 0.1) -> pd.DataFrame:
    """Their toy: a softmax over ``classes`` answers (logits N(0, temperature²)), one negative step.

    ȳ is taken at each probability quantile (0: the least likely answer). One row per
    (temperature, seed, quantile): π(ȳ), Σπ², the argmax's share of the gains (exact and first
    order), whether the argmax is the top gainer, the fraction of answers squeezed, and how often
    the first-order rule (gain iff π_k > Σπ² − π_ȳ) calls the sign of the exact change right.
    """
    rows = []
    for temperature in temperatures:
        for seed in seeds:
            g = stream(seed, "random_logits")
            logits = torch.randn(classes, generator=g, dtype=torch.float64) * temperature
            order = torch.argsort(logits)
            probs = torch.softmax(logits, -1)
            for q in quantiles:
                negative = int(order[min(classes - 2, int(q * classes))])
                after = negative_step(logits, negative, lr)
                logp = torch.stack([torch.log(probs), after])[:, None]  # [2, 1, classes]
                m = squeeze_measures(logp, torch.tensor([negative]))
                predicted = first_order_negative_step(probs, negative, lr)
                first = torch.stack([torch.log(probs), torch.log(probs) + predicted])[:, None]
                m1 = squeeze_measures(first, torch.tensor([negative]))
                change = after.exp() - probs
                others = torch.arange(classes) != negative
                rule = probs > gain_threshold(probs, negative)
                rows.append({"temperature": temperature, "seed": int(seed), "quantile": q,
                             "p_negative": float(probs[negative]), "peakedness": float(peakedness(probs)),
                             "max_prob": float(probs.max()), "share": float(m["share"][0, 0]),
                             "share_first_order": float(m1["share"][0, 0]),
                             "argmax_top_gainer": bool(change[others].argmax() == probs[others].argmax()),
                             "squeezed": float(m["squeezed"][0, 0]),
                             "rule_agrees": float(((change > 0) == rule)[others].double().mean())})
    return pd.DataFrame(rows)


def negative_gradient_loss(ctx, beta):
    """A phase loss with the negative gradient alone: minimise log π(y_l) (mean over pairs), [R]."""
    rejected = ctx.rejected
    return lambda logp, step: logp.gather(1, rejected).mean(-1)


def tree_experiment(*, policies: Sequence[str] = ("rnn", "tabular"), seeds: Sequence[int] = range(5),
                    hidden_size: int = 32, sft_steps: int = 200, steps: int = 300, lr: float = 0.01,
                    optimizer: str = "sgd", progress: bool = False) -> pd.DataFrame:
    """The negative gradient alone on the paper's tree: SFT on the three demonstrations, then
    gradient descent on log π(y_l) of the paper's rejected trajectory; every step measured."""
    mdp, data = TreeMDP(), paper_dataset()
    frames = []
    for kind in policies:
        build = (lambda s: RNNPolicy(mdp, hidden_size=hidden_size, seed=s)) if kind == "rnn" else (
            lambda s: TabularPolicy(mdp, seed=s))
        template, params = sft_stacked([build(int(s)) for s in seeds], [data] * len(seeds), steps=sft_steps,
                                       lr=1e-2 if kind == "rnn" else 3e-2, progress=progress)
        run = daa_stacked(template, params, [data] * len(seeds), steps=steps, lr=lr, optimizer=optimizer,
                          loss_fn=negative_gradient_loss, progress=progress)
        m = squeeze_measures(run.logp, run.ctx.rejected[:, 0])
        frame = measures_frame(m, policy=kind, seed=np.asarray(list(seeds)))
        frame["argmax_ood"] = (~run.ctx.in_distribution[0])[m["argmax"].reshape(-1)].numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def daa_probabilities(run_dir: str | Path, mdp: TreeMDP) -> torch.Tensor:
    """Every DAA step's probabilities of a run folder's history, float64 [S + 1, T] (trajectories order)."""
    from ..runs import read_run
    history = read_run(run_dir)["history"]
    daa = history[history["phase"] == "daa"]
    table = daa.pivot(index="step", columns="trajectory", values="prob")[mdp.trajectory_names()]
    return torch.tensor(table.to_numpy(), dtype=torch.float64)


def ood_winners(run_dirs: Sequence[str | Path], dataset: Dataset | None = None, mdp: TreeMDP | None = None,
                *, threshold: float = 0.05) -> pd.DataFrame:
    """For each run, the OOD trajectory that peaks highest and what squeezing would have said.

    Columns: the run's loss, beta and seed; ``winner`` and its ``peak`` probability; ``rank_at_start``
    among the OOD trajectories at DAA step 0 (0 = the most likely OOD one: "the rich"); the
    ``argmax_before`` its rise (the most likely trajectory at the step before it first passes
    ``threshold``) and whether that was the winner; ``shares_prefix`` with the chosen trajectory.
    """
    import json
    mdp, dataset = mdp or TreeMDP(), dataset or paper_dataset()
    ood = ~in_distribution_mask(mdp, dataset)
    ood_rows = ood.nonzero()[:, 0]
    chosen = dataset.chosen()[0]
    names = mdp.trajectory_names()
    rows = []
    for run_dir in run_dirs:
        config = json.loads((Path(run_dir) / "config.json").read_text())
        probs = daa_probabilities(run_dir, mdp)
        peaks = probs[:, ood].max(0).values
        winner = int(ood_rows[peaks.argmax()])
        start_rank = int((probs[0, ood] > probs[0, winner]).sum())
        risen = (probs[:, winner] > threshold).nonzero()
        row = {"loss": config["loss"], "beta": config["beta"], "seed": config["seed"], "winner": names[winner],
               "peak": float(peaks.max()), "rank_at_start": start_rank,
               "shares_prefix": int(shared_prefix(mdp.trajectories()[winner], chosen))}
        if len(risen) and int(risen[0]) > 0:
            before = int(probs[int(risen[0]) - 1].argmax())
            row.update({"rise_step": int(risen[0]), "argmax_before": names[before], "winner_was_argmax": before == winner})
        else:
            row.update({"rise_step": None, "argmax_before": None, "winner_was_argmax": None})
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["negative_step", "first_order_negative_step", "peakedness", "gain_threshold", "squeeze_measures",
           "measures_frame", "bandit_experiment", "negative_gradient_loss", "tree_experiment",
           "daa_probabilities", "ood_winners"]
