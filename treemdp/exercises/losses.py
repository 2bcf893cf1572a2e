"""Assignment a1: the three g functions of eq. 4 and ``preference_loss``.

Each check draws random inputs (plus the points where the losses have landmarks: 0, 1 and
large magnitudes), runs the student's function and :mod:`treemdp.losses`' own, and compares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import losses as lib
from .compare import check_differentiable, compare
from .core import Exercise, Incorrect, Result, call_student, register, run_check


def _points(seed: int, n: int = 200) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    landmarks = torch.tensor([0.0, 1.0, -1.0, 0.5, 2.0, -30.0, 30.0, -100.0])
    return torch.cat([landmarks, torch.randn(n, generator=generator) * 4])


def _check_g(name: str, reference, mistakes_of, student, seed: int) -> Result:
    exercise_id = f"a1.{name}"

    def body() -> str:
        x = _points(seed)
        got = call_student(student, x.clone())
        error = compare(got, reference(x), what=name, inputs=[("x", x)], mistakes=mistakes_of(x))
        check_differentiable(student, x[:50], reference, name)
        return f"matches treemdp.losses.{name} on {x.numel()} inputs (max error {error:.1e}) and its gradient"

    return run_check(exercise_id, body)


def _dpo_mistakes(x):
    return [(F.logsigmoid(x), "the sign is flipped: g must be a loss, -log sigmoid(x), positive and "
                              "decreasing in x (log 2 at x = 0)"),
            (-F.logsigmoid(-x), "you evaluate at -x: the loss must fall as beta*h (the margin) grows"),
            (torch.sigmoid(-x), "that is 1 - sigmoid(x), not -log sigmoid(x): take the log")]


def _ipo_mistakes(x):
    return [((x - 0.5) ** 2, "that is the IPO paper's target 1/2; this paper's convention (eq. 4) is "
                             "(x - 1)^2, with its optimum at x = 1"),
            (x**2, "the target is missing: IPO regresses beta*h to 1, so g(x) = (x - 1)^2"),
            (1 - x, "square the difference: g(x) = (x - 1)^2"),
            ((x + 1) ** 2, "the sign of the target is flipped: g(x) = (x - 1)^2")]


def _slic_mistakes(x):
    return [(1 - x, "the hinge is missing: g must be 0 once x >= 1 (max(0, 1 - x)), not negative"),
            (torch.relu(-x), "the margin is missing: the hinge is max(0, 1 - x), not max(0, -x)"),
            (torch.relu(x - 1), "the sign is flipped: g(x) = max(0, 1 - x) falls as x grows")]


def check_dpo_g(dpo_g) -> Result:
    """a1.dpo_g: ``dpo_g(x) = -log sigmoid(x)`` elementwise (compared with :func:`treemdp.losses.dpo_g`)."""
    return _check_g("dpo_g", lib.dpo_g, _dpo_mistakes, dpo_g, seed=1)


def check_ipo_g(ipo_g) -> Result:
    """a1.ipo_g: ``ipo_g(x) = (x - 1)^2`` elementwise (paper convention)."""
    return _check_g("ipo_g", lib.ipo_g, _ipo_mistakes, ipo_g, seed=2)


def check_slic_g(slic_g) -> Result:
    """a1.slic_g: ``slic_g(x) = max(0, 1 - x)`` elementwise."""
    return _check_g("slic_g", lib.slic_g, _slic_mistakes, slic_g, seed=3)


def _log_probs(generator: torch.Generator, batch: int) -> torch.Tensor:
    """Random sequence log-probs in [-12, 0), shape [batch]."""
    return -torch.rand(batch, generator=generator) * 12


def check_preference_loss(preference_loss) -> Result:
    """a1.preference_loss: per-example ``g(beta * h)`` for every loss name, beta and batch.

    The student's function is called as ``preference_loss(pi_w, pi_l, ref_w, ref_l, beta=..., loss=...)``
    with [batch] tensors and compared with :func:`treemdp.preference_loss`.
    """

    def body() -> str:
        generator = torch.Generator().manual_seed(4)
        worst, cases = 0.0, 0
        for loss in ("dpo", "ipo", "slic"):
            for beta in (0.01, 0.1, 0.5, 2.0):
                batch = 1 + cases % 7
                pi_w, pi_l, ref_w, ref_l = (_log_probs(generator, batch) for _ in range(4))
                args = (pi_w, pi_l, ref_w, ref_l)
                got = call_student(preference_loss, *[a.clone() for a in args], beta=beta, loss=loss)
                expected = lib.preference_loss(*args, beta=beta, loss=loss)
                g = lib.LOSSES[loss]
                h = (pi_w - ref_w) - (pi_l - ref_l)
                mistakes = [
                    (g(-beta * h), "h has the wrong sign: did you swap chosen and rejected? "
                                   "h = (pi_w - ref_w) - (pi_l - ref_l)"),
                    (g(h), f"beta is not applied: the loss is g(beta * h) (failed with beta={beta})"),
                    (g(beta * (pi_w - pi_l)), "the reference is ignored: h subtracts the reference "
                                              "log-ratios, (pi_w - ref_w) - (pi_l - ref_l)"),
                    (g(h / beta), "you divide by beta: the loss is g(beta * h)"),
                ]
                for other in ("dpo", "ipo", "slic"):
                    if other != loss:
                        mistakes.append((lib.LOSSES[other](beta * h),
                                         f"loss={loss!r} uses the g of {other!r}: look g up by name"))
                try:
                    error = compare(got, expected, what=f"preference_loss(..., beta={beta}, loss={loss!r})",
                                    inputs=[("pi_w", pi_w), ("pi_l", pi_l), ("ref_w", ref_w), ("ref_l", ref_l)],
                                    mistakes=mistakes)
                except Incorrect as e:
                    why = str(e)
                    if "values differ" in why:  # no named mistake: perhaps the student's own g is wrong
                        why += f"; if it calls your {loss}_g, make sure check_{loss}_g passes first"
                    raise Incorrect(f"for loss={loss!r}, beta={beta}, batch={batch}: {why}") from None
                worst, cases = max(worst, error), cases + 1
        return (f"matches treemdp.preference_loss for dpo, ipo and slic at 4 betas "
                f"({cases} random batches, max error {worst:.1e})")

    return run_check("a1.preference_loss", body)


register(Exercise(
    "a1.dpo_g", "DPO's g: -log sigmoid(x)", "dpo_g", check_dpo_g,
    ("DPO comes from the Bradley-Terry model: P(chosen beats rejected) = sigmoid(beta * h). "
     "The loss is the negative log of that probability.",
     "torch.nn.functional has a numerically stable log-sigmoid; log(sigmoid(x)) underflows for "
     "very negative x.",
     "return -torch.nn.functional.logsigmoid(x)")))
register(Exercise(
    "a1.ipo_g", "IPO's g: (x - 1)^2", "ipo_g", check_ipo_g,
    ("IPO regresses the scaled margin beta * h onto a fixed target instead of pushing it to infinity.",
     "In this paper's convention (eq. 4) the target of beta * h is 1, so the optimum is at h = 1/beta.",
     "return (x - 1) ** 2")))
register(Exercise(
    "a1.slic_g", "SLiC's g: max(0, 1 - x)", "slic_g", check_slic_g,
    ("SLiC uses a hinge: no loss once the margin is large enough.",
     "The hinge is zero for x >= 1 and grows linearly below; torch.relu(z) = max(0, z).",
     "return torch.relu(1 - x)")))
register(Exercise(
    "a1.preference_loss", "preference_loss: g(beta * h), per example", "preference_loss",
    check_preference_loss,
    ("First compute h from the four log-probs (eq. 4), then apply the g named by `loss` to beta * h.",
     "h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps); "
     "keep one value per example: no .mean().",
     "return G[loss](beta * h) with G = {'dpo': dpo_g, 'ipo': ipo_g, 'slic': slic_g}")))
