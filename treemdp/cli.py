"""The ``treemdp`` command line: parses, validates, calls the library, writes files.

Subcommands register themselves through ``add_*_parser(subparsers)`` functions that set
``func`` (taking the parsed args, returning an exit code). Any :class:`UserError` (or other bad
input error) becomes one ``error: ...`` line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gives the CONTRACT's single ``error:`` line (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = Parser(
        prog="treemdp",
        description="Exact toy-MDP experiments on why direct alignment algorithms (DPO, IPO, "
                    "SLiC) move probability onto out-of-distribution answers; the same losses "
                    "on Pythia models (treemdp llm).")
    parser.add_argument("--version", action="version", version=f"treemdp {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    from .commands import add_toy_parsers
    add_toy_parsers(subparsers)
    try:
        from .llm.cli import add_llm_parser
    except ImportError:  # the LLM track's module is absent in a partial install
        add_llm_parser = None
    if add_llm_parser is not None:
        add_llm_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished results were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
