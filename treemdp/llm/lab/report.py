"""The LLM lab's tables, fits and figures (``treemdp llm lab report|fit``), with the toy lab's fit code.

Written into the study folder (or ``--out``):

    results.csv      one row per (run, checkpoint), step 0 = the reference (:mod:`.study`)
    summary.csv      one row per run: reference, peak and final win rate and gold, hump yes/no
    bon.csv          best-of-n from the reference's samples, by the gold and by the proxy reward
                     model (``proxy`` column): n, KL bound log n - (n-1)/n, gold, win rate (+ exact_*
                     on the tree language, from :class:`treemdp.lab.bestofn.BestOfN`)
    fits.csv         Gao et al. forms (rl, bon, quad_kl; :func:`treemdp.lab.fits.fit_groups`) of the
                     gain over the reference vs sqrt(KL), per (loss, beta, pairs) and metric
    humps.png        gold gain and win rate vs sqrt(KL) per loss (colour) and beta (column), error
                     bars of one SE on both axes, points joined in KL order from the origin (step 0),
                     RL-form fits dashed, best-of-n beside them

Best-of-n from a pool of k samples per prompt, for n <= k, unbiased: the answer of rank i (1 =
lowest proxy) is the best of a random n-subset with probability C(i-1, n-1) / C(k, n).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from ...errors import UserError
from ...runs import atomic_file


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def load_results(study) -> pd.DataFrame:
    """Every finished run's eval.csv of a study folder, one table (``run`` column added)."""
    study = Path(study)
    tables = [pd.read_csv(p) for p in sorted((study / "runs").glob("*/eval.csv")) if (p.parent / "summary.json").is_file()]
    if not tables:
        raise UserError(f"{study} has no finished lab runs (no runs/*/eval.csv); run 'treemdp llm lab run' first")
    results = pd.concat(tables, ignore_index=True)
    results.insert(0, "run", results["loss"] + ",beta=" + results["beta"].map("{:g}".format) + ",seed="
                   + results["seed"].astype(str) + ",pairs=" + results["pairs"].astype(str))
    return results


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    from .study import summarize
    rows = []
    for run, part in results.groupby("run", sort=False):
        part = part.sort_values("step").reset_index(drop=True)
        rows.append({"run": run, **{k: part[k].iloc[0] for k in ("loss", "beta", "seed", "pairs")}, **summarize(part)})
    return pd.DataFrame(rows)


# ----- best-of-n ------------------------------------------------------------------------------------------
def bon_weights(k: int, n: int) -> np.ndarray:
    """P(rank i of k is the best of a random n-subset) = C(i-1, n-1) / C(k, n), i = 1..k, [k]."""
    i = np.arange(1, k + 1)
    logw = np.array([math.lgamma(j) - math.lgamma(n) - math.lgamma(j - n + 1) if j >= n else -np.inf for j in i])
    logw -= math.lgamma(k + 1) - math.lgamma(n + 1) - math.lgamma(k - n + 1)
    return np.exp(logw)


def bon_estimates(proxy, gold, win_score, groups, ns) -> pd.DataFrame:
    """Gold and win rate of best-of-n under ``proxy`` from pools of samples (one pool per prompt group)."""
    from ...lab.bestofn import kl_bound
    proxy, gold, win_score, groups = (np.asarray(v) for v in (proxy, gold, win_score, groups))
    rows = []
    for n in ns:
        per = []
        for key in np.unique(groups):
            idx = np.flatnonzero(groups == key)
            if n > len(idx):
                continue
            order = idx[np.argsort(proxy[idx], kind="stable")]
            w = bon_weights(len(idx), n)
            per.append((w @ gold[order], w @ win_score[order]))
        if per:
            g, s = np.mean(per, axis=0)
            rows.append({"n": n, "kl_bound": float(kl_bound(n)), "sqrt_kl": math.sqrt(float(kl_bound(n))),
                         "gold": g, "win_rate": s})
    return pd.DataFrame(rows)


def pool_win_scores(gold, groups) -> np.ndarray:
    """Each reference sample's share of its prompt's pool it beats (ties half): G(y) estimated."""
    gold, groups = np.asarray(gold, dtype=float), np.asarray(groups)
    out = np.empty(len(gold))
    for key in np.unique(groups):
        idx = np.flatnonzero(groups == key)
        diff = gold[idx][:, None] - gold[idx][None, :]
        out[idx] = ((diff > 0) + 0.5 * (diff == 0)).mean(1)
    return out


def bon_table(shared, *, proxy_rm: Optional[str] = None) -> pd.DataFrame:
    """Best-of-n by the gold and (when a reward model folder is given) by the proxy, from the
    reference's samples; exact columns on the tree language."""
    from .study import load_reference
    ref = load_reference(shared)
    gold, groups = np.asarray(ref["gold"]), np.asarray(ref["group"])
    win = pool_win_scores(gold, groups)
    ns = list(shared.cfg.bon)
    tables = []
    proxies = [("gold", gold, None)]
    if proxy_rm:
        from ..evaluate import reward_model_scorer
        score = reward_model_scorer(proxy_rm, shared.device)
        proxy = np.asarray(score([ref["prompts"][g] + t for g, t in zip(groups, ref["texts"])]))
        values = None
        if shared.language is not None:
            texts = [shared.language.text(t.tolist()) for t in shared.language.mdp.trajectories()]
            values = np.full(shared.language.n_answers, -np.inf)
            values[: shared.language.n_tree] = score(texts)
        proxies.append(("rm", proxy, values))
    for name, proxy, values in proxies:
        table = bon_estimates(proxy, gold, win, groups, ns)
        table.insert(0, "proxy", name)
        if shared.language is not None:
            import torch
            from ...lab.bestofn import best_of_n_table
            from ...lab.quality import win_scores
            ref_probs = ref["exact_logp"].exp()
            gold_values = shared.gold.values
            exact = best_of_n_table(ref_probs, gold_values if values is None else torch.as_tensor(values), ns,
                                    gold=gold_values, win_score=win_scores(ref_probs, gold_values))
            table["exact_kl"] = exact["kl"].to_numpy()[: len(table)]
            table["exact_gold"] = exact["gold"].to_numpy()[: len(table)]
            table["exact_win_rate"] = exact["win_rate"].to_numpy()[: len(table)]
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    out["gold_gain"] = out["gold"] - gold.mean()
    out["win_gain"] = out["win_rate"] - 0.5
    return out


# ----- fits -----------------------------------------------------------------------------------------------
def fit_table(results: pd.DataFrame, *, bootstrap: int = 200) -> pd.DataFrame:
    """Gao et al.'s forms on the gain over the reference vs sqrt(KL), per (loss, beta, pairs), for the
    win rate and the gold (the toy lab's :func:`treemdp.lab.fits.fit_groups`)."""
    from ...lab.fits import fit_groups
    tables = []
    for metric, y in (("win_rate", "win_gain"), ("gold", "gold_gain")):
        fits = fit_groups(results, ["loss", "beta", "pairs"], x="sqrt_kl", y=y, run="run", bootstrap=bootstrap)
        fits.insert(0, "metric", metric)
        tables.append(fits)
    return pd.concat(tables, ignore_index=True)


# ----- figure ---------------------------------------------------------------------------------------------
def figure_humps(results: pd.DataFrame, fits: pd.DataFrame, bon: Optional[pd.DataFrame], out: Path) -> Path:
    """Gold gain and win rate vs sqrt(KL), one column per beta (see the module doc)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ...lab.fits import get_form
    betas = sorted(results["beta"].unique())
    losses = list(dict.fromkeys(results["loss"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, len(betas), figsize=(3.6 * len(betas) + 0.6, 6.4), squeeze=False,
                             sharex="col")
    for col, beta in enumerate(betas):
        for row, (metric, y, se) in enumerate((("gold", "gold_gain", "gold_se"), ("win_rate", "win_gain", "win_rate_se"))):
            ax = axes[row, col]
            for k, loss in enumerate(losses):
                part = results[(results["beta"] == beta) & (results["loss"] == loss)]
                for i, (_, run) in enumerate(part.groupby("run", sort=False)):
                    run = run.sort_values("kl")  # joined in KL order, not step order
                    xerr = run["kl_se"] / (2 * np.sqrt(run["kl"].clip(lower=1e-12)))
                    ax.errorbar(run["sqrt_kl"], run[y], xerr=xerr.where(run["kl"] > 0, 0), yerr=run[se],
                                color=colors[k % len(colors)], marker="o", ms=3, lw=0.8, elinewidth=0.5, capsize=0,
                                label=loss if i == 0 else None, alpha=0.9)
                fit = fits[(fits["metric"] == metric) & (fits["beta"] == beta) & (fits["loss"] == loss)
                           & (fits["form"] == "rl")]
                if len(fit):
                    d = np.linspace(0, max(part["sqrt_kl"].max(), 1e-3), 100)
                    f = fit.iloc[0]
                    ax.plot(d, get_form("rl").predict(d, (f["p1"], f["p2"])), ls="--", lw=1, color=colors[k % len(colors)])
            if bon is not None and len(bon):
                for proxy, style in (("gold", dict(color="black", ls=":")), ("rm", dict(color="grey", ls="-."))):
                    part = bon[bon["proxy"] == proxy]
                    if len(part):
                        ax.plot(part["sqrt_kl"], part[y], marker="s", ms=3, lw=1,
                                label=f"best-of-n ({'gold' if proxy == 'gold' else 'proxy RM'})", **style)
            ax.axhline(0, color="0.8", lw=0.6)
            ax.set_title(f"beta = {beta:g}", fontsize=9)
            if col == 0:
                ax.set_ylabel("gold gain over ref" if row == 0 else "win rate vs ref − ½")
            if row == 1:
                ax.set_xlabel("√KL(π‖ref)")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle("LLM lab: gold and win rate vs √KL\n(dashed: RL-form fit d(α − b log d))", fontsize=9)
    fig.tight_layout()
    path = out / "humps.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report(study, out=None, *, bootstrap: int = 200, proxy_rm: Optional[str] = None) -> list[Path]:
    """Write the tables and the figure of a study (see the module doc); returns their paths."""
    from .study import Shared, StudyConfig
    import json
    study = Path(study)
    out = Path(out) if out else study
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(study)
    paths = [write_csv(results, out / "results.csv"), write_csv(summary_table(results), out / "summary.csv")]
    fits = fit_table(results, bootstrap=bootstrap)
    paths.append(write_csv(fits, out / "fits.csv"))
    bon = None
    settings = json.loads((study / "study.json").read_text())["grid"]
    cfg = StudyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    shared = Shared(cfg, study)
    rm_dir = proxy_rm or (str(study / "shared" / "rm") if (study / "shared" / "rm" / "config.json").is_file() else None)
    bon = bon_table(shared, proxy_rm=rm_dir)
    paths.append(write_csv(bon, out / "bon.csv"))
    paths.append(figure_humps(results, fits, bon, out))
    return paths


__all__ = ["load_results", "summary_table", "bon_weights", "bon_estimates", "bon_table", "fit_table",
           "figure_humps", "report"]
