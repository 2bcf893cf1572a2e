"""Toy-track subcommands: ``train`` here; ``sweep``/``reproduce`` and ``grade`` live in their modules."""

from __future__ import annotations

import importlib.util


def add_toy_parsers(subparsers) -> None:
    from .train_cli import add_train_parser
    add_train_parser(subparsers)
    # Each capability registers its own subcommands; modules land independently.
    for module in ("treemdp.reproduce", "treemdp.grade", "treemdp.lessons_cli"):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).add_parsers(subparsers)
