"""``treemdp losses``: every registered objective with its formula, parameters and paper."""

from __future__ import annotations


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        "losses", help="list every direct alignment objective (name, formula, parameters, paper)",
        description="List the objectives --loss accepts in train, sweep and llm daa, with their formulas "
                    "(h is the log-ratio margin of paper eq. 4), parameters with defaults, and papers.")
    parser.add_argument("name", nargs="?", help="show one objective in full")
    parser.set_defaults(func=_losses_command)


def _losses_command(args) -> int:
    from ..errors import UserError
    from ..losses import describe
    if args.name:
        try:
            print(describe(args.name))
        except ValueError as e:
            raise UserError(str(e)) from None
        return 0
    print_objectives()
    return 0


def print_objectives() -> None:
    """One line per registered objective: name, formula, parameters with defaults."""
    from ..losses import objectives_table
    rows = objectives_table()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['name']:<{width}}  {r['formula']}" + (f"   [{params}]" if params else ""))
    print(f"\n{len(rows)} objectives; 'treemdp losses NAME' shows one in full. Use as --loss NAME, "
          "--loss 'NAME(param=value)' or --loss NAME --param value.")
