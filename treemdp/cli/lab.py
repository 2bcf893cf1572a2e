"""``treemdp lab run|bon|fit|report``: the over-optimization lab on the command line.

Each command only parses, validates, calls :mod:`treemdp.lab` and writes files::

    treemdp lab run --tree 4x4 --gold random --pairs 16 64 256 --loss dpo ipo slic \\
                    --beta 0.01 0.05 0.1 0.5 --seeds 0-9 --out runs/lab
    treemdp lab run ... --method rlhf --beta 0.1 0.3 1 3 --out runs/rlhf   # classical RLHF on the same data
    treemdp lab bon --tree 4x4 --gold random --n 1 2 4 8 16 64 256 --out runs/bon
    treemdp lab fit runs/lab runs/bon                      # Gao et al. fits, RMSE table -> fits.csv
    treemdp lab report runs/lab runs/rlhf runs/bon --out figures/lab
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UserError
from .executor import add_executor_flags, executor_arguments
from ..progress import add_progress_flag, show_progress
from .flags import add_dataclass_flags

EPILOG = ("Every setting takes one or more values and the grid is their product; runs sharing a shape are "
          "computed as one stack. Interrupt and rerun the same command: finished runs are kept. Folder layout, "
          "columns and figures: the README's lab section.")


def _grid_parser(subparsers, name: str, help_text: str, description: str, *, bon: bool):
    from ..lab.config import LabConfig
    parser = subparsers.add_parser(name, help=help_text, description=description, epilog=EPILOG)
    parser.add_argument("--out", required=True, metavar="DIR", help="grid folder (one folder per run, results.csv)")
    parser.add_argument("--seeds", nargs="+", default=["0"], metavar="SEEDS",
                        help="seeds: integers and ranges, e.g. 0-9, 0 3 5 or 0,3,5 (default 0)")
    skip = ("seed", "n") + (("method", "loss", "beta", "steps", "lr", "batch_size") if bon else ())
    add_dataclass_flags(parser, LabConfig, nargs="+", skip=skip,
                        title="lab settings (every LabConfig field; one or more values each)")
    if bon:
        parser.add_argument("--n", nargs="+", type=int, metavar="N", help="best-of-n sizes (default: 1 2 4 ... 4096)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1; 2 uses both cores of a laptop; dask:local starts this many workers)")
    parser.add_argument("--format", default="csv", choices=("csv", "parquet"), help="each run's curve table (default csv)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no table")
    add_executor_flags(parser)
    add_progress_flag(parser)
    parser.set_defaults(func=_grid_command, bon=bon, loss_flags=not bon)
    return parser


def add_parsers(subparsers) -> None:
    """Register ``lab`` and its four commands."""
    lab = subparsers.add_parser(
        "lab", help="the over-optimization lab: gold reward vs KL for DAAs, RLHF and best-of-n, exactly",
        description="Reward over-optimization computed exactly on a tree: a gold reward, data drawn from it, "
                    "direct alignment (any objective), classical RLHF and best-of-n, every step's gold reward, "
                    "win rate, KL and frontier exact; Gao et al. fits; figures.")
    from . import Parser
    commands = lab.add_subparsers(dest="lab_command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    _grid_parser(commands, "run", "DAA or RLHF runs over a grid (resumable)",
                 "Train every combination of the given settings: SFT on demonstrations drawn from the gold "
                 "reward, then a DAA objective (--method daa) or RLHF (--method rlhf: a Bradley-Terry reward model, "
                 "then E_pi[r] - beta*KL by exact gradient) on N pairs; gold reward, win rate, proxy reward, KL, "
                 "OOD mass and the spurious feature's share at every step.", bon=False)
    _grid_parser(commands, "bon", "exact best-of-n under a reward model fitted on the same data",
                 "For every seed and N: SFT, pairs, a Bradley-Terry reward model, then best-of-n for every n "
                 "exactly (sorted CDF of the reference, ties handled), under the reward model and under the gold "
                 "reward, with KL beside its bound log n - (n-1)/n.", bon=True)
    fit = commands.add_parser("fit", help="Gao et al. fits of the gain vs sqrt(KL), RMSE per form, bootstrap over seeds",
                              description="Fit R(d) = d(alpha - b log d), d(alpha - b d) and c1 KL + c2 KL^2 to the gain "
                                          "over the reference (win rate - 1/2 or gold - its reference value) of every "
                                          "group of runs, on the same points, with a bootstrap over seeds.")
    fit.add_argument("folders", nargs="+", metavar="DIR", help="lab grid folders")
    fit.add_argument("--metric", default="win", choices=("win", "gold"), help="win rate gain (default) or gold gain")
    fit.add_argument("--by", nargs="+", default=None, metavar="SETTING",
                     help="settings that make a group (default: method loss beta pairs hidden_size gold batch_size)")
    fit.add_argument("--bootstrap", type=int, default=1000, help="resamples of the seeds (default 1000)")
    fit.add_argument("--out", metavar="FILE", help="CSV of the fits (default: fits.csv in the first folder)")
    fit.add_argument("--quiet", action="store_true", help="no table")
    fit.set_defaults(func=_fit_command)
    report = commands.add_parser("report", help="the lab's figures from grid folders",
                                 description="Draw every lab figure the given folders have data for (hump plots "
                                             "with fits, frontiers with DAA / RLHF / best-of-n, fit coefficients "
                                             "vs hidden size and N, the spurious feature's share, the first epoch, "
                                             "every method's envelope at equal KL) as PNG and PDF, plus fits.csv, "
                                             "claims.csv and the equal-KL comparison: each method's (each DAA loss, "
                                             "RLHF, best-of-n) best gold and win-rate gain over its betas and steps at "
                                             "each sqrt KL, mean and 95%% bootstrap over seeds (equal_kl.csv), where "
                                             "each envelope peaks (equal_kl_peaks.csv) and the gain at fixed sqrt KL "
                                             "(equal_kl_table.csv, printed).")
    report.add_argument("folders", nargs="+", metavar="DIR", help="lab grid folders")
    report.add_argument("--out", default="figures/lab", metavar="DIR", help="figure folder (default figures/lab)")
    report.add_argument("--sqrt-kl", nargs="+", type=float, default=None, metavar="D",
                        help="sqrt KL values of the equal-KL gain table (default: 0.5 1 1.5 2)")
    report.add_argument("--quiet", action="store_true", help="no list of files")
    add_progress_flag(report)
    report.set_defaults(func=_report_command)


def _grid_command(args) -> int:
    from ..lab.config import LabConfig
    from ..lab.store import grid, lab_sweep
    from ..sweep import parse_seeds
    axes = {f.name: getattr(args, f.name) for f in dataclasses.fields(LabConfig)
            if getattr(args, f.name, None) is not None and f.name not in ("seed", "n")}
    axes["seed"] = parse_seeds(args.seeds)
    if args.bon:
        axes["method"] = ["bon"]
        if args.n is not None:
            axes["n"] = [tuple(args.n)]
    elif args.extra:
        from .train import apply_objective_flags
        axes["loss"] = apply_objective_flags(axes.get("loss", [LabConfig.loss]), args.extra)
    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    configs = grid(LabConfig(), **axes)
    table = lab_sweep(configs, args.out, workers=args.workers, fmt=args.format,
                      progress=show_progress(args.progress, args.quiet), **executor_arguments(args))
    from ..lab.rlhf import degenerate_warning
    warning = degenerate_warning(table)
    if warning:
        import sys
        print(f"warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(format_results(table))
        print(f"{len(table)} runs in {args.out}/ ; table: {Path(args.out) / 'results.csv'}")
    return 0


def format_results(table) -> str:
    """Peak and final win-rate gain, sqrt KL at the peak and at the end, per method / loss / beta / N
    (mean over seeds; values spelled as in the run folders' names)."""
    if table.empty:
        return "(no finished runs)"
    from ..grid import format_value as _format
    keys = [k for k in ("method", "loss", "beta", "pairs") if k in table and table[k].notna().any()]
    table = table.assign(peak_sqrt_kl=table["peak_win_kl"].clip(lower=0) ** 0.5,
                         final_sqrt_kl=table["final_kl"].clip(lower=0) ** 0.5)
    columns = ["peak_win_gain", "peak_sqrt_kl", "final_win_gain", "final_sqrt_kl"]
    stats = table.groupby(keys, dropna=False)[columns].mean()
    lines = ["  ".join(f"{k:>6}" for k in keys) + "   win gain: peak (at sqrt KL) -> final (at sqrt KL), mean over seeds"]
    for key, row in stats.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        cells = ["" if isinstance(v, float) and v != v else _format(v) for v in key]
        lines.append("  ".join(f"{c:>6}" for c in cells) + f"   {row['peak_win_gain']:+.3f} ({row['peak_sqrt_kl']:.2f})"
                     f" -> {row['final_win_gain']:+.3f} ({row['final_sqrt_kl']:.2f})")
    return "\n".join(lines)


def _fit_command(args) -> int:
    from ..lab.figures import FIT_BY, lab_fits
    from ..lab.store import load_lab
    from ..runs import check_writable
    if args.bootstrap < 0:
        raise UserError("--bootstrap must be >= 0")
    tables = load_lab(args.folders)
    by = [k for k in (args.by or FIT_BY) if k in tables.curves]
    out = Path(args.out) if args.out else Path(args.folders[0]) / "fits.csv"
    check_writable(out.parent)
    fits = lab_fits(tables, bootstrap=args.bootstrap, metric=args.metric, by=by)
    fits.to_csv(out, index=False)
    if not args.quiet:
        print(format_fits(fits, by))
        print(f"{len(fits)} fits -> {out}")
    return 0


def format_fits(fits, by) -> str:
    """RMSE of each form per group, and the RL / quadratic RMSE ratio with its bootstrap interval."""
    if fits.empty:
        return "(no points to fit)"
    lines = ["  ".join(f"{k:>11}" for k in by) + "   RMSE: rl       bon   quad_kl   rl/quad [95% bootstrap]"]
    for key, group in fits.groupby(list(by), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rmse = dict(zip(group["form"], group["rmse"]))
        rl = group[group["form"] == "rl"]
        interval = ""
        if len(rl) and "rmse_ratio" in rl:
            r = rl.iloc[0]
            interval = f"{r['rmse_ratio']:.2f} [{r.get('rmse_ratio_low', float('nan')):.2f}, {r.get('rmse_ratio_high', float('nan')):.2f}]"
        lines.append("  ".join(f"{'' if v != v else str(v):>11}" for v in key) + "   " + "  ".join(
            f"{rmse.get(f, float('nan')):8.4f}" for f in ("rl", "bon", "quad_kl")) + f"   {interval}")
    return "\n".join(lines)


def _report_command(args) -> int:
    import math
    from ..lab.compare import POINTS, EqualKL, format_equal_kl
    from ..lab.figures import lab_report
    points = args.sqrt_kl or POINTS
    if any(not math.isfinite(d) or d < 0 for d in points):
        raise UserError(f"--sqrt-kl values must be finite and >= 0, got {' '.join(map(str, points))}")
    made = lab_report(args.folders, args.out, progress=show_progress(args.progress, args.quiet), points=points)
    if not args.quiet:
        import pandas as pd
        out = Path(args.out)
        comparison = EqualKL(pd.DataFrame(), pd.DataFrame(), pd.read_csv(out / "equal_kl_peaks.csv"),
                             pd.read_csv(out / "equal_kl_table.csv"))
        if len(comparison.table):
            print(format_equal_kl(comparison, "gold"))
            print(format_equal_kl(comparison, "win"))
        print("\n".join(str(p) for p in made))
    return 0

