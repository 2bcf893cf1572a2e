"""Lesson 8 (the over-optimization lab): its notebook matches its py:percent source, and its
exercise check reports the three outcomes (starter, reference, typical mistakes)."""

import math
import subprocess
import sys

import torch
from notebook_runner import LESSONS

from treemdp.exercises import Outcome, check_bon_kl, hint
from treemdp.lab import kl_bound

SOURCE = LESSONS / "08_overoptimization_lab.py"


def _percent():
    sys.path.insert(0, str(LESSONS))
    try:
        import _percent
    finally:
        sys.path.pop(0)
    return _percent


def _exercise(version: str):
    """The lesson's bon_kl, starter or solution, defined in a fresh namespace."""
    percent = _percent()
    (text,) = [text for kind, text, meta in percent.read_cells(SOURCE) if meta.get("exercise") == "l8.bon_kl"]
    namespace = {"np": __import__("numpy"), "torch": torch}
    exec(percent.starter(text) if version == "starter" else percent.solution(text), namespace)
    return namespace["bon_kl"]


def test_notebook_is_built_from_its_source():
    done = subprocess.run([sys.executable, str(LESSONS / "_percent.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_bon_kl_check_three_ways():
    assert check_bon_kl(_exercise("starter")).outcome is Outcome.NOT_ATTEMPTED
    assert check_bon_kl(_exercise("solution")).outcome is Outcome.CORRECT
    bound = check_bon_kl(lambda ref, reward, n: float(kl_bound(n)))
    assert bound.outcome is Outcome.INCORRECT and "bound" in bound.message
    solution = _exercise("solution")
    ties_ignored = check_bon_kl(lambda ref, reward, n: solution(ref, reward + torch.arange(len(reward)) * 1e-9, n))
    assert ties_ignored.outcome is Outcome.INCORRECT and "group" in ties_ignored.message
    wrong = check_bon_kl(lambda ref, reward, n: 2 * solution(ref, reward, n))
    assert wrong.outcome is Outcome.INCORRECT and "expected" in wrong.message
    assert check_bon_kl(lambda ref, reward, n: math.nan).outcome is Outcome.INCORRECT
    assert "F**n" in hint("l8.bon_kl", 2)
