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

#: Up to this many (run x node) states, every level's states are kept and the policy's head runs
#: once over all of them (fewer, larger operations: faster for the small trees of most runs).
ONE_HEAD_STATES = 2**17


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
    return policy.trajectory_log_probs(chunk_leaves=chunk_leaves)


def walk_log_probs(policy: TreePolicy, params: dict[str, torch.Tensor], *,
                   chunk_leaves: int = CHUNK_LEAVES) -> torch.Tensor:
    """The tree walk behind every policy's enumeration: [R, branching**depth] log-probs.

    At depth t the walk holds the state of all ``b**t`` nodes (of every stacked run), asks the
    policy for their next-action log-probs once, and adds them to the prefix log-probs: each node
    is evaluated exactly once (prefix sharing) and everything stays in log space.

    Args:
        policy: a policy with the step interface (``prepare``, ``root``, ``expand``,
            ``next_log_probs``).
        params: its parameters stacked over R runs, ``name -> [R, *shape]``.
        chunk_leaves: see :func:`trajectory_log_probs`.
    """
    mdp = policy.mdp
    prep = policy.prepare(params)
    state = policy.root(prep)
    R = next(iter(params.values())).shape[0]
    if R * mdp.n_states <= ONE_HEAD_STATES:
        levels = [state]
        for _ in range(1, mdp.depth):
            state = policy.expand(prep, state)
            levels.append(state)
        step = policy.next_log_probs(prep, policy.cat_states(levels) if len(levels) > 1 else state)  # [R, n_states, b]
        edges = mdp.edge_index().to(step.device).reshape(1, -1).expand(R, -1)  # [R, T*depth]
        per_edge = step.reshape(R, -1).gather(1, edges)  # the edge each trajectory takes at each depth
        return per_edge.reshape(R, mdp.n_trajectories, mdp.depth).sum(-1)  # log p(y) = sum_t log pi(a_t | s_t)
    logp = None
    for t in range(mdp.depth):
        if t == mdp.depth - 2 and torch.is_grad_enabled() and R * mdp.n_trajectories > chunk_leaves:
            return _last_two_levels_chunked(policy, prep, state, logp, R, chunk_leaves)
        step = policy.next_log_probs(prep, state)  # [R, b**t, b]
        logp = step.reshape(R, -1) if logp is None else (logp[:, :, None] + step).reshape(R, -1)
        if t + 1 < mdp.depth:
            state = policy.expand(prep, state)
    return logp


def _last_two_levels(policy: TreePolicy, prep, state, logp: torch.Tensor) -> torch.Tensor:
    """From nodes at depth d-2 (states, [R, N] log-probs) to their N*b*b leaves' log-probs."""
    R = logp.shape[0]
    logp = (logp[:, :, None] + policy.next_log_probs(prep, state)).reshape(R, -1)
    return (logp[:, :, None] + policy.next_log_probs(prep, policy.expand(prep, state))).reshape(R, -1)


def _last_two_levels_chunked(policy: TreePolicy, prep, state, logp, R: int, chunk_leaves: int) -> torch.Tensor:
    from torch.utils.checkpoint import checkpoint
    if logp is None:  # depth 2: the root is the only node at depth d-2
        logp = torch.zeros(R, 1, device=policy.device)
    per_node = policy.mdp.branching**2
    step = max(1, chunk_leaves // (per_node * R))
    parts = []
    for start in range(0, logp.shape[1], step):
        stop = min(start + step, logp.shape[1])
        parts.append(checkpoint(_last_two_levels, policy, prep, policy.slice_state(state, start, stop),
                                logp[:, start:stop], use_reentrant=False))
    return torch.cat(parts, 1)


def sequence_log_probs(logp: torch.Tensor, mdp: TreeMDP, actions: torch.Tensor) -> torch.Tensor:
    """Pick the log-probs of given action sequences out of an enumeration. [N, depth] -> [N]."""
    return logp[mdp.trajectory_index(actions).to(logp.device)]


def in_distribution_mask(mdp: TreeMDP, dataset: Dataset, reference: str = "data") -> torch.Tensor:
    """Bool [branching**depth]: True for the trajectories counted as in distribution.

    Args:
        reference: ``"data"`` (default): the demonstrations plus both sides of every preference
            (for the paper's data the preferences are themselves demonstrations, so this is its
            three trajectories); ``"demonstrations"``: the demonstrations only; or the path of a
            JSON file holding a list of action sequences (or ``{"trajectories": [...]}``).
    """
    mask = torch.zeros(mdp.n_trajectories, dtype=torch.bool)
    if reference not in ("data", "demonstrations"):
        mask[mdp.trajectory_index(load_trajectories(reference, mdp))] = True
        return mask
    mask[mdp.trajectory_index(dataset.demonstrations)] = True
    if dataset.preferences and reference == "data":
        mask[mdp.trajectory_index(dataset.chosen())] = True
        mask[mdp.trajectory_index(dataset.rejected())] = True
    return mask


def load_trajectories(path, mdp: TreeMDP) -> torch.Tensor:
    """A JSON file of action sequences (a list, or ``{"trajectories": [...]}``): LongTensor [N, depth]."""
    from .errors import UserError, read_json_file
    raw = read_json_file(path, "in-distribution file (data, demonstrations, or a JSON file of trajectories)")
    if isinstance(raw, dict):
        raw = raw.get("trajectories")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"in-distribution file {str(path)!r} must hold a non-empty list of action sequences")
    try:
        return mdp.validate_trajectories(raw)
    except UserError as e:
        raise UserError(f"in-distribution file {str(path)!r}: {e}") from None


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
    probs = logp.detach().double().exp().masked_fill(  # float64: no float32 floor (1e-45)
        in_distribution.to(logp.device), -1.0)
    values, index = torch.topk(probs, min(k, int((~in_distribution).sum())))
    return [(int(i), float(v)) for i, v in zip(index, values)]
