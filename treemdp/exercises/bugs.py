"""Assignment a3: a silent-bug hunt. Four trainers, three of them subtly broken.

Every variant is the library's own engine (:func:`treemdp.training.train_batch`: SFT, then the
direct alignment phase) with one hook that changes what the DAA loss is given each step (the
reference log-probs, or which answer is chosen). The bug-free variant has no hook, so it is
:func:`treemdp.training.train` itself, and any difference a student sees comes from the bug.
Students see only the letters; please do not read :data:`_VARIANT_BUG` before handing the
assignment in.
"""

from __future__ import annotations

import dataclasses

from ..training import RunResult, TrainConfig, TrainingDiverged, train_batch
from .core import Exercise, Incorrect, NotAttempted, Result, call_student, register, run_check

#: What each bug does to the DAA phase (the answer choices).
BUGS = {
    "no bug": "the library's trainer",
    "swapped chosen and rejected": "the loss is given the rejected answer as chosen and vice versa",
    "reference is the policy": "`reference = policy` instead of a frozen copy: h is always 0",
    "reference follows the policy": "the reference log-probs are re-read from the policy (detached) every step",
}
VARIANTS = ("A", "B", "C", "D")
_VARIANT_BUG = {"A": "reference follows the policy", "B": "no bug",
                "C": "swapped chosen and rejected", "D": "reference is the policy"}


def mystery_train(variant: str, *, progress: bool = False, **overrides) -> RunResult:
    """Run trainer ``variant`` (``"A"`` .. ``"D"``) on the paper's data.

    Args:
        variant: which trainer; exactly one of them is bug-free.
        overrides: :class:`~treemdp.training.TrainConfig` fields (loss, beta, seed, daa_steps, ...).

    Returns:
        A :class:`~treemdp.training.RunResult` like :func:`treemdp.training.train`'s, so
        ``result.history`` and ``result.metrics`` read the same way.
    """
    from ..errors import UserError
    if variant not in _VARIANT_BUG:
        raise UserError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    return _run(_VARIANT_BUG[variant], progress=progress, **overrides)


#: Each bug as a DAA hook: (step, logp, ref_logp, chosen, rejected) -> what the loss is given.
_HOOKS = {
    "no bug": None,
    "swapped chosen and rejected": lambda step, logp, ref, chosen, rejected: (ref, rejected, chosen),
    "reference is the policy": lambda step, logp, ref, chosen, rejected: (logp, chosen, rejected),
    "reference follows the policy": lambda step, logp, ref, chosen, rejected: (logp.detach(), chosen, rejected),
}


def _run(bug: str, *, progress: bool = False, **overrides) -> RunResult:
    config = dataclasses.replace(TrainConfig(), **overrides).validate()
    (result,) = train_batch([config], daa_hook=_HOOKS[bug])
    if isinstance(result, TrainingDiverged):
        raise result
    result.summary["variant_of"] = "mystery_train"
    return result


_CACHE: dict[tuple, RunResult] = {}


def _cached(bug: str, items: tuple) -> RunResult:
    if (bug, items) not in _CACHE:
        _CACHE[(bug, items)] = _run(bug, **dict(items))
    return _CACHE[(bug, items)]


def _train_all(runs) -> None:
    """Train the check's runs not cached yet, one batch per bug (the runs of a bug share its hook)."""
    todo: dict[str, list[tuple]] = {}
    for bug, settings in runs:
        items = tuple(sorted({**_SETTINGS, **settings}.items()))
        if (bug, items) not in _CACHE and items not in todo.setdefault(bug, []):
            todo[bug].append(items)
    for bug, items_list in todo.items():
        configs = [dataclasses.replace(TrainConfig(), **dict(items)).validate() for items in items_list]
        for items, result in zip(items_list, train_batch(configs, daa_hook=_HOOKS[bug])):
            if isinstance(result, TrainingDiverged):
                raise result
            result.summary["variant_of"] = "mystery_train"
            _CACHE[(bug, items)] = result


# ----- checks ---------------------------------------------------------------------------------

def check_diagnosis(diagnosis) -> Result:
    """a3.diagnosis: a dict mapping each variant letter to one of :data:`BUGS`' names."""

    def body() -> str:
        if diagnosis is None or (isinstance(diagnosis, dict) and all(v in (None, "", "?", ...) for v in diagnosis.values())):
            raise NotAttempted("fill in the diagnosis dict: one choice per variant")
        if not isinstance(diagnosis, dict):
            raise Incorrect(f"diagnosis should be a dict like {{'A': 'no bug', ...}}, got {type(diagnosis).__name__}")
        missing = [v for v in VARIANTS if v not in diagnosis]
        if missing:
            raise Incorrect(f"diagnosis has no entry for variant(s) {', '.join(missing)}")
        unknown = {k: v for k, v in diagnosis.items() if v not in BUGS}
        if unknown:
            k, v = next(iter(unknown.items()))
            raise Incorrect(f"variant {k}: {v!r} is not one of the choices: {', '.join(repr(b) for b in BUGS)}")
        wrong = [v for v in VARIANTS if diagnosis[v] != _VARIANT_BUG[v]]
        if wrong:
            raise Incorrect(f"{len(VARIANTS) - len(wrong)} of {len(VARIANTS)} right; look again at variant(s) "
                            f"{', '.join(wrong)} (compare its chosen, rejected and OOD mass with the others)")
        return "all four variants diagnosed"

    return run_check("a3.diagnosis", body)


#: Short runs for the sanity check (the bugs show within tens of DAA steps).
_SETTINGS = dict(sft_steps=60, daa_steps=50, log_every=10)
#: Every buggy trainer is run under each of these (every loss, several betas), so a check tuned
#: to one loss (DPO's g(0) = log 2, say) fails.
_BUGGY_SETTINGS = (dict(loss="dpo", beta=0.1), dict(loss="ipo", beta=0.5), dict(loss="slic", beta=0.5),
                   dict(loss="ipo", beta=0.1))
#: Bug-free runs a sanity check must pass: the same settings plus other seeds and a small beta.
_CLEAN_SETTINGS = _BUGGY_SETTINGS + (dict(loss="slic", beta=0.1, seed=1), dict(loss="dpo", beta=0.01, seed=2))


def _describe_settings(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def check_sanity_check(sanity_check) -> Result:
    """a3.sanity_check: ``sanity_check(result) -> list[str]`` flags every buggy run, no clean one.

    Run on the three buggy trainers under every loss and several betas (:data:`_BUGGY_SETTINGS`)
    and on bug-free runs of the same settings and more (:data:`_CLEAN_SETTINGS`).
    """

    def body() -> str:
        letter = {bug: v for v, bug in _VARIANT_BUG.items()}
        runs = [(bug, settings) for settings in _BUGGY_SETTINGS for bug in BUGS if bug != "no bug"]
        runs += [("no bug", settings) for settings in _CLEAN_SETTINGS]
        _train_all(runs)
        caught: dict[str, dict] = {}  # bug -> the first setting under which the answer flagged it
        for bug, settings in runs:
            result = _cached(bug, tuple(sorted({**_SETTINGS, **settings}.items())))
            problems = call_student(sanity_check, result, names=("result",),
                                    watch=(("result.metrics", result.metrics), ("result.history", result.history),
                                           ("result.summary", result.summary)))
            if not isinstance(problems, (list, tuple)):
                raise Incorrect(f"sanity_check should return a list of problem descriptions, got {type(problems).__name__}")
            if bug == "no bug" and problems:
                raise Incorrect(f"false alarm on a bug-free run ({_describe_settings(settings)}): {problems[0]!r}")
            if bug != "no bug" and not problems:
                # the hint only when it did catch this trainer under another loss or beta
                other = (f" (it flags {letter[bug]} with {_describe_settings(caught[bug])}: does your check "
                         f"only work for one loss or beta?)") if bug in caught else ""
                raise Incorrect(f"it lets trainer {letter[bug]} through with {_describe_settings(settings)}, but "
                                f"{letter[bug]} has a bug{other}")
            if bug != "no bug":
                caught.setdefault(bug, settings)
        return (f"flags the three buggy trainers under dpo, ipo and slic at several betas and passes "
                f"{len(_CLEAN_SETTINGS)} bug-free runs")

    return run_check("a3.sanity_check", body)


register(Exercise(
    "a3.diagnosis", "which trainer has which bug", "diagnosis", check_diagnosis,
    ("Look at the plots of the four trainers and at the first/last table: which way should the "
     "chosen and the rejected probability move during DAA, and what should the loss do?",
     "A trainer whose DAA phase barely moves, one whose loss never leaves g(0), and one that "
     "raises the rejected answer all have something wrong with h. Compare DPO with IPO at "
     "beta = 0.5, a loss that should stop once h = 1/beta.",
     "If the reference is the policy object itself, h is identically 0 and so is its gradient: the "
     "policy never leaves the SFT policy; if the reference is re-read from the "
     "policy every step, h is 0 but the gradient is not, so nothing ever stops the push (IPO does "
     "not settle); if chosen and rejected are swapped, the rejected probability rises.")))
register(Exercise(
    "a3.sanity_check", "a check that catches the bugs", "sanity_check", check_sanity_check,
    ("Look at result.metrics (phase 'daa'): chosen_prob, rejected_prob and loss at the first and "
     "last steps.",
     "A healthy run, whatever its loss and beta, raises the chosen probability relative to the "
     "rejected one, and its loss falls below its own step-0 value g(0) (log 2 for DPO, 1 for IPO "
     "and SLiC: compare with the run's step 0, never with a constant).",
     "Flag: the margin log(chosen/rejected) at the last step is not above the first; the last "
     "loss is not below the first.")))
