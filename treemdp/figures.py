"""The toy-MDP figures of Rafailov et al. (2024) and our sensitivity atlas, one function each.

Every function takes a results folder (a sweep directory written by :mod:`treemdp.sweep`) and
an output path, draws one figure at a fixed size (:data:`SIZES`, in inches at :data:`DPI`),
states its settings on the figure, and saves it as PNG plus PDF beside it. ``treemdp
reproduce`` (:mod:`treemdp.reproduce`) runs the sweeps and calls them all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .style import BETA_COLORS, DPI, figure, footer, save  # noqa: F401  (DPI re-exported)
from .sweep import read_results
from .tree import Dataset, TreeMDP, paper_dataset

#: Figure name -> (width, height) in inches; PNGs are exactly width*DPI x height*DPI pixels.
SIZES = {
    "fig06_tree_mdp": (10, 5.5),
    "fig07_mass_summary": (13, 7),
    "fig_trajectories": (14, 6),  # figs 09-17, one per (loss, beta)
    "fig18_dpo_seeds": (15, 5),
    "atlas_peak_ood": (13, 10),
    "atlas_final_ood": (13, 10),
    "optimizers": (14, 6.5),
    "tabular_vs_gru": (14, 6.5),
    "zoo_ood_map": (13, 11),
}
LOSS_ORDER = ("dpo", "ipo", "slic")


def _figure(name: str):
    return figure(SIZES[name])


def settings_text(config: dict, *, omit: tuple = ()) -> str:
    """One line naming a run's settings, for the foot of a figure."""
    parts = []
    if "policy" not in omit:
        parts.append("tabular policy" if config["policy"] == "tabular"
                     else f"{config['cell'].upper()} hidden {config['hidden_size']}")
    if "optimizer" not in omit:
        parts.append(f"{config['optimizer'].capitalize() if config['optimizer'] != 'sgd' else 'SGD'}")
    if "lr" not in omit:
        parts.append(f"SFT lr {config['sft_lr']:g} x {config['sft_steps']} steps, "
                     f"DAA lr {config['daa_lr']:g} x {config['daa_steps']} steps")
    parts.append("full batch, exact enumeration; the paper's 3x3 tree and data")
    return "; ".join(parts)


# ----- reading sweep folders ---------------------------------------------------------------------
def sweep_results(folder) -> pd.DataFrame:
    """results.csv of one sweep folder, or of several stacked; ``_dir`` is each run's directory.
    Diverged runs (no numbers) are left out."""
    folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
    parts = []
    for f in folders:
        table = read_results(f)
        parts.append(table.assign(_dir=[str(Path(f) / run) for run in table["run"]]))
    table = pd.concat(parts, ignore_index=True)
    if "diverged" in table:
        table = table[table["diverged"].isna()]
    return table


def _run_dir(folder: str | Path, table: pd.DataFrame, **match) -> Path:
    rows = table
    for key, value in match.items():
        rows = rows[np.isclose(rows[key], value)] if isinstance(value, float) else rows[rows[key] == value]
    if rows.empty:
        raise UserError(f"no finished run in {str(folder)!r} with {match}")
    return Path(rows.iloc[0]["_dir"])


def _config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def _history(run_dir: Path) -> pd.DataFrame:
    from .runs import read_run
    return read_run(run_dir)["history"]


# ----- figure 6: the tree ------------------------------------------------------------------------
def figure_tree(out: str | Path, mdp: TreeMDP | None = None, dataset: Dataset | None = None) -> Path:
    """Figure 6: the tree MDP, states named as in the paper, actions on the edges, the three
    demonstrations and the preferred / dispreferred pair marked."""
    mdp = mdp or TreeMDP()
    dataset = dataset or paper_dataset()
    fig = _figure("fig06_tree_mdp")
    ax = fig.add_subplot()
    ax.set_axis_off()
    # Node positions: leaves of the last level evenly spread, parents centred over children.
    pos = {}
    width = mdp.branching ** (mdp.depth - 1)
    for t in range(mdp.depth):
        nodes = mdp.nodes_at_depth(t)
        span = width / len(nodes)
        for j, node in enumerate(nodes):
            pos[int(node)] = ((j + 0.5) * span, -t)
    pos[mdp.terminal] = (width / 2, -mdp.depth)
    demos = [tuple(d) for d in dataset.demonstrations.tolist()]
    chosen = {p.chosen for p in dataset.preferences}
    rejected = {p.rejected for p in dataset.preferences}
    on_demo = set()
    for demo in demos:
        state = 0
        for a in demo:
            nxt = mdp.step_state(state, a)
            on_demo.add((state, a))
            state = nxt
    for state in range(mdp.n_states):
        x0, y0 = pos[state]
        for a in range(mdp.branching):
            nxt = mdp.step_state(state, a)
            x1, y1 = pos[nxt]
            demo_edge = (state, a) in on_demo
            if nxt == mdp.terminal:
                if demo_edge:
                    ax.annotate("", xy=(x1, y1 + 0.12), xytext=(x0, y0 - 0.12),
                                arrowprops=dict(arrowstyle="-|>", color="#1f77b4", lw=1.6, alpha=0.8))
                    ax.text(x0 + 0.08, y0 - 0.3, f"a{a}", fontsize=7, color="#1f77b4")
                continue
            ax.annotate("", xy=(x1, y1 + 0.12), xytext=(x0, y0 - 0.12),
                        arrowprops=dict(arrowstyle="-|>", color="#1f77b4" if demo_edge else "0.7",
                                        lw=2.2 if demo_edge else 0.8))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.05, f"a{a}", fontsize=8, ha="center",
                    color="#1f77b4" if demo_edge else "0.45",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    for node, (x, y) in pos.items():
        ax.text(x, y, mdp.state_name(node), ha="center", va="center", fontsize=9 if node < mdp.n_states else 11,
                bbox=dict(boxstyle="circle,pad=0.25" if node < mdp.n_states else "round,pad=0.3",
                          fc="#f3f3f3", ec="0.3"))
    # The preference: mark the leaf nodes of the chosen (green) and rejected (red) trajectories.
    for seqs, color, label in ((chosen, "#2ca02c", "preferred (chosen)"), (rejected, "#d62728", "dispreferred (rejected)")):
        for seq in seqs:
            state = 0
            for a in seq[:-1]:
                state = mdp.step_state(state, a)
            x, y = pos[state]
            ax.text(x, y - 0.42, f"{label}\n{mdp.trajectory_name(seq)}", ha="center", va="top", fontsize=7.5,
                    color=color, weight="bold")
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-mdp.depth - 0.4, 0.4)
    ax.set_title("Figure 6: the tree MDP (Appendix E). Blue: the three SFT demonstrations\n"
                 f"{', '.join(mdp.trajectory_name(d) for d in demos)}; every depth-{mdp.depth - 1} state "
                 "moves to s∞ whatever the action", fontsize=10)
    footer(fig, f"{mdp.branching} actions, {mdp.depth} steps, {mdp.n_trajectories} trajectories; "
           "in distribution = the 3 demonstrations, the other 24 are OOD")
    return save(fig, out)


# ----- figure 7: mass summary --------------------------------------------------------------------
def daa_mass_curves(folder: str | Path) -> pd.DataFrame:
    """Tidy OOD / in-distribution mass over DAA steps for every run of a full sweep folder."""
    table = sweep_results(folder)
    parts = []
    for _, row in table.iterrows():
        metrics = pd.read_csv(Path(row["_dir"]) / "metrics.csv")
        daa = metrics[metrics["phase"] == "daa"][["step", "ood_mass", "in_distribution_mass"]]
        parts.append(daa.assign(loss=row["loss"], beta=row["beta"], seed=row["seed"]))
    if not parts:
        raise UserError(f"no finished runs in {str(folder)!r}")
    return pd.concat(parts, ignore_index=True)


def figure_mass_summary(folder: str | Path, out: str | Path) -> Path:
    """Figure 7: OOD mass (top) and in-distribution mass (bottom) over DAA training, one column per
    loss, one line per beta: mean over seeds with a min-max band."""
    curves = daa_mass_curves(folder)
    table = sweep_results(folder)
    config = _config(Path(table.iloc[0]["_dir"]))
    fig = _figure("fig07_mass_summary")
    losses = [loss for loss in LOSS_ORDER if loss in set(curves["loss"])]
    axes = fig.subplots(2, len(losses), sharex=True, sharey=True, squeeze=False)
    betas = sorted(curves["beta"].unique())
    for j, loss in enumerate(losses):
        for i, column in enumerate(("ood_mass", "in_distribution_mass")):
            ax = axes[i, j]
            for k, beta in enumerate(betas):
                data = curves[(curves["loss"] == loss) & np.isclose(curves["beta"], beta)]
                stats = data.groupby("step")[column].agg(["mean", "min", "max"])
                color = BETA_COLORS[k % len(BETA_COLORS)]
                ax.plot(stats.index, stats["mean"], color=color, lw=1.8, label=f"beta={beta:g}")
                ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.15, lw=0)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(loss.upper())
            else:
                ax.set_xlabel("DAA step")
            if j == 0:
                ax.set_ylabel("OOD mass (24 unseen trajectories)" if i == 0 else "in-distribution mass (3 demos)")
    axes[0, 0].legend(fontsize=9)
    seeds = sorted(curves["seed"].unique())
    fig.suptitle(f"Figure 7: mass during DAA training, mean over seeds {seeds[0]}-{seeds[-1]} "
                 f"({len(seeds)} per line), band = min-max", fontsize=11)
    footer(fig, settings_text(config))
    return save(fig, out)


# ----- figures 9-17: trajectories per (loss, beta) -----------------------------------------------
def figure_trajectories(folder: str | Path, out: str | Path, *, loss: str, beta: float, seed: int,
                        number: int | None = None) -> Path:
    """Figures 9-17: every trajectory's probability over SFT then DAA for one (loss, beta, seed);
    in-distribution trajectories thick and labelled, OOD ones labelled once they pass 5%."""
    from .plots import plot_trajectories
    table = sweep_results(folder)
    run = _run_dir(folder, table, loss=loss, beta=float(beta), seed=seed)
    history, config = _history(run), _config(run)
    summary = json.loads((run / "summary.json").read_text())
    fig = _figure("fig_trajectories")
    whole, daa = fig.subplots(1, 2, width_ratios=(1, 1.6))
    label = f"Figure {number}: " if number else ""
    plot_trajectories(history, whole, label_threshold=0.05, title="SFT then DAA (linear steps)")
    whole.get_legend().remove()
    plot_trajectories(history, daa, phase="daa", label_threshold=0.05,
                      title="DAA phase, log-scaled steps (the action is in the first ~100)")
    daa.set_xscale("symlog", linthresh=10)
    daa.set_xlim(0, max(1, int(history.loc[history["phase"] == "daa", "step"].max())))
    daa.set_xlabel("DAA step (linear to 10, then log)")
    daa.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.suptitle(f"{label}{loss.upper()}, beta={beta:g}, seed {seed}: every trajectory's probability; peak OOD "
                 f"mass {summary['peak_ood_mass']:.0%} at DAA step {summary['peak_ood_step']}, final "
                 f"{summary['final_ood_mass']:.1%}", fontsize=11)
    footer(fig, settings_text(config))
    return save(fig, out)


# ----- figure 18: DPO over seeds ---------------------------------------------------------------
def figure_dpo_seeds(folder: str | Path, out: str | Path, *, beta: float, seeds=(1, 2, 3)) -> Path:
    """Figure 18: DPO repeated with further seeds, side by side: the DAA phase of each, where the
    mass goes differs from seed to seed."""
    from .plots import plot_trajectories
    table = sweep_results(folder)
    fig = _figure("fig18_dpo_seeds")
    axes = fig.subplots(1, len(seeds), sharey=True, squeeze=False)[0]
    config = None
    for ax, seed in zip(axes, seeds):
        run = _run_dir(folder, table, loss="dpo", beta=float(beta), seed=seed)
        config = _config(run)
        summary = json.loads((run / "summary.json").read_text())
        top = summary["top_ood"][0]["trajectory"] if summary.get("top_ood") else "-"
        plot_trajectories(_history(run), ax, phase="daa", label_threshold=0.05,
                          title=f"seed {seed}: peak OOD {summary['peak_ood_mass']:.0%} (step "
                                f"{summary['peak_ood_step']}), final {summary['final_ood_mass']:.1%}\n"
                                f"top OOD at the end: {top}")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(0, config["daa_steps"])
        ax.set_xlabel("DAA step (linear to 10, then log)")
        ax.legend(fontsize=6, loc="best", framealpha=0.85)
    fig.suptitle(f"Figure 18: DPO, beta={beta:g}, three more seeds (DAA phase)", fontsize=11)
    footer(fig, settings_text(config))
    return save(fig, out)


# ----- beyond the paper: the sensitivity atlas and the controls ------------------------------------
def figure_atlas(folder: str | Path, out: str | Path, *, metric: str = "peak_ood_mass") -> Path:
    """Heat maps of mean peak (or final) OOD mass over DAA learning rate x hidden size, one panel
    per (loss, beta), numbers in the cells; seeds per cell stated."""
    table = sweep_results(folder)
    name = "atlas_peak_ood" if metric == "peak_ood_mass" else "atlas_final_ood"
    fig = _figure(name)
    losses = [loss for loss in LOSS_ORDER if loss in set(table["loss"])]
    betas = sorted(table["beta"].unique())
    axes = fig.subplots(len(losses), len(betas), squeeze=False)
    lrs = sorted(table["daa_lr"].unique())
    hiddens = sorted(table["hidden_size"].unique())
    image = None
    for i, loss in enumerate(losses):
        for j, beta in enumerate(betas):
            ax = axes[i, j]
            cell = table[(table["loss"] == loss) & np.isclose(table["beta"], beta)]
            grid = cell.groupby(["hidden_size", "daa_lr"])[metric].mean().unstack().reindex(index=hiddens, columns=lrs)
            image = ax.imshow(grid.values, vmin=0, vmax=1, cmap="magma", origin="lower", aspect="auto")
            for (y, x), value in np.ndenumerate(grid.values):
                if np.isfinite(value):
                    ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if value < 0.55 else "black")
            ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], fontsize=8)
            ax.set_yticks(range(len(hiddens)), [str(h) for h in hiddens], fontsize=8)
            ax.set_title(f"{loss.upper()}, beta={beta:g}", fontsize=10)
            if i == len(losses) - 1:
                ax.set_xlabel("DAA learning rate (Adam)")
            if j == 0:
                ax.set_ylabel("GRU hidden size")
    fig.colorbar(image, ax=axes, shrink=0.6, label=f"mean {metric.split('_')[0]} OOD mass")
    seeds = table.groupby(["loss", "beta", "hidden_size", "daa_lr"]).size()
    config = _config(Path(table.iloc[0]["_dir"]))
    what = "PEAK (max over DAA steps)" if metric == "peak_ood_mass" else "FINAL (after the last DAA step)"
    fig.suptitle(f"Sensitivity atlas: {what} OOD mass, mean over {_seeds_text(seeds)} per cell",
                 fontsize=11)
    footer(fig, settings_text(config, omit=("policy", "lr")) +
           f"; SFT lr {config['sft_lr']:g} x {config['sft_steps']}, DAA {config['daa_steps']} steps")
    return save(fig, out)


def _seeds_text(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return f"{low} seeds" if low == high else f"{low}-{high} seeds"


def _diverged_text(folder, by: str, labels: dict) -> str:
    """'; diverged (not shown): SGD IPO beta=0.5 x5' for runs that stopped on NaN/inf."""
    folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
    table = pd.concat([read_results(f) for f in folders], ignore_index=True)
    if "diverged" not in table or table["diverged"].isna().all():
        return ""
    bad = table[table["diverged"].notna()].groupby([by, "loss", "beta"]).size()
    items = [f"{labels.get(k, k)} {loss.upper()} beta={beta:g} x{n}" for (k, loss, beta), n in bad.items()]
    return "; diverged, not shown: " + ", ".join(items)


def _bars(folder, out: str | Path, *, by: str, labels: dict, name: str, title: str) -> Path:
    """Peak and final OOD mass per (loss, beta), one bar per value of ``by`` (mean, seeds as dots)."""
    table = sweep_results(folder)
    fig = _figure(name)
    axes = fig.subplots(1, 2, sharey=True)
    groups = [(loss, beta) for loss in LOSS_ORDER for beta in sorted(table["beta"].unique())
              if ((table["loss"] == loss) & np.isclose(table["beta"], beta)).any()]
    keys = [k for k in labels if k in set(table[by])]
    width = 0.8 / len(keys)
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
    for ax, metric in zip(axes, ("peak_ood_mass", "final_ood_mass")):
        for k, key in enumerate(keys):
            means, xs = [], []
            for g, (loss, beta) in enumerate(groups):
                rows = table[(table["loss"] == loss) & np.isclose(table["beta"], beta) & (table[by] == key)]
                x = g + (k - (len(keys) - 1) / 2) * width
                means.append(rows[metric].mean())
                xs.append(x)
                ax.scatter(np.full(len(rows), x), rows[metric], s=8, color="k", zorder=3, alpha=0.6)
            ax.bar(xs, means, width=width * 0.95, color=colors[k % len(colors)], label=labels[key])
        ax.set_xticks(range(len(groups)), [f"{loss.upper()}\nb={beta:g}" for loss, beta in groups], fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title("peak OOD mass (max over DAA steps)" if metric == "peak_ood_mass"
                     else "final OOD mass (after the last DAA step)", fontsize=10)
    axes[0].set_ylabel("OOD mass (bars: mean; dots: seeds)")
    axes[0].legend(fontsize=9)
    seeds = table.groupby(["loss", "beta", by]).size()
    fig.suptitle(f"{title} ({_seeds_text(seeds)} per bar{_diverged_text(folder, by, labels)})", fontsize=11)
    settings = []
    for key in keys:
        config = _config(Path(table[table[by] == key].iloc[0]["_dir"]))
        settings.append(f"{labels[key]}: " + settings_text(config).split("; full batch")[0])
    footer(fig, " | ".join(settings))
    return save(fig, out)


def figure_optimizers(folder, out: str | Path) -> Path:
    """Adam vs RMSprop vs SGD: peak and final OOD mass per (loss, beta); ``folder`` may be a list."""
    return _bars(folder, out, by="optimizer", labels={"adam": "Adam", "rmsprop": "RMSprop", "sgd": "SGD"},
                 name="optimizers", title="Optimiser: Adam vs RMSprop vs SGD, same GRU")


def figure_tabular(folder, out: str | Path) -> Path:
    """Tabular policy vs GRU: peak and final OOD mass per (loss, beta); ``folder`` may be a list."""
    return _bars(folder, out, by="policy", labels={"rnn": "GRU (shared weights)", "tabular": "tabular (no sharing)"},
                 name="tabular_vs_gru", title="Policy: GRU vs tabular, both Adam")


def figure_zoo(folder, out: str | Path) -> Path:
    """The OOD map of the objective zoo: peak and final OOD mass of every objective at each beta,
    mean over seeds (marker) with the seeds' range (bar), on the paper's tree and data."""
    table = sweep_results(folder)
    fig = _figure("zoo_ood_map")
    axes = fig.subplots(1, 2, sharey=True)
    order = list(dict.fromkeys(table["loss"]))  # the sweep's order: paper, GPO, variants, TRL
    betas = sorted(table["beta"].unique())
    offsets = np.linspace(-0.25, 0.25, len(betas))
    for ax, metric in zip(axes, ("peak_ood_mass", "final_ood_mass")):
        for k, beta in enumerate(betas):
            rows = table[np.isclose(table["beta"], beta)]
            stats = rows.groupby("loss")[metric].agg(["mean", "min", "max"]).reindex(order)
            y = np.arange(len(order)) + offsets[k]
            ax.hlines(y, stats["min"], stats["max"], color=BETA_COLORS[k], lw=1.2, alpha=0.7)
            ax.scatter(stats["mean"], y, color=BETA_COLORS[k], s=22, zorder=3, label=f"beta={beta:g}")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(axis="x", alpha=0.3)
        for boundary in range(1, len(order)):
            ax.axhline(boundary - 0.5, color="0.9", lw=0.6, zorder=0)
        ax.set_title("peak OOD mass (max over DAA steps)" if metric == "peak_ood_mass"
                     else "final OOD mass (after the last DAA step)", fontsize=10)
        ax.set_xlabel("OOD mass (dot: mean over seeds; bar: min to max)")
    axes[0].set_yticks(range(len(order)), order, fontsize=7.5)
    axes[0].set_ylim(len(order) - 0.5, -0.5)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=9, frameon=False)
    seeds = table.groupby(["loss", "beta"]).size()
    everything = read_results(folder)
    diverged = int(everything["diverged"].notna().sum()) if "diverged" in everything else 0
    fig.suptitle(f"The objective zoo on the paper's tree and data: where each objective puts mass nobody "
                 f"showed it ({_seeds_text(seeds)} per point" + (f"; {diverged} runs diverged, not shown" if diverged else "")
                 + ")", fontsize=11)
    config = _config(Path(table.iloc[0]["_dir"]))
    footer(fig, settings_text(config, omit=("loss",)) + "; trl(...) = TRL 1.16 DPOTrainer loss_type, "
           "sigmoid = dpo and hinge = slic (not repeated)")
    return save(fig, out)
