"""The ``treemdp`` command line: parses, validates, calls the library, writes files.

One module per command family under ``treemdp/cli/``, each with ``add_parsers(subparsers)``
registering its commands; a command's ``func`` takes the parsed args and returns an exit code.
Any :class:`UserError` (or other bad input error) becomes one ``error: ...`` line on stderr and
exit code 2, never a traceback. Objective parameters (``--loss cdpo --epsilon 0.1``) are the
flags argparse does not know: a command that takes them sets ``loss_flags`` and reads them
from ``args.extra``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

#: Modules that register commands, in the order ``treemdp --help`` lists them.
COMMAND_MODULES = ("treemdp.cli.train", "treemdp.cli.sweep", "treemdp.cli.losses", "treemdp.cli.explain",
                   "treemdp.cli.lab", "treemdp.cli.grade", "treemdp.cli.lessons", "treemdp.cli.llm")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one ``error:`` line and exit code 2, like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = Parser(
        prog="treemdp",
        description="Exact toy-MDP experiments on why direct alignment algorithms (DPO, IPO, "
                    "SLiC and relatives) move probability onto out-of-distribution answers; the same "
                    "objectives on Pythia models (treemdp llm).",
        epilog="Each command has its own --help. Documentation: the README of the treemdp repository.")
    parser.add_argument("--version", action="version", version=f"treemdp {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional part missing from a partial install
            continue
        (getattr(module, "add_parsers", None) or module.add_llm_parser)(subparsers)
    return parser


def extra_providing(module: str | None) -> str | None:
    """The optional extra of treemdp (``llm``, ``lessons``) that installs ``module``, from the
    package's own metadata (pyproject.toml's ``optional-dependencies``); None if none does."""
    import re
    from importlib import metadata
    if not module:
        return None
    top = module.partition(".")[0].replace("_", "-").lower()
    try:
        requirements = metadata.requires("treemdp") or []
    except metadata.PackageNotFoundError:
        return None
    for line in requirements:
        match = re.match(r"([A-Za-z0-9._-]+).*;\s*extra\s*==\s*[\"'](\w+)[\"']", line)
        if match and match.group(1).replace("_", "-").lower() == top and match.group(2) != "test":
            return match.group(2)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "loss_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if getattr(getattr(args, "func", None), "__module__", "").endswith(".llm"):
        from ..kernels import unpin
        unpin()  # large matrix products, GPUs: the machine's fastest kernels (treemdp/kernels.py)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        extra = extra_providing(e.name)
        if extra is None:
            raise
        print(f"error: this command needs the {extra!r} extra ({e.name} is not installed): "
              f"pip install 'treemdp[{extra}]' (from a clone: .venv/bin/pip install -c requirements-lock.txt -e '.[{extra}]')",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; finished results were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
