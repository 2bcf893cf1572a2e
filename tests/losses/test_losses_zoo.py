"""The objective zoo: closed forms, hand-derived gradients, optima, convention mappings, broadcasting."""

import math

import pytest
import torch
import torch.nn.functional as F

from treemdp.losses import (LOSSES, OBJECTIVES, TRL_LOSS_TYPES, PreferenceBatch, conservative_logistic,
                            get_objective, preference_loss, trl_ipo_equivalent_beta, trl_loss)

LOG2 = math.log(2)
BETAS = [0.05, 0.5, 2.0]


def random_batch(shape, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    logps = [(-6 * torch.rand(shape, generator=g, dtype=torch.float64)).requires_grad_(requires_grad)
             for _ in range(4)]
    lengths = torch.randint(1, 9, (2, shape[-1]), generator=g)  # torch.long [B], like TRL's
    return logps, lengths[0], lengths[1]


def call(spec, logps, beta, len_w=None, len_l=None):
    return preference_loss(*logps, beta=beta, loss=spec, chosen_lengths=len_w, rejected_lengths=len_l)


# ---- value and gradient at the reference (policy == reference, so every log-ratio u is 0) --------
# spec -> (value, dL/dpi_w, dL/dpi_l) of out.sum(), as functions of beta, pi_w, L_w, L_l, batch size B.
EPS = 1e-3
AT_REFERENCE = {
    "dpo": (lambda b, p, Lw, Ll, B: LOG2, lambda b, p, Lw, Ll, B: -b / 2, lambda b, p, Lw, Ll, B: b / 2),
    "ipo": (lambda *a: 1.0, lambda b, *a: -2 * b, lambda b, *a: 2 * b),
    "slic": (lambda *a: 1.0, lambda b, *a: -b, lambda b, *a: b),
    "exponential": (lambda *a: 1.0, lambda b, *a: -b, lambda b, *a: b),
    "truncated_quadratic": (lambda *a: 1.0, lambda b, *a: -2 * b, lambda b, *a: 2 * b),
    "savage": (lambda *a: 0.25, lambda b, *a: -b / 4, lambda b, *a: b / 4),
    "cdpo(epsilon=0.2)": (lambda *a: LOG2, lambda b, *a: -b * 0.6 / 2, lambda b, *a: b * 0.6 / 2),
    "dpop": (lambda *a: LOG2, lambda b, *a: -b / 2, lambda b, *a: b / 2),  # relu'(0) = 0: no penalty
    "chipo": (lambda *a: LOG2, lambda b, *a: -b, lambda b, *a: b),  # phi'(1) = 2: twice DPO
    "rpo(alpha=0.5)": (lambda b, p, Lw, Ll, B: LOG2 - 0.5 * p / Lw, lambda b, p, Lw, Ll, B: -b / 2 - 0.5 / Lw,
                       lambda b, *a: b / 2),
    # every TRL loss type, by hand (u = 0, s = u for reverse_kl)
    "trl": (lambda *a: LOG2, lambda b, *a: -b / 2, lambda b, *a: b / 2),
    "trl(loss_type=hinge)": (lambda *a: 1.0, lambda b, *a: -b, lambda b, *a: b),
    "trl(loss_type=ipo)": (lambda b, *a: 1 / (4 * b * b), lambda b, p, Lw, Ll, B: -1 / (b * Lw),
                           lambda b, p, Lw, Ll, B: 1 / (b * Ll)),
    f"trl(loss_type=exo_pair, label_smoothing={EPS})": (
        lambda *a: -LOG2 - 0.5 * math.log(EPS * (1 - EPS)),
        lambda b, *a: -b * math.log((1 - EPS) / EPS) / 4, lambda b, *a: b * math.log((1 - EPS) / EPS) / 4),
    "trl(loss_type=nca_pair)": (lambda *a: 2 * LOG2, lambda b, *a: -b / 4, lambda b, *a: b / 4),
    "trl(loss_type=robust, label_smoothing=0.2)": (lambda *a: LOG2, lambda b, *a: -b / (2 * 0.6),
                                                   lambda b, *a: b / (2 * 0.6)),
    "trl(loss_type=bco_pair)": (lambda *a: 2 * LOG2, lambda b, *a: -b / 2, lambda b, *a: b / 2),
    "trl(loss_type=sppo_hard)": (lambda b, *a: 1 / (2 * b * b), lambda b, *a: -1 / b, lambda b, *a: 1 / b),
    "trl(loss_type=aot)": (lambda *a: LOG2, None, None),  # sorting ties at u = 0: no gradient check
    "trl(loss_type=aot_unpaired)": (lambda *a: LOG2, None, None),
    "trl(loss_type=apo_zero)": (lambda *a: 1.0, lambda b, *a: -b / 4, lambda b, *a: b / 4),
    "trl(loss_type=apo_down)": (lambda *a: 1.0, lambda b, *a: 0.0, lambda b, *a: b / 4),
    "trl(loss_type=discopop, discopop_tau=0.2)": (
        lambda *a: (LOG2 + 1) / 2, lambda b, *a: b * ((1 - LOG2) / 0.8 - 0.75),
        lambda b, *a: -b * ((1 - LOG2) / 0.8 - 0.75)),
    "trl(loss_type=sft)": (lambda b, p, Lw, Ll, B: -p.sum() / Lw.sum(), lambda b, p, Lw, Ll, B: -B / Lw.sum(),
                           lambda *a: 0.0),
    "trl(loss_type=sigmoid_norm)": (lambda *a: LOG2, lambda b, p, Lw, Ll, B: -b / (2 * Lw),
                                    lambda b, p, Lw, Ll, B: b / (2 * Ll)),
}


def test_every_objective_and_trl_loss_type_has_a_closed_form():
    names = {get_objective(spec).name for spec in AT_REFERENCE}
    assert set(OBJECTIVES) <= names
    trl_types = {t for spec in AT_REFERENCE if spec.startswith("trl")
                 for t in [get_objective(spec).values["loss_type"]]}
    assert trl_types == set(TRL_LOSS_TYPES)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("spec", list(AT_REFERENCE))
def test_value_and_gradient_at_reference(spec, beta):
    (pi_w, pi_l, _, _), len_w, len_l = random_batch((7,), seed=1)
    pi_w, pi_l = pi_w.clone().requires_grad_(True), pi_l.clone().requires_grad_(True)
    out = call(spec, [pi_w, pi_l, pi_w.detach().clone(), pi_l.detach().clone()], beta, len_w, len_l)
    value, d_w, d_l = AT_REFERENCE[spec]
    args = (beta, pi_w.detach(), len_w.double(), len_l.double(), 7)
    torch.testing.assert_close(out.detach(), torch.broadcast_to(torch.as_tensor(value(*args), dtype=torch.float64),
                                                                (7,)))
    if d_w is None:
        return
    out.sum().backward()
    for leaf, expected in ((pi_w, d_w(*args)), (pi_l, d_l(*args))):
        grad = torch.zeros(7, dtype=torch.float64) if leaf.grad is None else leaf.grad
        torch.testing.assert_close(grad, torch.broadcast_to(torch.as_tensor(expected, dtype=torch.float64), (7,)))


# ---- hand-derived gradients away from the reference -----------------------------------------------
def hand_gradients(spec, logps, beta, len_w):
    """dL/d(pi_w, pi_l, ref_w, ref_l) per example, derived by hand."""
    pi_w, pi_l, ref_w, ref_l = (x.detach() for x in logps)
    u_w, u_l = pi_w - ref_w, pi_l - ref_l
    x = beta * (u_w - u_l)
    objective = get_objective(spec)
    if objective.g is not None:  # g(beta*h): dL/dh = beta * g'(x)
        g_prime = {"dpo": -torch.sigmoid(-x), "ipo": 2 * (x - 1), "slic": -(x < 1).double(),
                   "exponential": -torch.exp(-x), "truncated_quadratic": -2 * torch.relu(1 - x),
                   "savage": -2 * torch.sigmoid(-x) ** 2 * torch.sigmoid(x)}[spec]
        d_h = beta * g_prime
        return d_h, -d_h, -d_h, d_h
    if objective.name == "cdpo":
        eps = objective.values["epsilon"]
        d_h = beta * (-(1 - eps) * torch.sigmoid(-x) + eps * torch.sigmoid(x))
        return d_h, -d_h, -d_h, d_h
    if objective.name == "dpop":
        lam = objective.values["lam"]
        inner = beta * (u_w - u_l - lam * torch.relu(-u_w))
        s = torch.sigmoid(-inner)
        d_uw = -s * beta * (1 + lam * (u_w < 0).double())
        return d_uw, s * beta, -d_uw, -s * beta
    if objective.name == "chipo":
        r_max = objective.values["r_max"]
        logit = beta * (torch.exp(u_w) + u_w - torch.exp(u_l) - u_l)
        s = torch.sigmoid(-logit) * (logit.abs() < 2 * r_max).double()
        d_uw, d_ul = -s * beta * (torch.exp(u_w) + 1), s * beta * (torch.exp(u_l) + 1)
        return d_uw, d_ul, -d_uw, -d_ul
    if objective.name == "rpo":
        alpha = objective.values["alpha"]
        d_h = -beta * torch.sigmoid(-x)
        return d_h - alpha / len_w.double(), -d_h, -d_h, d_h
    raise AssertionError(spec)


HAND = ["dpo", "ipo", "slic", "exponential", "truncated_quadratic", "savage", "cdpo", "cdpo(epsilon=0.4)",
        "dpop", "dpop(lam=2)", "chipo", "chipo(r_max=0.3)", "chipo(r_max=inf)", "rpo", "rpo(alpha=0.3)"]


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("spec", HAND)
def test_gradients_match_hand_derivation(spec, beta):
    logps, len_w, len_l = random_batch((64,), seed=2, requires_grad=True)
    logps[0] = (logps[0].detach() * 0.3).requires_grad_(True)  # keep pi/ref moderate for chipo's exp link
    out = call(spec, logps, beta, len_w, len_l)
    out.sum().backward()
    for leaf, expected in zip(logps, hand_gradients(spec, logps, beta, len_w)):
        torch.testing.assert_close(leaf.grad, expected)


# ---- optima, saturation and convention mappings ----------------------------------------------------
def margin_batch(h, u_w=None):
    """A batch with the given margins h (and chosen log-ratios u_w, default 0): pi_l = -h + u_w."""
    zero = torch.zeros_like(h)
    u_w = zero if u_w is None else u_w
    return [u_w, u_w - h, zero, zero]


@pytest.mark.parametrize("epsilon", [0.05, 0.2, 0.4])
def test_cdpo_optimum_is_finite_and_robust_has_none(epsilon):
    beta = 0.5
    h = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    cdpo = call(f"cdpo(epsilon={epsilon})", margin_batch(h), beta)
    best = h[cdpo.argmin()].item() * beta
    assert abs(best - math.log((1 - epsilon) / epsilon)) < 2e-3
    robust = call(f"trl(loss_type=robust, label_smoothing={epsilon})", margin_batch(h), beta)
    assert (robust.diff() < 0).all()  # decreasing everywhere: no finite optimum
    # mapping: robust = (cdpo + 2 eps log sigmoid(-x)) / (1 - 2 eps), x = beta*h
    torch.testing.assert_close(robust, (cdpo + 2 * epsilon * F.logsigmoid(-beta * h)) / (1 - 2 * epsilon))


def test_exo_pair_shares_cdpo_optimum():
    eps, beta = 0.1, 1.0
    h = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    exo = call(f"trl(loss_type=exo_pair, label_smoothing={eps})", margin_batch(h), beta)
    assert abs(h[exo.argmin()].item() - math.log((1 - eps) / eps)) < 2e-3
    assert exo.min().item() == pytest.approx(0.0, abs=1e-7)


def test_gpo_saturation_and_shape():
    x = torch.tensor([1.0, 2.0, 50.0], dtype=torch.float64)
    batch = margin_batch(x)
    assert torch.equal(call("truncated_quadratic", batch, 1.0), torch.zeros(3, dtype=torch.float64))
    assert (call("exponential", batch, 1.0) > 0).all()
    far = torch.tensor([-40.0, 40.0], dtype=torch.float64)
    torch.testing.assert_close(call("savage", margin_batch(far), 1.0), torch.tensor([1.0, 0.0], dtype=torch.float64),
                               atol=1e-15, rtol=0)  # bounded: confidently wrong pairs cost at most 1


def test_dpop_penalty_sits_inside_the_sigmoid():
    h = torch.tensor([0.5, 0.5, 2.0], dtype=torch.float64)
    u_w = torch.tensor([0.3, -0.2, -1.0], dtype=torch.float64)
    beta, lam = 0.5, 50.0
    out = call("dpop", margin_batch(h, u_w), beta)
    torch.testing.assert_close(out, -F.logsigmoid(beta * (h - lam * torch.relu(-u_w))))
    torch.testing.assert_close(out[0], call("dpo", margin_batch(h, u_w), beta)[0])  # pi_w >= ref_w: DPO
    outside = -F.logsigmoid(beta * h) + beta * lam * torch.relu(-u_w)  # the other reading: a penalty added
    assert not torch.allclose(out[1:], outside[1:])


def test_chipo_clip_stops_the_gradient():
    beta, r_max = 1.0, 0.5
    u = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64, requires_grad=True)  # u_w; u_l = 0
    zero = torch.zeros(3, dtype=torch.float64)
    out = call(f"chipo(r_max={r_max})", [u, zero, zero, zero], beta)
    logit = beta * (torch.exp(u) + u - 1.0)
    torch.testing.assert_close(out, -F.logsigmoid(logit.clamp(max=2 * r_max)))
    out.sum().backward()
    assert u.grad[0] < 0 and u.grad[1] == 0 and u.grad[2] == 0  # clip active for logit > 2 r_max


def test_rpo_is_dpo_plus_per_token_nll_and_trl_rpo_when_lengths_are_equal():
    (pi_w, pi_l, ref_w, ref_l), len_w, len_l = random_batch((6,), seed=3)
    logps, alpha, beta = [pi_w, pi_l, ref_w, ref_l], 0.7, 0.2
    ours = call(f"rpo(alpha={alpha})", logps, beta, len_w, len_l)
    torch.testing.assert_close(ours, call("dpo", logps, beta) - alpha * pi_w / len_w)
    same = torch.full_like(len_w, 5)
    trl_rpo = trl_loss(["sigmoid", "sft"], loss_weights=[1.0, alpha])
    torch.testing.assert_close(call(f"rpo(alpha={alpha})", logps, beta, same, same).mean(),
                               call(trl_rpo, logps, beta, same, same).mean())
    assert not torch.allclose(ours.mean(), call(trl_rpo, logps, beta, len_w, len_l).mean())  # lengths differ


@pytest.mark.parametrize("beta", BETAS)
def test_paper_losses_map_to_trl(beta):
    logps, len_w, len_l = random_batch((9,), seed=4)
    torch.testing.assert_close(call("dpo", logps, beta), call("trl", logps, beta))
    torch.testing.assert_close(call("slic", logps, beta), call("trl(loss_type=hinge)", logps, beta))
    ones = torch.ones_like(len_w)  # TRL's ipo normalises by length; with length 1 only beta maps
    torch.testing.assert_close(call("ipo", logps, beta),
                               beta ** 2 * call("trl(loss_type=ipo)", logps, trl_ipo_equivalent_beta(beta), ones, ones))
    # TRL 1.16's sigmoid ignores label_smoothing; cDPO is ours
    torch.testing.assert_close(call("trl(label_smoothing=0.2)", logps, beta), call("dpo", logps, beta))
    assert not torch.allclose(call("cdpo(epsilon=0.2)", logps, beta), call("dpo", logps, beta))


def test_aot_mixes_the_batch_and_sft_is_the_token_mean():
    logps, len_w, len_l = random_batch((5,), seed=5)
    aot = call("trl(loss_type=aot)", logps, 0.5, len_w, len_l)
    shuffled = [x[torch.tensor([3, 0, 4, 1, 2])] for x in logps]
    torch.testing.assert_close(call("trl(loss_type=aot)", shuffled, 0.5), aot)  # order-free: sorted pairs
    policy = torch.sort(logps[0] - logps[1]).values
    ref = torch.sort(logps[2] - logps[3]).values
    torch.testing.assert_close(aot, conservative_logistic(0.5 * (policy - ref), 0.0))
    sft = call("trl(loss_type=sft)", logps, 0.5, len_w, len_l)
    torch.testing.assert_close(sft, torch.full((5,), (-logps[0].sum() / len_w.sum()).item(), dtype=torch.float64))


# ---- stacked runs: [R, B] with one beta per run equals R separate calls ----------------------------
STACKED = sorted(OBJECTIVES) + [f"trl(loss_type={t}{', label_smoothing=0.01' if t == 'exo_pair' else ''})"
                                for t in TRL_LOSS_TYPES] + [
    "trl(loss_type=[sigmoid, sft], loss_weights=[1, 0.3], f_divergence_type=js_divergence)",
    "trl(loss_type=ipo, f_divergence_type=alpha_divergence, f_alpha_divergence_coef=0.3)", "chipo(r_max=inf)"]


@pytest.mark.parametrize("spec", STACKED)
def test_stacked_runs_equal_separate_calls(spec):
    logps, len_w, len_l = random_batch((3, 6), seed=6)
    logps[0] = logps[0] * 0.3  # moderate log-ratios for the exp links
    betas = torch.tensor([[0.05], [0.3], [1.5]], dtype=torch.float64)  # [R, 1]
    stacked = call(spec, logps, betas, len_w, len_l)
    assert stacked.shape == (3, 6)
    for r in range(3):
        alone = call(spec, [x[r] for x in logps], float(betas[r]), len_w, len_l)
        torch.testing.assert_close(stacked[r], alone, rtol=1e-12, atol=1e-12)


def test_stacked_lengths_may_differ_per_run():
    logps, len_w, len_l = random_batch((2, 4), seed=7)
    lengths = torch.stack([len_w, len_l])  # [R, B]
    stacked = call("trl(loss_type=[sigmoid_norm, sft])", logps, 0.3, lengths, lengths.flip(0))
    for r in range(2):
        torch.testing.assert_close(stacked[r], call("trl(loss_type=[sigmoid_norm, sft])", [x[r] for x in logps], 0.3,
                                                    lengths[r], lengths.flip(0)[r]))


# ---- the registry's bookkeeping --------------------------------------------------------------------
def test_losses_is_derived_from_the_registry():
    assert LOSSES == {name: OBJECTIVES[name].g for name in ("dpo", "ipo", "slic")}


def test_flags():
    assert {name for name, o in OBJECTIVES.items() if o.needs_lengths} == {"rpo"}
    assert not any(o.batch_coupled for o in OBJECTIVES.values())
    assert get_objective("trl(loss_type=[sigmoid, aot])").batch_coupled
    assert get_objective("trl(loss_type=sigmoid_norm)").needs_lengths
    assert not get_objective("trl(loss_type=nca_pair)").needs_lengths


def test_missing_lengths_are_named():
    logps, _, _ = random_batch((3,), seed=8)
    for spec in ["rpo", "trl(loss_type=ipo)", "trl(loss_type=sft)"]:
        with pytest.raises(ValueError, match=r"needs chosen_lengths and rejected_lengths"):
            call(spec, logps, 0.1)


@pytest.mark.parametrize("beta", [0, -1.0, float("nan"), float("inf"), "x", None])
def test_bad_beta_rejected_by_every_objective(beta):
    batch = PreferenceBatch(*random_batch((2,), seed=9)[0])
    for objective in OBJECTIVES.values():
        with pytest.raises(ValueError, match="beta"):
            objective(batch, beta)


def test_batch_shapes_are_checked():
    with pytest.raises(ValueError, match="do not broadcast"):
        PreferenceBatch(torch.zeros(3), torch.zeros(4), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="policy_rejected must be a tensor"):
        PreferenceBatch(torch.zeros(3), [0.0], torch.zeros(3), torch.zeros(3))
