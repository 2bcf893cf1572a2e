"""One figure per neighbouring result, drawn by ``treemdp reproduce`` (see figures/README.md).

Each function runs its experiment (or reads the paper sweep ``reproduce`` trained), draws at a
fixed size (:data:`SIZES`), states its settings at the foot, and saves PNG + PDF. :data:`FULL` and
:data:`QUICK` (pinned in :mod:`treemdp.experiments`) size them (``reproduce --quick`` uses the small ones).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..experiments import PAPER, PhenPlan
from ..experiments import PHEN_FULL as FULL
from ..experiments import PHEN_QUICK as QUICK
from ..figures import settings_text, sweep_results
from ..plots import pyplot
from ..style import figure, footer, save
from ..tree import TreeMDP, paper_dataset

#: Figure name -> (width, height) in inches.
SIZES = {
    "phen_displacement": (15, 5.2),
    "phen_squeezing": (16, 8),
    "phen_ipo": (13, 4.8),
    "phen_theory": (16, 4.8),
    "phen_explain": (18, 5.2),
    "phen_unseen": (16, 5.4),
}


def _figure(name: str):
    return figure(SIZES[name])


def _paper_runs(folder) -> pd.DataFrame:
    table = sweep_results(folder)
    return table.sort_values(["loss", "beta", "seed"]).reset_index(drop=True)


# ----- 1. likelihood displacement ------------------------------------------------------------------------
def figure_displacement(out, plan: PhenPlan = FULL, *, progress: bool = False) -> Path:
    """Left: the single-token experiment (how often and how far log π(y+) falls, per arm); middle:
    which token gains vs the predicted one; right: CHES vs the fall of log π(y+) over random pairs."""
    from .displacement import ches_correlations, ches_experiment, single_token_experiment
    tokens = single_token_experiment(seeds=plan.token_seeds, progress=progress)
    pairs = ches_experiment(seeds=plan.ches_seeds, demos=plan.ches_demos, steps=plan.ches_steps, progress=progress)
    rho = ches_correlations(pairs)
    fig = _figure("phen_displacement")
    left, middle, right = fig.subplots(1, 3, width_ratios=(1.2, 0.9, 1.3))
    arms = list(tokens.groupby(["head_scale", "pair"], sort=False))
    for i, ((scale, kind), part) in enumerate(arms):
        x = i + np.linspace(-0.25, 0.25, len(part))
        left.scatter(x, part["lowest_change"], s=10, color="tab:red" if kind == "near-synonyms" else "tab:blue", alpha=0.7)
    left.set_xticks(range(len(arms)), [f"head x{scale:g}\n{kind}\nfell in {int(part['fell'].sum())}/{len(part)}"
                                       for (scale, kind), part in arms], fontsize=8)
    left.axhline(0, color="0.5", lw=0.8)
    left.set_ylabel("lowest change of log π(y+) during DPO")
    left.set_title("single-token answers (depth-1 tree, 8 tokens): prefer 0 over 1", fontsize=10)
    fell = tokens[tokens["fell"]]
    labels, hits, totals = [], [], []
    for (scale, kind), part in fell.groupby(["head_scale", "pair"], sort=False):
        labels.append(f"x{scale:g} {kind}")
        hits.append(int((part["winner"] == part["predicted_gainer"]).sum()))
        totals.append(len(part))
    if labels:
        middle.bar(range(len(labels)), [h / t for h, t in zip(hits, totals)], color="tab:purple")
        for i, (h, t) in enumerate(zip(hits, totals)):
            middle.text(i, h / t + 0.02, f"{h}/{t}", ha="center", fontsize=8)
        middle.set_xticks(range(len(labels)), labels, fontsize=8)
    chance = 1 / (8 - 2)
    middle.axhline(chance, color="0.4", ls="--", lw=1)
    middle.text(-0.4, chance + 0.02, "chance (1 of 6)", fontsize=8, color="0.3")
    middle.set_ylim(0, 1.05)
    middle.set_ylabel("runs where the top gainer = argmax ⟨W_z, W+ − W−⟩")
    middle.set_title("runs where y+ fell: is the gainer the predicted token?", fontsize=10)
    colors = pyplot().get_cmap("tab10")
    for k, (seed, part) in enumerate(pairs.groupby("seed")):
        right.scatter(part["ches"], part["final_change"], s=12, color=colors(k % 10), alpha=0.8,
                      label=f"seed {seed}: ρ = {rho.loc[rho['seed'] == seed, 'rho_ches'].iloc[0]:+.2f}")
    right.axhline(0, color="0.5", lw=0.8)
    right.set_xlabel("CHES(y+, y−) at the reference (after SFT)")
    right.set_ylabel("change of log π(y+) after DPO")
    right.legend(fontsize=7, title="Spearman per seed", title_fontsize=7)
    right.set_title(f"3x4 tree, every pair of {plan.ches_demos} demos: CHES mean ρ {rho['rho_ches'].mean():+.2f}, "
                    f"shared prefix {rho['rho_shared_prefix'].mean():+.2f}", fontsize=10)
    fig.suptitle("Likelihood displacement (Razin et al. 2024): when does DPO lower the chosen answer, and does CHES "
                 "predict it?", fontsize=11)
    footer(fig, f"left, middle: GRU hidden 16, DPO beta 0.1, Adam 1e-3 x 200, ref = init, near-synonyms W- = W+ + 10% "
                f"noise, seeds {plan.token_seeds[0]}-{plan.token_seeds[-1]} | right: GRU hidden 32, SFT Adam 1e-2 x 200 "
                f"on {plan.ches_demos} random demos, DPO beta 0.1 Adam 1e-2 x {plan.ches_steps} per pair, seeds "
                f"{plan.ches_seeds[0]}-{plan.ches_seeds[-1]}")
    return save(fig, out)


# ----- 2. squeezing --------------------------------------------------------------------------------------------
def figure_squeezing(paper_folder, out, plan: PhenPlan = FULL, *, progress: bool = False) -> Path:
    """(a) softmax bandit: the argmax's share of the gains after one negative step, exact vs closed
    form; (b) the negative gradient alone on the tree (GRU, tabular); (c) the paper's DAA runs, per
    step; (d) the OOD trajectory that wins each paper run: its rank among OOD at the start."""
    from .squeezing import bandit_experiment, daa_probabilities, measures_frame, ood_winners, squeeze_measures, tree_experiment
    bandit = bandit_experiment()
    tree = tree_experiment(seeds=plan.squeeze_seeds, steps=plan.squeeze_steps, lr=0.01)
    table = _paper_runs(paper_folder)
    mdp, data = TreeMDP(), paper_dataset()
    rejected = int(mdp.trajectory_index(data.rejected())[0])
    frames = []
    for _, row in table.iterrows():
        probs = daa_probabilities(row["_dir"], mdp)
        m = squeeze_measures(probs.clamp_min(1e-300).log()[:, None], torch.tensor([rejected]))
        frames.append(measures_frame(m, loss=row["loss"], beta=row["beta"], seed=row["seed"]))
    paper = pd.concat(frames, ignore_index=True)
    winners = ood_winners(list(table["_dir"]), data, mdp)

    fig = _figure("phen_squeezing")
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    image = ax.scatter(bandit["p_negative"], bandit["share"], c=np.log10(bandit["peakedness"]), cmap="viridis", s=16)
    ax.scatter(bandit["p_negative"], bandit["share_first_order"], marker="x", s=10, color="k", lw=0.6,
               label="closed form, first order")
    ax.set_xscale("log")
    ax.set_xlabel("π(ȳ) before the step")
    ax.set_ylabel("argmax's share of all gains")
    ax.legend(fontsize=8, loc="lower left")
    fig.colorbar(image, ax=ax, label="log10 Σπ² (peakedness)")
    agree = bandit["rule_agrees"].mean()
    ax.set_title(f"(a) softmax over 100 answers, one negative step: the argmax is the top gainer in "
                 f"{bandit['argmax_top_gainer'].mean():.0%};\nthe rule 'k gains iff π_k > Σπ² − π(ȳ)' calls "
                 f"{agree:.1%} of the signs right", fontsize=9)
    ax = axes[0, 1]
    for kind, color in (("rnn", "tab:orange"), ("tabular", "tab:blue")):
        part = tree[(tree["policy"] == kind) & tree["share"].notna()]
        ax.scatter(part["p_negative"].clip(lower=1e-30), part["share"], s=5, alpha=0.35, color=color,
                   label=f"{'GRU' if kind == 'rnn' else 'tabular'}: median share {part['share'].median():.2f}")
    ax.set_xscale("log")
    ax.set_xlabel("π(y_l) at the step")
    ax.set_ylabel("argmax's share of all gains")
    ax.legend(fontsize=8)
    ax.set_title("(b) paper tree, the negative gradient alone (descend log π(y_l), SGD lr 0.01), after SFT", fontsize=9)
    ax = axes[1, 0]
    for k, loss in enumerate(("dpo", "ipo", "slic")):
        part = paper[(paper["loss"] == loss) & paper["share"].notna()]
        ax.scatter(part["p_negative"].clip(lower=1e-30), part["share"], s=3, alpha=0.2, color=f"C{k}",
                   label=f"{loss.upper()}: argmax gains at {(part['argmax_change'] > 0).mean():.0%} of steps")
    ax.set_xscale("log")
    ax.set_xlabel("π(y_l) at the step")
    ax.set_ylabel("argmax's share of all gains")
    ax.legend(fontsize=8, markerscale=4)
    ax.set_title("(c) the paper runs (figures 9-17 settings, every DAA step of every seed and beta)", fontsize=9)
    ax = axes[1, 1]
    real = winners[winners["peak"] > 0.05]
    counts = real["rank_at_start"].value_counts().sort_index()
    ax.bar(counts.index, counts.values, color="tab:brown")
    ax.set_xlabel("rank of the OOD winner among the 24 OOD trajectories at DAA step 0 (0 = most likely)")
    ax.set_ylabel("runs")
    was_argmax = int(real["winner_was_argmax"].fillna(False).astype(bool).sum())
    sibling = int((real["shares_prefix"] == mdp.depth - 1).sum())
    ax.set_title(f"(d) the {len(real)} paper runs whose top OOD trajectory passes 5%: it was the argmax before its "
                 f"rise in {was_argmax};\nit is a sibling of the chosen leaf (shares s1-a1-s3-a1-s9) in {sibling}", fontsize=9)
    fig.suptitle("The squeezing effect (Ren & Sutherland 2025): a negative gradient sends the freed mass to the "
                 "current argmax", fontsize=11)
    config = json.loads((Path(table.iloc[0]["_dir"]) / "config.json").read_text())
    footer(fig, f"(a) logits N(0, T²), T in 0.5-4, 5 seeds, lr 0.1 | (b) GRU hidden 32 / tabular, SFT 200 steps, seeds "
                f"{', '.join(map(str, plan.squeeze_seeds))}, {plan.squeeze_steps} steps | (c, d) " + settings_text(config))
    return save(fig, out)


# ----- 3. IPO's argument ----------------------------------------------------------------------------------------
def figure_ipo(out, plan: PhenPlan = FULL) -> Path:
    """π(y_l) and β·h over steps for DPO and IPO at four β on a 3-arm bandit, closed forms dashed."""
    from .ipo import bandit_experiment
    frame = bandit_experiment(steps=plan.ipo_steps)
    fig = _figure("phen_ipo")
    left, right = fig.subplots(1, 2)
    betas = sorted(frame["beta"].unique())
    for k, beta in enumerate(betas):
        for loss, style in (("dpo", "-"), ("ipo", "-.")):
            part = frame[(frame["loss"] == loss) & (frame["beta"] == beta)]
            steps = part["step"].to_numpy() + 1
            left.plot(steps, part["p_rejected"], style, color=f"C{k}", lw=1.8, label=f"{loss.upper()} beta={beta:g}")
            left.plot(steps, part["p_rejected_closed"], ":", color="k", lw=0.8)
            right.plot(steps, beta * part["h"], style, color=f"C{k}", lw=1.8)
            right.plot(steps, beta * part["h_closed"], ":", color="k", lw=0.8)
    error = float(np.max(np.abs(frame["p_rejected"] - frame["p_rejected_closed"])))
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_ylim(1e-30, 1.5)
    left.set_xlabel("step + 1")
    left.set_ylabel("π(y_l)")
    left.legend(fontsize=7, ncol=2)
    left.set_title(f"π(y_l): DPO falls without end at every beta; IPO stops (dotted: closed form, max error {error:.0e})",
                   fontsize=9)
    right.axhline(1.0, color="0.3", ls="--", lw=1)
    right.text(1.2, 1.05, "IPO optimum β·h = 1 (h = 1/β)", fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("step + 1")
    right.set_ylabel("β·h")
    right.set_title("β·h (the same curve for every β at lr 0.05/β²): DPO grows like log t, IPO converges to 1",
                    fontsize=9)
    fig.suptitle("IPO's argument (Azar et al. 2023) on a 3-arm bandit with one deterministic preference "
                 "(tabular policy, exact)", fontsize=11)
    footer(fig, f"tabular logits N(0, 0.1²) seed 0 = the reference; SGD with lr 0.05/β² (the same clock in β·h for "
                f"every β); {plan.ipo_steps} steps; arm 0 preferred over arm 1, arm 2 unseen")
    return save(fig, out)


# ----- 5. the theory as tools ------------------------------------------------------------------------------------
def figure_theory(out) -> Path:
    """(a) three policies with equal DAA loss and OOD mass 1% / trained / 99%; (b) V(s) on the chosen
    path as β varies for a fixed implicit reward, with its limits; (c) the OOD share of each V."""
    from ..exact import in_distribution_mask, trajectory_log_probs
    from ..losses import preference_loss
    from ..theory import ood_bootstrap_share, query_matrix, query_rank, soft_q, soft_q_of_policy, values_over_beta, with_ood_mass
    from .explain import group_masses, trajectory_groups
    from ..training import TrainConfig, train
    mdp, data = TreeMDP(), paper_dataset()
    run = train(TrainConfig(**{**PAPER, "daa_steps": 12}), loss="dpo", beta=0.1, progress=False)
    with torch.no_grad():
        logp = trajectory_log_probs(run.policy).double()
        ref = trajectory_log_probs(run.reference).double()
    inside = in_distribution_mask(mdp, data)
    w, l = mdp.trajectory_index(data.chosen()), mdp.trajectory_index(data.rejected())
    sibling = int(mdp.trajectory_index([[1, 1, 2]])[0])
    policies = [("OOD set to 1%", with_ood_mass(logp, inside, 0.01)), ("trained (DPO, 12 steps)", logp),
                ("OOD set to 99%,\nall on s1-a1-s3-a1-s9-a2", with_ood_mass(logp, inside, 0.99, onto=sibling))]
    Q = query_matrix(mdp, data)
    fig = _figure("phen_theory")
    a, b, c = fig.subplots(1, 3, width_ratios=(1.3, 1, 1))
    groups = trajectory_groups(mdp, data)
    colors = ["#2ca02c", "#d62728", "#1f77b4"] + list(pyplot().get_cmap("Oranges")(np.linspace(0.35, 0.95, mdp.depth)))
    for k, (label, lp) in enumerate(policies):
        masses = group_masses(lp.exp(), groups).numpy()
        bottom = 0.0
        for j, value in enumerate(masses):
            a.bar(k, value, bottom=bottom, color=colors[j], label=groups.labels[j] if k == 0 else None)
            bottom += value
        losses = [float(preference_loss(lp[w], lp[l], ref[w], ref[l], beta=0.1, loss=g)) for g in ("dpo", "ipo", "slic")]
        a.text(k, 1.02, f"DPO {losses[0]:.6f}\nIPO {losses[1]:.6f}\nSLiC {losses[2]:.6f}", ha="center", va="bottom",
               fontsize=7.5)
    a.set_xticks(range(len(policies)), [label for label, _ in policies], fontsize=8)
    a.set_ylim(0, 1.3)
    a.set_ylabel("probability mass")
    a.legend(fontsize=7, loc="center right", bbox_to_anchor=(1.0, 0.45))
    a.set_title(f"(a) Q is {Q.shape[0]} x {Q.shape[1]}, rank {query_rank(Q)}: null-space moves keep every loss (beta 0.1)",
                fontsize=9)
    view = soft_q_of_policy(logp, ref, mdp, 0.1)
    betas = np.geomspace(1e-3, 10, 40)
    values = values_over_beta(view.reward, ref, mdp, betas)
    path = [("s1", "C0"), ("s3", "C1"), ("s9", "C2")]
    for state, color in path:
        part = values[values["state"] == state]
        b.plot(part["beta"], part["V"], color=color, lw=1.8, label=f"V({state})")
        b.axhline(part["max_r"].iloc[0], color=color, ls="--", lw=0.8)
        b.axhline(part["ref_mean_r"].iloc[0], color=color, ls=":", lw=0.8)
    b.set_xscale("log")
    b.set_xlabel("β of the backup (reward fixed: the DPO policy's r = 0.1 log π/ref)")
    b.set_ylabel("V(s) = β logsumexp Q/β")
    b.legend(fontsize=8)
    b.set_title("(b) V on the chosen path as β varies, r fixed;\ndashed: max of r below (β → 0), dotted: E_ref[r] (β → ∞)",
                fontsize=9)
    rows = {"s1": (0, 0), "s3": (1, 1), "s9": (2, 4)}
    for state, color in path:
        t, j = rows[state]
        shares = [float(ood_bootstrap_share(soft_q(view.reward, ref, mdp, float(x)), inside)[t][j]) for x in betas]
        c.plot(betas, shares, color=color, lw=1.8, label=state)
    c.set_xscale("log")
    c.set_ylim(-0.02, 1.02)
    c.set_xlabel("β of the backup")
    c.set_ylabel("share of V(s) carried by OOD continuations")
    c.legend(fontsize=8)
    c.set_title("(c) the share of each bootstrapped V\nthat comes from unseen (OOD) leaves", fontsize=9)
    fig.suptitle("The paper's theory as tools (§4, App. D): the null space of Q, and the soft-Q view of a DPO policy",
                 fontsize=11)
    footer(fig, "DPO beta 0.1 on the paper's tree and data, GRU hidden 32, SFT 200 steps, DAA Adam lr 3e-2 x 12 steps "
                "(near its OOD peak); theory.with_ood_mass, theory.soft_q, theory.values_over_beta")
    return save(fig, out)


# ----- 6. explain ------------------------------------------------------------------------------------------------
def figure_explain(paper_folder, out) -> Path:
    """Left and middle: the account of one paper run (DPO beta 0.1, first seed); right: at each paper
    run's OOD peak, the OOD gain by the length of the prefix it shares with the chosen, per (loss, beta)."""
    from .explain import draw_explanation, explain_run
    table = _paper_runs(paper_folder)
    mdp = TreeMDP()
    shares = []
    one = None
    for _, row in table.iterrows():
        e = explain_run(row["_dir"])
        ood_cols = [c for c in e.table if c.startswith("gain: OOD")]
        peak = int(e.table[ood_cols].sum(axis=1).to_numpy().argmax())
        shares.append({"loss": row["loss"], "beta": row["beta"], "seed": row["seed"],
                       **{c[len("gain: "):]: float(e.table[c].iloc[peak]) for c in ood_cols}})
        if row["loss"] == "dpo" and np.isclose(row["beta"], 0.1) and one is None:
            one = e
    shares = pd.DataFrame(shares)
    fig = _figure("phen_explain")
    stacked, change, right = fig.subplots(1, 3, width_ratios=(1, 1, 1.1))
    draw_explanation(one, stacked, change)
    change.set_title(f"DPO beta 0.1 seed {int(table[table['loss'] == 'dpo']['seed'].iloc[0])}: what the chosen lost, "
                     f"who gained it\n(residual {one.table['residual'].abs().max():.0e})", fontsize=9)
    colors = ["#d62728", "#1f77b4"] + list(pyplot().get_cmap("Oranges")(np.linspace(0.35, 0.95, mdp.depth)))
    groups = [c for c in shares if c.startswith("OOD")]
    means = shares.groupby(["loss", "beta"])[groups].mean()
    bottom = np.zeros(len(means))
    for k, g in enumerate(groups):
        right.bar(range(len(means)), means[g].to_numpy(), bottom=bottom, color=colors[2 + k], label=g)
        bottom += means[g].to_numpy()
    right.set_xticks(range(len(means)), [f"{loss.upper()}\nb={beta:g}" for loss, beta in means.index], fontsize=8)
    right.set_ylabel("OOD mass gained at the run's OOD peak (mean over seeds)")
    right.legend(fontsize=8)
    total = shares[groups].sum(axis=1)
    sharing = shares[groups[-1]] / total.where(total > 1e-9)
    right.set_title(f"every paper run at its OOD peak: OOD siblings of the chosen leaf (prefix s1-a1-s3-a1)\n"
                    f"hold {sharing.median():.0%} of the OOD gain (median over runs)", fontsize=9)
    fig.suptitle("Where did the chosen probability go? (treemdp explain, exact accounting over the DAA phase)",
                 fontsize=11)
    config = json.loads((Path(table.iloc[0]["_dir"]) / "config.json").read_text())
    footer(fig, settings_text(config) + f"; seeds {', '.join(map(str, sorted(table['seed'].unique())))}")
    return save(fig, out)


# ----- 4. unseen answers ------------------------------------------------------------------------------------
def figure_unseen(out, plan: PhenPlan = FULL) -> Path:
    """Left: per beta and method, the largest π/ref over the answers no preference mentions (one dot
    per seed); right: in how many runs some unseen answer ends above its reference. Methods: DPO
    (GRU, tabular) and RLHF from the GRU runs' references with three reward models (the exact
    optimum for each; the GRU policy trained on the engine for the GRU reward model)."""
    from .unseen import METHODS, unseen_experiment
    frame = unseen_experiment(seeds=plan.unseen_seeds, daa_steps=1000 if plan is FULL else 120)
    fig = _figure("phen_unseen")
    left, right = fig.subplots(1, 2, width_ratios=(1.5, 1))
    methods = [m for m in METHODS if m in set(frame["method"])]
    betas = sorted(frame["beta"].unique())
    width = 0.84 / len(methods)
    for k, method in enumerate(methods):
        for j, beta in enumerate(betas):
            part = frame[(frame["method"] == method) & (frame["beta"] == beta)]
            x = j + (k - (len(methods) - 1) / 2) * width
            left.scatter(np.full(len(part), x), part["max_ratio"].clip(lower=1e-12), s=12, color=f"C{k}",
                         label=method if j == 0 else None, alpha=0.8)
            raised = int((part["raised"] > 0).sum())
            right.bar(x, raised / len(part), width=width * 0.95, color=f"C{k}")
            right.text(x, raised / len(part) + 0.02, f"{raised}/{len(part)}", ha="center", fontsize=6.5)
    for ax in (left, right):
        ax.set_xticks(range(len(betas)), [f"beta={b:g}" for b in betas])
        for j in range(1, len(betas)):
            ax.axvline(j - 0.5, color="0.85", lw=0.8)
    left.axhline(1.0, color="0.3", ls="--", lw=1)
    left.set_yscale("log")
    left.set_ylim(bottom=1e-13)
    left.set_ylabel("max π(y)/ref(y) over unseen answers, at the end (floor 1e-12)")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3, fontsize=8.5, frameon=False, markerscale=1.5)
    left.set_title("above the dashed line: an answer no preference mentions gained on its reference", fontsize=9)
    right.set_ylim(0, 1.12)
    right.set_ylabel("runs where some unseen answer rose above ref")
    right.set_title("how often (of the seeds)", fontsize=9)
    fig.suptitle("Unseen answers (Xu et al. 2024): DPO's solutions raise answers no preference mentions; so does "
                 "KL-regularised RLHF when its reward model extrapolates (the GRU scorer), not with a per-answer one",
                 fontsize=10.5)
    footer(fig, f"paper tree and data, seeds {plan.unseen_seeds[0]}-{plan.unseen_seeds[-1]}; DPO from the paper's "
                f"settings (GRU, or tabular with SFT lr 3e-2). RLHF from the GRU runs' SFT references: the optimum "
                f"ref·exp(r_φ/β)/Z with r_φ per answer (L2 Bradley-Terry, λ=0.01, exact),\nthe lab's per-(state, action) "
                f"scorer or its GRU scorer (Bradley-Terry on the engine, Adam 1e-2 × 300 steps); 'on the engine': the "
                f"GRU policy trained by kl_regularised_loss, Adam 1e-2 × {1000 if plan is FULL else 120} steps")
    return save(fig, out)


def draw_all(paper_folder, out, *, quick: bool = False, progress: bool = False) -> list[Path]:
    """Every phenomena figure into ``out`` (``reproduce`` calls this after its sweeps)."""
    plan = QUICK if quick else FULL
    out = Path(out)
    made = [figure_theory(out / "phen_theory"),
            figure_explain(paper_folder, out / "phen_explain"),
            figure_ipo(out / "phen_ipo", plan),
            figure_unseen(out / "phen_unseen", plan),
            figure_squeezing(paper_folder, out / "phen_squeezing", plan, progress=progress),
            figure_displacement(out / "phen_displacement", plan, progress=progress)]
    return made


__all__ = ["SIZES", "PhenPlan", "FULL", "QUICK", "figure_displacement", "figure_squeezing", "figure_ipo",
           "figure_theory", "figure_explain", "figure_unseen", "draw_all"]
