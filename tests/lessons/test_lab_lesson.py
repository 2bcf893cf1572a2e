"""Lesson 8's exercise (the exact best-of-n KL): the lesson's stub is "not attempted", a reference
answer is correct, and the usual mistakes are named."""

import math

import numpy as np
import torch
from notebook_runner import LESSONS

from treemdp.exercises import Outcome, check_bon_kl, hint
from treemdp.exercises.sources import read_source
from treemdp.lab import kl_bound


def reference_bon_kl(ref, reward, n):
    kl = 0.0
    for value in reward.unique():
        mass = float(ref[reward == value].sum())
        F = float(ref[reward <= value].sum())
        P = F ** n - (F - mass) ** n
        if P > 0:
            kl += P * np.log(P / mass)
    return kl


def test_the_lesson_stub_is_not_attempted():
    source = read_source(LESSONS / "_content" / "08_overoptimization_lab.py")
    (cell,) = [text for kind, text, _ in source.cells if kind == "code" and text.startswith("def bon_kl")]
    namespace = {}
    exec(cell, namespace)
    assert check_bon_kl(namespace["bon_kl"]).outcome is Outcome.NOT_ATTEMPTED


def test_bon_kl_check_three_ways():
    assert check_bon_kl(reference_bon_kl).outcome is Outcome.CORRECT
    bound = check_bon_kl(lambda ref, reward, n: float(kl_bound(n)))
    assert bound.outcome is Outcome.INCORRECT and "bound" in bound.message
    ties_ignored = check_bon_kl(
        lambda ref, reward, n: reference_bon_kl(ref, reward + torch.arange(len(reward)) * 1e-9, n))
    assert ties_ignored.outcome is Outcome.INCORRECT and "group" in ties_ignored.message
    wrong = check_bon_kl(lambda ref, reward, n: 2 * reference_bon_kl(ref, reward, n))
    assert wrong.outcome is Outcome.INCORRECT and "expected" in wrong.message
    assert check_bon_kl(lambda ref, reward, n: math.nan).outcome is Outcome.INCORRECT
    assert "F**n" in hint("l8.bon_kl", 2)
