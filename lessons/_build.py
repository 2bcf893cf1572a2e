"""Build the lesson and assignment notebooks from the cell lists in ``lessons/_content/``.

    python lessons/_build.py           # (re)write every .ipynb under lessons/
    python lessons/_build.py --check   # exit 1 if a committed notebook differs from its source

Notebooks are written without outputs and with fixed cell ids, so rebuilding is a no-op when
nothing changed and diffs stay readable. An assignment cell written as ``exercise(starter,
solution)`` becomes the starter in ``lessons/assignments/`` and the solution in
``lessons/solutions/``; everything else is shared.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
CONTENT = HERE / "_content"


def _load(name: str):
    if str(CONTENT) not in sys.path:
        sys.path.insert(0, str(CONTENT))  # the content modules share cells through `common`
    spec = importlib.util.spec_from_file_location(f"_lesson_content_{name}", CONTENT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cells(cells: list, kind: str) -> list:
    """nbformat cells from ``("md", text)``, ``("code", text)`` and ``("exercise", starter, solution)``."""
    out = []
    for cell in cells:
        if cell[0] == "md":
            out.append(nbformat.v4.new_markdown_cell(cell[1].strip("\n")))
        elif cell[0] == "code":
            out.append(nbformat.v4.new_code_cell(cell[1].strip("\n")))
        elif cell[0] == "exercise":
            text = cell[1] if kind == "starter" else cell[2]
            out.append(nbformat.v4.new_code_cell(text.strip("\n")))
        else:
            raise ValueError(f"unknown cell kind {cell[0]!r}")
    for i, c in enumerate(out):
        c["id"] = f"c{i:03d}"
    return out


def notebook(cells: list, kind: str = "starter", assignment: str | None = None):
    nb = nbformat.v4.new_notebook()
    nb.cells = _cells(cells, kind)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    if assignment is not None:
        nb.metadata["treemdp"] = {"assignment": assignment, "version": kind}
    return nb


def targets() -> dict[Path, object]:
    """Every notebook path and its content."""
    lessons = _load("lessons")
    assignments = _load("assignments")
    out = {}
    for filename, cells in lessons.LESSONS.items():
        out[HERE / filename] = notebook(cells)
    for filename, (assignment, cells) in assignments.ASSIGNMENTS.items():
        out[HERE / "assignments" / filename] = notebook(cells, "starter", assignment)
        out[HERE / "solutions" / filename] = notebook(cells, "solution", assignment)
    return out


def render(nb) -> str:
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for path, nb in targets().items():
        text = render(nb)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {path.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run python lessons/_build.py): "
              + ", ".join(str(p.relative_to(HERE.parent)) for p in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
