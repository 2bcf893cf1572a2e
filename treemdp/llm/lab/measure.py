"""Estimates of the lab's quantities from samples, each with its standard error (pure numpy).

For a policy pi and its reference ref (PAPER_NOTES, "The LLM lab"):

    KL(pi || ref)   mean of log pi(y|x) - log ref(y|x), y ~ pi          SE = std / sqrt(n)
    gold            mean of r*(x, y), y ~ pi                            SE = std / sqrt(n)
    win rate        P(r*(y) > r*(y')) + 1/2 P(r*(y) = r*(y')),  y ~ pi(.|x), y' ~ ref(.|x), same x

The win rate compares every policy sample with every reference sample of the same prompt (a
two-sample U-statistic, the AUC of the gold between the two pools); its standard error is DeLong's:
SE^2 = Var_i(s_i) / n + Var_j(t_j) / m, s_i the share of ref samples y_i beats, t_j the share of
policy samples that beat y'_j. With several prompts the between-prompt spread enters both terms, so
the SE errs on the large side. Comparing the reference's pool with itself gives exactly 1/2 (the
lab's step 0).

Samples needed for a target SE: n = (std / SE)^2 (:func:`samples_for_se`); per sample the
log-ratio's std is what a run's ``kl_std`` column reports.
"""

from __future__ import annotations

import math

import numpy as np


def mean_se(x) -> tuple[float, float]:
    """(mean, standard error std/sqrt(n)) of a sample; SE NaN for fewer than 2 values."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()), se


def samples_for_se(std: float, target_se: float) -> int:
    """Samples n with std / sqrt(n) <= target_se."""
    return int(math.ceil((std / target_se) ** 2)) if std > 0 else 1


def win_matrix(r: np.ndarray, r_ref: np.ndarray) -> np.ndarray:
    """phi[i, j] = [r_i > r'_j] + 1/2 [r_i = r'_j], [n, m]."""
    diff = np.asarray(r, dtype=np.float64)[:, None] - np.asarray(r_ref, dtype=np.float64)[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def win_rate(r, r_ref, groups=None, groups_ref=None) -> tuple[float, float]:
    """(W, SE) of samples with gold ``r`` against reference samples with gold ``r_ref``.

    ``groups`` / ``groups_ref`` (one prompt id per sample) restrict comparisons to the same prompt
    (None: all one prompt). W is the mean over policy samples of s_i (prompts weigh by their
    policy samples); SE as in the module doc.
    """
    r, r_ref = np.asarray(r, dtype=np.float64), np.asarray(r_ref, dtype=np.float64)
    g = np.zeros(len(r), dtype=np.int64) if groups is None else np.asarray(groups)
    g_ref = np.zeros(len(r_ref), dtype=np.int64) if groups_ref is None else np.asarray(groups_ref)
    s, t = np.full(len(r), np.nan), np.full(len(r_ref), np.nan)
    for key in np.unique(g):
        i, j = np.flatnonzero(g == key), np.flatnonzero(g_ref == key)
        if len(j) == 0:
            continue
        phi = win_matrix(r[i], r_ref[j])
        s[i], t[j] = phi.mean(1), phi.mean(0)
    s, t = s[np.isfinite(s)], t[np.isfinite(t)]
    if len(s) == 0:
        return math.nan, math.nan
    var = (s.var(ddof=1) / len(s) if len(s) > 1 else 0.0) + (t.var(ddof=1) / len(t) if len(t) > 1 else 0.0)
    return float(s.mean()), float(math.sqrt(var))


def sampled_measures(log_ratio, gold, gold_ref, *, gold_chosen=None, groups=None, groups_ref=None,
                     groups_chosen=None, lengths=None, beta: float = 1.0) -> dict:
    """Every sampled column of one checkpoint (see the module doc).

    Args:
        log_ratio: log pi(y|x) - log ref(y|x) of the policy's samples [n].
        gold: r*(x, y) of those samples [n]; gold_ref: of the reference's samples [m].
        gold_chosen: r* of the data's chosen answers (the second win-rate column), or None.
        lengths: answer lengths in tokens [n] (length R^2 of beta * log-ratio on length, eq. 6).
    """
    from ..evaluate import r_squared
    log_ratio = np.asarray(log_ratio, dtype=np.float64)
    kl, kl_se = mean_se(log_ratio)
    g, g_se = mean_se(gold)
    w, w_se = win_rate(gold, gold_ref, groups, groups_ref)
    out = {"samples": len(log_ratio), "kl": kl, "kl_se": kl_se,
           "kl_std": float(log_ratio.std(ddof=1)) if len(log_ratio) > 1 else math.nan,
           "sqrt_kl": math.sqrt(max(kl, 0.0)), "gold": g, "gold_se": g_se,
           "gold_gain": g - float(np.mean(gold_ref)), "win_rate": w, "win_rate_se": w_se, "win_gain": w - 0.5}
    if gold_chosen is not None:
        wc, wc_se = win_rate(gold, gold_chosen, groups, groups_chosen)
        out.update(win_rate_chosen=wc, win_rate_chosen_se=wc_se)
    if lengths is not None:
        lengths = np.asarray(lengths, dtype=np.float64)
        out.update(length_r2=r_squared(lengths.tolist(), (beta * log_ratio).tolist()),
                   mean_length=float(lengths.mean()))
    return out


def exact_measures(logp, ref_logp, gold, *, chosen_probs=None) -> dict:
    """The same quantities by enumeration over every answer (float64 [A] each): KL, gold, win rates."""
    import torch
    from ...lab.quality import expected, kl, win_scores
    logp, ref_logp = torch.as_tensor(logp, dtype=torch.float64), torch.as_tensor(ref_logp, dtype=torch.float64)
    gold = torch.as_tensor(gold, dtype=torch.float64)
    p, ref = logp.exp(), ref_logp.exp()
    exact_kl = float(kl(logp, ref_logp))
    out = {"exact_kl": exact_kl, "exact_sqrt_kl": math.sqrt(max(exact_kl, 0.0)),
           "exact_gold": float(expected(p, gold)), "exact_gold_gain": float(expected(p - ref, gold)),
           "exact_win_rate": float(expected(p, win_scores(ref, gold)))}
    if chosen_probs is not None:
        out["exact_win_rate_chosen"] = float(expected(p, win_scores(torch.as_tensor(chosen_probs, dtype=torch.float64), gold)))
    return out


__all__ = ["mean_se", "samples_for_se", "win_matrix", "win_rate", "sampled_measures", "exact_measures"]
