# %% [markdown]
# # Lesson 8 — Over-optimization you can compute
#
# **Goal.** See the title result of Rafailov et al. (2024) — *reward over-optimization*: as a
# direct alignment algorithm moves away from the reference, true quality first rises, then falls —
# computed exactly, with nothing sampled. On a tree we can give every answer a *gold* reward r*,
# draw the data from it, train, and then read off at every step the exact gold reward, the exact
# win rate against the reference and the exact KL. We can also compute what no experiment on a
# language model can: the best quality reachable at each KL (the *frontier*), and best-of-n
# exactly.
#
# **Plan.** a gold reward and data drawn from it → one DPO run, exactly → the hump as β and N move
# → the frontier → best-of-n vs DAA at equal KL → Gao et al.'s form → summary → exercises →
# glossary.

# %%
# %matplotlib inline
import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from treemdp.lab import BestOfN, LabConfig, frontier, kl_bound, run_lab, tilted_log_probs
from treemdp.lab.fits import FORMS, fit_form
from treemdp.plots import live_plot

# %% [markdown]
# ## 1. A gold reward and data drawn from it
#
# The tree has 4 actions and depth 4: 256 trajectories ("answers"). The gold reward r*(y) is a
# seeded random number per answer. The lab draws 64 SFT demonstrations from softmax(r*), trains
# the reference by SFT on them, then draws N preference pairs from the reference and labels each
# with the Bradley-Terry model under r*: P(y1 preferred) = σ(r*(y1) − r*(y2)). `run_lab` does all
# of it; every run is a `LabConfig`.

# %%
base = LabConfig(tree="4x4", gold="random", pairs=64, loss="dpo", beta=0.1, steps=300, seed=0)
(run,) = run_lab([base])
ref, gold = run.ref_probs, run.gold.values
print(f"E_ref[r*] = {float(ref @ gold):.3f}  (best answer: {float(gold.max()):.3f}); "
      f"{len(run.dataset.preferences)} pairs; reference entropy {run.summary['ref_entropy']:.2f} nats")
run.curve.iloc[[0, 10, 50, 100, 200, 300]][["step", "kl_to_reference", "gold_gain", "win_rate", "ood_mass"]]

# %% [markdown]
# ## 2. One DPO run, exactly
#
# Every row above is exact: `gold_gain` = E_π[r*] − E_ref[r*], `win_rate` = P[r*(y) > r*(y')] + ½ P[=]
# with y ~ π and y' ~ ref (the toy's GPT-4 judge), `kl_to_reference` = KL(π‖ref). Plotted against
# d = √KL, the win rate rises, peaks and falls: the loss keeps improving on its pairs while the
# policy moves to answers whose gold reward is worse. Black: the *frontier* (section 4), the best
# win rate any policy reaches at that KL.

# %%
fig, ax = plt.subplots(figsize=(8, 4))
front = frontier(torch.log(ref), gold, kind="win")
ax.plot(front["sqrt_kl"], front["win_gain"] + 0.5, color="k", label="frontier")
ax.plot(run.curve["sqrt_kl"], run.curve["win_rate"], label="DPO, beta 0.1, N = 64")
ax.axhline(0.5, color="0.6", lw=0.8)
ax.set_xlabel("sqrt KL(pi || ref)")
ax.set_ylabel("gold win rate against ref")
ax.legend()
print(f"peak win rate {0.5 + run.summary['peak_win_gain']:.3f} at KL {run.summary['peak_win_kl']:.2f}; "
      f"final {0.5 + run.summary['final_win_gain']:.3f} at KL {run.summary['final_kl']:.2f}")

# %% [markdown]
# ## 3. The hump as β and N move, live
#
# Pick the objective, β and the number of pairs N; the lab reruns from scratch (data, SFT, DAA).
# Smaller β lets the policy travel further; more pairs make the implicit reward a better proxy, so
# the peak climbs; whatever the setting, the loss keeps falling after the win rate has peaked.
#
# *How the live plot works:* `treemdp.plots.live_plot` calls the drawing function again whenever a
# control changes; it re-runs a library function with the new value and redraws the figure.

# %%
loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value="dpo", description="loss")
beta = widgets.SelectionSlider(options=[0.01, 0.05, 0.1, 0.5], value=0.1, description="beta")
pairs = widgets.SelectionSlider(options=[16, 64, 256], value=64, description="N pairs")


def draw_hump(fig):
    (result,) = run_lab([LabConfig(tree="4x4", pairs=pairs.value, loss=loss.value, beta=beta.value, steps=300)])
    left, right = fig.subplots(1, 2)
    left.plot(front["sqrt_kl"], front["win_gain"] + 0.5, color="k", label="frontier")
    left.plot(result.curve["sqrt_kl"], result.curve["win_rate"], label=f"{loss.value}, beta {beta.value}, N {pairs.value}")
    left.set_xlabel("sqrt KL(pi || ref)")
    left.set_ylabel("gold win rate against ref")
    left.legend(fontsize=8)
    right.plot(result.curve["step"], result.curve["loss"], color="tab:red")
    right.set_xlabel("DAA step")
    right.set_ylabel("training loss (on the pairs)")
    right.set_title(f"win rate peaks at step {result.summary['peak_win_step']}", fontsize=10)


display(live_plot(draw_hump, [loss, beta, pairs], figsize=(11, 4)))

# %% [markdown]
# ## 4. The frontier: the best quality at each KL
#
# Among all distributions π, the one that maximises E_π[r*] − λ·KL(π‖ref) is
# π*_λ ∝ ref · exp(r*/λ) (the Gibbs variational principle, the same algebra as the optimum of
# KL-regularised RLHF). Sweeping λ traces the upper envelope of every method's gold-vs-KL curve.
# For the win rate, which is linear in π with per-answer score G(y) = ref(r* < r*(y)) + ½ref(=),
# the frontier tilts by G instead. Move λ: the point slides along the frontier and the bars show
# π*_λ against ref (answers sorted by r*).

# %%
lam = widgets.FloatLogSlider(value=0.5, base=10, min=-2, max=1, step=0.1, description="lambda")
order = torch.argsort(gold)


def draw_frontier(fig):
    tilted = tilted_log_probs(torch.log(ref), gold, lam.value).exp()
    kl = float((tilted * (tilted / ref).log()).sum())
    gain = float(tilted @ gold - ref @ gold)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.6))
    g = frontier(torch.log(ref), gold, kind="gold")
    left.plot(g["sqrt_kl"], g["gold_gain"], color="k")
    left.plot([np.sqrt(kl)], [gain], "o", color="tab:red", ms=9)
    left.set_xlabel("sqrt KL(pi || ref)")
    left.set_ylabel("E_pi[r*] - E_ref[r*]")
    left.set_title(f"lambda = {lam.value:.3g}: KL {kl:.2f}, gain {gain:.2f}", fontsize=10)
    right.bar(range(len(ref)), ref[order], color="0.7", label="ref")
    right.bar(range(len(ref)), tilted[order], color="tab:red", alpha=0.6, label="ref * exp(r*/lambda) / Z")
    right.set_xlabel("answers, sorted by r*")
    right.legend(fontsize=8)


display(live_plot(draw_frontier, [lam], figsize=(11, 4)))

# %% [markdown]
# ## 5. Best-of-n vs DAA at equal KL
#
# Best-of-n draws n answers from ref and keeps the one a proxy reward scores highest. Exactly: group
# answers by equal proxy value; the best of n lands in a group with probability F^n − F_below^n,
# where F and F_below are the reference probabilities of a proxy value at-or-below and below the
# group's. Its KL is at most log n − (n−1)/n. Here the proxy is the gold reward itself and, for a
# fair comparison with DPO, DPO's own implicit reward β·log(π/ref) at its final step. Move n and
# compare with the DPO run of section 2 at the same KL.

# %%
n = widgets.SelectionSlider(options=[1, 2, 4, 8, 16, 64, 256, 1024], value=16, description="n")
implicit = torch.log(run.final_probs / ref)  # DPO's implicit reward, up to beta


def draw_bon(fig):
    ax = fig.subplots()
    ax.plot(run.curve["kl_to_reference"], run.curve["gold_gain"], color="tab:blue", label="DPO over its steps")
    for name, proxy, color in (("best-of-n under r*", gold, "tab:green"),
                               ("best-of-n under DPO's implicit reward", implicit, "tab:orange")):
        bon = BestOfN(ref, proxy)
        ns = [1, 2, 4, 8, 16, 64, 256, 1024]
        ax.plot([bon.kl(k) for k in ns], [bon.expected(gold, k) - float(ref @ gold) for k in ns], "o-", ms=3,
                color=color, label=name)
        ax.plot([bon.kl(n.value)], [bon.expected(gold, n.value) - float(ref @ gold)], "s", ms=10, color=color)
    ax.axvline(float(kl_bound(n.value)), color="0.5", ls="--", label=f"log n - (n-1)/n for n = {n.value}")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("KL(pi || ref)")
    ax.set_ylabel("E_pi[r*] - E_ref[r*]")
    ax.legend(fontsize=8)


display(live_plot(draw_bon, [n], figsize=(9, 4)))

# %% [markdown]
# ## 6. Gao et al.'s functional form
#
# Gao et al. (2023) fit the gain R over the reference against d = √KL with R(d) = d(α − b log d)
# for RL and d(α − b d) for best-of-n; the DAA paper fits the RL form to DAA win rates and
# compares it with a quadratic in KL. All three are linear in their two parameters, so least
# squares fits them exactly on the same points; `treemdp lab fit` does it for whole grids, with a
# bootstrap over seeds.

# %%
d, gain = run.curve["sqrt_kl"].to_numpy(), run.curve["win_gain"].to_numpy()
for form in ("rl", "bon", "quad_kl"):
    theta, rmse = fit_form(d, gain, form)
    print(f"{form:8} R(d) = {FORMS[form].formula:22}  params {theta.round(3)}  RMSE {rmse:.4f}")

# %% [markdown]
# ## Summary
#
# - With a gold reward on every answer, over-optimization is a number, not an estimate: the win rate
#   against the reference rises, peaks and falls while the DAA loss on its pairs keeps falling.
# - The frontier ref·exp(r*/λ)/Z is the best gold reward any policy reaches at a given KL; every
#   run lies below it, and the gap is what the proxy (finite pairs, a shared-weight policy) costs.
# - Best-of-n is computed exactly from the sorted CDF of the reference, ties included; its KL sits
#   at or below log n − (n−1)/n, with equality only for a continuum of distinct rewards.
# - Gao et al.'s forms are linear least-squares fits of the gain against √KL; how well each fits is
#   measured on the same points (figures/README.md reports what holds in the toy and what does not).
#
# ## Exercises
#
# 1. (Auto-checked.) Write `bon_kl(ref, reward, n)`: the exact KL(π_bon‖ref) with ties. Check it
#    below; `hint("l8.bon_kl")` helps, `hint("l8.bon_kl", 2)` more.
# 2. Rerun section 3 with `label_temperature=0` (deterministic labels). Does the peak move?
# 3. Use `gold="spurious"` and plot `spurious_r2_ref` against √KL: how much of the implicit reward
#    does the simple feature explain early, and late?
# 4. Run `LabConfig(method="rlhf", ...)`: where does classical RLHF land relative to the frontier?

# %% exercise="l8.bon_kl"
def bon_kl(ref, reward, n):
    """Exact KL(pi_bon || ref) of best-of-n under ``reward``.

    Args:
        ref: float64 tensor [T], the reference probabilities (sum to 1).
        reward: tensor [T], the proxy reward (equal values are ties).
        n: the number of draws.

    Returns:
        A float.
    """
    ### BEGIN SOLUTION
    kl = 0.0
    for value in reward.unique():
        mass = float(ref[reward == value].sum())
        F = float(ref[reward <= value].sum())
        P = F ** n - (F - mass) ** n
        if P > 0:
            kl += P * np.log(P / mass)
    return kl
    ### END SOLUTION


# %%
from treemdp.exercises import check_bon_kl, hint  # noqa: E402

check_bon_kl(bon_kl)

# %% [markdown]
# ## Glossary
#
# | name | meaning |
# |---|---|
# | gold reward r* | the true quality of every answer (`make_gold`: random, additive, spurious, yours) |
# | `LabConfig`, `run_lab` | one lab run's settings; runs many of them batched on the engine |
# | gain | E_π[r*] − E_ref[r*] or win rate − ½: R(0) = 0 at the reference |
# | win rate | P[r*(y) > r*(y')] + ½P[=], y ~ π, y' ~ ref; ½ for π = ref |
# | frontier | ref·exp(r*/λ)/Z (or ref·exp(G/λ)/Z for the win rate): the best value at each KL |
# | best-of-n | keep the proxy's favourite of n draws from ref; `BestOfN` computes it exactly |
# | d = √KL | the x axis of Gao et al.'s forms d(α − b log d) and d(α − b d) |
# | over-optimization | the proxy keeps improving while the gold reward falls |
