"""``treemdp llm lab run|report|fit`` and ``treemdp llm rm``: the LLM over-optimization lab.

Registered by :mod:`treemdp.cli.llm`. The flags of ``lab run`` are the fields of
:class:`treemdp.llm.lab.study.StudyConfig`; the grid's axes take several values
(``--loss dpo ipo --beta 0.05 0.1 --seeds 0-2 --pairs 64 256``). The work is in
:mod:`treemdp.llm.lab`, imported inside the handlers.
"""

from __future__ import annotations

from ..errors import UserError
from .executor import add_executor_flags, executor_arguments
from .flags import add_dataclass_flags, values_from_args

GRID_FIELDS = ("losses", "betas", "seeds", "pairs", "bon")


def parse_seeds(values) -> tuple[int, ...]:
    """``["0-2", "5"]`` -> (0, 1, 2, 5)."""
    out = []
    for value in values:
        for part in str(value).split(","):
            first, dash, last = part.partition("-")
            try:
                out += list(range(int(first), int(last) + 1)) if dash else [int(first)]
            except ValueError:
                raise UserError(f"bad --seeds value {part!r}: write N, N-M or a list") from None
    return tuple(out)


def add_parsers(sub) -> None:
    """Register ``lab`` (run, report, fit) and ``rm`` under ``treemdp llm``."""
    from ..llm.lab.study import LANGUAGES, PAIR_SOURCES, StudyConfig
    lab = sub.add_parser("lab", help="the over-optimization lab on LMs: a gold you control, a grid of DAA runs, "
                                     "humps, fits, best-of-n",
                         description="Gao et al.'s synthetic setting on causal LMs: pairs sampled from the SFT "
                                     "model and labelled by a gold reward, a grid of DAA runs, gold and win rate vs "
                                     "sqrt(KL) at every checkpoint with standard errors (exact values too on the tree "
                                     "language), fits and best-of-n. See docs/llm.md.")
    labsub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    labsub.required = True
    p = labsub.add_parser("run", help="train and evaluate a grid (resumable: rerun to continue)",
                          epilog="Example (CPU, ~4 min): treemdp llm lab run --out runs/llmlab --loss dpo "
                                 "--beta 0.02 0.1 --pairs 512")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--loss", nargs="+", dest="losses", help="DAA objectives (default: dpo)")
    p.add_argument("--beta", nargs="+", type=float, dest="betas", help="betas (default: 0.1)")
    p.add_argument("--seeds", nargs="+", help="run seeds: N, N-M or a list (default: 0)")
    p.add_argument("--pairs", nargs="+", type=int, help="numbers of preference pairs (default: 512)")
    p.add_argument("--bon", nargs="+", type=int, help="n of best-of-n (default: 1 2 4 ... 64)")
    p.add_argument("--no-report", action="store_true", help="skip the tables and figure at the end")
    add_dataclass_flags(p, StudyConfig, skip=GRID_FIELDS,
                        choices={"language": list(LANGUAGES), "pair_source": list(PAIR_SOURCES),
                                 "device": ["cpu", "cuda", "auto"]},
                        title="study settings (every StudyConfig field)")
    p.add_argument("--workers", type=int, default=1, help="runs at once (default: 1)")
    add_executor_flags(p)  # the grid's executors: local processes, Dask, SLURM
    p.set_defaults(func=run_lab)

    p = labsub.add_parser("report", help="tables (results, summary, fits, best-of-n) and humps.png of a study")
    p.add_argument("study", help="study folder")
    p.add_argument("--out", help="output folder (default: the study folder)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the fits (default: 200)")
    p.add_argument("--rm", help="proxy reward model for best-of-n (default: the study's shared/rm)")
    p.set_defaults(func=run_report)

    p = labsub.add_parser("fit", help="print the Gao et al. fits of a study (and write fits.csv)")
    p.add_argument("study", help="study folder")
    p.add_argument("--bootstrap", type=int, default=200)
    p.set_defaults(func=run_fit)

    p = sub.add_parser("rm", help="train a proxy reward model (Bradley-Terry, a one-output head) on pairs",
                       description="A sequence-classification reward model from a causal LM's weights, trained "
                                   "on prompt/chosen/rejected rows; load it with rm:OUT (a judge, a gold, the "
                                   "proxy of best-of-n).")
    p.add_argument("--model", required=True, help="causal LM folder to start from (e.g. the SFT model)")
    p.add_argument("--data", required=True, help="prompt/chosen/rejected JSONL (or datasets folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.set_defaults(func=run_rm)


def run_lab(args) -> int:
    from ..llm.lab.study import StudyConfig, run_study
    from ..llm.train import quiet_transformers
    values = values_from_args(args, StudyConfig)
    for name in GRID_FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = parse_seeds(value) if name == "seeds" else tuple(value)
    cfg = StudyConfig(**values).checked()
    quiet_transformers()
    results = run_study(cfg, args.out, workers=args.workers, **executor_arguments(args))
    print(f"lab: {results['run'].nunique() if 'run' in results else len(results)} rows of "
          f"{len(set(zip(results['loss'], results['beta'], results['seed'], results['pairs'])))} runs in "
          f"{args.out}/results.csv")
    if not args.no_report:
        return run_report(_Args(study=args.out, out=None, bootstrap=200, rm=None))
    return 0


class _Args:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def run_report(args) -> int:
    from ..llm.lab.report import report
    from ..llm.train import quiet_transformers
    quiet_transformers()
    for path in report(args.study, args.out, bootstrap=args.bootstrap, proxy_rm=args.rm):
        print(path)
    return 0


def run_fit(args) -> int:
    from pathlib import Path
    from ..llm.lab.report import write_csv, fit_table, load_results
    fits = fit_table(load_results(args.study), bootstrap=args.bootstrap)
    write_csv(fits, Path(args.study) / "fits.csv")
    cols = ["metric", "loss", "beta", "pairs", "form", "p1", "p2", "rmse", "peak_d"]
    print(fits[[c for c in cols if c in fits]].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def run_rm(args) -> int:
    from ..llm.lab.rm import train_reward_model
    train_reward_model(args.model, args.data, args.out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                       seed=args.seed, device=args.device)
    return 0
