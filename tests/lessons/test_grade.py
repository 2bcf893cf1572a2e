"""`treemdp grade`: one notebook, a folder of submissions (table + CSV), bad input."""

import csv
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from notebook_runner import LESSONS

from treemdp.cli import main


def grade(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "treemdp", "grade", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def test_grade_a_starter_notebook_reports_not_attempted(tmp_path):
    notebook = tmp_path / "a2_enumeration.ipynb"
    shutil.copy(LESSONS / "assignments" / "a2_enumeration.ipynb", notebook)
    done = grade(notebook)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for exercise in ("a2.sequence_log_prob", "a2.enumerate_log_probs", "a2.ood_mass"):
        assert any(exercise in l and "not attempted" in l for l in lines), done.stdout
    assert "0 of 3 exercises correct" in done.stdout
    assert not (tmp_path / "grades.csv").exists()


def test_grade_a_folder_prints_a_table_and_writes_a_csv(tmp_path):
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    shutil.copy(LESSONS / "assignments" / "a1_losses.ipynb", submissions / "ann_a1.ipynb")
    shutil.copy(LESSONS / "solutions" / "a1_losses.ipynb", submissions / "bob_a1.ipynb")
    # carol: a correct notebook with one wrong function, renamed so only the metadata says a1
    wrong = nbformat.read(str(LESSONS / "solutions" / "a1_losses.ipynb"), as_version=4)
    for cell in wrong.cells:
        cell.source = cell.source.replace("return torch.relu(1 - x)", "return 1 - x")
    nbformat.write(wrong, str(submissions / "carol.ipynb"))
    (submissions / "dave_a1.ipynb").write_text("{ not a notebook")
    # erin: a syntax error in slic_g's cell, and a failing cell of her own at the end
    erin = nbformat.read(str(LESSONS / "solutions" / "a1_losses.ipynb"), as_version=4)
    for cell in erin.cells:
        cell.source = cell.source.replace("return torch.relu(1 - x)", "return torch.relu(1 - x")
    erin.cells.append(nbformat.v4.new_code_cell("print(undefined_name)"))
    nbformat.write(erin, str(submissions / "erin_a1.ipynb"))
    # what JupyterLab shows beside each cell after Restart and Run All: its execution count
    executed = nbformat.read(str(submissions / "erin_a1.ipynb"), as_version=4)
    NotebookClient(executed, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(submissions)}}).execute()
    shown = {}
    for cell in executed.cells:
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.outputs):
            shown[cell.outputs[-1]["ename"]] = cell.execution_count
    done = grade(submissions)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    rows = {line.split()[0]: line for line in table.splitlines() if line.split() and line.split()[0].endswith(".ipynb")}
    assert set(rows) == {"ann_a1.ipynb", "bob_a1.ipynb", "carol.ipynb", "dave_a1.ipynb", "erin_a1.ipynb"}
    assert rows["ann_a1.ipynb"].endswith("0/4") and rows["bob_a1.ipynb"].split()[-2:] == ["✓", "4/4"]
    assert rows["erin_a1.ipynb"].split()[-2:] == ["!3", "2/4"], rows["erin_a1.ipynb"]  # slic_g's check, "use it", hers
    assert rows["carol.ipynb"].endswith("2/4") and "✗" in rows["carol.ipynb"]  # slic_g and, through it, preference_loss
    assert rows["dave_a1.ipynb"].endswith("error")
    with open(submissions / "grades.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert set(records[0]) == {"notebook", "assignment", "exercise", "outcome", "message"}
    by_key = {(r["notebook"].rsplit("/", 1)[-1], r["exercise"]): r for r in records}
    assert by_key["carol.ipynb", "a1.slic_g"]["outcome"] == "incorrect"
    assert "hinge is missing" in by_key["carol.ipynb", "a1.slic_g"]["message"]
    assert "check_slic_g passes first" in by_key["carol.ipynb", "a1.preference_loss"]["message"]
    assert by_key["carol.ipynb", "a1.dpo_g"]["outcome"] == "correct"
    assert by_key["ann_a1.ipynb", "a1.dpo_g"]["outcome"] == "not attempted"
    assert all(by_key["bob_a1.ipynb", e]["outcome"] == "correct"
               for e in ("a1.dpo_g", "a1.ipo_g", "a1.slic_g", "a1.preference_loss"))
    assert by_key["dave_a1.ipynb", ""]["outcome"] == "error"
    # a syntax error is reported as such, at the cell number JupyterLab shows
    slic = by_key["erin_a1.ipynb", "a1.slic_g"]
    assert slic["outcome"] == "incorrect" and "syntax error" in slic["message"], slic
    assert f"cell [{shown['SyntaxError']}]" in slic["message"], (slic, shown)
    failing = by_key["erin_a1.ipynb", f"cell [{shown['NameError']}]"]
    assert failing["outcome"] == "error" and "undefined_name" in failing["message"], failing
    code_cells = [c for c in erin.cells if c.cell_type == "code"]
    assert shown["NameError"] == len(code_cells)  # the last code cell: [N] counts code cells only


@pytest.mark.parametrize("make, args, message", [
    (None, ["missing.ipynb"], "does not exist"),
    ("text", ["notes.txt"], "is not a notebook"),
    ("broken", ["a1_broken.ipynb"], "is not a readable notebook"),
    ("noname", ["homework.ipynb"], "cannot tell which assignment"),
    ("empty_dir", ["empty"], "no .ipynb files"),
    ("starter", ["a1_x.ipynb", "--assignment", "a7"], "unknown assignment 'a7'"),
    ("starter", ["a1_x.ipynb", "--timeout", "0"], "--timeout must be >= 1"),
    ("dir", ["subs", "--csv", "nowhere/grades.csv"], "does not exist"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys, make, args, message):
    if make == "text":
        (tmp_path / "notes.txt").write_text("hello")
    elif make == "broken":
        (tmp_path / "a1_broken.ipynb").write_text("{")
    elif make == "noname":
        nb = nbformat.v4.new_notebook()
        nbformat.write(nb, str(tmp_path / "homework.ipynb"))
    elif make == "empty_dir":
        (tmp_path / "empty").mkdir()
    elif make == "starter":
        shutil.copy(LESSONS / "assignments" / "a1_losses.ipynb", tmp_path / "a1_x.ipynb")
    elif make == "dir":
        (tmp_path / "subs").mkdir()
        shutil.copy(LESSONS / "assignments" / "a1_losses.ipynb", tmp_path / "subs" / "a1.ipynb")
    monkeypatch.chdir(tmp_path)
    code = main(["grade", *args])  # in-process: these fail before any kernel starts
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_grade_compares_with_the_library_not_with_what_the_notebook_assigned_to_it(tmp_path):
    """mallory's g's return zeros and she assigns them to treemdp.losses, before and after the
    notebook imports the checks: 0 of 4 (3 of 4 before the checks bound their references at
    import). trent does the same with right answers written another way: 4 of 4. sam left every
    stub but broke slic_g's cell: the untouched preference_loss stub is "not attempted"."""
    submissions = tmp_path / "subs"
    submissions.mkdir()
    patch = ("import treemdp.losses\n"
             "treemdp.losses.dpo_g, treemdp.losses.ipo_g, treemdp.losses.slic_g = dpo_g, ipo_g, slic_g")
    answers = {"mallory": ("0 * x", "0 * x", "0 * x"),
               "trent": ("torch.nn.functional.softplus(-x)", "(x - 1) * (x - 1)", "torch.clamp(1 - x, min=0)")}
    solutions = ("-torch.nn.functional.logsigmoid(x)", "(x - 1) ** 2", "torch.relu(1 - x)")
    for who, mine in answers.items():
        nb = nbformat.read(str(LESSONS / "solutions" / "a1_losses.ipynb"), as_version=4)
        for cell in nb.cells:
            for solution, answer in zip(solutions, mine):
                cell.source = cell.source.replace(f"return {solution}", f"return {answer}")
        first = "import torch\n" + "\n".join(f"def {g}(x):\n    return {a}" for g, a in
                                            zip(("dpo_g", "ipo_g", "slic_g"), mine)) + "\n" + patch
        nb.cells.insert(0, nbformat.v4.new_code_cell(first))  # patched before the checks' import, too
        nb.cells.append(nbformat.v4.new_code_cell(patch))
        nbformat.write(nb, str(submissions / f"{who}_a1.ipynb"))
    sam = nbformat.read(str(LESSONS / "assignments" / "a1_losses.ipynb"), as_version=4)
    (slic,) = [c for c in sam.cells if c.cell_type == "code" and c.source.startswith("def slic_g")]
    slic.source = slic.source.replace("def slic_g(x: torch.Tensor) -> torch.Tensor:", "def slic_g(x: torch.Tensor) ->")
    nbformat.write(sam, str(submissions / "sam_a1.ipynb"))
    done = grade(submissions)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.split() and line.split()[0].endswith(".ipynb")}
    assert rows["mallory_a1.ipynb"].endswith("0/4"), done.stdout
    assert rows["trent_a1.ipynb"].endswith("4/4"), done.stdout
    with open(submissions / "grades.csv", newline="") as f:
        by_key = {(r["notebook"].rsplit("/", 1)[-1], r["exercise"]): r for r in csv.DictReader(f)}
    assert by_key["sam_a1.ipynb", "a1.slic_g"]["outcome"] == "incorrect"  # its own cell: the syntax error
    stub = by_key["sam_a1.ipynb", "a1.preference_loss"]
    assert stub["outcome"] == "not attempted" and "NotImplementedError" in stub["message"], stub
