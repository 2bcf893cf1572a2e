"""Outcomes, results and hints shared by every exercise check.

A check compares a student's function with the library's own on random inputs and returns a
:class:`Result` with one of three outcomes: not attempted, incorrect (with the reason), correct.
Checks never print and never touch the caller's namespace; a notebook shows a Result by its
``repr`` (one line), and ``treemdp grade`` collects them as data.
"""

from __future__ import annotations

import contextlib
import enum
import sys
from dataclasses import dataclass
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
}


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


def call_student(fn: Callable, *args: Any, forbidden: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """Call the student's function; turn a stub into NotAttempted and a crash into Incorrect.

    Args:
        forbidden: module prefixes (see :data:`LIBRARY_ANSWERS`) the answer may not call into:
            an answer that borrows the library's own function is Incorrect, saying which.
    """
    if fn is None:
        raise NotAttempted("the function is not defined yet")
    if not callable(fn):
        raise Incorrect(f"expected a function, got {type(fn).__name__}")
    seen: list[str] = []
    try:
        with _watch_calls(forbidden, seen):
            value = fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAttempted("the stub still raises NotImplementedError; fill in the gap marked "
                           "YOUR CODE HERE and run the cell again") from None
    except (NotAttempted, Incorrect):
        raise
    except RuntimeError as e:
        if "in-place" in str(e) or "inplace" in str(e):
            raise Incorrect("it changes its input in place (x -= ..., x.clamp_(...), ...), which autograd "
                            "refuses on a tensor that needs a gradient; compute a new tensor instead "
                            f"({_describe(e)[:160]})") from None
        raise Incorrect(f"calling it raised {_describe(e)}") from None
    except Exception as e:  # the student's bug, reported as the reason
        raise Incorrect(f"calling it raised {_describe(e)}") from None
    if seen:
        raise Incorrect(f"it calls {seen[0]}, the library's own answer; write it yourself from "
                        "torch operations (the check compares with that function)")
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
