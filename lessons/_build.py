"""Build the lesson and assignment notebooks from their Jupytext sources in ``lessons/_content/``.

    python lessons/_build.py           # (re)write every .ipynb under lessons/
    python lessons/_build.py --check   # exit 1 if a committed notebook differs from its source

``_content/NN_name.py`` becomes ``NN_name.ipynb``; ``_content/aN_name.py`` becomes the starter
``assignments/aN_name.ipynb`` and the solution ``solutions/aN_name.ipynb`` (the format of an
exercise cell is described in :mod:`treemdp.exercises.sources`). Notebooks are written without
outputs and with fixed cell ids, so rebuilding is a no-op when nothing changed and diffs stay
readable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from treemdp.exercises.sources import notebook, sources

HERE = Path(__file__).resolve().parent
CONTENT = HERE / "_content"


def targets() -> dict[Path, object]:
    """Every notebook path and its content."""
    out = {}
    for source in sources(CONTENT):
        if source.assignment is None:
            out[HERE / f"{source.name}.ipynb"] = notebook(source)
        else:
            out[HERE / "assignments" / f"{source.name}.ipynb"] = notebook(source, "starter")
            out[HERE / "solutions" / f"{source.name}.ipynb"] = notebook(source, "solution")
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
