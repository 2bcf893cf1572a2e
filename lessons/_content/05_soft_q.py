# %% [markdown]
# # Lesson 5 — The soft-Q view (Appendix D)
#
# **Goal.** See a DAA-trained policy as a soft Q-function: its logits are Q-values, the value of a
# state is a soft maximum over next tokens, and every non-final Q-value *bootstraps* from the value
# of the next state — which includes continuations no data ever constrained. A small β makes the
# soft maximum a hard one: more optimism about unseen tokens.
#
# **Plan.** implicit reward → the soft Bellman backup on the tree, checked against the policy →
# the soft maximum and β → Q-values after training, live → summary → exercises → glossary.

# %%
# %matplotlib inline
import ipywidgets as widgets
import torch
from IPython.display import display

from treemdp import TreeMDP, implicit_reward, theory, trajectory_log_probs
from treemdp.plots import live_plot, run_grid
from treemdp.training import TrainConfig, train

# %% [markdown]
# ## 1. The implicit reward
#
# A DAA-trained policy defines a reward for every trajectory, r(y) = β log π(y)/ref(y), and π is the
# KL-regularised optimum for it: π(y) ∝ ref(y) exp(r(y)/β).

# %%
mdp = TreeMDP()
beta = 0.1
run = train(loss="dpo", beta=beta, daa_steps=150, progress=False)
with torch.no_grad():
    logp, ref_logp = trajectory_log_probs(run.policy), trajectory_log_probs(run.reference)
reward = implicit_reward(logp, ref_logp, beta=beta)  # [27]
names = mdp.trajectory_names()
for row in reward.argsort(descending=True)[:4].tolist():
    print(f"r = {float(reward[row]):+.3f}   {names[row]}")


# %% [markdown]
# ## 2. The soft Bellman backup on the tree
#
# Token level, in the paper's form (Appendix D, eq. 11), with V(s∞) = 0 and the sequence reward
# paid at the last token:
#
#     Q(s, a) = r(s, a) + β log ref(a|s) + V(s')     r(s, a) = r(y) if (s, a) completes y, else 0
#     V(s)    = β logsumexp_a Q(s, a)/β
#     π(a|s)  = exp((Q(s, a) − V(s))/β)
#
# `theory.soft_q_of_policy` runs it backwards, level by level, from the implicit reward (Q and V come
# back as one tensor per depth, states in BFS order). If the view is right, the recovered π(a|s)
# equals the policy's own next-action probabilities and V(s1) = 0. The same Q and V also give
# per-token rewards β log π(a|s)/ref(a|s) whose sum along every trajectory is r(y).

# %%
def prefixes(t):
    """All action prefixes of length t, lexicographic = the states at depth t in BFS order."""
    return TreeMDP(mdp.branching, t).trajectories() if t else torch.zeros(1, 0, dtype=torch.long)


view = theory.soft_q_of_policy(logp.double(), ref_logp.double(), mdp, beta)
with torch.no_grad():
    error = max(float((view.log_pi[t] - run.policy.action_log_probs(prefixes(t)).double()).abs().max())
                for t in range(mdp.depth))
print(f"V(s1) = {float(view.V[0][0]):.2e}    max |log pi recovered - log pi| = {error:.2e}")
summed = view.trajectory_sums(view.token_rewards)  # per-token rewards added up along each trajectory
print(f"max |sum of token rewards - r(y)| = {float((summed - reward.double()).abs().max()):.2e}")
view.table().head(6)

# %% [markdown]
# ## 3. The soft maximum, and what β does to it
#
# V(s) = β log Σ_a exp(Q(s, a)/β) with the reference inside Q: unrolled, it is β log of the
# reference average of exp(r/β) over every continuation of s, so it lies between the reference
# average of those rewards and their maximum. As β → 0 it becomes the best continuation's reward:
# a state is worth as much as its best continuation, whether or not any data supports that
# continuation. Below, `theory.values_over_beta` recomputes V(s3) (the state after `a1`) for the
# reward of the run above at other temperatures β.
#
# *How the live plot works:* the curve of V over β is computed once (`theory.values_over_beta`); a
# move of the slider backs the same reward up once more at the new β (`theory.soft_q`, a few
# dozen numbers), moves the marker and changes the bars' heights in place (`treemdp.plots.live_plot`).

# %%
temperature = widgets.FloatLogSlider(value=0.1, base=10, min=-3, max=1, step=0.25, description="beta")
grid = torch.logspace(-3, 1, 60).tolist()
values_s3 = theory.values_over_beta(view.reward, ref_logp.double(), mdp, grid).query("state == 's3'")


def setup_softmax(fig):
    left, right = fig.subplots(1, 2)
    left.semilogx(values_s3["beta"], values_s3["V"], label="V(s3) = soft max of its continuations")
    left.axhline(values_s3["max_r"].iloc[0], color="tab:red", ls="--", label="max r below s3")
    left.axhline(values_s3["ref_mean_r"].iloc[0], color="0.5", ls=":", label="ref-average of r below s3")
    marker = left.axvline(0.1, color="k", lw=0.8)
    left.set_xlabel("beta (temperature)")
    left.legend(fontsize=8)
    bars = right.bar(["a0", "a1", "a2"], [0.0] * 3, color="tab:purple")
    right.set_ylim(0, 1)
    right.set_title("exp((Q(s3, a) - V(s3))/beta): the policy at this beta", fontsize=10)
    return left, marker, bars


def update_softmax(state):
    left, marker, bars = state
    b = temperature.value
    at_b = theory.soft_q(view.reward, ref_logp.double(), mdp, b)  # the same reward, backed up at this beta
    for bar, height in zip(bars, at_b.log_pi[1][1].exp().tolist()):  # depth 1, row 1: state s3
        bar.set_height(height)
    marker.set_xdata([b, b])
    left.set_title(f"V(s3) at beta={b:.3g}: {float(at_b.V[1][1]):.3f}", fontsize=10)


display(live_plot(update_softmax, [temperature], setup=setup_softmax, figsize=(11, 3.5)))

# %% [markdown]
# ## 4. Q-values after training, live
#
# Now train at each β and look at the Q-values along the chosen path `s1 → s3 → s9`. At `s9` the
# Q-values are rewards (plus β log ref): the data fix r(chosen) − r(rejected) only, so the rewards of
# the two OOD leaves `…-a1-s∞` and `…-a2-s∞` are whatever the RNN made them. At `s3` and `s1` every Q
# holds a bootstrapped V (`view.bootstrap`), a soft maximum that can be pulled up by those
# unconstrained leaves.
#
# *How the live plot works:* the runs behind every position of the controls were computed once,
# above, in one batched call (`treemdp.plots.run_grid` groups them for `train_batch`; the progress
# bar shows it). A control only picks a precomputed result, and `treemdp.plots.live_plot` changes
# the data of the lines, bars and texts already drawn, so the picture follows the control at once.

# %%
q_betas = [0.01, 0.05, 0.1, 0.5, 1.0]
q_configs = [TrainConfig(loss=l, beta=b, daa_steps=150) for l in ("dpo", "ipo", "slic") for b in q_betas]


def soft_q_view(trained, b):
    """The soft-Q view of a trained run (its implicit reward at its own beta, backed up by eq. 11)."""
    with torch.no_grad():
        trained_logp = trajectory_log_probs(trained.policy).double()
        trained_ref = trajectory_log_probs(trained.reference).double()
    return theory.soft_q_of_policy(trained_logp, trained_ref, mdp, b)


q_runs = {(c.loss, c.beta): (soft_q_view(r, c.beta), r.summary) for c, r in zip(q_configs, run_grid(q_configs))}
train_loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="dpo", description="loss")
train_beta = widgets.SelectionSlider(options=q_betas, value=0.1, description="beta")
chosen_path = [(0, 0, "s1"), (1, 1, "s3"), (2, 4, "s9")]  # (depth, row at that depth, name)


def setup_q(fig):
    panels = []
    for ax, (t, row, name) in zip(fig.subplots(1, 3), chosen_path):
        bars = ax.bar(["a0", "a1", "a2"], [0.0] * 3,
                      color=["0.6", "tab:blue", "0.6"] if t < 2 else ["tab:green", "tab:orange", "tab:orange"])
        value = ax.axhline(0.0, color="k", ls="--", label=f"V({name})")
        ax.axhline(0.0, color="0.3", lw=0.6)
        ax.set_title(f"Q({name}, a)", fontsize=10)
        ax.legend(fontsize=8)
        panels.append((ax, bars, value))
    fig.suptitle(" ", fontsize=10)  # room for the title the update writes
    return panels


def update_q(panels):
    trained, summary = q_runs[train_loss.value, train_beta.value]
    for (ax, bars, value), (t, row, name) in zip(panels, chosen_path):
        q, v = trained.Q[t][row].tolist(), float(trained.V[t][row])
        for bar, height in zip(bars, q):
            bar.set_height(height)
        value.set_ydata([v, v])
        low, high = min(q + [v, 0.0]), max(q + [v, 0.0])
        pad = 0.1 * (high - low) + 1e-3
        ax.set_ylim(low - pad, high + pad)
    panels[0][0].figure.suptitle(f"{train_loss.value.upper()} beta={train_beta.value}: OOD mass "
                                 f"{summary['final_ood_mass']:.1%} (at s9: green = chosen leaf, orange = OOD leaves)",
                                 fontsize=10)


display(live_plot(update_q, [train_loss, train_beta], setup=setup_q, figsize=(12, 3.6)))

# %% [markdown]
# ## Summary
#
# - A DAA-trained policy is the soft-optimal policy of its implicit reward r = β log π/ref; on the
#   tree the soft Bellman backup recovers it exactly (V(s1) = 0, same π(a|s)).
# - Every non-final Q-value holds the value of the next state (eq. 11), a soft maximum over its
#   continuations — including OOD ones the data never priced. That is bootstrapping from unseen tokens.
# - As β → 0 the soft maximum approaches a hard max: states are valued by their best continuation,
#   an optimistic estimate that favours OOD paths.
#
# ## Exercises
#
# 1. Check numerically (`theory.values_over_beta`) that V(s) lies between the ref-average and the
#    maximum of the rewards below s at every state, for β = 0.01 and β = 1.
# 2. At `s9`, the chosen leaf's reward minus the rejected leaf's reward should relate to h. Write the
#    relation and check it with `run.summary` and `reward`.
# 3. Repeat section 2 with `run = train(policy="tabular", ...)`. Which token rewards
#    (`view.token_rewards`) stay at 0, and why?

# %%
# Your experiments here.

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | implicit reward | r(y) = β log π(y)/ref(y), `implicit_reward(logp, ref_logp, beta=)` |
# | Q(s, a) | soft action value r(s, a) + β log ref(a\|s) + V(s') (eq. 11): the reward at the last token, else the bootstrap |
# | V(s) | soft state value β logsumexp_a Q(s,a)/β (Q includes β log ref) — a soft maximum |
# | bootstrapping | using V of the next state (all its continuations, seen or not) inside Q |
# | soft maximum | β log-sum-exp; tends to max as β → 0 |
# | `theory.soft_q_of_policy` | the backward pass over the tree: Q, V, bootstrap and token rewards per depth |
# | `theory.values_over_beta` | V of every state for a fixed reward at other β, with its two limits |
