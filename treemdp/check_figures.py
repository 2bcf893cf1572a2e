"""Every number ``figures/README.md`` ties to a table must equal that table, at the precision quoted.

The README quotes generated tables (``figures/claims.csv`` for the paper-style figures,
``figures/lab/claims.csv`` for the lab; one row per number: ``claim, setting, statistic, value,
low, high, n``). After the numbers it quotes from one row, the text carries a tag, an HTML
comment GitHub does not show::

    264 of 360 DAA runs (73%, interval 69–78%)<!-- check lab/claims.csv: daas_overoptimize |
    all DAA runs | share of runs with win drop >= 0.02 -> count n value low high -->

The fields after ``->`` (default ``value``) name what the last numbers before the tag are, in
order: ``value``, ``low``, ``high`` (the row's columns), ``n``, ``count`` (``value * n``).
A number written with ``%`` (or the first of a range ``69–78%``) is compared with 100 × the
table's value. A quoted number agrees when it is the table's value rounded to the quoted number
of decimals (``0.21`` for 0.2077; ``74%`` for 0.742).

``python -m treemdp.check_figures figures/README.md --tables DIR`` checks against the tables in
DIR (default: beside the README); each disagreement is one line naming the README line, the
sentence, the quoted number and the table's value. ``make check-figures`` regenerates the tables
first. Numbers not tied to any table are counted (``--list-unchecked`` lists them;
``--strict`` fails on them).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

TAG = re.compile(r"<!--\s*check\s+(?P<table>[^:]+?):\s*(?P<key>.*?)\s*(?:->\s*(?P<fields>[\w\s]+?))?\s*-->", re.S)
#: A quoted number: not part of a word (``s1``, ``fig07``), optionally signed, optionally a percent.
NUMBER = re.compile(r"(?<![\w.^/])(?P<sign>(?<!\d)[-−+])?(?P<digits>\d+(?:\.\d+)?)(?:[eE](?P<exp>[-+]?\d+))?"
                    r"(?P<pct>%)?(?![\w.]\d|[A-Za-z])")
RANGE_TO_PERCENT = re.compile(r"\s*[–-]\s*[-−+]?\d+(?:\.\d+)?%")
FIELDS = ("value", "low", "high", "n", "count")


@dataclass
class Quoted:
    text: str      # as written
    number: float  # its value (a percent as a percent: 73 for "73%")
    decimals: int
    percent: bool
    offset: int    # in the README


@dataclass
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def quoted_numbers(text: str, start: int = 0) -> list[Quoted]:
    """The numbers in ``text`` (offsets relative to the README: ``start`` is where text begins)."""
    out = []
    for match in NUMBER.finditer(text):
        digits = match.group("digits")
        number = float(digits) * (10 ** int(match.group("exp")) if match.group("exp") else 1)
        if match.group("sign") in ("-", "−"):
            number = -number
        percent = bool(match.group("pct")) or bool(RANGE_TO_PERCENT.match(text, match.end()))
        decimals = len(digits.partition(".")[2]) - (int(match.group("exp")) if match.group("exp") else 0)
        out.append(Quoted(match.group(0), number, decimals, percent, start + match.start()))
    return out


def agrees(quoted: Quoted, table_value: float) -> bool:
    """``quoted`` is ``table_value`` (x100 for a percent) rounded to the quoted decimals."""
    if table_value is None or not math.isfinite(table_value):
        return False
    value = table_value * 100 if quoted.percent else table_value
    return abs(value - quoted.number) <= 0.5 * 10 ** (-quoted.decimals) + 1e-9 * max(1.0, abs(value))


def _format(quoted: Quoted, table_value: float) -> str:
    if table_value is None or not math.isfinite(table_value):
        return "no value"
    value = table_value * 100 if quoted.percent else table_value
    shown = f"{value:.{max(quoted.decimals, 0)}f}{'%' if quoted.percent else ''}"
    return f"{table_value:.6g} (quoted at this precision: {shown})"


def _sentence(readme: str, at: int, end: int) -> str:
    """The sentence around a number, up to its tag, on one line (for the message)."""
    start = max(readme.rfind(". ", 0, at), readme.rfind("\n\n", 0, at), readme.rfind("|", 0, at), 0)
    text = TAG.sub("", readme[start:end]).lstrip(". |\n")
    text = " ".join(text.split())
    return text if len(text) <= 160 else "…" + text[-159:]


def load_table(tables: Path, name: str, cache: dict) -> pd.DataFrame | None:
    if name not in cache:
        path = tables / name
        cache[name] = pd.read_csv(path) if path.exists() else None
    return cache[name]


def check(readme_path: str | Path, tables: str | Path | None = None) -> tuple[list[Problem], list[tuple[int, Quoted]], int]:
    """Check every tag of ``readme_path`` against the tables under ``tables`` (default: its folder).

    Returns:
        (problems, unchecked numbers as (line, Quoted), how many quoted numbers were checked).
    """
    readme_path = Path(readme_path)
    tables = Path(tables) if tables is not None else readme_path.parent
    readme = readme_path.read_text()
    prose = _prose(readme)  # tags and numbers are read where the reader sees text, not in code
    every_number = quoted_numbers(TAG.sub(_blank, prose))  # "13<!-- tag -->–14%": 13 is a percent too
    line_of = lambda offset: readme.count("\n", 0, offset) + 1  # noqa: E731
    problems, covered, checked, cache = [], set(), 0, {}
    previous_end = 0
    for tag in TAG.finditer(prose):
        paragraph = max(readme.rfind("\n\n", 0, tag.start()), readme.rfind("\n|", 0, tag.start()),
                        readme.rfind("\n- ", 0, tag.start()))
        segment_start = max(previous_end, paragraph + 1)
        previous_end = tag.end()
        line = line_of(tag.start())
        fields = (tag.group("fields") or "value").split()
        if any(f not in FIELDS for f in fields):
            problems.append(Problem(line, f"unknown field in {fields}; use {', '.join(FIELDS)}"))
            continue
        key = [part.strip() for part in " ".join(tag.group("key").split()).split("|")]
        name = tag.group("table").strip()
        numbers = [q for q in every_number if segment_start <= q.offset < tag.start()]
        if len(numbers) < len(fields):
            problems.append(Problem(line, f"the tag names {len(fields)} numbers ({' '.join(fields)}) but the text "
                                          f"before it has {len(numbers)}: {_sentence(readme, segment_start, tag.start())!r}"))
            continue
        table = load_table(tables, name, cache)
        if table is None:
            problems.append(Problem(line, f"no table {str(tables / name)!r}"))
            continue
        if len(key) != 3:
            problems.append(Problem(line, f"a tag names a row as 'claim | setting | statistic', got {tag.group('key')!r}"))
            continue
        rows = table[(table["claim"] == key[0]) & (table["setting"] == key[1]) & (table["statistic"] == key[2])]
        if len(rows) != 1:
            problems.append(Problem(line, f"{name} has {len(rows)} rows for [{' | '.join(key)}] (expected 1)"))
            continue
        row = rows.iloc[0]
        for field, quoted in zip(fields, numbers[-len(fields):]):
            covered.add(quoted.offset)
            checked += 1
            if field == "count":
                table_value = float(row["value"]) * float(row["n"])
            else:
                table_value = float(row[field]) if pd.notna(row[field]) else float("nan")
            if field in ("n", "count"):
                quoted = Quoted(quoted.text, quoted.number, max(quoted.decimals, 0), False, quoted.offset)
            if not agrees(quoted, table_value):
                problems.append(Problem(line_of(quoted.offset),
                                        f"{_sentence(readme, quoted.offset, tag.start())!r}: quotes {quoted.text} as "
                                        f"{field} of {name} [{' | '.join(key)}]; the table has "
                                        f"{_format(quoted, table_value)}"))
    unchecked = [(line_of(q.offset), q) for q in every_number if q.offset not in covered]
    return problems, unchecked, checked


def _blank(match: re.Match) -> str:
    return re.sub(r"[^\n]", " ", match.group(0))


def _prose(readme: str) -> str:
    """The README with fenced blocks, code spans and headings blanked (same length, same lines),
    so their digits (file names, flags, figure numbers) are not taken for quoted numbers."""
    text = re.sub(r"```.*?```", _blank, readme, flags=re.S)
    text = re.sub(r"`[^`]*`", _blank, text)
    return re.sub(r"^#.*$", _blank, text, flags=re.M)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m treemdp.check_figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("readme", nargs="?", default="figures/README.md")
    parser.add_argument("--tables", help="folder holding the tables the tags name (default: the README's folder)")
    parser.add_argument("--strict", action="store_true", help="also fail on numbers tied to no table")
    parser.add_argument("--list-unchecked", action="store_true", help="list the numbers tied to no table")
    args = parser.parse_args(argv)
    if not Path(args.readme).is_file():
        print(f"error: no file {args.readme!r}", file=sys.stderr)
        return 2
    problems, unchecked, checked = check(args.readme, args.tables)
    for problem in problems:
        print(f"{args.readme}:{problem}", file=sys.stderr)
    if args.list_unchecked:
        for line, quoted in unchecked:
            print(f"{args.readme}:{line}: {quoted.text} is tied to no table")
    tables = args.tables or str(Path(args.readme).parent)
    print(f"check-figures: {checked} quoted numbers checked against the tables in {tables}/, "
          f"{len(problems)} disagree; {len(unchecked)} numbers tied to no table"
          f"{' (--list-unchecked lists them)' if unchecked and not args.list_unchecked else ''}")
    return 1 if problems or (args.strict and unchecked) else 0


if __name__ == "__main__":
    sys.exit(main())
