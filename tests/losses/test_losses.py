"""Eq. 4: closed forms, hand-derived gradients, the IPO optimum, the registry, beta checks."""

import math

import pytest
import torch

from treemdp import LOSSES, preference_loss
from treemdp.losses import dpo_g, get_g, implicit_reward, ipo_g, preference_h, slic_g, trl_ipo_equivalent_beta

BETAS = [0.01, 0.1, 0.5, 2.0]


def _random_logps(n, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [(-5 * torch.rand(n, generator=g, dtype=torch.float64)).requires_grad_(requires_grad) for _ in range(4)]


@pytest.mark.parametrize("loss,expected", [("dpo", math.log(2)), ("ipo", 1.0), ("slic", 1.0)])
def test_policy_equals_reference_gives_closed_form(loss, expected):
    pw, pl, _, _ = _random_logps(8, 0)
    out = preference_loss(pw, pl, pw.clone(), pl.clone(), beta=0.3, loss=loss)
    assert out.shape == (8,)
    torch.testing.assert_close(out, torch.full((8,), expected, dtype=torch.float64))


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("loss", ["dpo", "ipo", "slic"])
def test_values_and_gradients_match_hand_derivation(loss, beta):
    pw, pl, rw, rl = _random_logps(64, 1, requires_grad=True)
    out = preference_loss(pw, pl, rw, rl, beta=beta, loss=loss)
    h = ((pw - rw) - (pl - rl)).detach()
    x = beta * h
    value = {"dpo": torch.log1p(torch.exp(-x)), "ipo": (x - 1) ** 2, "slic": torch.clamp(1 - x, min=0)}[loss]
    torch.testing.assert_close(out.detach(), value)
    # dL/dh by hand; dL/d(pi_w) = dL/dh, dL/d(pi_l) = -dL/dh, refs the opposite
    dldh = {"dpo": -beta * torch.sigmoid(-x), "ipo": 2 * beta * (x - 1),
            "slic": torch.where(x < 1, -beta * torch.ones_like(x), torch.zeros_like(x))}[loss]
    out.sum().backward()
    torch.testing.assert_close(pw.grad, dldh)
    torch.testing.assert_close(pl.grad, -dldh)
    torch.testing.assert_close(rw.grad, -dldh)
    torch.testing.assert_close(rl.grad, dldh)


@pytest.mark.parametrize("beta", BETAS)
def test_ipo_optimum_at_h_equals_one_over_beta(beta):
    h = torch.linspace(-3 / beta, 3 / beta, 20001, dtype=torch.float64)
    zero = torch.zeros_like(h)
    values = preference_loss(h, zero, zero, zero, beta=beta, loss="ipo")
    assert abs(h[values.argmin()].item() - 1 / beta) < 6 / beta / 20000 * 2
    # TRL-style (h - 1/(2 tau))^2 with tau = beta/2 has the same optimum and is ipo / beta^2
    tau = trl_ipo_equivalent_beta(beta)
    torch.testing.assert_close((h - 1 / (2 * tau)) ** 2, values / beta**2)


def test_slic_saturates_and_dpo_never_does():
    x = torch.tensor([1.0, 2.0, 10.0])
    assert torch.equal(slic_g(x), torch.zeros(3))
    assert (dpo_g(x) > 0).all()
    assert ipo_g(torch.tensor(1.0)) == 0


def test_registry_and_custom_g():
    assert set(LOSSES) == {"dpo", "ipo", "slic"}
    exp_g = lambda x: torch.exp(-x)  # noqa: E731  (Tang et al.'s exponential loss)
    pw, pl, rw, rl = _random_logps(5, 2)
    torch.testing.assert_close(preference_loss(pw, pl, rw, rl, beta=0.5, loss=exp_g),
                               torch.exp(-0.5 * preference_h(pw, pl, rw, rl)))
    with pytest.raises(ValueError, match="unknown loss 'kto'; choose one of: dpo, ipo, slic"):
        get_g("kto")


@pytest.mark.parametrize("beta", [0, -0.1, float("nan"), float("inf"), "x", None])
def test_bad_beta_rejected(beta):
    z = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        preference_loss(z, z, z, z, beta=beta, loss="dpo")


def test_implicit_reward():
    torch.testing.assert_close(implicit_reward(torch.tensor([-1.0]), torch.tensor([-3.0]), beta=0.5),
                               torch.tensor([1.0]))
