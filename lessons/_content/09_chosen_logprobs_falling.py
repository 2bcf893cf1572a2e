# %% [markdown]
# # Lesson 9 — "My chosen log-probs are falling"
#
# **Goal.** Answer the question DPO users ask most often (TRL, the DPO reference repository,
# LLaMA-Factory and OpenRLHF all have issues about it): *"during DPO the log-probability of my chosen
# answers goes down — is my training broken, and where does the probability go?"* On the tree we
# can account for every bit of it exactly, and test three explanations from the literature:
# likelihood displacement (Razin et al. 2024), the squeezing effect of a negative gradient (Ren &
# Sutherland 2025) and the soft-Q bootstrapping term (this paper, Appendix D).
#
# **Plan.** the symptom → an exact account of where the mass went, live → displacement and the
# CHES score, live → squeezing, live → the bootstrapping term, live → summary → exercises
# (one auto-checked) → glossary.

# %%
# %matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from treemdp import TreeMDP, in_distribution_mask, make_dataset, paper_dataset, theory, trajectory_log_probs
from treemdp.exercises import check_ches_score, hint
from treemdp.phenomena import displacement, squeezing
from treemdp.phenomena.explain import explain_result, format_table
from treemdp.plots import BUCKET_COLORS, OOD_COLORS, ROLE_COLORS, live_plot, run_grid
from treemdp.training import TrainConfig, train

# %% [markdown]
# ## 1. The symptom
#
# DPO at the settings of the paper-style figures (GRU, Adam, DAA learning rate 3e-2), β = 0.1. The
# loss only asks for the *margin* h = log π(y_w)/ref(y_w) − log π(y_l)/ref(y_l) to grow; nothing in
# it keeps log π(y_w) itself up.

# %%
mdp, data = TreeMDP(), paper_dataset()
run = train(loss="dpo", beta=0.1, daa_lr=3e-2, daa_steps=150, progress=False)
daa = run.metrics.query("phase == 'daa'")
chosen_prob = daa["chosen_prob"].to_numpy()
dips = np.maximum.accumulate(chosen_prob) - chosen_prob  # how far below its best so far, at each step
deepest = int(dips.argmax())
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))  # each answer on its own axis
left.plot(daa["step"], chosen_prob, color=ROLE_COLORS["chosen"])
left.plot(daa["step"].iloc[deepest], chosen_prob[deepest], "v", color="k", ms=8)
left.set(xlabel="DAA step", ylabel="π(chosen)", ylim=(0, 1.02),
         title=f"π(chosen): {chosen_prob[0]:.0%} at the start, falls to {chosen_prob[deepest]:.0%} at step "
               f"{daa['step'].iloc[deepest]}\n({dips[deepest]:.0%} below its best so far), {chosen_prob[-1]:.1%} at the end")
left.title.set_fontsize(9)
right.plot(daa["step"], np.log(daa["rejected_prob"]), color=ROLE_COLORS["rejected"])
right.set(xlabel="DAA step", ylabel="log π(rejected)", title="the rejected answer, pushed down")
right.title.set_fontsize(9);

# %% [markdown]
# ## 2. Where did it go? An exact account, live
#
# Probability sums to one, so what the chosen answer loses between DAA step 0 and step t, the other
# trajectories gain, to the last digit. `explain_result(run)` (the library behind
# `treemdp explain RUN`) splits the gain into the rejected answer, the rest of the data, and the OOD
# trajectories by how many leading tokens they share with the chosen answer. The table is the run
# above; the explorer below shows the account of any loss, β and seed (left: every group's mass,
# stacked; right: what the chosen answer lost and who gained it).
#
# *How the live plot works:* the runs behind every position of the controls were computed once,
# above, in one batched call (`treemdp.plots.run_grid` groups them for `train_batch`; the progress
# bar shows it), and each run's account with `explain_result`. A control only picks a precomputed
# result, and `treemdp.plots.live_plot` changes the data of the areas and lines already drawn, so the
# picture follows the control at once.

# %%
print(format_table(explain_result(run)))

account_losses, account_betas, account_seeds = ["dpo", "ipo", "slic"], [0.01, 0.1, 0.5], list(range(10))
account_configs = [TrainConfig(loss=l, beta=b, seed=s, daa_lr=3e-2, daa_steps=150)
                   for l in account_losses for b in account_betas for s in account_seeds]
accounts = {(c.loss, c.beta, c.seed): explain_result(r) for c, r in zip(account_configs, run_grid(account_configs))}
account_loss = widgets.Dropdown(options=account_losses, value="dpo", description="loss")
account_beta = widgets.SelectionSlider(options=account_betas, value=0.1, description="beta")
account_seed = widgets.IntSlider(value=0, min=0, max=9, description="seed")

groups = accounts["dpo", 0.1, 0].groups  # the same groups in every run: chosen, rejected, other data, OOD by shared prefix
ood_colors = iter(OOD_COLORS)
group_colors = [BUCKET_COLORS.get(column) or next(ood_colors) for column in groups.columns]


def setup_account(fig):
    left, right = fig.subplots(1, 2)
    steps = accounts["dpo", 0.1, 0].table["step"].to_numpy()
    areas = [left.fill_between(steps, 0.0, 0.0, color=color, lw=0) for color in group_colors]
    changes = [right.plot(steps, np.zeros(len(steps)), color=color, lw=2.2 if j == 0 else 1.6,
                          label="chosen (change)" if j == 0 else label)[0]
               for j, (color, label) in enumerate(zip(group_colors, groups.labels))]
    right.axhline(0, color="0.5", lw=0.8)
    for ax in (left, right):
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(steps[0], steps[-1])
        ax.set_xlabel("DAA step (log)")
        ax.grid(alpha=0.3)
    left.set_ylim(0, 1)
    left.set_ylabel("probability mass")
    left.set_title("where the mass is (stacked, colours as on the right)", fontsize=10)
    right.set_ylabel("change since DAA step 0")
    right.set_title("what the chosen lost, and who gained it", fontsize=10)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the panel, off the curves
    fig.suptitle(" ", fontsize=10)  # room for the title the update writes
    return fig, right, areas, changes


def update_account(state):
    fig, right, areas, changes = state
    explanation = accounts[account_loss.value, account_beta.value, account_seed.value]
    table = explanation.table
    steps, masses = table["step"].to_numpy(), explanation.masses.numpy()  # [S], [S, groups]
    tops = masses.cumsum(1)
    for area, low, high in zip(areas, (tops - masses).T, tops.T):
        area.set_verts([np.column_stack([np.r_[steps, steps[::-1]], np.r_[high, low[::-1]]])])
    moves = np.column_stack([table["change"]] + [table[f"gain: {label}"] for label in groups.labels[1:]])
    for line, y in zip(changes, moves.T):
        line.set_data(steps, y)
    pad = 0.05 * (moves.max() - moves.min()) + 1e-3
    right.set_ylim(moves.min() - pad, moves.max() + pad)
    chosen = table["chosen"].to_numpy()
    dip = np.maximum.accumulate(chosen) - chosen  # how far below its best so far
    k = int(dip.argmax())
    fig.suptitle(f"{account_loss.value.upper()} beta={account_beta.value} seed={account_seed.value}: π(chosen) "
                 f"{chosen[0]:.1%} at the start, {chosen[-1]:.1%} at the end; deepest dip {dip[k]:.1%} "
                 f"below its best so far (step {steps[k]})", fontsize=10)


display(live_plot(update_account, [account_loss, account_beta, account_seed], setup=setup_account, figsize=(13.5, 4.2)))

# %% [markdown]
# When the chosen answer dips, where does its mass go? Over the 90 runs behind the explorer, the
# cell below takes each run's deepest dip (more than one percentage point below its best so far)
# and names the group that gained most between that best and the dip.

# %%
DIP = 0.01  # a dip: at least one percentage point below the best so far


def dip_gainer(explanation):
    """(depth of the deepest dip, the group that gained most from the best so far to that dip)."""
    table = explanation.table
    chosen = table["chosen"].to_numpy()
    dip = np.maximum.accumulate(chosen) - chosen
    k = int(dip.argmax())
    best = int(chosen[:k + 1].argmax())
    gains = {label: table[f"gain: {label}"].iloc[k] - table[f"gain: {label}"].iloc[best] for label in groups.labels[1:]}
    return float(dip[k]), max(gains, key=gains.get)


dipping = [gainer for depth, gainer in map(dip_gainer, accounts.values()) if depth > DIP]
gainers = {label: dipping.count(label) for label in groups.labels[1:] if label in dipping}
print(f"{len(dipping)} of {len(accounts)} runs dip; at the deepest dip the largest gainer is")
for label, count in sorted(gainers.items(), key=lambda item: -item[1]):
    print(f"  {label}: {count} of {len(dipping)} runs")

# %% [markdown]
# In most runs that dip (the counts above) the mass goes to **OOD trajectories that share the chosen
# answer's first two tokens** (`s1-a1-s3-a1-s9-a1` and `…-a2`): siblings of the chosen leaf that no
# data mentions; in the rest, to OOD trajectories that share fewer tokens, to the other data or to
# the rejected answer.
#
# ## 3. Likelihood displacement and the CHES score
#
# Razin et al. predict which pairs displace the chosen answer from the model's hidden states: with
# h(y_<k) the state the head reads before the k-th token,
#
#     CHES(y+, y−) = ⟨Σ_k h(y+_<k), Σ_k h(y−_<k)⟩ − ‖Σ_k h(y+_<k)‖²
#
# High CHES (the two answers look alike inside the model) predicts a larger fall of log π(y+). Below,
# CHES of every ordered pair of the three demonstrations under the SFT policy; then pick a pair and
# β and watch log π(y+) during DPO on that pair alone.
#
# *How the live plot works:* the DPO runs on every pair at every β were computed once, above (one
# `treemdp.plots.run_grid` call per pair: the three β share a batch); a control only picks one, and
# `treemdp.plots.live_plot` changes the data of the lines already drawn.

# %%
demos = data.demonstrations.tolist()
names = {i: mdp.trajectory_name(d) for i, d in enumerate(demos)}
pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
rows = mdp.trajectory_index(demos)
scores = displacement.ches(run.reference, rows[[i for i, _ in pairs]], rows[[j for _, j in pairs]])
for (i, j), score in zip(pairs, scores):
    print(f"CHES = {float(score):8.3f}   chosen {names[i]}  over  {names[j]}")

pair_betas = [0.01, 0.1, 0.5]
pair_runs = {}  # ((i, j), beta) -> (DAA steps, log π(y+), log π(y−), CHES under that run's reference)
for i, j in pairs:
    pair_data = make_dataset(mdp, demos, [{"chosen": demos[i], "rejected": demos[j]}])
    pair_configs = [TrainConfig(loss="dpo", beta=b, daa_lr=3e-2, daa_steps=150) for b in pair_betas]
    for b, trained in zip(pair_betas, run_grid(pair_configs, pair_data, desc=f"DPO on {names[i]} over {names[j]}")):
        steps = trained.metrics.query("phase == 'daa'")
        pair_runs[(i, j), b] = (steps["step"].to_numpy(), np.log(steps["chosen_prob"].to_numpy()),
                                np.log(steps["rejected_prob"].to_numpy()),
                                float(displacement.ches(trained.reference, rows[[i]], rows[[j]])[0]))

# open on the (pair, beta) whose chosen answer falls furthest below its start: a pair that displaces
displacing, displacing_beta = min(pair_runs, key=lambda key: (pair_runs[key][1] - pair_runs[key][1][0]).min())
pair_choice = widgets.Dropdown(options=[(f"{names[i]} over {names[j]}", (i, j)) for i, j in pairs],
                               value=displacing, description="pair")
pair_beta = widgets.SelectionSlider(options=pair_betas, value=displacing_beta, description="beta")
falls = sum((pair_runs[key][1] - pair_runs[key][1][0]).min() < -0.01 for key in pair_runs)
print(f"log π(y+) falls more than 0.01 below its start in {falls} of the {len(pair_runs)} (pair, beta) runs")


def setup_pair(fig):
    left, right = fig.subplots(1, 2)
    plus, = left.plot([], [], color=ROLE_COLORS["chosen"])
    left.axhline(0, color="0.5", lw=0.8)
    left.set_ylabel("log π(y+) − log π(y+) at DAA step 0")
    minus, = right.plot([], [], color=ROLE_COLORS["rejected"])
    right.set_ylabel("log π(y−)")
    right.set_title("the rejected answer (what the loss pushes down)", fontsize=10)
    for ax in (left, right):
        ax.set_xlim(0, 150)
        ax.set_xlabel("DAA step")
    return left, right, plus, minus


def update_pair(state):
    left, right, plus, minus = state
    steps, chosen_logp, rejected_logp, score = pair_runs[pair_choice.value, pair_beta.value]
    change = chosen_logp - chosen_logp[0]
    plus.set_data(steps, change)
    minus.set_data(steps, rejected_logp)
    pad = 0.05 * (change.max() - change.min()) + 0.01
    left.set_ylim(min(change.min(), 0.0) - pad, max(change.max(), 0.0) + pad)
    right.set_ylim(rejected_logp.min() - 1.0, max(rejected_logp.max(), 0.0) + 1.0)
    left.set_title(f"the chosen answer: CHES {score:.2f}, lowest change {change.min():+.2f}", fontsize=10)


display(live_plot(update_pair, [pair_choice, pair_beta], setup=setup_pair, figsize=(11, 3.6)))

# %% [markdown]
# `figures/phen_displacement.png` runs this on every pair of 8 random demonstrations in a 3×4 tree
# over 5 seeds: CHES rank-correlates with the fall in 5 of the 5 seeds (Spearman ρ −0.22 to
# −0.61), but the length of the prefix the two answers share predicts it as well or better
# (`figures/README.md` has the numbers).
#
# ## 4. Squeezing: where a negative gradient sends the mass
#
# DPO pushes log π(y_l) down. For a softmax, one gradient step of size η on log π(ȳ) changes every
# other log-probability by η (π_k − Σπ² + π(ȳ)) to first order: answer k gains only if π_k exceeds
# Σπ² − π(ȳ). With a peaked π and a small π(ȳ) only the argmax gains; everything else is squeezed.
# Below, a softmax over 30 answers (fixed random logits divided by a temperature: low temperature,
# peaked π), one exact step; the dashed line is the threshold.
#
# *How the live plot works:* a move recomputes the step exactly (`squeezing.negative_step`, 30
# numbers: nothing to precompute) and `treemdp.plots.live_plot` changes the heights of the bars
# already drawn.

# %%
squeeze_logits = torch.randn(30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
squeeze_temperature = widgets.FloatLogSlider(value=1.0, base=10, min=-0.5, max=0.7, step=0.1, description="temperature")
squeeze_rank = widgets.IntSlider(value=25, min=0, max=29, description="ȳ rank")  # 0 = the most likely answer


def setup_squeeze(fig):
    ax = fig.subplots()
    x = np.arange(30)
    before = ax.bar(x - 0.2, np.zeros(30), width=0.4, label="before")
    after = ax.bar(x + 0.2, np.zeros(30), width=0.4, label="after one negative step")
    threshold = ax.axhline(0.0, color="k", ls="--", lw=1, label="Σπ² − π(ȳ): above it, an answer gains")
    ax.set_xlim(-0.8, 29.8)
    ax.set_xlabel("answers, most likely first")
    ax.set_ylabel("probability")
    ax.legend(fontsize=8, loc="upper right")
    return ax, before, after, threshold


def update_squeeze(state):
    ax, before_bars, after_bars, threshold = state
    logits = squeeze_logits / squeeze_temperature.value
    order = torch.argsort(logits, descending=True)
    negative = int(order[squeeze_rank.value])
    before = torch.softmax(logits, 0)
    after = squeezing.negative_step(logits, negative, 0.5).exp()
    for bars, probs in ((before_bars, before), (after_bars, after)):
        for bar, height in zip(bars, probs[order].tolist()):
            bar.set_height(height)
    level = float(squeezing.gain_threshold(before, negative))
    threshold.set_ydata([level, level])
    ax.set_ylim(min(0.0, 1.1 * level), 1.1 * max(float(before.max()), float(after.max()), level))
    top = int(order[1]) if squeeze_rank.value == 0 else int(order[0])  # the most likely answer other than ȳ
    others = torch.ones(30, dtype=torch.bool)
    others[[top, negative]] = False
    squeezed = int((after < before)[others].sum())
    lost, gained = float((before - after)[negative]), float((after - before)[top])
    ax.set_title(f"ȳ = answer ranked {squeeze_rank.value} loses {lost:.3f}; the most likely other answer "
                 f"{'gains' if gained >= 0 else 'loses'} {abs(gained):.3f}; {squeezed} of the other 28 answers "
                 f"lose too", fontsize=10)


display(live_plot(update_squeeze, [squeeze_temperature, squeeze_rank], setup=setup_squeeze, figsize=(10, 3.6)))

# %% [markdown]
# On the tree the argmax just before an OOD trajectory takes off is the *chosen* trajectory in 36 of
# the 36 paper runs whose top OOD trajectory passes 5% (`figures/phen_squeezing.png`, numbers in
# `figures/README.md`): squeezing explains why the chosen answer keeps most of the mass, not which
# OOD trajectory wins.
#
# ## 5. The bootstrapping term
#
# In the soft-Q view (lesson 5) Q(s, a) = r(s, a) + β log ref(a|s) + V(s'), and V(s') is a soft maximum
# over *every* continuation of s', seen or not. `theory.ood_bootstrap_share` measures how much of each
# V comes from OOD leaves. Below, the implicit reward of the run of section 1 backed up at another
# β: small β turns the soft maximum into a hard one and hands V to the best (OOD) continuation.
#
# *How the live plot works:* a move backs the fixed reward up once at the new β (`theory.soft_q`
# over 27 trajectories: nothing to precompute) and `treemdp.plots.live_plot` changes the heights of
# the bars already drawn.

# %%
with torch.no_grad():
    logp, ref_logp = trajectory_log_probs(run.policy).double(), trajectory_log_probs(run.reference).double()
reward = theory.soft_q_of_policy(logp, ref_logp, mdp, 0.1).reward
inside = in_distribution_mask(mdp, data)
backup_beta = widgets.FloatLogSlider(value=0.1, base=10, min=-3, max=1, step=0.25, description="beta")
chosen_path = [(0, 0, "s1"), (1, 1, "s3"), (2, 4, "s9")]  # (depth, row at that depth, name)


def setup_bootstrap(fig):
    left, right = fig.subplots(1, 2)
    labels = [name for _, _, name in chosen_path]
    values = left.bar(labels, [0.0] * 3, color=ROLE_COLORS["chosen"])
    left.axhline(0, color="0.3", lw=0.6)
    left.set_ylabel("V(s)")
    shares = right.bar(labels, [0.0] * 3, color=OOD_COLORS[2])
    right.set_ylim(0, 1)
    right.set_title("share of V carried by OOD continuations", fontsize=10)
    return left, values, shares


def update_bootstrap(state):
    left, values, shares = state
    view = theory.soft_q(reward, ref_logp, mdp, backup_beta.value)
    share = theory.ood_bootstrap_share(view, inside)
    heights = [float(view.V[t][j]) for t, j, _ in chosen_path]
    for bar, height in zip(values, heights):
        bar.set_height(height)
    for bar, (t, j, _) in zip(shares, chosen_path):
        bar.set_height(float(share[t][j]))
    low, high = min(heights + [0.0]), max(heights + [0.0])
    pad = 0.1 * (high - low) + 1e-3
    left.set_ylim(low - pad, high + pad)
    left.set_title(f"V on the chosen path, backup at beta={backup_beta.value:.3g}", fontsize=10)


display(live_plot(update_bootstrap, [backup_beta], setup=setup_bootstrap, figsize=(10, 3.4)))

# %% [markdown]
# ## Summary
#
# - A falling log π(chosen) is not by itself a bug: the DAA losses constrain margins, not
#   likelihoods. Probability sums to one, so the fall is always someone's gain, and
#   `treemdp explain RUN` says whose, exactly.
# - On the paper's tree the chosen answer's losses go mostly to OOD siblings of the chosen leaf
#   (section 2 counts the runs), the continuations the soft-Q view says are bootstrapped from.
# - CHES (Razin et al.) flags pairs that displace, but on the tree the plain shared-prefix length does
#   as well; their single-token displacement needs the unembeddings to dominate the hidden state.
# - Squeezing (Ren & Sutherland) holds for a softmax and for a GRU under a pure negative gradient, and
#   explains why the argmax (here: the chosen answer) keeps gaining, not which OOD answer wins.
#
# ## Exercises
#
# 1. **(auto-checked)** Write `ches_score(h_chosen, h_rejected)` below from the definition in section 3.
#    `hint("l9.ches_score")` helps; run the check cell after it.
# 2. In section 3, which pair has the highest CHES? Does it displace most at every β?
# 3. In section 2, find a (loss, β, seed) where the chosen answer ends *below* where it started.
#    Which group holds its mass at the end?

# %%
def ches_score(h_chosen, h_rejected):
    """CHES of one preference pair (Razin et al. 2024, Definition 2).

    Args:
        h_chosen: Tensor [K+, H], the hidden state before each token of the chosen answer.
        h_rejected: Tensor [K-, H], the same for the rejected answer.

    Returns:
        one number: <sum_k h+, sum_k h-> - ||sum_k h+||^2.
    """
    # YOUR CODE HERE
    raise NotImplementedError


# %%
check_ches_score(ches_score)

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | likelihood displacement | the chosen answer's probability falls while the margin grows (Razin et al. 2024) |
# | CHES | ⟨Σh+, Σh−⟩ − ‖Σh+‖², `displacement.ches(policy, chosen, rejected)`; normalised: means |
# | squeezing | a negative gradient on ȳ sends the freed mass to the argmax (Ren & Sutherland 2025) |
# | Σπ² − π(ȳ) | the first-order threshold: an answer gains from the step only above it |
# | `explain_result`, `treemdp explain` | the exact account of where the chosen probability went |
# | OOD sharing k tokens | OOD trajectories whose first k actions are the chosen answer's |
# | bootstrapping term | V(s') inside Q(s, a), eq. 11; `theory.ood_bootstrap_share` splits it |
# | `run_grid(configs, dataset)` | many runs as one batched computation, behind the live controls |
