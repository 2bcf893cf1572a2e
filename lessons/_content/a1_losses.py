# %% [markdown]
# # Assignment a1 — The three losses and `preference_loss`
#
# Implement the unified direct alignment loss of the paper (eq. 4): the three convex functions g of
# DPO, IPO and SLiC, then the per-example loss g(β·h) from four sequence log-probabilities.
#
# **How to work.** Each exercise is a function stub with its signature and shapes; fill in the gap
# marked `YOUR CODE HERE` (delete the `raise NotImplementedError`), then run the check cell below
# it. A check compares your function with the library's own on random inputs and answers *not
# attempted*, *incorrect because …*, or *correct*. Stuck? `hint("a1.dpo_g")` gives a first hint,
# `hint("a1.dpo_g", 2)` the next. When you are done, check the whole notebook from a terminal:
#
#     treemdp grade lessons/assignments/a1_losses.ipynb
#
# (it runs the notebook top to bottom in a fresh kernel, so make sure it does).

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

from treemdp.exercises import check_dpo_g, check_ipo_g, check_preference_loss, check_slic_g, hint


# %% [markdown]
# ## Exercise 1 — DPO's g
#
# DPO models P(chosen ≻ rejected) = σ(β·h) (Bradley–Terry) and minimises its negative log:
# g(x) = −log σ(x). Stay in log space: for x = −100, σ(x) underflows but the loss is a perfectly
# good 100.

# %% exercise="a1.dpo_g"
def dpo_g(x: torch.Tensor) -> torch.Tensor:
    """DPO's g, elementwise: -log sigmoid(x).

    Args:
        x: Tensor [batch], the scaled margin beta * h.

    Returns:
        Tensor [batch], differentiable.
    """
    ### BEGIN SOLUTION
    return -torch.nn.functional.logsigmoid(x)
    ### END SOLUTION


# %%
check_dpo_g(dpo_g)


# %% [markdown]
# ## Exercise 2 — IPO's g
#
# IPO regresses the scaled margin onto a target instead of pushing it to infinity. In this paper's
# convention g(x) = (x − 1)², so the optimum is β·h = 1. (The IPO paper writes (h − 1/(2τ))²; see
# `treemdp.losses.ipo_g` for the mapping — after you are done.)

# %% exercise="a1.ipo_g"
def ipo_g(x: torch.Tensor) -> torch.Tensor:
    """IPO's g in the paper's convention, elementwise: (x - 1)^2.  [batch] -> [batch], differentiable."""
    ### BEGIN SOLUTION
    return (x - 1) ** 2
    ### END SOLUTION


# %%
check_ipo_g(ipo_g)


# %% [markdown]
# ## Exercise 3 — SLiC's g
#
# SLiC uses a hinge with margin 1: g(x) = max(0, 1 − x). No loss, and no gradient, once β·h ≥ 1.

# %% exercise="a1.slic_g"
def slic_g(x: torch.Tensor) -> torch.Tensor:
    """SLiC's hinge, elementwise: max(0, 1 - x).  [batch] -> [batch], differentiable."""
    ### BEGIN SOLUTION
    return torch.relu(1 - x)
    ### END SOLUTION


# %%
check_slic_g(slic_g)


# %% [markdown]
# ## Exercise 4 — `preference_loss`
#
#     h = [log π(y_w) − log ref(y_w)] − [log π(y_l) − log ref(y_l)]      (eq. 4)
#     loss = g(β · h)                                                     one value per example
#
# Return the per-example losses (shape [batch]); the trainer takes the mean. Use your three g.

# %% exercise="a1.preference_loss"
def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    beta: float, loss: str = "dpo") -> torch.Tensor:
    """Per-example direct alignment loss g(beta * h).

    Args:
        policy_chosen_logps: log pi(y_w), Tensor [batch].
        policy_rejected_logps: log pi(y_l), Tensor [batch].
        ref_chosen_logps: log ref(y_w), Tensor [batch].
        ref_rejected_logps: log ref(y_l), Tensor [batch].
        beta: inverse temperature > 0.
        loss: "dpo", "ipo" or "slic".

    Returns:
        Tensor [batch], differentiable in the policy's log-probs (training moves the policy
        through that gradient; the reference's are constants).
    """
    G = {"dpo": dpo_g, "ipo": ipo_g, "slic": slic_g}
    ### BEGIN SOLUTION
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return G[loss](beta * h)
    ### END SOLUTION


# %%
check_preference_loss(preference_loss)

# %% [markdown]
# ## Use it
#
# With the policy equal to the reference, h = 0 and the three losses are log 2, 1 and 1. Then
# plot your g(β·h) against h for β = 0.1: where does each loss stop pushing?

# %%
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
