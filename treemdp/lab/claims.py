"""The numbers behind the lab's verdicts: the paper's §3 claims carried to the toy, one function each.

Each function takes the tidy tables of :func:`treemdp.lab.store.load_lab` (results one row per run,
curves one row per point) and returns rows of ``claim, setting, statistic, value, low, high, n``
(an interval where one exists: a bootstrap over seeds/runs, 95%). :func:`claims_table` stacks
them; ``treemdp lab report`` writes it as ``claims.csv`` beside the figures, and the verdicts in
``figures/README.md`` quote it. No threshold here decides a verdict: the README states the
numbers and what they do and do not support.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..rng import stream

#: A run "over-optimizes" when its win-rate gain falls at least this far below its peak by the end.
DROP = 0.02


def bootstrap_mean(values, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return np.nan, np.nan, np.nan
    rng = stream(seed, "bootstrap")
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(values.mean()), float(low), float(high)


def claim_row(claim: str, setting: str, statistic: str, values=None, *, value=None, n=None) -> dict:
    if values is not None:
        value, low, high = bootstrap_mean(values)
        n = int(np.isfinite(np.asarray(values, dtype=float)).sum())
    else:
        low = high = np.nan
    return {"claim": claim, "setting": setting, "statistic": statistic, "value": value, "low": low, "high": high, "n": n}


def daa_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The main DAA grid: full batch, the gold that is not spurious, the most common hidden size."""
    daa = results[(results["method"] == "daa") & (results["batch_size"] == 0)
                  & ~results["gold"].astype(str).str.startswith("spurious")]
    if daa.empty:
        return daa
    return daa[daa["hidden_size"] == daa["hidden_size"].mode().iloc[0]]


def overoptimization(results: pd.DataFrame) -> list[dict]:
    """DAAs over-optimize: share of runs whose win-rate gain ends >= DROP below its peak, and the mean drop."""
    rows = []
    daa = daa_runs(results)
    for loss, part in daa.groupby("loss"):
        rows.append(claim_row("daas_overoptimize", f"{loss}, all beta and N", "share of runs with win drop >= 0.02",
                         (part["win_drop"] >= DROP).astype(float)))
        rows.append(claim_row("daas_overoptimize", f"{loss}, all beta and N", "mean win-rate drop from peak to end",
                         part["win_drop"]))
        rows.append(claim_row("daas_overoptimize", f"{loss}, all beta and N", "mean gold drop from peak to end",
                         part["gold_drop"]))
    if len(daa):
        rows.append(claim_row("daas_overoptimize", "all DAA runs", "share of runs with win drop >= 0.02",
                         (daa["win_drop"] >= DROP).astype(float)))
        gap = daa["frontier_win_gain_at_final_kl"] - daa["final_win_gain"]
        rows.append(claim_row("daas_overoptimize", "all DAA runs", "win-rate frontier minus the run, at its final KL", gap))
    return rows


def first_epoch(results: pd.DataFrame) -> list[dict]:
    """Over-optimization within the first epoch: where minibatch runs peak, in epochs."""
    mini = results[(results["method"] == "daa") & (results["batch_size"] > 0)]
    rows = []
    for (loss, pairs, batch), part in mini.groupby(["loss", "pairs", "batch_size"]):
        setting = f"{loss}, N={pairs}, batch {batch} ({int(np.ceil(pairs / batch))} steps per epoch)"
        rows.append(claim_row("first_epoch", setting, "share of runs peaking (win rate) before epoch 1",
                         (part["peak_win_epoch"] < 1).astype(float)))
        rows.append(claim_row("first_epoch", setting, "share of runs whose win rate has dropped >= 0.02 from its "
                         "first-epoch peak by the end", (part["win_drop"] >= DROP).astype(float)))
        rows.append(claim_row("first_epoch", setting, "mean epoch of the win-rate peak", part["peak_win_epoch"]))
    return rows


def ipo_less_prone(results: pd.DataFrame) -> list[dict]:
    """IPO less prone: IPO's drop minus DPO's (and SLiC's), paired by beta, N and seed."""
    daa = daa_runs(results)
    keys = ["beta", "pairs", "seed"]
    wide = daa.pivot_table(index=keys, columns="loss", values="win_drop")
    rows = []
    for other in ("dpo", "slic"):
        if "ipo" in wide and other in wide:
            diff = (wide["ipo"] - wide[other]).dropna()
            rows.append(claim_row("ipo_less_prone", f"ipo - {other}, paired runs, all beta and N",
                             "mean difference of win-rate drop (negative: IPO less prone)", diff))
            for beta, part in diff.groupby(level="beta"):
                rows.append(claim_row("ipo_less_prone", f"ipo - {other}, beta={beta:g}",
                                 "mean difference of win-rate drop", part))
    return rows


def capacity(results: pd.DataFrame) -> list[dict]:
    """Larger capacity less prone: the win-rate drop per hidden size, on the seeds run at every size."""
    daa = results[(results["method"] == "daa") & (results["batch_size"] == 0)
                  & ~results["gold"].astype(str).str.startswith("spurious")]
    rows = []
    for (loss, beta, pairs), part in daa.groupby(["loss", "beta", "pairs"]):
        sizes = part["hidden_size"].nunique()
        if sizes < 2:
            continue
        shared = part.groupby("seed")["hidden_size"].nunique()
        part = part[part["seed"].isin(shared[shared == sizes].index)]
        for size, runs in part.groupby("hidden_size"):
            setting = f"{loss}, beta={beta:g}, N={pairs}, hidden {size}"
            rows.append(claim_row("capacity", setting, "mean win-rate drop", runs["win_drop"]))
            rows.append(claim_row("capacity", setting, "mean peak win-rate gain", runs["peak_win_gain"]))
        rho = part[["hidden_size", "win_drop"]].corr(method="spearman").iloc[0, 1]
        rows.append(claim_row("capacity", f"{loss}, beta={beta:g}, N={pairs}, seeds {part['seed'].nunique()}",
                         "Spearman(hidden size, win drop)", value=float(rho), n=len(part)))
    return rows


def rl_form_vs_quadratic(fits: pd.DataFrame, pooled: pd.DataFrame | None = None) -> list[dict]:
    """The RL form fits better than a quadratic in KL: RMSE(rl) / RMSE(quad_kl) per group of runs
    (``fits``: one group per method, loss, beta, N, ...), and per loss pooled over beta and N (``pooled``)."""
    rows = []
    rl = fits[(fits["form"] == "rl") & fits["rmse_ratio"].notna()] if "rmse_ratio" in fits else fits.iloc[:0]
    for method, part in rl.groupby("method"):
        setting = f"{method}, one fit per (loss, beta, N)"
        rows.append(claim_row("rl_form_fits_better", setting, "median RMSE ratio rl / quad_kl",
                         value=float(part["rmse_ratio"].median()), n=len(part)))
        rows.append(claim_row("rl_form_fits_better", setting, "share of groups with ratio < 1",
                         (part["rmse_ratio"] < 1).astype(float)))
        rows.append(claim_row("rl_form_fits_better", setting, "share of groups with ratio <= 0.5",
                         (part["rmse_ratio"] <= 0.5).astype(float)))
        if "rmse_ratio_high" in part:
            rows.append(claim_row("rl_form_fits_better", setting,
                             "share of groups whose 95% bootstrap interval of the ratio lies below 1",
                             (part["rmse_ratio_high"] < 1).astype(float)))
    if pooled is not None and "rmse_ratio" in pooled:
        for _, row in pooled[(pooled["form"] == "rl") & pooled["rmse_ratio"].notna()].iterrows():
            what = row["loss"] if row["method"] == "daa" else row["method"]
            rows.append({"claim": "rl_form_fits_better", "setting": f"{what}, one fit over every beta and N",
                         "statistic": "RMSE ratio rl / quad_kl (95% bootstrap over runs)", "value": row["rmse_ratio"],
                         "low": row.get("rmse_ratio_low", np.nan), "high": row.get("rmse_ratio_high", np.nan),
                         "n": row["runs"]})
    return rows


def spurious_share(results: pd.DataFrame, curves: pd.DataFrame, budgets: Sequence[float] = (0.25, 1.0, 4.0)) -> list[dict]:
    """Small KL budgets lean on the simple feature (paper §3.3, eq. 6 in the toy): the R^2 of the
    implicit reward on the feature per beta at the end of training (beta sets the KL budget), and at
    equal KL across betas."""
    spurious = lambda t: t[t["gold"].astype(str).str.startswith("spurious") & (t["method"] == "daa")]  # noqa: E731
    runs, spur = spurious(results), spurious(curves)
    rows = []
    for (loss, beta), part in runs.groupby(["loss", "beta"]):
        setting = f"{loss}, beta={beta:g}, spurious gold"
        rows.append(claim_row("small_kl_leans_on_feature", setting, "mean final KL", part["final_kl"]))
        rows.append(claim_row("small_kl_leans_on_feature", setting, "mean final R^2 of log(pi/ref) on the feature "
                         "(answers weighted by ref)", part["final_spurious_r2_ref"]))
        rows.append(claim_row("small_kl_leans_on_feature", setting, "mean final R^2 of log(pi/ref) on the feature "
                         "(weighted by pi)", part["final_spurious_r2"]))
    for loss, part in spur.groupby("loss"):
        for budget in budgets:
            values = [_at_kl(run, budget, "spurious_r2_ref") for _, run in part.groupby("dir")]
            rows.append(claim_row("small_kl_leans_on_feature", f"{loss}, every beta, when KL first reaches {budget:g}",
                             "mean R^2 of log(pi/ref) on the feature (weighted by ref)", values))
    return rows


def _at_kl(run: pd.DataFrame, kl: float, column: str) -> float:
    """A run's ``column`` at the first step where its KL reaches ``kl`` (NaN if it never does)."""
    reached = run[run["kl_to_reference"] >= kl]
    return float(reached[column].iloc[0]) if len(reached) else np.nan


def kl_spent(curves: pd.DataFrame, fractions: Sequence[float] = (0.5, 0.9)) -> list[dict]:
    """Gao et al.: RL spends more KL than best-of-n for the same gold. Per (seed, N): the KL each
    needs to first reach a fraction of the smaller of their two peak gold gains."""
    rlhf = curves[curves["method"] == "rlhf"]
    bon = curves[(curves["method"] == "bon") & (curves.get("proxy") == "rm")]
    rows = []
    if rlhf.empty or bon.empty:
        return rows
    for beta, runs in rlhf.groupby("beta"):
        for fraction in fractions:
            ratios = []
            for (seed, pairs), run in runs.groupby(["seed", "pairs"]):
                other = bon[(bon["seed"] == seed) & (bon["pairs"] == pairs)]
                if other.empty:
                    continue
                target = fraction * min(run["gold_gain"].max(), other["gold_gain"].max())
                if target <= 0:
                    continue
                kl_rl = _first_kl(run.sort_values("step"), target)
                kl_bon = _first_kl(other.sort_values("n"), target)
                ratios.append(np.log(kl_rl / kl_bon) if kl_bon > 0 and kl_rl > 0 else np.nan)
            rows.append(claim_row("rl_spends_more_kl", f"RLHF beta={beta:g} vs best-of-n, {fraction:.0%} of the "
                             "smaller peak gold gain", "mean log(KL_RLHF / KL_BoN) (> 0: RL spends more)", ratios))
    return rows


def _first_kl(curve: pd.DataFrame, target: float) -> float:
    """KL where ``gold_gain`` first reaches ``target``, interpolated between the two points around it."""
    gain, kl = curve["gold_gain"].to_numpy(), curve["kl_to_reference"].to_numpy()
    hit = np.nonzero(gain >= target)[0]
    if not len(hit):
        return np.nan
    i = hit[0]
    if i == 0:
        return float(kl[0])
    t = (target - gain[i - 1]) / (gain[i] - gain[i - 1])
    return float(kl[i - 1] + t * (kl[i] - kl[i - 1]))


def claims_table(results: pd.DataFrame, curves: pd.DataFrame, fits: pd.DataFrame,
                 pooled_fits: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every claim's numbers (see the module doc)."""
    rows = (overoptimization(results) + first_epoch(results) + rl_form_vs_quadratic(fits, pooled_fits) + capacity(results)
            + ipo_less_prone(results) + spurious_share(results, curves) + kl_spent(curves))
    return pd.DataFrame(rows, columns=["claim", "setting", "statistic", "value", "low", "high", "n"])


__all__ = ["claims_table", "overoptimization", "first_epoch", "ipo_less_prone", "capacity", "rl_form_vs_quadratic",
           "spurious_share", "kl_spent", "daa_runs", "DROP"]
