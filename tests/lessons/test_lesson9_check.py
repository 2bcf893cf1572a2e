"""Lesson 9's auto-checked exercise (l9.ches_score) three ways: the notebook's stub is "not
attempted", answers written as students write them are "correct", typical mistakes are "incorrect"
with the message that names them."""

import nbformat
import pytest
import torch
from notebook_runner import LESSONS

from treemdp.exercises import Outcome, check_ches_score, hint


def stub_from_the_notebook():
    nb = nbformat.read(str(LESSONS / "09_chosen_logprobs_falling.ipynb"), as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and "YOUR CODE HERE" in c.source]
    namespace = {"torch": torch}
    exec(cell.source, namespace)
    return namespace["ches_score"]


def test_the_stub_is_not_attempted():
    result = check_ches_score(stub_from_the_notebook())
    assert result.outcome is Outcome.NOT_ATTEMPTED and "YOUR CODE HERE" in result.message
    assert check_ches_score(lambda a, b: None).outcome is Outcome.NOT_ATTEMPTED


def reference(h_chosen, h_rejected):
    plus, minus = h_chosen.sum(0), h_rejected.sum(0)
    return plus @ minus - plus @ plus


def with_loops(h_chosen, h_rejected):
    plus = sum(h_chosen[k] for k in range(len(h_chosen)))
    minus = sum(h_rejected[k] for k in range(len(h_rejected)))
    return float(torch.dot(plus, minus) - torch.dot(plus, plus))


def with_numpy(h_chosen, h_rejected):
    import numpy as np
    plus, minus = h_chosen.numpy().sum(axis=0), h_rejected.numpy().sum(axis=0)
    return np.dot(plus, minus) - np.linalg.norm(plus) ** 2


def rearranged(h_chosen, h_rejected):
    plus = h_chosen.sum(dim=0)
    return -(plus * (plus - h_rejected.sum(dim=0))).sum(dim=-1, keepdim=True)  # -<plus, plus - minus>, shape [1]


@pytest.mark.parametrize("answer", [reference, with_loops, with_numpy, rearranged])
def test_right_answers_are_correct(answer):
    result = check_ches_score(answer)
    assert result.outcome is Outcome.CORRECT, result


@pytest.mark.parametrize("answer, says", [
    (lambda hp, hm: reference(hm, hp), "swapped"),
    (lambda hp, hm: hp.sum(0) @ hm.sum(0), "centring term is missing"),
    (lambda hp, hm: hp.mean(0) @ hm.mean(0) - hp.mean(0) @ hp.mean(0), "length-normalised"),
    (lambda hp, hm: -reference(hp, hm), "sign is flipped"),
    (lambda hp, hm: hp.sum(0) * hm.sum(0) - hp.sum(0) * hp.sum(0), "one number"),
    (lambda hp, hm: (hp * hp).sum() + 1.0, "expected"),
    (lambda hp, hm: hp.sum(0) @ hm.sum(0) - torch.linalg.norm(hp.sum(0)), "expected"),  # the norm not squared
    (lambda hp, hm: hp.sum(0) @ hm.sum(0) - hm.sum(0) @ hm.sum(0), "swapped"),  # centred on the rejected answer
    (lambda hp, hm: hp[0] @ hm[0] - undefined_name, "raised NameError"),  # noqa: F821
])
def test_wrong_answers_say_why(answer, says):
    result = check_ches_score(answer)
    assert result.outcome is Outcome.INCORRECT and says in result.message, result


def test_hints_get_closer():
    assert "sum" in hint("l9.ches_score") and "plus @ minus" in hint("l9.ches_score", 3)
