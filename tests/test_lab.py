"""The over-optimization lab's closed forms, each against an independent computation."""

import math

import numpy as np
import pytest
import torch

from treemdp.engine import MEASUREMENTS, PairSchedule, default_measurements
from treemdp.errors import UserError
from treemdp.lab import (BestOfN, LabConfig, bradley_terry_probability, frontier, kl_bound, make_gold, run_lab,
                         sample_pairs, tilted_log_probs, weighted_r2, win_rate, win_scores)
from treemdp.lab.fits import FORMS, fit_form, fit_groups
from treemdp.tree import TreeMDP


def _ref(T, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(T, generator=g, dtype=torch.float64) + 0.05
    reward = torch.randn(T, generator=g, dtype=torch.float64)
    if ties:
        reward = torch.round(reward * 2) / 2  # a handful of distinct values
    return ref / ref.sum(), reward


# ----- best-of-n --------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_best_of_n_sums_to_one_and_respects_the_kl_bound(ties):
    ref, reward = _ref(200, ties=ties)
    bon = BestOfN(ref, reward)
    for n in (1, 2, 3, 10, 100, 10_000):
        p = bon.probs(n)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
        direct = float((p[p > 0] * (p[p > 0] / ref[p > 0]).log()).sum())
        assert bon.kl(n) == pytest.approx(direct, abs=1e-10)  # group-level KL = trajectory-level KL
        assert bon.kl(n) <= kl_bound(n) + 1e-12
    assert bon.kl(1) == pytest.approx(0.0, abs=1e-12)


def test_best_of_n_matches_the_definition_by_enumeration():
    """Over all 4^3 ordered draws of n = 3 from a 4-outcome ref with a tie (first draw wins ties
    among equal rewards in proportion to... every draw order counted): P(best = y)."""
    ref = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    reward = torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    import itertools
    expected = torch.zeros(4, dtype=torch.float64)
    for draw in itertools.product(range(4), repeat=3):
        weight = float(np.prod([ref[i] for i in draw]))
        top = max(float(reward[i]) for i in draw)
        winners = [i for i in draw if float(reward[i]) == top]
        for i in winners:  # a uniformly random one of the tied draws is kept
            expected[i] += weight / len(winners)
    assert torch.allclose(BestOfN(ref, reward).probs(3), expected, atol=1e-12)


def test_best_of_n_two_outcomes_by_hand():
    p, n = 0.3, 5
    bon = BestOfN(torch.tensor([p, 1 - p], dtype=torch.float64), torch.tensor([0.0, 1.0]))
    assert bon.probs(n).tolist() == pytest.approx([p ** n, 1 - p ** n], abs=1e-14)
    kl = p ** n * math.log(p ** n / p) + (1 - p ** n) * math.log((1 - p ** n) / (1 - p))
    assert bon.kl(n) == pytest.approx(kl, abs=1e-14)


def test_best_of_n_kl_approaches_its_bound_on_a_continuum():
    n = 16
    gaps = []
    for outcomes in (4, 64, 4096):
        bon = BestOfN(torch.full((outcomes,), 1.0 / outcomes), torch.arange(outcomes, dtype=torch.float64))
        gaps.append(kl_bound(n) - bon.kl(n))
    assert all(g > 0 for g in gaps) and gaps[0] > gaps[1] > gaps[2] and gaps[2] < 2e-3


def test_best_of_n_expectation_is_the_group_level_sum():
    ref, reward = _ref(50, seed=3, ties=True)
    gold = torch.randn(50, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    bon = BestOfN(ref, reward)
    assert bon.expected(gold, 7) == pytest.approx(float((bon.probs(7) * gold).sum()), abs=1e-12)


# ----- win rate and frontiers ----------------------------------------------------------------------
def test_win_rate_of_the_reference_is_one_half_and_matches_its_definition():
    ref, gold = _ref(40, seed=1, ties=True)
    assert float(win_rate(ref, ref, gold)) == pytest.approx(0.5, abs=1e-14)
    pi = torch.softmax(torch.randn(40, generator=torch.Generator().manual_seed(2), dtype=torch.float64), 0)
    beats = (gold[:, None] > gold[None, :]).double() + 0.5 * (gold[:, None] == gold[None, :]).double()
    assert float(win_rate(pi, ref, gold)) == pytest.approx(float(pi @ beats @ ref), abs=1e-14)
    assert torch.allclose(win_scores(ref, gold), beats @ ref, atol=1e-14)


@pytest.mark.parametrize("kind", ["gold", "win"])
def test_the_frontier_policy_maximises_the_regularised_objective(kind):
    ref, gold = _ref(12, seed=5, ties=(kind == "win"))
    score = gold if kind == "gold" else win_scores(ref, gold)
    lam = 0.3
    objective = lambda logp: float((logp.exp() * (score - lam * (logp - ref.log()))).sum())  # noqa: E731
    best = objective(tilted_log_probs(ref.log(), score, lam))
    logits = torch.zeros(12, dtype=torch.float64, requires_grad=True)  # a numeric optimiser from uniform
    opt = torch.optim.LBFGS([logits], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(logits, 0)
        loss = -(logp.exp() * (score - lam * (logp - ref.log()))).sum()
        loss.backward()
        return loss
    opt.step(closure)
    found = objective(torch.log_softmax(logits.detach(), 0))
    assert found <= best + 1e-12 and found == pytest.approx(best, abs=1e-8)
    table = frontier(ref.log(), gold, kind=kind)
    assert (np.diff(table["kl"]) >= -1e-12).all() and (np.diff(table[f"{kind}_gain"]) >= -1e-9).all()
    assert table.iloc[0][["kl", "gold_gain", "win_gain"]].tolist() == [0.0, 0.0, 0.0]


def test_weighted_r2_is_the_squared_weighted_correlation():
    g = torch.Generator().manual_seed(0)
    x, y, w = (torch.randn(30, generator=g, dtype=torch.float64) for _ in range(3))
    w = w.abs()
    X = torch.stack([torch.ones(30, dtype=torch.float64), x], 1)
    W = torch.diag(w / w.sum())
    coef = torch.linalg.solve(X.T @ W @ X, X.T @ W @ y)
    residual = y - X @ coef
    mean = (w * y).sum() / w.sum()
    r2 = 1 - (w * residual ** 2).sum() / (w * (y - mean) ** 2).sum()
    assert float(weighted_r2(x, y, w)) == pytest.approx(float(r2), abs=1e-12)
    assert math.isnan(float(weighted_r2(x, torch.zeros(30, dtype=torch.float64), w)))


# ----- data ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_bradley_terry_label_frequencies_match_their_probabilities(temperature):
    gold = make_gold(TreeMDP(2, 1), [0.0, 1.0])
    chosen, _ = sample_pairs(torch.tensor([0.5, 0.5]), gold, 4000, temperature=temperature, seed=0)
    p = float(bradley_terry_probability(1.0, 0.0, temperature))
    freq = float((chosen == 1).double().mean())
    assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / 4000) + 1e-12


def test_pairs_of_one_seed_are_nested():
    gold = make_gold(TreeMDP(3, 2), "random", seed=1)
    source = torch.full((9,), 1 / 9)
    small, large = (sample_pairs(source, gold, n, seed=4) for n in (5, 20))
    assert torch.equal(small[0], large[0][:5]) and torch.equal(small[1], large[1][:5])
    assert bool((large[0] != large[1]).all())


# ----- gold rewards ---------------------------------------------------------------------------------
def test_gold_kinds_and_errors():
    mdp = TreeMDP(3, 3)
    additive = make_gold(mdp, "additive", seed=2).values
    w = torch.from_numpy(np.random.default_rng([2, 7919]).standard_normal(mdp.n_states * 3)) / math.sqrt(3)
    paths = mdp.trajectories()
    for row, actions in enumerate(paths.tolist()):  # one reward per (state, action), walked along the path
        state, total = 0, 0.0
        for a in actions:
            total += float(w[state * 3 + a])
            state = mdp.step_state(state, a)
        assert float(additive[row]) == pytest.approx(total, abs=1e-12)
    spurious = make_gold(mdp, "spurious(strength=3)", seed=0)
    assert spurious.support is not None and spurious.support.sum() == 18  # first action 0 or 1
    on, off = spurious.support, ~spurious.support
    corr = lambda m: float(torch.corrcoef(torch.stack([spurious.values[m], spurious.feature[m]]))[0, 1])  # noqa: E731
    assert corr(on) > 0.5 and corr(off) < -0.5
    assert torch.equal(make_gold(mdp, "random", seed=3).values, make_gold(mdp, "random", seed=3).values)
    assert make_gold(mdp, lambda actions: actions.sum(-1)).values.tolist() == paths.sum(-1).double().tolist()
    for bad, message in (("nope", "unknown gold"), ("spurious(size=2)", "no parameter"), ([1.0, 2.0], "has 2 values"),
                         ([math.nan] * 27, "NaN"), ("spurious(action=7)", "integer in")):
        with pytest.raises(UserError, match=message):
            make_gold(mdp, bad)


# ----- the engine's additions --------------------------------------------------------------------------
def test_pair_schedule_covers_every_pair_each_epoch_and_ignores_the_other_runs():
    schedule = PairSchedule([10, 7, 3], 4, seeds=[1, 2, 3])
    assert schedule.steps_per_epoch.tolist() == [3, 2, 1]
    seen = [[] for _ in range(3)]
    for step in range(6):
        index, mask = schedule(step)
        for r in range(3):
            seen[r].append(index[r][mask[r]].tolist())
    for r, n in enumerate((10, 7, 3)):
        spe = int(schedule.steps_per_epoch[r])
        for e in range(6 // spe):
            assert sorted(sum(seen[r][e * spe:(e + 1) * spe], [])) == list(range(n))
    alone = PairSchedule([7], 4, seeds=[2])
    assert [alone(s)[0][0][alone(s)[1][0]].tolist() for s in range(6)] == seen[1]


def test_lab_measurements_are_not_recorded_by_ordinary_runs():
    assert "gold_reward" in MEASUREMENTS and "gold_reward" not in default_measurements()
    assert {"ood_mass", "kl_to_reference"} <= set(default_measurements())


def _tiny(**overrides):
    base = dict(tree="3x2", pairs=6, demos=12, sft_steps=40, steps=30, rm_steps=40, hidden_size=8, rm_hidden_size=8)
    return LabConfig(**{**base, **overrides})


def test_every_measured_quantity_matches_a_direct_computation():
    (result,) = run_lab([_tiny(method="rlhf", steps=5)])
    ref, gold, pi = result.ref_probs, result.gold.values, result.final_probs
    last = result.curve.iloc[-1]
    kl = float((pi * (pi / ref).log()).sum())
    assert last["kl_to_reference"] == pytest.approx(kl, abs=2e-5)
    assert last["sqrt_kl"] == pytest.approx(math.sqrt(kl), abs=1e-4)
    assert last["gold_gain"] == pytest.approx(float(pi @ gold - ref @ gold), abs=2e-5)
    assert last["win_rate"] == pytest.approx(float(win_rate(pi, ref, gold)), abs=2e-5)
    assert last["proxy_gain"] == pytest.approx(float(pi @ result.reward_model - ref @ result.reward_model), abs=1e-4)
    assert last["spurious_r2"] == pytest.approx(float(weighted_r2(result.gold.feature, (pi / ref).log(), pi)), abs=1e-3)
    first = result.curve.iloc[0]
    assert first["win_rate"] == pytest.approx(0.5, abs=1e-6) and first["kl_to_reference"] == pytest.approx(0, abs=1e-6)


def test_tabular_rlhf_reaches_the_closed_form_optimum():
    (result,) = run_lab([_tiny(method="rlhf", policy="tabular", rm="tabular", beta=0.5, steps=600, lr=0.05)])
    optimum = tilted_log_probs(result.ref_probs.log(), result.reward_model, 0.5).exp()
    assert torch.allclose(result.final_probs, optimum, atol=2e-3)


def test_same_config_same_numbers_alone_or_in_a_batch():
    configs = [_tiny(loss=loss, beta=beta, seed=seed, batch_size=4)
               for loss in ("dpo", "ipo") for beta in (0.1, 0.5) for seed in (0, 1)]
    together = run_lab(configs)
    alone = run_lab([configs[5]])[0]
    again = run_lab([configs[5]])[0]
    assert alone.curve.equals(again.curve)
    np.testing.assert_allclose(alone.curve.to_numpy(float), together[5].curve.to_numpy(float), atol=1e-5, equal_nan=True)


# ----- fits -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form,theta", [("rl", (0.9, 0.6)), ("bon", (0.8, 0.25)), ("quad_kl", (0.3, -0.04))])
def test_fits_recover_the_parameters_of_generated_curves(form, theta):
    d = np.linspace(0, 3, 60)
    fitted, rmse = fit_form(d, FORMS[form].predict(d, theta), form)
    assert fitted == pytest.approx(theta, abs=1e-6) and rmse < 1e-6
    rng = np.random.default_rng(0)
    import pandas as pd
    curves = pd.concat([pd.DataFrame({"run": f"r{s}", "g": 0, "sqrt_kl": d,
                                      "win_gain": FORMS[form].predict(d, theta) + 0.01 * rng.standard_normal(60)})
                        for s in range(8)])
    row = fit_groups(curves, ["g"], forms=[form], bootstrap=200).iloc[0]
    assert row["p1_low"] <= theta[0] <= row["p1_high"] and row["p2_low"] <= theta[1] <= row["p2_high"]
    assert row["rmse"] == pytest.approx(0.01, rel=0.2)


def test_lab_config_refuses_bad_input():
    for field, value, message in (("beta", 0.0, "beta"), ("beta", math.nan, "beta"), ("tree", "4by4", "bad tree"),
                                  ("tree", "1x3", "branching"), ("loss", "nope", "unknown loss"),
                                  ("method", "ppo", "unknown method"), ("label_temperature", -1.0, "label_temperature"),
                                  ("pairs", 0, "pairs")):
        with pytest.raises(UserError, match=message):
            LabConfig(**{field: value}).validate()
