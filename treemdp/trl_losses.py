"""TRL 1.16 ``DPOTrainer``'s losses: every ``loss_type``, f-divergence, label smoothing and
weighted combinations, as one registered objective ``trl`` (:func:`trl_loss` builds it from a
``DPOConfig``'s fields).

In TRL (trl/trainer/dpo_trainer.py, ``DPOTrainer._compute_loss``) a config picks f-divergence
scores ``s = f'(pi/ref)`` of each answer's log-ratio (Wang et al. 2024, f-DPO), then sums
``w_k * mean_b(loss_k)`` over the listed loss types; per example, that is ``sum_k w_k * loss_k``.
Each loss type is written here as TRL writes it, independently of :mod:`treemdp.losses`, so the
tests that equate ``trl(loss_type=sigmoid)`` with ``dpo`` compare two computations, not one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn.functional as F

from .objectives import OBJECTIVES, Beta, Objective, Param, PreferenceBatch, register_objective
from .settings import check_choice, check_real


def _smoothed_sigmoid(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """TRL's label-smoothed sigmoid loss ``-(1 - eps) log sigmoid(x) - eps log sigmoid(-x)`` (of
    ``aot``, ``aot_unpaired``); the same as :func:`treemdp.losses.conservative_logistic` (cDPO)."""
    return -(1.0 - epsilon) * F.logsigmoid(x) - epsilon * F.logsigmoid(-x)


def _reverse_kl(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """f'(t) = log t (+1, which cancels): the plain log-ratio, standard DPO."""
    return u


def _forward_kl(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """f'(t) = 1 - 1/t."""
    return 1.0 - torch.exp(-u)


def _js_divergence(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """f'(t) = log(2t/(1+t)) = log 2 + log sigmoid(log t)."""
    return math.log(2.0) + F.logsigmoid(u)


def _alpha_divergence(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """f'(t) = (t^(alpha-1) - 1)/(alpha - 1); log t itself when |alpha - 1| < 1e-6 (TRL's limit).

    As TRL, the exponent (alpha-1)*log t is clamped at 80 (11 in float16) so exp stays finite; TRL
    only supports float16/bfloat16/float32 here (its float64 path raises KeyError); we compute in
    at least float32 and return the input dtype.
    """
    if abs(alpha - 1.0) < 1e-6:
        return u
    exponent = (alpha - 1.0) * u
    wide = exponent.to(torch.promote_types(exponent.dtype, torch.float32))
    clamped = wide.clamp(max=11.0 if u.dtype == torch.float16 else 80.0)
    return (torch.exp(clamped) - 1.0).to(u.dtype) / (alpha - 1.0)


F_DIVERGENCES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "reverse_kl": _reverse_kl, "forward_kl": _forward_kl,
    "js_divergence": _js_divergence, "alpha_divergence": _alpha_divergence,
}


@dataclass(frozen=True)
class TrlScores:
    """What a TRL loss type reads: the batch, f-divergence scores and the smoothing settings."""

    batch: PreferenceBatch
    chosen: torch.Tensor  # s_w = f'(pi_w/ref_w), [..., B]
    rejected: torch.Tensor  # s_l = f'(pi_l/ref_l), [..., B]
    label_smoothing: float
    discopop_tau: float

    @property
    def delta(self) -> torch.Tensor:
        """s_w - s_l (equals h for reverse_kl), [..., B]."""
        return self.chosen - self.rejected

    @property
    def delta_per_token(self) -> torch.Tensor:
        """s_w/|y_w| - s_l/|y_l| (lengths clamped at 1), [..., B]."""
        b = self.batch
        return b.per_token(self.chosen, b.chosen_lengths) - b.per_token(self.rejected, b.rejected_lengths)


@dataclass(frozen=True)
class TrlLossType:
    """One TRL ``loss_type``: ``fn(scores, beta) -> [..., B]`` and what it needs."""

    name: str
    fn: Callable[[TrlScores, Beta], torch.Tensor]
    formula: str
    f_divergence: bool = True  # TRL accepts a non-default f_divergence_type with it
    batch_coupled: bool = False
    needs_lengths: bool = False


#: TRL 1.16 loss types by name (their formulas in TRL's symbols: s = f-divergence score,
#: u = log pi/ref, r = beta*u, eps = label_smoothing, |y| = completion tokens).
TRL_LOSS_TYPES: dict[str, TrlLossType] = {}


def _trl_loss_type(name: str, formula: str, **flags: bool):
    def add(fn):
        TRL_LOSS_TYPES[name] = TrlLossType(name, fn, formula, **flags)
        return fn
    return add


@_trl_loss_type("sigmoid", "-log sigmoid(beta*(s_w - s_l))  (= dpo for reverse_kl; ignores eps)")
def _trl_sigmoid(s: TrlScores, beta: Beta) -> torch.Tensor:
    return -F.logsigmoid(beta * s.delta)


@_trl_loss_type("hinge", "max(0, 1 - beta*(s_w - s_l))  (= slic for reverse_kl)")
def _trl_hinge(s: TrlScores, beta: Beta) -> torch.Tensor:
    return torch.relu(1.0 - beta * s.delta)


@_trl_loss_type("ipo", "(s_w/|y_w| - s_l/|y_l| - 1/(2 beta))^2  (Azar et al. eq. 17, per token)",
                needs_lengths=True)
def _trl_ipo(s: TrlScores, beta: Beta) -> torch.Tensor:
    return (s.delta_per_token - 1.0 / (2.0 * beta)) ** 2


def _bernoulli_kl(x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(x)) || Bernoulli(1 - eps)) from logits, in log space."""
    return (torch.sigmoid(x) * (F.logsigmoid(x) - math.log1p(-epsilon))
            + torch.sigmoid(-x) * (F.logsigmoid(-x) - math.log(epsilon)))


@_trl_loss_type("exo_pair", "KL(Bern(sigmoid(beta*(s_w - s_l))) || Bern(1 - eps)), eps > 0  (Ji et al. 2024, EXO eq. 16)")
def _trl_exo_pair(s: TrlScores, beta: Beta) -> torch.Tensor:
    return _bernoulli_kl(beta * s.delta, s.label_smoothing)


@_trl_loss_type("nca_pair", "-log sigmoid(r_w) - 1/2 log sigmoid(-r_w) - 1/2 log sigmoid(-r_l)  (Chen et al. 2024, NCA)",
                f_divergence=False)
def _trl_nca_pair(s: TrlScores, beta: Beta) -> torch.Tensor:
    r_w, r_l = beta * s.batch.chosen_logratio, beta * s.batch.rejected_logratio
    return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)


@_trl_loss_type("robust", "[-(1-eps) log sigmoid(x) + eps log sigmoid(-x)] / (1 - 2 eps), x = beta*(s_w - s_l), "
                          "eps in [0, 0.5)  (Chowdhury et al. 2024, rDPO)")
def _trl_robust(s: TrlScores, beta: Beta) -> torch.Tensor:
    x, eps = beta * s.delta, s.label_smoothing
    return (-(1.0 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1.0 - 2.0 * eps)


@_trl_loss_type("bco_pair", "-log sigmoid(r_w) - log sigmoid(-r_l)  (Jung et al. 2024, BCO; no running mean in TRL 1.16)",
                f_divergence=False)
def _trl_bco_pair(s: TrlScores, beta: Beta) -> torch.Tensor:
    return -F.logsigmoid(beta * s.batch.chosen_logratio) - F.logsigmoid(-beta * s.batch.rejected_logratio)


@_trl_loss_type("sppo_hard", "(u_w - 1/(2 beta))^2 + (u_l + 1/(2 beta))^2  (Wu et al. 2024, SPPO, hard labels)",
                f_divergence=False)
def _trl_sppo_hard(s: TrlScores, beta: Beta) -> torch.Tensor:
    target = 1.0 / (2.0 * beta)
    return (s.batch.chosen_logratio - target) ** 2 + (s.batch.rejected_logratio + target) ** 2


@_trl_loss_type("aot", "cDPO(beta*(sort_b(pi_w - pi_l) - sort_b(ref_w - ref_l)), eps)  (Melnyk et al. 2024, AOT)",
                f_divergence=False, batch_coupled=True)
def _trl_aot(s: TrlScores, beta: Beta) -> torch.Tensor:
    b = s.batch
    policy_sorted = torch.sort(b.policy_chosen - b.policy_rejected, dim=-1).values  # [..., B]
    ref_sorted = torch.sort(b.ref_chosen - b.ref_rejected, dim=-1).values
    return _smoothed_sigmoid(beta * (policy_sorted - ref_sorted), s.label_smoothing)


@_trl_loss_type("aot_unpaired", "cDPO(beta*(sort_b(u_w) - sort_b(u_l)), eps)  (Melnyk et al. 2024, AOT unpaired)",
                f_divergence=False, batch_coupled=True)
def _trl_aot_unpaired(s: TrlScores, beta: Beta) -> torch.Tensor:
    b = s.batch
    chosen_sorted = torch.sort(b.chosen_logratio, dim=-1).values  # [..., B]
    rejected_sorted = torch.sort(b.rejected_logratio, dim=-1).values
    return _smoothed_sigmoid(beta * (chosen_sorted - rejected_sorted), s.label_smoothing)


@_trl_loss_type("apo_zero", "(1 - sigmoid(r_w)) + sigmoid(r_l)  (D'Oosterlinck et al. 2024, APO eq. 7)",
                f_divergence=False)
def _trl_apo_zero(s: TrlScores, beta: Beta) -> torch.Tensor:
    return torch.sigmoid(-beta * s.batch.chosen_logratio) + torch.sigmoid(beta * s.batch.rejected_logratio)


@_trl_loss_type("apo_down", "sigmoid(r_w) + (1 - sigmoid(beta*(u_w - u_l)))  (D'Oosterlinck et al. 2024, APO eq. 8)",
                f_divergence=False)
def _trl_apo_down(s: TrlScores, beta: Beta) -> torch.Tensor:
    return torch.sigmoid(beta * s.batch.chosen_logratio) + torch.sigmoid(-beta * s.batch.h)


@_trl_loss_type("discopop", "(1 - m) (-log sigmoid(x)) + m exp(-x), m = sigmoid(x/tau), x = beta*(s_w - s_l)  "
                            "(Chan et al. 2024, DiscoPOP eq. 5)")
def _trl_discopop(s: TrlScores, beta: Beta) -> torch.Tensor:
    x = beta * s.delta
    mix = torch.sigmoid(x / s.discopop_tau)  # log-ratio modulated mixing weight, [..., B]
    return (1.0 - mix) * -F.logsigmoid(x) + mix * torch.exp(-x)


@_trl_loss_type("sft", "-sum_b log pi(y_w,b) / sum_b |y_w,b|, the batch's token-mean NLL of the chosen answers",
                batch_coupled=True, needs_lengths=True)
def _trl_sft(s: TrlScores, beta: Beta) -> torch.Tensor:
    b = s.batch
    lengths = torch.broadcast_to(b.chosen_lengths, b.policy_chosen.shape).to(b.policy_chosen.dtype)
    mean_nll = -b.policy_chosen.sum(-1, keepdim=True) / lengths.sum(-1, keepdim=True)  # [..., 1]
    return mean_nll.expand(b.policy_chosen.shape)  # every example carries the batch's value


@_trl_loss_type("sigmoid_norm", "-log sigmoid(beta*(s_w/|y_w| - s_l/|y_l|))", needs_lengths=True)
def _trl_sigmoid_norm(s: TrlScores, beta: Beta) -> torch.Tensor:
    return -F.logsigmoid(beta * s.delta_per_token)


def _check_loss_types(value: Any) -> Union[str, tuple[str, ...]]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"must be a TRL loss type or a list of them, got {value!r}")
    unknown = [n for n in names if n not in TRL_LOSS_TYPES]
    if unknown:
        raise ValueError(f"has unknown TRL loss type {unknown[0]!r}; choose from: {', '.join(TRL_LOSS_TYPES)}")
    return names[0] if len(names) == 1 else tuple(names)


def _check_weights(value: Any) -> Optional[tuple[float, ...]]:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of numbers or none, got {value!r}")
    return tuple(check_real()(w) for w in value)


def _loss_types(loss_type: Union[str, tuple[str, ...]]) -> tuple[str, ...]:
    return (loss_type,) if isinstance(loss_type, str) else loss_type


def _trl_refine(values: Mapping[str, Any]) -> dict[str, bool]:
    """TRL's own checks on a DPOConfig (DPOConfig.__post_init__, DPOTrainer.__init__), and flags."""
    types = [TRL_LOSS_TYPES[name] for name in _loss_types(values["loss_type"])]
    weights, eps = values["loss_weights"], values["label_smoothing"]
    if weights is not None and len(weights) != len(types):
        raise ValueError(f"loss_weights has {len(weights)} weights for {len(types)} loss types")
    if values["f_divergence_type"] != "reverse_kl":
        unsupported = [t.name for t in types if not t.f_divergence]
        if unsupported:
            raise ValueError(f"f_divergence_type={values['f_divergence_type']} is not supported by "
                             f"{', '.join(unsupported)} (TRL allows it only with: "
                             f"{', '.join(t for t, v in TRL_LOSS_TYPES.items() if v.f_divergence)})")
    names = {t.name for t in types}
    if "exo_pair" in names and not 0.0 < eps < 1.0:
        raise ValueError(f"exo_pair needs 0 < label_smoothing < 1 (EXO recommends 1e-3), got {eps!r}")
    if "robust" in names and not 0.0 <= eps < 0.5:
        raise ValueError(f"robust needs 0 <= label_smoothing < 0.5, got {eps!r}")
    return {"batch_coupled": any(t.batch_coupled for t in types),
            "needs_lengths": any(t.needs_lengths for t in types)}


_TRL_DETAILS = "  loss types (s = f'(pi/ref) score, u = log pi/ref, r = beta*u, eps = label_smoothing):\n" + "\n".join(
    f"    {name}: {t.formula}" for name, t in TRL_LOSS_TYPES.items())


@register_objective(
    name="trl", family="trl", refine=_trl_refine, details=_TRL_DETAILS,
    formula="sum_k w_k * loss_k(s_w, s_l), s = f'(pi/ref); TRL 1.16 DPOTrainer loss_type(s)",
    paper="TRL 1.16 DPOTrainer (von Werra et al.); f-DPO: Wang et al. 2024; see each loss type",
    params={
        "loss_type": Param("sigmoid", "a TRL loss type or a list of them", _check_loss_types),
        "loss_weights": Param(None, "one weight per loss type (none: all 1)", _check_weights),
        "label_smoothing": Param(0.0, "eps of exo_pair, robust, aot, aot_unpaired", check_real(0.0, 1.0)),
        "f_divergence_type": Param("reverse_kl", "f-DPO divergence: " + ", ".join(F_DIVERGENCES),
                                   check_choice(*F_DIVERGENCES)),
        "f_alpha_divergence_coef": Param(0.5, "alpha of alpha_divergence", check_real()),
        "discopop_tau": Param(0.05, "temperature of discopop's mixing weight", check_real(0.0, low_open=True)),
    })
def trl(batch: PreferenceBatch, beta: Beta, loss_type, loss_weights, label_smoothing, f_divergence_type,
        f_alpha_divergence_coef, discopop_tau) -> torch.Tensor:
    """TRL 1.16 ``DPOTrainer``'s loss, per example: ``sum_k w_k * loss_k`` (TRL sums w_k * mean)."""
    types = _loss_types(loss_type)
    weights = loss_weights or (1.0,) * len(types)
    f_prime = F_DIVERGENCES[f_divergence_type]
    scores = TrlScores(batch, f_prime(batch.chosen_logratio, f_alpha_divergence_coef),
                       f_prime(batch.rejected_logratio, f_alpha_divergence_coef), label_smoothing, discopop_tau)
    return sum(w * TRL_LOSS_TYPES[name].fn(scores, beta) for name, w in zip(types, weights))


#: The DPOConfig fields :func:`trl_loss` takes, and the ones it refuses (they change the log-probs).
_TRL_REFUSED = {
    "beta": "pass beta to preference_loss (or the objective call), not to trl_loss",
    "ld_alpha": "ld_alpha (LD-DPO) changes how token log-probs are summed; apply it when computing "
                "the sequence log-probs",
    "use_weighting": "use_weighting (WPO) needs per-token probabilities, not only sequence log-probs",
}


def trl_loss(loss_type: Union[str, list[str]] = "sigmoid", **fields: Any) -> Objective:
    """The objective equal to TRL 1.16 ``DPOTrainer``'s loss for this ``DPOConfig``.

    Args:
        loss_type: a TRL loss type (:data:`TRL_LOSS_TYPES`) or a list of them.
        **fields: ``loss_weights``, ``label_smoothing``, ``f_divergence_type``,
            ``f_alpha_divergence_coef``, ``discopop_tau``, as in ``DPOConfig`` (its defaults for
            fields not given). ``ld_alpha=None`` and ``use_weighting=False`` are accepted (the
            defaults); other values raise, as they need more than sequence log-probs.

    Returns:
        An :class:`Objective` (spec ``trl(...)``): per example where TRL's loss is per example;
        for ``aot``, ``aot_unpaired`` and ``sft`` (batch-coupled in TRL) the batch mean equals
        TRL's. Call it with ``chosen_lengths``/``rejected_lengths`` (TRL: completion token counts,
        ``torch.long`` [B]) when a loss type normalises by length (``ipo``, ``sigmoid_norm``,
        ``sft``). ``bco_pair`` in TRL 1.16 has no running reward mean (older TRL had one); nothing
        here keeps state between calls.
    """
    for key, default in (("ld_alpha", None), ("use_weighting", False)):
        if key in fields and fields.pop(key) != default:
            raise ValueError(f"trl_loss: {_TRL_REFUSED[key]}")
    if "beta" in fields:
        raise ValueError(f"trl_loss: {_TRL_REFUSED['beta']}")
    unknown = sorted(set(fields) - set(OBJECTIVES["trl"].params))
    if unknown:
        valid = ", ".join(OBJECTIVES["trl"].params)
        raise ValueError(f"trl_loss: unknown DPOConfig field {unknown[0]!r}; it takes: {valid}")
    return OBJECTIVES["trl"].bind(loss_type=loss_type, **fields)
