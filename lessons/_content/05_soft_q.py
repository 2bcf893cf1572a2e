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

from treemdp import TreeMDP, implicit_reward, trajectory_log_probs
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
# Token level, with V(s∞) = 0:
#
#     Q(s, a) = r(y)          if a is the last token (s, a completes y)
#     Q(s, a) = V(s')         otherwise, s' the next state (the bootstrap)
#     V(s)    = β log Σ_a ref(a|s) exp(Q(s, a)/β)
#     π(a|s)  = ref(a|s) exp((Q(s, a) − V(s))/β)
#
# The function below runs it backwards, level by level, from the implicit reward. If the view is
# right, the recovered π(a|s) equals the policy's own next-action probabilities and V(s1) = 0.

# %%
def prefixes(t):
    """All action prefixes of length t, lexicographic = the states at depth t in BFS order."""
    return TreeMDP(mdp.branching, t).trajectories() if t else torch.zeros(1, 0, dtype=torch.long)


def soft_backup(run, beta):
    """Q [b**t, b] and V [b**t] at every depth t from r(y) = beta log(pi/ref), and ref's log-probs."""
    with torch.no_grad():
        r = implicit_reward(trajectory_log_probs(run.policy), trajectory_log_probs(run.reference), beta=beta)
        ref_step = [run.reference.action_log_probs(prefixes(t)) for t in range(mdp.depth)]
    Q, V = [None] * mdp.depth, [None] * mdp.depth
    q = r.reshape(-1, mdp.branching)  # last level: Q is the reward, [b**(depth-1), b]
    for t in reversed(range(mdp.depth)):
        Q[t] = q
        V[t] = beta * torch.logsumexp(ref_step[t] + q / beta, dim=-1)  # [b**t]: a soft max over tokens
        if t:
            q = V[t].reshape(-1, mdp.branching)  # bootstrap: a parent's Q is its child's V
    return Q, V, ref_step


Q, V, ref_step = soft_backup(run, beta)
with torch.no_grad():
    error = max(float((ref_step[t] + (Q[t] - V[t][:, None]) / beta
                       - run.policy.action_log_probs(prefixes(t))).abs().max()) for t in range(mdp.depth))
print(f"V(s1) = {float(V[0][0]):.2e}    max |log pi recovered - log pi| = {error:.2e}")

# %% [markdown]
# ## 3. The soft maximum, and what β does to it
#
# V(s) = β log Σ_a ref(a|s) exp(Q(s, a)/β) lies between the reference average of Q and its maximum.
# As β → 0 it becomes max_a Q(s, a): a state is worth as much as its best continuation, whether
# or not any data supports that continuation. Below, the Q-values at `s3` (after `a1`) from the run
# above, and V as the temperature β varies.
#
# *How the live plot works:* the curve of V over β is computed once; a move of the slider only
# moves the marker and changes the bars' heights in place (`treemdp.plots.live_plot`).

# %%
q_s3, ref_s3 = Q[1][1], ref_step[1][1].exp()  # state s3 = prefix (a1,), row 1 of depth 1
temperature = widgets.FloatLogSlider(value=0.1, base=10, min=-3, max=1, step=0.25, description="beta")


def soft_value(q, ref, b):
    return b * torch.logsumexp(ref.log() + q / b, dim=-1)


betas_grid = torch.logspace(-3, 1, 200)
values = torch.stack([soft_value(q_s3, ref_s3, float(x)) for x in betas_grid])


def setup_softmax(fig):
    left, right = fig.subplots(1, 2)
    left.semilogx(betas_grid, values, label="V = soft max of Q")
    left.axhline(float(q_s3.max()), color="tab:red", ls="--", label="max Q")
    left.axhline(float((ref_s3 * q_s3).sum()), color="0.5", ls=":", label="ref-average of Q")
    marker = left.axvline(0.1, color="k", lw=0.8)
    left.set_xlabel("beta (temperature)")
    left.legend(fontsize=8)
    bars = right.bar(["a0", "a1", "a2"], [0.0] * 3, color="tab:purple")
    right.set_ylim(0, 1)
    right.set_title("ref(a|s3) exp((Q - V)/beta): the policy these Q-values give", fontsize=10)
    return left, marker, bars


def update_softmax(state):
    left, marker, bars = state
    b = temperature.value
    v = soft_value(q_s3, ref_s3, b)
    for bar, height in zip(bars, (ref_s3 * torch.exp((q_s3 - v) / b)).tolist()):
        bar.set_height(height)
    marker.set_xdata([b, b])
    left.set_title(f"V(s3) at beta={b:.3g}: {float(v):.3f}", fontsize=10)


display(live_plot(update_softmax, [temperature], setup=setup_softmax, figsize=(11, 3.5)))

# %% [markdown]
# ## 4. Q-values after training, live
#
# Now train at each β and look at the Q-values along the chosen path `s1 → s3 → s9`. At `s9` the
# Q-values are rewards: the data fix r(chosen) − r(rejected) only, so the rewards of the two OOD
# leaves `…-a1-s∞` and `…-a2-s∞` are whatever the RNN made them. At `s3` and `s1` every Q is a
# bootstrapped V, a soft maximum that can be pulled up by those unconstrained leaves.
#
# *How the live plot works:* the runs behind every position of the controls were computed once,
# above, in one batched call (`treemdp.plots.run_grid` groups them for `train_batch`; the progress
# bar shows it). A control only picks a precomputed result, and `treemdp.plots.live_plot` changes
# the data of the lines, bars and texts already drawn, so the picture follows the control at once.

# %%
q_betas = [0.01, 0.05, 0.1, 0.5, 1.0]
q_configs = [TrainConfig(loss=l, beta=b, daa_steps=150) for l in ("dpo", "ipo", "slic") for b in q_betas]
q_runs = {(c.loss, c.beta): (soft_backup(r, c.beta), r.summary) for c, r in zip(q_configs, run_grid(q_configs))}
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
    (Q_t, V_t, _), summary = q_runs[train_loss.value, train_beta.value]
    for (ax, bars, value), (t, row, name) in zip(panels, chosen_path):
        q, v = Q_t[t][row].tolist(), float(V_t[t][row])
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
# - Every non-final Q-value is the value of the next state, a soft maximum over its continuations —
#   including OOD ones the data never priced. That is bootstrapping from unseen tokens.
# - As β → 0 the soft maximum approaches a hard max: states are valued by their best continuation,
#   an optimistic estimate that favours OOD paths.
#
# ## Exercises
#
# 1. Check numerically that V(s) lies between the ref-average and the maximum of Q(s, ·) at every
#    state, for β = 0.01 and β = 1.
# 2. At `s9`, the chosen leaf's reward minus the rejected leaf's reward should relate to h. Write the
#    relation and check it with `run.summary` and `reward`.
# 3. Repeat section 2 with `run = train(policy="tabular", ...)`. Which Q-values stay at 0, and why?

# %%
# Your experiments here.

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | implicit reward | r(y) = β log π(y)/ref(y), `implicit_reward(logp, ref_logp, beta=)` |
# | Q(s, a) | soft action value: the reward at the last token, else the next state's V |
# | V(s) | soft state value β log Σ ref(a\|s) exp(Q(s,a)/β) — a soft maximum |
# | bootstrapping | using V of the next state (all its continuations, seen or not) inside Q |
# | soft maximum | β log-sum-exp; tends to max as β → 0 |
# | `soft_backup` | this lesson's backward pass over the tree (not a library function) |
