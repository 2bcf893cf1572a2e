"""``treemdp sweep`` (a grid of runs) and ``treemdp reproduce`` (every toy-MDP figure)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import UserError
from ..sweep import BATCH_SIZE
from ..training import TrainConfig
from .executor import add_executor_flags, executor_arguments
from .train import add_config_flags, apply_objective_flags, shape_from_data, wants_loss_help


def add_parsers(subparsers) -> None:
    """Register ``sweep`` and ``reproduce``."""
    sweep = subparsers.add_parser(
        "sweep", help="a grid of runs, trained together where runs share a shape, resumable",
        description="Train every combination of the given settings (each flag takes one or more "
                    "values), as one stacked computation where runs share a shape. Each finished run "
                    "lands atomically in OUT/<name>/ (the train layout) and OUT/results.csv gets one row "
                    "per run; rerunning the same command skips finished runs.",
        epilog="Objective parameters are flags too and multiply the grid for the objectives that "
               "take them: treemdp sweep --loss dpo cdpo --epsilon 0.1 0.3 --seeds 0-4 --out runs/g "
               "trains dpo, cdpo(epsilon=0.1) and cdpo(epsilon=0.3).")
    sweep.add_argument("--out", required=True, help="grid directory")
    sweep.add_argument("--seeds", nargs="+", default=["0"], metavar="SEEDS",
                       help="seeds: integers and ranges, e.g. 0-9 or 0 3 5 (default 0)")
    add_config_flags(sweep, nargs="+", skip=("seed",))  # every TrainConfig field, one or more values
    sweep.add_argument("--light", action="store_true",
                       help="write only config.json and summary.json per run (no history, weights, plot)")
    sweep.add_argument("--no-plots", dest="plot", action="store_false", help="skip each run's run.png")
    sweep.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                       help=f"most runs computed together (default {BATCH_SIZE}: fastest per run on a CPU)")
    sweep.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                       help="processes training and writing batches in parallel (default: up to 2); with "
                            "another --executor, the batches are cut for this many workers")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar or table")
    add_executor_flags(sweep)
    sweep.set_defaults(func=_sweep_command)

    reproduce = subparsers.add_parser(
        "reproduce", help="every toy-MDP figure of the paper, plus the sensitivity atlas",
        description="Run the paper grid, the sensitivity atlas and the controls (resumable, into --runs) "
                    "and draw every figure into --out as PNG and PDF.")
    reproduce.add_argument("--out", default="figures", help="figure directory (default figures/)")
    reproduce.add_argument("--runs", default=None,
                           help="where the runs go (default runs/reproduce, or runs/reproduce-quick)")
    reproduce.add_argument("--quick", action="store_true", help="small budgets: fewer seeds, steps and atlas cells")
    reproduce.add_argument("--fresh", action="store_true", help="discard finished runs in --runs first")
    reproduce.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    reproduce.add_argument("--quiet", action="store_true", help="no progress bar")
    reproduce.set_defaults(func=_reproduce_command)


def _sweep_command(args) -> int:
    if wants_loss_help(args.loss):
        return 0
    from ..sweep import format_table, grid, parse_seeds, sweep
    axes = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if f.name != "seed" and getattr(args, f.name) is not None}
    axes["seed"] = parse_seeds(args.seeds)
    if args.extra:
        axes["loss"] = apply_objective_flags(axes.get("loss", [TrainConfig.loss]), args.extra)
    configs = grid(TrainConfig(), **{k: v for k, v in axes.items() if not (axes.get("data") and k in ("depth", "branching"))})
    if axes.get("data"):  # each data file sets its tree's shape, unless flags do (and must agree)
        explicit = {k for k in ("depth", "branching") if k in axes}
        configs = [TrainConfig.from_dict(shape_from_data({**c.to_dict(), **{k: axes[k][0] for k in explicit}}, explicit))
                   .validate() for c in configs]
        for k in explicit:
            if len(axes[k]) > 1:
                raise UserError(f"--{k} takes one value together with --data (the data fix the shape)")
    table = sweep(configs, args.out, light=args.light, plot=args.plot, batch_size=args.batch_size,
                  workers=args.workers, progress=not args.quiet, **executor_arguments(args))
    if not args.quiet:
        print(format_table(table))
        print(f"{len(table)} runs in {args.out}/ ; table: {Path(args.out) / 'results.csv'}")
    return 0


def _reproduce_command(args) -> int:
    from ..reproduce import run_reproduce
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be >= 1")
    made = run_reproduce(args.out, runs=args.runs, quick=args.quick, workers=args.workers, fresh=args.fresh,
                         progress=not args.quiet)
    if not args.quiet:
        print("\n".join(str(p) for p in made))
    return 0
