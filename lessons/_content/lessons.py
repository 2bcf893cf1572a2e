"""The six lessons, as cell lists: ("md", text) or ("code", text). Built by ``lessons/_build.py``."""

from common import SETUP, WIDGET_NOTE

# ------------------------------------------------------------------------------------------------
LESSON_1 = [
("md", """
# Lesson 1 — The token tree

**Goal.** Meet the toy world of Rafailov et al. (2024, Appendix E): a tree in which a *state* is a
prefix of tokens, an *action* is the next token and a *trajectory* is a whole "sentence". By the
end you can name every state and trajectory, compute the exact probability a policy gives each
trajectory, and watch samples drawn through the Gymnasium environment converge to it.

**Plan.** the tree → its trajectories → the environment → a policy → exact enumeration →
sampling, live → summary → exercises → glossary.
"""),
("code", SETUP + """
import gymnasium

from treemdp import RNNPolicy, TreeMDP, trajectory_log_probs
from treemdp.env import render_tree, rollout
"""),
("md", """
## 1. The tree

One start state `s1`; action `a_k` moves to the k-th child; after three actions every path ends in
the absorbing terminal state `s∞`. States are numbered breadth first, like the paper's figure 6:
`s1`; `s2 s3 s4`; `s5 … s13`. The star marks the path of the actions `(a1, a1, a0)`.
"""),
("code", """
mdp = TreeMDP()  # the paper's tree: branching 3, depth 3
print(mdp, "|", mdp.n_states, "states plus s∞ |", mdp.n_trajectories, "trajectories")
print(render_tree(mdp, actions=(1, 1, 0)))
"""),
("md", """
The whole dynamics is one lookup table, `mdp.next_state` (row: state, column: action). The
environment steps through it and the exact enumeration walks it, so the two cannot disagree.
Rows 4–12 (the depth-2 states) all lead to the terminal state, index 13.
"""),
("code", """
mdp.next_state
"""),
("md", """
## 2. Trajectories

A trajectory is a sequence of `depth` actions. `mdp.trajectories()` lists all 27 in
lexicographic order (first action slowest), and `trajectory_name` writes them in the paper's
notation.
"""),
("code", """
trajectories = mdp.trajectories()  # LongTensor [27, 3]
names = mdp.trajectory_names()
labels = ["".join(str(a) for a in row) for row in trajectories.tolist()]  # short: "110" = (a1, a1, a0)
for row in (0, 12, 26):
    print(row, trajectories[row].tolist(), names[row])
"""),
("md", """
## 3. The Gymnasium environment

`treemdp/TreeMDP-v0` is registered when `treemdp` is imported. Observations are state indices
(`s1` → 0), actions are tokens, and an episode terminates after `depth` actions.
"""),
("code", """
env = gymnasium.make("treemdp/TreeMDP-v0", render_mode="ansi")
observation, info = env.reset(seed=0)
for action in (1, 1, 0):
    observation, reward, terminated, truncated, info = env.step(action)
    print(f"a{action} -> {mdp.state_name(observation)}   terminated={terminated}")
print(env.render())
"""),
("md", """
## 4. A policy

A policy gives, after any prefix, a distribution over the next action. `RNNPolicy` reads the prefix
token by token like a small language model (a GRU by default). The empty prefix is the start
state `s1`.
"""),
("code", """
policy = RNNPolicy(mdp, hidden_size=32, seed=0)  # an untrained policy
start = torch.zeros(1, 0, dtype=torch.long)      # prefix of length 0: the state s1
with torch.no_grad():
    print("pi(. | s1)      =", policy.action_log_probs(start).exp())
    print("pi(. | a1, a1)  =", policy.action_log_probs(torch.tensor([[1, 1]])).exp())
"""),
("md", """
## 5. Exact enumeration

A trajectory's probability is the product of its next-action probabilities (the chain rule).
`trajectory_log_probs` computes all 27 at once in log space, evaluating each tree node once.
Nothing is sampled: the probabilities are exact and sum to one.
"""),
("code", """
with torch.no_grad():
    logp = trajectory_log_probs(policy)  # [27], in trajectories() order
probs = logp.exp()
print("sum of probabilities:", float(probs.sum()))
fig, ax = plt.subplots(figsize=(10, 3))
ax.bar(range(mdp.n_trajectories), probs)
ax.set_xticks(range(mdp.n_trajectories), labels, rotation=90, fontsize=8)
ax.set_xlabel("trajectory (actions)")
ax.set_ylabel("exact probability");
"""),
("md", """
## 6. Sampling through the environment, live

`rollout` plays the policy in the environment and records the trajectories it reaches. It shares
no code with the enumeration (it asks the policy one prefix at a time), so agreement between the
two is a real check. Move the sliders: with more episodes the sampled histogram converges to
the exact one and the total variation distance shrinks (roughly like 1/√episodes).
""" + WIDGET_NOTE),
("code", """
episodes = widgets.SelectionSlider(options=[10, 30, 100, 300, 1000, 3000], value=100, description="episodes")
seed = widgets.IntSlider(value=0, min=0, max=9, description="seed")


def draw_sampling(fig):
    samples = rollout(env, policy, seed=seed.value, episodes=episodes.value)  # int array [episodes, 3]
    counts = torch.bincount(mdp.trajectory_index(samples.tolist()), minlength=mdp.n_trajectories)
    sampled = counts / counts.sum()
    distance = 0.5 * float((sampled - probs).abs().sum())
    ax = fig.subplots()
    x = torch.arange(mdp.n_trajectories)
    ax.bar(x - 0.2, probs, width=0.4, label="exact (enumeration)")
    ax.bar(x + 0.2, sampled, width=0.4, label=f"sampled ({episodes.value} episodes, seed {seed.value})")
    ax.set_xticks(x, labels, rotation=90, fontsize=8)
    ax.set_ylabel("probability")
    ax.set_title(f"total variation distance {distance:.3f}")
    ax.legend(fontsize=8)


display(live_plot(draw_sampling, [episodes, seed], figsize=(10, 3.6)))
"""),
("md", """
## Summary

- A state is a prefix of actions; a trajectory is a full sequence of `depth` actions; the paper's
  tree has 13 states (plus `s∞`) and 27 trajectories.
- One table (`mdp.next_state`) defines the dynamics for both the environment and the enumeration.
- `trajectory_log_probs(policy)` gives the exact probability of every trajectory; sampling through
  the environment only estimates it, with an error that shrinks like 1/√episodes.
- Because we can enumerate, every later lesson measures out-of-distribution mass exactly.

## Exercises

1. Which row of `mdp.trajectories()` is `s1-a2-s4-a0-s11-a1-s∞`? Check with `mdp.trajectory_name`.
2. Compute log π(a1, a1, a0) yourself with three calls of `policy.action_log_probs` (chain rule)
   and compare with `logp[12]`. (Assignment a2 grades this.)
3. Build `TreeMDP(branching=2, depth=4)`. How many states and trajectories? Draw it with `render_tree`.
4. For 10 seeds, plot the total variation distance against the number of episodes on log-log
   axes. What slope do you see?
"""),
("code", """
# Your experiments here.
"""),
("md", """
## Glossary

| name | meaning |
|---|---|
| `TreeMDP(branching, depth)` | the tree; `.next_state` transition table, `.trajectories()`, `.trajectory_name()` |
| state `s_i` | a node = a prefix of actions; `s1` the start, `s∞` the terminal state |
| trajectory | a full action sequence, like a sentence of `depth` tokens |
| `RNNPolicy` | a recurrent policy over action tokens; `.action_log_probs(prefixes)` → [N, branching] |
| `trajectory_log_probs(policy)` | exact log-probabilities of all trajectories, [branching**depth] |
| `treemdp/TreeMDP-v0` | the Gymnasium environment; `rollout(env, policy, seed=, episodes=)` samples it |
| total variation distance | ½ Σ \\|p̂ − p\\|: how far the sampled histogram is from the exact one |
"""),
]

# ------------------------------------------------------------------------------------------------
LESSON_2 = [
("md", """
# Lesson 2 — Behaviour cloning (SFT) on three demonstrations

**Goal.** Train a policy to imitate the paper's three demonstrations and look at what it does *off*
the data: at states no demonstration visits, and on the 24 trajectories nobody showed it. That
policy becomes the *reference* of every direct alignment run in the next lessons.

**Plan.** the data → one SFT run → the loss at its optimum → next-action distributions at every
state → RNN vs tabular, live → summary → exercises → glossary.
"""),
("code", SETUP + """
import math

from treemdp import TreeMDP, paper_dataset
from treemdp.plots import plot_trajectories
from treemdp.training import train
"""),
("md", """
## 1. The data

Appendix E gives three demonstrations (and one preference, used from lesson 3 on).
"""),
("code", """
mdp = TreeMDP()
data = paper_dataset()
for row in data.demonstrations.tolist():
    print(row, mdp.trajectory_name(row))
"""),
("md", """
## 2. One SFT run

`train(daa_steps=0)` runs only the supervised phase: full-batch Adam on the mean negative
log-likelihood of the demonstrations, with every trajectory's probability enumerated exactly at
every step.
"""),
("code", """
sft = train(daa_steps=0, progress=False)
print(f"OOD mass after SFT: {sft.summary['final_ood_mass']:.4f}")
fig, ax = plt.subplots(figsize=(9, 4))
plot_trajectories(sft.history, ax, phase="sft", title="SFT: the three demonstrations take the mass")
"""),
("md", """
## 3. Where the loss stops

With three equally weighted demonstrations the best possible policy gives each 1/3, so the
negative log-likelihood cannot go below log 3. SFT gets there — and says nothing about the 24
other trajectories, which simply end near zero.
"""),
("code", """
final_loss = sft.metrics["loss"].iloc[-1]
print(f"final SFT loss {final_loss:.4f}   log 3 = {math.log(3):.4f}")
sft.metrics[["step", "loss", "chosen_prob", "rejected_prob", "ood_mass"]].tail(3)
"""),
("md", """
## 4. What the policy does off the data

At the start state the policy must split its mass a0/a1/a2 evenly (one demonstration each), and
at `s2`, `s3`, `s4`, `s5`, `s9`, `s13` it must follow the demonstration. At the other seven states
nothing constrains it. Below: the next-action distribution at all 13 states; the states a
demonstration visits are marked.
"""),
("code", """
prefixes_by_depth = [torch.zeros(1, 0, dtype=torch.long)] + [TreeMDP(3, t).trajectories() for t in (1, 2)]
demo_states = {int(s) for t in range(mdp.depth) for s in mdp.prefix_states(data.demonstrations[:, :t])}
state_labels = [mdp.state_name(s) + ("  (data)" if s in demo_states else "") for s in range(mdp.n_states)]


def next_action_table(policy):
    \"\"\"Next-action probabilities at every state, [13, 3], breadth-first order.\"\"\"
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
"""),
("md", """
## 5. RNN vs tabular, live

A `TabularPolicy` has its own logits at every state: SFT moves only the states on the data, the
others keep their (near-uniform) initial distribution. The RNN shares its weights across states,
so fitting the data also changes what it does at unvisited states. Change the policy, hidden
size, steps or learning rate and compare the unvisited rows.
""" + WIDGET_NOTE),
("code", """
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
"""),
("md", """
## Summary

- SFT maximises the likelihood of the demonstrations; with three of them its optimum gives each
  1/3, loss log 3, and almost no mass elsewhere.
- The data pin down the next-action distribution only at the states they visit. Elsewhere the
  policy's behaviour is whatever its initialisation and its parameter sharing make it.
- The tabular policy leaves unvisited states untouched; the RNN changes them too. That sharing is
  what later carries probability to trajectories nobody showed it.
- The SFT policy is frozen as the reference `ref` for the direct alignment phase.

## Exercises

1. With `sft_steps=0` the OOD mass is large. How many SFT steps until it falls below 1%, for the
   RNN and for the tabular policy?
2. Find a state no demonstration visits where the RNN's next-action distribution moved far from
   uniform after SFT. Does it depend on the seed (`train(..., seed=...)`)?
3. Train with `sft_lr=1e-1`. What happens to the loss curve? Is the result still at log 3?
"""),
("code", """
# Your experiments here.
"""),
("md", """
## Glossary

| name | meaning |
|---|---|
| SFT / behaviour cloning | maximise the log-likelihood of the demonstrations |
| `paper_dataset()` | the three demonstrations and one preference of Appendix E |
| `train(daa_steps=0, ...)` | SFT only; returns a `RunResult` (`.history`, `.metrics`, `.summary`, `.policy`) |
| `TabularPolicy` | independent logits per state: no parameter sharing |
| in-distribution / OOD | trajectories in the data / all the others |
| OOD mass | total probability of the OOD trajectories, exact here |
| `plot_trajectories(history, ax)` | every trajectory's probability over steps, data highlighted |
"""),
]

# ------------------------------------------------------------------------------------------------
LESSON_3 = [
("md", """
# Lesson 3 — One preference, three losses: where does the mass go?

**Goal.** Run the direct alignment phase with DPO, IPO and SLiC on the paper's single preference
and watch, exactly, where probability mass goes. You will reproduce the paper's figures 7 and 9–17
live and find that a sizeable share lands on trajectories that are in no dataset.

**Plan.** the loss → one DPO run → all three losses at three betas → the live explorer → summary →
exercises → glossary.
"""),
("code", SETUP + """
from treemdp import TreeMDP, paper_dataset
from treemdp.training import train_batch
from treemdp.plots import plot_masses, plot_run, plot_trajectories
from treemdp.training import TrainConfig, train
"""),
("md", """
## 1. The loss (paper eq. 4)

For a preferred answer y_w and a dispreferred y_l, with the SFT policy frozen as the reference:

    h = [log π(y_w) − log ref(y_w)] − [log π(y_l) − log ref(y_l)]
    L = g(β · h)

with g(x) = −log σ(x) for DPO, (x − 1)² for IPO and max(0, 1 − x) for SLiC. The one preference:
"""),
("code", """
mdp = TreeMDP()
preference = paper_dataset().preferences[0]
print("chosen  ", mdp.trajectory_name(preference.chosen))
print("rejected", mdp.trajectory_name(preference.rejected))
"""),
("md", """
## 2. One DPO run

SFT (200 steps), then 150 DPO steps at β = 0.1. Thick lines: the three trajectories in the data;
dashed: OOD trajectories that ever exceed 5%.
"""),
("code", """
run = train(loss="dpo", beta=0.1, daa_steps=150, progress=False)
figure = plot_run(run.history, run.summary)
"""),
("code", """
{key: run.summary[key] for key in ("peak_ood_mass", "peak_ood_step", "final_ood_mass",
                                   "final_chosen_prob", "final_rejected_prob", "top_ood")}
"""),
("md", """
The rejected trajectory is pushed to zero, as the loss asks. But its mass does not all go to the
chosen one: for a while a large share sits on `s1-a1-s3-a1-s9-a1-s∞` — the chosen prefix with a
last action nobody demonstrated — before it drains back.

## 3. Three losses, three betas (figures 7 and 9–17)

Nine runs at once with the batched engine (`train_batch` gives the same numbers as nine calls of
`train`).
"""),
("code", """
losses, betas = ("dpo", "ipo", "slic"), (0.01, 0.1, 0.5)
configs = [TrainConfig(loss=loss, beta=beta, daa_steps=150) for loss in losses for beta in betas]
runs = dict(zip([(c.loss, c.beta) for c in configs], train_batch(configs)))

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
"""),
("code", """
fig, axes = plt.subplots(3, 3, figsize=(15, 11), sharex=True, sharey=True)
for i, loss in enumerate(losses):
    for j, beta in enumerate(betas):
        plot_trajectories(runs[loss, beta].history, axes[i, j], phase="daa", title=f"{loss.upper()}  beta={beta}")
fig.tight_layout()
"""),
("md", """
## 4. Explore, live

Pick a loss, β, seed and number of DAA steps; the run is redone from scratch (SFT included) and
the plot redrawn. Look for: how high the OOD mass peaks and when, whether it drains back, and
which OOD trajectories take it.
""" + WIDGET_NOTE),
("code", """
loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="dpo", description="loss")
beta = widgets.SelectionSlider(options=[0.01, 0.05, 0.1, 0.2, 0.5, 1.0], value=0.1, description="beta")
seed = widgets.IntSlider(value=0, min=0, max=9, description="seed")
daa_steps = widgets.IntSlider(value=150, min=50, max=400, step=50, description="DAA steps")


def draw(fig):
    run = train(loss=loss.value, beta=beta.value, seed=seed.value, daa_steps=daa_steps.value, progress=False)
    s = run.summary
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    plot_trajectories(run.history, top, phase="daa",
                      title=f"{loss.value.upper()} beta={beta.value} seed={seed.value}: peak OOD "
                            f"{s['peak_ood_mass']:.1%} at step {s['peak_ood_step']}, final {s['final_ood_mass']:.1%}")
    plot_masses(run.history, bottom, phase="daa")


display(live_plot(draw, [loss, beta], [seed, daa_steps], figsize=(10, 6.5)))
"""),
("md", """
## Summary

- All three losses push the rejected trajectory down, as asked; none of them says where its mass
  should go, and a significant share goes to OOD trajectories (paper, figure 7).
- The mass concentrates on a few OOD trajectories — here the chosen prefix with an undemonstrated
  last action — and often peaks early, then drains back to the chosen one unless the loss
  saturates first (DPO at large β, SLiC once β·h ≥ 1, IPO at h = 1/β).
- The trends hold across β; the exact numbers depend on seed, learning rate and hidden size
  (lesson 6).

## Exercises

1. For IPO at β = 0.5, compute h at the end of training from `run.policy` and `run.reference`
   (use `trajectory_log_probs` and `treemdp.preference_h`). Is it at the optimum 1/β?
2. Which loss puts the most mass on OOD trajectories at its peak, for each β? Make a 3 × 3 table
   from `runs[...].summary["peak_ood_mass"]`.
3. Does the in-distribution trajectory that is in neither side of the preference
   (`s1-a2-s4-a2-s13-a2-s∞`) gain or lose mass? Why might it?
"""),
("code", """
# Your experiments here.
"""),
("md", """
## Glossary

| name | meaning |
|---|---|
| DAA | direct alignment algorithm: DPO, IPO, SLiC — train on preferences without a reward model |
| `preference_loss(..., beta=, loss=)` | per-example g(β·h), paper eq. 4 |
| h | log-ratio margin: (log π − log ref) of chosen minus that of rejected |
| β | inverse temperature; larger β saturates the loss sooner |
| reference `ref` | the SFT policy, frozen during the DAA phase |
| peak / final OOD mass | the largest / last OOD mass during the DAA phase (`run.summary`) |
| `train_batch(configs)` | many runs as one computation, same results as `train` |
| `plot_run`, `plot_masses` | the figure of a run; in-distribution vs OOD mass over steps |
"""),
]

# ------------------------------------------------------------------------------------------------
LESSON_4 = [
("md", """
# Lesson 4 — Why: a rank-deficient objective, and parameter sharing

**Goal.** Understand why the losses of lesson 3 leave mass on OOD trajectories: the objective sees
the policy only through a handful of log-ratios (a data matrix with a huge null space), so many
policies are equally optimal; and an RNN's shared parameters move the unconstrained ones. A
tabular policy, with nothing shared, does not leak.

**Plan.** the three g → the data matrix Q and its null space → same loss, different policies →
tabular vs RNN, live → summary → exercises → glossary.
"""),
("code", SETUP + """
from treemdp import (LOSSES, TreeMDP, in_distribution_mask, paper_dataset, preference_h, preference_loss,
                     theory, trajectory_log_probs)
from treemdp.training import train
"""),
("md", """
## 1. The three g

Each loss is g(β·h) for a convex g. DPO never saturates (its gradient only fades); IPO pulls β·h
to exactly 1; SLiC stops pushing once β·h ≥ 1.
"""),
("code", """
x = torch.linspace(-4, 4, 401)
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, g in LOSSES.items():
    ax.plot(x, g(x), label=name)
ax.set_xlabel("x = beta * h")
ax.set_ylabel("g(x)")
ax.set_ylim(-0.2, 6)
ax.legend();
"""),
("md", """
In terms of h itself, β stretches the curve: the IPO optimum is at h = 1/β and SLiC saturates
from h = 1/β on. The explorer below draws g(β·h) against h, and the path h takes during a real
run at that β (dots, darker = later).
""" + WIDGET_NOTE),
("code", """
mdp = TreeMDP()
data = paper_dataset()
chosen = mdp.trajectory_index(data.chosen())      # [1]
rejected = mdp.trajectory_index(data.rejected())  # [1]

g_loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="ipo", description="loss")
g_beta = widgets.SelectionSlider(options=[0.05, 0.1, 0.2, 0.5, 1.0], value=0.5, description="beta")


def margin_path(run):
    \"\"\"h at every logged DAA step, from the history (the reference is the DAA step-0 policy).\"\"\"
    daa = run.history.query("phase == 'daa'")
    probs = torch.tensor(daa.pivot(index="step", columns="trajectory", values="prob")[mdp.trajectory_names()].to_numpy())
    logp = probs.log()  # [steps, 27]
    ref = logp[0].expand_as(logp)
    return preference_h(logp[:, chosen[0]], logp[:, rejected[0]], ref[:, chosen[0]], ref[:, rejected[0]])


def draw_g(fig):
    run = train(loss=g_loss.value, beta=g_beta.value, daa_steps=150, log_every=5, progress=False)
    h_path = margin_path(run)
    h = torch.linspace(-2, max(25.0, float(h_path.max()) + 2), 400)
    g = LOSSES[g_loss.value]
    ax = fig.subplots()
    ax.plot(h, g(g_beta.value * h), color="k", lw=1.5, label=f"g(beta*h), beta={g_beta.value}")
    ax.scatter(h_path, g(g_beta.value * h_path), c=range(len(h_path)), cmap="viridis", s=12, zorder=3,
               label="h during training")
    ax.axvline(1 / g_beta.value, color="0.5", ls=":", lw=1)
    ax.text(1 / g_beta.value, ax.get_ylim()[1] * 0.9, " h = 1/beta", fontsize=8)
    ax.set_xlabel("h")
    ax.set_ylabel("loss")
    ax.set_title(f"{g_loss.value.upper()}: final h = {float(h_path[-1]):.2f}", fontsize=10)
    ax.legend(fontsize=8)


display(live_plot(draw_g, [g_loss, g_beta], figsize=(7, 3.8)))
"""),
("md", """
## 2. The data matrix Q and its null space

Write the objective over the vector of all 27 log-ratios Δ = log π − log ref. Each preference i
reads it through a query row q_i with +1 at the chosen trajectory and −1 at the rejected one, so
h_i = q_i · Δ and L = Σ_i g(β q_i · Δ). With one preference Q is 1 × 27: rank 1, and a 26-dimensional
null space of directions the loss cannot see.
"""),
("code", """
Q = theory.query_matrix(mdp, data)   # [1, 27]: +1 at the chosen trajectory, -1 at the rejected one
rank = theory.query_rank(Q)
basis = theory.null_space(Q)         # [27, 26]: the directions the loss cannot see
print(f"Q is {tuple(Q.shape)}, rank {rank}, null space of dimension {basis.shape[1]}")

run = train(loss="dpo", beta=0.1, daa_steps=24, progress=False)  # stopped near its OOD peak
with torch.no_grad():
    logp, ref_logp = trajectory_log_probs(run.policy).double(), trajectory_log_probs(run.reference).double()
print("h from Q:              ", float(theory.margins(Q, logp, ref_logp)[0]))
print("h from preference_h:   ", float(preference_h(logp[chosen], logp[rejected], ref_logp[chosen], ref_logp[rejected])))
"""),
("md", """
## 3. Same loss, very different policies

Move the policy along the null space of Q and h, hence every loss at every β, stays put. Each row
of Q sums to zero and Q is zero off the data, so adding a constant to the OOD log-probs (then
renormalising) is such a move: `theory.with_ood_mass` dials the OOD mass to any value in closed
form. Below, the DPO policy of section 2 (stopped after 24 steps, when about half its mass was
OOD), the same policy with its OOD mass set to 1%, and with 99% piled onto one OOD trajectory
have exactly the same DPO loss. The optimiser is free to end up at any of them; which one it
reaches depends on the policy's parameterisation and on the path.
"""),
("code", """
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
    ax.set_title(f"{title}\\nDPO loss {float(value):.6f}", fontsize=10)
    ax.set_xlabel("trajectory (row)")
axes[0].set_ylabel("probability");
"""),
("md", """
## 4. Tabular vs RNN, live

So which optimum does training reach? With a `TabularPolicy` a gradient step changes only the
logits at states on the chosen and rejected paths (`s1, s3, s9` and `s2, s5`); every other state
keeps its reference distribution, so nothing flows to unseen trajectories. An RNN shares its
weights, so the same step changes its predictions everywhere. The left plot shows, per state, how
far the next-action distribution moved from the reference during DAA (total variation); the right
one the OOD mass.
""" + WIDGET_NOTE),
("code", """
prefixes_by_depth = [torch.zeros(1, 0, dtype=torch.long)] + [TreeMDP(3, t).trajectories() for t in (1, 2)]
pair = torch.cat([data.chosen(), data.rejected()])
path_states = {int(s) for t in range(mdp.depth) for s in mdp.prefix_states(pair[:, :t])}


def state_shift(run):
    \"\"\"Total variation between policy and reference next-action distributions, per state [13].\"\"\"
    with torch.no_grad():
        p = torch.cat([run.policy.action_log_probs(x).exp() for x in prefixes_by_depth])
        r = torch.cat([run.reference.action_log_probs(x).exp() for x in prefixes_by_depth])
    return 0.5 * (p - r).abs().sum(-1)


kind = widgets.Dropdown(options=["rnn", "tabular"], value="rnn", description="policy")
hidden = widgets.Dropdown(options=[4, 8, 32, 64], value=32, description="hidden size")
lr = widgets.SelectionSlider(options=[3e-3, 1e-2, 3e-2, 1e-1], value=1e-2, description="DAA lr")


def draw_sharing(fig):
    run = train(policy=kind.value, hidden_size=hidden.value, daa_lr=lr.value, daa_steps=100, progress=False)
    shift = state_shift(run)
    daa = run.metrics.query("phase == 'daa'")
    left, right = fig.subplots(1, 2, width_ratios=(1.6, 1))
    left.bar(range(mdp.n_states), shift, color=["tab:red" if s in path_states else "0.6" for s in range(mdp.n_states)])
    left.set_xticks(range(mdp.n_states), [mdp.state_name(s) for s in range(mdp.n_states)], fontsize=8)
    left.set_ylabel("TV(pi(.|s), ref(.|s))")
    left.set_title(f"{kind.value}: change per state (red: on the preference's paths)", fontsize=10)
    right.plot(daa["step"], daa["ood_mass"], color="tab:orange")
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("DAA step")
    right.set_title(f"OOD mass (peak {run.summary['peak_ood_mass']:.1%})", fontsize=10)


display(live_plot(draw_sharing, [kind, hidden, lr], figsize=(12, 3.8)))
"""),
("md", """
## Summary

- The DAA objective depends on the policy only through Q·(log π − log ref): one number per
  preference. With far fewer preferences than trajectories, Q has a large null space and the
  objective is not strictly convex — many policies are optimal, some with lots of OOD mass.
- Which optimum training reaches is decided by the parameterisation. A tabular policy only moves
  the states on the preference's paths; an RNN's shared weights move all states, and that is
  how probability reaches trajectories nobody showed it.
- β rescales h: IPO's optimum is h = 1/β, SLiC saturates from h = 1/β, DPO keeps pushing with a
  fading gradient.

## Exercises

1. Add a second preference to Q (say chosen `(2,2,2)` over `(0,0,0)`). What is the rank now? How
   many preferences would make Q's null space trivial, and why can it never be with pairwise data
   (hint: the all-ones vector)?
2. In the explorer, find settings where the tabular policy shows *any* OOD mass. Where does it
   come from?
3. Using `margin_path`, compare how fast h grows for DPO at β = 0.1 and β = 1.0.
"""),
("code", """
# Your experiments here.
"""),
("md", """
## Glossary

| name | meaning |
|---|---|
| `LOSSES` | the registry of g: `{"dpo": dpo_g, "ipo": ipo_g, "slic": slic_g}` |
| Δ = log π − log ref | the per-trajectory log-ratios the loss reads |
| Q | data matrix: one row per preference, +1 at chosen, −1 at rejected; h = Q·Δ (`theory.query_matrix`) |
| rank / null space | directions Q sees / directions it cannot see (`theory.query_rank`, `theory.null_space`) |
| `theory.with_ood_mass` | a null-space move: the same policy with any OOD mass, every loss unchanged |
| `preference_h` | the margin h from the four log-probs |
| parameter sharing | one weight affects many states (RNN); none in `TabularPolicy` |
| total variation (TV) | ½ Σ\\|p − q\\|, here between next-action distributions |
"""),
]

# ------------------------------------------------------------------------------------------------
LESSON_5 = [
("md", """
# Lesson 5 — The soft-Q view (Appendix D)

**Goal.** See a DAA-trained policy as a soft Q-function: its logits are Q-values, the value of a
state is a soft maximum over next tokens, and every non-final Q-value *bootstraps* from the value
of the next state — which includes continuations no data ever constrained. A small β makes the
soft maximum a hard one: more optimism about unseen tokens.

**Plan.** implicit reward → the soft Bellman backup on the tree, checked against the policy →
the soft maximum and β → Q-values after training, live → summary → exercises → glossary.
"""),
("code", SETUP + """
from treemdp import TreeMDP, implicit_reward, theory, trajectory_log_probs
from treemdp.training import train
"""),
("md", """
## 1. The implicit reward

A DAA-trained policy defines a reward for every trajectory, r(y) = β log π(y)/ref(y), and π is the
KL-regularised optimum for it: π(y) ∝ ref(y) exp(r(y)/β).
"""),
("code", """
mdp = TreeMDP()
beta = 0.1
run = train(loss="dpo", beta=beta, daa_steps=150, progress=False)
with torch.no_grad():
    logp, ref_logp = trajectory_log_probs(run.policy), trajectory_log_probs(run.reference)
reward = implicit_reward(logp, ref_logp, beta=beta)  # [27]
names = mdp.trajectory_names()
for row in reward.argsort(descending=True)[:4].tolist():
    print(f"r = {float(reward[row]):+.3f}   {names[row]}")
"""),
("md", """
## 2. The soft Bellman backup on the tree

Token level, in the paper's form (Appendix D, eq. 11), with V(s∞) = 0 and the sequence reward
paid at the last token:

    Q(s, a) = r(s, a) + β log ref(a|s) + V(s')     r(s, a) = r(y) if (s, a) completes y, else 0
    V(s)    = β logsumexp_a Q(s, a)/β
    π(a|s)  = exp((Q(s, a) − V(s))/β)

`theory.soft_q_of_policy` runs it backwards, level by level, from the implicit reward (Q and V come
back as one tensor per depth, states in BFS order). If the view is right, the recovered π(a|s)
equals the policy's own next-action probabilities and V(s1) = 0. The same Q and V also give
per-token rewards β log π(a|s)/ref(a|s) whose sum along every trajectory is r(y).
"""),
("code", """
def prefixes(t):
    \"\"\"All action prefixes of length t, lexicographic = the states at depth t in BFS order.\"\"\"
    return TreeMDP(mdp.branching, t).trajectories() if t else torch.zeros(1, 0, dtype=torch.long)


view = theory.soft_q_of_policy(logp.double(), ref_logp.double(), mdp, beta)
with torch.no_grad():
    error = max(float((view.log_pi[t] - run.policy.action_log_probs(prefixes(t)).double()).abs().max())
                for t in range(mdp.depth))
print(f"V(s1) = {float(view.V[0][0]):.2e}    max |log pi recovered - log pi| = {error:.2e}")
summed = view.trajectory_sums(view.token_rewards)  # per-token rewards added up along each trajectory
print(f"max |sum of token rewards - r(y)| = {float((summed - reward.double()).abs().max()):.2e}")
view.table().head(6)
"""),
("md", """
## 3. The soft maximum, and what β does to it

V(s) = β log Σ_a exp(Q(s, a)/β) with the reference inside Q: unrolled, it is β log of the
reference average of exp(r/β) over every continuation of s, so it lies between the reference
average of those rewards and their maximum. As β → 0 it becomes the best continuation's reward:
a state is worth as much as its best continuation, whether or not any data supports that
continuation. Below, `theory.values_over_beta` recomputes V(s3) (the state after `a1`) for the
reward of the run above at other temperatures β.
""" + WIDGET_NOTE),
("code", """
temperature = widgets.FloatLogSlider(value=0.1, base=10, min=-3, max=1, step=0.25, description="beta")
grid = torch.logspace(-3, 1, 60).tolist()
values_s3 = theory.values_over_beta(view.reward, ref_logp.double(), mdp, grid).query("state == 's3'")


def draw_softmax(fig):
    b = temperature.value
    at_b = theory.soft_q(view.reward, ref_logp.double(), mdp, b)  # the same reward, backed up at this beta
    induced = at_b.log_pi[1][1].exp()  # depth 1, row 1: state s3
    left, right = fig.subplots(1, 2)
    left.semilogx(values_s3["beta"], values_s3["V"], label="V(s3) = soft max of its continuations")
    left.axhline(values_s3["max_r"].iloc[0], color="tab:red", ls="--", label="max r below s3")
    left.axhline(values_s3["ref_mean_r"].iloc[0], color="0.5", ls=":", label="ref-average of r below s3")
    left.axvline(b, color="k", lw=0.8)
    left.set_xlabel("beta (temperature)")
    left.set_title(f"V(s3) at beta={b:.3g}: {float(at_b.V[1][1]):.3f}", fontsize=10)
    left.legend(fontsize=8)
    right.bar(["a0", "a1", "a2"], induced, color="tab:purple")
    right.set_ylim(0, 1)
    right.set_title("exp((Q(s3, a) - V(s3))/beta): the policy at this beta", fontsize=10)


display(live_plot(draw_softmax, [temperature], figsize=(11, 3.5)))
"""),
("md", """
## 4. Q-values after training, live

Now train at each β and look at the Q-values along the chosen path `s1 → s3 → s9`. At `s9` the
Q-values are rewards (plus β log ref): the data fix r(chosen) − r(rejected) only, so the rewards of
the two OOD leaves `…-a1-s∞` and `…-a2-s∞` are whatever the RNN made them. At `s3` and `s1` every Q
holds a bootstrapped V (`view.bootstrap`), a soft maximum that can be pulled up by those
unconstrained leaves.
""" + WIDGET_NOTE),
("code", """
train_loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="dpo", description="loss")
train_beta = widgets.SelectionSlider(options=[0.01, 0.05, 0.1, 0.5, 1.0], value=0.1, description="beta")
chosen_path = [(0, 0, "s1"), (1, 1, "s3"), (2, 4, "s9")]  # (depth, row at that depth, name)


def draw_q(fig):
    b = train_beta.value
    trained = train(loss=train_loss.value, beta=b, daa_steps=150, progress=False)
    with torch.no_grad():
        trained_logp = trajectory_log_probs(trained.policy).double()
        trained_ref = trajectory_log_probs(trained.reference).double()
    v = theory.soft_q_of_policy(trained_logp, trained_ref, mdp, b)
    axes = fig.subplots(1, 3)
    for ax, (t, row, name) in zip(axes, chosen_path):
        ax.bar(["a0", "a1", "a2"], v.Q[t][row], color=["0.6", "tab:blue", "0.6"] if t < 2 else ["tab:green", "tab:orange", "tab:orange"])
        ax.axhline(float(v.V[t][row]), color="k", ls="--", label=f"V({name})")
        ax.set_title(f"Q({name}, a)", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{train_loss.value.upper()} beta={b}: OOD mass {trained.summary['final_ood_mass']:.1%} "
                      f"(at s9: green = chosen leaf, orange = OOD leaves)", fontsize=10)


display(live_plot(draw_q, [train_loss, train_beta], figsize=(12, 3.6)))
"""),
("md", """
## Summary

- A DAA-trained policy is the soft-optimal policy of its implicit reward r = β log π/ref; on the
  tree the soft Bellman backup recovers it exactly (V(s1) = 0, same π(a|s)).
- Every non-final Q-value is the value of the next state, a soft maximum over its continuations —
  including OOD ones the data never priced. That is bootstrapping from unseen tokens.
- As β → 0 the soft maximum approaches a hard max: states are valued by their best continuation,
  an optimistic estimate that favours OOD paths.

## Exercises

1. Check numerically (`theory.values_over_beta`) that V(s) lies between the ref-average and the
   maximum of the rewards below s at every state, for β = 0.01 and β = 1.
2. At `s9`, the chosen leaf's reward minus the rejected leaf's reward should relate to h. Write the
   relation and check it with `run.summary` and `reward`.
3. Repeat section 2 with `run = train(policy="tabular", ...)`. Which token rewards
   (`view.token_rewards`) stay at 0, and why?
"""),
("code", """
# Your experiments here.
"""),
("md", """
## Glossary

| name | meaning |
|---|---|
| implicit reward | r(y) = β log π(y)/ref(y), `implicit_reward(logp, ref_logp, beta=)` |
| Q(s, a) | soft action value r(s, a) + β log ref(a\\|s) + V(s') (eq. 11): the reward at the last token, else the bootstrap |
| V(s) | soft state value β logsumexp_a Q(s,a)/β (Q includes β log ref) — a soft maximum |
| bootstrapping | using V of the next state (all its continuations, seen or not) inside Q |
| soft maximum | β log-sum-exp; tends to max as β → 0 |
| `theory.soft_q_of_policy` | the backward pass over the tree: Q, V, bootstrap and token rewards per depth |
| `theory.values_over_beta` | V of every state for a fixed reward at other β, with its two limits |
"""),
]

# ------------------------------------------------------------------------------------------------
LESSON_6 = [
("md", """
# Lesson 6 — Noise and many optima

**Goal.** Because the objective has many optima (lesson 4), different runs end in different
places. Repeat DPO over seeds (the paper's figure 18) and see the OOD mass land on different
trajectories each time; then map how strongly the effect depends on learning rate and hidden
size.

**Plan.** six seeds at once → which OOD trajectories win, per seed → the sensitivity map →
explore a seed, live → summary → exercises → glossary.
"""),
("code", SETUP + """
import pandas as pd

from treemdp.training import train_batch
from treemdp.plots import plot_masses, plot_trajectories
from treemdp.training import TrainConfig, train
"""),
("md", """
## 1. Six seeds (figure 18)

A small hidden size (4) and a larger learning rate (3e-2) make the runs differ most. The seed
changes only the initial weights.
"""),
("code", """
seeds = list(range(6))
settings = dict(loss="dpo", beta=0.1, hidden_size=4, daa_lr=3e-2, daa_steps=200)
runs = train_batch([TrainConfig(seed=s, **settings) for s in seeds])
fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), sharex=True, sharey=True)
for ax, s, run in zip(axes.flat, seeds, runs):
    plot_trajectories(run.history, ax, phase="daa", title=f"seed {s}: peak OOD {run.summary['peak_ood_mass']:.0%}")
fig.tight_layout()
"""),
("md", """
## 2. Which OOD trajectories take the mass?

Peak probability of every OOD trajectory during DAA, one row per seed. Different seeds light up
different columns: the loss does not care which OOD trajectory holds the mass.
"""),
("code", """
peaks = pd.concat({s: run.history.query("phase == 'daa' and not in_distribution").groupby("trajectory")["prob"].max()
                   for s, run in zip(seeds, runs)}, axis=1).T  # [seeds, 24 OOD trajectories]
peaks = peaks.loc[:, peaks.max() > 0.02]  # keep the columns that ever matter
fig, ax = plt.subplots(figsize=(1 + 0.8 * peaks.shape[1], 3.5))
image = ax.imshow(peaks.to_numpy(), cmap="Oranges", vmin=0, vmax=1, aspect="auto")
ax.set_xticks(range(peaks.shape[1]), [c.replace("s1-", "").replace("-s∞", "") for c in peaks.columns], rotation=60, ha="right", fontsize=8)
ax.set_yticks(range(len(seeds)), [f"seed {s}" for s in seeds])
fig.colorbar(image, label="peak probability");
"""),
("md", """
## 3. The sensitivity map

Peak OOD mass (mean over two seeds) for DPO at β = 0.1 over DAA learning rate × hidden size.
Runs that share a hidden size are batched together.
"""),
("code", """
hidden_sizes, learning_rates = (4, 8, 16, 32), (3e-3, 1e-2, 3e-2, 1e-1)
rows = []
for hidden in hidden_sizes:
    configs = [TrainConfig(loss="dpo", beta=0.1, hidden_size=hidden, daa_lr=lr, seed=s, daa_steps=100)
               for lr in learning_rates for s in (0, 1)]
    for config, result in zip(configs, train_batch(configs)):
        peak = result.summary["peak_ood_mass"] if not isinstance(result, Exception) else float("nan")
        rows.append({"hidden_size": hidden, "daa_lr": config.daa_lr, "peak_ood_mass": peak})
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
"""),
("md", """
## 4. Explore a seed, live
""" + WIDGET_NOTE),
("code", """
seed = widgets.IntSlider(value=0, min=0, max=19, description="seed")
hidden_size = widgets.Dropdown(options=[4, 8, 32], value=4, description="hidden size")
daa_lr = widgets.SelectionSlider(options=[3e-3, 1e-2, 3e-2, 1e-1], value=3e-2, description="DAA lr")


def draw_seed(fig):
    run = train(loss="dpo", beta=0.1, seed=seed.value, hidden_size=hidden_size.value, daa_lr=daa_lr.value,
                daa_steps=200, progress=False)
    top_ood = ", ".join(f"{t['trajectory']} {t['prob']:.0%}" for t in run.summary["top_ood"][:2])
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    plot_trajectories(run.history, top, phase="daa", title=f"seed {seed.value}: final top OOD: {top_ood}")
    plot_masses(run.history, bottom, phase="daa")


display(live_plot(draw_seed, [seed, hidden_size, daa_lr], figsize=(10, 6)))
"""),
("md", """
## Summary

- Identical settings, different seeds: the OOD mass goes to different trajectories and reaches
  different peaks — the paper's "DPO is noisy" (figure 18) is the many optima of lesson 4 made
  visible.
- The effect is real but sensitive: larger effective step size (learning rate, hidden size) gives
  more and longer-lasting OOD mass; small ones can hide it. Report peak and final OOD mass over
  several seeds, never one run.

## Exercises

1. Extend the sensitivity map with an `optimizer` axis (`"sgd"` vs `"adam"`). What does SGD do?
2. How many seeds do you need before the mean peak OOD mass of one cell is known to ±0.05?
3. Make the same map for IPO at β = 0.5. Is it less sensitive?
"""),
("code", """
# Your experiments here.
"""),
("md", """
## Glossary

| name | meaning |
|---|---|
| seed | initialises the policy's weights (`TrainConfig.seed`); nothing else is random |
| many optima | the objective's null space (lesson 4): equally good policies with different OOD mass |
| sensitivity map | a summary statistic over a grid of settings |
| `train_batch(configs)` | runs differing in loss, beta, seed or learning rates, computed together |
| `summary["top_ood"]` | the most probable OOD trajectories at the end of a run |
"""),
]

# ------------------------------------------------------------------------------------------------
LESSON_9 = [
("md", """
# Lesson 9 — "My chosen log-probs are falling"

**Goal.** Answer the question DPO users ask most often (TRL, the DPO reference repository,
LLaMA-Factory and OpenRLHF all have issues about it): *"during DPO the log-probability of my chosen
answers goes down — is my training broken, and where does the probability go?"* On the tree we
can account for every bit of it exactly, and test three explanations from the literature:
likelihood displacement (Razin et al. 2024), the squeezing effect of a negative gradient (Ren &
Sutherland 2025) and the soft-Q bootstrapping term (this paper, Appendix D).

**Plan.** the symptom → an exact account of where the mass went, live → displacement and the
CHES score, live → squeezing, live → the bootstrapping term, live → summary → exercises
(one auto-checked) → glossary.
"""),
("code", SETUP + """
import numpy as np

from treemdp import TreeMDP, in_distribution_mask, make_dataset, paper_dataset, theory, trajectory_log_probs
from treemdp.exercises import check_ches_score, hint
from treemdp.phenomena import displacement, squeezing
from treemdp.phenomena.explain import draw_explanation, explain_result, format_table
from treemdp.training import train
"""),
("md", """
## 1. The symptom

DPO at the settings of the paper-style figures (GRU, Adam, DAA learning rate 3e-2), β = 0.1. The
loss only asks for the *margin* h = log π(y_w)/ref(y_w) − log π(y_l)/ref(y_l) to grow; nothing in
it keeps log π(y_w) itself up.
"""),
("code", """
mdp, data = TreeMDP(), paper_dataset()
run = train(loss="dpo", beta=0.1, daa_lr=3e-2, daa_steps=150, progress=False)
daa = run.metrics.query("phase == 'daa'")
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.plot(daa["step"], np.log(daa["chosen_prob"]), label="log π(chosen)")
ax.plot(daa["step"], np.log(daa["rejected_prob"]), label="log π(rejected)")
ax.set_xlabel("DAA step")
ax.set_ylabel("log-probability")
ax.legend();
"""),
("md", """
## 2. Where did it go? An exact account, live

Probability sums to one, so what the chosen answer loses between DAA step 0 and step t, the other
trajectories gain, to the last digit. `explain_result(run)` (the library behind
`treemdp explain RUN`) splits the gain into the rejected answer, the rest of the data, and the OOD
trajectories by how many leading tokens they share with the chosen answer.
""" + WIDGET_NOTE),
("code", """
print(format_table(explain_result(run)))

account_loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="dpo", description="loss")
account_beta = widgets.SelectionSlider(options=[0.01, 0.1, 0.5], value=0.1, description="beta")
account_seed = widgets.IntSlider(value=0, min=0, max=9, description="seed")


def draw_account(fig):
    trained = train(loss=account_loss.value, beta=account_beta.value, seed=account_seed.value, daa_lr=3e-2,
                    daa_steps=150, progress=False)
    left, right = fig.subplots(1, 2)
    draw_explanation(explain_result(trained), left, right)


display(live_plot(draw_account, [account_loss, account_beta, account_seed], figsize=(12, 4)))
"""),
("md", """
Whenever the chosen answer dips, the mass goes almost entirely to **OOD trajectories that share
its first two tokens** (`s1-a1-s3-a1-s9-a1` and `…-a2`): siblings of the chosen leaf that no data
mentions. The rejected answer and the other demonstration lose everything they had early on.

## 3. Likelihood displacement and the CHES score

Razin et al. predict which pairs displace the chosen answer from the model's hidden states: with
h(y_<k) the state the head reads before the k-th token,

    CHES(y+, y−) = ⟨Σ_k h(y+_<k), Σ_k h(y−_<k)⟩ − ‖Σ_k h(y+_<k)‖²

High CHES (the two answers look alike inside the model) predicts a larger fall of log π(y+). Below,
CHES of every ordered pair of the three demonstrations under the SFT policy; then pick a pair and
β and watch log π(y+) during DPO on that pair alone.
""" + WIDGET_NOTE),
("code", """
demos = data.demonstrations.tolist()
names = {i: mdp.trajectory_name(d) for i, d in enumerate(demos)}
pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
rows = mdp.trajectory_index(demos)
scores = displacement.ches(run.reference, rows[[i for i, _ in pairs]], rows[[j for _, j in pairs]])
for (i, j), score in zip(pairs, scores):
    print(f"CHES = {float(score):8.3f}   chosen {names[i]}  over  {names[j]}")

pair_choice = widgets.Dropdown(options=[(f"{names[i]} over {names[j]}", (i, j)) for i, j in pairs],
                               value=(1, 0), description="pair")
pair_beta = widgets.SelectionSlider(options=[0.01, 0.1, 0.5], value=0.1, description="beta")


def draw_pair(fig):
    i, j = pair_choice.value
    pair_data = make_dataset(mdp, demos, [{"chosen": demos[i], "rejected": demos[j]}])
    trained = train(loss="dpo", beta=pair_beta.value, daa_lr=3e-2, daa_steps=150, progress=False, dataset=pair_data)
    steps = trained.metrics.query("phase == 'daa'")
    chosen_logp = np.log(steps["chosen_prob"].to_numpy())
    ax = fig.subplots()
    ax.plot(steps["step"], chosen_logp, label="log π(y+)")
    ax.plot(steps["step"], np.log(steps["rejected_prob"].to_numpy()), label="log π(y−)")
    score = float(displacement.ches(trained.reference, rows[[i]], rows[[j]])[0])
    ax.set_title(f"CHES {score:.2f}; lowest change of log π(y+): {chosen_logp.min() - chosen_logp[0]:+.2f}", fontsize=10)
    ax.set_xlabel("DAA step")
    ax.legend(fontsize=8)


display(live_plot(draw_pair, [pair_choice, pair_beta], figsize=(9, 3.6)))
"""),
("md", """
`figures/phen_displacement.png` runs this on every pair of 8 random demonstrations in a 3×4 tree
over 5 seeds: CHES rank-correlates with the fall in every seed, but the length of the prefix the
two answers share predicts it as well or better (`figures/README.md` has the numbers).

## 4. Squeezing: where a negative gradient sends the mass

DPO pushes log π(y_l) down. For a softmax, one gradient step of size η on log π(ȳ) changes every
other log-probability by η (π_k − Σπ² + π(ȳ)) to first order: answer k gains only if π_k exceeds
Σπ² − π(ȳ). With a peaked π and a small π(ȳ) only the argmax gains; everything else is squeezed.
Below, a softmax over 30 answers (logits at a temperature), one exact step; the dashed line is the
threshold.
""" + WIDGET_NOTE),
("code", """
squeeze_temperature = widgets.FloatLogSlider(value=1.0, base=10, min=-0.5, max=0.7, step=0.1, description="temperature")
squeeze_rank = widgets.IntSlider(value=25, min=0, max=29, description="ȳ rank")  # 0 = the most likely answer


def draw_squeeze(fig):
    logits = torch.randn(30, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * squeeze_temperature.value
    order = torch.argsort(logits, descending=True)
    negative = int(order[squeeze_rank.value])
    before = torch.softmax(logits, 0)
    after = squeezing.negative_step(logits, negative, 0.5).exp()
    ax = fig.subplots()
    x = torch.arange(30)
    ax.bar(x - 0.2, before[order], width=0.4, label="before")
    ax.bar(x + 0.2, after[order], width=0.4, label="after one negative step")
    ax.axhline(float(squeezing.gain_threshold(before, negative)), color="k", ls="--", lw=1,
               label="Σπ² − π(ȳ): above it, an answer gains")
    ax.set_xlabel("answers, most likely first")
    ax.set_ylabel("probability")
    ax.set_title(f"ȳ = answer ranked {squeeze_rank.value}: the argmax takes "
                 f"{float((after - before)[order[0]] / (before - after)[negative]):.0%} of what ȳ lost", fontsize=10)
    ax.legend(fontsize=8)


display(live_plot(draw_squeeze, [squeeze_temperature, squeeze_rank], figsize=(10, 3.6)))
"""),
("md", """
On the tree the argmax just before an OOD trajectory takes off is the *chosen* trajectory, in every
paper run we measured (`figures/phen_squeezing.png`): squeezing explains why the chosen answer
keeps most of the mass, not which OOD trajectory wins.

## 5. The bootstrapping term

In the soft-Q view (lesson 5) Q(s, a) = r(s, a) + β log ref(a|s) + V(s'), and V(s') is a soft maximum
over *every* continuation of s', seen or not. `theory.ood_bootstrap_share` measures how much of each
V comes from OOD leaves. Below, the implicit reward of the run of section 1 backed up at another
β: small β turns the soft maximum into a hard one and hands V to the best (OOD) continuation.
""" + WIDGET_NOTE),
("code", """
with torch.no_grad():
    logp, ref_logp = trajectory_log_probs(run.policy).double(), trajectory_log_probs(run.reference).double()
reward = theory.soft_q_of_policy(logp, ref_logp, mdp, 0.1).reward
inside = in_distribution_mask(mdp, data)
backup_beta = widgets.FloatLogSlider(value=0.1, base=10, min=-3, max=1, step=0.25, description="beta")
path = [(0, 0, "s1"), (1, 1, "s3"), (2, 4, "s9")]


def draw_bootstrap(fig):
    view = theory.soft_q(reward, ref_logp, mdp, backup_beta.value)
    share = theory.ood_bootstrap_share(view, inside)
    left, right = fig.subplots(1, 2)
    left.bar([name for _, _, name in path], [float(view.V[t][j]) for t, j, _ in path], color="tab:blue")
    left.set_ylabel("V(s)")
    left.set_title(f"V on the chosen path, backup at beta={backup_beta.value:.3g}", fontsize=10)
    right.bar([name for _, _, name in path], [float(share[t][j]) for t, j, _ in path], color="tab:orange")
    right.set_ylim(0, 1)
    right.set_title("share of V carried by OOD continuations", fontsize=10)


display(live_plot(draw_bootstrap, [backup_beta], figsize=(10, 3.4)))
"""),
("md", """
## Summary

- A falling log π(chosen) is not by itself a bug: the DAA losses constrain margins, not
  likelihoods. Probability sums to one, so the fall is always someone's gain, and
  `treemdp explain RUN` says whose, exactly.
- On the paper's tree the chosen answer's losses go to OOD siblings of the chosen leaf, the
  continuations the soft-Q view says are bootstrapped from.
- CHES (Razin et al.) flags pairs that displace, but on the tree the plain shared-prefix length does
  as well; their single-token displacement needs the unembeddings to dominate the hidden state.
- Squeezing (Ren & Sutherland) holds for a softmax and for a GRU under a pure negative gradient, and
  explains why the argmax (here: the chosen answer) keeps gaining, not which OOD answer wins.

## Exercises

1. **(auto-checked)** Write `ches_score(h_chosen, h_rejected)` below from the definition in section 3.
   `hint("l9.ches_score")` helps; run the check cell after it.
2. In section 3, which pair has the highest CHES? Does it displace most at every β?
3. In section 2, find a (loss, β, seed) where the chosen answer ends *below* where it started.
   Which group holds its mass at the end?
"""),
("code", """
def ches_score(h_chosen, h_rejected):
    \"\"\"CHES of one preference pair (Razin et al. 2024, Definition 2).

    Args:
        h_chosen: Tensor [K+, H], the hidden state before each token of the chosen answer.
        h_rejected: Tensor [K-, H], the same for the rejected answer.

    Returns:
        one number: <sum_k h+, sum_k h-> - ||sum_k h+||^2.
    \"\"\"
    # YOUR CODE HERE
    raise NotImplementedError
"""),
("code", """
check_ches_score(ches_score)
"""),
("md", """
## Glossary

| name | meaning |
|---|---|
| likelihood displacement | the chosen answer's probability falls while the margin grows (Razin et al. 2024) |
| CHES | ⟨Σh+, Σh−⟩ − ‖Σh+‖², `displacement.ches(policy, chosen, rejected)`; normalised: means |
| squeezing | a negative gradient on ȳ sends the freed mass to the argmax (Ren & Sutherland 2025) |
| Σπ² − π(ȳ) | the first-order threshold: an answer gains from the step only above it |
| `explain_result`, `treemdp explain` | the exact account of where the chosen probability went |
| OOD sharing k tokens | OOD trajectories whose first k actions are the chosen answer's |
| bootstrapping term | V(s') inside Q(s, a), eq. 11; `theory.ood_bootstrap_share` splits it |
"""),
]

LESSONS = {
    "01_token_tree.ipynb": LESSON_1,
    "02_behaviour_cloning.ipynb": LESSON_2,
    "03_three_losses.ipynb": LESSON_3,
    "04_why_rank_deficiency.ipynb": LESSON_4,
    "05_soft_q.ipynb": LESSON_5,
    "06_noise_many_optima.ipynb": LESSON_6,
    "09_chosen_logprobs_falling.ipynb": LESSON_9,
}
