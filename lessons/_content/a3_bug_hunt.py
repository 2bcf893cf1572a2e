# %% [markdown]
# # Assignment a3 — The silent-bug hunt
#
# Four DAA trainers, `A` to `D`, train on the paper's data. Each runs without an error message and
# produces plausible-looking numbers. Exactly one is correct; each of the others has a one-line bug
# of a kind that really happens (it is in the list `BUGS`). Find which is which from the mass
# plots and metrics — then write a sanity check that would have caught them.
#
# Do not read the source of `treemdp.exercises.bugs` before you hand in: it names the bugs.
#
# **How to work.** Each exercise is a function stub with its signature and shapes; fill in the gap
# marked `YOUR CODE HERE` (delete the `raise NotImplementedError`), then run the check cell below
# it. A check compares your function with the library's own on random inputs and answers *not
# attempted*, *incorrect because …*, or *correct*. Stuck? `hint("a3.diagnosis")` gives a first hint,
# `hint("a3.diagnosis", 2)` the next. When you are done, check the whole notebook from a terminal:
#
#     treemdp grade lessons/assignments/a3_bug_hunt.ipynb
#
# (it runs the notebook top to bottom in a fresh kernel, so make sure it does).

# %%
# %matplotlib inline
import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from treemdp.exercises import BUGS, VARIANTS, check_diagnosis, check_sanity_check, hint, mystery_train
from treemdp.plots import TrajectoryView, live_plot, plot_trajectories, probability_matrix

for name, what in BUGS.items():
    print(f"{name!r}: {what}")

# %% [markdown]
# ## Run the four trainers
#
# Same settings for all four: first DPO at β = 0.1, then IPO at β = 0.5 (a loss that should
# *stop* once h reaches 1/β). Seed 0, 150 DAA steps after the usual SFT.

# %%
settings = {"DPO, beta=0.1": dict(loss="dpo", beta=0.1), "IPO, beta=0.5": dict(loss="ipo", beta=0.5)}
results = {(name, variant): mystery_train(variant, daa_steps=150, **kwargs)
           for name, kwargs in settings.items() for variant in VARIANTS}
fig, axes = plt.subplots(2, 4, figsize=(20, 8), sharex=True, sharey=True)
for (name, variant), ax in zip(results, axes.flat):
    plot_trajectories(results[name, variant].history, ax, phase="daa", title=f"trainer {variant}: {name}")
fig.tight_layout()

# %% [markdown]
# The first and last logged DAA step of each trainer (DPO, β = 0.1):

# %%
columns = ["loss", "chosen_prob", "rejected_prob", "ood_mass", "kl_to_reference"]
table = {}
for variant in VARIANTS:
    daa = results["DPO, beta=0.1", variant].metrics.query("phase == 'daa'")
    for label, row in (("first", daa.iloc[0]), ("last", daa.iloc[-1])):
        table[variant, label] = row[columns]
pd.DataFrame(table).T

# %% [markdown]
# ## Explore
#
# Does the picture change with the loss or β? Try the trainers on other settings before you decide.
# (The mystery trainers run one at a time: a setting you have not looked at yet takes about a
# second; each result is kept, so going back to it is instant.)

# %%
variant = widgets.Dropdown(options=list(VARIANTS), value="A", description="trainer")
loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="dpo", description="loss")
beta = widgets.SelectionSlider(options=[0.01, 0.1, 0.5], value=0.1, description="beta")


seen = {}  # (trainer, loss, beta) -> (steps, probabilities, names)


def setup(fig):
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    return TrajectoryView(top, bottom, history=results["DPO, beta=0.1", "A"].history)


def update(view):
    key = (variant.value, loss.value, beta.value)
    if key not in seen:
        seen[key] = probability_matrix(mystery_train(variant.value, loss=loss.value, beta=beta.value, daa_steps=150).history)
    steps, probs, _ = seen[key]
    view.show(steps, probs, title=f"trainer {variant.value}, {loss.value} beta={beta.value}")


display(live_plot(update, [variant, loss, beta], setup=setup, figsize=(10, 6)))

# %% [markdown]
# ## Exercise 1 — the diagnosis
#
# Map every trainer to one of the names in `BUGS` (exactly one is `"no bug"`). Write one sentence
# per trainer, in a comment, saying which plot or number convinced you.

# %% exercise="a3.diagnosis"
diagnosis = {
    ### BEGIN STARTER
    # "A": "?",  # YOUR CODE HERE: one of BUGS' names, and why
    # "B": "?",
    # "C": "?",
    # "D": "?",
    ### END STARTER
    ### BEGIN SOLUTION
    "A": "reference follows the policy",   # loss stays at log 2 while chosen runs to 1: h never grows
    "B": "no bug",                         # loss falls, chosen up, rejected down, OOD bump then drains
    "C": "swapped chosen and rejected",    # the rejected trajectory (a0,a0,a0) takes the mass
    "D": "reference is the policy",        # nothing moves: h is identically 0, the loss is flat
    ### END SOLUTION
}

# %%
check_diagnosis(diagnosis)


# %% [markdown]
# ## Exercise 2 — a sanity check that would have caught them
#
# Write `sanity_check(result)` returning a list of problems (strings; empty when the run looks
# healthy) from `result.metrics` (one row per logged step; columns `phase`, `step`, `loss`,
# `chosen_prob`, `rejected_prob`, `ood_mass`, `kl_to_reference`, …). It must flag the three buggy
# trainers and pass bug-free runs of all three losses. Use only what any trainer logs: no peeking
# at which variant it is.

# %% exercise="a3.sanity_check"
def sanity_check(result) -> list[str]:
    """Problems seen in a run's DAA phase; [] if it looks healthy.

    Args:
        result: a RunResult (from train or mystery_train).

    Returns:
        list of one-line descriptions.
    """
    daa = result.metrics.query("phase == 'daa'")
    problems = []
    ### BEGIN SOLUTION
    first, last = daa.iloc[0], daa.iloc[-1]

    def margin(row):  # log(chosen / rejected), safe at probability 0
        return math.log(max(row["chosen_prob"], 1e-300)) - math.log(max(row["rejected_prob"], 1e-300))

    if margin(last) <= margin(first):
        problems.append("the chosen/rejected log-ratio did not grow: is the preference the right way round?")
    if last["loss"] >= first["loss"] - 1e-6:
        problems.append("the loss never fell below its step-0 value g(0): is the reference frozen?")
    return problems
    ### END SOLUTION


# %%
check_sanity_check(sanity_check)

# %% [markdown]
# ## Reflect
#
# Which single plot would you now add to every DAA training dashboard, and why? (A few sentences in
# this cell.)
