"""Methods compared at equal KL: each method's best gain at every sqrt KL, over its betas and steps.

A run's curve (gain against d = sqrt KL(pi || ref), one point per step, or per n for best-of-n)
is read as a polyline; its value at a grid point d is the largest gain where the polyline crosses
d (linear between consecutive points; NaN where the run never reaches d). For one reference (a
seed and N pairs), a method's **envelope** is the largest of its runs' values at each d:

    E_m(d) = max over runs of m (every beta, every step) of gain at d

so E_m(d) answers "the best gain method m reached anywhere at sqrt KL = d". Methods: each DAA loss,
``rlhf`` and ``bon`` (best-of-n under the reward model); ``frontier`` is the exact frontier of the
same reference. Every step counts, the optimiser's first steps too: each is a policy that existed,
at its own KL (a run's own peak in ``summary.json`` leaves them out, see ``transient_*``; here a
transient can only add a point at the KL it really had, and DAA runs pass most of the small KL
range within those first steps).

Over seeds: the mean envelope with a 95% bootstrap interval, and the d at which each seed's
envelope peaks (mean and interval), also as a fraction of the frontier's saturation sqrt KL,
sqrt(-log ref(argmax r*)), past which no policy gains more. A peak at the largest d the method
reaches (``peak_at_edge``) means it did not over-optimize within its KL range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .claims import bootstrap_mean, claim_row, daa_runs
from .store import LabTables

#: sqrt KL values of the gain table (``equal_kl_table.csv``).
POINTS = (0.5, 1.0, 1.5, 2.0)
#: Spacing of the common sqrt-KL grid.
GRID_STEP = 0.05
QUALITIES = ("gold", "win")


@dataclass
class EqualKL:
    """The equal-KL comparison of :func:`equal_kl` (one row per method, N, quality and ...).

    Attributes:
        envelopes: per seed: ``method, pairs, seed, quality, sqrt_kl, gain`` (NaN beyond the run's reach).
        curves: over seeds: ``method, pairs, quality, sqrt_kl, mean, low, high, seeds``.
        peaks: ``method, pairs, quality, peak_sqrt_kl, ..._low, ..._high, peak_gain, ..._low, ..._high,
            peak_saturation (peak sqrt KL / saturation sqrt KL), ..._low, ..._high, peak_at_edge (share of
            seeds), reach_sqrt_kl (mean largest sqrt KL reached), saturation_sqrt_kl (mean over seeds), seeds``.
        table: the gain at fixed sqrt KL: ``method, pairs, quality, sqrt_kl, mean, low, high, seeds``.
    """

    envelopes: pd.DataFrame
    curves: pd.DataFrame
    peaks: pd.DataFrame
    table: pd.DataFrame


def polyline_max(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The largest y of the polyline (x_i, y_i) at each grid value; NaN where it does not reach it.

    Every segment [x_i, x_{i+1}] covering g contributes y_i + (g - x_i)(y_{i+1} - y_i)/(x_{i+1} - x_i)
    (a vertical segment its larger end); a single point counts where g equals it. [P], [P], [G] -> [G].
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = np.full(len(grid), -np.inf)
    if len(x) == 1:
        out[np.isclose(grid, x[0])] = y[0]
    if len(x) >= 2:
        x0, x1, y0, y1 = x[:-1, None], x[1:, None], y[:-1, None], y[1:, None]
        g = grid[None, :]
        inside = (g >= np.minimum(x0, x1) - 1e-12) & (g <= np.maximum(x0, x1) + 1e-12)
        span = np.where(x1 != x0, x1 - x0, 1.0)
        value = np.where(x1 != x0, y0 + (g - x0) * (y1 - y0) / span, np.maximum(y0, y1))
        out = np.where(inside, value, -np.inf).max(0)
    return np.where(np.isfinite(out), out, np.nan)


def ordered(methods) -> list[str]:
    """The DAA losses (alphabetical), then ``rlhf``, then ``bon``; ``frontier`` left out."""
    last = ("rlhf", "bon")
    return sorted(m for m in methods if m not in last + ("frontier",)) + [m for m in last if m in set(methods)]


def method_of(frame: pd.DataFrame) -> pd.Series:
    """The compared method of each row: the DAA loss, ``rlhf`` or ``bon``."""
    return frame["method"].where(frame["method"] != "daa", frame["loss"].astype(str))


def _plain(tables: LabTables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs compared: full-batch, not on the spurious gold, at the main hidden size; their curves
    (best-of-n under the reward model)."""
    results = tables.results
    plain = results[~results["gold"].astype(str).str.startswith("spurious")
                    & (results["batch_size"].fillna(0) == 0)]
    daa = daa_runs(results)
    hidden = daa["hidden_size"].iloc[0] if len(daa) else (plain["hidden_size"].mode().iloc[0] if len(plain) else None)
    plain = plain[plain["hidden_size"] == hidden]
    curves = tables.curves[tables.curves["dir"].isin(plain["dir"])]
    if "proxy" in curves:
        curves = curves[(curves["method"] != "bon") | (curves["proxy"] == "rm")]
    return plain, curves


def _grid(curves: pd.DataFrame, step: float = GRID_STEP) -> np.ndarray:
    top = float(np.nanmax(curves["sqrt_kl"])) if len(curves) else 0.0
    return np.round(np.arange(0.0, top + step, step), 10)


def equal_kl(tables: LabTables, *, points: Sequence[float] = POINTS, grid: Optional[np.ndarray] = None,
             resamples: int = 2000) -> EqualKL:
    """Every method's envelope against sqrt KL on a common grid, over seeds (see the module doc).

    Args:
        tables: :func:`~treemdp.lab.store.load_lab` of the grid folders (DAA, RLHF and best-of-n runs).
        points: sqrt KL values of the gain table.
        grid: the common sqrt-KL grid (default: 0, 0.05, ... up to the largest sqrt KL reached).
        resamples: bootstrap resamples of the seeds.
    """
    plain, curves = _plain(tables)
    grid = _grid(curves) if grid is None else np.asarray(grid, float)
    curves = curves.assign(compared=method_of(curves))
    saturation = plain.groupby(["pairs", "seed"])["saturation_sqrt_kl"].first() if "saturation_sqrt_kl" in plain else None
    rows = []
    for (method, pairs, seed), part in curves.groupby(["compared", "pairs", "seed"], sort=True):
        for quality in QUALITIES:
            runs = [polyline_max(run["sqrt_kl"].to_numpy(), run[f"{quality}_gain"].to_numpy(), grid)
                    for _, run in part.groupby("dir", sort=False)]
            envelope = np.fmax.reduce(runs) if runs else np.full(len(grid), np.nan)
            rows.append(pd.DataFrame({"method": method, "pairs": pairs, "seed": seed, "quality": quality,
                                      "sqrt_kl": grid, "gain": envelope}))
    fronts = tables.frontiers[tables.frontiers["dir"].isin(plain["dir"])]
    for (pairs, seed), part in fronts.groupby(["pairs", "seed"], sort=True):
        part = part[part["dir"] == part["dir"].iloc[0]]  # one run's reference: all of (seed, N) share it
        for quality in QUALITIES:
            f = part[part["kind"] == quality].sort_values("sqrt_kl")
            rows.append(pd.DataFrame({"method": "frontier", "pairs": pairs, "seed": seed, "quality": quality,
                                      "sqrt_kl": grid, "gain": np.interp(grid, f["sqrt_kl"], f[f"{quality}_gain"])}))
    columns = ["method", "pairs", "seed", "quality", "sqrt_kl", "gain"]
    envelopes = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    return EqualKL(envelopes, _over_seeds(envelopes, resamples), _peaks(envelopes, saturation, resamples),
                   _at_points(envelopes, points, resamples))


def _stats(values, resamples: int) -> dict:
    mean, low, high = bootstrap_mean(values, resamples=resamples)
    return {"mean": mean, "low": low, "high": high, "seeds": int(np.isfinite(np.asarray(values, float)).sum())}


def _over_seeds(envelopes: pd.DataFrame, resamples: int) -> pd.DataFrame:
    rows = [{"method": m, "pairs": n, "quality": q, "sqrt_kl": d, **_stats(part["gain"], resamples)}
            for (m, n, q, d), part in envelopes.groupby(["method", "pairs", "quality", "sqrt_kl"], sort=False)]
    return pd.DataFrame(rows, columns=["method", "pairs", "quality", "sqrt_kl", "mean", "low", "high", "seeds"])


def _at_points(envelopes: pd.DataFrame, points: Sequence[float], resamples: int) -> pd.DataFrame:
    rows = []
    for (m, n, q, seed), part in envelopes.groupby(["method", "pairs", "quality", "seed"], sort=False):
        for d in points:
            rows.append({"method": m, "pairs": n, "quality": q, "seed": seed, "sqrt_kl": float(d),
                         "gain": float(polyline_max(part["sqrt_kl"], part["gain"], np.array([d]))[0])})
    frame = pd.DataFrame(rows, columns=["method", "pairs", "quality", "seed", "sqrt_kl", "gain"])
    out = [{"method": m, "pairs": n, "quality": q, "sqrt_kl": d, **_stats(part["gain"], resamples)}
           for (m, n, q, d), part in frame.groupby(["method", "pairs", "quality", "sqrt_kl"], sort=False)]
    return pd.DataFrame(out, columns=["method", "pairs", "quality", "sqrt_kl", "mean", "low", "high", "seeds"])


def envelope_peak(sqrt_kl: np.ndarray, gain: np.ndarray) -> tuple[float, float, bool, float]:
    """(sqrt KL of the envelope's maximum, the maximum, whether it sits at the largest sqrt KL reached,
    that largest sqrt KL); NaNs where the envelope is empty."""
    finite = np.isfinite(gain)
    if not finite.any():
        return np.nan, np.nan, False, np.nan
    i = int(np.nanargmax(gain))
    reach = float(sqrt_kl[finite][-1])
    return float(sqrt_kl[i]), float(gain[i]), bool(i == np.nonzero(finite)[0][-1]), reach


def _peaks(envelopes: pd.DataFrame, saturation: Optional[pd.Series], resamples: int) -> pd.DataFrame:
    rows = []
    for (m, n, q), part in envelopes.groupby(["method", "pairs", "quality"], sort=False):
        per_seed = []
        for seed, env in part.groupby("seed"):
            d, gain, edge, reach = envelope_peak(env["sqrt_kl"].to_numpy(), env["gain"].to_numpy())
            sat = float(saturation.get((n, seed), np.nan)) if saturation is not None else np.nan
            per_seed.append((d, gain, d / sat if sat > 0 else np.nan, edge, reach, sat))
        d, gain, fraction, edge, reach, sat = (np.array(v, float) for v in zip(*per_seed))
        row = {"method": m, "pairs": n, "quality": q}
        for name, values in (("peak_sqrt_kl", d), ("peak_gain", gain), ("peak_saturation", fraction)):
            mean, low, high = bootstrap_mean(values, resamples=resamples)
            row.update({name: mean, f"{name}_low": low, f"{name}_high": high})
        row.update(peak_at_edge=float(edge.mean()), reach_sqrt_kl=_nanmean(reach), saturation_sqrt_kl=_nanmean(sat),
                   seeds=len(per_seed))
        rows.append(row)
    return pd.DataFrame(rows)


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan


# ----- claims --------------------------------------------------------------------------------------------
def _first_reach(sqrt_kl: np.ndarray, gain: np.ndarray, target: float) -> float:
    """The smallest sqrt KL at which the envelope reaches ``target`` (NaN if never)."""
    hit = np.nonzero(np.nan_to_num(gain, nan=-np.inf) >= target)[0]
    return float(sqrt_kl[hit[0]]) if len(hit) else np.nan


def equal_kl_claims(comparison: EqualKL, fractions: Sequence[float] = (0.5, 0.9)) -> list[dict]:
    """claims.csv rows from the envelopes: RL spends more KL than best-of-n (at equal gold), and who
    over-optimizes first (the sqrt KL of each gold envelope's peak, paired by seed and N)."""
    env = comparison.envelopes[comparison.envelopes["quality"] == "gold"]
    rows = []
    methods = ordered(env["method"].unique())
    for pairs, part in env.groupby("pairs"):
        wide = {m: {s: e for s, e in part[part["method"] == m].groupby("seed")} for m in methods}
        if wide.get("rlhf") and wide.get("bon"):
            for fraction in fractions:
                ratios = []
                for seed in sorted(set(wide["rlhf"]) & set(wide["bon"])):
                    rl, bon = wide["rlhf"][seed], wide["bon"][seed]
                    target = fraction * min(rl["gain"].max(), bon["gain"].max())
                    if not target > 0:
                        continue
                    d_rl = _first_reach(rl["sqrt_kl"].to_numpy(), rl["gain"].to_numpy(), target)
                    d_bon = _first_reach(bon["sqrt_kl"].to_numpy(), bon["gain"].to_numpy(), target)
                    ratios.append(2 * np.log(d_rl / d_bon) if d_rl > 0 and d_bon > 0 else np.nan)
                rows.append(claim_row("rl_spends_more_kl", f"envelopes over beta, N={pairs}, {fraction:.0%} of the smaller "
                                 "peak gold gain", "mean log(KL_RLHF / KL_BoN) (> 0: RL spends more)", ratios))
        peaks = {m: {s: envelope_peak(e["sqrt_kl"].to_numpy(), e["gain"].to_numpy()) for s, e in by_seed.items()}
                 for m, by_seed in wide.items()}
        for m in methods:
            rows.append(claim_row("who_overoptimizes_first", f"{m}, N={pairs}, gold envelope over beta and steps",
                             "mean sqrt KL of the envelope's peak", [p[0] for p in peaks[m].values()]))
            rows.append(claim_row("who_overoptimizes_first", f"{m}, N={pairs}, gold envelope over beta and steps",
                             "share of seeds whose envelope peaks at the largest sqrt KL reached (no over-optimization seen)",
                             [float(p[2]) for p in peaks[m].values()]))
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                shared = sorted(set(peaks[a]) & set(peaks[b]))
                diff = [peaks[a][s][0] - peaks[b][s][0] for s in shared]
                rows.append(claim_row("who_overoptimizes_first", f"{a} - {b}, N={pairs}, paired by seed",
                                 "mean difference of the gold envelope's peak sqrt KL (< 0: the first peaks earlier)", diff))
    return rows


# ----- text --------------------------------------------------------------------------------------------
def format_equal_kl(comparison: EqualKL, quality: str = "gold") -> str:
    """The gain table at fixed sqrt KL and the envelope peaks, one line per (N, method)."""
    table, peaks = comparison.table, comparison.peaks
    table, peaks = table[table["quality"] == quality], peaks[peaks["quality"] == quality]
    if table.empty:
        return "(no runs to compare)"
    points = sorted(table["sqrt_kl"].unique())
    label = "gold gain" if quality == "gold" else "win-rate gain"
    lines = [f"{label} at equal sqrt KL: mean [95% bootstrap over seeds] of each method's envelope over beta and steps",
             f"{'N':>5}  {'method':<9}" + "".join(f"{'sqrt KL ' + format(d, 'g'):>26}" for d in points)
             + f"{'peak at sqrt KL':>22}{'/ saturation':>14}"]
    rank = {m: i for i, m in enumerate(["frontier"] + ordered(table["method"].unique()))}
    keyed = table.assign(rank=table["method"].map(rank)).sort_values(["pairs", "rank", "sqrt_kl"])
    for (pairs, _, method), part in keyed.groupby(["pairs", "rank", "method"], sort=True):
        cells = "".join(f"{_interval(r['mean'], r['low'], r['high']):>26}" for _, r in part.sort_values("sqrt_kl").iterrows())
        p = peaks[(peaks["pairs"] == pairs) & (peaks["method"] == method)].iloc[0]
        peak = _interval(p["peak_sqrt_kl"], p["peak_sqrt_kl_low"], p["peak_sqrt_kl_high"], digits=2)
        sat = f"{p['peak_saturation']:.2f}" if np.isfinite(p["peak_saturation"]) else "-"
        lines.append(f"{pairs:>5}  {method:<9}{cells}{peak:>22}{sat:>14}")
    return "\n".join(lines)


def _interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]" if digits == 3 else \
        f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


__all__ = ["EqualKL", "equal_kl", "equal_kl_claims", "polyline_max", "envelope_peak", "method_of", "ordered",
           "format_equal_kl",
           "POINTS", "GRID_STEP"]
