"""`treemdp lessons export`: each assignment round-trips through the real nbgrader and Otter-Grader.

nbgrader, every assignment: the exported course folder goes through ``nbgrader
generate_assignment`` (the student version must hold no line of an answer) and ``nbgrader
autograde``: the release notebook with our solutions filled in scores full marks, the release
notebook as handed out scores zero. Otter: ``otter assign`` writes the student and autograder
versions of every assignment (students get the starters, no answer); ``otter run`` gives the
autograder (solution) notebook full marks and the student notebook zero, for a1 (one whole
notebook run per command: the others would double the time).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from notebook_runner import LESSONS

from treemdp.cli import main
from treemdp.exercises.sources import read_source, version

BIN = Path(sys.executable).parent
ASSIGNMENTS = sorted(p.stem for p in (LESSONS / "_content").glob("a*_*.py"))
#: As after a fresh install, venv not activated: the tools are called by full path and the venv's
#: bin is not on PATH (nbgrader runs `alembic` by name; the exported nbgrader_config.py copes).
ENV = dict(os.environ, PATH=os.pathsep.join(p for p in os.environ.get("PATH", os.defpath).split(os.pathsep)
                                            if p and Path(p).resolve() != BIN.resolve()))


def tool(*args, cwd):
    started = time.perf_counter()
    done = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    print(f"{' '.join(map(str, args[:2]))} ({cwd.name}): {time.perf_counter() - started:.1f} s")
    return done


def export(fmt, out):
    assert main(["lessons", "export", "--format", fmt, str(out)]) == 0


@pytest.fixture(scope="module")
def nbgrader_course(tmp_path_factory):
    """Exported, released ("a*": every assignment in one command), then two submissions of each
    autograded in one command: the release notebook with our solutions typed in, and as released."""
    pytest.importorskip("nbgrader")
    root = tmp_path_factory.mktemp("nbgrader")
    export("nbgrader", root)
    tool("nbgrader", "generate_assignment", "a*", "--force", cwd=root)
    released = sorted(p.name for p in (root / "release").iterdir())
    assert released == ASSIGNMENTS, released  # every assignment, a1 included (the first gradebook write)
    for name in ASSIGNMENTS:
        solutions = _solutions(name)
        for student, filled in (("solved", True), ("starter", False)):
            nb = nbformat.read(str(root / "release" / name / f"{name}.ipynb"), as_version=4)
            for cell in nb.cells:
                meta = cell.metadata.get("nbgrader", {})
                if filled and meta.get("solution"):
                    cell.source = solutions[meta["grade_id"].replace("_", ".", 1)][0]
            target = root / "submitted" / student / name / f"{name}.ipynb"
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, str(target))
    tool("nbgrader", "autograde", "a*", "--create", "--force", cwd=root)
    return root


@pytest.fixture(scope="module")
def otter_dist(tmp_path_factory):
    pytest.importorskip("otter")
    root = tmp_path_factory.mktemp("otter")
    export("otter", root)
    for name in ASSIGNMENTS:
        tool("otter", "assign", f"{name}.ipynb", "dist", "--no-run-tests", cwd=root / name)
    return root


def _solutions(name):
    """Exercise id -> (our solution, the lines only the solution has), from the source."""
    found = {}
    for e in read_source(LESSONS / "_content" / f"{name}.py").exercises:
        solution, starter = version(e.source, "solution"), version(e.source, "starter")
        found[e.id] = (solution, [l for l in solution.splitlines() if l.strip() and l not in starter.splitlines()])
    return found


def test_nbgrader_student_version_holds_stubs_and_points(nbgrader_course):
    for name in ASSIGNMENTS:
        release = nbformat.read(str(nbgrader_course / "release" / name / f"{name}.ipynb"), as_version=4)
        graded = [c for c in release.cells if c.metadata.get("nbgrader", {}).get("grade")]
        answers = [c for c in release.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert len(graded) == len(answers) == len(_solutions(name)) >= 2
        assert all(c.metadata["nbgrader"]["points"] > 0 and "get_exercise" in c.source for c in graded)
        for cell in answers:
            assert "YOUR CODE HERE" in cell.source and "BEGIN SOLUTION" not in cell.source
        handed_out = {line for cell in answers for line in cell.source.splitlines()}
        for solution, secret in _solutions(name).values():  # no line of an answer reaches the students
            assert secret and not handed_out & set(secret), solution


@pytest.mark.parametrize("name", ASSIGNMENTS)
def test_nbgrader_autogrades_the_solution_to_full_marks_and_the_starter_to_zero(nbgrader_course, name):
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{nbgrader_course / 'gradebook.db'}") as gradebook:
        solved = gradebook.find_submission(name, "solved")
        starter = gradebook.find_submission(name, "starter")
        assert solved.max_score == len(_solutions(name)) and solved.score == solved.max_score, (solved.score, solved.max_score)
        assert starter.score == 0


def test_otter_student_versions_hold_the_starters(otter_dist):
    for name in ASSIGNMENTS:
        student = nbformat.read(str(otter_dist / name / "dist" / "student" / f"{name}.ipynb"), as_version=4)
        text = "\n".join(c.source for c in student.cells)
        assert "BEGIN SOLUTION" not in text and "BEGIN PROMPT" not in text and "YOUR CODE HERE" in text
        lines = set(text.splitlines())
        for solution, secret in _solutions(name).values():
            assert secret and not lines & set(secret), solution


#: Otter grades one notebook per command (and a whole notebook run each time): a1 keeps the suite
#: short; every assignment's student version is checked above and each is autograded by nbgrader.
OTTER_RUNS = [name for name in ASSIGNMENTS if name.startswith("a1_")]


@pytest.mark.parametrize("name", OTTER_RUNS)
def test_otter_grades_the_solution_to_full_marks_and_the_starter_to_zero(otter_dist, name):
    dist = otter_dist / name / "dist"
    (autograder_zip,) = (dist / "autograder").glob("*.zip")
    scores = {}
    for label, notebook in (("solution", dist / "autograder" / f"{name}.ipynb"),
                            ("starter", dist / "student" / f"{name}.ipynb")):
        out = otter_dist / name / f"results-{label}"
        out.mkdir()
        tool("otter", "run", "-a", autograder_zip, "-o", out, notebook, cwd=otter_dist / name)
        results = json.loads((out / "results.json").read_text())
        scores[label] = {t["name"]: (t["score"], t["max_score"]) for t in results["tests"] if "score" in t}
    questions = {e.split(".", 1)[1] for e in _solutions(name)}
    assert set(scores["solution"]) == questions
    assert all(scores["solution"][q][0] == scores["solution"][q][1] > 0 for q in questions), scores
    assert all(scores["starter"][q][0] == 0 for q in questions), scores


@pytest.mark.parametrize("args, message", [
    (["lessons", "export", "--format", "moodle", "out"], "invalid choice"),
    (["lessons", "export", "out"], "--format"),
    (["lessons", "export", "--format", "otter", "out", "--content", "nowhere"], "no lesson sources"),
    (["lessons", "export", "--format", "otter", "file.txt"], "is not a folder"),
    (["lessons", "export", "--format", "otter", "out", "--content", "."], "no assignment sources"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
