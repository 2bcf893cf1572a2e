"""Exact trajectory probabilities by enumeration, and the quantities built on them.

:func:`trajectory_log_probs` walks the tree level by level: at depth t it holds the policy state
of all ``branching**t`` nodes, asks for their next-action log-probs once, and adds them to the
prefix log-probs, so every node is evaluated exactly once (prefix sharing) and everything stays
in log space and differentiable. Nothing is sampled: the OOD mass is a number, not an estimate.
"""

from __future__ import annotations

import torch

from .policies import TreePolicy
from .tree import Dataset, TreeMDP


#: With gradients on, the last two levels are computed in chunks of at most this many leaves,
#: each recomputed during backward (activation checkpointing), bounding memory on huge trees.
CHUNK_LEAVES = 2**20


def trajectory_log_probs(policy: TreePolicy, *, chunk_leaves: int = CHUNK_LEAVES) -> torch.Tensor:
    """Exact log-probability of every trajectory, in ``mdp.trajectories()`` order.

    Args:
        policy: any :class:`~treemdp.policies.TreePolicy`.
        chunk_leaves: with autograd on and more leaves than this, the last two levels are
            evaluated subtree by subtree under activation checkpointing (same numbers, bounded
            memory, some recomputation in backward).

    Returns:
        Tensor [branching**depth]; ``logsumexp`` is 0 up to float error. Differentiable.
    """
    mdp = policy.mdp
    state = policy.root_state()
    logp = torch.zeros(1, device=policy.device)  # [1]: the root, log 1
    for t in range(mdp.depth):
        if (t == mdp.depth - 2 and torch.is_grad_enabled()
                and mdp.n_trajectories > chunk_leaves):
            return _last_two_levels_chunked(policy, state, logp, chunk_leaves)
        step = policy.next_log_probs(state)  # [b**t, b]
        logp = (logp[:, None] + step).reshape(-1)  # [b**(t+1)], child j*b + k of node j
        if t + 1 < mdp.depth:
            state = policy.expand(state)
    return logp


def _last_two_levels(policy: TreePolicy, state, logp: torch.Tensor) -> torch.Tensor:
    """From nodes at depth d-2 ([N] states, [N] log-probs) to their N*b*b leaves' log-probs."""
    logp = (logp[:, None] + policy.next_log_probs(state)).reshape(-1)
    return (logp[:, None] + policy.next_log_probs(policy.expand(state))).reshape(-1)


def _last_two_levels_chunked(policy: TreePolicy, state, logp: torch.Tensor, chunk_leaves: int) -> torch.Tensor:
    from torch.utils.checkpoint import checkpoint
    per_node = policy.mdp.branching**2
    step = max(1, chunk_leaves // per_node)
    parts = []
    for start in range(0, len(logp), step):
        stop = min(start + step, len(logp))
        parts.append(checkpoint(_last_two_levels, policy, policy.slice_state(state, start, stop),
                                logp[start:stop], use_reentrant=False))
    return torch.cat(parts)


def sequence_log_probs(logp: torch.Tensor, mdp: TreeMDP, actions: torch.Tensor) -> torch.Tensor:
    """Pick the log-probs of given action sequences out of an enumeration. [N, depth] -> [N]."""
    return logp[mdp.trajectory_index(actions).to(logp.device)]


def in_distribution_mask(mdp: TreeMDP, dataset: Dataset) -> torch.Tensor:
    """Bool [branching**depth]: True for trajectories that appear in the data.

    The data are the demonstrations plus both sides of every preference (for the paper's data
    the preferences are themselves demonstrations, so this is its three trajectories).
    """
    mask = torch.zeros(mdp.n_trajectories, dtype=torch.bool)
    mask[mdp.trajectory_index(dataset.demonstrations)] = True
    if dataset.preferences:
        mask[mdp.trajectory_index(dataset.chosen())] = True
        mask[mdp.trajectory_index(dataset.rejected())] = True
    return mask


def mass(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Probability mass on the trajectories selected by ``mask`` (a scalar tensor)."""
    return torch.logsumexp(logp[mask.to(logp.device)], dim=0).exp() if mask.any() else logp.new_zeros(())


def ood_mass(logp: torch.Tensor, in_distribution: torch.Tensor) -> torch.Tensor:
    """Mass on out-of-distribution trajectories (1 minus the in-distribution mass, computed directly)."""
    return mass(logp, ~in_distribution)


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) = sum_y p(y) (log p(y) - log q(y)) over trajectories; inputs are log-probs."""
    return torch.sum(logp.exp() * (logp - logq))


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Exact entropy -sum_y p(y) log p(y) of the trajectory distribution (nats)."""
    return -torch.sum(logp.exp() * logp)


def top_ood(logp: torch.Tensor, in_distribution: torch.Tensor, k: int = 3) -> list[tuple[int, float]]:
    """The ``k`` most probable OOD trajectories as ``(row in trajectories(), probability)``."""
    probs = logp.detach().exp().masked_fill(in_distribution.to(logp.device), -1.0)
    values, index = torch.topk(probs, min(k, int((~in_distribution).sum())))
    return [(int(i), float(v)) for i, v in zip(index, values)]
