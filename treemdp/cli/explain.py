"""``treemdp explain RUN``: where did the chosen answer's probability go during DAA?"""

from __future__ import annotations

from pathlib import Path


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain", help="exact account of where a run's chosen probability went (table + plot)",
        description="For a run folder written by 'treemdp train' or 'treemdp sweep': what the chosen "
                    "answer lost between DAA step 0 and each step, and who gained it: the rejected "
                    "answer, the other data, and OOD trajectories grouped by how many leading tokens "
                    "they share with the chosen. Read from history.csv, or recomputed by re-running "
                    "the saved config when the history is partial or absent.")
    parser.add_argument("run", metavar="RUN", help="a run folder (holds config.json)")
    parser.add_argument("--pair", type=int, default=None,
                        help="account for preference N's chosen answer only (0-based; default: all)")
    parser.add_argument("--out", default=None, help="where to write the plot (default: RUN/explain.png)")
    parser.add_argument("--rows", type=int, default=8, help="table rows to print (default 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar when re-running")
    parser.set_defaults(func=_explain_command)


def _explain_command(args) -> int:
    from ..errors import UserError
    from ..phenomena.explain import explain_run, format_table, plot_explanation
    from ..runs import check_writable
    if args.rows < 2:
        raise UserError(f"--rows must be >= 2, got {args.rows}")
    explanation = explain_run(args.run, pair=args.pair, progress=not args.quiet)
    out = Path(args.out) if args.out else Path(args.run) / "explain.png"
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"--out must end in .png, .pdf or .svg, got {str(out)!r}")
    check_writable(out.parent)
    c = explanation.config
    print(f"{args.run}: {c['loss']} beta={c['beta']:g} seed={c['seed']}; chosen "
          f"{', '.join(explanation.chosen)} (from {explanation.source})")
    print(format_table(explanation, rows=args.rows))
    if explanation.note:
        print(explanation.note)
    print(f"plot: {plot_explanation(explanation, out)}")
    return 0
