# %% [markdown]
# # Lesson 6 — Noise and many optima
#
# **Goal.** Because the objective has many optima (lesson 4), different runs end in different
# places. Repeat DPO over seeds (the paper's figure 18) and see the OOD mass land on different
# trajectories each time; then map how strongly the effect depends on learning rate and hidden
# size.
#
# **Plan.** six seeds at once → which OOD trajectories win, per seed → the sensitivity map →
# explore a seed, live → summary → exercises → glossary.

# %%
# %matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from treemdp.plots import TrajectoryView, live_plot, plot_trajectories, probability_matrix, run_grid
from treemdp.training import TrainConfig

# %% [markdown]
# ## 1. Six seeds (figure 18)
#
# A small hidden size (4) and a larger learning rate (3e-2) make the runs differ most. The seed
# changes only the initial weights.

# %%
seeds = list(range(6))
settings = dict(loss="dpo", beta=0.1, hidden_size=4, daa_lr=3e-2, daa_steps=200)
runs = run_grid([TrainConfig(seed=s, **settings) for s in seeds])
fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), sharex=True, sharey=True)
for ax, s, run in zip(axes.flat, seeds, runs):
    plot_trajectories(run.history, ax, phase="daa", title=f"seed {s}: peak OOD {run.summary['peak_ood_mass']:.0%}")
fig.tight_layout()

# %% [markdown]
# ## 2. Which OOD trajectories take the mass?
#
# Peak probability of every OOD trajectory during DAA, one row per seed. Different seeds light up
# different columns: the loss does not care which OOD trajectory holds the mass.

# %%
peaks = pd.concat({s: run.history.query("phase == 'daa' and not in_distribution").groupby("trajectory")["prob"].max()
                   for s, run in zip(seeds, runs)}, axis=1).T  # [seeds, 24 OOD trajectories]
peaks = peaks.loc[:, peaks.max() > 0.02]  # keep the columns that ever matter
fig, ax = plt.subplots(figsize=(1 + 0.8 * peaks.shape[1], 3.5))
image = ax.imshow(peaks.to_numpy(), cmap="Oranges", vmin=0, vmax=1, aspect="auto")
ax.set_xticks(range(peaks.shape[1]), [c.replace("s1-", "").replace("-s∞", "") for c in peaks.columns], rotation=60, ha="right", fontsize=8)
ax.set_yticks(range(len(seeds)), [f"seed {s}" for s in seeds])
fig.colorbar(image, label="peak probability");

# %% [markdown]
# ## 3. The sensitivity map
#
# Peak OOD mass (mean over two seeds) for DPO at β = 0.1 over DAA learning rate × hidden size.
# Runs that share a hidden size are batched together.

# %%
hidden_sizes, learning_rates = (4, 8, 16, 32), (3e-3, 1e-2, 3e-2, 1e-1)
configs = [TrainConfig(loss="dpo", beta=0.1, hidden_size=hidden, daa_lr=lr, seed=s, daa_steps=100)
           for hidden in hidden_sizes for lr in learning_rates for s in (0, 1)]
rows = []
for config, result in zip(configs, run_grid(configs)):  # one batched computation per hidden size
    peak = result.summary["peak_ood_mass"] if not isinstance(result, Exception) else float("nan")
    rows.append({"hidden_size": config.hidden_size, "daa_lr": config.daa_lr, "peak_ood_mass": peak})
grid = pd.DataFrame(rows).groupby(["hidden_size", "daa_lr"])["peak_ood_mass"].mean().unstack()
fig, ax = plt.subplots(figsize=(5.5, 4))
image = ax.imshow(grid.to_numpy(), cmap="magma", vmin=0, vmax=1, origin="lower")
for (i, j), value in zip([(i, j) for i in range(len(hidden_sizes)) for j in range(len(learning_rates))], grid.to_numpy().flat):
    ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w" if value < 0.5 else "k", fontsize=9)
ax.set_xticks(range(len(learning_rates)), [f"{lr:g}" for lr in learning_rates])
ax.set_yticks(range(len(hidden_sizes)), hidden_sizes)
ax.set_xlabel("DAA learning rate")
ax.set_ylabel("hidden size")
fig.colorbar(image, label="peak OOD mass");

# %% [markdown]
# ## 4. Explore a seed, live
#
# Every run behind the controls (20 seeds × 3 hidden sizes × 4 learning rates, 240 runs) is
# trained first, batched.
#
# *How the live plot works:* the runs behind every position of the controls were computed once,
# above, in one batched call (`treemdp.plots.run_grid` groups them for `train_batch`; the progress
# bar shows it). A control only picks a precomputed result, and `treemdp.plots.live_plot` changes
# the data of the lines, bars and texts already drawn, so the picture follows the control at once.

# %%
explore_configs = [TrainConfig(loss="dpo", beta=0.1, seed=s, hidden_size=h, daa_lr=x, daa_steps=200, log_every=5)
                   for h in (4, 8, 32) for x in (3e-3, 1e-2, 3e-2, 1e-1) for s in range(20)]
explore = {(c.seed, c.hidden_size, c.daa_lr): probability_matrix(r.history)
           for c, r in zip(explore_configs, run_grid(explore_configs))}
seed = widgets.IntSlider(value=0, min=0, max=19, description="seed")
hidden_size = widgets.Dropdown(options=[4, 8, 32], value=4, description="hidden size")
daa_lr = widgets.SelectionSlider(options=[3e-3, 1e-2, 3e-2, 1e-1], value=3e-2, description="DAA lr")


def setup_seed(fig):
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    return TrajectoryView(top, bottom, history=runs[0].history)


def update_seed(view):
    steps, probs, names = explore[seed.value, hidden_size.value, daa_lr.value]
    final = np.where(view.in_dist, -1.0, probs[-1])
    top_ood = ", ".join(f"{names[j]} {final[j]:.0%}" for j in np.argsort(final)[::-1][:2])
    view.show(steps, probs, title=f"seed {seed.value}: final top OOD: {top_ood}")


display(live_plot(update_seed, [seed, hidden_size, daa_lr], setup=setup_seed, figsize=(10, 6)))

# %% [markdown]
# ## Summary
#
# - Identical settings, different seeds: the OOD mass goes to different trajectories and reaches
#   different peaks — the paper's "DPO is noisy" (figure 18) is the many optima of lesson 4 made
#   visible.
# - The effect is real but sensitive: larger effective step size (learning rate, hidden size) gives
#   more and longer-lasting OOD mass; small ones can hide it. Report peak and final OOD mass over
#   several seeds, never one run.
#
# ## Exercises
#
# 1. Extend the sensitivity map with an `optimizer` axis (`"sgd"` vs `"adam"`). What does SGD do?
# 2. How many seeds do you need before the mean peak OOD mass of one cell is known to ±0.05?
# 3. Make the same map for IPO at β = 0.5. Is it less sensitive?

# %%
# Your experiments here.

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | seed | initialises the policy's weights (`TrainConfig.seed`); nothing else is random |
# | many optima | the objective's null space (lesson 4): equally good policies with different OOD mass |
# | sensitivity map | a summary statistic over a grid of settings |
# | `run_grid(configs)` | many runs computed together (`train_batch` for each shape), in order |
# | `summary["top_ood"]` | the most probable OOD trajectories at the end of a run |
