"""Gao et al. (2023) fits of over-optimization curves: the gain R over the reference vs d = sqrt(KL).

Three forms, each linear in its two parameters and through the origin (R(0) = 0), fitted by least
squares on the same points, so their errors compare fairly (PAPER_NOTES, "Scaling laws"):

    rl        R(d) = d (alpha - b log d)       Gao et al.'s RL form; peak at d = exp(alpha/b - 1)
    bon       R(d) = d (alpha - b d)           Gao et al.'s best-of-n form; peak at d = alpha / (2b)
    quad_kl   R(d) = c1 KL + c2 KL^2           a quadratic in KL (d^2, d^4), same parameter count:
                                               the alternative the DAA paper compares the RL form with

Each run contributes its curve's points (every logged step, or every n); a group's fit pools its
runs. The bootstrap resamples *seeds* (whole runs) with replacement and refits from per-run
sufficient statistics (X'X, X'y, y'y), so 1000 resamples cost next to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..errors import UserError
from ..rng import stream


@dataclass(frozen=True)
class Form:
    """A two-parameter form R(d) = theta . features(d)."""

    name: str
    params: tuple[str, str]
    features: Callable[[np.ndarray], np.ndarray]  # d [n] -> [n, 2]
    formula: str

    def predict(self, d, theta) -> np.ndarray:
        return self.features(np.asarray(d, dtype=float)) @ np.asarray(theta, dtype=float)


def _d_log_d(d: np.ndarray) -> np.ndarray:
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


FORMS: dict[str, Form] = {
    "rl": Form("rl", ("alpha", "b"), lambda d: np.stack([d, -_d_log_d(d)], -1), "d (alpha - b log d)"),
    "bon": Form("bon", ("alpha", "b"), lambda d: np.stack([d, -d * d], -1), "d (alpha - b d)"),
    "quad_kl": Form("quad_kl", ("c1", "c2"), lambda d: np.stack([d ** 2, d ** 4], -1), "c1 KL + c2 KL^2"),
}


def get_form(name: str) -> Form:
    if name not in FORMS:
        raise UserError(f"unknown fit form {name!r}; choose one of: {', '.join(FORMS)}")
    return FORMS[name]


def rl_peak(alpha: float, b: float) -> float:
    """d at the maximum of d (alpha - b log d): exp(alpha/b - 1) (inf when b <= 0)."""
    return float(np.exp(alpha / b - 1.0)) if b > 0 else np.inf


def bon_peak(alpha: float, b: float) -> float:
    """d at the maximum of d (alpha - b d): alpha / (2 b) (inf when b <= 0)."""
    return alpha / (2.0 * b) if b > 0 else np.inf


# ----- least squares from sufficient statistics ------------------------------------------------------
def _stats(form: Form, d: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[X'X (4), X'y (2), y'y, n] of one run's points, as a flat vector of 8."""
    X = form.features(d)
    return np.concatenate([(X.T @ X).ravel(), X.T @ y, [y @ y, len(y)]])


def _solve(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """theta [..., 2] and RMSE [...] from summed statistics [..., 8] (least squares, tiny ridge for safety)."""
    A = stats[..., :4].reshape(*stats.shape[:-1], 2, 2)
    v = stats[..., 4:6]
    scale = np.maximum(np.trace(A, axis1=-2, axis2=-1), 1e-300)[..., None, None]
    theta = np.linalg.solve(A + 1e-12 * scale * np.eye(2), v[..., None])[..., 0]
    sse = stats[..., 6] - 2 * (theta * v).sum(-1) + np.einsum("...i,...ij,...j->...", theta, A, theta)
    return theta, np.sqrt(np.maximum(sse, 0.0) / np.maximum(stats[..., 7], 1))


def fit_form(d, y, form: str | Form = "rl") -> tuple[np.ndarray, float]:
    """Least-squares fit of one form: (theta [2], RMSE) on points (d, y)."""
    form = get_form(form) if isinstance(form, str) else form
    d, y = np.asarray(d, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(d) & np.isfinite(y)
    theta, rmse = _solve(_stats(form, d[keep], y[keep]))
    return theta, float(rmse)


def fit_groups(curves: pd.DataFrame, by: Sequence[str], *, x: str = "sqrt_kl", y: str = "win_gain",
               run: str = "run", forms: Sequence[str] = ("rl", "bon", "quad_kl"), bootstrap: int = 1000,
               seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Fit every form to every group of runs, with a bootstrap over runs (seeds).

    Args:
        curves: tidy points, one row per (run, point), with columns ``by``, ``x``, ``y`` and ``run``.
        by: the columns that make a group (e.g. method, loss, beta, pairs).
        bootstrap: resamples of the group's runs with replacement (0: none).

    Returns:
        One row per (group, form): the group's keys, ``form``, ``runs``, ``points``, the two
        parameters (``p1``, ``p2`` with their names in ``p1_name``, ``p2_name``), ``rmse``, their
        bootstrap intervals (``*_low``, ``*_high``), the fitted ``peak_d`` (rl, bon), and for the
        rl form ``rmse_ratio`` = RMSE(rl) / RMSE(quad_kl) with its interval.
    """
    missing = [c for c in list(by) + [x, y, run] if c not in curves]
    if missing:
        raise UserError(f"the curves have no column(s) {', '.join(missing)}")
    rng = stream(seed, "bootstrap")
    tail = (1 - level) / 2
    rows = []
    for key, group in curves.groupby(list(by), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        points = group[np.isfinite(group[x]) & np.isfinite(group[y])]
        runs = list(dict.fromkeys(points[run]))
        if not runs:
            continue
        per_run = {name: np.stack([_stats(get_form(name), part[x].to_numpy(float), part[y].to_numpy(float))
                                   for _, part in points.groupby(run, sort=False)]) for name in forms}
        picks = rng.integers(0, len(runs), size=(bootstrap, len(runs))) if bootstrap else None
        fitted = {}
        for name in forms:
            theta, rmse = _solve(per_run[name].sum(0))
            row = dict(zip(by, key), form=name, formula=get_form(name).formula, runs=len(runs), points=len(points),
                       p1_name=get_form(name).params[0], p2_name=get_form(name).params[1],
                       p1=theta[0], p2=theta[1], rmse=rmse)
            if name in ("rl", "bon"):
                row["peak_d"] = (rl_peak if name == "rl" else bon_peak)(theta[0], theta[1])
            if picks is not None:
                boot_theta, boot_rmse = _solve(per_run[name][picks].sum(1))
                fitted[name] = boot_rmse
                for label, values in (("p1", boot_theta[:, 0]), ("p2", boot_theta[:, 1]), ("rmse", boot_rmse)):
                    row[f"{label}_low"], row[f"{label}_high"] = np.quantile(values, [tail, 1 - tail])
            rows.append(row)
        if "rl" in forms and "quad_kl" in forms:
            rl_row = next(r for r in rows[-len(forms):] if r["form"] == "rl")
            quad_row = next(r for r in rows[-len(forms):] if r["form"] == "quad_kl")
            rl_row["rmse_ratio"] = rl_row["rmse"] / quad_row["rmse"] if quad_row["rmse"] > 0 else np.nan
            if picks is not None:
                ratio = fitted["rl"] / np.maximum(fitted["quad_kl"], 1e-300)
                rl_row["rmse_ratio_low"], rl_row["rmse_ratio_high"] = np.quantile(ratio, [tail, 1 - tail])
    return pd.DataFrame(rows)


def curve_points(curves: pd.DataFrame) -> pd.DataFrame:
    """The points the lab fits: DAA / RLHF steps as they are, best-of-n under the reward model only."""
    if "proxy" in curves:
        curves = curves[curves["proxy"].isna() | (curves["proxy"] == "rm")]
    return curves


__all__ = ["FORMS", "Form", "get_form", "fit_form", "fit_groups", "rl_peak", "bon_peak", "curve_points"]
