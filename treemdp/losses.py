"""Direct alignment objectives: one registry, used by the toy track and the LLM track alike.

For a preferred answer y_w and a dispreferred y_l (Rafailov et al. 2024, eq. 4),

    h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)]
    L = g(beta * h)

with one convex ``g`` per algorithm (the paper's convention):

    DPO   g(x) = -log sigmoid(x)     (Bradley-Terry; Rafailov et al., 2023)
    IPO   g(x) = (x - 1)^2           (Azar et al., 2023, rescaled; see :func:`ipo_g`)
    SLiC  g(x) = max(0, 1 - x)       (hinge; Zhao et al., 2023)

Pseudocode of one DAA step, for a batch of preferences::

    pi_w, pi_l   = sequence log-probs of chosen / rejected under the policy
    ref_w, ref_l = the same under the frozen reference (no gradient)
    loss = mean(objective(PreferenceBatch(pi_w, pi_l, ref_w, ref_l), beta))
    loss.backward(); optimiser.step()

An *objective* maps a :class:`PreferenceBatch` (tensors ``[..., B]``: the last dim is the batch of
pairs, leading dims are stacked independent runs) and ``beta`` to per-example losses ``[..., B]``.
Not every objective is of the form ``g(beta * h)``: DPOP penalises the chosen log-ratio, RPO adds
the chosen answer's NLL, TRL's ``aot`` sorts the batch. Every objective lives in one registry,
:data:`OBJECTIVES`, and is reached by name or by a spec string::

    preference_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1, loss="cdpo(epsilon=0.2)")
    preference_loss(..., loss="trl(loss_type=[sigmoid, sft], loss_weights=[1, 0.5])")  # TRL's RPO
    preference_loss(..., loss="mypackage.losses:my_objective")                          # yours

A new objective is five lines, from anywhere (its keyword defaults become its parameters)::

    from treemdp.losses import register_objective
    import torch.nn.functional as F

    @register_objective
    def margin_dpo(batch, beta, gamma=0.5):
        '''-log sigmoid(beta*h - gamma): DPO with a target margin gamma.'''
        return -F.logsigmoid(beta * batch.h - gamma)

after which ``loss="margin_dpo(gamma=1)"`` works wherever a loss is named. The families:

- the paper's ``dpo``, ``ipo``, ``slic``; GPO's ``exponential``, ``truncated_quadratic``,
  ``savage`` (Tang et al. 2024); ``cdpo``, ``dpop``, ``chipo``, ``rpo``;
- ``trl``: every ``loss_type`` of TRL 1.16's ``DPOTrainer`` with its ``f_divergence_type``,
  ``label_smoothing`` and weighted combinations (:func:`trl_loss`), equal to TRL's numbers.

``treemdp losses`` / :func:`objectives_table` list them with their formulas and parameters.
This module holds the math: :func:`preference_loss` (eq. 4), then every g and variant; the toy
track feeds it exact enumerated log-probs, the LLM track (``treemdp.llm``) summed token log-probs.
The registry, spec strings and parameter checks live in :mod:`treemdp.objectives`,
:mod:`treemdp.specs` and :mod:`treemdp.settings`, the TRL loss types in :mod:`treemdp.trl_losses`;
this module re-exports their public names.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from .objectives import (OBJECTIVES, Beta, GForm, LossFn, Objective, Param, PreferenceBatch, describe,
                         get_objective, loss_spec, objective_from_g, objectives_table, preference_h,
                         register_g, register_objective)
from .settings import check_beta, check_choice, check_real
from .specs import format_value, parse_spec


# --------------------------------------------------------------------------------------------
# Eq. 4: the loss of a batch of preference pairs (both tracks call this)
# --------------------------------------------------------------------------------------------

def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: Beta,
    loss: Union[str, Objective, LossFn] = "dpo",
    chosen_lengths: Optional[torch.Tensor] = None,
    rejected_lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-example direct alignment loss; ``g(beta * h)`` (paper eq. 4) for dpo/ipo/slic.

    Args:
        policy_chosen_logps: log pi(y_w | x), shape [..., B] (leading dims: stacked runs).
        policy_rejected_logps: log pi(y_l | x), shape [..., B].
        ref_chosen_logps: log ref(y_w | x), shape [..., B] (treated as constants by callers).
        ref_rejected_logps: log ref(y_l | x), shape [..., B].
        beta: inverse temperature: a float, finite and > 0, or a tensor broadcastable to
            [..., B] (e.g. [R, 1], checked by the caller).
        loss: anything :func:`get_objective` accepts: ``"dpo"``, ``"ipo"``, ``"slic"``, any
            registered name or spec (``"cdpo(epsilon=0.2)"``), ``"package.module:attr"``, an
            :class:`Objective` (e.g. from :func:`trl_loss`) or a callable ``g``.
        chosen_lengths: completion token counts of y_w, broadcastable to [..., B] (objectives that
            normalise by length need them).
        rejected_lengths: the same for y_l.

    Returns:
        Tensor [..., B] of per-example losses; with policy == reference (h = 0) they are
        log 2 (DPO), 1 (IPO) and 1 (SLiC).

    Mapping to TRL's ``DPOTrainer``: ``dpo`` == ``loss_type="sigmoid"`` and ``slic`` ==
    ``loss_type="hinge"`` at the same beta; ``ipo`` differs by a target and a scale (see
    :func:`ipo_g`); :func:`trl_loss` reproduces every TRL loss type exactly.
    """
    objective = get_objective(loss)
    batch = PreferenceBatch(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, chosen_lengths, rejected_lengths)
    return objective(batch, beta)  # per-example losses, [..., B]


def get_g(loss: Union[str, LossFn]) -> LossFn:
    """Return the ``g`` for one of the paper's loss names, or ``loss`` itself when it is a callable.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(LOSSES))
        raise ValueError(f"unknown loss {loss!r}; choose one of: {valid}") from None


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, *, beta: float) -> torch.Tensor:
    """The DAA implicit reward r(y) = beta * log(pi(y) / ref(y)), elementwise."""
    return check_beta(beta) * (policy_logps - ref_logps)


def trl_ipo_equivalent_beta(beta: float) -> float:
    """The TRL ``ipo`` beta (tau) whose target 1/(2*tau) equals our optimum h = 1/beta: beta/2.

    With tau = beta/2, TRL's ``(h - 1/(2 tau))^2 = (h - 1/beta)^2 = ipo_g(beta*h) / beta^2``
    (ignoring TRL's per-token length normalisation, which callers must undo or match).
    """
    return check_beta(beta) / 2.0


# --------------------------------------------------------------------------------------------
# The paper's three g (eq. 4)
# --------------------------------------------------------------------------------------------

def dpo_g(x: torch.Tensor) -> torch.Tensor:
    """DPO: ``-log sigmoid(x)``; equals log 2 at x = 0 and decreases without bound below 0."""
    return -F.logsigmoid(x)


def ipo_g(x: torch.Tensor) -> torch.Tensor:
    """IPO in the paper's convention: ``(x - 1)^2``; optimum at x = beta * h = 1, i.e. h = 1/beta.

    The IPO paper (and TRL's ``loss_type="ipo"``) write ``(h - 1/(2*tau))^2``. With tau = beta,
    ``(beta*h - 1)^2 = beta^2 * (h - 1/beta)^2``, so ours is theirs with target 1/beta instead of
    1/(2*beta), times beta^2. TRL additionally divides each log-ratio by the completion length
    for ``ipo``. ``treemdp.losses.trl_ipo_equivalent_beta`` gives the conversion.
    """
    return (x - 1.0) ** 2


def slic_g(x: torch.Tensor) -> torch.Tensor:
    """SLiC: the hinge ``max(0, 1 - x)``; zero (saturated) once beta * h >= 1."""
    return torch.relu(1.0 - x)


register_g("dpo", dpo_g, formula="-log sigmoid(beta*h)", family="paper",
           paper="Rafailov et al. 2023, DPO (eq. 7); Rafailov et al. 2024, eq. 4")
register_g("ipo", ipo_g, formula="(beta*h - 1)^2  [TRL/IPO paper: (h - 1/(2 tau))^2, tau = beta/2]",
           family="paper", paper="Azar et al. 2023, IPO (eq. 17), in Rafailov et al. 2024's eq. 4 form")
register_g("slic", slic_g, formula="max(0, 1 - beta*h)", family="paper",
           paper="Zhao et al. 2023, SLiC-HF; Rafailov et al. 2024, eq. 4")


# --------------------------------------------------------------------------------------------
# GPO: more convex (or not) g (Tang et al. 2024, "Generalized Preference Optimization", Table 1)
# --------------------------------------------------------------------------------------------

def exponential_g(x: torch.Tensor) -> torch.Tensor:
    """GPO exponential: ``exp(-x)``; 1 at x = 0, decreasing, never saturates (like DPO, steeper)."""
    return torch.exp(-x)


def truncated_quadratic_g(x: torch.Tensor) -> torch.Tensor:
    """GPO truncated quadratic: ``max(0, 1 - x)^2``; 1 at x = 0, zero with zero slope for x >= 1."""
    return torch.relu(1.0 - x) ** 2


def savage_g(x: torch.Tensor) -> torch.Tensor:
    """GPO Savage loss: ``1 / (1 + e^x)^2 = sigmoid(-x)^2``; 1/4 at x = 0, bounded in (0, 1).

    Not convex: for very negative x (a confidently wrong pair) it flattens towards 1 and its
    gradient vanishes, so such pairs stop counting (Masnadi-Shirazi & Vasconcelos 2008 built it to
    be robust to outliers).
    """
    return torch.sigmoid(-x) ** 2


_GPO = "Tang et al. 2024, Generalized Preference Optimization (Table 1)"
register_g("exponential", exponential_g, formula="exp(-beta*h)", family="gpo", paper=_GPO)
register_g("truncated_quadratic", truncated_quadratic_g, formula="max(0, 1 - beta*h)^2", family="gpo", paper=_GPO)
register_g("savage", savage_g, formula="1 / (1 + exp(beta*h))^2", family="gpo", paper=_GPO)

LOSSES: dict[str, LossFn] = {name: o.g for name, o in OBJECTIVES.items() if o.family == "paper"}
"""The paper's three g (eq. 4) by name, derived from :data:`OBJECTIVES` (``dpo``, ``ipo``,
``slic``). Every other g-form objective has its ``g`` on its registry entry."""


# --------------------------------------------------------------------------------------------
# Variants that are not a g of beta*h alone
# --------------------------------------------------------------------------------------------

def conservative_logistic(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``-(1 - eps) log sigmoid(x) - eps log sigmoid(-x)``: logistic loss on a label flipped with
    probability eps; minimum at ``x = log((1 - eps)/eps)``."""
    return -(1.0 - epsilon) * F.logsigmoid(x) - epsilon * F.logsigmoid(-x)


@register_objective(
    name="cdpo", family="variant",
    formula="-(1-epsilon) log sigmoid(beta*h) - epsilon log sigmoid(-beta*h)",
    paper="Mitchell 2023, 'A note on DPO with noisy preferences & relationship to IPO' (cDPO)",
    params={"epsilon": Param(0.1, "probability that a preference label is flipped",
                             check_real(0.0, 0.5))})
def cdpo(batch: PreferenceBatch, beta: Beta, epsilon: float) -> torch.Tensor:
    """Conservative DPO: the expected DPO loss when each label is flipped with probability eps.

    Its optimum is finite, ``beta*h = log((1-eps)/eps)`` (where sigmoid(beta*h) = 1 - eps), so like
    IPO it stops pushing h once the pair is "explained". Not TRL's ``robust`` (Chowdhury et al.
    2024): ``robust = [-(1-eps) log sigmoid(x) + eps log sigmoid(-x)] / (1 - 2 eps)`` flips the sign
    of the second term and rescales, an unbiased estimate of the clean DPO loss whose gradient
    never vanishes (no finite optimum). TRL 1.16's ``sigmoid`` ignores ``label_smoothing``, so cDPO
    is not reachable through :func:`trl_loss`; ``aot``/``aot_unpaired`` use this same smoothing.
    """
    return conservative_logistic(beta * batch.h, epsilon)  # [..., B]


@register_objective(
    name="dpop", family="variant",
    formula="-log sigmoid(beta*[h - lam*max(0, log ref_w/pi_w)])",
    paper="Pal et al. 2024, 'Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive'",
    params={"lam": Param(50.0, "weight of the penalty on the chosen log-ratio falling below 0 (lambda)",
                         check_real(0.0))})
def dpop(batch: PreferenceBatch, beta: Beta, lam: float) -> torch.Tensor:
    """DPO-Positive (Smaug): DPO with a penalty, inside the sigmoid, whenever pi(y_w) < ref(y_w).

    With ``u_w = log pi_w/ref_w``, the margin becomes ``h - lam * max(0, -u_w)``; lam = 50 as in
    the paper. With pi(y_w) >= ref(y_w) it equals DPO.
    """
    penalty = torch.relu(-batch.chosen_logratio)  # max(0, log ref_w/pi_w), [..., B]
    return -F.logsigmoid(beta * (batch.h - lam * penalty))


@register_objective(
    name="chipo", family="variant",
    formula="-log sigmoid(clip_[-2 r_max, 2 r_max](beta*[phi(pi_w/ref_w) - phi(pi_l/ref_l)])), phi(z) = z + log z",
    paper="Huang et al. 2024, 'Correcting the Mythos of KL-Regularization: Direct Alignment without "
          "Overoptimization via Chi-Squared Preference Optimization' (Algorithm 1)",
    params={"r_max": Param(1.0, "reward bound R_max; the logit is clipped to [-2 r_max, 2 r_max] (inf: no clip)",
                           check_real(0.0, low_open=True, allow_inf=True))})
def chipo(batch: PreferenceBatch, beta: Beta, r_max: float) -> torch.Tensor:
    """chiPO: DPO with the link ``log z`` replaced by ``phi(z) = z + log z`` on z = pi/ref.

    Implemented as the paper's Algorithm 1: ``-log sigmoid(clip_{2 R_max}(beta*phi(z_w) -
    beta*phi(z_l)))`` with ``clip_R(x) = max(-R, min(R, x))``; ``r_max`` is R_max (default 1,
    rewards in [0, 1]; ``r_max=inf`` drops the clip). Where the clip is active the gradient is 0.
    The ``z`` term (chi^2 regularisation) grows exponentially in the log-ratio; log-ratios above
    ~88 (float32) / ~709 (float64) overflow. At pi = ref the value is log 2 and the gradient in
    u_w is -beta (twice DPO's, since phi'(1) = 2).
    """
    phi_w = torch.exp(batch.chosen_logratio) + batch.chosen_logratio  # phi(pi_w/ref_w), [..., B]
    phi_l = torch.exp(batch.rejected_logratio) + batch.rejected_logratio
    logit = (beta * (phi_w - phi_l)).clamp(-2.0 * r_max, 2.0 * r_max)
    return -F.logsigmoid(logit)


@register_objective(
    name="rpo", family="variant", needs_lengths=True,
    formula="-log sigmoid(beta*h) - alpha * log pi(y_w) / |y_w|  (normalize=false: without / |y_w|)",
    paper="Pang et al. 2024, 'Iterative Reasoning Preference Optimization' (eq. 1, DPO + NLL)",
    params={"alpha": Param(1.0, "weight of the chosen answer's NLL", check_real(0.0)),
            "normalize": Param(True, "divide the NLL by |y_w| (the paper's eq. 1); false: the summed NLL")})
def rpo(batch: PreferenceBatch, beta: Beta, alpha: float, normalize: bool = True) -> torch.Tensor:
    """RPO: DPO plus alpha times the chosen answer's NLL, by default normalised by its length.

    The default (``normalize=True``) is the paper's form: Pang et al.'s eq. 1 divides the chosen
    answer's NLL by its own length (per example). ``normalize=False`` adds the summed NLL
    ``-alpha * log pi(y_w)``: on a tree of depth D, ``rpo(alpha=a, normalize=false)`` equals
    ``rpo(alpha=a*D)``. TRL writes RPO as ``trl_loss(["sigmoid", "sft"], loss_weights=[1, alpha])``,
    whose ``sft`` term is the token mean over the whole batch, ``-sum_b log pi(y_w,b) / sum_b |y_w,b|``;
    it agrees with the default when every chosen answer has the same length (as in the toy tree).
    """
    nll = -batch.policy_chosen  # NLL of y_w, [..., B]
    if normalize:
        nll = batch.per_token(nll, batch.chosen_lengths)  # per token (the paper's eq. 1)
    return dpo_g(beta * batch.h) + alpha * nll


# TRL's loss types register after the objectives above (the registry lists them in this order).
from .trl_losses import F_DIVERGENCES, TRL_LOSS_TYPES, TrlLossType, TrlScores, trl, trl_loss  # noqa: E402

__all__ = [
    # the math
    "dpo_g", "ipo_g", "slic_g", "exponential_g", "truncated_quadratic_g", "savage_g", "LOSSES", "cdpo", "dpop",
    "chipo", "rpo", "conservative_logistic", "get_g", "preference_h", "preference_loss", "implicit_reward",
    "trl_ipo_equivalent_beta",
    # the registry (treemdp.objectives), spec strings (treemdp.specs) and checks (treemdp.settings)
    "OBJECTIVES", "Beta", "GForm", "LossFn", "Objective", "Param", "PreferenceBatch", "describe", "get_objective",
    "loss_spec", "objective_from_g", "objectives_table", "register_g", "register_objective", "check_beta",
    "check_choice", "check_real", "format_value", "parse_spec",
    # TRL's loss types (treemdp.trl_losses)
    "F_DIVERGENCES", "TRL_LOSS_TYPES", "TrlLossType", "TrlScores", "trl", "trl_loss",
]
