# %% [markdown]
# # Lesson 2 — Behaviour cloning (SFT) on three demonstrations
#
# **Goal.** Train a policy to imitate the paper's three demonstrations and look at what it does *off*
# the data: at states no demonstration visits, and on the 24 trajectories nobody showed it. That
# policy becomes the *reference* of every direct alignment run in the next lessons.
#
# **Plan.** the data → one SFT run → the loss at its optimum → next-action distributions at every
# state → RNN vs tabular, live → summary → exercises → glossary.

# %%
# %matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

import treemdp
from treemdp.plots import live_plot

import math

from treemdp import TreeMDP, paper_dataset
from treemdp.plots import plot_trajectories
from treemdp.training import train

# %% [markdown]
# ## 1. The data
#
# Appendix E gives three demonstrations (and one preference, used from lesson 3 on).

# %%
mdp = TreeMDP()
data = paper_dataset()
for row in data.demonstrations.tolist():
    print(row, mdp.trajectory_name(row))

# %% [markdown]
# ## 2. One SFT run
#
# `train(daa_steps=0)` runs only the supervised phase: full-batch Adam on the mean negative
# log-likelihood of the demonstrations, with every trajectory's probability enumerated exactly at
# every step.

# %%
sft = train(daa_steps=0, progress=False)
print(f"OOD mass after SFT: {sft.summary['final_ood_mass']:.4f}")
fig, ax = plt.subplots(figsize=(9, 4))
plot_trajectories(sft.history, ax, phase="sft", title="SFT: the three demonstrations take the mass")

# %% [markdown]
# ## 3. Where the loss stops
#
# With three equally weighted demonstrations the best possible policy gives each 1/3, so the
# negative log-likelihood cannot go below log 3. SFT gets there — and says nothing about the 24
# other trajectories, which simply end near zero.

# %%
final_loss = sft.metrics["loss"].iloc[-1]
print(f"final SFT loss {final_loss:.4f}   log 3 = {math.log(3):.4f}")
sft.metrics[["step", "loss", "chosen_prob", "rejected_prob", "ood_mass"]].tail(3)

# %% [markdown]
# ## 4. What the policy does off the data
#
# At the start state the policy must split its mass a0/a1/a2 evenly (one demonstration each), and
# at `s2`, `s3`, `s4`, `s5`, `s9`, `s13` it must follow the demonstration. At the other seven states
# nothing constrains it. Below: the next-action distribution at all 13 states; the states a
# demonstration visits are marked.

# %%
prefixes_by_depth = [torch.zeros(1, 0, dtype=torch.long)] + [TreeMDP(3, t).trajectories() for t in (1, 2)]
demo_states = {int(s) for t in range(mdp.depth) for s in mdp.prefix_states(data.demonstrations[:, :t])}
state_labels = [mdp.state_name(s) + ("  (data)" if s in demo_states else "") for s in range(mdp.n_states)]


def next_action_table(policy):
    """Next-action probabilities at every state, [13, 3], breadth-first order."""
    with torch.no_grad():
        return torch.cat([policy.action_log_probs(p).exp() for p in prefixes_by_depth])


def draw_table(ax, table, title):
    ax.imshow(table, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    for (i, j), value in zip(torch.cartesian_prod(torch.arange(13), torch.arange(3)).tolist(), table.flatten()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_yticks(range(mdp.n_states), state_labels, fontsize=8)
    ax.set_xticks(range(3), ["a0", "a1", "a2"])
    ax.set_title(title, fontsize=10)


fig, ax = plt.subplots(figsize=(4, 6))
draw_table(ax, next_action_table(sft.policy), "SFT policy: pi(a | s)")

# %% [markdown]
# ## 5. RNN vs tabular, live
#
# A `TabularPolicy` has its own logits at every state: SFT moves only the states on the data, the
# others keep their (near-uniform) initial distribution. The RNN shares its weights across states,
# so fitting the data also changes what it does at unvisited states. Change the policy, hidden
# size, steps or learning rate and compare the unvisited rows.
#
# *How the live plot works:* `treemdp.plots.live_plot` calls the drawing function again whenever a
# control changes; it re-runs a library function with the new value and redraws one matplotlib
# `Figure` inside an `ipywidgets.Output` (`clear_output(wait=True)` swaps
# the picture only when the new one is ready, so it does not flicker). Nothing is cached: what you
# see is a fresh run.

# %%
policy_kind = widgets.Dropdown(options=["rnn", "tabular"], value="rnn", description="policy")
hidden_size = widgets.Dropdown(options=[4, 8, 32, 64], value=32, description="hidden size")
sft_steps = widgets.IntSlider(value=200, min=0, max=400, step=50, description="SFT steps")
sft_lr = widgets.SelectionSlider(options=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1], value=1e-2, description="SFT lr")


def draw_sft(fig):
    run = train(policy=policy_kind.value, hidden_size=hidden_size.value, sft_steps=sft_steps.value,
                sft_lr=sft_lr.value, daa_steps=0, progress=False)
    final = run.history[run.history["step"] == run.history["step"].max()]
    left, right = fig.subplots(1, 2, width_ratios=(1, 2.2))
    draw_table(left, next_action_table(run.policy), f"{policy_kind.value}: pi(a | s)")
    colors = ["tab:blue" if d else "0.6" for d in final["in_distribution"]]
    right.bar(range(mdp.n_trajectories), final["prob"], color=colors)
    right.set_xticks(range(mdp.n_trajectories),
                     [n.replace("s1-", "").replace("-s∞", "") for n in final["trajectory"]], rotation=90, fontsize=6)
    right.set_ylim(0, 1)
    right.set_title(f"after {sft_steps.value} SFT steps: OOD mass {run.summary['final_ood_mass']:.3f} "
                    "(blue: demonstrations)", fontsize=10)


display(live_plot(draw_sft, [policy_kind, hidden_size], [sft_steps, sft_lr], figsize=(11, 5)))

# %% [markdown]
# ## Summary
#
# - SFT maximises the likelihood of the demonstrations; with three of them its optimum gives each
#   1/3, loss log 3, and almost no mass elsewhere.
# - The data pin down the next-action distribution only at the states they visit. Elsewhere the
#   policy's behaviour is whatever its initialisation and its parameter sharing make it.
# - The tabular policy leaves unvisited states untouched; the RNN changes them too. That sharing is
#   what later carries probability to trajectories nobody showed it.
# - The SFT policy is frozen as the reference `ref` for the direct alignment phase.
#
# ## Exercises
#
# 1. With `sft_steps=0` the OOD mass is large. How many SFT steps until it falls below 1%, for the
#    RNN and for the tabular policy?
# 2. Find a state no demonstration visits where the RNN's next-action distribution moved far from
#    uniform after SFT. Does it depend on the seed (`train(..., seed=...)`)?
# 3. Train with `sft_lr=1e-1`. What happens to the loss curve? Is the result still at log 3?

# %%
# Your experiments here.

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | SFT / behaviour cloning | maximise the log-likelihood of the demonstrations |
# | `paper_dataset()` | the three demonstrations and one preference of Appendix E |
# | `train(daa_steps=0, ...)` | SFT only; returns a `RunResult` (`.history`, `.metrics`, `.summary`, `.policy`) |
# | `TabularPolicy` | independent logits per state: no parameter sharing |
# | in-distribution / OOD | trajectories in the data / all the others |
# | OOD mass | total probability of the OOD trajectories, exact here |
# | `plot_trajectories(history, ax)` | every trajectory's probability over steps, data highlighted |
