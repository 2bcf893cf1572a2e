"""The lab's per-step measurements, in the engine's registry (recorded only by lab phases).

Each is ``fn(logp [S, R, T] float64, ctx) -> [S, R]`` (:func:`treemdp.engine.register_measurement`,
``default=False``) and reads what :func:`treemdp.lab.runner.lab_extras` puts in ``ctx.extra``:

    gold [R, T]        r*(y)                       gold_ref [R]    E_ref[r*]
    win_score [R, T]   G(y) against the run's ref  feature [R, T]  the simple feature f(y)
    beta [R]           the run's beta              ref_probs [R, T] the reference
    proxy [R, T]       r_phi (RLHF; absent for a DAA)   proxy_ref [R]  E_ref[r_phi]

All of them come from one pass over a block (:func:`block_stats`, cached per block): the
probabilities, the log-ratio y = log(pi/ref) and a few expectations, each an ``einsum`` against a
per-run vector.
"""

from __future__ import annotations

import math

import torch

from ..engine import block_log_ratio, block_probs, register_measurement
from ..exact import plog

#: The lab's columns, in order (the engine's ``kl_to_reference``, ``ood_mass`` and ``chosen_log_ratio`` among them).
LAB_MEASUREMENTS = ("gold_reward", "gold_gain", "win_rate", "win_gain", "proxy_gain", "kl_to_reference",
                    "sqrt_kl", "ood_mass", "feature_mean", "spurious_r2", "spurious_r2_ref", "chosen_log_ratio")

_cache: list = [None, None]  # (logp block, its stats)


def _vec(ctx, key: str, like: torch.Tensor) -> torch.Tensor:
    return ctx.extra[key].to(like.device, like.dtype)


def _e(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sum_y p[s, r, y] v[r, y] -> [S, R] (a batched matrix-vector product, no [S, R, T] temporary)."""
    return torch.einsum("srt,rt->sr", p, v)


def block_stats(logp: torch.Tensor, ctx) -> dict:
    """Every lab quantity of a block of steps, [S, R] each (see the module doc and PAPER_NOTES).

    One product with a stack of per-run vectors V [R, T, k] gives every E_pi[v]; the log-ratio and
    the probabilities are the engine's, shared with its own KL and OOD measurements.
    """
    if _cache[0] is logp:
        return _cache[1]
    p = block_probs(logp)
    y = block_log_ratio(logp, ctx)  # log(pi/ref), the implicit reward over beta
    V = _vectors(ctx, logp)  # [R, T, 5]: r*, G, f, f^2, proxy
    E = torch.bmm(p.transpose(0, 1), V).transpose(0, 1)  # [S, R, 5]
    gold, win, mean_f, mean_f2, proxy = E.unbind(-1)
    py = plog(p, y)  # the terms of KL(pi || ref), 0 log 0 = 0
    kl = py.sum(-1)
    f, ref = _vec(ctx, "feature", logp), _vec(ctx, "ref_probs", logp)
    ref_moments = torch.bmm(y.transpose(0, 1), torch.stack([ref, ref * f], -1)).transpose(0, 1)  # E_ref[y], E_ref[f y]
    ref_y, ref_fy = ref_moments.unbind(-1)
    if "proxy" in ctx.extra:  # a reward model
        proxy_gain = proxy - _vec(ctx, "proxy_ref", logp)
    else:  # E_pi - E_ref of beta*log(pi/ref) = beta (KL(pi||ref) + KL(ref||pi))
        proxy_gain = _vec(ctx, "beta", logp) * (kl - ref_y)
    # paper eq. 6 in the toy: R^2 of y on f under pi (E_pi[y] = KL), and under ref
    r2 = _r2(mean_f2 - mean_f ** 2, (py * y).sum(-1) - kl ** 2,
             torch.bmm(py.transpose(0, 1), f[:, :, None])[..., 0].T - mean_f * kl)
    ref_f, ref_f2 = (ref * f).sum(-1), (ref * f * f).sum(-1)
    ref_y2 = torch.bmm((y * y).transpose(0, 1), ref[:, :, None])[..., 0].T
    r2_ref = _r2(ref_f2 - ref_f ** 2, ref_y2 - ref_y ** 2, ref_fy - ref_f * ref_y)
    stats = {"gold_reward": gold, "gold_gain": gold - _vec(ctx, "gold_ref", logp), "win_rate": win,
             "win_gain": win - 0.5, "proxy_gain": proxy_gain, "sqrt_kl": kl.clamp_min(0.0).sqrt(),
             "feature_mean": mean_f, "spurious_r2": r2, "spurious_r2_ref": r2_ref}
    _cache[0], _cache[1] = logp, stats
    return stats


def _r2(var_x: torch.Tensor, var_y: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """cov^2 / (var_x var_y), NaN where either variance vanishes (pi = ref: y is constant)."""
    r2 = cov ** 2 / (var_x * var_y)
    return torch.where((var_x > 1e-10) & (var_y > 1e-10), r2, torch.full_like(r2, math.nan))


def _vectors(ctx, like: torch.Tensor) -> torch.Tensor:
    """The stack V [R, T, 5] of (r*, G, f, f^2, proxy or 0), built once per context."""
    V = ctx.extra.get("_lab_vectors")
    if V is None or V.device != like.device:
        f = ctx.extra["feature"]
        proxy = ctx.extra.get("proxy", torch.zeros_like(f))
        V = torch.stack([ctx.extra["gold"], ctx.extra["win_score"], f, f * f, proxy], -1).to(like.device, like.dtype)
        ctx.extra["_lab_vectors"] = V
    return V


def _register(name: str, doc: str) -> None:
    register_measurement(name, doc, default=False)(lambda logp, ctx: block_stats(logp, ctx)[name])


for _name, _doc in (
        ("gold_reward", "E_pi[r*], exact (over-optimization lab)"),
        ("gold_gain", "E_pi[r*] - E_ref[r*]: the gain over the reference (R(0) = 0)"),
        ("win_rate", "P[r*(y) > r*(y')] + 1/2 P[=], y ~ pi, y' ~ ref: the gold win rate against the reference"),
        ("win_gain", "win_rate - 1/2"),
        ("proxy_gain", "E_pi[r] - E_ref[r] for the run's proxy r: the reward model (RLHF) or this step's "
                       "implicit reward beta*log(pi/ref) (DAA)"),
        ("sqrt_kl", "d = sqrt(KL(pi || ref)), the x axis of Gao et al.'s forms"),
        ("feature_mean", "E_pi[f]: the mean count of the simple feature's action"),
        ("spurious_r2", "R^2 of the implicit reward log(pi/ref) on the simple feature f, answers weighted by pi "
                        "(paper eq. 6 as written: samples from the policy; unstable once pi sits on a few answers)"),
        ("spurious_r2_ref", "the same R^2 with answers weighted by ref: how much of the learned implicit reward "
                            "over the reference's answers the feature explains")):
    _register(_name, _doc)


__all__ = ["LAB_MEASUREMENTS", "block_stats"]
