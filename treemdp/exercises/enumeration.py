"""Assignment a2: exact enumeration of trajectory probabilities for a tabular policy.

The checks build random :class:`~treemdp.TabularPolicy` objects on several tree shapes and
compare the student's answers with :func:`treemdp.trajectory_log_probs` and
:func:`treemdp.exact.ood_mass`.
"""

from __future__ import annotations

import torch

from ..exact import ood_mass as lib_ood_mass
from ..exact import trajectory_log_probs
from ..policies import TabularPolicy
from ..tree import TreeMDP
from .compare import as_tensor, close, compare
from .core import Exercise, Incorrect, Result, call_student, register, run_check

SHAPES = ((3, 3), (2, 4), (4, 2), (2, 1))


def _policies(seed: int):
    for i, (branching, depth) in enumerate(SHAPES):
        yield TabularPolicy(TreeMDP(branching, depth), seed=seed + i, init_scale=1.5)


def check_sequence_log_prob(sequence_log_prob) -> Result:
    """a2.sequence_log_prob: ``sequence_log_prob(policy, actions)`` -> scalar log pi(actions).

    Compared with the row of :func:`treemdp.trajectory_log_probs` for every trajectory of random
    tabular policies on trees of several shapes.
    """

    def body() -> str:
        count = 0
        for policy in _policies(seed=10):
            mdp = policy.mdp
            with torch.no_grad():
                expected = trajectory_log_probs(policy)
            for row, actions in enumerate(mdp.trajectories().tolist()):
                got = call_student(sequence_log_prob, policy, list(actions))
                got_t = as_tensor(got, "sequence_log_prob").reshape(-1)
                if got_t.numel() != 1:
                    raise Incorrect(f"sequence_log_prob should return one number (a scalar tensor), "
                                    f"got shape {list(as_tensor(got, 'x').shape)}")
                want = expected[row].double()
                if not close(got_t[0], want):
                    name = mdp.trajectory_name(actions)
                    if close(got_t[0], want.exp()):
                        raise Incorrect(f"for {name} you return the probability {float(got_t):.4g}; "
                                        f"return its log, {float(want):.4g}")
                    first = policy.action_log_probs(torch.zeros(1, 0, dtype=torch.long))[0, actions[0]]
                    if mdp.depth > 1 and close(got_t[0], first.double()):
                        raise Incorrect(f"for {name} you return only the first step's log-prob; "
                                        f"add log pi(a_t | prefix) for every step t")
                    raise Incorrect(f"on {mdp!r}, for {name} ({list(actions)}) you return {float(got_t):.6g}, "
                                    f"expected {float(want):.6g}")
                count += 1
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
                expected = trajectory_log_probs(policy).double()
            got = as_tensor(call_student(enumerate_log_probs, policy), "enumerate_log_probs")
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
    """a2.ood_mass: ``ood_mass(logp, in_distribution)`` -> scalar mass off the data."""

    def body() -> str:
        generator = torch.Generator().manual_seed(30)
        for trial in range(20):
            n = 27 if trial < 10 else 16
            logp = torch.log_softmax(torch.randn(n, generator=generator) * 2, 0)
            mask = torch.rand(n, generator=generator) < 0.3
            mask[trial % n] = True
            expected = lib_ood_mass(logp, mask).double()
            got = as_tensor(call_student(ood_mass, logp.clone(), mask.clone()), "ood_mass").reshape(-1)
            if got.numel() != 1:
                raise Incorrect(f"ood_mass should return one number, got {got.numel()} values")
            if close(got[0], expected):
                continue
            if close(got[0], 1 - expected):
                raise Incorrect("you return the in-distribution mass; OOD means the trajectories "
                                "where in_distribution is False")
            if close(got[0], logp[~mask].double().sum()):
                raise Incorrect("you add log-probabilities; add probabilities (exp of logp)")
            raise Incorrect(f"ood_mass returns {float(got):.6g}, expected {float(expected):.6g} "
                            f"(trial {trial}: {int((~mask).sum())} OOD of {n})")
        return "matches treemdp.exact.ood_mass on 20 random distributions and masks"

    return run_check("a2.ood_mass", body)


register(Exercise(
    "a2.sequence_log_prob", "log-prob of one trajectory by the chain rule", "sequence_log_prob",
    check_sequence_log_prob,
    ("A trajectory's probability is the product of the policy's next-action probabilities along "
     "its path; in log space, a sum.",
     "policy.action_log_probs(prefix) takes a LongTensor [1, t] of the actions so far and returns "
     "[1, branching]; pick column actions[t] for t = 0 .. depth-1.",
     "sum(policy.action_log_probs(torch.tensor([actions[:t]]).reshape(1, t))[0, actions[t]] "
     "for t in range(len(actions)))")))
register(Exercise(
    "a2.enumerate_log_probs", "exact enumeration for a tabular policy", "enumerate_log_probs",
    check_enumerate_log_probs,
    ("Walk the tree level by level: keep the log-prob of every node at depth t and extend each "
     "node by all its children at once.",
     "Start from the root (state 0, log-prob 0). At each level, next = log_softmax(policy.logits[states]) "
     "is [n_nodes, branching]; new log-probs = (logp[:, None] + next).reshape(-1); the children "
     "are policy.mdp.next_state[states].reshape(-1).",
     "states = torch.zeros(1, dtype=torch.long); logp = torch.zeros(1)\n"
     "for t in range(depth): logp = (logp[:, None] + log_softmax(logits[states], -1)).reshape(-1); "
     "states = next_state[states].reshape(-1)")))
register(Exercise(
    "a2.ood_mass", "mass off the data", "ood_mass", check_ood_mass,
    ("OOD mass is the total probability of the trajectories not in the data.",
     "Select logp[~in_distribution], then add up the probabilities, not the log-probs.",
     "return torch.logsumexp(logp[~in_distribution], 0).exp()")))
