"""Build ``lessons/NN_name.ipynb`` from its Jupytext ``py:percent`` source ``lessons/NN_name.py``.

    python lessons/_percent.py           # (re)write the notebooks of every lessons/NN_*.py
    python lessons/_percent.py --check   # exit 1 if a committed notebook differs from its source

A stopgap for lessons written as py:percent sources before the lesson sources move to Jupytext
(the ``teach`` branch): no jupytext needed. ``# %%`` starts a code cell, ``# %% [markdown]`` a
text cell (its lines lose their leading ``# ``); commented magics (``# %matplotlib inline``) are
uncommented. A cell tagged ``exercise="ID"`` holds starter and solution: the notebook gets the
starter, the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` replaced by
``# YOUR CODE HERE`` and ``raise NotImplementedError`` (nbgrader's convention). Notebooks are
written without outputs and with fixed cell ids, like ``lessons/_build.py``'s.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
_HEADER = re.compile(r"^# %%(?P<markdown> \[markdown\])?(?P<meta>.*)$")
_META = re.compile(r'(\w+)="([^"]*)"')


def read_cells(path: Path) -> list[tuple[str, str, dict]]:
    """``(kind, text, metadata)`` for every cell of a py:percent file."""
    cells, kind, meta, lines = [], None, {}, []

    def close():
        if kind is not None:
            text = "\n".join(lines).strip("\n")
            if kind == "markdown":
                text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in text.splitlines())
            else:
                text = "\n".join(line[2:] if re.match(r"^# [%!]\w", line) else line for line in text.splitlines())
            cells.append((kind, text, meta))

    for line in path.read_text().splitlines():
        header = _HEADER.match(line)
        if header:
            close()
            kind = "markdown" if header.group("markdown") else "code"
            meta, lines = dict(_META.findall(header.group("meta"))), []
        elif kind is not None:
            lines.append(line)
    close()
    return cells


def starter(text: str) -> str:
    """The exercise cell with its solution replaced by the stub."""
    out, skipping = [], False
    for line in text.splitlines():
        if line.strip() == BEGIN:
            indent = line[:len(line) - len(line.lstrip())]
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError"]
            skipping = True
        elif line.strip() == END:
            skipping = False
        elif not skipping:
            out.append(line)
    return "\n".join(out)


def solution(text: str) -> str:
    """The exercise cell with the solution kept and the markers dropped."""
    return "\n".join(line for line in text.splitlines() if line.strip() not in (BEGIN, END))


def notebook(path: Path):
    nb = nbformat.v4.new_notebook()
    for i, (kind, text, meta) in enumerate(read_cells(path)):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(text)
        else:
            cell = nbformat.v4.new_code_cell(starter(text) if "exercise" in meta else text)
        cell["id"] = f"c{i:03d}"
        nb.cells.append(cell)
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    return nb


def sources() -> list[Path]:
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for source in sources():
        target = source.with_suffix(".ipynb")
        text = nbformat.writes(notebook(source)) + "\n"
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(target.name)
        elif not target.exists() or target.read_text() != text:
            target.write_text(text)
            print(f"wrote lessons/{target.name}")
    if stale:
        print(f"out of date (run python lessons/_percent.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
