"""Direct alignment losses in the unified form of Rafailov et al. (2024), eq. 4.

For a preferred answer y_w and a dispreferred y_l,

    h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)]
    L = g(beta * h)

with one convex ``g`` per algorithm (paper convention):

    DPO   g(x) = -log sigmoid(x)     (Bradley-Terry; Rafailov et al., 2023)
    IPO   g(x) = (x - 1)^2           (Azar et al., 2023, rescaled; see below)
    SLiC  g(x) = max(0, 1 - x)       (hinge; Zhao et al., 2023)

Pseudocode of one DAA step, for a batch of preferences::

    pi_w, pi_l   = sequence log-probs of chosen / rejected under the policy
    ref_w, ref_l = the same under the frozen reference (no gradient)
    loss = mean(g(beta * ((pi_w - ref_w) - (pi_l - ref_l))))
    loss.backward(); optimiser.step()

This module holds only tensor math: the toy track feeds it exact enumerated log-probs, the LLM
track (``treemdp.llm``) summed token log-probs. Both call :func:`preference_loss`.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor], torch.Tensor]


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


#: The one place loss names are looked up. Add a convex g here (or pass a callable).
LOSSES: dict[str, LossFn] = {"dpo": dpo_g, "ipo": ipo_g, "slic": slic_g}


def get_g(loss: Union[str, LossFn]) -> LossFn:
    """Return the ``g`` for a loss name, or ``loss`` itself when it is a callable.

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


def check_beta(beta: float) -> float:
    """Return ``beta`` as a float if it is finite and > 0, else raise ValueError naming it."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a number, got {beta!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return value


def preference_h(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """The log-ratio margin h of eq. 4; every tensor is [batch], result [batch]."""
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss: Union[str, LossFn] = "dpo",
) -> torch.Tensor:
    """Per-example direct alignment loss ``g(beta * h)`` (paper eq. 4).

    Args:
        policy_chosen_logps: log pi(y_w | x), shape [batch].
        policy_rejected_logps: log pi(y_l | x), shape [batch].
        ref_chosen_logps: log ref(y_w | x), shape [batch] (treated as constants by callers).
        ref_rejected_logps: log ref(y_l | x), shape [batch].
        beta: inverse temperature, finite and > 0.
        loss: ``"dpo"``, ``"ipo"``, ``"slic"`` or any callable ``g`` mapping a tensor to a tensor.

    Returns:
        Tensor [batch] of per-example losses; with policy == reference (h = 0) they are
        log 2 (DPO), 1 (IPO) and 1 (SLiC).

    Mapping to TRL's ``DPOTrainer``: ``dpo`` == ``loss_type="sigmoid"`` and ``slic`` ==
    ``loss_type="hinge"`` at the same beta; ``ipo`` differs by a target and a scale (see
    :func:`ipo_g`).
    """
    g = get_g(loss)
    beta = check_beta(beta)
    h = preference_h(policy_chosen_logps, policy_rejected_logps,
                     ref_chosen_logps, ref_rejected_logps)  # paper eq. 4; every tensor is [batch]
    return g(beta * h)  # per-example losses, [batch]


# ----- objectives (interim: the registry lands with the loss zoo) ---------------------------------
import dataclasses as _dc


@_dc.dataclass(frozen=True)
class PreferenceBatch:
    """Sequence log-probs of a batch of preference pairs, each [..., B] (last dim: the pairs)."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None

    @property
    def h(self) -> torch.Tensor:
        return preference_h(self.policy_chosen, self.policy_rejected, self.ref_chosen, self.ref_rejected)


@_dc.dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable
    params: dict = _dc.field(default_factory=dict)
    defaults: dict = _dc.field(default_factory=dict)
    batch_coupled: bool = False

    def __call__(self, batch: PreferenceBatch, beta) -> torch.Tensor:
        return self.fn(batch, beta, **{**self.defaults, **self.params})

    def bind(self, **params) -> "Objective":
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"objective {self.name!r} has no parameter {sorted(unknown)[0]!r}")
        return _dc.replace(self, params={**self.params, **params})

    @property
    def spec(self) -> str:
        changed = {k: v for k, v in self.params.items() if self.defaults.get(k) != v}
        return self.name + ("(" + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())) + ")" if changed else "")


def get_objective(spec) -> Objective:
    if isinstance(spec, Objective):
        return spec
    g = get_g(spec)
    return Objective(spec if isinstance(spec, str) else getattr(g, "__name__", "custom"),
                     lambda batch, beta: g(beta * batch.h))


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, *, beta: float) -> torch.Tensor:
    """The DAA implicit reward r(y) = beta * log(pi(y) / ref(y)), elementwise."""
    return check_beta(beta) * (policy_logps - ref_logps)


def trl_ipo_equivalent_beta(beta: float) -> float:
    """The TRL ``ipo`` beta (tau) whose target 1/(2*tau) equals our optimum h = 1/beta: beta/2.

    With tau = beta/2, TRL's ``(h - 1/(2 tau))^2 = (h - 1/beta)^2 = ipo_g(beta*h) / beta^2``
    (ignoring TRL's per-token length normalisation, which callers must undo or match).
    """
    return check_beta(beta) / 2.0
