"""Each checker three ways: the notebook's starter is "not attempted", the reference is "correct",
and typical wrong answers are "incorrect" with the message that names the mistake."""

import math

import nbformat
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from notebook_runner import LESSONS

from treemdp import TabularPolicy, TreeMDP, losses, trajectory_log_probs
from treemdp import exercises as ex
from treemdp.errors import UserError
from treemdp.exact import ood_mass
from treemdp.exercises import Outcome
from treemdp.training import train

NOTEBOOKS = {"a1": "a1_losses.ipynb", "a2": "a2_enumeration.ipynb", "a3": "a3_bug_hunt.ipynb"}


def exercise_namespace(assignment: str, version: str) -> dict:
    """Run the exercise cells (and only those) of a notebook, in order, in one namespace."""
    starter = nbformat.read(str(LESSONS / "assignments" / NOTEBOOKS[assignment]), as_version=4)
    chosen = starter if version == "starter" else nbformat.read(
        str(LESSONS / "solutions" / NOTEBOOKS[assignment]), as_version=4)
    namespace = {"torch": torch, "math": math, "pd": pd}
    for i, cell in enumerate(starter.cells):
        if cell.cell_type == "code" and "YOUR CODE HERE" in cell.source:
            exec(chosen.cells[i].source, namespace)
    return namespace


@pytest.mark.parametrize("assignment", sorted(NOTEBOOKS))
def test_starters_are_not_attempted(assignment):
    namespace = exercise_namespace(assignment, "starter")
    results = ex.check_namespace(assignment, namespace)
    assert len(results) >= 2
    for result in results:
        assert result.outcome is Outcome.NOT_ATTEMPTED, result
        assert "YOUR CODE HERE" in result.message or "fill in" in result.message


@pytest.mark.parametrize("assignment", sorted(NOTEBOOKS))
def test_solutions_are_correct(assignment):
    for result in ex.check_namespace(assignment, exercise_namespace(assignment, "solution")):
        assert result.outcome is Outcome.CORRECT, result
        assert result  # a correct Result is truthy


def test_the_library_itself_is_correct():
    assert ex.check_dpo_g(losses.dpo_g)
    assert ex.check_ipo_g(losses.ipo_g)
    assert ex.check_slic_g(losses.slic_g)
    assert ex.check_preference_loss(losses.preference_loss)
    assert ex.check_sequence_log_prob(lambda policy, actions: trajectory_log_probs(policy)[
        policy.mdp.trajectory_index([actions])[0]])
    assert ex.check_enumerate_log_probs(trajectory_log_probs)
    assert ex.check_ood_mass(ood_mass)


def _swapped(a, b, c, d, beta, loss="dpo"):
    return losses.preference_loss(b, a, d, c, beta=beta, loss=loss)


def _raw_path_logits(policy):
    mdp = policy.mdp
    trajectories = mdp.trajectories()
    states = torch.zeros(len(trajectories), dtype=torch.long)
    total = torch.zeros(len(trajectories))
    for t in range(mdp.depth):
        total = total + policy.logits[states, trajectories[:, t]]
        states = torch.as_tensor(mdp.next_state)[states, trajectories[:, t]]
    return total


WRONG = [
    (ex.check_dpo_g, lambda x: F.logsigmoid(x), "sign is flipped"),
    (ex.check_dpo_g, lambda x: torch.log(1 + torch.exp(-x)), "stay in log space"),
    (ex.check_dpo_g, lambda x: torch.tensor((-F.logsigmoid(x)).detach().numpy()), "not differentiable"),
    (ex.check_dpo_g, lambda x: -F.logsigmoid(x).mean(), "do not take the mean"),
    (ex.check_dpo_g, lambda x: undefined_name * x, "raised NameError"),  # noqa: F821
    (ex.check_ipo_g, lambda x: (x - 0.5) ** 2, "IPO paper's target"),
    (ex.check_ipo_g, lambda x: x ** 2, "target is missing"),
    (ex.check_slic_g, lambda x: 1 - x, "hinge is missing"),
    (ex.check_slic_g, lambda x: torch.relu(-x), "margin is missing"),
    (ex.check_preference_loss, _swapped, "swap chosen and rejected"),
    (ex.check_preference_loss, lambda a, b, c, d, beta, loss: losses.preference_loss(a, b, c, d, beta=beta, loss=loss).mean(),
     "do not take the mean"),
    (ex.check_preference_loss, lambda a, b, c, d, beta, loss: losses.preference_loss(a, b, c, d, beta=1.0, loss=loss),
     "beta is not applied"),
    (ex.check_preference_loss, lambda a, b, c, d, beta, loss: losses.LOSSES[loss](beta * (a - b)), "reference is ignored"),
    (ex.check_preference_loss, lambda a, b, c, d, beta, loss: losses.preference_loss(a, b, c, d, beta=beta, loss="dpo"),
     "uses the g of 'dpo'"),
    (ex.check_sequence_log_prob, lambda p, a: trajectory_log_probs(p)[p.mdp.trajectory_index([a])[0]].exp(), "return its log"),
    (ex.check_sequence_log_prob, lambda p, a: p.action_log_probs(torch.zeros(1, 0, dtype=torch.long))[0, a[0]],
     "only the first step"),
    (ex.check_enumerate_log_probs, lambda p: trajectory_log_probs(p).exp(), "you return probabilities"),
    (ex.check_enumerate_log_probs, lambda p: trajectory_log_probs(p).flip(0), "wrong order"),
    (ex.check_enumerate_log_probs, _raw_path_logits, "not normalised"),
    (ex.check_enumerate_log_probs, lambda p: trajectory_log_probs(p)[:-1], "returned shape"),
    (ex.check_ood_mass, lambda l, m: 1 - ood_mass(l, m), "in-distribution mass"),
    (ex.check_ood_mass, lambda l, m: l[~m].sum(), "add log-probabilities"),
    (ex.check_diagnosis, {v: "no bug" for v in ex.VARIANTS}, "look again at variant(s)"),
    (ex.check_diagnosis, {"A": "typo", "B": "no bug", "C": "no bug", "D": "no bug"}, "is not one of the choices"),
    (ex.check_diagnosis, {"A": "no bug"}, "no entry for variant(s)"),
    (ex.check_diagnosis, ["no bug"] * 4, "should be a dict"),
    (ex.check_sanity_check, lambda result: [], "lets variant"),
    (ex.check_sanity_check, lambda result: ["looks odd"], "false alarm"),
    (ex.check_sanity_check, lambda result: "fine", "should return a list"),
]


@pytest.mark.parametrize("check, answer, reason", WRONG, ids=lambda v: v if isinstance(v, str) else "")
def test_wrong_answers_are_incorrect_with_the_reason(check, answer, reason):
    result = check(answer)
    assert result.outcome is Outcome.INCORRECT, result
    assert reason in result.message, result.message
    assert not result


def test_missing_definition_is_not_attempted():
    for exercise in ex.EXERCISES.values():
        assert exercise.check(None).outcome is Outcome.NOT_ATTEMPTED


def test_results_show_in_one_line():
    result = ex.check_ipo_g(lambda x: x ** 2)
    assert str(result).startswith("a1.ipo_g: incorrect: ")
    assert "\n" not in repr(result)
    assert result._repr_markdown_().startswith("❌")


def test_hints_are_graded_and_bounded():
    first, second = ex.hint("a1.dpo_g"), ex.hint("a1.dpo_g", 2)
    assert first != second and first.endswith("(hint 1 of 3)")
    assert ex.hint("a1.dpo_g", 99).endswith("(hint 3 of 3)")
    for exercise in ex.EXERCISES.values():
        assert len(exercise.hints) >= 2
    with pytest.raises(UserError, match="unknown exercise"):
        ex.hint("a9.nothing")
    with pytest.raises(UserError, match="hint level"):
        ex.hint("a1.dpo_g", 0)


def test_bug_free_mystery_trainer_reproduces_train():
    clean = next(v for v in ex.VARIANTS if ex.bugs._VARIANT_BUG[v] == "no bug")
    settings = dict(sft_steps=60, daa_steps=40, log_every=5)
    mine, library = ex.mystery_train(clean, **settings), train(progress=False, **settings)
    pd.testing.assert_frame_equal(mine.history, library.history)
    for key in ("final_ood_mass", "peak_ood_mass", "final_chosen_prob", "kl_to_reference"):
        assert mine.summary[key] == pytest.approx(library.summary[key], rel=1e-6, abs=1e-9)
    assert mine.summary["peak_ood_step"] == library.summary["peak_ood_step"]


def test_each_bug_changes_the_run():
    settings = dict(sft_steps=60, daa_steps=40)
    finals = {v: ex.mystery_train(v, **settings).history.query("phase == 'daa'")["prob"].to_numpy() for v in ex.VARIANTS}
    for a in ex.VARIANTS:
        for b in ex.VARIANTS:
            if a < b:
                assert not (abs(finals[a] - finals[b]) < 1e-6).all(), (a, b)


def test_unknown_variant_is_a_user_error():
    with pytest.raises(UserError, match="unknown variant"):
        ex.mystery_train("E")


def test_enumeration_checks_cover_several_tree_shapes():
    shapes = {(p.mdp.branching, p.mdp.depth) for p in ex.enumeration._policies(0)}
    assert len(shapes) >= 3 and all(isinstance(p, TabularPolicy) for p in ex.enumeration._policies(0))
    assert TreeMDP(3, 3) in [p.mdp for p in ex.enumeration._policies(0)]
