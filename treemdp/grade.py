"""Grading (``treemdp grade``, the command in :mod:`treemdp.cli.grade`): run a student's assignment notebook and report each exercise's outcome.

``treemdp grade NOTEBOOK`` executes the notebook top to bottom in a fresh kernel (cells that fail
are recorded, not fatal), then, in that kernel, calls :func:`treemdp.exercises.check_namespace`
on the names the notebook defined: the checks the student saw, independent of whether the
notebook still calls them. The checks are imported in a cell of the grader's own before the
first student cell, so they bind the library functions they compare with while the kernel is
clean: a notebook that assigns ``treemdp.losses.dpo_g = dpo_g`` is compared with the library's
function, not its own (see :class:`treemdp.exercises.core.Reference`). An exercise whose own cell fails (a syntax error, say) is incorrect
with that error; any other cell that raises gets a row of its own, named ``cell [N]`` with N the
number JupyterLab shows beside it after Restart Kernel and Run All Cells. ``treemdp grade DIR``
does this for every notebook under DIR, prints one table row per submission and writes one CSV
row per (submission, exercise or failing cell).

Student code runs with your permissions: grade untrusted submissions in a container.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

MARKER = "TREEMDP-GRADE:"
SYMBOLS = {"correct": "✓", "incorrect": "✗", "not attempted": "·", "error": "!"}


@dataclass(frozen=True)
class Row:
    """One (submission, exercise) outcome, a row of the CSV."""

    notebook: str
    assignment: str
    exercise: str
    outcome: str
    message: str


def known_assignment(name: str) -> str:
    from .exercises import assignment_exercises
    assignment_exercises(name)  # raises UserError listing the valid ones
    return name


def detect_assignment(nb, path: Path) -> str:
    """The assignment id from the notebook's ``treemdp`` metadata, else from a name like ``a2_...``."""
    meta = nb.metadata.get("treemdp", {}) if hasattr(nb, "metadata") else {}
    if isinstance(meta, dict) and meta.get("assignment"):
        return known_assignment(str(meta["assignment"]))
    match = re.search(r"(?:^|[^a-z0-9])(a\d+)(?:[^0-9]|$)", path.stem.lower())
    if match:
        return known_assignment(match.group(1))
    raise UserError(f"cannot tell which assignment {str(path)!r} is; pass --assignment")


def grade_notebook(path: Path, *, assignment: str | None = None, timeout: int = 600) -> list[Row]:
    """Execute ``path`` in a fresh kernel and check its exercises; one :class:`Row` each."""
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellTimeoutError, DeadKernelError
    except ImportError:
        raise UserError("grading needs the lessons extra: pip install 'treemdp[lessons]'") from None
    from .exercises import assignment_exercises

    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as e:  # nbformat raises several types for a broken file
        raise UserError(f"{str(path)!r} is not a readable notebook: {type(e).__name__}: {e}".splitlines()[0]) from None
    assignment = assignment or detect_assignment(nb, path)
    exercises = assignment_exercises(assignment)
    # Before any student cell: import the checks, so that they bind the library's functions
    # while the kernel is clean (a cell that later assigns treemdp.losses.dpo_g = dpo_g cannot
    # reach them), and keep the checker under a name of the grader's own.
    first = ("import json as _treemdp_grade_json\n"
             "from treemdp.exercises import check_namespace as _treemdp_grade_check")
    code = (f"print({MARKER!r} + _treemdp_grade_json.dumps([[r.exercise, r.outcome.value, r.message] "
            f"for r in _treemdp_grade_check({assignment!r}, dict(globals()))]))")
    nb.cells.insert(0, nbformat.v4.new_code_cell(first))
    nb.cells.append(nbformat.v4.new_code_cell(code))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    try:
        client.execute()
    except (CellTimeoutError, DeadKernelError, RuntimeError) as e:
        reason = f"the notebook did not finish: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return [Row(str(path), assignment, ex.id, "error", reason) for ex in exercises]
    setup_errors = [o for o in nb.cells[0].get("outputs", []) if o.get("output_type") == "error"]
    if setup_errors:
        why = f"{setup_errors[0]['ename']}: {setup_errors[0]['evalue']}"
        return [Row(str(path), assignment, ex.id, "error", f"the kernel cannot import treemdp.exercises: {why}")
                for ex in exercises]
    found = None
    for output in nb.cells[-1].get("outputs", []):
        for line in output.get("text", "").splitlines():
            if line.startswith(MARKER):
                found = json.loads(line[len(MARKER):])
    if found is None:
        errors = [o for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "error"]
        why = f"{errors[0]['ename']}: {errors[0]['evalue']}" if errors else "no result"
        return [Row(str(path), assignment, ex.id, "error", f"checking failed: {why}") for ex in exercises]
    rows = [Row(str(path), assignment, exercise, outcome, message) for exercise, outcome, message in found]
    return _with_cell_errors(nb.cells[1:-1], rows, exercises)


def cell_label(number: int) -> str:
    """How a report names a code cell: ``cell [7]`` is the code cell JupyterLab shows as ``[7]:``
    after Kernel > Restart Kernel and Run All Cells (code cells counted from 1, text cells not)."""
    return f"cell [{number}]"


def _errors(cells) -> dict[int, tuple[int, dict]]:
    """Cell index -> (its number as JupyterLab shows it, its first error output), for cells that raised."""
    found, number = {}, 0
    for i, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        number += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found[i] = (number, output)
                break
    return found


def _exercise_cell(cells, exercise) -> int | None:
    """The index of the cell that defines an exercise's target: by metadata, else by its text."""
    for i, cell in enumerate(cells):
        meta = cell.get("metadata", {}).get("treemdp", {})
        if isinstance(meta, dict) and meta.get("exercise") == exercise.id:
            return i
    pattern = re.compile(rf"^(def\s+{re.escape(exercise.target)}\s*\(|{re.escape(exercise.target)}\s*=)", re.M)
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and pattern.search(cell.source):
            return i
    return None


def _with_cell_errors(cells, rows: list[Row], exercises) -> list[Row]:
    """Say which cells raised: an exercise whose own cell failed (a syntax error, say) is
    incorrect with that error, not "not attempted"; every other failing cell gets a row of its own
    (exercise ``cell [N]``, outcome ``error``)."""
    errors = _errors(cells)
    by_id = {e.id: e for e in exercises}
    owned = set()
    out = []
    for row in rows:
        index = _exercise_cell(cells, by_id[row.exercise]) if row.exercise in by_id else None
        if index is not None and index in errors:
            owned.add(index)
            number, error = errors[index]
            what = f"{error.get('ename', 'Error')}: {error.get('evalue', '')}".rstrip(": ")
            kind = "has a syntax error" if error.get("ename") in ("SyntaxError", "IndentationError", "TabError") \
                else "raised an error"
            if row.outcome == "not attempted" and "is not defined yet" in row.message:
                row = Row(row.notebook, row.assignment, row.exercise, "incorrect",
                          f"{cell_label(number)}, where {by_id[row.exercise].target} is defined, {kind}: {what}")
            elif row.outcome != "correct":
                row = Row(row.notebook, row.assignment, row.exercise, row.outcome,
                          f"{row.message} ({cell_label(number)} {kind}: {what})")
        out.append(row)
    notebook, assignment = (rows[0].notebook, rows[0].assignment) if rows else ("", "")
    for index, (number, error) in sorted(errors.items()):
        if index not in owned:
            what = f"{error.get('ename', 'Error')}: {error.get('evalue', '')}".rstrip(": ")
            out.append(Row(notebook, assignment, cell_label(number), "error", what.splitlines()[0][:300]))
    return out


def is_cell_row(row: Row) -> bool:
    return row.exercise.startswith("cell [")


def format_table(rows: list[Row], root: Path | None = None) -> str:
    """One line per submission, one column per exercise (✓ correct, ✗ incorrect, · not attempted),
    then a ``cells`` column: ✓ when every other cell ran, else ! and how many raised (the CSV
    names them)."""
    exercises = list(dict.fromkeys(r.exercise for r in rows if r.exercise and not is_cell_row(r)))
    by_notebook: dict[str, dict[str, str]] = {}
    failing: dict[str, int] = {}
    for r in rows:
        outcomes = by_notebook.setdefault(r.notebook, {})
        if is_cell_row(r):
            failing[r.notebook] = failing.get(r.notebook, 0) + 1
        else:
            outcomes[r.exercise] = r.outcome

    def name(nb: str) -> str:
        try:
            return str(Path(nb).relative_to(root)) if root is not None else nb
        except ValueError:
            return nb

    names = {nb: name(nb) for nb in by_notebook}
    width = max([len("submission")] + [len(n) for n in names.values()])
    columns = [e.split(".", 1)[-1] for e in exercises]
    header = f"{'submission':<{width}}  " + "  ".join(columns + ["cells"]) + "  score"
    lines = [header, "-" * len(header)]
    for nb, outcomes in by_notebook.items():
        cells = []
        for exercise, column in zip(exercises, columns):
            symbol = SYMBOLS.get(outcomes[exercise], "?") if exercise in outcomes else " "
            cells.append(f"{symbol:^{len(column)}}")
        unreadable = "" in outcomes
        ran = " " if unreadable else ("✓" if nb not in failing else f"!{failing[nb]}")
        cells.append(f"{ran:^5}")
        if unreadable:
            score = "error"
        else:
            score = f"{sum(o == 'correct' for o in outcomes.values())}/{len(outcomes)}"
        lines.append(f"{names[nb]:<{width}}  " + "  ".join(cells) + f"  {score}")
    lines.append("✓ correct  ✗ incorrect  · not attempted  ! error (blank: not in that assignment); "
                 "cells: !N = N other cells raised (see the CSV)")
    return "\n".join(lines)


def check_writable(path: Path) -> None:
    if path.exists() and path.is_dir():
        raise UserError(f"--csv {str(path)!r} is a folder")
    if not path.parent.exists():
        raise UserError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")


def write_csv(rows: list[Row], path: Path) -> None:
    """One row per (submission, exercise): notebook, assignment, exercise, outcome, message."""
    try:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["notebook", "assignment", "exercise", "outcome", "message"])
            for r in rows:
                writer.writerow([r.notebook, r.assignment, r.exercise, r.outcome, r.message])
    except OSError as e:
        raise UserError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
