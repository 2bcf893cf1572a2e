"""Each assignment in the source formats of two course tools, generated from its py:percent source.

- **nbgrader**: ``DIR/source/<name>/<name>.ipynb`` in a course folder with ``nbgrader_config.py``.
  An exercise cell is a solution cell (nbgrader metadata ``solution: true``) whose answer sits
  between ``### BEGIN SOLUTION`` and ``### END SOLUTION``; the check cell after it becomes an
  autograded test cell (``grade: true``, locked, with the exercise's points) that asserts the
  check in :mod:`treemdp.exercises` passes. ``nbgrader generate_assignment`` then writes the
  student version and ``nbgrader autograde`` scores submissions.
- **Otter-Grader**: ``DIR/<name>/<name>.ipynb``, an Otter Assign master notebook: a raw
  ``# ASSIGNMENT CONFIG`` cell, then per exercise a ``# BEGIN QUESTION`` block with the prompt,
  the solution cell (the answer between ``# BEGIN SOLUTION NO PROMPT`` and ``# END SOLUTION``, the
  starter as the ``# BEGIN PROMPT`` block) and a ``# BEGIN TESTS`` block with the same assertion.
  ``otter assign`` writes the student and autograder versions; ``otter run`` grades a submission.

Both formats call the same checks the notebooks and ``treemdp grade`` use, so a submission gets
the same verdict everywhere. The points of an exercise come from its cell (``points=2``; 1 by
default).
"""

from __future__ import annotations

from pathlib import Path

from .sources import (BEGIN_SOLUTION, END_SOLUTION, KERNELSPEC, Source, SourceError, solution_lines,
                      sources, version)

FORMATS = ("nbgrader", "otter")


def _test_code(exercise_id: str, target: str) -> str:
    """The assertion both tools run: the exercise's own check must say correct."""
    return (f"from treemdp.exercises import get_exercise\n"
            f"assert get_exercise({exercise_id!r}).check({target}).correct, "
            f"get_exercise({exercise_id!r}).check({target})")


def _target(exercise_id: str) -> str:
    from .core import get_exercise
    return get_exercise(exercise_id).target


def _check_cells(source: Source) -> dict[int, int]:
    """Exercise cell index -> the index of the code cell after it (its check call)."""
    found = {}
    for exercise in source.exercises:
        after = [i for i in range(exercise.index + 1, len(source.cells)) if source.cells[i][0] == "code"]
        if not after:
            raise SourceError(f"{source.path.name}: exercise {exercise.id!r} has no check cell after it")
        found[exercise.index] = after[0]
    return found


def _notebook(cells: list, source: Source):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:03d}"
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    return nb


def nbgrader_notebook(source: Source):
    """The nbgrader source notebook of an assignment (solution cells, autograded test cells)."""
    import nbformat
    checks = _check_cells(source)
    tests = {checks[exercise.index]: exercise for exercise in source.exercises}  # check cell -> exercise
    cells = []
    for i, (kind, text, meta) in enumerate(source.cells):
        if kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif "exercise" in meta:
            before, starter, solution, after, indent = solution_lines(text)
            if starter is None:  # nbgrader's own markers and stub, in place
                body = "\n".join(before + [indent + BEGIN_SOLUTION] + solution + [indent + END_SOLUTION] + after)
            else:  # the answer is not a block of statements: the whole cell is the solution
                hint = [f"# {line}" if line.strip() else "#" for line in version(text, "starter").split("\n")]
                body = "\n".join(["# Fill in (a template):"] + hint + [BEGIN_SOLUTION, version(text, "solution"),
                                                                       END_SOLUTION])
            cell = nbformat.v4.new_code_cell(body)
            cell.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False,
                                         "grade_id": meta["exercise"].replace(".", "_"), "schema_version": 3}
            cells.append(cell)
        elif i in tests:
            exercise = tests[i]
            cell = nbformat.v4.new_code_cell(text + "\n\n# Autograded:\n" + _test_code(exercise.id, _target(exercise.id)))
            cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True,
                                         "points": exercise.points,
                                         "grade_id": "test_" + exercise.id.replace(".", "_"), "schema_version": 3}
            cells.append(cell)
        else:
            cells.append(nbformat.v4.new_code_cell(text))
    return _notebook(cells, source)


def _otter_solution_cell(text: str) -> str:
    """The answer as an Otter solution (kept in the autograder version), the starter as its prompt."""
    starter = version(text, "starter")
    quote = "'''" if '"""' in starter else '"""'
    if quote in starter:
        raise SourceError("a starter that contains both kinds of triple quotes cannot be an Otter prompt")
    return "\n".join(["# BEGIN SOLUTION NO PROMPT", version(text, "solution"), "# END SOLUTION",
                      f"{quote} # BEGIN PROMPT", starter, f"{quote}; # END PROMPT"])


def otter_notebook(source: Source):
    """The Otter Assign master notebook of an assignment."""
    import nbformat
    _check_cells(source)  # every exercise has its check cell (kept as it is, after the question)
    prompts = {}  # exercise index -> the markdown cell just before it (its question text)
    for exercise in source.exercises:
        j = exercise.index - 1
        if j >= 0 and source.cells[j][0] == "markdown":
            prompts[exercise.index] = j
    config = "\n".join(["# ASSIGNMENT CONFIG", f"name: {source.name}", "init_cell: true",
                        "check_all_cell: false", "export_cell: false", "solutions_pdf: false",
                        "generate: true", "run_tests: false"])
    cells = [nbformat.v4.new_raw_cell(config)]
    by_index = {e.index: e for e in source.exercises}
    skip = set(prompts.values())
    for i, (kind, text, meta) in enumerate(source.cells):
        if i in skip:
            continue
        if i in by_index:
            exercise = by_index[i]
            target = _target(exercise.id)
            points = int(exercise.points) if float(exercise.points).is_integer() else exercise.points
            cells.append(nbformat.v4.new_raw_cell(f"# BEGIN QUESTION\nname: {target}\npoints: {points}"))
            if i in prompts:
                cells.append(nbformat.v4.new_markdown_cell(source.cells[prompts[i]][1]))
            cells.append(nbformat.v4.new_raw_cell("# BEGIN SOLUTION"))
            cells.append(nbformat.v4.new_code_cell(_otter_solution_cell(text)))
            cells.append(nbformat.v4.new_raw_cell("# END SOLUTION"))
            cells.append(nbformat.v4.new_raw_cell("# BEGIN TESTS"))
            cells.append(nbformat.v4.new_code_cell(_test_code(exercise.id, target)))
            cells.append(nbformat.v4.new_raw_cell("# END TESTS"))
            cells.append(nbformat.v4.new_raw_cell("# END QUESTION"))
        elif kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cells.append(nbformat.v4.new_code_cell(text))
    return _notebook(cells, source)


#: The course's nbgrader_config.py. nbgrader creates its gradebook by running the ``alembic``
#: command by name (``subprocess`` on ``['alembic', ...]``), so ``.venv/bin/nbgrader ...`` without
#: the venv activated fails with ``FileNotFoundError: 'alembic'`` on the first assignment (and
#: releases the others). nbgrader runs this file in its own process: putting the folder of that
#: process's Python (the venv's bin, where pip put ``alembic``) first on PATH makes full paths work.
NBGRADER_CONFIG = '''import os
import sys

c = get_config()  # noqa: F821 - nbgrader's config loader provides it
c.CourseDirectory.course_id = "treemdp"

# nbgrader runs `alembic` by name: find it beside this Python even when the venv is not activated.
_bin = os.path.dirname(sys.executable)
if _bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _bin + os.pathsep + os.environ.get("PATH", "")
'''


def export(content: str | Path, fmt: str, out: str | Path) -> list[Path]:
    """Write every assignment of the sources in ``content`` in format ``fmt`` under ``out``.

    Returns:
        The files written.
    """
    import nbformat
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    written = []
    for source in sources(content):
        if source.assignment is None:
            continue
        if fmt == "nbgrader":
            path = out / "source" / source.name / f"{source.name}.ipynb"
            nb = nbgrader_notebook(source)
        else:
            path = out / source.name / f"{source.name}.ipynb"
            nb = otter_notebook(source)
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(path))
        written.append(path)
    if fmt == "nbgrader":
        config = out / "nbgrader_config.py"
        config.write_text(NBGRADER_CONFIG)
        written.append(config)
    return written
