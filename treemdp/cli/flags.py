"""Command-line flags generated from a settings dataclass (one field, one flag, one help line).

Both tracks describe a run with a dataclass whose fields carry their documentation; the flags,
their types, choices and help texts are read from it here, so a new setting is one field::

    @dataclass
    class Config:
        beta: float = 0.1
        \"\"\"Inverse temperature; finite and > 0.\"\"\"      # docstring under the field, or
        lr: float | None = None    #: peak learning rate   (a ``#:`` comment on its line)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import lru_cache
from pathlib import Path

from ..errors import UserError, read_json_file
from ..settings import field_choices
from ..specs import parse_bool


@lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """The one-line documentation of each dataclass field: the string under it, or its ``#:`` comment."""
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body
    lines = source.splitlines()
    docs = {}
    for node, following in zip(body, body[1:] + [None]):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
        elif "#:" in lines[node.lineno - 1]:
            docs[node.target.id] = lines[node.lineno - 1].split("#:", 1)[1].strip()
    return docs


def field_type(cls, field: dataclasses.Field):
    """The scalar type a flag parses to: int, float, str or bool (``X | None`` counts as X)."""
    hint = typing.get_type_hints(cls)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return hint if hint in (int, float, str, bool) else str


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, *, nargs=None, skip=(), choices=None,
                        title: str | None = None) -> None:
    """Add ``--field-name`` for every field of ``cls`` (help text: the field's documentation).

    Every flag defaults to None ("not given"), so :func:`values_from_args` can tell an explicit
    flag from the dataclass default. ``nargs="+"`` makes every flag take a list (sweeps);
    ``choices`` maps field names to the names a single-valued flag accepts (listed in --help);
    by default they are read from the fields' metadata (:func:`treemdp.settings.setting`), as is
    a ``help`` text given there. Boolean fields become ``--name`` / ``--no-name`` switches.
    """
    docs = {**field_docs(cls), **{f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata}}
    if choices is None:
        choices = {f.name: field_choices(f) for f in dataclasses.fields(cls) if "choices" in f.metadata}
    group = parser.add_argument_group(title or f"settings (every {cls.__name__} field)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        kind = field_type(cls, f)
        if kind is bool and not nargs:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kwargs = {"type": kind if kind is not bool else _boolean, "default": None, "help": help_text, "dest": f.name}
        names = (choices or {}).get(f.name)
        if names is not None and not nargs:
            # single-valued flags let argparse list the choices; value lists are validated per run
            kwargs["choices"] = list(names)
            kwargs["metavar"] = "{" + ",".join(names) + "}"
        if nargs:
            kwargs["nargs"] = nargs
        group.add_argument(flag, **kwargs)


def _boolean(text: str) -> bool:
    try:
        return parse_bool(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def read_config_file(path: str | Path) -> dict:
    """A JSON object from ``path`` (``--config``), or a one-line UserError."""
    raw = read_json_file(path, "config file")
    if not isinstance(raw, dict):
        raise UserError(f"config file {str(path)!r} must hold a JSON object")
    return raw


def values_from_args(args: argparse.Namespace, cls, base: dict | None = None) -> dict:
    """``base`` (e.g. a ``--config`` file) overridden by every flag given explicitly."""
    raw = dict(base or {})
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            raw[f.name] = value
    return raw
