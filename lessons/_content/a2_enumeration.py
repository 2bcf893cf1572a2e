# %% [markdown]
# # Assignment a2 — Exact enumeration for a tabular policy
#
# Compute trajectory probabilities exactly: first one trajectory by the chain rule, then all of
# them at once for a `TabularPolicy` by walking the tree level by level, then the OOD mass.
# Minimal first (a table), then you can compare with the library's general version, which also
# handles the RNN.
#
# **How to work.** Each exercise is a function stub with its signature and shapes; fill in the gap
# marked `YOUR CODE HERE` (delete the `raise NotImplementedError`), then run the check cell below
# it. A check compares your function with the library's own on random inputs and answers *not
# attempted*, *incorrect because …*, or *correct*. Stuck? `hint("a2.sequence_log_prob")` gives a first hint,
# `hint("a2.sequence_log_prob", 2)` the next. When you are done, check the whole notebook from a terminal:
#
#     treemdp grade lessons/assignments/a2_enumeration.ipynb
#
# (it runs the notebook top to bottom in a fresh kernel, so make sure it does).

# %%
# %matplotlib inline
import torch

from treemdp import TabularPolicy, TreeMDP, in_distribution_mask, paper_dataset
from treemdp.exercises import check_enumerate_log_probs, check_ood_mass, check_sequence_log_prob, hint
from treemdp.training import train

# %% [markdown]
# ## The objects you work with
#
# A `TabularPolicy` holds one row of logits per state, `policy.logits` [n_states, branching]; the
# tree's transition table is `policy.mdp.next_state` [n_states, branching] (state 0 is `s1`,
# children are numbered breadth first). `policy.action_log_probs(prefixes)` answers "log-probs of
# the next action after each prefix".

# %%
mdp = TreeMDP()
policy = TabularPolicy(mdp, seed=0, init_scale=1.0)
print(policy.logits.shape, mdp.next_state.shape)
print(policy.action_log_probs(torch.tensor([[1, 1]])).exp())  # pi(. | s9), the state after (a1, a1)


# %% [markdown]
# ## Exercise 1 — one trajectory, by the chain rule
#
# log π(a_0, …, a_{d−1}) = Σ_t log π(a_t | a_0 … a_{t−1}).

# %% exercise="a2.sequence_log_prob"
def sequence_log_prob(policy, actions: list[int]) -> torch.Tensor:
    """log pi(actions) for one action sequence.

    Args:
        policy: any treemdp policy (uses only policy.action_log_probs).
        actions: list of depth ints in [0, branching).

    Returns:
        Scalar tensor.
    """
    ### BEGIN SOLUTION
    total = torch.zeros(())
    for t, action in enumerate(actions):
        prefix = torch.tensor(actions[:t], dtype=torch.long).reshape(1, t)
        total = total + policy.action_log_probs(prefix)[0, action]
    return total
    ### END SOLUTION


# %%
check_sequence_log_prob(sequence_log_prob)


# %% [markdown]
# ## Exercise 2 — every trajectory at once
#
# Calling Exercise 1 for each of the branching^depth trajectories evaluates shared prefixes again and
# again. Instead, keep the log-prob of every node at depth t (`b**t` of them, in lexicographic
# order) and extend all of them by all `b` actions in one step. Row i of your result must be
# trajectory `mdp.trajectories()[i]`.

# %% exercise="a2.enumerate_log_probs"
def enumerate_log_probs(policy) -> torch.Tensor:
    """Exact log-probability of every trajectory of a TabularPolicy.

    Args:
        policy: a TabularPolicy; use policy.logits [n_states, branching] and
            policy.mdp.next_state [n_states, branching].

    Returns:
        Tensor [branching**depth], in mdp.trajectories() order; logsumexp is 0.
    """
    mdp = policy.mdp
    ### BEGIN SOLUTION
    next_state = torch.as_tensor(mdp.next_state)
    states = torch.zeros(1, dtype=torch.long)  # [1]: the root s1
    logp = torch.zeros(1)                      # [1]: log 1
    for t in range(mdp.depth):
        step = torch.log_softmax(policy.logits[states], dim=-1)  # [b**t, b]
        logp = (logp[:, None] + step).reshape(-1)                # [b**(t+1)], child j*b + k of node j
        states = next_state[states].reshape(-1)
    return logp
    ### END SOLUTION


# %%
check_enumerate_log_probs(enumerate_log_probs)


# %% [markdown]
# ## Exercise 3 — OOD mass
#
# Given the log-probs of all trajectories and a boolean mask of the in-distribution ones, return
# the total probability of the others.

# %% exercise="a2.ood_mass"
def ood_mass(logp: torch.Tensor, in_distribution: torch.Tensor) -> torch.Tensor:
    """Probability mass off the data.

    Args:
        logp: Tensor [n_trajectories] of log-probabilities.
        in_distribution: BoolTensor [n_trajectories].

    Returns:
        Scalar tensor in [0, 1].
    """
    ### BEGIN SOLUTION
    return torch.logsumexp(logp[~in_distribution], dim=0).exp()
    ### END SOLUTION


# %%
check_ood_mass(ood_mass)

# %% [markdown]
# ## Use it
#
# Train a tabular policy (SFT, then DPO) and measure its OOD mass with your own functions; compare
# with `run.summary["final_ood_mass"]`. The tabular SFT gets lr 0.3 so that, like the RNN at its
# default lr 1e-2, it fits the demonstrations before DPO starts (lesson 2, section 6): at lr 1e-2
# it would start DPO with about a quarter of its mass still off the data, left over from an
# unfinished SFT, not moved there by DPO. Then compare with an RNN: which one sends mass to
# trajectories nobody showed it during DPO, and why (lesson 4)?

# %%
run = train(policy="tabular", sft_lr=0.3, daa_steps=100, progress=False)
mask = in_distribution_mask(mdp, paper_dataset())
with torch.no_grad():
    mine = ood_mass(enumerate_log_probs(run.policy), mask)
print(f"OOD mass, mine: {float(mine):.6f}   library: {run.summary['final_ood_mass']:.6f}")
rnn = train(daa_steps=100, progress=False)
for name, r in (("tabular (SFT lr 0.3)", run), ("rnn (SFT lr 1e-2)", rnn)):
    print(f"{name:>20}: OOD mass after SFT {r.summary['sft_ood_mass']:.2%}, peak during DPO {r.summary['peak_ood_mass']:.2%}")
