"""The py:percent sources: one cell per exercise gives the starter and the solution."""

import pytest
from notebook_runner import LESSONS

from treemdp.exercises import EXERCISES
from treemdp.exercises.sources import SourceError, read_source, sources, version

CELL = '''def f(x):
    """Doc."""
    y = 1
    ### BEGIN SOLUTION
    return x + y
    ### END SOLUTION'''


def test_starter_replaces_the_solution_with_the_stub_at_its_indentation():
    assert version(CELL, "starter") == ('def f(x):\n    """Doc."""\n    y = 1\n'
                                        '    # YOUR CODE HERE\n    raise NotImplementedError')
    assert version(CELL, "solution") == 'def f(x):\n    """Doc."""\n    y = 1\n    return x + y'


def test_a_starter_block_is_uncommented_in_the_starter_and_dropped_from_the_solution():
    cell = 'd = {\n    ### BEGIN STARTER\n    # "A": "?",\n    ### END STARTER\n    ### BEGIN SOLUTION\n    "A": 1,\n    ### END SOLUTION\n}'
    assert version(cell, "starter") == 'd = {\n    "A": "?",\n}'
    assert version(cell, "solution") == 'd = {\n    "A": 1,\n}'


@pytest.mark.parametrize("broken", [CELL.replace("    ### END SOLUTION", ""),
                                    CELL + "\n    ### BEGIN SOLUTION",
                                    "x = 1\n### END SOLUTION\n### BEGIN SOLUTION"])
def test_broken_markers_are_a_source_error(broken):
    with pytest.raises(SourceError):
        version(broken, "starter")


def test_every_source_parses_and_every_exercise_is_registered(tmp_path):
    found = sources(LESSONS / "_content")
    assert {s.name for s in found if s.assignment} >= {"a1_losses", "a2_enumeration", "a3_bug_hunt"}
    ids = [e.id for s in found for e in s.exercises]
    assignment_ids = [i for i in EXERCISES if EXERCISES[i].assignment.startswith("a")]
    assert sorted(ids) == sorted(assignment_ids), "every exercise cell has a registered check, and back"
    # a lesson's auto-checked exercise (l9.ches_score) is a plain stub cell and a cell calling its check
    for exercise_id in sorted(set(EXERCISES) - set(assignment_ids)):
        number = EXERCISES[exercise_id].assignment[1:]  # "l9" -> lesson 09
        (lesson,) = [s for s in found if s.assignment is None and int(s.name[:2]) == int(number)]
        code = "\n".join(text for kind, text, _ in lesson.cells if kind == "code")
        check = EXERCISES[exercise_id].check.__name__
        assert f"def {EXERCISES[exercise_id].target}(" in code and f"{check}({EXERCISES[exercise_id].target})" in code, exercise_id
    for s in found:
        for e in s.exercises:
            assert "### BEGIN SOLUTION" not in version(e.source, "solution")
            assert version(e.source, "starter") != version(e.source, "solution")
    for s in found:  # a py:percent source is a Python script too (text cells are comments)
        compile(s.path.read_text(encoding="utf-8"), str(s.path), "exec")
    bad = tmp_path / "lesson.py"
    bad.write_text("# %%\nx = 1\n")
    with pytest.raises(SourceError, match="NN_name.py"):
        read_source(bad)
