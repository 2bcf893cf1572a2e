# %% [markdown]
# # Lesson 8 — Over-optimization you can compute
#
# **Goal.** See the title result of Rafailov et al. (2024) — *reward over-optimization*: as a
# direct alignment algorithm moves away from the reference, true quality first rises, then falls —
# computed exactly, with nothing sampled. On a tree we can give every answer a *gold* reward r*,
# draw the data from it, train, and read off at every step the exact gold reward, the exact win
# rate against the reference and the exact KL. We can also compute what no experiment on a language
# model can: the best quality reachable at each KL (the *frontier*), and best-of-n exactly.
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
from treemdp.lab.store import grid
from treemdp.plots import live_plot

# %% [markdown]
# ## 1. A gold reward and data drawn from it
#
# The tree has 4 actions and depth 4: 256 trajectories ("answers"). The gold reward r*(y) is a
# seeded random number per answer. The lab draws 64 SFT demonstrations from softmax(r*), trains
# the reference by SFT on them, then draws N preference pairs from the reference and labels each
# with the Bradley-Terry model under r*: P(y1 preferred) = σ(r*(y1) − r*(y2)). `run_lab` does all
# of it for a list of `LabConfig`s, stacked on the training engine: below, the 36 runs behind
# section 3's controls (3 objectives × 4 betas × 3 values of N), all at once.

# %%
configs = grid(LabConfig(tree="4x4", gold="random", steps=300, seed=0),
               loss=["dpo", "ipo", "slic"], beta=[0.01, 0.05, 0.1, 0.5], pairs=[16, 64, 256])
runs = {(c.loss, c.beta, c.pairs): r for c, r in zip(configs, run_lab(configs))}
# the DPO run of the grid whose win rate falls furthest after its peak: a clear hump to start from
DEFAULT = max((key for key in runs if key[0] == "dpo"), key=lambda key: runs[key].summary["win_drop"])
run = runs[DEFAULT]
ref, gold = run.ref_probs, run.gold.values
print(f"section 2 shows DPO, beta {DEFAULT[1]}, N = {DEFAULT[2]}: the DPO run of the grid whose win rate drops most")
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
front = frontier(torch.log(ref), gold, kind="win")
fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(front["sqrt_kl"], front["win_gain"] + 0.5, color="k", label="frontier")
ax.plot(run.curve["sqrt_kl"], run.curve["win_rate"], label=f"DPO, beta {DEFAULT[1]}, N = {DEFAULT[2]}")
ax.axhline(0.5, color="0.6", lw=0.8)
ax.set_xlabel("sqrt KL(pi || ref)")
ax.set_ylabel("gold win rate against ref")
ax.legend()
print(f"peak win rate {0.5 + run.summary['peak_win_gain']:.3f} at step {run.summary['peak_win_step']} "
      f"(KL {run.summary['peak_win_kl']:.2f}); final {0.5 + run.summary['final_win_gain']:.3f} at KL "
      f"{run.summary['final_kl']:.2f}")
best = int(gold.argmax())
print(f"the frontier ends at sqrt KL {front['sqrt_kl'].max():.2f} = sqrt(-log ref(y*)) = "
      f"{np.sqrt(-np.log(float(ref[best]))):.2f}, with y* the best answer (ref(y*) = {float(ref[best]):.3f})")

# %% [markdown]
# **Why the frontier stops.** The frontier's policies tilt ref towards better answers; as the tilt
# grows they put all their mass on the single best answer y*. That policy is as far from ref as a
# policy that improves the gold reward can get: KL(δ_{y*}‖ref) = −log ref(y*), the number printed
# above. Past it no policy is better, so the black curve ends there; a run can travel further (to
# the right of the end) only by getting worse.

# %% [markdown]
# ## 3. The hump as β and N move, live
#
# Pick the objective, β and the number of pairs N. Does a smaller β let the policy travel further?
# It depends on the loss: IPO and SLiC stop pushing once β·h reaches their target (1/β for IPO's
# optimum, the hinge's margin for SLiC), so a smaller β moves the target out; DPO's loss never
# stops pushing, so β changes its pace more than where it ends. The cell after the plot counts it
# in this grid, loss by loss. More pairs make the implicit reward a better proxy, and the loss keeps
# falling after the win rate has peaked.
#
# *How the live plot works:* the 36 runs behind the controls were computed once, above, in one
# batched call. A control only picks a precomputed run, and `treemdp.plots.live_plot` changes the
# data of the lines already drawn, so the picture follows the control at once.

# %%
loss = widgets.Dropdown(options=["dpo", "ipo", "slic"], value=DEFAULT[0], description="loss")
beta = widgets.SelectionSlider(options=[0.01, 0.05, 0.1, 0.5], value=DEFAULT[1], description="beta")
pairs = widgets.SelectionSlider(options=[16, 64, 256], value=DEFAULT[2], description="N pairs")


def setup_hump(fig):
    left, right = fig.subplots(1, 2)
    left.plot(front["sqrt_kl"], front["win_gain"] + 0.5, color="k", label="frontier")
    left.axhline(0.5, color="0.6", lw=0.8)
    left.set(xlim=(0, 3.6), ylim=(0.0, 1.0), xlabel="sqrt KL(pi || ref)", ylabel="gold win rate against ref")
    right.set(xlim=(0, 300), ylim=(0, 1.05), xlabel="DAA step", ylabel="training loss on the pairs")
    return {"win": left.plot([], [], label="the run")[0], "loss": right.plot([], [], color="tab:red")[0],
            "left": left, "right": right}


def update_hump(state):
    result = runs[loss.value, beta.value, pairs.value]
    state["win"].set_data(result.curve["sqrt_kl"], result.curve["win_rate"])
    state["loss"].set_data(result.curve["step"], result.curve["loss"] / result.curve["loss"].iloc[0])
    state["left"].set_title(f"{loss.value}, beta {beta.value}, N {pairs.value}: peak win rate "
                            f"{0.5 + result.summary['peak_win_gain']:.2f}", fontsize=10)
    state["right"].set_title(f"loss / its start; the win rate peaks at step {result.summary['peak_win_step']}",
                             fontsize=10)


display(live_plot(update_hump, [loss, beta, pairs], setup=setup_hump, figsize=(11, 4)))

# %%
travel = {key: float(r.curve["sqrt_kl"].max()) for key, r in runs.items()}  # how far each run got
BETAS, NS = beta.options, pairs.options
further = {name: sum(travel[name, BETAS[0], N] > travel[name, BETAS[-1], N] for N in NS) for name in loss.options}
monotone = {name: sum(all(travel[name, a, N] > travel[name, b, N] for a, b in zip(BETAS, BETAS[1:])) for N in NS)
            for name in loss.options}
for name in loss.options:
    print(f"{name}: beta {BETAS[0]} travels further (max sqrt KL) than beta {BETAS[-1]} at {further[name]} of "
          f"{len(NS)} N; further at every smaller beta at {monotone[name]} of {len(NS)} N")

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
gold_front = frontier(torch.log(ref), gold, kind="gold")


def setup_frontier(fig):
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.6))
    left.plot(gold_front["sqrt_kl"], gold_front["gold_gain"], color="k")
    left.set(xlabel="sqrt KL(pi || ref)", ylabel="E_pi[r*] - E_ref[r*]")
    right.bar(range(len(ref)), ref[order], color="0.7", label="ref")
    bars = right.bar(range(len(ref)), ref[order], color="tab:red", alpha=0.6, label="ref * exp(r*/lambda) / Z")
    right.set(ylim=(0, 1), xlabel="answers, sorted by r*")
    right.legend(fontsize=8)
    return {"point": left.plot([], [], "o", color="tab:red", ms=9)[0], "bars": bars, "left": left}


def update_frontier(state):
    tilted = tilted_log_probs(torch.log(ref), gold, lam.value).exp()
    kl = float((tilted * (tilted / ref).log()).sum())
    gain = float(tilted @ gold - ref @ gold)
    state["point"].set_data([np.sqrt(kl)], [gain])
    for bar, height in zip(state["bars"], tilted[order].tolist()):
        bar.set_height(height)
    state["left"].set_title(f"lambda = {lam.value:.3g}: KL {kl:.2f}, gain {gain:.2f}", fontsize=10)


display(live_plot(update_frontier, [lam], setup=setup_frontier, figsize=(11, 4)))

# %% [markdown]
# ## 5. Best-of-n vs DAA at equal KL
#
# Best-of-n draws n answers from ref and keeps the one a proxy reward scores highest. Exactly: group
# answers by equal proxy value; the best of n lands in a group with probability F^n − F_below^n,
# where F and F_below are the reference probabilities of a proxy value at-or-below and below the
# group's. Its KL is at most log n − (n−1)/n. Here the proxy is the gold reward itself and, for a
# fair comparison with DPO, DPO's own implicit reward β·log(π/ref) at its final step. Move n and
# compare with the DPO run of section 2 at the same KL. Best-of-n's KL stops growing where its
# proxy's favourite answer takes all the mass: −log ref(that answer), far below the bound for large n.

# %%
n = widgets.SelectionSlider(options=[1, 2, 4, 8, 16, 64, 256, 1024], value=16, description="n")
implicit = torch.log(run.final_probs / ref)  # DPO's implicit reward, up to beta
proxies = {"best-of-n under r*": gold, "best-of-n under DPO's implicit reward": implicit}
bon_points = {}
for name, proxy in proxies.items():  # every n, once
    bon = BestOfN(ref, proxy)
    bon_points[name] = {k: (bon.kl(k), bon.expected(gold, k) - float(ref @ gold)) for k in n.options}


def setup_bon(fig):
    ax = fig.subplots()
    ax.plot(run.curve["kl_to_reference"], run.curve["gold_gain"], color="tab:blue", label="DPO over its steps")
    gains = [g for points in bon_points.values() for _, g in points.values()] + run.curve["gold_gain"].tolist()
    ax.set_ylim(min(gains + [0.0]) - 0.05, max(gains) + 0.05)
    state = {"ax": ax, "bound": ax.axvline(0, color="0.5", ls="--", label="log n - (n-1)/n")}
    for name, color in zip(proxies, ("tab:green", "tab:orange")):
        kl, gain = zip(*bon_points[name].values())
        ax.plot(kl, gain, "o-", ms=3, color=color, label=name)
        state[name] = ax.plot([], [], "s", ms=10, color=color)[0]
    ax.set(xscale="symlog", xlabel="KL(pi || ref)", ylabel="E_pi[r*] - E_ref[r*]")
    ax.legend(fontsize=8)
    return state


def update_bon(state):
    for name in proxies:
        kl, gain = bon_points[name][n.value]
        state[name].set_data([kl], [gain])
    bound = float(kl_bound(n.value))
    state["bound"].set_xdata([bound] * 2)
    farthest = max([run.curve["kl_to_reference"].max()] + [k for points in bon_points.values() for k, _ in points.values()])
    state["ax"].set_xlim(0, 1.3 * max(farthest, bound))  # the bound stays in view for every n
    state["ax"].set_title(f"n = {n.value}: the squares; dashed: the KL bound log n - (n-1)/n = {bound:.2f}",
                          fontsize=10)


display(live_plot(update_bon, [n], setup=setup_bon, figsize=(9, 4)))

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
# 1. (Auto-checked.) Write `bon_kl(ref, reward, n)` below: the exact KL(π_bon‖ref), ties included.
#    The cell after it checks your answer; `hint("l8.bon_kl")` helps, `hint("l8.bon_kl", 2)` more.
# 2. Rerun section 1 with `label_temperature=0` (deterministic labels). Does the peak move?
# 3. Use `gold="spurious"` and plot `spurious_r2_ref` against √KL: how much of the implicit reward
#    does the simple feature explain early, and late?
# 4. Run `LabConfig(method="rlhf", ...)`: where does classical RLHF land relative to the frontier?

# %%
def bon_kl(ref, reward, n):
    """Exact KL(pi_bon || ref) of best-of-n under ``reward``.

    Args:
        ref: float64 tensor [T], the reference probabilities (sum to 1).
        reward: tensor [T], the proxy reward (equal values are ties).
        n: the number of draws.

    Returns:
        A float.
    """
    # YOUR CODE HERE
    raise NotImplementedError


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
