"""Exact trajectory probabilities by enumeration, and the quantities built on them.

The tree walk (:func:`treemdp.policies.walk_log_probs`, behind :func:`trajectory_log_probs`) goes level by level: at depth t it holds the policy state
of all ``branching**t`` nodes, asks for their next-action log-probs once, and adds them to the
prefix log-probs, so every node is evaluated exactly once (prefix sharing) and everything stays
in log space and differentiable. Nothing is sampled: the OOD mass is a number, not an estimate.
"""

from __future__ import annotations

import torch

from .policies import CHUNK_LEAVES, ONE_HEAD_STATES, TreePolicy, walk_log_probs  # noqa: F401  (re-exported)
from .tree import Dataset, TreeMDP


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


def plog(p: torch.Tensor, log_values: torch.Tensor) -> torch.Tensor:
    """The terms ``p(y) log v(y)`` of an expectation over trajectories, with ``0 log 0 = 0``: a
    trajectory of probability 0 adds 0 even where its log value is -inf (the one place the
    convention is written; KL and entropy below, and the engine's measurements, use it)."""
    return torch.where(p > 0, p * log_values, torch.zeros_like(p))


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Exact KL(p || q) = sum_y p(y) (log p(y) - log q(y)) over trajectories, 0 log 0 = 0.

    Inputs are log-probs [..., T]; the result is [...] (a scalar for one distribution).
    """
    return plog(logp.exp(), logp - logq).sum(-1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """Exact entropy -sum_y p(y) log p(y) of the trajectory distribution (nats), 0 log 0 = 0; [..., T] -> [...]."""
    return -plog(logp.exp(), logp).sum(-1)


def top_ood(logp: torch.Tensor, in_distribution: torch.Tensor, k: int = 3) -> list[tuple[int, float]]:
    """The ``k`` most probable OOD trajectories as ``(row in trajectories(), probability)``."""
    probs = logp.detach().double().exp().masked_fill(  # float64: no float32 floor (1e-45)
        in_distribution.to(logp.device), -1.0)
    values, index = torch.topk(probs, min(k, int((~in_distribution).sum())))
    return [(int(i), float(v)) for i, v in zip(index, values)]
