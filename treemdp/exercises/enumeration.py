"""Assignment a2: exact enumeration of trajectory probabilities for a tabular policy.

The checks build random :class:`~treemdp.TabularPolicy` objects on several tree shapes and
compare the student's answers with :func:`treemdp.trajectory_log_probs` and
:func:`treemdp.exact.ood_mass`.
"""

from __future__ import annotations

import torch

from ..policies import TabularPolicy
from ..tree import TreeMDP
from .compare import as_tensor, close, compare
from .core import LIBRARY_ANSWERS, Exercise, Incorrect, Reference, Result, call_student, register, run_check

_PROBE_POLICY = TabularPolicy(TreeMDP(2, 2), seed=0, init_scale=1.0)
_PROBE_LOGP = torch.log_softmax(torch.arange(6.0), 0)
_PROBE_MASK = torch.tensor([True, False, False, True, False, True])
#: The library's answers, bound at import and verified at every check (see :class:`~.core.Reference`).
TRAJECTORY_LOG_PROBS = Reference("treemdp.exact", "trajectory_log_probs",
                                 lambda f: f(_PROBE_POLICY).detach())
OOD_MASS = Reference("treemdp.exact", "ood_mass", lambda f: f(_PROBE_LOGP, _PROBE_MASK))

SHAPES = ((3, 3), (2, 4), (4, 2), (2, 1))


def _policies(seed: int):
    for i, (branching, depth) in enumerate(SHAPES):
        yield TabularPolicy(TreeMDP(branching, depth), seed=seed + i, init_scale=1.5)


FORBIDDEN = LIBRARY_ANSWERS["enumeration"]


def check_sequence_log_prob(sequence_log_prob) -> Result:
    """a2.sequence_log_prob: ``sequence_log_prob(policy, actions)`` -> scalar log pi(actions).

    Compared with the row of :func:`treemdp.trajectory_log_probs` for every trajectory of random
    tabular policies on trees of several shapes. A tensor, a Python float or a numpy number is
    fine (the stub does not ask for a gradient).
    """

    def body() -> str:
        count = 0
        for policy in _policies(seed=10):
            mdp = policy.mdp
            with torch.no_grad():
                expected = TRAJECTORY_LOG_PROBS(policy).double()
                first = policy.action_log_probs(torch.zeros(1, 0, dtype=torch.long))[0].double()
            rows = mdp.trajectories().tolist()
            got = []
            for actions in rows:
                value = as_tensor(call_student(sequence_log_prob, policy, list(actions), forbidden=FORBIDDEN,
                                               why="log pi(actions) by the chain rule", names=("policy", "actions")),
                                  "sequence_log_prob")
                if value.numel() != 1:
                    raise Incorrect(f"sequence_log_prob should return one number (a scalar tensor), "
                                    f"got shape {list(value.shape)}")
                got.append(value.reshape(()))
            got = torch.stack(got)
            mistakes = [(expected.exp(), "you return the probability; return its log (a sum of log-probs)"),
                        (first[[a[0] for a in rows]], "you return only the first step's log-prob; add "
                                                      "log pi(a_t | prefix) for every step t")]
            if mdp.depth == 1:
                mistakes = mistakes[:1]
            try:
                compare(got, expected, what="sequence_log_prob", inputs=[], mistakes=mistakes)
            except Incorrect as e:
                bad = int((~torch.isclose(got, expected, atol=1e-5, rtol=1e-4)).nonzero()[0])
                raise Incorrect(f"on {mdp!r}, for {mdp.trajectory_name(rows[bad])} ({rows[bad]}): "
                                f"{e}") from None
            count += len(rows)
        return f"matches treemdp.trajectory_log_probs on all {count} trajectories of 4 tree shapes"

    return run_check("a2.sequence_log_prob", body)


def check_enumerate_log_probs(enumerate_log_probs) -> Result:
    """a2.enumerate_log_probs: ``enumerate_log_probs(policy)`` -> [branching**depth] log-probs.

    For a tabular policy, in ``mdp.trajectories()`` order, compared with
    :func:`treemdp.trajectory_log_probs` on random policies of several tree shapes.
    """

    def body() -> str:
        worst = 0.0
        for policy in _policies(seed=20):
            mdp = policy.mdp
            with torch.no_grad():
                expected = TRAJECTORY_LOG_PROBS(policy).double()
            got = as_tensor(call_student(enumerate_log_probs, policy, forbidden=FORBIDDEN, names=("policy",),
                                         why="what trajectory_log_probs computes"), "enumerate_log_probs")
            # raw logits summed along each path: what forgetting the softmax gives
            trajectories = mdp.trajectories()
            states = torch.zeros(len(trajectories), dtype=torch.long)
            raw = torch.zeros(len(trajectories), dtype=torch.float64)
            for t in range(mdp.depth):
                raw += policy.logits.detach().double()[states, trajectories[:, t]]
                states = torch.as_tensor(mdp.next_state)[states, trajectories[:, t]]
            mistakes = [(expected.exp(), "you return probabilities; return log-probabilities "
                                         "(their logsumexp is 0)"),
                        (raw, "the log-probs are not normalised: apply log_softmax to each state's "
                              "logits before adding them along the path")]
            if (got.shape == expected.shape and not close(got, expected)
                    and close(got.sort().values, expected.sort().values)):
                raise Incorrect(f"on {mdp!r} the values are right but in the wrong order: row i must be "
                                f"trajectory mdp.trajectories()[i] (lexicographic, first action slowest)")
            try:
                worst = max(worst, compare(got, expected, what="enumerate_log_probs", inputs=[],
                                           mistakes=mistakes))
            except Incorrect as e:
                raise Incorrect(f"on {mdp!r}: {e}") from None
        return (f"matches treemdp.trajectory_log_probs on random tabular policies of "
                f"{len(SHAPES)} tree shapes (max error {worst:.1e})")

    return run_check("a2.enumerate_log_probs", body)


def check_ood_mass(ood_mass) -> Result:
    """a2.ood_mass: ``ood_mass(logp, in_distribution)`` -> scalar mass off the data (a tensor,
    a Python float or a numpy number)."""

    def body() -> str:
        generator = torch.Generator().manual_seed(30)
        got, expected, in_dist, summed_logp = [], [], [], []
        for trial in range(20):
            n = 27 if trial < 10 else 16
            logp = torch.log_softmax(torch.randn(n, generator=generator) * 2, 0)
            mask = torch.rand(n, generator=generator) < 0.3
            mask[trial % n] = True
            value = as_tensor(call_student(ood_mass, logp.clone(), mask.clone(), forbidden=FORBIDDEN,
                                           why="the mass off the data", names=("logp", "in_distribution")),
                              "ood_mass")
            if value.numel() != 1:
                raise Incorrect(f"ood_mass should return one number, got {value.numel()} values")
            got.append(value.reshape(()))
            expected.append(OOD_MASS(logp, mask).double())
            in_dist.append(logp[mask].double().exp().sum())
            summed_logp.append(logp[~mask].double().sum())
        mistakes = [(torch.stack(in_dist), "you return the in-distribution mass; OOD means the trajectories "
                                           "where in_distribution is False"),
                    (torch.stack(summed_logp), "you add log-probabilities; add probabilities (exp of logp)")]
        compare(torch.stack(got), torch.stack(expected), what="ood_mass", inputs=[], mistakes=mistakes)
        return "matches treemdp.exact.ood_mass on 20 random distributions and masks"

    return run_check("a2.ood_mass", body)


register(Exercise(
    "a2.sequence_log_prob", "log-prob of one trajectory by the chain rule", "sequence_log_prob",
    check_sequence_log_prob,
    ("The chain rule in the markdown above: a trajectory's probability is the product of the "
     "policy's next-action probabilities along its path; in log space, a sum. "
     "policy.action_log_probs answers one step.",
     "At step t the prefix is actions[:t] as a LongTensor of shape [1, t] (t = 0 is the start "
     "state, shape [1, 0]); policy.action_log_probs(prefix) is [1, branching]: take column "
     "actions[t] and add the steps up.",
     "sum(policy.action_log_probs(torch.tensor(actions[:t], dtype=torch.long).reshape(1, t))[0, actions[t]] "
     "for t in range(len(actions)))")))
register(Exercise(
    "a2.enumerate_log_probs", "exact enumeration for a tabular policy", "enumerate_log_probs",
    check_enumerate_log_probs,
    ("Walk the tree level by level rather than trajectory by trajectory: at depth t there are "
     "branching**t nodes, each with a log-prob and a state (policy.logits and mdp.next_state).",
     "Start from the root (state 0, log-prob 0). One level: the log-softmax of every current "
     "state's logits, added to its node's log-prob (broadcast [n, 1] + [n, b]), then move to the "
     "children with mdp.next_state. Flattening row by row keeps the lexicographic order.",
     "states = torch.zeros(1, dtype=torch.long); logp = torch.zeros(1)\n"
     "for t in range(depth): logp = (logp[:, None] + log_softmax(logits[states], -1)).reshape(-1); "
     "states = next_state[states].reshape(-1)")))
register(Exercise(
    "a2.ood_mass", "mass off the data", "ood_mass", check_ood_mass,
    ("OOD trajectories are those where in_distribution is False; their mass is their total probability.",
     "Select logp[~in_distribution], turn the log-probs into probabilities and add them up "
     "(logsumexp, then exp, does both without underflow).",
     "return torch.logsumexp(logp[~in_distribution], 0).exp()")))
