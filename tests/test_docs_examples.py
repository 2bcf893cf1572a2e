"""Every example of README.md, docs/*.md and lessons/README.md runs, as a reader would copy it.

The fenced ``bash``/``sh``/``console`` and ``python`` blocks of each file run in order, each as
its own process, in one scratch folder per file laid out like a clone (``.venv`` -> the
environment running the tests, ``treemdp/``, ``constraints.txt``, ``pyproject.toml`` linked, a
copy of ``lessons/``), so a block sees what the blocks above it wrote (``runs/dpo-0.1``) and
nothing else. A line just before a block, in an HTML comment (invisible on GitHub), may say:

- ``<!-- docs-test: skip: REASON -->``: not run (a GPU, the network, a server); the test is
  reported as skipped with REASON.
- ``<!-- docs-test: sub 'OLD' 'NEW': REASON -->`` (repeatable): run with OLD replaced by NEW, a
  smaller budget of the same command, stated where the reader sees the block's source.
- ``<!-- docs-test: file NAME -->``: the block is the content of file NAME (``my_losses.py``),
  written into the scratch folder instead of run.
- ``<!-- docs-test: same as FILE -->``: the block is a copy of one in FILE and runs there (this
  test checks that it is an exact copy).

Examples written as indented blocks are not run, so a command there fails
:func:`test_no_example_hides_in_an_indented_block`.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "lessons" / "README.md"]
RUN_LANGUAGES = {"bash": "shell", "sh": "shell", "console": "shell", "python": "python"}
MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
LINKED = (".venv", "treemdp", "constraints.txt", "pyproject.toml", "Makefile", "benchmarks", "scripts")
TIMEOUT_S = 1800  # per block; a loaded shared machine runs the LLM quick start 10x slower than an idle one


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip: str | None = None
    subs: list[tuple[str, str, str]] = field(default_factory=list)
    file: str | None = None
    same_as: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_SUB = re.compile(r"""sub\s+(['"])(.*?)\1\s+(['"])(.*?)\3\s*:\s*(\S.*)""")


def parse_markers(comments: list[str], where: str) -> dict:
    """The directives of the ``docs-test`` comments just above a block."""
    out: dict = {"subs": []}
    for text in comments:
        if text.startswith("skip:"):
            out["skip"] = text[len("skip:"):].strip()
        elif text.startswith("sub "):
            match = _SUB.fullmatch(text)
            if match is None:
                raise ValueError(f"{where}: write <!-- docs-test: sub 'OLD' 'NEW': REASON -->, got {text!r}")
            out["subs"].append((match.group(2), match.group(4), match.group(5)))
        elif text.startswith("file "):
            out["file"] = text[len("file "):].strip()
        elif text.startswith("same as "):
            out["same_as"] = text[len("same as "):].strip()
        else:
            raise ValueError(f"{where}: unknown docs-test directive {text!r}")
    return out


def extract_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` in a language that runs, with the directives above it."""
    lines = path.read_text().splitlines()
    blocks, comments, i = [], [], 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        marker = MARKER.fullmatch(line.strip())
        if marker:
            comments.append(marker.group(1))
        elif fence:
            indent, mark = fence.group(1), fence.group(2)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(mark))
            language = fence.group(3).lower()
            if language in RUN_LANGUAGES or comments:
                code = "\n".join(x[len(indent):] if x.startswith(indent) else x.lstrip()
                                 for x in lines[i + 1:end]) + "\n"
                if language == "console":
                    code = "\n".join(x[2:] for x in code.splitlines() if x.startswith("$ ")) + "\n"
                directives = parse_markers(comments, f"{path.name}:{i + 1}")
                blocks.append(Block(path, i + 1, language, code, directives.get("skip"), directives["subs"],
                                    directives.get("file"), directives.get("same_as")))
            comments, i = [], end
        elif line.strip():
            comments = []
        i += 1
    return blocks


BLOCKS = [block for path in DOCS for block in extract_blocks(path)]
_SCRATCH: dict[Path, Path] = {}
_FAILED: dict[Path, str] = {}


def scratch_for(path: Path, factory) -> Path:
    """One folder per markdown file, laid out like a clone, shared by its blocks in order."""
    if path not in _SCRATCH:
        folder = factory.mktemp(path.stem.lower())
        for name in LINKED:
            source = Path(sys.prefix) if name == ".venv" else ROOT / name
            if source.exists():
                (folder / name).symlink_to(source)
        # A copy: lessons/_build.py writes next to itself, and a reader's copy is theirs to change.
        shutil.copytree(ROOT / "lessons", folder / "lessons", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        _SCRATCH[path] = folder
    return _SCRATCH[path]


def block_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # the examples must not need it
    return env


def prepared_code(block: Block) -> str:
    code = block.code
    for old, new, _ in block.subs:
        if old not in code:
            raise AssertionError(f"{block.id}: docs-test sub: {old!r} is not in the block")
        code = code.replace(old, new)
    return code


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_example_runs(block: Block, tmp_path_factory, record_property):
    if block.same_as:
        other = ROOT / block.same_as
        assert any(b.code == block.code for b in extract_blocks(other)), \
            f"{block.id} says it is the same as a block of {block.same_as}, but no block there matches"
        pytest.skip(f"a copy of a block of {block.same_as}, run there")
    if block.skip:
        pytest.skip(block.skip)
    if block.path in _FAILED:
        pytest.fail(f"an earlier example of {block.path.name} failed ({_FAILED[block.path]}), so this one cannot run")
    folder = scratch_for(block.path, tmp_path_factory)
    if block.file:
        (folder / block.file).write_text(block.code)
        return
    code = prepared_code(block)
    if RUN_LANGUAGES.get(block.language) == "python":
        command = [str(folder / ".venv" / "bin" / "python"), "-c", code]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    started = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Its own process group, so that a timeout stops the commands the block started, not only bash.
    process = subprocess.Popen(command, cwd=folder, env=block_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        _FAILED[block.path] = block.id
        pytest.fail(f"{block.id} ran longer than {TIMEOUT_S} s")
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    record_property("example CPU seconds", round(ended.ru_utime + ended.ru_stime - started.ru_utime - started.ru_stime, 1))
    if process.returncode != 0:
        _FAILED[block.path] = block.id
        pytest.fail(f"{block.id} exited {process.returncode}\n--- code\n{code}--- stdout\n{stdout[-4000:]}"
                    f"--- stderr\n{stderr[-4000:]}")


#: Words that start a command or a Python example.
_COMMAND = re.compile(r"^(\.venv/bin/|treemdp |make |python|pip |accelerate |torchrun |import |from \S+ import )")


def test_no_example_hides_in_an_indented_block():
    """An indented code block is never run: commands and code belong in fenced blocks."""
    hidden = []
    for path in DOCS:
        lines, inside_fence = path.read_text().splitlines(), False
        for number, line in enumerate(lines, start=1):
            if FENCE.match(line):
                inside_fence = not inside_fence
                continue
            previous = lines[number - 2] if number > 1 else ""
            if (not inside_fence and line.startswith("    ") and not previous.startswith("    ")
                    and not previous.lstrip().startswith(("-", "|", "*")) and _COMMAND.match(line.strip())):
                hidden.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hidden, "examples in indented blocks (never run; fence them):\n" + "\n".join(hidden)


def test_markers_parse_and_skips_are_few():
    """Every directive is understood; what is skipped says why."""
    skipped = [b for b in BLOCKS if b.skip]
    assert all(b.skip for b in skipped)
    assert 2 * len(skipped) <= len(BLOCKS), [b.id for b in skipped]
    assert parse_markers(["sub '--seeds 0-9' '--seeds 0-1': fewer seeds"], "x") == \
        {"subs": [("--seeds 0-9", "--seeds 0-1", "fewer seeds")]}
    with pytest.raises(ValueError, match="unknown docs-test directive"):
        parse_markers(["skipp: typo"], "x")
