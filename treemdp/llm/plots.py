"""Plots over checkpoints from ``eval.csv`` files, after the paper's figures 1-3.

``win_rate_vs_sqrt_kl.png``: win rate against d = sqrt(KL(pi || ref)) per loss, one line per
beta (the over-optimisation hump). ``trends.png``: KL, chosen/rejected log-prob changes and
mean length over training steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..errors import UserError


def load_evals(runs: list[str]) -> pd.DataFrame:
    frames = []
    for run in runs:
        path = Path(run) / "eval.csv"
        if not path.is_file():
            raise UserError(f"{run} has no eval.csv; run `treemdp llm eval --run {run}` first")
        frame = pd.read_csv(path)
        frame["run"] = str(run)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).sort_values(["run", "step"])


def plot_runs(runs: list[str], out: str) -> list[Path]:
    """Write both figures for the given evaluated runs into ``out``; return their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    df = load_evals(runs)
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    df["sqrt_kl"] = df["kl"].clip(lower=0).map(math.sqrt)
    losses = sorted(df["loss_name"].fillna("sft").unique())
    paths = []

    if "win_rate" in df:
        fig, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3.2), squeeze=False)
        for ax, loss in zip(axes[0], losses):
            part = df[df["loss_name"].fillna("sft") == loss]
            for (beta, run), g in part.groupby(["run_beta", "run"], dropna=False):
                ax.plot(g["sqrt_kl"], g["win_rate"], marker="o", label=f"beta={beta}")
            ax.set(title=str(loss).upper(), xlabel="sqrt(KL(pi || ref))", ylabel="win rate")
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / "win_rate_vs_sqrt_kl.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    panels = [("kl", "KL(pi || ref)"), ("delta_logp_chosen", "chosen log-prob change"),
              ("delta_logp_rejected", "rejected log-prob change"), ("mean_length", "mean length")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (col, title) in zip(axes, panels):
        for run, g in df.groupby("run"):
            label = f"{g['loss_name'].iloc[0]} beta={g['run_beta'].iloc[0]}"
            ax.plot(g["step"], g[col], marker="o", label=label)
        ax.set(title=title, xlabel="step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "trends.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
