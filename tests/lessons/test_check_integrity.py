"""Checks that hold against a student's kernel: a notebook runs in the same process as its checks,
so each false accept found by trying it as a student would is a test here, with a right answer
written another way beside it that must still pass.

- reassigning the library's function (``treemdp.losses.dpo_g = dpo_g``) must not make a check
  compare the student's function with itself;
- a library answer changed in place (its code, a registry entry, a patched method) is refused with
  a message saying so, and so is one replaced before the checks were imported;
- every check notices an input changed in place (a2's ``policy.logits``, ``logp.exp_()``,
  ``mask.logical_not_()``; lesson 8's and 9's tensors; a3's frames);
- lessons 8 and 9 refuse the library function they teach.
"""

import torch
import torch.nn.functional as F

import treemdp.exact
import treemdp.lab
import treemdp.losses
import treemdp.phenomena.displacement as displacement
from treemdp import exercises as ex
from treemdp.exercises import Outcome
from treemdp.exercises.export import _test_code


def zeros(x):
    return 0 * x  # differentiable, and wrong everywhere


CORRECT_G = {  # right answers written another way than the solution
    "dpo": lambda x: F.softplus(-x),
    "ipo": lambda x: (x - 1) * (x - 1),
    "slic": lambda x: torch.clamp(1 - x, min=0),
}


def test_reassigning_the_library_g_does_not_fool_its_check(monkeypatch):
    for name in ("dpo", "ipo", "slic"):
        monkeypatch.setattr(treemdp.losses, f"{name}_g", zeros)
        result = ex.get_exercise(f"a1.{name}_g").check(zeros)
        assert result.outcome is Outcome.INCORRECT, result


def test_a_right_answer_still_passes_while_the_library_name_is_reassigned(monkeypatch):
    for name, g in CORRECT_G.items():
        monkeypatch.setattr(treemdp.losses, f"{name}_g", g)
        result = ex.get_exercise(f"a1.{name}_g").check(g)
        assert result.outcome is Outcome.CORRECT, result


def student_preference_loss(G):
    def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
        return G[loss](beta * ((pw - pl) - (rw - rl)))  # h regrouped: a right answer written another way
    return preference_loss


def test_preference_loss_with_zero_gs_and_a_patched_library_is_refused(monkeypatch):
    fake = {"dpo": zeros, "ipo": zeros, "slic": zeros}
    for name, g in fake.items():
        monkeypatch.setattr(treemdp.losses, f"{name}_g", g)
        monkeypatch.setitem(treemdp.losses.LOSSES, name, g)
    assert ex.check_preference_loss(student_preference_loss(fake)).outcome is Outcome.INCORRECT
    assert ex.check_preference_loss(student_preference_loss(CORRECT_G)).outcome is Outcome.CORRECT


def test_a_changed_objective_registry_is_refused_not_trusted(monkeypatch):
    monkeypatch.setitem(treemdp.losses.OBJECTIVES, "dpo", treemdp.losses.objective_from_g(zeros, "dpo"))
    result = ex.check_preference_loss(student_preference_loss({"dpo": zeros, **CORRECT_G}))
    assert result.outcome is Outcome.INCORRECT and "changed in this kernel" in result.message, result
    monkeypatch.undo()  # control: the registry restored, a right answer passes
    assert ex.check_preference_loss(student_preference_loss(CORRECT_G)).outcome is Outcome.CORRECT


def test_a_library_function_whose_code_was_swapped_is_refused(monkeypatch):
    monkeypatch.setattr(treemdp.losses.dpo_g, "__code__", zeros.__code__)
    result = ex.check_dpo_g(zeros)
    assert result.outcome is Outcome.INCORRECT and "changed in this kernel" in result.message, result
    monkeypatch.undo()
    assert ex.check_dpo_g(CORRECT_G["dpo"]).outcome is Outcome.CORRECT


def test_a_reference_replaced_before_the_checks_were_imported_is_refused(monkeypatch):
    from treemdp.exercises.core import Incorrect, Reference
    monkeypatch.setattr(treemdp.losses, "dpo_g", zeros)
    bound = Reference("treemdp.losses", "dpo_g", lambda g: g(torch.ones(2)))
    try:
        bound.get()
    except Incorrect as e:
        assert "replaced before the checks were imported" in str(e)
    else:
        raise AssertionError("a notebook-defined function was trusted as the library's")
    monkeypatch.undo()
    assert Reference("treemdp.losses", "dpo_g", lambda g: g(torch.ones(2))).get() is treemdp.losses.dpo_g


def test_a_patched_best_of_n_is_refused(monkeypatch):
    monkeypatch.setattr(treemdp.lab.BestOfN, "kl", lambda self, n: 0.0)
    result = ex.check_bon_kl(lambda ref, reward, n: 0.0)
    assert result.outcome is Outcome.INCORRECT and "changed in this kernel" in result.message, result


def test_the_exported_autograder_assertion_is_not_fooled_either(monkeypatch):
    """nbgrader's and Otter's test cells run ``_test_code`` in the student's kernel."""
    monkeypatch.setattr(treemdp.losses, "dpo_g", zeros)
    namespace = {"dpo_g": zeros}
    try:
        exec(_test_code("a1.dpo_g", "dpo_g"), namespace)
    except AssertionError as e:
        assert "incorrect" in str(e)
    else:
        raise AssertionError("the exported test accepted zeros")
    exec(_test_code("a1.dpo_g", "dpo_g"), {"dpo_g": CORRECT_G["dpo"]})  # the control passes


# ---- inputs changed in place ------------------------------------------------------------------

def enumerate_then_scale(policy):
    logp = treemdp_free_enumeration(policy)
    policy.logits.data.mul_(2)  # changes the caller's policy after computing the answer
    return logp


def treemdp_free_enumeration(policy):
    mdp = policy.mdp
    states, logp = torch.zeros(1, dtype=torch.long), torch.zeros(1)
    for _ in range(mdp.depth):
        logp = (logp[:, None] + torch.log_softmax(policy.logits[states], -1)).reshape(-1)
        states = torch.as_tensor(mdp.next_state)[states].reshape(-1)
    return logp


def sequence_then_scale(policy, actions):
    total = sum(policy.action_log_probs(torch.tensor(actions[:t], dtype=torch.long).reshape(1, t))[0, actions[t]]
                for t in range(len(actions)))
    with torch.no_grad():
        policy.logits *= 1.5
    return total


def ood_exp_(logp, in_distribution):
    return logp.exp_()[~in_distribution].sum()


def ood_logical_not_(logp, in_distribution):
    return logp.exp()[in_distribution.logical_not_()].sum()


def ood_exp_on_a_copy(logp, in_distribution):  # in place, but on its own copy: right
    p = logp.clone()
    p.exp_()
    keep = in_distribution.clone()
    keep.logical_not_()
    return p[keep].sum()


def test_a2_answers_that_change_their_inputs_in_place_are_refused():
    for check, answer, name in ((ex.check_enumerate_log_probs, enumerate_then_scale, "policy.logits"),
                                (ex.check_sequence_log_prob, sequence_then_scale, "policy.logits"),
                                (ex.check_ood_mass, ood_exp_, "logp"),
                                (ex.check_ood_mass, ood_logical_not_, "in_distribution")):
        result = check(answer)
        assert result.outcome is Outcome.INCORRECT, (answer.__name__, result)
        assert f"input {name} in place" in result.message, result


def test_a2_answers_that_work_in_place_on_their_own_copies_pass():
    assert ex.check_ood_mass(ood_exp_on_a_copy).outcome is Outcome.CORRECT
    assert ex.check_enumerate_log_probs(treemdp_free_enumeration).outcome is Outcome.CORRECT


def bon_kl_loop(ref, reward, n):  # the hint's loop: right
    kl = 0.0
    for v in reward.unique():
        mass = ref[reward == v].sum()
        F_ = ref[reward <= v].sum()
        P = F_ ** n - (F_ - mass) ** n
        if P > 0:
            kl += float(P * torch.log(P / mass))
    return kl


def test_lesson8_refuses_best_of_n_itself_and_in_place_changes():
    result = ex.check_bon_kl(lambda ref, reward, n: treemdp.lab.BestOfN(ref, reward).kl(n))
    assert result.outcome is Outcome.INCORRECT, result
    assert "library's own answer" in result.message and "BestOfN" in result.message, result

    def centring_in_place(ref, reward, n):
        reward.sub_(reward.mean())  # the KL does not change with a shift, but the caller's rewards do
        return bon_kl_loop(ref, reward, n)
    result = ex.check_bon_kl(centring_in_place)
    assert result.outcome is Outcome.INCORRECT and "input reward in place" in result.message, result
    assert ex.check_bon_kl(bon_kl_loop).outcome is Outcome.CORRECT  # control


def test_lesson9_refuses_ches_from_hidden_itself_and_in_place_changes():
    result = ex.check_ches_score(lambda hp, hm: displacement.ches_from_hidden(hp, hm))
    assert result.outcome is Outcome.INCORRECT, result
    assert "library's own answer" in result.message and "ches_from_hidden" in result.message, result

    def summing_into_the_input(hp, hm):
        plus = hp.sum(0)
        hp[0] = 0  # overwrites the caller's hidden states
        return plus @ hm.sum(0) - plus @ plus
    result = ex.check_ches_score(summing_into_the_input)
    assert result.outcome is Outcome.INCORRECT and "input h_chosen in place" in result.message, result
    control = ex.check_ches_score(lambda hp, hm: torch.einsum("i,i->", hp.sum(0), hm.sum(0) - hp.sum(0)))
    assert control.outcome is Outcome.CORRECT, control


def test_a3_sanity_check_that_edits_the_runs_frame_is_refused():
    def adding_a_column(result):
        frame = result.metrics
        frame["margin"] = frame.chosen_prob / frame.rejected_prob  # a new column in the run's own frame
        return margin_and_loss(frame[frame.phase == "daa"])

    def on_a_copy(result):
        frame = result.metrics.copy()
        frame["margin"] = frame.chosen_prob / frame.rejected_prob
        return margin_and_loss(frame[frame.phase == "daa"])
    result = ex.check_sanity_check(adding_a_column)
    assert result.outcome is Outcome.INCORRECT and "input result.metrics in place" in result.message, result
    assert ex.check_sanity_check(on_a_copy).outcome is Outcome.CORRECT


def margin_and_loss(daa):
    import math
    first, last = daa.iloc[0], daa.iloc[-1]
    problems = []
    if math.log(last.chosen_prob / last.rejected_prob) <= math.log(first.chosen_prob / first.rejected_prob):
        problems.append("the margin did not grow")
    if last.loss >= first.loss:
        problems.append("the loss did not fall")
    return problems
