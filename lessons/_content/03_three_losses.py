# %% [markdown]
# # Lesson 3 — One preference, three losses: where does the mass go?
#
# **Goal.** Run the direct alignment phase with DPO, IPO and SLiC on the paper's single preference
# and watch, exactly, where probability mass goes. You will reproduce the paper's figures 7 and 9–17
# live and find that a sizeable share lands on trajectories that are in no dataset.
#
# **Plan.** the loss → one DPO run → all three losses at three betas → the live explorer → summary →
# exercises → glossary.

# %%
# %matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display

from treemdp import TreeMDP, paper_dataset
from treemdp.plots import TrajectoryView, live_plot, plot_run, plot_trajectories, probability_matrix, run_grid
from treemdp.training import TrainConfig, train

# %% [markdown]
# ## 1. The loss (paper eq. 4)
#
# For a preferred answer y_w and a dispreferred y_l, with the SFT policy frozen as the reference:
#
#     h = [log π(y_w) − log ref(y_w)] − [log π(y_l) − log ref(y_l)]
#     L = g(β · h)
#
# with g(x) = −log σ(x) for DPO, (x − 1)² for IPO and max(0, 1 − x) for SLiC. The one preference:

# %%
mdp = TreeMDP()
preference = paper_dataset().preferences[0]
print("chosen  ", mdp.trajectory_name(preference.chosen))
print("rejected", mdp.trajectory_name(preference.rejected))

# %% [markdown]
# ## 2. One DPO run
#
# SFT (200 steps), then 150 DPO steps at β = 0.1. Thick lines: the three trajectories in the data;
# dashed: OOD trajectories that ever exceed 5%.

# %%
run = train(loss="dpo", beta=0.1, daa_steps=150, progress=False)
figure = plot_run(run.history, run.summary)

# %%
{key: run.summary[key] for key in ("peak_ood_mass", "peak_ood_step", "final_ood_mass",
                                   "final_chosen_prob", "final_rejected_prob", "top_ood")}

# %% [markdown]
# The rejected trajectory is pushed to zero, as the loss asks. But its mass does not all go to the
# chosen one: for a while a large share sits on `s1-a1-s3-a1-s9-a1-s∞` — the chosen prefix with a
# last action nobody demonstrated — before it drains back.
#
# ## 3. Three losses, three betas (figures 7 and 9–17)
#
# Nine runs at once with the batched engine (`run_grid` hands them to `train_batch`, which gives
# the same numbers as nine calls of `train`).

# %%
losses, betas = ("dpo", "ipo", "slic"), (0.01, 0.1, 0.5)
configs = [TrainConfig(loss=loss, beta=beta, daa_steps=150) for loss in losses for beta in betas]
runs = dict(zip([(c.loss, c.beta) for c in configs], run_grid(configs)))

fig, axes = plt.subplots(2, 3, figsize=(13, 6), sharex=True, sharey="row")
for column, loss in enumerate(losses):
    for beta in betas:
        daa = runs[loss, beta].metrics.query("phase == 'daa'")
        axes[0, column].plot(daa["step"], daa["ood_mass"], label=f"beta={beta}")
        axes[1, column].plot(daa["step"], daa["in_distribution_mass"], label=f"beta={beta}")
    axes[0, column].set_title(loss.upper())
axes[0, 0].set_ylabel("OOD mass")
axes[1, 0].set_ylabel("in-distribution mass")
for ax in axes[1]:
    ax.set_xlabel("DAA step")
axes[0, 0].legend(fontsize=8)
fig.suptitle("Figure 7, live: OOD mass rises during DAA training, in-distribution mass falls");

# %%
fig, axes = plt.subplots(3, 3, figsize=(15, 11), sharex=True, sharey=True)
for i, loss in enumerate(losses):
    for j, beta in enumerate(betas):
        plot_trajectories(runs[loss, beta].history, axes[i, j], phase="daa", title=f"{loss.upper()}  beta={beta}")
fig.tight_layout()

# %% [markdown]
# ## 4. Explore, live
#
# Pick a loss, β, seed and number of DAA steps. All 180 runs behind the controls (3 losses × 6 betas
# × 10 seeds, 400 DAA steps each; fewer steps are the start of the same run) are trained first, in
# one batched computation of a few seconds. Look for: how high the OOD mass peaks and when, whether it drains back, and
# which OOD trajectories take it.
#
# *How the live plot works:* the runs behind every position of the controls were computed once,
# above, in one batched call (`treemdp.plots.run_grid` groups them for `train_batch`; the progress
# bar shows it). A control only picks a precomputed result, and `treemdp.plots.live_plot` changes
# the data of the lines, bars and texts already drawn, so the picture follows the control at once.

# %%
grid_configs = [TrainConfig(loss=l, beta=b, seed=s, daa_steps=400)
                for l in ("dpo", "ipo", "slic") for b in (0.01, 0.05, 0.1, 0.2, 0.5, 1.0) for s in range(10)]
grid = {(c.loss, c.beta, c.seed): probability_matrix(r.history) for c, r in zip(grid_configs, run_grid(grid_configs))}

loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="dpo", description="loss")
beta = widgets.SelectionSlider(options=[0.01, 0.05, 0.1, 0.2, 0.5, 1.0], value=0.1, description="beta")
seed = widgets.IntSlider(value=0, min=0, max=9, description="seed")
daa_steps = widgets.IntSlider(value=150, min=50, max=400, step=50, description="DAA steps")


def setup(fig):
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    return TrajectoryView(top, bottom, history=run.history)


def update(view):
    steps, probs, _ = grid[loss.value, beta.value, seed.value]  # [S], [S, 27]
    keep = steps <= daa_steps.value
    ood = probs[keep][:, ~view.in_dist].sum(1)
    peak = int(ood.argmax())
    view.show(steps[keep], probs[keep],
              title=f"{loss.value.upper()} beta={beta.value} seed={seed.value}: peak OOD {ood[peak]:.1%} "
                    f"at step {steps[keep][peak]}, final {ood[-1]:.1%}")


display(live_plot(update, [loss, beta], [seed, daa_steps], setup=setup, figsize=(10, 6.5)))

# %% [markdown]
# ## Summary
#
# - All three losses push the rejected trajectory down, as asked; none of them says where its mass
#   should go, and a significant share goes to OOD trajectories (paper, figure 7).
# - The mass concentrates on a few OOD trajectories — here the chosen prefix with an undemonstrated
#   last action — and often peaks early, then drains back to the chosen one unless the loss
#   saturates first (DPO at large β, SLiC once β·h ≥ 1, IPO at h = 1/β).
# - The trends hold across β; the exact numbers depend on seed, learning rate and hidden size
#   (lesson 6).
#
# ## Exercises
#
# 1. For IPO at β = 0.5, compute h at the end of training from `run.policy` and `run.reference`
#    (use `trajectory_log_probs` and `treemdp.preference_h`). Is it at the optimum 1/β?
# 2. Which loss puts the most mass on OOD trajectories at its peak, for each β? Make a 3 × 3 table
#    from `runs[...].summary["peak_ood_mass"]`.
# 3. Does the in-distribution trajectory that is in neither side of the preference
#    (`s1-a2-s4-a2-s13-a2-s∞`) gain or lose mass? Why might it?

# %%
# Your experiments here.

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | DAA | direct alignment algorithm: DPO, IPO, SLiC — train on preferences without a reward model |
# | `preference_loss(..., beta=, loss=)` | per-example g(β·h), paper eq. 4 |
# | h | log-ratio margin: (log π − log ref) of chosen minus that of rejected |
# | β | inverse temperature; larger β saturates the loss sooner |
# | reference `ref` | the SFT policy, frozen during the DAA phase |
# | peak / final OOD mass | the largest / last OOD mass during the DAA phase (`run.summary`) |
# | `run_grid(configs)` | many runs as one batched computation (`train_batch`), same results as `train` |
# | `plot_run`, `TrajectoryView` | the figure of a run; the same, updated in place for live plots |
