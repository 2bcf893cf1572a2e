"""Settings: the checks a value must pass and the base of every settings dataclass.

A check takes a raw value (from Python, a spec string or a flag) and returns the cleaned value, or
raises ValueError saying what is wrong; the caller adds the name of the field or parameter. The
objective registry (:mod:`treemdp.objectives`) reads them from each parameter's ``Param``; a
settings dataclass (:class:`Settings`) from each field's metadata::

    @dataclass(frozen=True)
    class Config(Settings):
        lr: float = setting(1e-2, check=check_positive)
        \"\"\"Learning rate.\"\"\"                                  # the flag's help text
        cell: str = setting("gru", choices=lambda: CELLS)     # a registry, read when checked

:meth:`Settings.check_fields` then raises one ``UserError`` naming the first bad field, and
:func:`treemdp.cli.flags.add_dataclass_flags` lists the choices in ``--help``. No torch: the
command line reads these before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Optional, Union

from .errors import UserError


def check_beta(beta: float) -> float:
    """Return ``beta`` as a float if it is finite and > 0, else raise ValueError naming it."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a number, got {beta!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return value


def check_real(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
               high_open: bool = False, allow_inf: bool = False) -> Callable[[Any], float]:
    """A check for a real number in [low, high] (ends open on request; finite unless allow_inf)."""
    where = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number, got {value!r}")
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise ValueError(f"must be a finite number, got {value!r}")
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise ValueError(f"must be a number in {where}, got {value!r}")
        return value

    return check


def check_choice(*options: str) -> Callable[[Any], str]:
    """A check for one of the given strings."""

    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return value

    return check


def check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def check_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    return value


def check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def check_like(default: Any) -> Callable[[Any], Any]:
    """The check implied by a default's type (for objectives registered without explicit checks)."""
    if isinstance(default, bool):
        return check_bool
    if isinstance(default, int):
        return check_int
    if isinstance(default, float):
        return check_real(allow_inf=math.isinf(default))
    if isinstance(default, str):
        return check_str
    return lambda value: value



def check_positive(value: Any) -> float:
    """A finite number > 0 (learning rates, temperatures, beta)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a finite number > 0, got {value!r}")
    return value


def check_non_negative(value: Any) -> float:
    """A finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return value


def check_integer(low: int = 1) -> Callable[[Any], int]:
    """A check for an integer >= low (not a bool)."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"must be {'a positive integer' if low == 1 else f'an integer >= {low}'}, got {value!r}")
        return value

    return check


# --------------------------------------------------------------------------------------------
# The settings base: checks and choices as field metadata
# --------------------------------------------------------------------------------------------

def setting(default: Any = dataclasses.MISSING, *, check: Optional[Callable[[Any], Any]] = None,
            choices: Union[Iterable[str], Callable[[], Iterable[str]], None] = None, label: Optional[str] = None,
            help: Optional[str] = None) -> Any:
    """A dataclass field with its check and choices (read by :meth:`Settings.check_fields` and the flags).

    Args:
        default: the default value.
        check: ``check(value) -> value``, raising ValueError("must be ...") (the field's name is put
            in front) or :class:`~treemdp.errors.UserError` (its message is used as written).
        choices: the names the field accepts, or a function returning them (a registry read when
            checked, so names registered later count); listed by ``--help``.
        label: how an unknown choice is named in the error (default: the field's name), e.g.
            ``unknown reward model 'x'; choose one of: ...``.
        help: the flag's help text (default: the docstring under the field).
    """
    metadata = {key: value for key, value in (("check", check), ("choices", choices), ("label", label),
                                               ("help", help)) if value is not None}
    return dataclasses.field(default=default, metadata=metadata)


def field_choices(field: dataclasses.Field) -> Optional[list[str]]:
    """The names a field accepts (its ``choices`` metadata, read now), or None."""
    choices = field.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


class Settings:
    """Base of a settings dataclass whose fields carry their checks (see :func:`setting`).

    :meth:`check_fields` checks every field in order and raises one UserError naming the first bad
    one. It runs when a run starts (the subclass's ``validate()``), not on construction: a
    ``config.json`` read back on another machine (device ``cuda``, an objective from the user's
    module) must load even where it could not run.
    """

    def check_fields(self) -> None:
        """Raise UserError naming the first field whose value fails its choices or check."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            names = field_choices(f)
            if names is not None and value not in names:
                raise UserError(f"unknown {f.metadata.get('label', f.name)} {value!r}; choose one of: {', '.join(names)}")
            check = f.metadata.get("check")
            if check is not None:
                try:
                    check(value)
                except UserError:
                    raise
                except ValueError as e:
                    raise UserError(f"{f.name} {e}") from None

    @classmethod
    def choices(cls) -> dict[str, list[str]]:
        """Field name -> the names it accepts, for every field with choices (the flags list them)."""
        return {f.name: field_choices(f) for f in dataclasses.fields(cls) if "choices" in f.metadata}
