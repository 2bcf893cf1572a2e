"""Each checker against a table of answers written the way students write them, right and wrong.

Every right answer must pass (equivalent forms, subgradients at the hinge's kink, numpy where the
stub allows it, other float dtypes); every wrong one must be refused with a reason that is true
(the table names a fragment of it) or with a neutral one, never a wrong diagnosis. A check never
raises. The notebook's own starter is "not attempted" and its solution "correct".
"""

import math
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from notebook_runner import LESSONS

from treemdp import TabularPolicy, TreeMDP
from treemdp import exercises as ex
from treemdp.errors import UserError
from treemdp.exercises import Outcome
from treemdp.exercises.sources import read_source, version
from treemdp.training import train

SOURCES = {"a1": "a1_losses.py", "a2": "a2_enumeration.py", "a3": "a3_bug_hunt.py"}
#: Wrong-diagnosis messages that must never be given to an answer they do not describe.
SWAP = "did you swap chosen and rejected"


def exercise_namespace(assignment: str, which: str) -> dict:
    """Run the exercise cells (and only those) of an assignment's source, in order, in one namespace."""
    namespace = {"torch": torch, "math": math, "pd": pd}
    for exercise in read_source(LESSONS / "_content" / SOURCES[assignment]).exercises:
        exec(version(exercise.source, which), namespace)
    return namespace


def student(code: str, name: str):
    """The function a student's cell defines (the cell's text, as typed)."""
    namespace = {"torch": torch, "F": F, "np": np, "math": math}
    exec(textwrap.dedent(code), namespace)
    return namespace[name]


@pytest.mark.parametrize("assignment", sorted(SOURCES))
def test_starters_are_not_attempted(assignment):
    results = ex.check_namespace(assignment, exercise_namespace(assignment, "starter"))
    assert len(results) >= 2
    for result in results:
        assert result.outcome is Outcome.NOT_ATTEMPTED, result
        assert "YOUR CODE HERE" in result.message or "fill in" in result.message


@pytest.mark.parametrize("assignment", sorted(SOURCES))
def test_solutions_are_correct(assignment):
    for result in ex.check_namespace(assignment, exercise_namespace(assignment, "solution")):
        assert result.outcome is Outcome.CORRECT, result
        assert result  # a correct Result is truthy


# ---- a1: (exercise, the student's cell, None if right else a fragment of the reason) ---------
G = '''
G = {"dpo": lambda x: -F.logsigmoid(x), "ipo": lambda x: (x - 1) ** 2, "slic": lambda x: torch.relu(1 - x)}
'''
A1 = [
    # dpo_g, right
    ("dpo_g", "def dpo_g(x):\n    return -F.logsigmoid(x)", None),
    ("dpo_g", "def dpo_g(x):\n    return F.softplus(-x)", None),
    ("dpo_g", "def dpo_g(x):\n    return -torch.nn.functional.logsigmoid(x.double())", None),  # float64 out
    ("dpo_g", "def dpo_g(x):\n    return torch.logaddexp(torch.zeros_like(x), -x)", None),
    # dpo_g, wrong
    ("dpo_g", "def dpo_g(x):\n    return F.logsigmoid(x)", "sign is flipped"),
    ("dpo_g", "def dpo_g(x):\n    return torch.log(torch.sigmoid(x))", "sign is flipped"),
    ("dpo_g", "def dpo_g(x):\n    return torch.log(1 + torch.exp(-x))", "stay in log space"),
    ("dpo_g", "def dpo_g(x):\n    return -F.logsigmoid(-x)", "evaluate at -x"),
    ("dpo_g", "def dpo_g(x):\n    return 1 - torch.sigmoid(x)", "take the log"),
    ("dpo_g", "def dpo_g(x):\n    return torch.tensor(-F.logsigmoid(x).detach().numpy())", "not differentiable"),
    ("dpo_g", "def dpo_g(x):\n    return np.log1p(np.exp(-x.numpy()))", "stay in log space"),
    ("dpo_g", "def dpo_g(x):\n    return -F.logsigmoid(x).mean()", "do not take the mean"),
    ("dpo_g", "def dpo_g(x):\n    return -logsigmoid(x)", "raised NameError"),
    ("dpo_g", "def dpo_g(x):\n    import treemdp\n    return treemdp.losses.dpo_g(x)", "library's own answer"),
    ("dpo_g", "from treemdp.losses import LOSSES\ndef dpo_g(x):\n    return LOSSES['dpo'](x)", "library's own answer"),
    # ipo_g, right
    ("ipo_g", "def ipo_g(x):\n    return (x - 1) ** 2", None),
    ("ipo_g", "def ipo_g(x):\n    return x**2 - 2*x + 1", None),
    ("ipo_g", "def ipo_g(x):\n    return torch.square(1 - x)", None),
    ("ipo_g", "def ipo_g(x):\n    d = x - 1\n    d.mul_(d.clone())\n    return d", None),  # in place, not on x
    # ipo_g, wrong
    ("ipo_g", "def ipo_g(x):\n    return (x - 0.5) ** 2", "IPO paper's target"),
    ("ipo_g", "def ipo_g(x):\n    return x ** 2", "target is missing"),
    ("ipo_g", "def ipo_g(x):\n    return (x + 1) ** 2", "sign of the target"),
    ("ipo_g", "def ipo_g(x):\n    return torch.abs(x - 1)", "square the difference"),
    ("ipo_g", "def ipo_g(x):\n    x -= 1\n    return x ** 2", "in place"),
    ("ipo_g", "def ipo_g(x):\n    return float(((x - 1) ** 2).sum())", "returned shape"),
    ("ipo_g", "def ipo_g(x):\n    return [(v - 1) ** 2 for v in x.tolist()]", "not differentiable"),
    # slic_g, right: every hinge, whatever its (sub)gradient at the kink x = 1
    ("slic_g", "def slic_g(x):\n    return torch.relu(1 - x)", None),
    ("slic_g", "def slic_g(x):\n    return torch.clamp(1 - x, min=0)", None),
    ("slic_g", "def slic_g(x):\n    return torch.maximum(torch.zeros_like(x), 1 - x)", None),
    ("slic_g", "def slic_g(x):\n    return torch.max(1 - x, torch.tensor(0.0))", None),
    ("slic_g", "def slic_g(x):\n    return torch.where(x < 1, 1 - x, torch.zeros_like(x))", None),
    ("slic_g", "def slic_g(x):\n    return (1 - x).clamp_min(0.0)", None),
    ("slic_g", "def slic_g(x):\n    y = 1 - x\n    y.clamp_(min=0)\n    return y", None),
    ("slic_g", "def slic_g(x):\n    return F.relu(1.0 - x.double())", None),
    # slic_g, wrong
    ("slic_g", "def slic_g(x):\n    return 1 - x", "hinge is missing"),
    ("slic_g", "def slic_g(x):\n    return torch.relu(-x)", "margin is missing"),
    ("slic_g", "def slic_g(x):\n    return torch.relu(x - 1)", "sign is flipped"),
    ("slic_g", "def slic_g(x):\n    return torch.minimum(torch.zeros_like(x), 1 - x)", "max, not min"),
    ("slic_g", "def slic_g(x):\n    return torch.clamp(1 - x, min=0).detach()", "not differentiable"),
    ("slic_g", "def slic_g(x):\n    return x.clamp_(max=1).neg_().add_(1)", "in place"),
    ("slic_g", "def slic_g(x):\n    return torch.where(x < 1, 1 - x, 0 * x) * (x != 0.5)", "returns 0"),
    # preference_loss, right
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    h = (pw - rw) - (pl - rl)
    return G[loss](beta * h)''', None),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss](beta * ((pw - pl) - (rw - rl)))''', None),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    chosen_ratio = pw - rw.detach()
    rejected_ratio = pl - rl.detach()
    return G[loss](beta * (chosen_ratio - rejected_ratio))''', None),
    ("preference_loss", '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    x = beta * ((pw - rw) - (pl - rl))
    if loss == "dpo":
        return F.softplus(-x)
    elif loss == "ipo":
        return (x - 1) ** 2
    return torch.clamp(1 - x, min=0)''', None),
    # preference_loss, wrong: each named truly, or neutrally
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss](beta * ((pl - rl) - (pw - rw)))''', "swap chosen and rejected"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss](beta * ((pw + rw) - (pl + rl)))''', "added, not subtracted"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss](beta * torch.abs((pw - rw) - (pl - rl)))''', "lost its sign"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss](beta * (pw - pl))''', "reference is ignored"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss]((pw - rw) - (pl - rl))''', "beta is not applied"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss](((pw - rw) - (pl - rl)) / beta)''', "divide by beta"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G["dpo"](beta * ((pw - rw) - (pl - rl)))''', "always uses the g of 'dpo'"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss](beta * ((pw - rl) - (pl - rw)))''', "added, not subtracted"),  # the same h
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss](beta * ((pw - rw) - (pl - rl))).mean()''', "do not take the mean"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    h = (pw.detach() - rw) - (pl.detach() - rl)
    return G[loss](beta * h)''', "not differentiable"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    h = (pw.detach() - rw) - (pl - rl)
    return G[loss](beta * h)''', "no gradient reaches policy_chosen_logps"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    h = [float(a - b - c + d) for a, b, c, d in zip(pw, rw, pl, rl)]
    return G[loss](beta * torch.tensor(h))''', "not differentiable"),
    ("preference_loss", G + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    pw -= rw
    pl -= rl
    return G[loss](beta * (pw - pl))''', "in place"),
    ("preference_loss", '''
import treemdp
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return treemdp.preference_loss(pw, pl, rw, rl, beta=beta, loss=loss)''', "library's own answer"),
    ("preference_loss", G.replace("(x - 1) ** 2", "x ** 2") + '''
def preference_loss(pw, pl, rw, rl, beta, loss="dpo"):
    return G[loss](beta * ((pw - rw) - (pl - rl)))''', "check_ipo_g passes first"),
]


@pytest.mark.parametrize("name, code, reason", A1, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(A1)])
def test_a1_table(name, code, reason):
    result = ex.get_exercise(f"a1.{name}").check(student(code, name))
    if reason is None:
        assert result.outcome is Outcome.CORRECT, result
    else:
        assert result.outcome is Outcome.INCORRECT, result
        assert reason in result.message, result.message
        if "swap" not in reason:
            assert SWAP not in result.message, result.message


def test_a1_wrong_answers_never_get_the_swap_diagnosis_by_accident():
    """|h| agrees with a swap on every batch where all h < 0; one-example batches would say "swap"."""
    for name, code, reason in A1:
        if name == "preference_loss" and reason is not None and "swap chosen" not in reason:
            assert SWAP not in str(ex.check_preference_loss(student(code, name))), code


# ---- a2 --------------------------------------------------------------------------------------
A2 = [
    ("sequence_log_prob", '''
def sequence_log_prob(policy, actions):
    total = torch.zeros(())
    for t, a in enumerate(actions):
        prefix = torch.tensor(actions[:t], dtype=torch.long).reshape(1, t)
        total = total + policy.action_log_probs(prefix)[0, a]
    return total''', None),
    ("sequence_log_prob", '''
def sequence_log_prob(policy, actions):
    logps = [policy.action_log_probs(torch.tensor([actions[:t]], dtype=torch.long).reshape(1, t))[0, actions[t]]
             for t in range(len(actions))]
    return torch.stack(logps).sum()''', None),
    ("sequence_log_prob", '''
def sequence_log_prob(policy, actions):
    total = 0.0
    for t in range(len(actions)):
        with torch.no_grad():
            total += float(policy.action_log_probs(torch.tensor(actions[:t]).long().view(1, -1))[0, actions[t]])
    return total''', None),  # a Python float: the stub asks for no gradient
    ("sequence_log_prob", '''
def sequence_log_prob(policy, actions):
    p = 1.0
    for t in range(len(actions)):
        p = p * policy.action_log_probs(torch.tensor(actions[:t]).long().view(1, -1))[0, actions[t]].exp()
    return p''', "return its log"),
    ("sequence_log_prob", '''
def sequence_log_prob(policy, actions):
    return policy.action_log_probs(torch.zeros(1, 0, dtype=torch.long))[0, actions[0]]''', "only the first step"),
    ("sequence_log_prob", '''
def sequence_log_prob(policy, actions):
    from treemdp import trajectory_log_probs
    return trajectory_log_probs(policy)[policy.mdp.trajectory_index([actions])[0]]''', "library's own answer"),
    ("sequence_log_prob", '''
def sequence_log_prob(policy, actions):
    return policy.action_log_probs(torch.tensor([actions]))[0]''', "raised UserError: prefixes must have shape"),
    ("enumerate_log_probs", '''
def enumerate_log_probs(policy):
    mdp = policy.mdp
    states, logp = torch.zeros(1, dtype=torch.long), torch.zeros(1)
    for t in range(mdp.depth):
        logp = (logp[:, None] + torch.log_softmax(policy.logits[states], -1)).reshape(-1)
        states = torch.as_tensor(mdp.next_state)[states].reshape(-1)
    return logp''', None),
    ("enumerate_log_probs", '''
def enumerate_log_probs(policy):
    mdp = policy.mdp
    out = []
    for actions in mdp.trajectories().tolist():
        s, total = 0, 0.0
        for a in actions:
            total = total + torch.log_softmax(policy.logits[s], -1)[a]
            s = int(mdp.next_state[s][a])
        out.append(total)
    return torch.stack(out).detach().numpy()''', None),  # slow and numpy, but right
    ("enumerate_log_probs", '''
def enumerate_log_probs(policy):
    mdp = policy.mdp
    states, logp = torch.zeros(1, dtype=torch.long), torch.zeros(1)
    for t in range(mdp.depth):
        logp = (logp[:, None] + torch.log_softmax(policy.logits[states], -1)).T.reshape(-1)
        states = torch.as_tensor(mdp.next_state)[states].T.reshape(-1)
    return logp''', "wrong order"),
    ("enumerate_log_probs", '''
def enumerate_log_probs(policy):
    mdp = policy.mdp
    states, logp = torch.zeros(1, dtype=torch.long), torch.zeros(1)
    for t in range(mdp.depth):
        logp = (logp[:, None] + policy.logits[states]).reshape(-1)
        states = torch.as_tensor(mdp.next_state)[states].reshape(-1)
    return logp''', "not normalised"),
    ("enumerate_log_probs", '''
def enumerate_log_probs(policy):
    mdp = policy.mdp
    states, p = torch.zeros(1, dtype=torch.long), torch.ones(1)
    for t in range(mdp.depth):
        p = (p[:, None] * torch.softmax(policy.logits[states], -1)).reshape(-1)
        states = torch.as_tensor(mdp.next_state)[states].reshape(-1)
    return p''', "you return probabilities"),
    ("enumerate_log_probs", '''
def enumerate_log_probs(policy):
    from treemdp.exact import trajectory_log_probs
    return trajectory_log_probs(policy)''', "library's own answer"),
    ("ood_mass", "def ood_mass(logp, in_distribution):\n    return logp[~in_distribution].exp().sum()", None),
    ("ood_mass", "def ood_mass(logp, in_distribution):\n    return 1 - logp[in_distribution].exp().sum()", None),
    ("ood_mass", "def ood_mass(logp, in_distribution):\n    return torch.logsumexp(logp[in_distribution == False], 0).exp()", None),  # noqa: E712
    ("ood_mass", "def ood_mass(logp, in_distribution):\n    return float(np.exp(logp.numpy())[~in_distribution.numpy()].sum())", None),
    ("ood_mass", "def ood_mass(logp, in_distribution):\n    return (logp.exp() * (~in_distribution)).sum().item()", None),
    ("ood_mass", "def ood_mass(logp, in_distribution):\n    return logp[in_distribution].exp().sum()", "in-distribution mass"),
    ("ood_mass", "def ood_mass(logp, in_distribution):\n    return logp[~in_distribution].sum()", "add log-probabilities"),
    ("ood_mass", "def ood_mass(logp, in_distribution):\n    return logp[~in_distribution].exp()", "one number"),
    ("ood_mass", "def ood_mass(logp, in_distribution):\n    import treemdp\n    return treemdp.exact.ood_mass(logp, in_distribution)", "library's own answer"),
]


@pytest.mark.parametrize("name, code, reason", A2, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(A2)])
def test_a2_table(name, code, reason):
    result = ex.get_exercise(f"a2.{name}").check(student(code, name))
    if reason is None:
        assert result.outcome is Outcome.CORRECT, result
    else:
        assert result.outcome is Outcome.INCORRECT, result
        assert reason in result.message, result.message


# ---- a3 --------------------------------------------------------------------------------------
MARGIN_AND_LOSS = '''
def sanity_check(result):
    daa = result.metrics.query("phase == 'daa'")
    first, last = daa.iloc[0], daa.iloc[-1]
    problems = []
    if math.log(last["chosen_prob"] / last["rejected_prob"]) <= math.log(first["chosen_prob"] / first["rejected_prob"]):
        problems.append("margin did not grow")
    if last["loss"] >= first["loss"] - 1e-6:
        problems.append("loss did not fall")
    return problems'''
A3_SANITY = [
    (MARGIN_AND_LOSS, None),
    ('''
def sanity_check(result):
    daa = result.metrics[result.metrics.phase == "daa"]
    problems = []
    if daa.chosen_prob.iloc[-1] / daa.rejected_prob.iloc[-1] <= daa.chosen_prob.iloc[0] / daa.rejected_prob.iloc[0]:
        problems.append("chosen did not gain on rejected")
    if not daa.loss.iloc[-1] < daa.loss.iloc[0]:
        problems.append("loss stuck at g(0)")
    return problems''', None),
    # tuned to DPO: "the loss sits at log 2" catches the frozen-h bugs for DPO only
    ('''
def sanity_check(result):
    daa = result.metrics.query("phase == 'daa'")
    problems = []
    if abs(daa["loss"].iloc[-1] - math.log(2)) < 1e-3:
        problems.append("loss stuck at log 2")
    if daa["rejected_prob"].iloc[-1] > daa["rejected_prob"].iloc[0]:
        problems.append("rejected went up")
    return problems''', "only work for one loss or beta"),
    # only the margin: misses the reference that follows the policy
    ('''
def sanity_check(result):
    daa = result.metrics.query("phase == 'daa'")
    grew = daa["chosen_prob"].iloc[-1] / daa["rejected_prob"].iloc[-1] > daa["chosen_prob"].iloc[0] / daa["rejected_prob"].iloc[0]
    return [] if grew else ["margin did not grow"]''', "lets trainer"),
    # "the OOD mass must fall": the swapped trainer's OOD mass falls too
    ('''
def sanity_check(result):
    daa = result.metrics.query("phase == 'daa'")
    return ["OOD mass rose"] if daa["ood_mass"].iloc[-1] > daa["ood_mass"].iloc[0] else []''', "lets trainer C through"),
    ("def sanity_check(result):\n    return []", "lets trainer"),
    ("def sanity_check(result):\n    return ['looks odd']", "false alarm"),
    ("def sanity_check(result):\n    return 'fine'", "should return a list"),
    ("def sanity_check(result):\n    return result.metrics['no_such_column']", "raised KeyError"),
]


@pytest.mark.parametrize("code, reason", A3_SANITY, ids=[str(i) for i in range(len(A3_SANITY))])
def test_a3_sanity_check_table(code, reason):
    result = ex.check_sanity_check(student(code, "sanity_check"))
    if reason is None:
        assert result.outcome is Outcome.CORRECT, result
    else:
        assert result.outcome is Outcome.INCORRECT, result
        assert reason in result.message, result.message


def test_the_sanity_check_sees_every_buggy_trainer_under_every_loss():
    from treemdp.exercises.bugs import _BUGGY_SETTINGS, _CLEAN_SETTINGS
    assert {s["loss"] for s in _BUGGY_SETTINGS} == {"dpo", "ipo", "slic"}
    assert len({s["beta"] for s in _BUGGY_SETTINGS}) >= 2
    assert all(s in _CLEAN_SETTINGS for s in _BUGGY_SETTINGS)  # and each passes bug-free


A3_DIAGNOSIS = [
    ({"A": "reference follows the policy", "B": "no bug", "C": "swapped chosen and rejected",
      "D": "reference is the policy"}, None),
    ({v: "no bug" for v in ex.VARIANTS}, "look again at variant(s)"),
    ({"A": "typo", "B": "no bug", "C": "no bug", "D": "no bug"}, "is not one of the choices"),
    ({"A": "no bug"}, "no entry for variant(s)"),
    (["no bug"] * 4, "should be a dict"),
    ({"A": "?", "B": "?", "C": "?", "D": "?"}, "not attempted"),
]


@pytest.mark.parametrize("answer, reason", A3_DIAGNOSIS, ids=[str(i) for i in range(len(A3_DIAGNOSIS))])
def test_a3_diagnosis_table(answer, reason):
    result = ex.check_diagnosis(answer)
    if reason is None:
        assert result.outcome is Outcome.CORRECT, result
    elif reason == "not attempted":
        assert result.outcome is Outcome.NOT_ATTEMPTED, result
    else:
        assert result.outcome is Outcome.INCORRECT and reason in result.message, result


def test_a_check_never_raises():
    """Whatever the student hands in, a Result comes back (no exception escapes a check)."""
    class Weird:
        def __call__(self, *args, **kwargs):
            raise SystemError("boom")

        def __eq__(self, other):
            raise RuntimeError("no comparisons")

    for exercise in ex.EXERCISES.values():
        for answer in (Weird(), 42, "text", lambda *a, **k: torch.tensor(float("nan")), lambda *a, **k: object()):
            result = exercise.check(answer)
            assert isinstance(result, ex.Result) and result.outcome is not Outcome.CORRECT, (exercise.id, result)
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
        assert len(exercise.hints) == 3
        levels = [ex.hint(exercise.id, k) for k in (1, 2, 3)]
        assert [h.split(":")[0] for h in levels] == ["Where to look", "The idea", "Nearly the answer"]
    assert "subgradient" in ex.hint("a1.slic_g", 2)
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


def test_an_untouched_stub_after_a_failed_cell_is_not_attempted():
    """slic_g's cell has a syntax error, so slic_g is undefined; the preference_loss stub, untouched,
    stops at its G = {...} line: that is "not attempted", not the student's NameError."""
    namespace = exercise_namespace("a1", "starter")
    del namespace["slic_g"]
    result = ex.check_preference_loss(namespace["preference_loss"])
    assert result.outcome is Outcome.NOT_ATTEMPTED, result
    assert "NotImplementedError" in result.message and "cells above" in result.message, result
    # control: an answer the student did write that hits the same missing name is incorrect, with it
    filled = exercise_namespace("a1", "solution")
    del filled["slic_g"]
    result = ex.check_preference_loss(filled["preference_loss"])
    assert result.outcome is Outcome.INCORRECT and "NameError" in result.message, result


def test_the_one_loss_hint_only_follows_a_catch_under_another_setting():
    never = ex.check_sanity_check(student("def sanity_check(result):\n    return []", "sanity_check"))
    assert never.outcome is Outcome.INCORRECT and "with loss=dpo, beta=0.1" in never.message, never
    assert "one loss or beta" not in never.message, never  # it fails the first, default setting
    tuned = ex.check_sanity_check(student(A3_SANITY[2][0], "sanity_check"))
    assert "it flags" in tuned.message and "loss=dpo, beta=0.1: does your check only work" in tuned.message, tuned
