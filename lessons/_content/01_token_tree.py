# %% [markdown]
# # Lesson 1 — The token tree
#
# **Goal.** Meet the toy world of Rafailov et al. (2024, Appendix E): a tree in which a *state* is a
# prefix of tokens, an *action* is the next token and a *trajectory* is a whole "sentence". By the
# end you can name every state and trajectory, compute the exact probability a policy gives each
# trajectory, and watch samples drawn through the Gymnasium environment converge to it.
#
# **Plan.** the tree → its trajectories → the environment → a policy → exact enumeration →
# sampling, live → summary → exercises → glossary.

# %%
# %matplotlib inline
import gymnasium
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from treemdp import RNNPolicy, TreeMDP, trajectory_log_probs
from treemdp.env import render_tree, rollout
from treemdp.plots import live_plot

# %% [markdown]
# ## 1. The tree
#
# One start state `s1`; action `a_k` moves to the k-th child; after three actions every path ends in
# the absorbing terminal state `s∞`. States are numbered breadth first, like the paper's figure 6:
# `s1`; `s2 s3 s4`; `s5 … s13`. The star marks the path of the actions `(a1, a1, a0)`.

# %%
mdp = TreeMDP()  # the paper's tree: branching 3, depth 3
print(mdp, "|", mdp.n_states, "states plus s∞ |", mdp.n_trajectories, "trajectories")
print(render_tree(mdp, actions=(1, 1, 0)))

# %% [markdown]
# The whole dynamics is one lookup table, `mdp.next_state` (row: state, column: action). The
# environment steps through it and the exact enumeration walks it, so the two cannot disagree.
# Rows 4–12 (the depth-2 states) all lead to the terminal state, index 13.

# %%
mdp.next_state

# %% [markdown]
# ## 2. Trajectories
#
# A trajectory is a sequence of `depth` actions. `mdp.trajectories()` lists all 27 in
# lexicographic order (first action slowest), and `trajectory_name` writes them in the paper's
# notation.

# %%
trajectories = mdp.trajectories()  # LongTensor [27, 3]
names = mdp.trajectory_names()
labels = ["".join(str(a) for a in row) for row in trajectories.tolist()]  # short: "110" = (a1, a1, a0)
for row in (0, 12, 26):
    print(row, trajectories[row].tolist(), names[row])

# %% [markdown]
# ## 3. The Gymnasium environment
#
# `treemdp/TreeMDP-v0` is registered when `treemdp` is imported. Observations are state indices
# (`s1` → 0), actions are tokens, and an episode terminates after `depth` actions.

# %%
env = gymnasium.make("treemdp/TreeMDP-v0", render_mode="ansi")
observation, info = env.reset(seed=0)
for action in (1, 1, 0):
    observation, reward, terminated, truncated, info = env.step(action)
    print(f"a{action} -> {mdp.state_name(observation)}   terminated={terminated}")
print(env.render())

# %% [markdown]
# ## 4. A policy
#
# A policy gives, after any prefix, a distribution over the next action. `RNNPolicy` reads the prefix
# token by token like a small language model (a GRU by default). The empty prefix is the start
# state `s1`.

# %%
policy = RNNPolicy(mdp, hidden_size=32, seed=0)  # an untrained policy
start = torch.zeros(1, 0, dtype=torch.long)      # prefix of length 0: the state s1
with torch.no_grad():
    print("pi(. | s1)      =", policy.action_log_probs(start).exp())
    print("pi(. | a1, a1)  =", policy.action_log_probs(torch.tensor([[1, 1]])).exp())

# %% [markdown]
# ## 5. Exact enumeration
#
# A trajectory's probability is the product of its next-action probabilities (the chain rule).
# `trajectory_log_probs` computes all 27 at once in log space, evaluating each tree node once.
# Nothing is sampled: the probabilities are exact and sum to one.

# %%
with torch.no_grad():
    logp = trajectory_log_probs(policy)  # [27], in trajectories() order
probs = logp.exp()
print("sum of probabilities:", float(probs.sum()))
fig, ax = plt.subplots(figsize=(10, 3))
ax.bar(range(mdp.n_trajectories), probs)
ax.set_xticks(range(mdp.n_trajectories), labels, rotation=90, fontsize=8)
ax.set_xlabel("trajectory (actions)")
ax.set_ylabel("exact probability");

# %% [markdown]
# ## 6. Sampling through the environment, live
#
# `rollout` plays the policy in the environment and records the trajectories it reaches. It shares
# no code with the enumeration (it asks the policy one prefix at a time), so agreement between the
# two is a real check. Move the sliders: with more episodes the sampled histogram converges to
# the exact one and the total variation distance shrinks (roughly like 1/√episodes).
#
# *How the live plot works:* 3000 episodes per seed are drawn once, below; the episodes slider
# shows the first N of them, and `treemdp.plots.live_plot` changes the heights of the bars already
# drawn instead of drawing a new figure, so the picture follows the slider at once.

# %%
draws = {s: mdp.trajectory_index(rollout(env, policy, seed=s, episodes=3000).tolist()) for s in range(10)}  # [3000] rows
episodes = widgets.SelectionSlider(options=[10, 30, 100, 300, 1000, 3000], value=100, description="episodes")
seed = widgets.IntSlider(value=0, min=0, max=9, description="seed")


def setup_sampling(fig):
    ax = fig.subplots()
    x = torch.arange(mdp.n_trajectories)
    ax.bar(x - 0.2, probs, width=0.4, label="exact (enumeration)")
    bars = ax.bar(x + 0.2, torch.zeros(mdp.n_trajectories), width=0.4, label="sampled")
    ax.set_xticks(x, labels, rotation=90, fontsize=8)
    ax.set_ylabel("probability")
    ax.legend(fontsize=8, loc="upper right")
    return ax, bars


def update_sampling(state):
    ax, bars = state
    counts = torch.bincount(draws[seed.value][:episodes.value], minlength=mdp.n_trajectories)
    sampled = counts / counts.sum()
    for bar, height in zip(bars, sampled.tolist()):
        bar.set_height(height)
    distance = 0.5 * float((sampled - probs).abs().sum())
    ax.set_ylim(0, 1.1 * max(float(sampled.max()), float(probs.max())))
    ax.set_title(f"{episodes.value} episodes, seed {seed.value}: total variation distance {distance:.3f}")


display(live_plot(update_sampling, [episodes, seed], setup=setup_sampling, figsize=(10, 3.6)))

# %% [markdown]
# ## Summary
#
# - A state is a prefix of actions; a trajectory is a full sequence of `depth` actions; the paper's
#   tree has 13 states (plus `s∞`) and 27 trajectories.
# - One table (`mdp.next_state`) defines the dynamics for both the environment and the enumeration.
# - `trajectory_log_probs(policy)` gives the exact probability of every trajectory; sampling through
#   the environment only estimates it, with an error that shrinks like 1/√episodes.
# - Because we can enumerate, every later lesson measures out-of-distribution mass exactly.
#
# ## Exercises
#
# 1. Which row of `mdp.trajectories()` is `s1-a2-s4-a0-s11-a1-s∞`? Check with `mdp.trajectory_name`.
# 2. Compute log π(a1, a1, a0) yourself with three calls of `policy.action_log_probs` (chain rule)
#    and compare with `logp[12]`. (Assignment a2 grades this.)
# 3. Build `TreeMDP(branching=2, depth=4)`. How many states and trajectories? Draw it with `render_tree`.
# 4. For 10 seeds, plot the total variation distance against the number of episodes on log-log
#    axes. What slope do you see?

# %%
# Your experiments here.

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | `TreeMDP(branching, depth)` | the tree; `.next_state` transition table, `.trajectories()`, `.trajectory_name()` |
# | state `s_i` | a node = a prefix of actions; `s1` the start, `s∞` the terminal state |
# | trajectory | a full action sequence, like a sentence of `depth` tokens |
# | `RNNPolicy` | a recurrent policy over action tokens; `.action_log_probs(prefixes)` → [N, branching] |
# | `trajectory_log_probs(policy)` | exact log-probabilities of all trajectories, [branching**depth] |
# | `treemdp/TreeMDP-v0` | the Gymnasium environment; `rollout(env, policy, seed=, episodes=)` samples it |
# | total variation distance | ½ Σ \|p̂ − p\|: how far the sampled histogram is from the exact one |
