"""``treemdp lessons``: the course material in other tools' formats.

``treemdp lessons export --format nbgrader|otter DIR`` writes every assignment of
``lessons/_content`` as nbgrader source notebooks or Otter Assign master notebooks
(:mod:`treemdp.exercises.export`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

#: The lesson sources of a source checkout (the package does not ship them).
DEFAULT_CONTENT = Path(__file__).resolve().parents[2] / "lessons" / "_content"


def add_parsers(subparsers) -> None:
    """Register ``treemdp lessons export``."""
    from ..exercises.export import FORMATS
    parser = subparsers.add_parser("lessons", help="export the assignments for nbgrader or Otter-Grader",
                                   description="The lessons' assignments in other course tools' formats.")
    commands = parser.add_subparsers(dest="lessons_command", metavar="COMMAND")
    commands.required = True
    export = commands.add_parser(
        "export", help="write every assignment as nbgrader or Otter-Grader source notebooks",
        description="Write each assignment (from its py:percent source) in the source format of a "
                    "course tool: nbgrader (DIR/source/NAME/NAME.ipynb, solution and autograded test "
                    "cells) or Otter-Grader (DIR/NAME/NAME.ipynb, an Otter Assign master notebook).")
    export.add_argument("--format", required=True, choices=FORMATS, help="the tool: nbgrader or otter")
    export.add_argument("out", metavar="DIR", help="folder to write into (created if missing)")
    export.add_argument("--content", default=None, metavar="DIR",
                        help="folder of the py:percent sources (default: lessons/_content of this checkout)")
    export.set_defaults(func=handler)


def handler(args) -> int:
    from ..exercises.export import export
    from ..exercises.sources import SourceError
    content = Path(args.content) if args.content else DEFAULT_CONTENT
    if not content.is_dir():
        raise UserError(f"no lesson sources at {str(content)!r}; pass --content DIR (lessons/_content of a checkout)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{str(out)!r} exists and is not a folder")
    try:
        import jupytext  # noqa: F401
    except ImportError:
        raise UserError("exporting needs the lessons extra: pip install 'treemdp[lessons]'") from None
    try:
        written = export(content, args.format, out)
    except SourceError as e:
        raise UserError(str(e).splitlines()[0]) from None
    except OSError as e:
        raise UserError(f"cannot write under {str(out)!r}: {e.strerror or e}") from None
    if not written:
        raise UserError(f"no assignment sources (aN_name.py) in {str(content)!r}")
    for path in written:
        print(f"wrote {path}")
    return 0
