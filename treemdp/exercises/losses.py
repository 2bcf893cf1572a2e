"""Assignment a1: the three g functions of eq. 4 and ``preference_loss``.

Each check draws random inputs (plus the points where the losses have landmarks: 0, 1 and
large magnitudes), runs the student's function and :mod:`treemdp.losses`' own, and compares.
The library's functions are bound when this module is imported (:class:`~.core.Reference`), so a
notebook that later assigns ``treemdp.losses.dpo_g = dpo_g`` does not make a check compare the
student's function with itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .compare import as_tensor, check_gradient, close, compare
from .core import LIBRARY_ANSWERS, Exercise, Incorrect, Reference, Result, call_student, register, run_check


FORBIDDEN = LIBRARY_ANSWERS["losses"]
WHY = {"dpo_g": "DPO's g", "ipo_g": "IPO's g", "slic_g": "SLiC's hinge",
       "preference_loss": "the per-example loss g(beta * h) of eq. 4"}
_PROBE = torch.tensor([-3.0, -0.5, 0.0, 1.0, 2.5])
_PROBE_LOGPS = (torch.tensor([-1.0, -4.0]), torch.tensor([-2.0, -0.5]), torch.tensor([-1.5, -3.0]),
                torch.tensor([-1.0, -1.0]))

#: The library's functions, bound at import and verified at every check.
G = {name: Reference("treemdp.losses", f"{name}_g", lambda g: g(_PROBE)) for name in ("dpo", "ipo", "slic")}
PREFERENCE_LOSS = Reference("treemdp.losses", "preference_loss", lambda f: torch.cat(
    [f(*_PROBE_LOGPS, beta=0.5, loss=loss) for loss in ("dpo", "ipo", "slic")]))


def _points(seed: int, n: int = 200) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    landmarks = torch.tensor([0.0, 1.0, -1.0, 0.5, 2.0, -30.0, 30.0, -100.0])
    return torch.cat([landmarks, torch.randn(n, generator=generator) * 4])


def _check_g(name: str, reference, mistakes_of, student, seed: int, kink: float | None = None,
             slopes: tuple[float, float] = (0.0, 0.0)) -> Result:
    """Values on landmarks and random points, then the gradient (any subgradient at a kink)."""
    exercise_id = f"a1.{name}"

    def body() -> str:
        x = _points(seed)
        given = x.clone()
        got = call_student(student, given, forbidden=FORBIDDEN, why=WHY[name], names=("x",))
        error = compare(got, reference(x), what=name, inputs=[("x", x)], mistakes=mistakes_of(x))
        grid = x[:60]
        leaf = grid.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(reference(leaf).sum(), leaf)
        subgradient = None
        if kink is not None:
            at_kink = (grid - kink).abs() < 1e-6
            subgradient = (at_kink, torch.full_like(grid, min(slopes)), torch.full_like(grid, max(slopes)))
        check_gradient(student, [grid], [want], what=name, wrt=[0], names=["x"], forbidden=FORBIDDEN,
                       why=WHY[name], subgradient=subgradient)
        return f"matches treemdp.losses.{name} on {x.numel()} inputs (max error {error:.1e}) and its gradient"

    return run_check(exercise_id, body)


def _dpo_mistakes(x):
    return [(F.logsigmoid(x), "the sign is flipped: g must be a loss, -log sigmoid(x), positive and "
                              "decreasing in x (log 2 at x = 0)"),
            (-F.logsigmoid(-x), "you evaluate at -x: the loss must fall as beta*h (the margin) grows"),
            (torch.sigmoid(-x), "that is 1 - sigmoid(x), not -log sigmoid(x): take the log"),
            (torch.log(torch.sigmoid(x)), "the sign is flipped: g must be a loss, -log sigmoid(x), positive and "
                                         "decreasing in x (log 2 at x = 0)")]


def _ipo_mistakes(x):
    return [((x - 0.5) ** 2, "that is the IPO paper's target 1/2; this paper's convention (eq. 4) is "
                             "(x - 1)^2, with its optimum at x = 1"),
            (x**2, "the target is missing: IPO regresses beta*h to 1, so g(x) = (x - 1)^2"),
            (1 - x, "square the difference: g(x) = (x - 1)^2"),
            ((x - 1).abs(), "square the difference: g(x) = (x - 1)^2, not |x - 1|"),
            ((x + 1) ** 2, "the sign of the target is flipped: g(x) = (x - 1)^2")]


def _slic_mistakes(x):
    return [(1 - x, "the hinge is missing: g must be 0 once x >= 1 (max(0, 1 - x)), not negative"),
            (torch.relu(-x), "the margin is missing: the hinge is max(0, 1 - x), not max(0, -x)"),
            (torch.relu(x - 1), "the sign is flipped: g(x) = max(0, 1 - x) falls as x grows"),
            (torch.minimum(torch.zeros_like(x), 1 - x), "max, not min: the hinge is max(0, 1 - x), never negative"),
            ((1 - x).abs(), "the hinge is max(0, 1 - x): zero, not growing again, once x >= 1")]


def check_dpo_g(dpo_g) -> Result:
    """a1.dpo_g: ``dpo_g(x) = -log sigmoid(x)`` elementwise (compared with :func:`treemdp.losses.dpo_g`)."""
    return _check_g("dpo_g", G["dpo"], _dpo_mistakes, dpo_g, seed=1)


def check_ipo_g(ipo_g) -> Result:
    """a1.ipo_g: ``ipo_g(x) = (x - 1)^2`` elementwise (paper convention)."""
    return _check_g("ipo_g", G["ipo"], _ipo_mistakes, ipo_g, seed=2)


def check_slic_g(slic_g) -> Result:
    """a1.slic_g: ``slic_g(x) = max(0, 1 - x)`` elementwise; at the kink x = 1 any gradient in
    [-1, 0] (a subgradient) is right, so ``torch.clamp``, ``torch.maximum`` and ``torch.where``
    forms pass as well as ``torch.relu``."""
    return _check_g("slic_g", G["slic"], _slic_mistakes, slic_g, seed=3, kink=1.0, slopes=(-1.0, 0.0))


def _log_probs(generator: torch.Generator, batch: int) -> torch.Tensor:
    """Random sequence log-probs in [-12, 0), shape [batch]."""
    return -torch.rand(batch, generator=generator) * 12


def _loss_mistakes(loss: str, beta: float, pi_w, pi_l, ref_w, ref_l) -> dict[str, torch.Tensor]:
    """What typical wrong answers return on one batch, keyed by the message that names them.

    A message is given only when the answer matches it on *every* batch of the check, so a
    mistake that agrees with another one on some inputs (|h| and a swap, when every h < 0) is
    never named by accident.
    """
    g = G[loss]
    h = (pi_w - ref_w) - (pi_l - ref_l)
    found = {
        "h has the wrong sign: did you swap chosen and rejected? h = (pi_w - ref_w) - (pi_l - ref_l)": g(-beta * h),
        "beta is not applied: the loss is g(beta * h)": g(h),
        "you divide by beta: the loss is g(beta * h)": g(h / beta),
        "the reference is ignored: h subtracts the reference log-probs, (pi_w - ref_w) - (pi_l - ref_l)":
            g(beta * (pi_w - pi_l)),
        "the reference log-probs are added, not subtracted: h = (pi_w - ref_w) - (pi_l - ref_l)":
            g(beta * ((pi_w + ref_w) - (pi_l + ref_l))),
        "h lost its sign (an abs?): a negative margin must give a larger loss than a positive one":
            g(beta * h.abs()),
    }
    for other in ("dpo", "ipo", "slic"):
        found[f"it always uses the g of {other!r}: look g up by the name given in `loss`"] = \
            G[other](beta * h)
    return found


NAMES = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")


def check_preference_loss(preference_loss) -> Result:
    """a1.preference_loss: per-example ``g(beta * h)`` for every loss name, beta and batch, and
    its gradient in the policy's log-probs (the only way training moves the policy).

    The student's function is called as ``preference_loss(pi_w, pi_l, ref_w, ref_l, beta=..., loss=...)``
    with [batch] tensors and compared with :func:`treemdp.preference_loss`.
    """

    def body() -> str:
        generator = torch.Generator().manual_seed(4)
        cases = []
        for loss in ("dpo", "ipo", "slic"):
            for beta in (0.01, 0.1, 0.5, 2.0):
                batch = 2 + len(cases) % 6
                args = tuple(_log_probs(generator, batch) for _ in range(4))
                given = tuple(a.clone() for a in args)
                got = call_student(preference_loss, *given, beta=beta, loss=loss, forbidden=FORBIDDEN,
                                   why=WHY["preference_loss"], names=NAMES)
                expected = PREFERENCE_LOSS(*args, beta=beta, loss=loss)
                what = f"preference_loss(..., beta={beta}, loss={loss!r})"
                got = as_tensor(got, what)
                if got.shape != expected.shape:
                    compare(got, expected, what=what, inputs=[])  # raises, naming the shapes
                cases.append((loss, beta, args, got, expected.double()))
        wrong = [c for c in cases if not close(c[3], c[4])]
        if wrong:
            named = [_loss_mistakes(loss, beta, *args) for loss, beta, args, _, _ in cases]
            for message in named[0]:
                if all(close(got, n[message].double()) for (*_, got, _), n in zip(cases, named)):
                    raise Incorrect(message)
            loss, beta, args, got, expected = wrong[0]
            try:
                compare(got, expected, what=f"preference_loss(..., beta={beta}, loss={loss!r})",
                        inputs=list(zip(("pi_w", "pi_l", "ref_w", "ref_l"), args)))
            except Incorrect as e:
                raise Incorrect(f"{e}; if it calls your {loss}_g, make sure check_{loss}_g passes first") from None
        worst = max(float((got - expected).abs().max()) for *_, got, expected in cases)
        for loss, beta, args, _, expected in cases[::3]:  # gradient in the policy's log-probs
            leaves = [a.clone().requires_grad_(i < 2) for i, a in enumerate(args)]
            want = torch.autograd.grad(PREFERENCE_LOSS(*leaves, beta=beta, loss=loss).sum(), leaves[:2])
            check_gradient(preference_loss, args, want, what=f"preference_loss(..., beta={beta}, loss={loss!r})",
                           wrt=[0, 1], names=list(NAMES[:2]), forbidden=FORBIDDEN,
                           why=WHY["preference_loss"], beta=beta, loss=loss)
        return (f"matches treemdp.preference_loss for dpo, ipo and slic at 4 betas ({len(cases)} random "
                f"batches, max error {worst:.1e}), gradients included")

    return run_check("a1.preference_loss", body)


register(Exercise(
    "a1.dpo_g", "DPO's g: -log sigmoid(x)", "dpo_g", check_dpo_g,
    ("Read the markdown above the stub: DPO's Bradley-Terry model says P(chosen beats rejected) = "
     "sigmoid(x), with x = beta * h. torch.nn.functional has what you need.",
     "The loss is the negative log of that probability, -log sigmoid(x). Taking log(sigmoid(x)) in "
     "two steps underflows for x = -100; use a function that computes log-sigmoid in one go "
     "(softplus(-x) is the same quantity).",
     "return -torch.nn.functional.logsigmoid(x)   (or torch.nn.functional.softplus(-x))")))
register(Exercise(
    "a1.ipo_g", "IPO's g: (x - 1)^2", "ipo_g", check_ipo_g,
    ("Read the markdown above the stub: in this paper's convention IPO's g is a square around a target.",
     "IPO regresses the scaled margin beta * h onto a fixed target instead of pushing it to infinity: "
     "g is 0 at x = 1 and grows quadratically on both sides (so the optimum is h = 1/beta).",
     "return (x - 1) ** 2")))
register(Exercise(
    "a1.slic_g", "SLiC's g: max(0, 1 - x)", "slic_g", check_slic_g,
    ("Read the markdown above the stub: SLiC's g is a hinge, like a support vector machine's.",
     "The hinge is 0 for x >= 1 and 1 - x below. torch.relu, torch.clamp(..., min=0), "
     "torch.maximum and torch.where all build it; at the kink x = 1 any slope between -1 and 0 "
     "(a subgradient) is right, and the check accepts each of them.",
     "return torch.relu(1 - x)   (or torch.clamp(1 - x, min=0))")))
register(Exercise(
    "a1.preference_loss", "preference_loss: g(beta * h), per example", "preference_loss",
    check_preference_loss,
    ("Eq. 4 in the markdown above: first the margin h from the four log-probs, then the g that "
     "`loss` names, applied to beta * h.",
     "h says how much more the policy moved the chosen answer away from the reference than the "
     "rejected one: (chosen log-ratio) minus (rejected log-ratio). Keep one value per example (no "
     ".mean()) and keep the policy's log-probs in the graph (no .detach() or .item()): training "
     "moves the policy through their gradient.",
     "h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps); "
     "return G[loss](beta * h)")))
