"""The paper's theory as tools: the query matrix Q and its null space (Rafailov et al. 2024, §4),
and the soft-Q view of a policy and its reference (Appendix D, eq. 11).

**Rank deficiency (§4).** Write Δ = log π − log ref over all T trajectories. Preference i reads Δ
through one query row q_i (+1 at its chosen trajectory, −1 at its rejected one), so its margin is
h_i = q_i · Δ (eq. 4) and the finite-data objective is Σ_i g(β q_i · Δ). Every direction v with
Q v = 0 is invisible to the loss. Because every row of Q sums to zero, the all-ones vector is in
the null space, so ``log_softmax(logp + v)`` has the same loss as ``logp`` for every v in it:
:func:`null_space_move`. Q vanishes off the data, so the OOD indicator is in it too:
:func:`with_ood_mass` dials the OOD mass to any value at the same loss, in closed form.

**Soft-Q view (App. D).** With the sequence-level implicit reward r(y) = β log π(y)/ref(y) paid at
the last token (what a DAA sees: one number per sequence), the soft Bellman backup on the tree is::

    Q(s, a) = r(s, a) + β log ref(a|s) + V(s')     # eq. 11; V(s∞) = 0, r(s, a) = 0 before the last token
    V(s)    = β logsumexp_a Q(s, a) / β             # a soft maximum over the next tokens
    π(a|s)  = exp((Q(s, a) − V(s)) / β)             # the logits are Q-values

Every non-final Q bootstraps from V(s'), a soft maximum over *all* continuations of s', seen in
the data or not; as β → 0 it tends to the best continuation's reward (optimism about unseen
tokens). :func:`soft_q` runs the backup for any reward, :func:`soft_q_of_policy` for a policy's
implicit reward (then V(s1) = 0 and the backup returns the policy's own conditionals).

Everything here is a pure function of exact trajectory log-probs ``[T]`` (``trajectories()``
order); per-state quantities come as one tensor per depth t, ``[b**t, b]`` or ``[b**t]``, row j
the j-th state at depth t in BFS order (= lexicographic prefix order).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from .errors import UserError
from .policies import TabularPolicy
from .tree import Dataset, TreeMDP


# ----- the query matrix (§4) ---------------------------------------------------------------------
def query_matrix(mdp: TreeMDP, dataset: Dataset) -> torch.Tensor:
    """Q, float64 [P, T]: row i has +1 at preference i's chosen trajectory, −1 at its rejected one.

    The margins of eq. 4 are ``Q @ (logp - ref_logp)``.
    """
    P = len(dataset.preferences)
    Q = torch.zeros(P, mdp.n_trajectories, dtype=torch.float64)
    if P:
        rows = torch.arange(P)
        Q[rows, mdp.trajectory_index(dataset.chosen())] = 1.0
        Q[rows, mdp.trajectory_index(dataset.rejected())] = -1.0
    return Q


def query_rank(Q: torch.Tensor) -> int:
    """The rank of Q (how many independent directions of Δ the loss can see)."""
    return int(torch.linalg.matrix_rank(Q.double())) if Q.numel() else 0


def null_space(Q: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of {v : Q v = 0}, float64 [T, T − rank] (from the SVD of Q)."""
    Q = Q.double()
    T = Q.shape[1]
    if Q.shape[0] == 0:
        return torch.eye(T, dtype=torch.float64)
    _, _, vh = torch.linalg.svd(Q, full_matrices=True)  # vh [T, T]; rows past the rank span the null space
    return vh[query_rank(Q):].T.contiguous()


def margins(Q: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """h_i = q_i · (log π − log ref) for every preference (eq. 4 through Q), [P]."""
    return Q @ (logp.double() - ref_logp.double())


def null_space_move(logp: torch.Tensor, Q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logp + P v)`` with P the projection onto Q's null space: same margins, same loss.

    The renormalisation adds a constant to every entry, and constants are in the null space
    (each row of Q sums to zero), so every h_i, hence every DAA loss at every β, is unchanged.
    """
    basis = null_space(Q)  # [T, k]
    step = basis @ (basis.T @ v.double())
    return torch.log_softmax(logp.double() + step, dim=-1)


def _logit(p: float) -> float:
    p = torch.tensor(float(p), dtype=torch.float64)
    return float(torch.log(p) - torch.log1p(-p))


def with_ood_mass(logp: torch.Tensor, in_distribution: torch.Tensor, target: float, *,
                  onto: int | None = None) -> torch.Tensor:
    """The policy ``logp`` with its OOD mass set to ``target``, every margin h_i unchanged.

    Adds s·1_OOD (or s·e_onto, one OOD trajectory) to the log-probs and renormalises: a move in
    Q's null space because preferences only mention in-distribution trajectories. Closed form:
    ``s = logit(target) − logit(current OOD mass)`` (for ``onto``: solved for that trajectory's
    share). The relative probabilities inside the data stay as they were.

    Args:
        logp: trajectory log-probs [T].
        in_distribution: bool [T]; must contain every chosen and rejected trajectory.
        target: the OOD mass wanted, in (0, 1).
        onto: a row of an OOD trajectory that alone absorbs the change (None: all OOD scale together).
    """
    if not 0.0 < float(target) < 1.0:
        raise UserError(f"target OOD mass must lie in (0, 1), got {target!r}")
    logp = torch.log_softmax(logp.double(), dim=-1)
    ood = ~in_distribution.to(logp.device)
    probs = logp.exp()
    m, data = float(probs[ood].sum()), float(probs[~ood].sum())
    if onto is None:
        s = _logit(target) - _logit(m)
        return torch.log_softmax(logp + s * ood.double(), dim=-1)
    if not bool(ood[onto]):
        raise UserError(f"trajectory row {onto} is in the data; 'onto' must be an OOD trajectory")
    own = float(probs[onto])
    rest = m - own
    # (own e^s + rest) / (own e^s + rest + data) = target  =>  e^s = (target (rest + data) − rest) / (own (1 − target))
    numerator = target * (rest + data) - rest
    if numerator <= 0:
        raise UserError(f"OOD mass {target:g} is below what the other OOD trajectories already hold ({rest:.3g})")
    s = float(torch.log(torch.tensor(numerator / (own * (1 - target)), dtype=torch.float64)))
    v = torch.zeros_like(logp)
    v[onto] = s
    return torch.log_softmax(logp + v, dim=-1)


@dataclass(frozen=True)
class EqualLossPair:
    """Two policies with the same DAA loss (every g, every β) and very different OOD mass."""

    low: torch.Tensor   # log-probs [T], little OOD mass
    high: torch.Tensor  # log-probs [T], most mass OOD
    ood_low: float
    ood_high: float


def equal_loss_pair(logp: torch.Tensor, in_distribution: torch.Tensor, *, low: float = 0.01,
                    high: float = 0.99, onto: int | None = None) -> EqualLossPair:
    """Two null-space moves of ``logp`` (see :func:`with_ood_mass`): OOD mass ``low`` (every OOD
    trajectory scaled alike) and ``high`` (piled onto the OOD trajectory ``onto`` if given)."""
    a = with_ood_mass(logp, in_distribution, low)
    b = with_ood_mass(logp, in_distribution, high, onto=onto)
    ood = ~in_distribution.to(a.device)
    return EqualLossPair(a, b, float(a.exp()[ood].sum()), float(b.exp()[ood].sum()))


# ----- trajectory log-probs <-> per-state conditionals ----------------------------------------------
def prefix_log_probs(logp: torch.Tensor, mdp: TreeMDP) -> list[torch.Tensor]:
    """log π(prefix) for every prefix length t = 0 .. depth: ``[..., b**t]`` (t = depth: ``logp``)."""
    b, d = mdp.branching, mdp.depth
    return [logp.reshape(*logp.shape[:-1], b**t, b**(d - t)).logsumexp(-1) for t in range(d + 1)]


def state_log_probs(logp: torch.Tensor, mdp: TreeMDP) -> list[torch.Tensor]:
    """log π(a|s) at every state, by depth: ``[..., b**t, b]`` for t < depth (marginals of ``logp``)."""
    b = mdp.branching
    prefix = prefix_log_probs(logp, mdp)
    return [prefix[t + 1].reshape(*logp.shape[:-1], b**t, b) - prefix[t][..., None] for t in range(mdp.depth)]


def tabular_from_log_probs(mdp: TreeMDP, logp: torch.Tensor) -> TabularPolicy:
    """A :class:`~treemdp.TabularPolicy` whose trajectory distribution is ``logp`` [T] (any full-support
    distribution over a tree is a product of per-state conditionals); float64."""
    policy = TabularPolicy(mdp, seed=0).double()
    with torch.no_grad():
        policy.logits.copy_(torch.cat(state_log_probs(logp.double(), mdp)))
    return policy


# ----- the soft-Q view (App. D, eq. 11) --------------------------------------------------------------
@dataclass(frozen=True)
class SoftQ:
    """The soft Bellman backup of a reward on the tree, one entry per depth t (states in BFS order).

    Attributes:
        mdp, beta: the tree and the temperature.
        reward: r(y), the sequence-level reward paid at the last token, [T].
        log_ref: log ref(a|s), ``[b**t, b]`` per depth.
        Q: Q(s, a) = r(s, a) + β log ref(a|s) + V(s'), ``[b**t, b]`` per depth (eq. 11).
        V: V(s) = β logsumexp_a Q(s, a)/β, ``[b**t]`` per depth.
    """

    mdp: TreeMDP
    beta: float
    reward: torch.Tensor
    log_ref: list
    Q: list
    V: list

    @property
    def log_pi(self) -> list:
        """log π(a|s) = (Q(s, a) − V(s))/β: the policy these Q-values define, ``[b**t, b]`` per depth."""
        return [(q - v[:, None]) / self.beta for q, v in zip(self.Q, self.V)]

    @property
    def bootstrap(self) -> list:
        """The bootstrapping term of eq. 11, V(s') inside Q(s, a), ``[b**t, b]`` per depth (0 at the last token)."""
        b = self.mdp.branching
        out = [self.V[t + 1].reshape(b**t, b) for t in range(self.mdp.depth - 1)]
        return out + [torch.zeros_like(self.Q[-1])]

    @property
    def token_rewards(self) -> list:
        """Dense per-token rewards r(s, a) = Q(s, a) − β log ref(a|s) − V(s) = β log π(a|s)/ref(a|s).

        A potential-shaped form of the sequence reward ("From r to Q*"): along every trajectory
        they sum to β log π(y)/ref(y) = r(y) − V(s1) (= r(y) for a policy's own implicit reward).
        """
        return [q - self.beta * lr - v[:, None] for q, lr, v in zip(self.Q, self.log_ref, self.V)]

    def trajectory_sums(self, per_state: list) -> torch.Tensor:
        """Σ_t x(s_t, a_t) along every trajectory, [T], for per-state values ``[b**t, b]`` per depth."""
        edges = self.mdp.edge_index()  # [T, depth]: edge row = state * b + action, states BFS
        flat = torch.cat([x.reshape(-1) for x in per_state])
        return flat[edges].sum(-1)

    def table(self) -> pd.DataFrame:
        """One row per (state, action): state, depth, action, Q, V(s), bootstrap V(s'), β log ref, r, π."""
        mdp, rows = self.mdp, []
        for t in range(mdp.depth):
            states = mdp.nodes_at_depth(t)
            boot, rew, logpi = self.bootstrap[t], self.token_rewards[t], self.log_pi[t]
            for j, s in enumerate(states.tolist()):
                for a in range(mdp.branching):
                    rows.append({"state": mdp.state_name(s), "depth": t, "action": a,
                                 "Q": float(self.Q[t][j, a]), "V": float(self.V[t][j]),
                                 "bootstrap": float(boot[j, a]),
                                 "beta_log_ref": float(self.beta * self.log_ref[t][j, a]),
                                 "token_reward": float(rew[j, a]), "pi": float(logpi[j, a].exp())})
        return pd.DataFrame(rows)


def soft_value(Q: torch.Tensor, beta: float) -> torch.Tensor:
    """V = β logsumexp(Q/β) over the last dim: a soft maximum, tending to max Q as β → 0."""
    return beta * torch.logsumexp(Q / beta, dim=-1)


def soft_q(reward: torch.Tensor, ref_logp: torch.Tensor, mdp: TreeMDP, beta: float) -> SoftQ:
    """The backup of eq. 11 for a sequence-level reward r(y) [T] paid at the last token.

    Its policy (:attr:`SoftQ.log_pi`) is the KL-regularised optimum π*(y) ∝ ref(y) exp(r(y)/β),
    and V(s1) = β log E_ref[exp(r/β)].
    """
    beta = float(beta)
    if not beta > 0:
        raise UserError(f"beta must be > 0, got {beta!r}")
    b, d = mdp.branching, mdp.depth
    log_ref = state_log_probs(ref_logp.double(), mdp)
    Q, V = [None] * d, [None] * d
    next_value = reward.double().reshape(b**(d - 1), b)  # the last token is paid r(y); V(s∞) = 0
    for t in reversed(range(d)):
        Q[t] = next_value + beta * log_ref[t]
        V[t] = soft_value(Q[t], beta)
        if t:
            next_value = V[t].reshape(b**(t - 1), b)  # a parent's Q bootstraps from its child's V
    return SoftQ(mdp, beta, reward.double(), log_ref, Q, V)


def soft_q_of_policy(logp: torch.Tensor, ref_logp: torch.Tensor, mdp: TreeMDP, beta: float) -> SoftQ:
    """The soft-Q view of a policy: the backup of its implicit reward r(y) = β log π(y)/ref(y).

    Then V(s1) = 0, V(s) = β log π(s)/ref(s) for a prefix s, and ``log_pi`` equals the policy's own
    conditionals (the logits are Q-values, shifted by V(s)).
    """
    return soft_q(float(beta) * (logp.double() - ref_logp.double()), ref_logp, mdp, beta)


def ood_bootstrap_share(view: SoftQ, in_distribution: torch.Tensor) -> list[torch.Tensor]:
    """Per state, the share of V(s)'s soft maximum carried by OOD continuations, ``[b**t]`` per depth.

    V(s) = β log Σ_{y ⊃ s} ref(y|s) exp(r(y)/β) (a sum over the leaves below s); the share is the
    weight of the OOD leaves in that sum, i.e. π*(OOD | s) under the backup's policy.
    """
    mdp = view.mdp
    log_pi = torch.cat([x.reshape(-1) for x in view.log_pi])[mdp.edge_index()].sum(-1)  # [T]
    ood = (~in_distribution).double()
    weight = [p.exp() for p in prefix_log_probs(log_pi, mdp)]  # π*(prefix), per depth
    b, d = mdp.branching, mdp.depth
    out = []
    for t in range(d):
        ood_mass = (log_pi.exp() * ood).reshape(b**t, -1).sum(-1)
        out.append(ood_mass / weight[t])
    return out


def values_over_beta(reward: torch.Tensor, ref_logp: torch.Tensor, mdp: TreeMDP, betas) -> pd.DataFrame:
    """V(s) of every state for a fixed reward at each β (how the bootstrapping term moves with β).

    Closed-form limits: V → max over the continuations of r as β → 0, → E_ref[r | s] as β → ∞.
    Returns a tidy frame: beta, state, depth, V, max_r, ref_mean_r.
    """
    b, d = mdp.branching, mdp.depth
    reward = reward.double()
    ref_prefix = prefix_log_probs(ref_logp.double(), mdp)
    rows = []
    for beta in betas:
        view = soft_q(reward, ref_logp, mdp, float(beta))
        for t in range(d):
            below = reward.reshape(b**t, -1)  # the leaves below each state at depth t
            cond = (ref_logp.double().reshape(b**t, -1) - ref_prefix[t][:, None]).exp()
            for j, s in enumerate(mdp.nodes_at_depth(t).tolist()):
                rows.append({"beta": float(beta), "state": mdp.state_name(s), "depth": t,
                             "V": float(view.V[t][j]), "max_r": float(below[j].max()),
                             "ref_mean_r": float((cond[j] * below[j]).sum())})
    return pd.DataFrame(rows)


__all__ = ["query_matrix", "query_rank", "null_space", "margins", "null_space_move", "with_ood_mass",
           "EqualLossPair", "equal_loss_pair", "prefix_log_probs", "state_log_probs",
           "tabular_from_log_probs", "SoftQ", "soft_value", "soft_q", "soft_q_of_policy",
           "ood_bootstrap_share", "values_over_beta"]
