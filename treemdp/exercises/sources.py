"""The lesson and assignment sources: Jupytext ``py:percent`` files, one per notebook.

``lessons/_content/NN_name.py`` is lesson NN; ``lessons/_content/aN_name.py`` is assignment aN.
Each file is an ordinary percent script (``# %%`` code cells, ``# %% [markdown]`` text cells)
that JupyterLab with Jupytext opens as a notebook. An exercise is one code cell tagged with its
id, and it holds both versions of the answer::

    # %% exercise="a1.dpo_g" points=1
    def dpo_g(x):
        \"\"\"...\"\"\"
        ### BEGIN SOLUTION
        return -torch.nn.functional.logsigmoid(x)
        ### END SOLUTION

The *solution* notebook keeps the lines between the markers; the *starter* replaces them with
``# YOUR CODE HERE`` and ``raise NotImplementedError`` (nbgrader's convention) or, when a
``### BEGIN STARTER`` ... ``### END STARTER`` block of commented lines comes first, with those
lines uncommented (for answers that are not a function body, such as a dict to fill in). The
check (in :mod:`treemdp.exercises`, looked up by the id) and the hints (registered with it) are
what the cell after the exercise calls; nbgrader and Otter-Grader versions are generated from the
same cells by :mod:`treemdp.exercises.export`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_STARTER, END_STARTER = "### BEGIN STARTER", "### END STARTER"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError")
VERSIONS = ("starter", "solution")

_LESSON = re.compile(r"^(\d\d)_[a-z0-9_]+$")
_ASSIGNMENT = re.compile(r"^(a\d+)_[a-z0-9_]+$")

#: Notebook metadata of every generated notebook (Jupytext's own keys are dropped).
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


class SourceError(ValueError):
    """A source file breaks the format (marker missing, unknown exercise id, bad file name)."""


@dataclass(frozen=True)
class Exercise:
    """An exercise cell of a source: its index among the notebook's cells, id, points, text."""

    index: int
    id: str
    points: float
    source: str


@dataclass
class Source:
    """One parsed source file.

    Attributes:
        path: the ``.py`` file.
        name: its stem, also the notebook's (``03_three_losses``, ``a1_losses``).
        assignment: ``"a1"`` ... for an assignment, None for a lesson.
        cells: list of ``(cell_type, text, metadata)`` in order.
    """

    path: Path
    name: str
    assignment: str | None
    cells: list[tuple[str, str, dict]]

    @property
    def exercises(self) -> list[Exercise]:
        return [Exercise(i, meta["exercise"], float(meta.get("points", 1)), text)
                for i, (kind, text, meta) in enumerate(self.cells) if "exercise" in meta]


def read_source(path: str | Path) -> Source:
    """Parse a ``py:percent`` lesson or assignment source (needs ``jupytext``)."""
    import jupytext
    path = Path(path)
    lesson, assignment = _LESSON.match(path.stem), _ASSIGNMENT.match(path.stem)
    if not (lesson or assignment):
        raise SourceError(f"{path.name}: name a source NN_name.py (lesson) or aN_name.py (assignment)")
    nb = jupytext.reads(path.read_text(encoding="utf-8"), fmt="py:percent")
    cells = []
    for cell in nb.cells:
        meta = {k: v for k, v in cell.metadata.items() if k not in ("lines_to_next_cell",)}
        cells.append((cell.cell_type, cell.source.strip("\n"), meta))
    source = Source(path, path.stem, assignment.group(1) if assignment else None, cells)
    for exercise in source.exercises:
        if source.assignment is None:
            raise SourceError(f"{path.name}: exercise {exercise.id!r} in a lesson; exercises live in assignments")
        if not exercise.id.startswith(source.assignment + "."):
            raise SourceError(f"{path.name}: exercise id {exercise.id!r} should start with {source.assignment}.")
        version(exercise.source, "starter")  # raises on broken markers
    return source


def sources(folder: str | Path) -> list[Source]:
    """Every source in ``folder`` (``lessons/_content``), lessons first, in name order."""
    paths = sorted(Path(folder).glob("*.py"), key=lambda p: (p.stem[0] == "a", p.stem))
    return [read_source(p) for p in paths if _LESSON.match(p.stem) or _ASSIGNMENT.match(p.stem)]


def _blocks(text: str) -> tuple[list[str], list[str] | None, list[str], list[str], str]:
    """Split an exercise cell into (before, starter lines or None, solution lines, after, indent)."""
    lines = text.split("\n")
    stripped = [line.strip() for line in lines]
    for marker in (BEGIN_SOLUTION, END_SOLUTION):
        if stripped.count(marker) != 1:
            raise SourceError(f"an exercise cell needs exactly one {marker!r} line:\n{text[:200]}")
    begin, end = stripped.index(BEGIN_SOLUTION), stripped.index(END_SOLUTION)
    if end < begin:
        raise SourceError(f"{END_SOLUTION!r} comes before {BEGIN_SOLUTION!r}:\n{text[:200]}")
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    before, starter = lines[:begin], None
    if BEGIN_STARTER in stripped[:begin]:
        s_begin = stripped.index(BEGIN_STARTER)
        if END_STARTER not in stripped[s_begin:begin]:
            raise SourceError(f"{BEGIN_STARTER!r} without {END_STARTER!r} before the solution:\n{text[:200]}")
        s_end = s_begin + stripped[s_begin:].index(END_STARTER)
        starter = [_uncomment(line) for line in lines[s_begin + 1: s_end]]
        before = lines[:s_begin] + lines[s_end + 1: begin]
    return before, starter, lines[begin + 1: end], lines[end + 1:], indent


def _uncomment(line: str) -> str:
    """``    # x = 1`` -> ``    x = 1`` (a starter block's lines are commented in the source)."""
    match = re.match(r"^(\s*)# ?(.*)$", line)
    if not match:
        raise SourceError(f"a starter block's lines must be comments, got {line!r}")
    return match.group(1) + match.group(2)


def version(text: str, which: str) -> str:
    """The ``"starter"`` or ``"solution"`` text of an exercise cell."""
    before, starter, solution, after, indent = _blocks(text)
    if which == "solution":
        middle = solution
    elif which == "starter":
        middle = starter if starter is not None else [indent + line for line in STUB]
    else:
        raise ValueError(f"version must be one of {VERSIONS}, got {which!r}")
    return "\n".join(before + middle + after).strip("\n")


def solution_lines(text: str) -> tuple[list[str], list[str] | None, list[str], list[str], str]:
    """The parts of an exercise cell, for exporters: (before, starter, solution, after, indent)."""
    return _blocks(text)


def notebook(source: Source, which: str = "starter"):
    """The nbformat notebook of a source: a lesson, or an assignment's starter or solution."""
    import nbformat
    cells = []
    for kind, text, meta in source.cells:
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif "exercise" in meta:  # the grader finds an exercise's cell by this metadata
            cells.append(nbformat.v4.new_code_cell(version(text, which),
                                                   metadata={"treemdp": {"exercise": meta["exercise"]}}))
        else:
            cells.append(nbformat.v4.new_code_cell(text))
    for i, cell in enumerate(cells):
        cell["id"] = f"c{i:03d}"
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    if source.assignment is not None:
        nb.metadata["treemdp"] = {"assignment": source.assignment, "version": which}
    return nb
