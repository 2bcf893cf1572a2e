"""``treemdp grade``: run assignment notebooks and report each exercise's outcome (the work is
in :mod:`treemdp.grade`)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from ..grade import (SYMBOLS, Row, check_writable, format_table, grade_notebook, is_cell_row, known_assignment,
                     write_csv)


def add_parsers(subparsers) -> None:
    """Register ``treemdp grade``."""
    parser = subparsers.add_parser(
        "grade", help="run assignment notebooks and report each exercise's outcome",
        description="Execute an assignment notebook (or every notebook under a folder of "
                    "submissions) in a fresh kernel and check each exercise against the library: "
                    "not attempted / incorrect (why) / correct. A folder gets a table and a CSV.")
    parser.add_argument("path", metavar="NOTEBOOK_OR_DIR", help="an .ipynb file or a folder of them")
    parser.add_argument("--assignment", default=None,
                        help="assignment id (a1, a2, a3); default: read from the notebook's metadata "
                             "or its file name")
    parser.add_argument("--csv", default=None, metavar="FILE",
                        help="where a folder's results go (default: DIR/grades.csv)")
    parser.add_argument("--timeout", type=int, default=600, metavar="SECONDS",
                        help="limit per cell (default 600)")
    parser.set_defaults(func=handler)


def handler(args) -> int:
    path = Path(args.path)
    if args.timeout is not None and args.timeout < 1:
        raise UserError(f"--timeout must be >= 1 second, got {args.timeout}")
    if args.assignment is not None:
        known_assignment(args.assignment)
    if path.is_dir():
        notebooks = sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        if not notebooks:
            raise UserError(f"no .ipynb files under {str(path)!r}")
        csv_path = Path(args.csv) if args.csv else path / "grades.csv"
        check_writable(csv_path)
        rows = []
        for notebook in notebooks:
            print(f"grading {notebook.relative_to(path)} ...", file=sys.stderr, flush=True)
            try:
                rows += grade_notebook(notebook, assignment=args.assignment, timeout=args.timeout)
            except UserError as e:  # one unreadable submission must not stop the class
                rows.append(Row(str(notebook), "?", "", "error", str(e)))
        print(format_table(rows, root=path))
        write_csv(rows, csv_path)
        print(f"wrote {csv_path}")
        return 0
    if not path.exists():
        raise UserError(f"{str(path)!r} does not exist")
    if path.suffix != ".ipynb":
        raise UserError(f"{str(path)!r} is not a notebook (.ipynb) or a folder")
    rows = grade_notebook(path, assignment=args.assignment, timeout=args.timeout)
    width = max(len(r.exercise) for r in rows)
    for r in rows:
        print(f"{SYMBOLS.get(r.outcome, '?')} {r.exercise:<{width}}  {r.outcome}: {r.message}")
    graded = [r for r in rows if not is_cell_row(r)]
    done = sum(r.outcome == "correct" for r in graded)
    print(f"{done} of {len(graded)} exercises correct")
    return 0
