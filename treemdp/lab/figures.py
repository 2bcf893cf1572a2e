"""The lab's figures (``treemdp lab report``; ``treemdp reproduce`` draws them into figures/lab/).

Each function takes the tidy tables of :func:`treemdp.lab.store.load_lab` (and the fits), draws
one figure at a fixed size, states its settings at its foot and saves PNG + PDF. A figure whose
runs are not among the folders given is skipped. :func:`lab_report` draws them all and writes
``fits.csv``, ``claims.csv`` and the equal-KL tables (:mod:`treemdp.lab.compare`) beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..style import BETA_COLORS, LOSS_COLORS, N_COLORS, figure, footer, save
from .claims import claims_table, daa_runs
from .compare import POINTS, EqualKL, equal_kl, equal_kl_claims
from .fits import FORMS, curve_points, fit_groups
from .store import LabTables, load_lab

SIZES = {"humps": (15, 10), "frontier": (14, 6), "fit_coefficients": (14, 6), "rmse": (13, 5.5),
         "spurious_share": (14, 5.5), "first_epoch": (14, 5), "kl_spent": (13, 5.5), "equal_kl": (15, 8.5)}
#: Settings that group runs for the fits (those present in the curves).
FIT_BY = ("method", "loss", "beta", "pairs", "hidden_size", "gold", "batch_size")


def _figure(name: str):
    """A figure of fixed size with fixed margins (a layout engine costs seconds per figure here)."""
    return figure(SIZES[name], fixed_margins=True)


def _settings(results: pd.DataFrame) -> str:
    """One line of the settings shared by the runs of a figure."""
    first = results.iloc[0]
    seeds = sorted(results["seed"].unique())
    parts = [f"tree {first['tree']} ({first.get('gold', '?')} gold, gold seed {first.get('gold_seed', 0)})",
             f"{first['demos']} demos at temperature {first['demo_temperature']:g}",
             f"pairs from {first['pair_source']}, label temperature {first['label_temperature']:g}",
             f"{first['policy'].upper()} {first['cell'].upper()} hidden {first['hidden_size']}" if first["policy"] == "rnn"
             else "tabular policy",
             f"{first['optimizer']}, SFT lr {first['sft_lr']:g} x {first['sft_steps']}",
             f"seeds {seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"]
    return "; ".join(parts) + "; exact enumeration, nothing sampled"


def _lines(ax, curves: pd.DataFrame, x: str, y: str, color, *, alpha=0.35, lw=0.7, label=None) -> None:
    """Every run's curve as one line collection."""
    from matplotlib.collections import LineCollection
    segments = [part[[x, y]].to_numpy(float) for _, part in curves.groupby("dir", sort=False)]
    segments = [s[np.isfinite(s).all(1)] for s in segments]
    if segments:
        ax.add_collection(LineCollection(segments, colors=[color], alpha=alpha, linewidths=lw, label=label))
        ax.autoscale_view()


def _mean_frontier(frontiers: pd.DataFrame, kind: str, d_grid: np.ndarray) -> np.ndarray:
    """The frontier's gain on a common sqrt-KL grid, averaged over the distinct references."""
    column = f"{kind}_gain"
    rows = frontiers[frontiers["kind"] == kind]
    curves = [np.interp(d_grid, part["sqrt_kl"], part[column]) for _, part in rows.groupby("seed")]
    return np.mean(curves, 0) if curves else np.full_like(d_grid, np.nan)


def _fit_line(ax, fits: pd.DataFrame, match: dict, form: str, d_max: float, **style) -> None:
    rows = fits[(fits["form"] == form)]
    for key, value in match.items():
        rows = rows[np.isclose(rows[key], value)] if isinstance(value, float) else rows[rows[key] == value]
    if rows.empty:
        return
    d = np.linspace(0, d_max, 200)
    ax.plot(d, FORMS[form].predict(d, rows.iloc[0][["p1", "p2"]].to_numpy(float)), **style)


# ----- the figures ---------------------------------------------------------------------------------------
def figure_humps(tables: LabTables, fits: pd.DataFrame, out: Path) -> Optional[Path]:
    """Gold win rate (gain over 1/2) vs sqrt(KL) for every DAA run: rows = loss, columns = beta, colour = N;
    per N the RL-form fit (solid) and the quadratic-in-KL fit (dashed); black: the win-rate frontier."""
    results = daa_runs(tables.results)
    if results.empty:
        return None
    curves = tables.curves[tables.curves["dir"].isin(results["dir"])]
    losses = [l for l in LOSS_COLORS if l in set(results["loss"])] + sorted(set(results["loss"]) - set(LOSS_COLORS))
    betas = sorted(results["beta"].unique())
    ns = sorted(results["pairs"].unique())
    fig = _figure("humps")
    axes = fig.subplots(len(losses), len(betas), sharex=True, sharey=True, squeeze=False)
    d_max = float(np.nanquantile(curves["sqrt_kl"], 0.995))
    grid = np.linspace(0, d_max, 200)
    fronts = tables.frontiers[tables.frontiers["dir"].isin(results["dir"])]
    hidden = int(results["hidden_size"].iloc[0])
    for i, loss in enumerate(losses):
        for j, beta in enumerate(betas):
            ax = axes[i, j]
            ax.plot(grid, _mean_frontier(fronts, "win", grid), color="k", lw=1.2, label="frontier (mean over seeds)")
            for k, n in enumerate(ns):
                color = N_COLORS[k % len(N_COLORS)]
                sel = curves[(curves["loss"] == loss) & np.isclose(curves["beta"], beta) & (curves["pairs"] == n)]
                _lines(ax, sel, "sqrt_kl", "win_gain", color)
                match = dict(method="daa", loss=loss, beta=float(beta), pairs=n, hidden_size=hidden)
                _fit_line(ax, fits, match, "rl", d_max, color=color, lw=2.0, label=f"N={n}: RL-form fit")
                _fit_line(ax, fits, match, "quad_kl", d_max, color=color, lw=1.5, ls="--")
            ax.axhline(0, color="0.6", lw=0.6)
            ax.set_xlim(0, d_max)
            ax.set_ylim(-0.5, 0.5)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"beta = {beta:g}")
            if j == 0:
                ax.set_ylabel(f"{loss.upper()}\nwin rate vs ref - 1/2")
            if i == len(losses) - 1:
                ax.set_xlabel("sqrt KL(pi || ref)")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    steps = int(results["steps"].iloc[0])
    fig.suptitle(f"Over-optimization, exactly: gold win rate against the reference vs sqrt(KL) over {steps} "
                 f"full-batch DAA steps (thin: each run; solid: d(alpha - b log d); dashed: c1 KL + c2 KL^2)", fontsize=11)
    footer(fig, _settings(results) + f"; DAA lr {results['lr'].iloc[0]:g}")
    return save(fig, out / "humps_win_rate")


def figure_frontier(tables: LabTables, out: Path, *, seed: Optional[int] = None, pairs: Optional[int] = None) -> Optional[Path]:
    """One reference (one seed, one N), every method against the exact frontiers: gold gain (left)
    and win-rate gain (right) vs sqrt(KL); DAA and RLHF per step, best-of-n per n."""
    results, curves = tables.results, tables.curves
    plain = results[~results["gold"].astype(str).str.startswith("spurious") & (results["batch_size"].fillna(0) == 0)]
    have = set(plain["method"])
    if not {"daa", "bon"} <= have and not {"daa", "rlhf"} <= have:
        return None
    hidden = daa_runs(results)["hidden_size"].iloc[0] if len(daa_runs(results)) else plain["hidden_size"].mode().iloc[0]
    plain = plain[plain["hidden_size"] == hidden]
    seed = int(plain["seed"].min()) if seed is None else seed
    pairs = int(sorted(plain["pairs"].unique())[len(plain["pairs"].unique()) // 2]) if pairs is None else pairs
    runs = plain[(plain["seed"] == seed) & (plain["pairs"] == pairs)]
    sel = curves[curves["dir"].isin(runs["dir"])]
    front = tables.frontiers[tables.frontiers["dir"] == runs["dir"].iloc[0]]
    fig = _figure("frontier")
    axes = fig.subplots(1, 2)
    for ax, quality in zip(axes, ("gold", "win")):
        f = front[front["kind"] == quality]
        ax.plot(f["sqrt_kl"], f[f"{quality}_gain"], color="k", lw=2, label=f"frontier: ref*exp({'r*' if quality == 'gold' else 'G'}/lambda)")
        d_end = float(np.nanmax(sel["sqrt_kl"])) if len(sel) else float(f["sqrt_kl"].max())
        if d_end > f["sqrt_kl"].max():  # a larger budget reaches no more: the frontier stays at its maximum
            ax.plot([f["sqrt_kl"].max(), d_end], [f[f"{quality}_gain"].max()] * 2, color="k", lw=1, ls="--")
        other = front[front["kind"] != quality]
        ax.plot(other["sqrt_kl"], other[f"{quality}_gain"], color="0.5", lw=1, ls=":",
                label=f"the {'win-rate' if quality == 'gold' else 'gold'} frontier's policies")
        for loss, color in LOSS_COLORS.items():
            part = sel[(sel["method"] == "daa") & (sel["loss"] == loss)]
            _lines(ax, part, "sqrt_kl", f"{quality}_gain", color, alpha=0.7, lw=1.0, label=f"{loss.upper()} (each beta)")
        part = sel[sel["method"] == "rlhf"]
        _lines(ax, part, "sqrt_kl", f"{quality}_gain", "#9467bd", alpha=0.9, lw=1.3, label="RLHF (each beta)")
        for proxy, marker, color in (("rm", "o", "#ff7f0e"), ("gold", "s", "#8c564b")):
            part = sel[(sel["method"] == "bon") & (sel["proxy"] == proxy)]
            if len(part):
                ax.plot(part["sqrt_kl"], part[f"{quality}_gain"], marker=marker, ms=4, color=color, lw=1,
                        label=f"best-of-n under {'the reward model' if proxy == 'rm' else 'r* itself'}")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.grid(alpha=0.3)
        ax.set_xlabel("sqrt KL(pi || ref)")
        ax.set_ylabel("E_pi[r*] - E_ref[r*]" if quality == "gold" else "win rate vs ref - 1/2")
        ax.set_title(f"{'gold reward' if quality == 'gold' else 'gold win rate'}: every run below its frontier")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"The physical limit: one reference (seed {seed}), N = {pairs} pairs; frontiers exact "
                 "(the best value reachable at each KL), methods exact", fontsize=11)
    footer(fig, _settings(runs))
    return save(fig, out / "frontier")


def figure_fit_coefficients(fits: pd.DataFrame, results: pd.DataFrame, out: Path) -> Optional[Path]:
    """alpha and b of the RL form vs hidden size (left pair) and vs N (right pair), per loss, with
    bootstrap intervals over seeds."""
    rl = fits[(fits["form"] == "rl") & (fits["method"] == "daa")]
    if "batch_size" in rl:
        rl = rl[rl["batch_size"].fillna(0) == 0]
    rl = rl[~rl["gold"].astype(str).str.startswith("spurious")]
    by_hidden = rl.groupby(["loss", "beta", "pairs"]).filter(lambda g: g["hidden_size"].nunique() > 1)
    main_hidden = daa_runs(results)["hidden_size"].iloc[0] if len(daa_runs(results)) else None
    by_pairs = rl[rl["hidden_size"] == main_hidden]
    if by_hidden.empty and by_pairs.empty:
        return None
    fig = _figure("fit_coefficients")
    axes = fig.subplots(1, 4)
    panels = ((by_hidden, "hidden_size", "GRU hidden size (the toy's model size)"),
              (by_pairs, "pairs", "N preference pairs"))
    for p, (data, x, label) in enumerate(panels):
        for q, param in enumerate(("p1", "p2")):
            ax = axes[2 * p + q]
            for loss, color in LOSS_COLORS.items():
                for k, (beta, part) in enumerate(data[data["loss"] == loss].groupby("beta")):
                    if x == "pairs" and not np.isclose(beta, _middle(data["beta"])):
                        continue
                    part = part.sort_values(x)
                    err = np.abs(part[[f"{param}_low", f"{param}_high"]].to_numpy(float).T - part[param].to_numpy(float))
                    ax.errorbar(part[x], part[param], yerr=err, color=color, marker="o", ms=4, capsize=2, lw=1.2,
                                label=f"{loss.upper()} beta={beta:g}" + (f", N={int(part['pairs'].iloc[0])}" if x == "hidden_size" else ""))
            ax.set_xscale("log", base=2)
            ax.set_xlabel(label)
            ax.set_ylabel("alpha" if param == "p1" else "b")
            ax.grid(alpha=0.3)
            if not len(data):
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center")
        if len(data):
            axes[2 * p].legend(fontsize=7)
    fig.suptitle("The RL form's coefficients, R(d) = d(alpha - b log d) on the win-rate gain, with 95% bootstrap "
                 "intervals over seeds: vs model size (left) and vs data size (right, middle beta)", fontsize=11)
    footer(fig, _settings(results[results["method"] == "daa"]))
    return save(fig, out / "fit_coefficients")


def _middle(values) -> float:
    values = sorted(pd.unique(values))
    return float(values[len(values) // 2])


def figure_rmse(fits: pd.DataFrame, results: pd.DataFrame, out: Path) -> Optional[Path]:
    """RMSE of each form per (method, loss, beta), pooled over N, and the rl / quadratic ratio with
    its bootstrap interval."""
    main = fits[(fits["gold"].astype(str) != "nan") & ~fits["gold"].astype(str).str.startswith("spurious")]
    if "batch_size" in main:
        main = main[main["batch_size"].fillna(0) == 0]
    hidden = daa_runs(results)["hidden_size"].iloc[0] if len(daa_runs(results)) else None
    main = main[main["hidden_size"] == hidden] if hidden is not None else main
    rl = main[(main["form"] == "rl") & main["rmse_ratio"].notna()] if "rmse_ratio" in main else main.iloc[:0]
    if rl.empty:
        return None
    fig = _figure("rmse")
    fig.subplots_adjust(bottom=0.3)  # room for the group names
    ax_rmse, ax_ratio = fig.subplots(1, 2, width_ratios=(1.4, 1))
    rl = rl.assign(label=[_group_label(r) for _, r in rl.iterrows()]).sort_values(["method", "loss", "beta", "pairs"])
    x = np.arange(len(rl))
    for k, form in enumerate(("rl", "bon", "quad_kl")):
        rows = main[main["form"] == form].set_index(["method", "loss", "beta", "pairs"]).reindex(
            rl.set_index(["method", "loss", "beta", "pairs"]).index)
        ax_rmse.bar(x + (k - 1) * 0.27, rows["rmse"], width=0.27, label=f"{form}: {FORMS[form].formula}")
    ax_rmse.set_xticks(x, rl["label"], rotation=90, fontsize=6)
    ax_rmse.set_ylabel("RMSE of the fit (win-rate gain)")
    ax_rmse.legend(fontsize=8)
    ax_rmse.grid(axis="y", alpha=0.3)
    err = np.abs(rl[["rmse_ratio_low", "rmse_ratio_high"]].to_numpy(float).T - rl["rmse_ratio"].to_numpy(float))
    ax_ratio.errorbar(x, rl["rmse_ratio"], yerr=err, fmt="o", ms=3, color="k", capsize=1.5)
    ax_ratio.axhline(1, color="0.4", lw=1)
    ax_ratio.axhline(0.5, color="#d62728", lw=1, ls="--", label="0.5: the paper's 'about half'")
    ax_ratio.set_xticks(x, rl["label"], rotation=90, fontsize=6)
    ax_ratio.set_ylabel("RMSE(rl) / RMSE(quad_kl)")
    ax_ratio.set_yscale("log")
    ax_ratio.legend(fontsize=8)
    ax_ratio.grid(alpha=0.3)
    fig.suptitle("Which form fits the over-optimization curves? The same points for every form; "
                 "intervals: 95% bootstrap over seeds", fontsize=11)
    footer(fig, _settings(results))
    return save(fig, out / "rmse_forms")


def _group_label(row) -> str:
    what = row["loss"] if row["method"] == "daa" else row["method"]
    beta = "" if row["method"] == "bon" else f" b={row['beta']:g}"
    return f"{what}{beta} N={int(row['pairs'])}"


def figure_spurious(tables: LabTables, out: Path) -> Optional[Path]:
    """The toy's eq. 6: R^2 of the implicit reward log(pi/ref) on the simple feature, vs sqrt(KL),
    for DAA runs on the spurious gold; one panel per loss, colour = beta; right: gold gain."""
    curves = tables.curves[tables.curves["gold"].astype(str).str.startswith("spurious")
                           & (tables.curves["method"] == "daa")]
    if curves.empty:
        return None
    results = tables.results[tables.results["dir"].isin(curves["dir"])]
    losses = [l for l in LOSS_COLORS if l in set(curves["loss"])]
    fig = _figure("spurious_share")
    axes = fig.subplots(1, len(losses) + 1, squeeze=False)[0]
    betas = sorted(curves["beta"].unique())
    for ax, loss in zip(axes, losses):
        for k, beta in enumerate(betas):
            part = curves[(curves["loss"] == loss) & np.isclose(curves["beta"], beta)]
            _lines(ax, part, "sqrt_kl", "spurious_r2_ref", BETA_COLORS[k % len(BETA_COLORS)], alpha=0.5,
                   label=f"beta={beta:g}")
        ax.set_ylim(0, 1)
        ax.set_title(f"{loss.upper()}: share explained by the feature", fontsize=10)
        ax.set_xlabel("sqrt KL(pi || ref)")
        ax.set_ylabel("R^2 of log(pi/ref) on the feature (answers ~ ref)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    d_grid = np.linspace(0, float(curves["sqrt_kl"].max()), 200)
    fronts = tables.frontiers[tables.frontiers["dir"].isin(results["dir"])]
    ax.plot(d_grid, _mean_frontier(fronts, "gold", d_grid), color="k", lw=1.2, label="gold frontier (mean)")
    for loss in losses:
        _lines(ax, curves[curves["loss"] == loss], "sqrt_kl", "gold_gain", LOSS_COLORS[loss], alpha=0.4, label=loss.upper())
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_title("gold gain on this task", fontsize=10)
    ax.set_xlabel("sqrt KL(pi || ref)")
    ax.set_ylabel("E_pi[r*] - E_ref[r*]")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    gold = results["gold"].iloc[0]
    from .gold import parse_spec
    action = int(parse_spec(str(gold))[1].get("action", 0))
    fig.suptitle(f"The toy's eq. 6: a simple feature (the count of action a{action}, "
                 f"the toy's answer length) in the gold '{gold}' raises r* on the data's support and lowers it off it",
                 fontsize=11)
    footer(fig, _settings(results))
    return save(fig, out / "spurious_share")


def figure_first_epoch(tables: LabTables, out: Path) -> Optional[Path]:
    """Minibatch DAA: win-rate gain vs epochs, one panel per N (each run thin, mean per loss thick),
    epoch 1 marked; right: the epoch of each run's win-rate peak (log scale)."""
    results = tables.results[(tables.results["method"] == "daa") & (tables.results["batch_size"] > 0)]
    if results.empty:
        return None
    curves = tables.curves[tables.curves["dir"].isin(results["dir"])]
    ns = sorted(results["pairs"].unique())
    fig = _figure("first_epoch")
    axes = fig.subplots(1, len(ns) + 1, squeeze=False, width_ratios=[2] * len(ns) + [1.2])[0]
    for ax, n in zip(axes, ns):
        for loss, color in LOSS_COLORS.items():
            part = curves[(curves["loss"] == loss) & (curves["pairs"] == n)]
            if part.empty:
                continue
            _lines(ax, part, "epoch", "win_gain", color, alpha=0.25)
            mean = part.groupby("step")[["epoch", "win_gain"]].mean()
            ax.plot(mean["epoch"], mean["win_gain"], color=color, lw=2, label=f"{loss.upper()} (mean over seeds)")
        batch = int(results["batch_size"].iloc[0])
        ax.set_title(f"N = {n} pairs, minibatches of {batch}: {int(np.ceil(n / batch))} steps per epoch", fontsize=10)
        ax.axvline(1, color="k", lw=1, ls="--")
        ax.set_xlabel("epochs over the N pairs")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("win rate vs ref - 1/2")
    axes[0].legend(fontsize=8)
    ax = axes[-1]
    labels = []
    for k, (key, part) in enumerate(results.groupby(["pairs", "loss"])):
        ax.scatter(part["peak_win_epoch"], np.full(len(part), k), color=LOSS_COLORS.get(key[1], "k"), s=14)
        labels.append(f"{key[1].upper()} N={key[0]}")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.axvline(1, color="k", lw=1, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("epoch of the win-rate peak (log)")
    ax.grid(alpha=0.3)
    first = results.iloc[0]
    fig.suptitle(f"Within the first epoch? DAA on minibatches, beta = "
                 f"{', '.join(f'{b:g}' for b in sorted(results['beta'].unique()))}, {int(first['steps'])} steps; "
                 "dashed: the end of the first epoch", fontsize=11)
    footer(fig, _settings(results) + f"; DAA lr {first['lr']:g}")
    return save(fig, out / "first_epoch")


def figure_kl_spent(tables: LabTables, out: Path) -> Optional[Path]:
    """Gold gain vs KL for RLHF (per beta) and best-of-n under the same reward model: which spends
    more KL for the same gold? Mean over seeds per N."""
    curves = tables.curves
    rlhf, bon = curves[curves["method"] == "rlhf"], curves[(curves["method"] == "bon") & (curves["proxy"] == "rm")]
    if rlhf.empty or bon.empty:
        return None
    rlhf, bon = rlhf[rlhf["kl_to_reference"] > 1e-3], bon[bon["kl_to_reference"] > 1e-3]  # a log axis
    ns = sorted(set(rlhf["pairs"]) & set(bon["pairs"]))
    fig = _figure("kl_spent")
    axes = fig.subplots(1, len(ns), sharey=True, squeeze=False)[0]
    for ax, n in zip(axes, ns):
        fronts = tables.frontiers[tables.frontiers["dir"].isin(rlhf.loc[rlhf["pairs"] == n, "dir"])]
        kl_grid = np.geomspace(1e-2, float(rlhf["kl_to_reference"].max()), 200)
        ax.plot(kl_grid, _mean_frontier(fronts, "gold", np.sqrt(kl_grid)), color="k", lw=1.2,
                label="gold frontier (mean over seeds)")
        for k, (beta, part) in enumerate(rlhf[rlhf["pairs"] == n].groupby("beta")):
            _lines(ax, part, "kl_to_reference", "gold_gain", BETA_COLORS[k % len(BETA_COLORS)], alpha=0.5,
                   label=f"RLHF beta={beta:g} (each seed)")
        part = bon[bon["pairs"] == n]
        _lines(ax, part, "kl_to_reference", "gold_gain", "#ff7f0e", alpha=0.9, lw=1.5, label="best-of-n (each seed)")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlim(1e-2, 1.5 * float(max(rlhf["kl_to_reference"].max(), bon["kl_to_reference"].max())))
        ax.set_xlabel("KL(pi || ref), nats (log scale)")
        ax.set_title(f"N = {n} pairs (same reward model for both)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("E_pi[r*] - E_ref[r*]")
    axes[0].legend(fontsize=7)
    results = tables.results[tables.results["method"].isin(["rlhf", "bon"])]
    fig.suptitle("Gao et al.: 'RL spends more KL than best-of-n for the same gold' - RLHF by exact policy gradient "
                 "vs exact best-of-n, one reward model per (seed, N)", fontsize=11)
    first = results.iloc[0]
    footer(fig, f"reward model {first['rm']} (hidden {first['rm_hidden_size']}), Bradley-Terry lr {first['rm_lr']:g} x "
                f"{first['rm_steps']} steps; " + _settings(results).split("; exact")[0])
    return save(fig, out / "kl_spent")


METHOD_COLORS = {**LOSS_COLORS, "rlhf": "#9467bd", "bon": "#ff7f0e", "frontier": "k"}


def figure_equal_kl(comparison: EqualKL, results: pd.DataFrame, out: Path) -> Optional[Path]:
    """Every method's envelope (best gain over beta and steps at each sqrt KL; mean over seeds where at
    least half of them reach it, band: 95% bootstrap) beside the exact frontier: gold gain (top) and win-rate gain (bottom), one column per
    N; a marker at each method's mean peak sqrt KL, a dotted line at the mean saturation sqrt KL."""
    curves, peaks = comparison.curves, comparison.peaks
    methods = [m for m in curves["method"].unique() if m != "frontier"]
    if curves.empty or len(methods) < 2:
        return None
    ns = sorted(curves["pairs"].unique())
    fig = _figure("equal_kl")
    axes = fig.subplots(2, len(ns), squeeze=False, sharex=True)
    order = [m for m in METHOD_COLORS if m in methods] + sorted(set(methods) - set(METHOD_COLORS))
    results = results[~results["gold"].astype(str).str.startswith("spurious") & (results["batch_size"].fillna(0) == 0)]
    for i, quality in enumerate(("gold", "win")):
        for j, n in enumerate(ns):
            ax = axes[i, j]
            for method in ["frontier"] + order:
                part = curves[(curves["method"] == method) & (curves["pairs"] == n) & (curves["quality"] == quality)]
                part = part[2 * part["seeds"] >= part["seeds"].max()]  # where most seeds reach: the mean is a mean
                color = METHOD_COLORS.get(method, "0.4")
                label = "frontier (exact)" if method == "frontier" else method.upper() if method in LOSS_COLORS else \
                    {"rlhf": "RLHF", "bon": "best-of-n (RM)"}.get(method, method)
                ax.plot(part["sqrt_kl"], part["mean"], color=color, lw=2.0 if method == "frontier" else 1.5, label=label)
                if method != "frontier":
                    ax.fill_between(part["sqrt_kl"], part["low"], part["high"], color=color, alpha=0.15, lw=0)
                    peak = peaks[(peaks["method"] == method) & (peaks["pairs"] == n) & (peaks["quality"] == quality)]
                    if len(peak) and np.isfinite(peak["peak_sqrt_kl"].iloc[0]):
                        ax.plot(peak["peak_sqrt_kl"], peak["peak_gain"], marker="v", ms=7, color=color, ls="none")
            saturation = peaks[(peaks["pairs"] == n) & (peaks["quality"] == quality)]["saturation_sqrt_kl"].mean()
            if np.isfinite(saturation):
                ax.axvline(saturation, color="0.5", lw=0.8, ls=":")
            ax.axhline(0, color="0.6", lw=0.6)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"N = {n} pairs")
            if i == 1:
                ax.set_xlabel("sqrt KL(pi || ref)")
            if j == 0:
                ax.set_ylabel("E_pi[r*] - E_ref[r*]" if quality == "gold" else "win rate vs ref - 1/2")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    seeds = int(comparison.peaks["seeds"].max()) if len(comparison.peaks) else 0
    fig.suptitle("Equal KL: each method's best gain at each sqrt KL over its betas and steps, beside the exact "
                 f"frontier\n(mean of {seeds} seeds where at least half reach it, band 95% bootstrap; v: mean of the "
                 "seeds' peaks; dotted: saturation sqrt KL)", fontsize=11)
    footer(fig, _settings(results))
    return save(fig, out / "equal_kl")


# ----- everything -------------------------------------------------------------------------------------
def lab_fits(tables: LabTables, *, bootstrap: int = 1000, metric: str = "win",
             by: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Fits of every group of runs (see :func:`treemdp.lab.fits.fit_groups`), grouped by ``by``
    (default :data:`FIT_BY`); best-of-n under the reward model only; a bon run's missing loss and
    beta group as ``""`` and NaN."""
    by = [k for k in (by or FIT_BY) if k in tables.curves]
    curves = curve_points(tables.curves).copy()
    for key in by:  # group on NaN-free keys (a bon run has no loss or beta)
        curves[key] = curves[key].fillna("") if curves[key].dtype == object else curves[key].fillna(-1)
    fits = fit_groups(curves, by, y=f"{metric}_gain", run="dir", bootstrap=bootstrap)
    for key in ("beta",):
        if key in fits:
            fits[key] = fits[key].replace(-1, np.nan)
    return fits


def lab_report(folders: Sequence, out, *, bootstrap: int = 1000, progress: bool = False,
               points: Sequence[float] = POINTS) -> list[Path]:
    """Every lab figure the folders have runs for, plus ``fits.csv``, ``claims.csv`` and the equal-KL
    comparison (:func:`treemdp.lab.compare.equal_kl`: ``equal_kl.csv``, ``equal_kl_peaks.csv``, and
    ``equal_kl_table.csv``, the gain at the sqrt KL ``points``); returns the PNGs."""
    from ..runs import check_writable
    out = check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = load_lab(folders)
    fits = lab_fits(tables, bootstrap=bootstrap)
    fits.to_csv(out / "fits.csv", index=False, float_format="%.6g")
    main = tables.curves[tables.curves["dir"].isin(daa_runs(tables.results)["dir"]) | (tables.curves["method"] != "daa")]
    main = main[main["batch_size"].fillna(0) == 0] if "batch_size" in main else main
    pooled = lab_fits(LabTables(tables.results, main, tables.frontiers), bootstrap=bootstrap,
                      by=("method", "loss", "hidden_size", "gold"))
    comparison = equal_kl(tables, points=points)
    comparison.curves.to_csv(out / "equal_kl.csv", index=False, float_format="%.6g")
    comparison.peaks.to_csv(out / "equal_kl_peaks.csv", index=False, float_format="%.6g")
    comparison.table.to_csv(out / "equal_kl_table.csv", index=False, float_format="%.6g")
    claims = claims_table(tables.results, tables.curves, fits, pooled)
    claims = pd.concat([claims, pd.DataFrame(equal_kl_claims(comparison), columns=claims.columns)], ignore_index=True)
    claims.to_csv(out / "claims.csv", index=False, float_format="%.6g")
    drawings = [lambda: figure_humps(tables, fits, out), lambda: figure_frontier(tables, out),
                lambda: figure_fit_coefficients(fits, tables.results, out), lambda: figure_rmse(fits, tables.results, out),
                lambda: figure_spurious(tables, out), lambda: figure_first_epoch(tables, out),
                lambda: figure_kl_spent(tables, out), lambda: figure_equal_kl(comparison, tables.results, out)]
    from tqdm.auto import tqdm
    made = [draw() for draw in tqdm(drawings, desc="lab figures", unit="figure", disable=not progress, leave=False)]
    return [p for p in made if p is not None]


__all__ = ["lab_report", "lab_fits", "figure_humps", "figure_frontier", "figure_fit_coefficients", "figure_rmse",
           "figure_spurious", "figure_first_epoch", "figure_kl_spent", "figure_equal_kl", "SIZES"]
