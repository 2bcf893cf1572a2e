"""Likelihood displacement (Razin et al. 2024, "Unintentional Unalignment"), exactly, on the tree.

During DPO the chosen answer's probability can fall while the margin grows; the mass goes to
other answers. Razin et al. predict *which pairs* displace from the policy's hidden states: with
h(y_{<k}) the last hidden representation before the k-th answer token (for our RNN, the state
the head reads after BOS and the prefix y_{<k})::

    CHES(y+, y−) = ⟨Σ_k h(y+_{<k}), Σ_k h(y−_{<k})⟩ − ‖Σ_k h(y+_{<k})‖²     (their Definition 2)
    normalised:   ⟨mean_k h(y+_{<k}), mean_k h(y−_{<k})⟩ − ‖mean_k h(y+_{<k})‖²

Higher CHES, more displacement. Every answer in a tree has ``depth`` tokens, so the normalised
score is CHES / depth²: the same ranking (both are offered, as in the paper).

For single-token answers every prefix is the prompt, so CHES is 0 for every pair; their
single-token analysis reads the token unembeddings W instead (:func:`token_ches`): to first
order in the hidden state, DPO moves h along W_{y+} − W_{y−}, which changes token z's logit by
⟨W_z, W_{y+} − W_{y−}⟩ (:func:`predicted_gainer`), while the unembedding update itself always
raises y+ by ‖h‖²-sized terms. Two experiments:

- :func:`single_token_experiment`: a depth-1 tree, a GRU policy, a preference between two
  near-synonym tokens (W_{y−} = W_{y+} + a small perturbation) vs between two unrelated tokens.
- :func:`ches_experiment`: many random pairs of demonstrations in a bigger tree; does CHES at
  the reference rank how far log π(y+) falls (Spearman, per seed), against the length of the
  prefix the two answers share as a baseline?
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..policies import RNNPolicy
from ..rng import stream
from ..tree import Dataset, Preference, TreeMDP
from .stacked import daa_stacked, repeat_params, sft_stacked


# ----- hidden states and CHES ------------------------------------------------------------------------
def state_hidden(policy: RNNPolicy, params: dict | None = None) -> torch.Tensor:
    """The hidden state h the head reads at every non-terminal state, [R, n_states, H] (BFS order).

    State s1 is the state after BOS; a state at depth t has read BOS and its t-action prefix.
    ``params``: stacked parameters ``name -> [R, *shape]`` (default: the policy's own, R = 1).
    """
    params = policy.stacked_parameters() if params is None else params
    prep = policy.prepare(params)
    state = policy.root(prep)
    levels = [state[0] if isinstance(state, tuple) else state]
    for _ in range(1, policy.mdp.depth):
        state = policy.expand(prep, state)
        levels.append(state[0] if isinstance(state, tuple) else state)
    return torch.cat(levels, 1)


def answer_hidden(hidden: torch.Tensor, mdp: TreeMDP, rows: torch.Tensor) -> torch.Tensor:
    """h(y_{<k}) for k = 1 .. depth along each answer: hidden [R, n_states, H], rows [R, P] -> [R, P, depth, H]."""
    nodes = (mdp.edge_index() // mdp.branching).to(rows.device)[rows]  # [R, P, depth]: the state before token k
    R, P, depth = nodes.shape
    flat = hidden.gather(1, nodes.reshape(R, -1, 1).expand(-1, -1, hidden.shape[-1]))
    return flat.reshape(R, P, depth, -1)


def ches_from_hidden(h_chosen: torch.Tensor, h_rejected: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
    """CHES from the hidden states along each answer, [..., K, H] each -> [...] (Razin et al., Def. 2)."""
    plus = h_chosen.mean(-2) if normalize else h_chosen.sum(-2)
    minus = h_rejected.mean(-2) if normalize else h_rejected.sum(-2)
    return (plus * minus).sum(-1) - (plus * plus).sum(-1)


def ches(policy: RNNPolicy, chosen: torch.Tensor, rejected: torch.Tensor, *, params: dict | None = None,
         normalize: bool = False) -> torch.Tensor:
    """CHES of preference pairs under an RNN policy.

    Args:
        policy: an :class:`~treemdp.RNNPolicy` (its step interface gives the hidden states).
        chosen, rejected: trajectory rows, [P] (one policy) or [R, P] (stacked ``params``).
        params: stacked parameters of R runs (default: the policy's own).
        normalize: the length-normalised form (means instead of sums).

    Returns:
        [P] or [R, P], float64.
    """
    squeeze = chosen.dim() == 1
    chosen, rejected = (chosen[None], rejected[None]) if squeeze else (chosen, rejected)
    with torch.no_grad():
        hidden = state_hidden(policy, params).double()
    mdp = policy.mdp
    out = ches_from_hidden(answer_hidden(hidden, mdp, chosen), answer_hidden(hidden, mdp, rejected),
                           normalize=normalize)
    return out[0] if squeeze else out


def token_ches(W: torch.Tensor, plus: int, minus: int) -> float:
    """The single-token analogue on unembeddings W [H, b]: ⟨W+, W−⟩ − ‖W+‖²."""
    w_plus, w_minus = W[:, plus].double(), W[:, minus].double()
    return float(w_plus @ w_minus - w_plus @ w_plus)


def predicted_gainer(W: torch.Tensor, plus: int, minus: int) -> int:
    """The token other than y± whose logit the hidden-state update raises most: argmax_z ⟨W_z, W+ − W−⟩."""
    score = W.double().T @ (W[:, plus] - W[:, minus]).double()
    score[[plus, minus]] = -torch.inf
    return int(score.argmax())


def shared_prefix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many leading actions two action sequences share, [..., depth] each -> [...]."""
    return (a == b).long().cumprod(-1).sum(-1)


def rank_correlation(x, y) -> float:
    """Spearman's ρ (Pearson correlation of average ranks); NaN when either side is constant."""
    rx, ry = pd.Series(np.asarray(x)).rank(), pd.Series(np.asarray(y)).rank()
    if rx.nunique() < 2 or ry.nunique() < 2:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


# ----- the single-token experiment -------------------------------------------------------------------
def near_synonym_policy(mdp: TreeMDP, *, seed: int, hidden_size: int, head_scale: float = 1.0,
                        synonym_noise: float | None = 0.1, plus: int = 0, minus: int = 1) -> RNNPolicy:
    """A GRU policy whose tokens ``plus`` and ``minus`` are near-synonyms (None: left unrelated).

    The head (unembeddings and bias) is scaled by ``head_scale``; then W_minus = W_plus + ε with
    ‖ε‖ ≈ ``synonym_noise`` · ‖W_plus‖ drawn from a generator seeded by ``seed``, and equal biases.
    """
    policy = RNNPolicy(mdp, hidden_size=hidden_size, seed=seed)
    with torch.no_grad():
        policy.head_weight.mul_(head_scale)
        policy.head_bias.mul_(head_scale)
        if synonym_noise is not None:
            W = policy.head_weight
            g = stream(seed, "synonym_noise")
            noise = torch.randn(W.shape[0], generator=g) / W.shape[0] ** 0.5
            W[:, minus] = W[:, plus] + synonym_noise * W[:, plus].norm() * noise
            policy.head_bias[0, minus] = policy.head_bias[0, plus]
    return policy


def single_token_experiment(*, tokens: int = 8, hidden_size: int = 16, seeds: Sequence[int] = range(40),
                            head_scales: Sequence[float] = (1.0, 10.0), synonym_noise: float = 0.1,
                            loss: str = "dpo", beta: float = 0.1, steps: int = 200, lr: float = 1e-3,
                            optimizer: str = "adam", progress: bool = False) -> pd.DataFrame:
    """Razin et al.'s single-token setup on a depth-1 tree: prefer token 0 over token 1.

    Arms: head scale × pair (near-synonyms, or unrelated tokens). The reference is the initial
    policy (no SFT, as their base-model runs). One row per (arm, seed): the change of log π(y+)
    at the end and its lowest point, whether it fell, the token that gained most, the predicted
    gainer, the winner's cosine with W+, and token CHES.
    """
    mdp = TreeMDP(tokens, 1)
    pair = Dataset(torch.tensor([[0], [1]]), (Preference((0,), (1,)),))
    arms = [(scale, kind) for scale in head_scales for kind in ("near-synonyms", "unrelated")]
    policies, rows = [], []
    for scale, kind in arms:
        for seed in seeds:
            policy = near_synonym_policy(mdp, seed=seed, hidden_size=hidden_size, head_scale=scale,
                                         synonym_noise=synonym_noise if kind == "near-synonyms" else None)
            W = policy.head_weight.detach()
            rows.append({"head_scale": scale, "pair": kind, "seed": seed, "token_ches": token_ches(W, 0, 1),
                         "predicted_gainer": predicted_gainer(W, 0, 1), "_W": W.double().clone()})
            policies.append(policy)
    template, params = sft_stacked(policies, [pair] * len(policies), steps=0)
    run = daa_stacked(template, params, [pair] * len(policies), loss=loss, beta=beta, steps=steps, lr=lr,
                      optimizer=optimizer, progress=progress)
    logp = run.logp  # [S + 1, R, b]
    change = logp[:, :, 0] - logp[0, :, 0]
    gain = logp[-1].exp() - logp[0].exp()
    gain[:, :2] = -torch.inf
    winner = gain.argmax(-1)
    for r, row in enumerate(rows):
        W = row.pop("_W")
        w = int(winner[r])
        row.update({"final_change": float(change[-1, r]), "lowest_change": float(change[:, r].min()),
                    "fell": bool(change[:, r].min() < -0.01), "winner": w, "winner_gain": float(gain[r, w]),
                    "winner_cos_plus": float(torch.nn.functional.cosine_similarity(W[:, w], W[:, 0], dim=0)),
                    "prob_plus_start": float(logp[0, r, 0].exp()), "prob_plus_end": float(logp[-1, r, 0].exp())})
    return pd.DataFrame(rows)


# ----- CHES vs displacement over random pairs ----------------------------------------------------------
def ches_experiment(*, branching: int = 3, depth: int = 4, demos: int = 8, hidden_size: int = 32,
                    seeds: Sequence[int] = range(5), loss: str = "dpo", beta: float = 0.1, sft_steps: int = 200,
                    sft_lr: float = 1e-2, steps: int = 200, lr: float = 1e-2, optimizer: str = "adam",
                    progress: bool = False) -> pd.DataFrame:
    """Every ordered pair of ``demos`` random demonstrations, one DAA run each, per seed.

    Per seed: draw the demonstrations (``torch.randperm`` seeded by the seed), SFT a GRU on them
    once, then run DAA on each pair alone from that SFT policy. One row per (seed, pair): CHES
    and its normalised form at the reference, the shared prefix length, and the change of
    log π(y+) at the end and at its lowest.
    """
    mdp = TreeMDP(branching, depth)
    rows, policies, data, sft_rows = [], [], [], []
    for i, seed in enumerate(seeds):
        g = stream(seed, "demonstration_picks")
        picked = mdp.trajectories()[torch.randperm(mdp.n_trajectories, generator=g)[:demos]]
        policies.append(RNNPolicy(mdp, hidden_size=hidden_size, seed=int(seed)))
        sft_data = Dataset(picked)
        data.append(sft_data)
        for a in range(demos):
            for b in range(demos):
                if a != b:
                    sft_rows.append(i)
                    rows.append({"seed": int(seed), "chosen": mdp.trajectory_name(picked[a].tolist()),
                                 "rejected": mdp.trajectory_name(picked[b].tolist()),
                                 "shared_prefix": int(shared_prefix(picked[a], picked[b])),
                                 "_pref": Dataset(picked, (Preference(tuple(picked[a].tolist()),
                                                                      tuple(picked[b].tolist())),))})
    template, params = sft_stacked(policies, data, steps=sft_steps, lr=sft_lr, optimizer=optimizer, progress=progress)
    params = repeat_params(params, torch.tensor(sft_rows))
    pairs = [row.pop("_pref") for row in rows]
    run = daa_stacked(template, params, pairs, loss=loss, beta=beta, steps=steps, lr=lr, optimizer=optimizer,
                      progress=progress)
    chosen, rejected = run.ctx.chosen, run.ctx.rejected  # [R, 1]
    score = ches(template, chosen, rejected, params=run.reference)[:, 0]
    normalised = ches(template, chosen, rejected, params=run.reference, normalize=True)[:, 0]
    path = run.trajectory(chosen[:, 0])
    change = path - path[0]
    for r, row in enumerate(rows):
        row.update({"ches": float(score[r]), "ches_normalized": float(normalised[r]),
                    "prob_chosen_start": float(path[0, r].exp()), "final_change": float(change[-1, r]),
                    "lowest_change": float(change[:, r].min())})
    return pd.DataFrame(rows)


def ches_correlations(frame: pd.DataFrame, outcome: str = "final_change") -> pd.DataFrame:
    """Per seed: Spearman ρ of CHES, normalised CHES and shared prefix length with ``outcome``."""
    rows = []
    for seed, part in frame.groupby("seed"):
        rows.append({"seed": seed, "pairs": len(part), "fell": float((part[outcome] < 0).mean()),
                     **{f"rho_{x}": rank_correlation(part[x], part[outcome])
                        for x in ("ches", "ches_normalized", "shared_prefix")}})
    return pd.DataFrame(rows)


__all__ = ["state_hidden", "answer_hidden", "ches_from_hidden", "ches", "token_ches", "predicted_gainer",
           "shared_prefix", "rank_correlation", "near_synonym_policy", "single_token_experiment",
           "ches_experiment", "ches_correlations"]
