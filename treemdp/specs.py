"""Spec strings, read once for every name a user writes: ``name``, ``name(k=v, ...)``, ``module:attr``.

A loss (``cdpo(epsilon=0.2)``, ``trl(loss_type=[sigmoid, sft])``), a gold reward
(``spurious(strength=2)``), a bare command-line value (``--epsilon 0.1``) and a boolean flag
(``--fp16 true``) are all read here; the module that uses the name checks what it means. No
torch: the command line reads specs before anything heavy is imported.

Values: ints, floats (``1e-3``, ``inf``, ``nan``), ``true``/``false``/``none``, bare or quoted
strings, lists ``[a, b]``; :func:`format_value` writes a value so that :func:`parse_spec` reads it
back unchanged.
"""

from __future__ import annotations

import re
from typing import Any, Optional

_TOKEN = re.compile(r"""\s*(?:(?P<punct>[()\[\],=])|(?P<quoted>"[^"]*"|'[^']*')|(?P<bare>[^\s()\[\],="']+))""")
_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity|nan)\Z", re.IGNORECASE)
_BARE = re.compile(r"[^\s()\[\],=\"']+\Z")
#: ``name``, ``package.module`` or ``package.module:attr``
SPEC_NAME = re.compile(r"""([A-Za-z_][\w.]*|[^\s()\[\],="':]+\.py)(:[A-Za-z_][\w.]*)?\Z""")  # name, module:attr, file.py:attr
#: a parameter (or registry) name: letters, digits and ``_``
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LITERALS = {"true": True, "false": False, "none": None, "null": None}
#: the words a boolean command-line value may be (besides the literals true/false)
_BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def literal(text: str) -> Any:
    """A bare value: true/false/none, an int, a float (1e-3, inf, nan) or else the string itself."""
    if text.lower() in _LITERALS:
        return _LITERALS[text.lower()]
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def parse_bool(text: str) -> bool:
    """``true``/``1``/``yes`` or ``false``/``0``/``no`` (any case), else ValueError."""
    try:
        return _BOOLEAN_WORDS[text.lower()]
    except KeyError:
        raise ValueError(f"expected true or false, got {text!r}") from None


def _tokens(spec: str, what: str) -> list[tuple[str, str]]:
    out, at = [], 0
    while at < len(spec.rstrip()):
        match = _TOKEN.match(spec, at)
        if match is None:
            raise ValueError(f"bad {what} spec {spec!r}: cannot read {spec[at:].strip()!r}")
        out.append((match.lastgroup, match.group(match.lastgroup)))
        at = match.end()
    return out


def parse_spec(spec: str, what: str = "loss") -> tuple[str, dict[str, Any]]:
    """Split ``"name(k=v, ...)"`` into ``(name, {k: v})``.

    ``name`` may be ``package.module:attr``. ``what`` names the kind of spec in error messages
    (``bad loss spec 'cdpo(': unexpected end``).

    Raises:
        ValueError: a spec that does not read, saying where.
    """
    if not isinstance(spec, str):
        raise ValueError(f"a {what} spec is a string, got {type(spec).__name__}")
    tokens, at = _tokens(spec, what), 0

    def fail(problem: str):
        raise ValueError(f"bad {what} spec {spec!r}: {problem}")

    def peek() -> tuple[str, str]:
        return tokens[at] if at < len(tokens) else ("end", "")

    def take(text: Optional[str] = None) -> tuple[str, str]:
        nonlocal at
        kind, value = peek()
        if kind == "end":
            fail(f"missing {text!r} at the end" if text else "unexpected end")
        if text is not None and value != text:
            fail(f"expected {text!r} but found {value!r}")
        at += 1
        return kind, value

    def value() -> Any:
        kind, text = take()
        if text == "[":
            items = []
            while peek()[1] != "]":
                items.append(value())
                if peek()[1] != "]":
                    take("]" if peek()[0] == "end" else ",")
            take("]")
            return items
        if kind == "quoted":
            return text[1:-1]
        if kind == "bare":
            return literal(text)
        fail(f"expected a value but found {text!r}")

    kind, name = take()
    if kind != "bare" or not SPEC_NAME.match(name):
        fail(f"expected a {what} name")
    params: dict[str, Any] = {}
    if peek()[1] == "(":
        take("(")
        while peek()[1] != ")":
            kind, key = take()
            if kind != "bare" or not IDENTIFIER.match(key):
                fail(f"expected a parameter name but found {key!r}")
            if key in params:
                fail(f"parameter {key!r} given twice")
            take("=")
            params[key] = value()
            if peek()[1] != ")":
                take(")" if peek()[0] == "end" else ",")
        take(")")
    if peek()[0] != "end":
        fail(f"unexpected {peek()[1]!r} after the {what}")
    return name, params


def format_value(value: Any) -> str:
    """A value as :func:`parse_spec` reads it back (``true``, ``0.001``, ``[a, b]``, ``'x y'``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    text = str(value)
    if _BARE.match(text) and literal(text) == text:
        return text
    return f'"{text}"' if "'" in text else f"'{text}'"


def load_attribute(path: str) -> Any:
    """The object behind ``package.module:attr`` or ``path/to/file.py:attr`` (``attr`` may be
    dotted; the current folder is on the import path: :func:`treemdp.imports.import_object`).

    Raises:
        ImportError, AttributeError, ValueError: as importing and looking up raise them.
    """
    from .imports import import_object
    return import_object(path)[0]


def qualified_name(obj: Any) -> Optional[str]:
    """``module:qualname`` when importing that gives back ``obj`` itself, else None."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and name and "<" not in name and module != "__main__":
        try:
            if load_attribute(f"{module}:{name}") is obj:
                return f"{module}:{name}"
        except (ImportError, AttributeError, ValueError):
            pass
    return None
