"""The numbers ``figures/README.md`` quotes for the paper-style figures, as a table: ``claims.csv``.

``treemdp reproduce`` writes it beside the figures from the same sweep folders the figures are
drawn from (``paper``, ``optimizers``, ``policies``), in the lab's layout
(:mod:`treemdp.lab.claims`): one row per number, ``claim, setting, statistic, value, low, high,
n``, with a 95% bootstrap interval over seeds where the number is a mean over seeds. The README
text quotes these rows; ``make check-figures`` (:mod:`treemdp.check_figures`) compares them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .lab.claims import claim_row
from .experiments import BETAS, LOSSES


def _cell(table: pd.DataFrame, loss: str, beta: float) -> pd.DataFrame:
    return table[(table["loss"] == loss) & np.isclose(table["beta"], beta)]


def mass_summary(paper: pd.DataFrame) -> list[dict]:
    """Figure 7: mean peak and final OOD mass per (loss, beta) over seeds, and their range over cells."""
    rows, peaks = [], []
    for loss in LOSSES:
        for beta in BETAS:
            cell = _cell(paper, loss, beta)
            if cell.empty:
                continue
            setting = f"{loss}, beta={beta:g}"
            rows.append(claim_row("fig07_mass", setting, "mean peak OOD mass", cell["peak_ood_mass"]))
            rows.append(claim_row("fig07_mass", setting, "mean final OOD mass", cell["final_ood_mass"]))
            rows.append(claim_row("fig07_mass", setting, "max peak OOD mass over seeds",
                             value=float(cell["peak_ood_mass"].max()), n=len(cell)))
            peaks.append(float(cell["peak_ood_mass"].mean()))
    if peaks:
        rows.append(claim_row("fig07_mass", "all (loss, beta)", "lowest mean peak OOD mass", value=min(peaks), n=len(peaks)))
        rows.append(claim_row("fig07_mass", "all (loss, beta)", "highest mean peak OOD mass", value=max(peaks), n=len(peaks)))
        rows.append(claim_row("fig07_mass", "all (loss, beta)", "cells with mean peak OOD mass > 0.5",
                         value=float(sum(p > 0.5 for p in peaks)), n=len(peaks)))
    return rows


def dpo_seeds(paper: pd.DataFrame, *, beta: float = 0.1, seeds: Sequence[int] = (1, 2, 3)) -> list[dict]:
    """Figure 18: each seed's peak OOD mass, its step and its final OOD mass (DPO at ``beta``)."""
    rows = []
    cell = _cell(paper, "dpo", beta)
    for seed in seeds:
        run = cell[cell["seed"] == seed]
        if run.empty:
            continue
        setting = f"dpo, beta={beta:g}, seed {seed}"
        for column, statistic in (("peak_ood_mass", "peak OOD mass"), ("peak_ood_step", "step of the peak"),
                                  ("final_ood_mass", "final OOD mass")):
            rows.append(claim_row("fig18_seeds", setting, statistic, value=float(run[column].iloc[0]), n=1))
    return rows


def controls(paper: pd.DataFrame, other: pd.DataFrame, *, by: str, claim: str) -> list[dict]:
    """``optimizers`` / ``tabular_vs_gru``: mean peak and final OOD mass over every (loss, beta,
    seed) per value of ``by`` (diverged runs left out, as in the figures)."""
    table = pd.concat([paper, other], ignore_index=True)
    rows = []
    for key, part in table.groupby(by, sort=False):
        rows.append(claim_row(claim, f"{by}={key}, all loss and beta", "mean peak OOD mass", part["peak_ood_mass"]))
        rows.append(claim_row(claim, f"{by}={key}, all loss and beta", "mean final OOD mass", part["final_ood_mass"]))
        rows.append(claim_row(claim, f"{by}={key}, all loss and beta", "mean OOD mass after SFT", part["sft_ood_mass"]))
        rows.append(claim_row(claim, f"{by}={key}, all loss and beta", "max peak OOD mass over runs",
                         value=float(part["peak_ood_mass"].max()), n=len(part)))
    return rows


def paper_claims(runs: str | Path) -> pd.DataFrame:
    """Every row for the paper-style figures, from ``reproduce``'s sweep folders under ``runs``."""
    from .figures import sweep_results
    runs = Path(runs)
    paper = sweep_results(runs / "paper")
    rows = mass_summary(paper) + dpo_seeds(paper)
    if (runs / "optimizers").exists():
        rows += controls(paper, sweep_results(runs / "optimizers"), by="optimizer", claim="optimizers")
    if (runs / "policies").exists():
        rows += controls(paper, sweep_results(runs / "policies"), by="policy", claim="tabular_vs_gru")
    return pd.DataFrame(rows, columns=["claim", "setting", "statistic", "value", "low", "high", "n"])


def write_paper_claims(runs: str | Path, out: str | Path) -> Path:
    """``paper_claims(runs)`` as ``out`` (CSV, six significant digits, the lab's format)."""
    out = Path(out)
    paper_claims(runs).to_csv(out, index=False, float_format="%.6g")
    return out
