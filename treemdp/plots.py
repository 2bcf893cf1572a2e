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


def live_plot(update, *rows, setup=None, figsize=(10, 5), dpi=72):
    """A figure that changes whenever one of the ipywidgets controls in ``rows`` changes.

    The fast form builds the axes and artists once and then only changes their data, so a move
    of a control costs one PNG encode (about 0.05-0.2 s), not a new figure::

        def setup(fig):                      # once: axes, lines, bars, texts
            ax = fig.subplots()
            return {"line": ax.plot([], [])[0], "ax": ax}

        def update(state):                   # every move: set_data, set_height, set_text, ...
            state["line"].set_data(x, grid[slider.value])

        display(live_plot(update, [slider], setup=setup))

    Without ``setup``, ``update(figure)`` is called on a cleared figure and draws it from scratch
    (simple, slower).

    Args:
        update: ``update(state)`` (with ``setup``) or ``update(figure)`` (without); reads the
            controls' values itself, typically indexing results computed once before.
        rows: lists of controls, one ``HBox`` per list, shown above the figure.
        setup: ``setup(figure) -> state``, called once.
        figsize, dpi: the picture's size.

    Returns:
        The widget to ``display``. The picture is swapped inside an ``ipywidgets.Output`` with
        ``clear_output(wait=True)``, so it changes only once the new one is ready (no flicker).
        ``widget.redraw()`` redraws by hand; ``widget.figure`` is the figure; ``widget.seconds``
        holds the last redraw's duration.
    """
    import io
    import time

    import ipywidgets as widgets
    from IPython.display import Image, display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(figure)
    output = widgets.Output()
    state = setup(figure) if setup is not None else None
    box = widgets.VBox([widgets.HBox(list(row)) for row in rows] + [output])

    def redraw(change=None):
        started = time.perf_counter()
        if setup is None:
            figure.clear()
            update(figure)
            figure.tight_layout()
        else:
            update(state)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi)  # fixed size: no tight-bbox second pass
        with output:
            output.clear_output(wait=True)
            display(Image(data=buffer.getvalue(), format="png"))
        box.seconds = time.perf_counter() - started

    if setup is not None and hasattr(figure, "set_layout_engine"):
        update(state)  # real titles and labels first, so the layout leaves room for them
        figure.set_layout_engine("tight")
        figure.canvas.draw()  # lay out once, then keep those margins (no re-layout per move)
        figure.set_layout_engine("none")
    for row in rows:
        for control in row:
            control.observe(redraw, names="value")
    box.redraw, box.figure = redraw, figure
    redraw()
    return box


def run_grid(configs, dataset=None, *, desc: str = "precomputing the runs behind the controls"):
    """Train every configuration once, batched, with one progress bar; results in order.

    Configurations that share a shape (``shape_key``: tree, policy, hidden size,
    step counts, ...) run as one batched computation, so a grid over loss x beta x seed x
    learning rate costs about as much as a few single runs. Widgets then index the results.
    This is the sweep's grid in memory (:func:`treemdp.grid.compute`): the same stacks, no folders.

    Returns:
        One :class:`~treemdp.training.RunResult` (or the ``TrainingDiverged`` error) per config.
    """
    from .grid import compute
    from .training import TrainStudy
    return compute(TrainStudy(dataset=dataset), configs, desc=f"{desc} ({len(configs)} runs)")


def trajectory_roles(history: pd.DataFrame, dataset=None) -> dict[str, str]:
    """Trajectory name -> ``"chosen"``, ``"rejected"``, ``"data"`` (other demonstrations) or ``"OOD"``.

    With ``dataset`` its first preference names chosen and rejected; without, the paper's (when
    the history's in-distribution trajectories are the paper's demonstrations).
    """
    names = list(dict.fromkeys(history["trajectory"]))
    in_dist = dict(zip(history["trajectory"], history["in_distribution"].astype(bool)))
    roles = {name: ("data" if in_dist[name] else "OOD") for name in names}
    if dataset is None:
        from .tree import TreeMDP, paper_dataset
        paper = paper_dataset()
        mdp = TreeMDP()
        demos = {mdp.trajectory_name(d) for d in paper.demonstrations.tolist()}
        if demos != {n for n in names if in_dist[n]}:
            return roles
        dataset = paper
    if dataset.preferences:
        from .tree import TreeMDP
        depth = len(dataset.preferences[0].chosen)
        branching = round(len(names) ** (1 / depth)) if len(names) else 3
        mdp = TreeMDP(branching, depth)
        for role, actions in (("chosen", dataset.preferences[0].chosen), ("rejected", dataset.preferences[0].rejected)):
            name = mdp.trajectory_name(list(actions))
            if name in roles:
                roles[name] = role
    return roles


ROLE_COLORS = {"chosen": "#1f77b4", "rejected": "#d62728", "data": "#2ca02c"}


def probability_matrix(history: pd.DataFrame, phase: str = "daa") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One phase of a history as arrays: (steps [S], probabilities [S, T], trajectory names [T])."""
    data = history[history["phase"] == phase]
    names = list(dict.fromkeys(data["trajectory"]))
    steps = data["step"].to_numpy()
    n = len(names)
    if n and len(data) % n == 0 and (data["trajectory"].to_numpy()[:n] == np.asarray(names, dtype=object)).all() \
            and (steps.reshape(-1, n) == steps[::n, None]).all():  # step-major, one row per trajectory
        return steps[::n], data["prob"].to_numpy(float).reshape(-1, n), names
    table = data.pivot(index="step", columns="trajectory", values="prob")
    return table.index.to_numpy(), table[names].to_numpy(float), names


class TrajectoryView:
    """What :func:`plot_trajectories` and :func:`plot_masses` draw for one phase, built once and
    then updated in place (for live plots: a control move changes line data, not the figure).

    Args:
        top: axes for every trajectory's probability; bottom: axes for the masses (or None).
        history: any run's history on the same tree and data (names, roles, in-distribution).
        phase: the phase shown.
    """

    OOD_COLORS = ("#ff7f0e", "#e377c2", "#17becf", "#bcbd22")

    def __init__(self, top, bottom=None, *, history: pd.DataFrame, phase: str = "daa",
                 dataset=None, label_threshold: float = 0.05):
        _, _, self.names = probability_matrix(history, phase)
        roles = trajectory_roles(history, dataset)
        self.roles = [roles[name] for name in self.names]
        self.in_dist = np.array([role != "OOD" for role in self.roles])
        self.threshold = label_threshold
        self.top, self.bottom = top, bottom
        self.lines = []
        for name, role in zip(self.names, self.roles):
            if role == "OOD":
                line, = top.plot([], [], lw=0.7, color="0.75", zorder=1)
            else:
                line, = top.plot([], [], lw=2.4, color=ROLE_COLORS[role], label=f"{name} ({role})", zorder=3)
            self.lines.append(line)
        top.set_ylim(-0.02, 1.02)
        top.set_title(" ", fontsize=10)  # room for the titles show() writes (the layout is fixed once)
        top.set_ylabel("trajectory probability (exact)")
        top.set_xlabel(f"{phase.upper()} step")
        self.masses = None
        if bottom is not None:
            self.masses = (bottom.plot([], [], lw=2, color="#1f77b4", label="in-distribution mass")[0],
                           bottom.plot([], [], lw=2, color="#ff7f0e", label="OOD mass")[0])
            bottom.set_ylim(-0.02, 1.02)
            bottom.set_ylabel("mass")
            bottom.set_xlabel(f"{phase.upper()} step")
            bottom.legend(fontsize=8, loc="center right")

    def show(self, steps: np.ndarray, probs: np.ndarray, title: str | None = None) -> None:
        """Show probabilities ``probs`` [S, T] at ``steps`` [S] (trajectories in the history's order)."""
        peaks = probs.max(axis=0) if len(probs) else np.zeros(len(self.names))
        colors = iter(self.OOD_COLORS)
        labelled = []
        for j, line in enumerate(self.lines):
            line.set_data(steps, probs[:, j])
            if self.in_dist[j]:
                labelled.append(line)
            elif peaks[j] >= self.threshold:
                line.set(lw=1.6, ls="--", color=next(colors, "0.4"), zorder=2, label=f"{self.names[j]} (OOD)")
                labelled.append(line)
            else:
                line.set(lw=0.7, ls="-", color="0.75", zorder=1, label="_nolegend_")
        right = float(steps[-1]) if len(steps) > 1 else 1.0
        self.top.set_xlim(float(steps[0]) if len(steps) else 0.0, right)
        self.top.legend(handles=labelled, fontsize=7, loc="center right", framealpha=0.85)
        if title is not None:
            self.top.set_title(title, fontsize=10)
        if self.masses is not None:
            ood = probs[:, ~self.in_dist].sum(axis=1)
            self.masses[0].set_data(steps, 1 - ood)
            self.masses[1].set_data(steps, ood)
            self.bottom.set_xlim(self.top.get_xlim())


def _timeline(history: pd.DataFrame) -> pd.DataFrame:
    """Add an ``x`` column: SFT steps first, then DAA steps offset to follow them."""
    sft_end = history.loc[history["phase"] == "sft", "step"].max()
    sft_end = 0 if pd.isna(sft_end) else int(sft_end)
    x = history["step"] + (history["phase"] == "daa") * sft_end
    return history.assign(x=x), sft_end


def plot_trajectories(history: pd.DataFrame, ax, *, phase: str | None = None,
                      label_threshold: float = 0.05, title: str | None = None, legend: bool = True,
                      dataset=None) -> None:
    """Draw every trajectory's probability over steps on ``ax``.

    In-distribution trajectories are thick and coloured, labelled chosen (blue), rejected (red)
    or data (the other demonstrations); OOD ones thin grey, or dashed and labelled "(OOD)" when
    they ever exceed ``label_threshold``.

    Args:
        history: tidy history (phase, step, trajectory, prob, in_distribution).
        phase: ``"sft"``, ``"daa"`` or None for both, SFT first.
        legend: draw the legend of labelled trajectories.
        dataset: names the chosen and rejected answers (default: the paper's, see
            :func:`trajectory_roles`).
    """
    data = history if phase is None else history[history["phase"] == phase]
    data, sft_end = _timeline(data) if phase is None else (data.assign(x=data["step"]), 0)
    roles = trajectory_roles(history, dataset)
    colors = iter([c for c in IN_DIST_COLORS if c not in ROLE_COLORS.values()] * 100)
    ood_colors = iter(["#ff7f0e", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#8c564b"] * 100)
    used: set[str] = set()
    background = []  # unlabelled OOD curves, drawn as one collection (fast with many trajectories)
    for name, rows in data.groupby("trajectory", sort=False):
        in_dist = bool(rows["in_distribution"].iloc[0])
        peak = rows["prob"].max()
        if in_dist:
            role = roles.get(name, "data")
            color = ROLE_COLORS[role] if role != "data" or "data" not in used else next(colors)
            used.add(role)
            ax.plot(rows["x"], rows["prob"], lw=2.4, color=color, label=f"{name} ({role})")
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
BUCKET_COLORS = {"mass_chosen": ROLE_COLORS["chosen"], "mass_rejected": ROLE_COLORS["rejected"],
                 "mass_other_data": ROLE_COLORS["data"]}  # the trajectory panels' colours
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
