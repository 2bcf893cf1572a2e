"""The assignments: ("md", text), ("code", text) or ("exercise", starter, solution) cells.

The starter goes to ``lessons/assignments/``, the solution to ``lessons/solutions/``.
"""

from common import SETUP

HOW_TO = """
**How to work.** Each exercise is a function stub with its signature and shapes; fill in the gap
marked `YOUR CODE HERE` (delete the `raise NotImplementedError`), then run the check cell below
it. A check compares your function with the library's own on random inputs and answers *not
attempted*, *incorrect because …*, or *correct*. Stuck? `hint("{first}")` gives a first hint,
`hint("{first}", 2)` the next. When you are done, check the whole notebook from a terminal:

    treemdp grade {path}

(it runs the notebook top to bottom in a fresh kernel, so make sure it does).
"""

# ------------------------------------------------------------------------------------------------
A1 = [
("md", """
# Assignment a1 — The three losses and `preference_loss`

Implement the unified direct alignment loss of the paper (eq. 4): the three convex functions g of
DPO, IPO and SLiC, then the per-example loss g(β·h) from four sequence log-probabilities.
""" + HOW_TO.format(first="a1.dpo_g", path="lessons/assignments/a1_losses.ipynb")),
("code", SETUP + """
from treemdp.exercises import check_dpo_g, check_ipo_g, check_preference_loss, check_slic_g, hint
"""),
("md", """
## Exercise 1 — DPO's g

DPO models P(chosen ≻ rejected) = σ(β·h) (Bradley–Terry) and minimises its negative log:
g(x) = −log σ(x). Stay in log space: for x = −100, σ(x) underflows but the loss is a perfectly
good 100.
"""),
("exercise", """
def dpo_g(x: torch.Tensor) -> torch.Tensor:
    \"\"\"DPO's g, elementwise: -log sigmoid(x).

    Args:
        x: Tensor [batch], the scaled margin beta * h.

    Returns:
        Tensor [batch], differentiable.
    \"\"\"
    # YOUR CODE HERE
    raise NotImplementedError
""", """
def dpo_g(x: torch.Tensor) -> torch.Tensor:
    \"\"\"DPO's g, elementwise: -log sigmoid(x).

    Args:
        x: Tensor [batch], the scaled margin beta * h.

    Returns:
        Tensor [batch], differentiable.
    \"\"\"
    return -torch.nn.functional.logsigmoid(x)
"""),
("code", """
check_dpo_g(dpo_g)
"""),
("md", """
## Exercise 2 — IPO's g

IPO regresses the scaled margin onto a target instead of pushing it to infinity. In this paper's
convention g(x) = (x − 1)², so the optimum is β·h = 1. (The IPO paper writes (h − 1/(2τ))²; see
`treemdp.losses.ipo_g` for the mapping — after you are done.)
"""),
("exercise", """
def ipo_g(x: torch.Tensor) -> torch.Tensor:
    \"\"\"IPO's g in the paper's convention, elementwise: (x - 1)^2.  [batch] -> [batch]\"\"\"
    # YOUR CODE HERE
    raise NotImplementedError
""", """
def ipo_g(x: torch.Tensor) -> torch.Tensor:
    \"\"\"IPO's g in the paper's convention, elementwise: (x - 1)^2.  [batch] -> [batch]\"\"\"
    return (x - 1) ** 2
"""),
("code", """
check_ipo_g(ipo_g)
"""),
("md", """
## Exercise 3 — SLiC's g

SLiC uses a hinge with margin 1: g(x) = max(0, 1 − x). No loss, and no gradient, once β·h ≥ 1.
"""),
("exercise", """
def slic_g(x: torch.Tensor) -> torch.Tensor:
    \"\"\"SLiC's hinge, elementwise: max(0, 1 - x).  [batch] -> [batch]\"\"\"
    # YOUR CODE HERE
    raise NotImplementedError
""", """
def slic_g(x: torch.Tensor) -> torch.Tensor:
    \"\"\"SLiC's hinge, elementwise: max(0, 1 - x).  [batch] -> [batch]\"\"\"
    return torch.relu(1 - x)
"""),
("code", """
check_slic_g(slic_g)
"""),
("md", """
## Exercise 4 — `preference_loss`

    h = [log π(y_w) − log ref(y_w)] − [log π(y_l) − log ref(y_l)]      (eq. 4)
    loss = g(β · h)                                                     one value per example

Return the per-example losses (shape [batch]); the trainer takes the mean. Use your three g.
"""),
("exercise", """
def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    beta: float, loss: str = "dpo") -> torch.Tensor:
    \"\"\"Per-example direct alignment loss g(beta * h).

    Args:
        policy_chosen_logps: log pi(y_w), Tensor [batch].
        policy_rejected_logps: log pi(y_l), Tensor [batch].
        ref_chosen_logps: log ref(y_w), Tensor [batch].
        ref_rejected_logps: log ref(y_l), Tensor [batch].
        beta: inverse temperature > 0.
        loss: "dpo", "ipo" or "slic".

    Returns:
        Tensor [batch].
    \"\"\"
    G = {"dpo": dpo_g, "ipo": ipo_g, "slic": slic_g}
    # YOUR CODE HERE
    raise NotImplementedError
""", """
def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    beta: float, loss: str = "dpo") -> torch.Tensor:
    \"\"\"Per-example direct alignment loss g(beta * h).

    Args:
        policy_chosen_logps: log pi(y_w), Tensor [batch].
        policy_rejected_logps: log pi(y_l), Tensor [batch].
        ref_chosen_logps: log ref(y_w), Tensor [batch].
        ref_rejected_logps: log ref(y_l), Tensor [batch].
        beta: inverse temperature > 0.
        loss: "dpo", "ipo" or "slic".

    Returns:
        Tensor [batch].
    \"\"\"
    G = {"dpo": dpo_g, "ipo": ipo_g, "slic": slic_g}
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return G[loss](beta * h)
"""),
("code", """
check_preference_loss(preference_loss)
"""),
("md", """
## Use it

With the policy equal to the reference, h = 0 and the three losses are log 2, 1 and 1. Then
plot your g(β·h) against h for β = 0.1: where does each loss stop pushing?
"""),
("code", """
zero = torch.zeros(1)
for name in ("dpo", "ipo", "slic"):
    print(name, float(preference_loss(zero, zero, zero, zero, beta=0.1, loss=name)[0]))

h = torch.linspace(-20, 30, 300)
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, g in (("dpo", dpo_g), ("ipo", ipo_g), ("slic", slic_g)):
    ax.plot(h, g(0.1 * h), label=name)
ax.set_xlabel("h")
ax.set_ylabel("g(0.1 h)")
ax.legend();
"""),
]

# ------------------------------------------------------------------------------------------------
A2 = [
("md", """
# Assignment a2 — Exact enumeration for a tabular policy

Compute trajectory probabilities exactly: first one trajectory by the chain rule, then all of
them at once for a `TabularPolicy` by walking the tree level by level, then the OOD mass.
Minimal first (a table), then you can compare with the library's general version, which also
handles the RNN.
""" + HOW_TO.format(first="a2.sequence_log_prob", path="lessons/assignments/a2_enumeration.ipynb")),
("code", SETUP + """
from treemdp import TabularPolicy, TreeMDP, in_distribution_mask, paper_dataset
from treemdp.exercises import check_enumerate_log_probs, check_ood_mass, check_sequence_log_prob, hint
from treemdp.training import train
"""),
("md", """
## The objects you work with

A `TabularPolicy` holds one row of logits per state, `policy.logits` [n_states, branching]; the
tree's transition table is `policy.mdp.next_state` [n_states, branching] (state 0 is `s1`,
children are numbered breadth first). `policy.action_log_probs(prefixes)` answers "log-probs of
the next action after each prefix".
"""),
("code", """
mdp = TreeMDP()
policy = TabularPolicy(mdp, seed=0, init_scale=1.0)
print(policy.logits.shape, mdp.next_state.shape)
print(policy.action_log_probs(torch.tensor([[1, 1]])).exp())  # pi(. | s9), the state after (a1, a1)
"""),
("md", """
## Exercise 1 — one trajectory, by the chain rule

log π(a_0, …, a_{d−1}) = Σ_t log π(a_t | a_0 … a_{t−1}).
"""),
("exercise", """
def sequence_log_prob(policy, actions: list[int]) -> torch.Tensor:
    \"\"\"log pi(actions) for one action sequence.

    Args:
        policy: any treemdp policy (uses only policy.action_log_probs).
        actions: list of depth ints in [0, branching).

    Returns:
        Scalar tensor.
    \"\"\"
    # YOUR CODE HERE
    raise NotImplementedError
""", """
def sequence_log_prob(policy, actions: list[int]) -> torch.Tensor:
    \"\"\"log pi(actions) for one action sequence.

    Args:
        policy: any treemdp policy (uses only policy.action_log_probs).
        actions: list of depth ints in [0, branching).

    Returns:
        Scalar tensor.
    \"\"\"
    total = torch.zeros(())
    for t, action in enumerate(actions):
        prefix = torch.tensor(actions[:t], dtype=torch.long).reshape(1, t)
        total = total + policy.action_log_probs(prefix)[0, action]
    return total
"""),
("code", """
check_sequence_log_prob(sequence_log_prob)
"""),
("md", """
## Exercise 2 — every trajectory at once

Calling Exercise 1 for each of the branching^depth trajectories evaluates shared prefixes again and
again. Instead, keep the log-prob of every node at depth t (`b**t` of them, in lexicographic
order) and extend all of them by all `b` actions in one step. Row i of your result must be
trajectory `mdp.trajectories()[i]`.
"""),
("exercise", """
def enumerate_log_probs(policy) -> torch.Tensor:
    \"\"\"Exact log-probability of every trajectory of a TabularPolicy.

    Args:
        policy: a TabularPolicy; use policy.logits [n_states, branching] and
            policy.mdp.next_state [n_states, branching].

    Returns:
        Tensor [branching**depth], in mdp.trajectories() order; logsumexp is 0.
    \"\"\"
    mdp = policy.mdp
    # YOUR CODE HERE
    raise NotImplementedError
""", """
def enumerate_log_probs(policy) -> torch.Tensor:
    \"\"\"Exact log-probability of every trajectory of a TabularPolicy.

    Args:
        policy: a TabularPolicy; use policy.logits [n_states, branching] and
            policy.mdp.next_state [n_states, branching].

    Returns:
        Tensor [branching**depth], in mdp.trajectories() order; logsumexp is 0.
    \"\"\"
    mdp = policy.mdp
    next_state = torch.as_tensor(mdp.next_state)
    states = torch.zeros(1, dtype=torch.long)  # [1]: the root s1
    logp = torch.zeros(1)                      # [1]: log 1
    for t in range(mdp.depth):
        step = torch.log_softmax(policy.logits[states], dim=-1)  # [b**t, b]
        logp = (logp[:, None] + step).reshape(-1)                # [b**(t+1)], child j*b + k of node j
        states = next_state[states].reshape(-1)
    return logp
"""),
("code", """
check_enumerate_log_probs(enumerate_log_probs)
"""),
("md", """
## Exercise 3 — OOD mass

Given the log-probs of all trajectories and a boolean mask of the in-distribution ones, return
the total probability of the others.
"""),
("exercise", """
def ood_mass(logp: torch.Tensor, in_distribution: torch.Tensor) -> torch.Tensor:
    \"\"\"Probability mass off the data.

    Args:
        logp: Tensor [n_trajectories] of log-probabilities.
        in_distribution: BoolTensor [n_trajectories].

    Returns:
        Scalar tensor in [0, 1].
    \"\"\"
    # YOUR CODE HERE
    raise NotImplementedError
""", """
def ood_mass(logp: torch.Tensor, in_distribution: torch.Tensor) -> torch.Tensor:
    \"\"\"Probability mass off the data.

    Args:
        logp: Tensor [n_trajectories] of log-probabilities.
        in_distribution: BoolTensor [n_trajectories].

    Returns:
        Scalar tensor in [0, 1].
    \"\"\"
    return torch.logsumexp(logp[~in_distribution], dim=0).exp()
"""),
("code", """
check_ood_mass(ood_mass)
"""),
("md", """
## Use it

Train a tabular policy (SFT, then DPO) and measure its OOD mass with your own functions. Compare
with `run.summary["final_ood_mass"]` — and with an RNN run: why does only the RNN leak (lesson 4)?
"""),
("code", """
run = train(policy="tabular", daa_steps=100, progress=False)
mask = in_distribution_mask(mdp, paper_dataset())
with torch.no_grad():
    mine = ood_mass(enumerate_log_probs(run.policy), mask)
print(f"OOD mass, mine: {float(mine):.6f}   library: {run.summary['final_ood_mass']:.6f}")
"""),
]

# ------------------------------------------------------------------------------------------------
A3 = [
("md", """
# Assignment a3 — The silent-bug hunt

Four DAA trainers, `A` to `D`, train on the paper's data. Each runs without an error message and
produces plausible-looking numbers. Exactly one is correct; each of the others has a one-line bug
of a kind that really happens (it is in the list `BUGS`). Find which is which from the mass
plots and metrics — then write a sanity check that would have caught them.

Do not read the source of `treemdp.exercises.bugs` before you hand in: it names the bugs.
""" + HOW_TO.format(first="a3.diagnosis", path="lessons/assignments/a3_bug_hunt.ipynb")),
("code", SETUP + """
import math

import pandas as pd

from treemdp.exercises import BUGS, VARIANTS, check_diagnosis, check_sanity_check, hint, mystery_train
from treemdp.plots import plot_masses, plot_trajectories

for name, what in BUGS.items():
    print(f"{name!r}: {what}")
"""),
("md", """
## Run the four trainers

Same settings for all four: first DPO at β = 0.1, then IPO at β = 0.5 (a loss that should
*stop* once h reaches 1/β). Seed 0, 150 DAA steps after the usual SFT.
"""),
("code", """
settings = {"DPO, beta=0.1": dict(loss="dpo", beta=0.1), "IPO, beta=0.5": dict(loss="ipo", beta=0.5)}
results = {(name, variant): mystery_train(variant, daa_steps=150, **kwargs)
           for name, kwargs in settings.items() for variant in VARIANTS}
fig, axes = plt.subplots(2, 4, figsize=(20, 8), sharex=True, sharey=True)
for (name, variant), ax in zip(results, axes.flat):
    plot_trajectories(results[name, variant].history, ax, phase="daa", title=f"trainer {variant}: {name}")
fig.tight_layout()
"""),
("md", """
The first and last logged DAA step of each trainer (DPO, β = 0.1):
"""),
("code", """
columns = ["loss", "chosen_prob", "rejected_prob", "ood_mass", "kl_to_reference"]
table = {}
for variant in VARIANTS:
    daa = results["DPO, beta=0.1", variant].metrics.query("phase == 'daa'")
    for label, row in (("first", daa.iloc[0]), ("last", daa.iloc[-1])):
        table[variant, label] = row[columns]
pd.DataFrame(table).T
"""),
("md", """
## Explore

Does the picture change with the loss or β? Try the trainers on other settings before you decide.
"""),
("code", """
variant = widgets.Dropdown(options=list(VARIANTS), value="A", description="trainer")
loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="dpo", description="loss")
beta = widgets.SelectionSlider(options=[0.01, 0.1, 0.5], value=0.1, description="beta")


def draw(fig):
    result = mystery_train(variant.value, loss=loss.value, beta=beta.value, daa_steps=150)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    plot_trajectories(result.history, top, phase="daa", title=f"trainer {variant.value}, {loss.value} beta={beta.value}")
    plot_masses(result.history, bottom, phase="daa")


display(live_plot(draw, [variant, loss, beta], figsize=(10, 6)))
"""),
("md", """
## Exercise 1 — the diagnosis

Map every trainer to one of the names in `BUGS` (exactly one is `"no bug"`). Write one sentence
per trainer, in a comment, saying which plot or number convinced you.
"""),
("exercise", """
diagnosis = {
    "A": "?",  # YOUR CODE HERE: one of BUGS' names, and why
    "B": "?",
    "C": "?",
    "D": "?",
}
""", """
diagnosis = {
    "A": "reference follows the policy",   # loss stays at log 2 while chosen runs to 1: h never grows
    "B": "no bug",                         # loss falls, chosen up, rejected down, OOD bump then drains
    "C": "swapped chosen and rejected",    # the rejected trajectory (a0,a0,a0) takes the mass
    "D": "reference is the policy",        # nothing moves: h is identically 0, the loss is flat
}
"""),
("code", """
check_diagnosis(diagnosis)
"""),
("md", """
## Exercise 2 — a sanity check that would have caught them

Write `sanity_check(result)` returning a list of problems (strings; empty when the run looks
healthy) from `result.metrics` (one row per logged step; columns `phase`, `step`, `loss`,
`chosen_prob`, `rejected_prob`, `ood_mass`, `kl_to_reference`, …). It must flag the three buggy
trainers and pass bug-free runs of all three losses. Use only what any trainer logs: no peeking
at which variant it is.
"""),
("exercise", """
def sanity_check(result) -> list[str]:
    \"\"\"Problems seen in a run's DAA phase; [] if it looks healthy.

    Args:
        result: a RunResult (from train or mystery_train).

    Returns:
        list of one-line descriptions.
    \"\"\"
    daa = result.metrics.query("phase == 'daa'")
    problems = []
    # YOUR CODE HERE
    raise NotImplementedError
""", """
def sanity_check(result) -> list[str]:
    \"\"\"Problems seen in a run's DAA phase; [] if it looks healthy.

    Args:
        result: a RunResult (from train or mystery_train).

    Returns:
        list of one-line descriptions.
    \"\"\"
    daa = result.metrics.query("phase == 'daa'")
    problems = []
    first, last = daa.iloc[0], daa.iloc[-1]

    def margin(row):  # log(chosen / rejected), safe at probability 0
        return math.log(max(row["chosen_prob"], 1e-300)) - math.log(max(row["rejected_prob"], 1e-300))

    if margin(last) <= margin(first):
        problems.append("the chosen/rejected log-ratio did not grow: is the preference the right way round?")
    if last["loss"] >= first["loss"] - 1e-6:
        problems.append("the loss never fell below its step-0 value g(0): is the reference frozen?")
    return problems
"""),
("code", """
check_sanity_check(sanity_check)
"""),
("md", """
## Reflect

Which single plot would you now add to every DAA training dashboard, and why? (A few sentences in
this cell.)
"""),
]

ASSIGNMENTS = {
    "a1_losses.ipynb": ("a1", A1),
    "a2_enumeration.ipynb": ("a2", A2),
    "a3_bug_hunt.ipynb": ("a3", A3),
}
