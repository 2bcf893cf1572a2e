"""Assignment a3: a silent-bug hunt. Four trainers, three of them subtly broken.

Every variant runs the library's own SFT (:func:`treemdp.training.train` with ``daa_steps=0``)
and then a direct alignment loop built from library pieces (:func:`treemdp.trajectory_log_probs`,
:func:`treemdp.training.daa_loss`, the library's optimisers), with at most one line changed.
The bug-free variant reproduces :func:`treemdp.training.train` bit for bit (pinned by a test),
so any difference a student sees comes from the bug. Students see only the letters; please do
not read :data:`_VARIANT_BUG` before handing the assignment in.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import pandas as pd
import torch

from ..exact import in_distribution_mask, kl_divergence, trajectory_log_probs
from ..training import RunResult, TrainConfig, daa_loss, make_optimizer, summarize, train
from ..tree import TreeMDP
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


def _run(bug: str, *, progress: bool = False, **overrides) -> RunResult:
    config = dataclasses.replace(TrainConfig(), **overrides).validate()
    sft = train(config, daa_steps=0, progress=progress)  # the library's SFT, unchanged
    mdp, dataset = TreeMDP(config.branching, config.depth), sft.dataset
    in_dist = in_distribution_mask(mdp, dataset)
    chosen, rejected = mdp.trajectory_index(dataset.chosen()), mdp.trajectory_index(dataset.rejected())
    names = mdp.trajectory_names()

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        policy = copy.deepcopy(sft.policy).requires_grad_(True).train()
        reference = copy.deepcopy(policy).requires_grad_(False).eval()
        if bug == "reference is the policy":
            reference = policy
        with torch.no_grad():
            ref_logp = trajectory_log_probs(reference)
            sft_logp = ref_logp.clone()  # what a correct reference would be, for the KL column
        optimizer = make_optimizer(config.optimizer, policy.parameters(), config.daa_lr)
        rows, scalars = [], []
        for step in range(config.daa_steps + 1):
            logp = trajectory_log_probs(policy)
            if bug == "reference is the policy":
                ref_logp = trajectory_log_probs(reference)
            elif bug == "reference follows the policy":
                ref_logp = logp.detach()
            w, l = (rejected, chosen) if bug == "swapped chosen and rejected" else (chosen, rejected)
            loss = daa_loss(logp, ref_logp, w, l, beta=config.beta, loss=config.loss)
            probs = logp.detach().exp()
            scalars.append({"phase": "daa", "step": step, "loss": loss.item(),
                            "ood_mass": float(probs[~in_dist].sum()),
                            "chosen_prob": float(probs[chosen].mean()),
                            "rejected_prob": float(probs[rejected].mean()),
                            "kl_to_reference": float(kl_divergence(logp.detach(), sft_logp))})
            if step % config.log_every == 0 or step == config.daa_steps:
                rows.append(pd.DataFrame({"phase": "daa", "step": step, "trajectory": names,
                                          "prob": probs.double().numpy(), "in_distribution": in_dist.numpy()}))
            if step == config.daa_steps:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(previous_threads)

    with torch.no_grad():
        final_logp = trajectory_log_probs(policy)
    steps = pd.DataFrame(scalars)
    sft_steps = pd.DataFrame({"phase": "sft", "step": sft.metrics["step"], "loss": sft.metrics["loss"],
                              "ood_mass": sft.metrics["ood_mass"], "chosen_prob": sft.metrics["chosen_prob"],
                              "rejected_prob": sft.metrics["rejected_prob"]})
    all_steps = pd.concat([sft_steps, steps], ignore_index=True)
    history = pd.concat([sft.history] + rows, ignore_index=True)
    logged = steps[(steps["step"] % config.log_every == 0) | (steps["step"] == config.daa_steps)]
    metrics = pd.concat([sft.metrics, _with_masses(logged)], ignore_index=True)
    summary = summarize(config, mdp, all_steps, final_logp, sft_logp, in_dist, 0.0)
    summary["variant_of"] = "mystery_train"
    return RunResult(config, history, metrics, summary, policy.requires_grad_(False).eval(),
                     sft.policy, dataset)


def _with_masses(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["in_distribution_mass"] = 1.0 - frame["ood_mass"]
    return frame


@functools.lru_cache(maxsize=32)
def _cached(bug: str, items: tuple) -> RunResult:
    return _run(bug, **dict(items))


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
        for bug, settings in runs:
            result = _cached(bug, tuple(sorted({**_SETTINGS, **settings}.items())))
            problems = call_student(sanity_check, result)
            if not isinstance(problems, (list, tuple)):
                raise Incorrect(f"sanity_check should return a list of problem descriptions, got {type(problems).__name__}")
            if bug == "no bug" and problems:
                raise Incorrect(f"false alarm on a bug-free run ({_describe_settings(settings)}): {problems[0]!r}")
            if bug != "no bug" and not problems:
                raise Incorrect(f"it lets trainer {letter[bug]} through with {_describe_settings(settings)}, but "
                                f"{letter[bug]} has a bug (does your check only work for one loss or beta?)")
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
     "If the reference is the policy object itself, h is identically 0 and the gradient is only "
     "rounding noise (Adam turns it into a slow random drift); if the reference is re-read from the "
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
