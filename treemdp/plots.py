"""Plots of one run: where the probability mass goes, trajectory by trajectory.

Matplotlib only, with the non-interactive Agg backend unless a notebook chose another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

IN_DIST_COLORS = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def pyplot():
    """matplotlib.pyplot, switched to the file-only Agg backend unless a notebook's inline
    backend (or another file backend) is active, so figures never try to open a window."""
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def live_plot(draw, *rows, figsize=(10, 5)):
    """A figure that redraws itself whenever one of the ipywidgets controls in ``rows`` changes.

    Args:
        draw: ``draw(figure)`` fills a cleared matplotlib ``Figure`` (it reads the controls' values
            itself, typically re-running a library function).
        rows: lists of controls, one ``HBox`` per list, shown above the figure.
        figsize: the figure size in inches.

    Returns:
        The widget to ``display``. The picture is swapped inside an ``ipywidgets.Output`` with
        ``clear_output(wait=True)``, so it changes only once the new one is ready (no flicker).
    """
    import ipywidgets as widgets
    from IPython.display import display
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    output = widgets.Output()

    def redraw(change=None):
        figure.clear()
        draw(figure)
        figure.tight_layout()
        with output:
            output.clear_output(wait=True)
            display(figure)

    for row in rows:
        for control in row:
            control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox(list(row)) for row in rows] + [output])


def _timeline(history: pd.DataFrame) -> pd.DataFrame:
    """Add an ``x`` column: SFT steps first, then DAA steps offset to follow them."""
    sft_end = history.loc[history["phase"] == "sft", "step"].max()
    sft_end = 0 if pd.isna(sft_end) else int(sft_end)
    x = history["step"] + (history["phase"] == "daa") * sft_end
    return history.assign(x=x), sft_end


def plot_trajectories(history: pd.DataFrame, ax, *, phase: str | None = None,
                      label_threshold: float = 0.05, title: str | None = None, legend: bool = True) -> None:
    """Draw every trajectory's probability over steps on ``ax``.

    In-distribution trajectories are thick and coloured; OOD ones thin grey, labelled in the
    paper's notation when they ever exceed ``label_threshold``.

    Args:
        history: tidy history (phase, step, trajectory, prob, in_distribution).
        phase: ``"sft"``, ``"daa"`` or None for both, SFT first.
        legend: draw the legend of labelled trajectories.
    """
    data = history if phase is None else history[history["phase"] == phase]
    data, sft_end = _timeline(data) if phase is None else (data.assign(x=data["step"]), 0)
    colors = iter(IN_DIST_COLORS * 100)
    ood_colors = iter(["#ff7f0e", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#8c564b"] * 100)
    background = []  # unlabelled OOD curves, drawn as one collection (fast with many trajectories)
    for name, rows in data.groupby("trajectory", sort=False):
        in_dist = bool(rows["in_distribution"].iloc[0])
        peak = rows["prob"].max()
        if in_dist:
            ax.plot(rows["x"], rows["prob"], lw=2.4, color=next(colors), label=f"{name} (data)")
        elif peak >= label_threshold:
            ax.plot(rows["x"], rows["prob"], lw=1.6, ls="--", color=next(ood_colors), label=f"{name} (OOD)")
        else:
            background.append(np.column_stack([rows["x"].to_numpy(float), rows["prob"].to_numpy(float)]))
    if background:
        from matplotlib.collections import LineCollection
        ax.add_collection(LineCollection(background, linewidths=0.7, colors="0.75", zorder=0))
        ax.autoscale_view()
    if phase is None and sft_end:
        ax.axvline(sft_end, color="k", lw=0.8, ls=":")
        ax.text(sft_end, 0.98, " DAA starts", fontsize=8, va="top", transform=ax.get_xaxis_transform())
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step" if phase is None else f"{phase.upper()} step")
    ax.set_ylabel("trajectory probability (exact)")
    if title:
        ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=7, loc="center right", framealpha=0.85)


#: Colours of the mass buckets (treemdp.accounting): data in blues/greens, OOD in warm colours.
BUCKET_COLORS = {"mass_chosen": "#2ca02c", "mass_rejected": "#d62728", "mass_other_data": "#1f77b4"}
OOD_COLORS = ("#fdd0a2", "#fdae6b", "#fd8d3c", "#e6550d", "#a63603", "#7f2704")


def bucket_label(column: str) -> str:
    """``mass_ood_prefix2`` -> ``OOD, shares 2 actions with a chosen answer``."""
    if column.startswith("mass_ood_prefix"):
        k = int(column[len("mass_ood_prefix"):])
        return f"OOD, shares {k} first action{'s' if k != 1 else ''} with a chosen answer"
    return {"mass_chosen": "chosen", "mass_rejected": "rejected", "mass_other_data": "other data"}.get(column, column)


def plot_masses(history: pd.DataFrame, ax, *, phase: str | None = None, metrics: pd.DataFrame | None = None) -> None:
    """Where the mass is over steps on ``ax``: the exact buckets of :mod:`treemdp.accounting`
    stacked (from ``metrics``), or in-distribution and OOD mass (from the history) without them."""
    buckets = [] if metrics is None else [c for c in metrics.columns
                                          if c.startswith("mass_") and c != "mass_ood"]
    if buckets:
        data = metrics if phase is None else metrics[metrics["phase"] == phase]
        data, sft_end = _timeline(data) if phase is None else (data.assign(x=data["step"]), 0)
        ood = iter(OOD_COLORS * 4)
        colors = [BUCKET_COLORS.get(c) or next(ood) for c in buckets]
        ax.stackplot(data["x"].to_numpy(float), *[data[c].to_numpy(float) for c in buckets],
                     labels=[bucket_label(c) for c in buckets], colors=colors, lw=0)
        legend_size = 7
    else:
        data = history if phase is None else history[history["phase"] == phase]
        data, sft_end = _timeline(data) if phase is None else (data.assign(x=data["step"]), 0)
        by_step = data.groupby(["x", "in_distribution"])["prob"].sum().unstack(fill_value=0.0)
        if True in by_step:
            ax.plot(by_step.index, by_step[True], lw=2, color="#1f77b4", label="in-distribution mass")
        if False in by_step:
            ax.plot(by_step.index, by_step[False], lw=2, color="#ff7f0e", label="OOD mass")
        legend_size = 8
    if phase is None and sft_end:
        ax.axvline(sft_end, color="k", lw=0.8, ls=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step" if phase is None else f"{phase.upper()} step")
    ax.set_ylabel("mass")
    ax.legend(fontsize=legend_size, loc="center right", framealpha=0.85)


def plot_run(history: pd.DataFrame, summary: dict | None = None, *, path: str | Path | None = None,
             daa_log_x: bool = True, metrics: pd.DataFrame | None = None):
    """The figure of one run: SFT (left) and DAA (right) trajectories on top, masses below.

    Args:
        history: tidy history of the run.
        summary: its summary dict (for the title), optional.
        metrics: its metrics, optional: the lower panels then stack the exact mass buckets.
        path: save the figure there (PNG/PDF/SVG by suffix) and close it.
        daa_log_x: symmetric-log step axis for DAA, where the mass often moves in the first
            tens of steps and then settles.

    Returns:
        The matplotlib Figure.
    """
    plt = pyplot() if path is not None else __import__("matplotlib.pyplot").pyplot

    phases = [p for p in ("sft", "daa") if (history["phase"] == p).any()]
    fig, axes = plt.subplots(2, len(phases), figsize=(11 if len(phases) == 2 else 8, 7.5), squeeze=False,
                             height_ratios=(3, 1.6), width_ratios=(1, 2)[:len(phases)] if len(phases) == 2 else None,
                             sharex="col")
    for column, phase in enumerate(phases):
        top, bottom = axes[0, column], axes[1, column]
        plot_trajectories(history, top, phase=phase,
                          title="SFT on the demonstrations" if phase == "sft" else "DAA on the preference (reference = SFT policy)")
        plot_masses(history, bottom, phase=phase, metrics=metrics)
        if phase == "sft" and len(phases) == 2 and bottom.get_legend() is not None:
            bottom.get_legend().remove()
        top.set_xlabel("")
        bottom.set_xlabel(f"{phase.upper()} step")
        if phase == "daa" and daa_log_x:
            bottom.set_xscale("symlog", linthresh=10)
            bottom.set_xlim(0, max(1, history.loc[history["phase"] == "daa", "step"].max()))
        if column:
            top.set_ylabel("")
            bottom.set_ylabel("")
        if phase == "sft" and len(phases) == 2 and top.get_legend() is not None:
            top.get_legend().remove()
    if summary:
        fig.suptitle(f"{summary['loss'].upper()}  beta={summary['beta']:g}  seed={summary['seed']}  "
                     f"({summary.get('policy', 'rnn')}/{summary.get('cell', '')} h={summary.get('hidden_size', '')}, "
                     f"{summary.get('optimizer', '')}): OOD mass after SFT {summary.get('sft_ood_mass', float('nan')):.1%}, "
                     f"peak {summary['peak_ood_mass']:.1%} at DAA step {summary['peak_ood_step']}, "
                     f"final {summary['final_ood_mass']:.1%}", fontsize=10)
    # fixed margins: tight_layout measured every tick label and cost more than the drawing
    fig.subplots_adjust(left=0.07, right=0.99, top=0.89 if summary else 0.93, bottom=0.08, wspace=0.12, hspace=0.1)
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig
