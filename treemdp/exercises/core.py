"""Outcomes, results and hints shared by every exercise check.

A check compares a student's function with the library's own on random inputs and returns a
:class:`Result` with one of three outcomes: not attempted, incorrect (with the reason), correct.
Checks never print and never touch the caller's namespace; a notebook shows a Result by its
``repr`` (one line), and ``treemdp grade`` collects them as data.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError


class Outcome(str, enum.Enum):
    """The three outcomes of a check."""

    NOT_ATTEMPTED = "not attempted"
    INCORRECT = "incorrect"
    CORRECT = "correct"


@dataclass(frozen=True)
class Result:
    """What a check found.

    Attributes:
        exercise: the exercise id, e.g. ``"a1.dpo_g"``.
        outcome: an :class:`Outcome`.
        message: one or two sentences saying why (for incorrect: what differs and where).
    """

    exercise: str
    outcome: Outcome
    message: str

    @property
    def correct(self) -> bool:
        return self.outcome is Outcome.CORRECT

    def __bool__(self) -> bool:
        return self.correct

    def __str__(self) -> str:
        return f"{self.exercise}: {self.outcome.value}: {self.message}"

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        mark = {Outcome.CORRECT: "✅", Outcome.INCORRECT: "❌", Outcome.NOT_ATTEMPTED: "⬜"}[self.outcome]
        return f"{mark} **{self.exercise}** — {self.outcome.value}: {self.message}"


class NotAttempted(Exception):
    """Raised inside a check when the student's code is still the stub."""


class Incorrect(Exception):
    """Raised inside a check with the reason the answer is wrong."""


#: Modules whose functions are the library's own answers; a check names the ones its
#: exercise may not call (``call_student(..., forbidden=...)``).
LIBRARY_ANSWERS = {
    "losses": ("treemdp.losses",),
    "enumeration": ("treemdp.exact", "treemdp.training", "treemdp.engine"),
    "bestofn": ("treemdp.lab",),
    "displacement": ("treemdp.phenomena.displacement",),
}

#: The folder of the installed package: a reference must be defined in a file under it.
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _defined_in(obj: Any) -> str | None:
    """The file a function or class was defined in (None when Python cannot tell)."""
    import inspect
    try:
        return inspect.getfile(inspect.unwrap(obj))
    except (TypeError, ValueError):
        return None


def _not_library(obj: Any, name: str) -> str | None:
    """Why ``obj`` is not the library's own ``name`` (None when it is)."""
    where = _defined_in(obj)
    try:
        inside = where is not None and Path(where).resolve().is_relative_to(_PACKAGE_DIR)
    except OSError:
        inside = False
    if inside:
        return None
    return (f"{name} was replaced before the checks were imported (it is now defined in {where or 'no file'}, "
            f"not in the treemdp package), so there is nothing trustworthy to compare with; restart the "
            f"kernel, import treemdp.exercises first and do not assign to library functions")


def _same(a: Any, b: Any) -> bool:
    """Probe outputs are equal (tensors bit for bit, numbers exactly)."""
    import torch
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    return type(a) is type(b) and a == b


class Reference:
    """A library function (or class) a check compares with, bound when the checks are imported.

    A notebook runs in the same process as its checks, so a cell like
    ``treemdp.losses.dpo_g = dpo_g`` would otherwise make a check compare the student's function
    with itself. A Reference holds the object it found at import (so later reassignments of the
    library's name do not reach it), refuses an object that is not defined inside the treemdp
    package, and at every use verifies that the object still has the same code and still gives the
    same output on a fixed probe (``probe(obj)``) as at import: a patched method, a changed
    ``LOSSES`` entry or a swapped ``__code__`` makes the check say so instead of trusting it.
    """

    def __init__(self, module: str, name: str, probe: Callable[[Any], Any]):
        self.qualname = f"{module}.{name}"
        self.obj = getattr(importlib.import_module(module), name)
        self.code = getattr(self.obj, "__code__", None)
        self.probe = probe
        self.problem = _not_library(self.obj, self.qualname)
        self.fingerprint = None if self.problem else self._probe()

    def _probe(self) -> Any:
        value = self.probe(self.obj)
        return value.detach().clone() if hasattr(value, "detach") else value

    def get(self) -> Any:
        """The bound object, verified; raises :class:`Incorrect` saying what changed."""
        if self.problem:
            raise Incorrect(self.problem)
        changed = getattr(self.obj, "__code__", None) is not self.code
        if not changed:
            try:
                changed = not _same(self._probe(), self.fingerprint)
            except Exception:  # noqa: BLE001 - a reference that now raises has been changed
                changed = True
        if changed:
            raise Incorrect(f"{self.qualname} (or something it uses) was changed in this kernel after the "
                            f"checks were imported, so the check will not compare with it; restart the "
                            f"kernel and do not assign to library functions or tables")
        return self.obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.get()(*args, **kwargs)


def _snapshot(value: Any, name: str, depth: int = 0) -> list[tuple[str, Any, Any]]:
    """(name, object, a copy) of every mutable part of an input a check passes: tensors, a
    module's parameters and buffers, numpy arrays, pandas frames, and the items of lists, dicts
    and dataclasses (a few levels deep)."""
    import numpy as np
    import torch
    if isinstance(value, torch.Tensor):
        return [(name, value, value.detach().clone())]
    if isinstance(value, torch.nn.Module):
        return [(f"{name}.{key}", t, t.detach().clone()) for key, t in value.state_dict(keep_vars=True).items()]
    if isinstance(value, np.ndarray):
        return [(name, value, value.copy())]
    if type(value).__module__.startswith("pandas") and hasattr(value, "equals"):
        return [(name, value, value.copy(deep=True))]
    if depth >= 3:
        return []
    found = []
    if isinstance(value, (list, dict)):
        found.append((name, value, copy.copy(value)))
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += _snapshot(item, f"{name}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _snapshot(item, f"{name}[{key!r}]", depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            found += _snapshot(getattr(value, field.name), f"{name}.{field.name}", depth + 1)
    return found


def _unchanged(now: Any, before: Any) -> bool:
    import numpy as np
    import torch
    if isinstance(now, torch.Tensor):
        return now.shape == before.shape and now.dtype == before.dtype and bool(torch.equal(now.detach(), before))
    if isinstance(now, np.ndarray):
        return now.shape == before.shape and bool(np.array_equal(now, before, equal_nan=True))
    if hasattr(now, "equals") and not isinstance(now, (list, dict)):
        return bool(now.equals(before))
    if isinstance(now, dict):
        return list(now) == list(before) and all(now[k] is before[k] for k in now)
    if isinstance(now, list):
        return len(now) == len(before) and all(a is b for a, b in zip(now, before))
    return True


@contextlib.contextmanager
def _watch_calls(prefixes: tuple[str, ...], seen: list[str]):
    """Record (in ``seen``) the first call into a Python function of a module in ``prefixes``."""
    if not prefixes:
        yield
        return
    previous = sys.getprofile()

    def profile(frame, event, arg):
        if event == "call" and not seen:
            module = frame.f_globals.get("__name__", "")
            if module.startswith(prefixes):
                seen.append(f"{module}.{frame.f_code.co_name}")
        return None

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)


def _describe(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _reraise_as_incorrect(e: Exception) -> None:
    """The student's crash, reported as the reason the answer is wrong."""
    if isinstance(e, RuntimeError) and ("in-place" in str(e) or "inplace" in str(e)):
        raise Incorrect("it changes its input in place (x -= ..., x.clamp_(...), ...), which autograd "
                        "refuses on a tensor that needs a gradient; compute a new tensor instead "
                        f"({_describe(e)[:160]})") from None
    raise Incorrect(f"calling it raised {_describe(e)}") from None


def _untouched_stub(fn: Callable) -> bool:
    """The function still contains the stub's ``raise NotImplementedError`` (a student deletes it
    when filling in the gap), so a crash before it is not the student's answer."""
    code = getattr(fn, "__code__", None)
    return code is not None and "NotImplementedError" in code.co_names


def call_student(fn: Callable, *args: Any, forbidden: tuple[str, ...] = (), why: str = "",
                 names: tuple[str, ...] = (), watch: tuple[tuple[str, Any], ...] = (), **kwargs: Any) -> Any:
    """Call the student's function; turn a stub into NotAttempted and a crash into Incorrect.

    Every input it is given (tensors, a policy's parameters, lists, frames, ...) must be left as
    it was: an answer that changes one in place is Incorrect, naming the input, because the
    caller (a trainer, the next step of a loop) still needs it.

    Args:
        forbidden: module prefixes (see :data:`LIBRARY_ANSWERS`) the answer may not call into:
            an answer that borrows the library's own function is Incorrect, saying which.
        why: what the exercise asks to write, for that message (e.g. "the KL that
            BestOfN.kl computes").
        names: how to call the positional arguments in messages (default ``argument 1``, ...).
        watch: more (name, object) pairs that must not change, for inputs whose data sit behind
            properties (a RunResult's ``metrics``, say).
    """
    if fn is None:
        raise NotAttempted("the function is not defined yet")
    if not callable(fn):
        raise Incorrect(f"expected a function, got {type(fn).__name__}")
    inputs = [(names[i] if i < len(names) else f"argument {i + 1}", a) for i, a in enumerate(args)]
    inputs += [(key, a) for key, a in kwargs.items()] + list(watch)
    before = [part for name, value in inputs for part in _snapshot(value, name)]
    seen: list[str] = []
    try:
        with _watch_calls(forbidden, seen):
            value = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAttempted("the stub still raises NotImplementedError; fill in the gap marked "
                           "YOUR CODE HERE and run the cell again") from None
    except (NotAttempted, Incorrect):
        raise
    except Exception as e:
        if _untouched_stub(fn):  # it failed before its own raise NotImplementedError
            raise NotAttempted(f"the stub still raises NotImplementedError (fill in the gap marked YOUR CODE "
                               f"HERE); it stopped before that, at {_describe(e)[:160]}, so run the cells "
                               f"above it too") from None
        _reraise_as_incorrect(e)
    if seen:
        task = f" ({why})" if why else ""
        raise Incorrect(f"it calls {seen[0]}, the library's own answer to this exercise{task}: the check "
                        "compares with that very function, so calling it would pass without showing "
                        "you can write it; write it yourself from torch operations")
    for name, now, copied in before:
        if not _unchanged(now, copied):
            raise Incorrect(f"it changes its input {name} in place (an in-place op such as exp_(), "
                            "logical_not_(), *= or .data changes); the caller still needs it: compute new "
                            "tensors and leave the inputs as they were")
    if value is None:
        raise NotAttempted("it returns None; fill in the gap marked YOUR CODE HERE and return the result")
    return value


@dataclass(frozen=True)
class Exercise:
    """One exercise: how to check it, what to read in a notebook, and graded hints.

    Attributes:
        id: ``"<assignment>.<name>"``, e.g. ``"a1.dpo_g"``.
        title: one line for tables.
        target: the name the student defines in the notebook (a function or a variable).
        check: ``check(student_object) -> Result``.
        hints: three levels: where to look, what the idea is, nearly the answer.
    """

    id: str
    title: str
    target: str
    check: Callable[[Any], Result]
    hints: tuple[str, ...]

    @property
    def assignment(self) -> str:
        return self.id.split(".", 1)[0]


def run_check(exercise_id: str, body: Callable[[], str]) -> Result:
    """Run ``body`` (returns the success message or raises NotAttempted/Incorrect) as a Result."""
    try:
        message = body()
    except NotAttempted as e:
        return Result(exercise_id, Outcome.NOT_ATTEMPTED, str(e))
    except Incorrect as e:
        return Result(exercise_id, Outcome.INCORRECT, str(e))
    except Exception as e:  # noqa: BLE001 - a check never raises: say what happened, blame nobody
        return Result(exercise_id, Outcome.INCORRECT,
                      f"the check could not finish on this answer ({_describe(e)[:200]}); "
                      "make sure it follows the stub's signature and returns what the docstring says")
    return Result(exercise_id, Outcome.CORRECT, message)


#: Every exercise by id; filled by the assignment modules on import.
EXERCISES: dict[str, Exercise] = {}


HINT_LEVELS = ("where to look", "the idea", "nearly the answer")


def register(exercise: Exercise) -> Exercise:
    if len(exercise.hints) != len(HINT_LEVELS):
        raise ValueError(f"{exercise.id}: give {len(HINT_LEVELS)} hints ({', '.join(HINT_LEVELS)})")
    EXERCISES[exercise.id] = exercise
    return exercise


def get_exercise(exercise_id: str) -> Exercise:
    """The exercise by id, or a UserError listing the valid ids."""
    try:
        return EXERCISES[exercise_id]
    except KeyError:
        raise UserError(f"unknown exercise {exercise_id!r}; choose one of: {', '.join(EXERCISES)}") from None


class Hint(str):
    """A hint's text; shown in a notebook as plain text, not as a quoted string."""

    def __repr__(self) -> str:
        return str(self)


def hint(exercise_id: str, level: int = 1) -> Hint:
    """Hint number ``level`` for an exercise: 1 where to look, 2 the idea, 3 nearly the answer;
    asking past the last gives the last.

    Example: ``hint("a1.dpo_g")``, then ``hint("a1.dpo_g", 2)`` if still stuck.
    """
    hints = get_exercise(exercise_id).hints
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise UserError(f"hint level must be an integer >= 1, got {level!r}")
    level = min(level, len(hints))
    return Hint(f"{HINT_LEVELS[level - 1].capitalize()}: {hints[level - 1]} (hint {level} of {len(hints)})")


def assignment_exercises(assignment: str) -> list[Exercise]:
    """The exercises of one assignment (``"a1"``, ...), in order."""
    found = [e for e in EXERCISES.values() if e.assignment == assignment]
    if not found:
        names = sorted({e.assignment for e in EXERCISES.values()})
        raise UserError(f"unknown assignment {assignment!r}; choose one of: {', '.join(names)}")
    return found


def check_namespace(assignment: str, namespace: dict) -> list[Result]:
    """Check every exercise of ``assignment`` against the names a notebook defined.

    ``treemdp grade`` calls this inside the student's kernel after running the notebook; it
    reads ``namespace`` (the notebook's globals) and changes nothing in it.
    """
    return [e.check(namespace.get(e.target)) for e in assignment_exercises(assignment)]
