# %% [markdown]
# # Lesson 4 — Why: a rank-deficient objective, and parameter sharing
#
# **Goal.** Understand why the losses of lesson 3 leave mass on OOD trajectories: the objective sees
# the policy only through a handful of log-ratios (a data matrix with a huge null space), so many
# policies are equally optimal; and an RNN's shared parameters move the unconstrained ones. A
# tabular policy, with nothing shared, leaks almost nothing (compared at equal SFT quality).
#
# **Plan.** the three g → the data matrix Q and its null space → same loss, different policies →
# tabular vs RNN, live → summary → exercises → glossary.

# %%
# %matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from treemdp import (LOSSES, TreeMDP, in_distribution_mask, paper_dataset, preference_h, preference_loss,
                     theory, trajectory_log_probs)
from treemdp.plots import live_plot, run_grid
from treemdp.training import TrainConfig, train

# %% [markdown]
# ## 1. The three g
#
# Each loss is g(β·h) for a convex g. DPO never saturates (its gradient only fades); IPO pulls β·h
# to exactly 1; SLiC stops pushing once β·h ≥ 1.

# %%
x = torch.linspace(-4, 4, 401)
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, g in LOSSES.items():
    ax.plot(x, g(x), label=name)
ax.set_xlabel("x = beta * h")
ax.set_ylabel("g(x)")
ax.set_ylim(-0.2, 6)
ax.legend();

# %% [markdown]
# In terms of h itself, β stretches the curve: the IPO optimum is at h = 1/β and SLiC saturates
# from h = 1/β on. The explorer below draws g(β·h) against h, and the path h takes during a real
# run at that β (dots, darker = earlier). The h axis spans the whole path and 1/β, so IPO's stop at
# h = 1/β is visible at every β.
#
# *How the live plot works:* the runs behind every position of the controls were computed once,
# above, in one batched call (`treemdp.plots.run_grid` groups them for `train_batch`; the progress
# bar shows it). A control only picks a precomputed result, and `treemdp.plots.live_plot` changes
# the data of the lines, bars and texts already drawn, so the picture follows the control at once.

# %%
mdp = TreeMDP()
data = paper_dataset()
chosen = mdp.trajectory_index(data.chosen())      # [1]
rejected = mdp.trajectory_index(data.rejected())  # [1]

g_betas = [0.05, 0.1, 0.2, 0.5, 1.0]
g_configs = [TrainConfig(loss=l, beta=b, daa_steps=150, log_every=5) for l in ("dpo", "ipo", "slic") for b in g_betas]
g_runs = dict(zip([(c.loss, c.beta) for c in g_configs], run_grid(g_configs)))
g_loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="ipo", description="loss")
g_beta = widgets.SelectionSlider(options=g_betas, value=0.5, description="beta")


def margin_path(run):
    """h at every logged DAA step, from the history (the reference is the DAA step-0 policy)."""
    daa = run.history.query("phase == 'daa'")
    probs = torch.tensor(daa.pivot(index="step", columns="trajectory", values="prob")[mdp.trajectory_names()].to_numpy())
    logp = probs.log()  # [steps, 27]
    ref = logp[0].expand_as(logp)
    return preference_h(logp[:, chosen[0]], logp[:, rejected[0]], ref[:, chosen[0]], ref[:, rejected[0]])


h_paths = {key: margin_path(run) for key, run in g_runs.items()}


def setup_g(fig):
    ax = fig.subplots()
    curve, = ax.plot([], [], color="k", lw=1.5, label="g(beta*h)")
    dots = ax.scatter([], [], c=[], cmap="viridis", s=12, zorder=3, label="h during training (darker = earlier)")
    target = ax.axvline(1.0, color="0.5", ls=":", lw=1)
    label = ax.text(1.0, 0.04, " h = 1/beta", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_xlabel("h")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8, loc="upper right")
    return ax, curve, dots, target, label


def update_g(state):
    ax, curve, dots, target, label = state
    b, g = g_beta.value, LOSSES[g_loss.value]
    h_path = h_paths[g_loss.value, b]
    low = min(-1.0, float(h_path.min()) - 0.5)
    high = 1.25 * max(float(h_path.max()), 1 / b) + 0.5  # the whole path and 1/beta
    h = torch.linspace(low, high, 400)
    curve.set_data(h, g(b * h))
    curve.set_label(f"g(beta*h), beta={b}")
    dots.set_offsets(torch.stack([h_path, g(b * h_path)], 1))
    dots.set_array(torch.arange(len(h_path), dtype=torch.float32))
    dots.set_clim(0, len(h_path) - 1)
    target.set_xdata([1 / b, 1 / b])
    label.set_x(1 / b)
    ax.set_xlim(low, high)
    ax.set_ylim(-0.05 * float(g(b * h).max()), 1.1 * float(g(b * h).max()))
    ax.set_title(f"{g_loss.value.upper()} beta={b}: final h = {float(h_path[-1]):.2f} (1/beta = {1 / b:g})", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")


display(live_plot(update_g, [g_loss, g_beta], setup=setup_g, figsize=(7, 3.8)))

# %% [markdown]
# ## 2. The data matrix Q and its null space
#
# Write the objective over the vector of all 27 log-ratios Δ = log π − log ref. Each preference i
# reads it through a query row q_i with +1 at the chosen trajectory and −1 at the rejected one, so
# h_i = q_i · Δ and L = Σ_i g(β q_i · Δ). With one preference Q is 1 × 27: rank 1, and a 26-dimensional
# null space of directions the loss cannot see.

# %%
Q = theory.query_matrix(mdp, data)   # [1, 27]: +1 at the chosen trajectory, -1 at the rejected one
rank = theory.query_rank(Q)
basis = theory.null_space(Q)         # [27, 26]: the directions the loss cannot see
print(f"Q is {tuple(Q.shape)}, rank {rank}, null space of dimension {basis.shape[1]}")

run = train(loss="dpo", beta=0.1, daa_steps=24, progress=False)  # stopped near its OOD peak
with torch.no_grad():
    logp, ref_logp = trajectory_log_probs(run.policy).double(), trajectory_log_probs(run.reference).double()
print("h from Q:              ", float(theory.margins(Q, logp, ref_logp)[0]))
print("h from preference_h:   ", float(preference_h(logp[chosen], logp[rejected], ref_logp[chosen], ref_logp[rejected])))

# %% [markdown]
# ## 3. Same loss, very different policies
#
# Move the policy along the null space of Q and h, hence every loss at every β, stays put. Each row
# of Q sums to zero and Q is zero off the data, so adding a constant to the OOD log-probs (then
# renormalising) is such a move: `theory.with_ood_mass` dials the OOD mass to any value in closed
# form. Below, the DPO policy of section 2 (stopped after 24 steps, when about half its mass was
# OOD), the same policy with 99% of its mass OOD, piled onto one trajectory, and with its OOD mass
# set to 1% have exactly the same DPO loss. The optimiser is free to end up at any of them; which
# one it reaches depends on the policy's parameterisation and on the path.

# %%
inside = in_distribution_mask(mdp, data)
one_ood = theory.with_ood_mass(logp, inside, 0.99, onto=int(mdp.trajectory_index([[2, 0, 1]])[0]))
little_ood = theory.with_ood_mass(logp, inside, 0.01)

fig, axes = plt.subplots(1, 3, figsize=(14, 3), sharey=True)
for ax, (title, lp) in zip(axes, [("trained policy", logp), ("OOD mass 99%, on one trajectory", one_ood),
                                  ("OOD mass 1%", little_ood)]):
    p = lp.exp()
    value = preference_loss(lp[chosen], lp[rejected], ref_logp[chosen], ref_logp[rejected], beta=0.1, loss="dpo")
    ax.bar(range(mdp.n_trajectories), p, color=["tab:blue" if i in (int(chosen), int(rejected)) else "0.6"
                                                for i in range(mdp.n_trajectories)])
    ax.set_title(f"{title}\nDPO loss {float(value):.6f}", fontsize=10)
    ax.set_xlabel("trajectory (row)")
axes[0].set_ylabel("probability");

# %% [markdown]
# ## 4. Tabular vs RNN, live
#
# So which optimum does training reach? With a `TabularPolicy` a gradient step changes only the
# logits at states on the chosen and rejected paths (`s1, s3, s9` and `s2, s5`); every other state
# keeps its reference distribution. The only OOD trajectories it can feed are the siblings of the
# rejected path's last step (`s1-a0-s2-a0-s5-a1/a2-s∞`), which take a share of what the rejected
# one loses: well under 1%. An RNN shares its weights, so the same step changes its predictions
# everywhere. The left plot shows, per state, how far the next-action distribution moved from the
# reference during DAA (total variation); the right one the OOD mass.
#
# *Equal SFT quality.* The tabular policy is given SFT lr 0.3 (lesson 2, section 6), so both
# policies start DAA from an SFT that fits the demonstrations (OOD mass under 0.1%); with the RNN's
# lr 1e-2 the tabular SFT would stop at about 24% OOD, and that leftover would show here as
# "OOD mass" although the DAA phase only lowers it.
#
# *How the live plot works:* the runs behind every position of the controls were computed once,
# above, in one batched call (`treemdp.plots.run_grid` groups them for `train_batch`; the progress
# bar shows it). A control only picks a precomputed result, and `treemdp.plots.live_plot` changes
# the data of the lines, bars and texts already drawn, so the picture follows the control at once.

# %%
prefixes_by_depth = [torch.zeros(1, 0, dtype=torch.long)] + [TreeMDP(3, t).trajectories() for t in (1, 2)]
pair = torch.cat([data.chosen(), data.rejected()])
path_states = {int(s) for t in range(mdp.depth) for s in mdp.prefix_states(pair[:, :t])}


def state_shift(run):
    """Total variation between policy and reference next-action distributions, per state [13]."""
    with torch.no_grad():
        p = torch.cat([run.policy.action_log_probs(x).exp() for x in prefixes_by_depth])
        r = torch.cat([run.reference.action_log_probs(x).exp() for x in prefixes_by_depth])
    return 0.5 * (p - r).abs().sum(-1)


daa_lrs, hidden_sizes = [3e-3, 1e-2, 3e-2, 1e-1], [4, 8, 32, 64]
sharing_configs = [TrainConfig(policy="rnn", hidden_size=h, daa_lr=x, daa_steps=100) for h in hidden_sizes for x in daa_lrs]
sharing_configs += [TrainConfig(policy="tabular", sft_lr=0.3, daa_lr=x, daa_steps=100) for x in daa_lrs]
sharing = {}
for c, run in zip(sharing_configs, run_grid(sharing_configs)):
    daa = run.metrics.query("phase == 'daa'")
    sharing[c.policy, c.hidden_size if c.policy == "rnn" else None, c.daa_lr] = (
        state_shift(run), daa["step"].to_numpy(), daa["ood_mass"].to_numpy(), run.summary)

kind = widgets.Dropdown(options=["rnn", "tabular"], value="rnn", description="policy")
hidden = widgets.Dropdown(options=hidden_sizes, value=32, description="hidden size")
lr = widgets.SelectionSlider(options=daa_lrs, value=1e-2, description="DAA lr")


def setup_sharing(fig):
    left, right = fig.subplots(1, 2, width_ratios=(1.6, 1))
    bars = left.bar(range(mdp.n_states), [0.0] * mdp.n_states,
                    color=["tab:red" if s in path_states else "0.6" for s in range(mdp.n_states)])
    left.set_xticks(range(mdp.n_states), [mdp.state_name(s) for s in range(mdp.n_states)], fontsize=8)
    left.set_ylabel("TV(pi(.|s), ref(.|s))")
    left.set_ylim(0, 1)
    line, = right.plot([], [], color="tab:orange")
    right.set_ylim(-0.02, 1.02)
    right.set_xlim(0, 100)
    right.set_xlabel("DAA step")
    return left, right, bars, line


def update_sharing(state):
    left, right, bars, line = state
    shift, steps, ood, summary = sharing[kind.value, hidden.value if kind.value == "rnn" else None, lr.value]
    for bar, height in zip(bars, shift.tolist()):
        bar.set_height(height)
    line.set_data(steps, ood)
    left.set_title(f"{kind.value}: change per state (red: on the preference's paths)", fontsize=10)
    right.set_title(f"OOD mass (after SFT {summary['sft_ood_mass']:.1%}, peak {summary['peak_ood_mass']:.1%})", fontsize=10)


display(live_plot(update_sharing, [kind, hidden, lr], setup=setup_sharing, figsize=(12, 3.8)))

# %% [markdown]
# ## Summary
#
# - The DAA objective depends on the policy only through Q·(log π − log ref): one number per
#   preference. With far fewer preferences than trajectories, Q has a large null space and the
#   objective is not strictly convex — many policies are optimal, some with lots of OOD mass.
# - Which optimum training reaches is decided by the parameterisation. A tabular policy only moves
#   the states on the preference's paths (at equal SFT quality its OOD mass stays under 1%); an
#   RNN's shared weights move all states, and that is how probability reaches trajectories nobody
#   showed it.
# - β rescales h: IPO's optimum is h = 1/β, SLiC saturates from h = 1/β, DPO keeps pushing with a
#   fading gradient.
#
# ## Exercises
#
# 1. Add a second preference to Q (say chosen `(2,2,2)` over `(0,0,0)`). What is the rank now? How
#    many preferences would make Q's null space trivial, and why can it never be with pairwise data
#    (hint: the all-ones vector)?
# 2. In the explorer, find settings where the tabular policy shows *any* OOD mass. Where does it
#    come from?
# 3. Using `margin_path`, compare how fast h grows for DPO at β = 0.1 and β = 1.0.

# %%
# Your experiments here.

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | `LOSSES` | the registry of g: `{"dpo": dpo_g, "ipo": ipo_g, "slic": slic_g}` |
# | Δ = log π − log ref | the per-trajectory log-ratios the loss reads |
# | Q | data matrix: one row per preference, +1 at chosen, −1 at rejected; h = Q·Δ (`theory.query_matrix`) |
# | rank / null space | directions Q sees / directions it cannot see (`theory.query_rank`, `theory.null_space`) |
# | `theory.with_ood_mass` | a null-space move: the same policy with any OOD mass, every loss unchanged |
# | `preference_h` | the margin h from the four log-probs |
# | parameter sharing | one weight affects many states (RNN); none in `TabularPolicy` |
# | total variation (TV) | ½ Σ\|p − q\|, here between next-action distributions |
