"""Where did my chosen probability go? An exact account of a run's DAA phase.

Probability sums to one, so whatever the chosen answers lose from DAA step 0 to step t, the other
trajectories gain, to the last digit::

    π_0(C) − π_t(C) = Σ_groups [π_t(G) − π_0(G)]          C: the chosen trajectories

with the other trajectories in the buckets of :mod:`treemdp.accounting`: the rejected ones, the
rest of the data, and the OOD trajectories by the length k of the prefix they share with a chosen
one (k = 0: they leave it at the first token; k = depth − 1: a sibling of the chosen leaf). The
soft-Q view (App. D) says mass should flow to OOD continuations of the chosen prefix; this
account shows whether it did, step by step.

:func:`account` works on any per-step group masses; :func:`explain_run` reads a run folder
(``treemdp train`` / ``sweep``): the ``mass_*`` columns of ``metrics.csv`` (every run records
them), or, for one preference of several (``pair``), ``history`` when it holds every trajectory,
else a re-run of the saved config (same seed, same numbers) summing the groups as it goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from ..accounting import bucket_ids, bucket_masses, bucket_names
from ..errors import UserError
from ..exact import in_distribution_mask
from ..tree import Dataset, TreeMDP


@dataclass(frozen=True)
class Groups:
    """A partition of the trajectories for the account.

    Attributes:
        labels: group names; group 0 is the chosen trajectories.
        columns: the matching ``metrics.csv`` bucket columns (:func:`treemdp.accounting.bucket_names`).
        index: int64 [T], the group of every trajectory.
    """

    labels: tuple[str, ...]
    columns: tuple[str, ...]
    index: torch.Tensor


def group_labels(depth: int) -> tuple[str, ...]:
    """Readable names of the buckets, in bucket order."""
    return ("chosen", "rejected", "other data") + tuple(
        f"OOD sharing {k} token{'s' if k != 1 else ''}" for k in range(depth))


def trajectory_groups(mdp: TreeMDP, dataset: Dataset, pair: Optional[int] = None,
                      in_distribution: str = "data") -> Groups:
    """The buckets of :mod:`treemdp.accounting` for every preference, or for preference ``pair`` alone
    (0-based; the other preferences' answers then count as other data)."""
    prefs = dataset.preferences
    if not prefs:
        raise UserError("the run has no preferences: there is no chosen answer to account for")
    if pair is not None and not 0 <= pair < len(prefs):
        raise UserError(f"pair {pair} is out of range: the run has {len(prefs)} preference(s) (0..{len(prefs) - 1})")
    picked = list(range(len(prefs))) if pair is None else [pair]
    chosen = mdp.trajectory_index(dataset.chosen()[picked])
    rejected = mdp.trajectory_index(dataset.rejected()[picked])
    inside = in_distribution_mask(mdp, dataset, in_distribution)
    index = bucket_ids(mdp, inside, chosen, rejected)
    return Groups(group_labels(mdp.depth), tuple(bucket_names(mdp.depth)), index)


def group_masses(probs: torch.Tensor, groups: Groups) -> torch.Tensor:
    """Σ of ``probs`` [..., T] over each group -> [..., G] (float64)."""
    return bucket_masses(probs.double(), groups.index.to(probs.device), len(groups.labels))


def account(masses: torch.Tensor, steps, groups: Groups) -> pd.DataFrame:
    """The account from group masses [S, G] at DAA steps ``steps`` (the first row is the start).

    Columns: ``step``, ``chosen`` π_t(C), ``change`` π_t(C) − π_0(C) (negative: the chosen lost mass,
    positive: it gained), one ``gain: <group>`` column per other group (π_t(G) − π_0(G)), and
    ``residual`` = change + Σ gains (zero up to float error: the masses sum to 1).
    """
    masses = masses.double()
    frame = pd.DataFrame({"step": np.asarray(steps, dtype=int), "chosen": masses[:, 0].numpy()})
    frame["change"] = (masses[:, 0] - masses[0, 0]).numpy()
    gains = masses[:, 1:] - masses[0, 1:]
    for j, label in enumerate(groups.labels[1:]):
        frame[f"gain: {label}"] = gains[:, j].numpy()
    frame["residual"] = frame["change"] + gains.sum(-1).numpy()
    return frame


# ----- run folders ----------------------------------------------------------------------------------------
@dataclass
class Explanation:
    """What :func:`explain_run` found: the run's settings, its groups, the account and where it came from."""

    run_dir: Optional[Path]
    config: dict
    chosen: list[str]
    groups: Groups
    masses: torch.Tensor  # [S, G]
    table: pd.DataFrame
    source: str  # "metrics.csv", "history", "re-run" (folders) or "metrics", "history" (results)
    note: str = ""  # set when a re-run ends away from the folder's summary.json


def _load(run_dir: Path):
    from ..runs import load_run
    if not run_dir.is_dir() or not (run_dir / "config.json").is_file():
        raise UserError(f"{str(run_dir)!r} is not a treemdp run folder (no config.json)")
    run = load_run(run_dir)
    config = run.config.validate()
    mdp = TreeMDP(config.branching, config.depth)
    if (run_dir / "data.json").is_file():
        dataset = run.dataset
    else:
        from ..training import resolve_dataset
        dataset = resolve_dataset(config, mdp)
    if config.daa_steps < 1 or not dataset.preferences:
        raise UserError(f"run {str(run_dir)!r} has no DAA phase: nothing to explain")
    return run, config, mdp, dataset


def masses_from_metrics(metrics: pd.DataFrame, groups: Groups):
    """Group masses at every logged DAA step from a metrics table's bucket columns, or None."""
    if not set(groups.columns) <= set(metrics):
        return None
    daa = metrics[metrics["phase"] == "daa"]
    return daa["step"].to_numpy(), torch.tensor(daa[list(groups.columns)].to_numpy(), dtype=torch.float64)


def _masses_from_history(run, mdp: TreeMDP, groups: Groups):
    """Group masses at every logged DAA step from the history, or None when it lacks trajectories."""
    names = [n for n in ("history.csv", "history.parquet") if (run.path / n).is_file()]
    if not names:
        return None
    history = run.history
    daa = history[history["phase"] == "daa"]
    if daa.empty or daa.groupby("step").size().min() < mdp.n_trajectories:
        return None
    table = daa.pivot(index="step", columns="trajectory", values="prob")[mdp.trajectory_names()]
    probs = torch.tensor(table.to_numpy(), dtype=torch.float64)
    return table.index.to_numpy(), group_masses(probs, groups)


def _masses_from_rerun(config, dataset: Dataset, groups: Groups, progress: bool):
    from ..training import train
    steps, masses = [], []

    def on_log(phase, step, probs):
        if phase == "daa":
            steps.append(step)
            masses.append(group_masses(probs.detach().cpu(), groups))

    train(config, dataset, progress=progress, on_log=on_log)
    return np.asarray(steps), torch.stack(masses)


def explain_run(run_dir: str | Path, *, pair: Optional[int] = None, progress: bool = False) -> Explanation:
    """The exact account of a run folder's DAA phase (see the module docstring).

    Raises:
        UserError: not a run folder, no DAA phase, ``pair`` out of range.
    """
    run_dir = Path(run_dir)
    run, config, mdp, dataset = _load(run_dir)
    groups = trajectory_groups(mdp, dataset, pair, config.in_distribution)
    found, source = None, ""
    if pair is None and (run_dir / "metrics.csv").is_file():
        found, source = masses_from_metrics(run.metrics, groups), "metrics.csv"
    if found is None:
        found, source = _masses_from_history(run, mdp, groups), "history"
    if found is None:
        found, source = _masses_from_rerun(config, dataset, groups, progress), "re-run"
    steps, masses = found
    note = ""
    if source == "re-run" and len(dataset.preferences) == 1:
        saved = run.summary.get("final_chosen_prob")
        if saved is not None and abs(float(masses[-1, 0]) - float(saved)) > 1e-4:
            note = (f"note: the re-run ends with π(chosen) = {float(masses[-1, 0]):.4f}, the folder's summary.json "
                    f"says {float(saved):.4f} (another torch version or device?)")
    return Explanation(run_dir, config.to_dict(), chosen_names(mdp, groups), groups, masses,
                       account(masses, steps, groups), source, note)


def explain_result(result, *, pair: Optional[int] = None) -> Explanation:
    """The same account for a :class:`~treemdp.training.RunResult` in memory (``train(...)``)."""
    config = result.config
    mdp = TreeMDP(config.branching, config.depth)
    groups = trajectory_groups(mdp, result.dataset, pair, config.in_distribution)
    found = masses_from_metrics(result.metrics, groups) if pair is None else None
    source = "metrics"
    if found is None:
        daa = result.history[result.history["phase"] == "daa"]
        table = daa.pivot(index="step", columns="trajectory", values="prob")[mdp.trajectory_names()]
        found = table.index.to_numpy(), group_masses(torch.tensor(table.to_numpy(), dtype=torch.float64), groups)
        source = "history"
    steps, masses = found
    return Explanation(None, config.to_dict(), chosen_names(mdp, groups), groups, masses,
                       account(masses, steps, groups), source)


def chosen_names(mdp: TreeMDP, groups: Groups) -> list[str]:
    return [mdp.trajectory_name(mdp.trajectories_row(i)) for i in (groups.index == 0).nonzero()[:, 0].tolist()]


def key_steps(table: pd.DataFrame, rows: int = 8) -> pd.DataFrame:
    """A few telling rows: the start, log-spaced steps, the chosen's lowest point, the OOD peak, the end."""
    steps = table["step"].to_numpy()
    ood = table[[c for c in table if c.startswith("gain: OOD")]].sum(axis=1).to_numpy()
    wanted = {int(steps[0]), int(steps[-1]), int(steps[int(table["chosen"].to_numpy().argmin())]),
              int(steps[int(ood.argmax())])}
    for x in np.geomspace(1, max(1, steps[-1]), num=max(1, rows - len(wanted))):
        wanted.add(int(steps[np.abs(steps - x).argmin()]))
    return table[table["step"].isin(wanted)]


def format_table(explanation: Explanation, rows: int = 8) -> str:
    """The printed account: one line per key step, probabilities as percentages."""
    table = key_steps(explanation.table, rows)
    columns = ["step", "chosen", "change"] + [c for c in table if c.startswith("gain: ")]
    short = {"step": "step", "chosen": "π(chosen)", "change": "Δπ(chosen)"}
    short.update({c: c[len("gain: "):].replace("OOD sharing ", "OOD/").replace(" tokens", "").replace(" token", "")
                  for c in columns if c.startswith("gain: ")})
    widths = {c: max(len(short[c]), 8) for c in columns}
    lines = ["  ".join(f"{short[c]:>{widths[c]}}" for c in columns)]
    for _, row in table.iterrows():
        cells = [f"{int(row['step']):>{widths['step']}d}"]
        cells += [f"{100 * row[c]:>{widths[c] - 1}.2f}%" for c in columns[1:]]
        lines.append("  ".join(cells))
    residual = float(explanation.table["residual"].abs().max())
    lines.append(f"(gains: change since DAA step 0; OOD/k = OOD trajectories sharing their first k tokens with "
                 f"the chosen; Δπ(chosen) = -(sum of gains): negative when the chosen lost mass, positive when it "
                 f"gained; largest residual {residual:.1e})")
    return "\n".join(lines)


def draw_explanation(explanation: Explanation, left, right) -> None:
    """Draw the account on two matplotlib axes: every group's mass (stacked), and each group's change."""
    from ..plots import pyplot
    table, labels = explanation.table, explanation.groups.labels
    steps = table["step"].to_numpy()
    masses = explanation.masses.numpy()
    colors = ["#2ca02c", "#d62728", "#1f77b4"] + list(pyplot().get_cmap("Oranges")(np.linspace(0.35, 0.95, len(labels) - 3)))
    left.stackplot(steps, masses.T, labels=labels, colors=colors, alpha=0.9)
    left.set_ylim(0, 1)
    left.set_ylabel("probability mass")
    left.set_title("where the mass is (stacked)", fontsize=10)
    right.plot(steps, table["change"], color=colors[0], lw=2.2, label="chosen (change)")
    for j, label in enumerate(labels[1:], start=1):
        right.plot(steps, table[f"gain: {label}"], color=colors[j], lw=1.6, label=label)
    right.axhline(0, color="0.5", lw=0.8)
    right.set_ylabel("change since DAA step 0")
    right.set_title("how the chosen's mass changed, and who took or gave it", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("DAA step" + (" (log)" if steps[-1] > 50 else ""))
        if steps[-1] > 50:
            ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(steps[0], steps[-1])
        ax.grid(alpha=0.3)
    right.legend(fontsize=8, loc="best")


def plot_explanation(explanation: Explanation, path: str | Path) -> Path:
    """:func:`draw_explanation` on a new figure, saved to ``path``."""
    from ..plots import pyplot
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=100, layout="constrained")
    draw_explanation(explanation, left, right)
    c = explanation.config
    fig.suptitle(f"{c['loss']} beta={c['beta']:g} seed={c['seed']}: chosen {', '.join(explanation.chosen)} "
                 f"({explanation.source})", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["Groups", "group_labels", "trajectory_groups", "group_masses", "account", "Explanation",
           "masses_from_metrics", "explain_run", "explain_result", "chosen_names", "key_steps", "format_table",
           "draw_explanation", "plot_explanation"]
