"""Where the probability mass is: an exact partition of the trajectories into buckets, every step.

A single "OOD mass" hides where the mass went (and what "in distribution" means shifts as
preferences are added), so each run also records the mass of every bucket of this partition
(precedence from left to right; the buckets sum to 1 at every step):

    mass_chosen          trajectories chosen in some preference
    mass_rejected        rejected in some preference (and never chosen)
    mass_other_data      the rest of the in-distribution set (e.g. the other demonstrations)
    mass_ood_prefix{k}   everything else, split by k = the length of the longest prefix the
                         trajectory shares with a chosen answer (k = 0 .. depth - 1)

and ``mass_ood``, the sum of the ``mass_ood_prefix`` buckets. With the default in-distribution
set (demonstrations and both sides of every preference) ``mass_ood`` equals ``ood_mass``.
"""

from __future__ import annotations

import torch

from .engine import RunContext, register_measurement
from .tree import TreeMDP

FIXED_BUCKETS = ("mass_chosen", "mass_rejected", "mass_other_data")


def bucket_names(depth: int) -> list[str]:
    """The bucket columns of a tree of this depth, in id order."""
    return list(FIXED_BUCKETS) + [f"mass_ood_prefix{k}" for k in range(depth)]


def shared_prefix_length(mdp: TreeMDP, others: torch.Tensor) -> torch.Tensor:
    """For every trajectory, the length of the longest prefix it shares with any trajectory of
    ``others`` (rows of ``mdp.trajectories()``, LongTensor [P]): LongTensor [T] in 0 .. depth."""
    rows = torch.arange(mdp.n_trajectories, device=others.device)
    out = torch.zeros(mdp.n_trajectories, dtype=torch.long, device=others.device)
    for k in range(1, mdp.depth + 1):
        scale = mdp.branching ** (mdp.depth - k)  # row // scale: the prefix of length k, as a number
        out[torch.isin(rows // scale, others // scale)] = k
    return out


def bucket_ids(mdp: TreeMDP, in_distribution: torch.Tensor, chosen: torch.Tensor,
               rejected: torch.Tensor) -> torch.Tensor:
    """The bucket of every trajectory for one run: LongTensor [T] of indices into :func:`bucket_names`.

    Args:
        in_distribution: bool [T], the run's in-distribution set.
        chosen, rejected: rows of the preferences' two sides (LongTensor [P]).
    """
    rows = torch.arange(mdp.n_trajectories, device=chosen.device)
    is_chosen, is_rejected = torch.isin(rows, chosen), torch.isin(rows, rejected)
    ids = len(FIXED_BUCKETS) + shared_prefix_length(mdp, chosen).clamp(max=mdp.depth - 1)
    ids = torch.where(in_distribution.to(chosen.device), 2, ids)
    ids = torch.where(is_rejected, 1, ids)
    return torch.where(is_chosen, 0, ids)


def run_buckets(ctx: RunContext) -> torch.Tensor:
    """[R, T] bucket ids of every run (cached in ``ctx.extra``)."""
    if "mass_buckets" not in ctx.extra:
        ids = [bucket_ids(ctx.mdp, ctx.in_distribution[r], ctx.chosen[r][ctx.pair_mask[r]],
                          ctx.rejected[r][ctx.pair_mask[r]]) for r in range(len(ctx.chosen))]
        ctx.extra["mass_buckets"] = torch.stack(ids)
    return ctx.extra["mass_buckets"]


def bucket_masses(probs: torch.Tensor, ids: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Sum ``probs`` [..., R, T] by bucket ``ids`` [R, T]: [..., R, n_buckets] (no one-hot copy)."""
    out = probs.new_zeros(*probs.shape[:-1], n_buckets)
    return out.scatter_add_(-1, ids.expand(probs.shape), probs)


@register_measurement("mass_buckets", "the mass of each bucket of the exact partition (treemdp.accounting)",
                      columns=lambda ctx: bucket_names(ctx.mdp.depth) + ["mass_ood"])
def _mass_buckets(logp, ctx):
    names = bucket_names(ctx.mdp.depth)
    masses = bucket_masses(logp.exp(), run_buckets(ctx).to(logp.device), len(names))  # [S, R, K]
    return torch.cat([masses, masses[..., len(FIXED_BUCKETS):].sum(-1, keepdim=True)], -1)
