"""The neighbouring results: CHES from its definition, squeezing and IPO against closed forms, and
small runs of each experiment (the full ones draw figures/phen_*.png)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from treemdp import RNNPolicy, TabularPolicy, TreeMDP, paper_dataset
from treemdp.phenomena import displacement, ipo, squeezing
from treemdp.phenomena.stacked import daa_stacked, sft_stacked
from treemdp.tree import Dataset, Preference


# ----- CHES -----------------------------------------------------------------------------------------------
def ches_by_definition(policy: RNNPolicy, plus: list[int], minus: list[int], normalize: bool) -> float:
    """Razin et al.'s Definition 2 with torch's own GRUCell / LSTMCell fed the policy's weights."""
    H = policy.hidden_size
    cell = {"gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell}[policy.cell_type](policy.embed_size, H).double()
    with torch.no_grad():
        cell.weight_ih.copy_(policy.weight_ih.T)
        cell.weight_hh.copy_(policy.weight_hh.T)
        cell.bias_ih.copy_(policy.bias_ih[0])
        cell.bias_hh.copy_(policy.bias_hh[0])

        def hidden_before_each_token(answer):
            state = None
            token = policy.bos[0]
            out = []
            for a in answer:
                state = cell(token[None], state)
                out.append((state[0] if isinstance(state, tuple) else state)[0])
                token = policy.embed[a]
            return out

        hp, hm = hidden_before_each_token(plus), hidden_before_each_token(minus)
        sp, sm = sum(hp), sum(hm)
        if normalize:
            sp, sm = sp / len(hp), sm / len(hm)
        return float(sp @ sm - sp @ sp)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_ches_matches_its_definition(cell):
    mdp = TreeMDP(3, 3)
    policy = RNNPolicy(mdp, hidden_size=6, cell=cell, seed=4).double()
    pairs = [([1, 1, 0], [0, 0, 0]), ([2, 2, 2], [2, 2, 1]), ([0, 1, 2], [2, 1, 0])]
    chosen = mdp.trajectory_index([p for p, _ in pairs])
    rejected = mdp.trajectory_index([m for _, m in pairs])
    for normalize in (False, True):
        got = displacement.ches(policy, chosen, rejected, normalize=normalize)
        want = [ches_by_definition(policy, p, m, normalize) for p, m in pairs]
        assert got.tolist() == pytest.approx(want, rel=1e-9, abs=1e-12)
    # every answer has `depth` tokens: the normalised score is CHES / depth²
    assert torch.allclose(displacement.ches(policy, chosen, rejected, normalize=True),
                          displacement.ches(policy, chosen, rejected) / 9, atol=1e-12)


def test_ches_is_zero_for_single_token_answers_and_the_token_analogue():
    mdp = TreeMDP(5, 1)
    policy = RNNPolicy(mdp, hidden_size=4, seed=0)
    rows = torch.arange(5)
    assert torch.allclose(displacement.ches(policy, rows, rows.flip(0)), torch.zeros(5, dtype=torch.float64), atol=1e-6)
    W = torch.tensor([[1.0, 1.0, 0.0, -1.0], [0.0, 0.5, 1.0, 0.0]])  # [H=2, b=4]
    assert displacement.token_ches(W, 0, 1) == pytest.approx(1.0 - 1.0)
    assert displacement.predicted_gainer(W, 0, 1) == 3  # W+ − W− = (0, −0.5): token 3 scores 0, token 2 −0.5


def test_rank_correlation_and_shared_prefix():
    assert displacement.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert displacement.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert int(displacement.shared_prefix(torch.tensor([1, 1, 0]), torch.tensor([1, 1, 2]))) == 2
    assert int(displacement.shared_prefix(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 0]))) == 0


def test_displacement_experiments_run_small():
    tokens = displacement.single_token_experiment(seeds=[0, 1], steps=20)
    assert len(tokens) == 8 and set(tokens["pair"]) == {"near-synonyms", "unrelated"}
    assert (tokens["winner"] > 1).all() and tokens["lowest_change"].le(0).all()
    pairs = displacement.ches_experiment(seeds=[0], demos=3, sft_steps=20, steps=10, hidden_size=8)
    assert len(pairs) == 6 and pairs["ches"].notna().all()
    assert np.allclose(pairs["ches_normalized"], pairs["ches"] / 16)  # depth 4
    rho = displacement.ches_correlations(pairs)
    assert list(rho["pairs"]) == [6] and rho["rho_ches"].between(-1, 1).all()


# ----- squeezing -----------------------------------------------------------------------------------------
def test_negative_step_closed_form():
    logits = torch.tensor([3.0, 1.0, 0.5, 0.0, -2.0], dtype=torch.float64)
    probs = torch.softmax(logits, 0)
    for negative in (1, 4):
        lr = 1e-4
        exact = squeezing.negative_step(logits, negative, lr) - torch.log(probs)
        first = squeezing.first_order_negative_step(probs, negative, lr)
        assert torch.allclose(exact, first, rtol=1e-3, atol=1e-10)
        # k != ȳ gains iff π_k > Σπ² − π(ȳ); the argmax gains most
        others = torch.arange(5) != negative
        rule = probs > squeezing.gain_threshold(probs, negative)
        assert torch.equal((exact > 0)[others], rule[others])
        assert int(torch.where(others, exact, -torch.inf).argmax()) == 0
    # closed form at k: η (π_k − Σπ² + π_ȳ)
    assert float(first[0]) == pytest.approx(lr * float(probs[0] - (probs**2).sum() + probs[4]))


def test_negative_gradient_on_the_engine_is_the_closed_form_step():
    mdp = TreeMDP(4, 1)
    data = Dataset(torch.tensor([[0], [2]]), (Preference((0,), (2,)),))
    policy = TabularPolicy(mdp, seed=3, init_scale=1.0)
    logits = policy.logits.detach().double()[0].clone()
    template, params = sft_stacked([policy], [data], steps=0)
    run = daa_stacked(template, params, [data], steps=3, lr=0.5, optimizer="sgd",
                      loss_fn=squeezing.negative_gradient_loss)
    expected = torch.log_softmax(logits, 0)
    for t in range(3):
        expected = squeezing.negative_step(expected, 2, 0.5)  # the logits are log-probs up to a constant
        assert torch.allclose(run.logp[t + 1, 0], expected, atol=1e-12)


def test_squeeze_measures_on_a_hand_case():
    before = torch.tensor([0.5, 0.3, 0.1, 0.1], dtype=torch.float64)
    after = torch.tensor([0.6, 0.25, 0.12, 0.03], dtype=torch.float64)
    m = squeezing.squeeze_measures(torch.stack([before, after]).log()[:, None], torch.tensor([3]))
    assert int(m["argmax"][0, 0]) == 0
    assert float(m["argmax_change"][0, 0]) == pytest.approx(0.1)
    assert float(m["share"][0, 0]) == pytest.approx(0.1 / 0.12)
    assert float(m["squeezed"][0, 0]) == pytest.approx(0.5)  # of answers 1 and 2, answer 1 fell
    assert float(m["peakedness"][0, 0]) == pytest.approx(0.36)


def test_squeezing_experiments_run_small():
    bandit = squeezing.bandit_experiment(classes=20, temperatures=(1.0, 4.0), seeds=[0], quantiles=(0.0, 0.5))
    assert len(bandit) == 4 and bandit["argmax_top_gainer"].all()
    assert (bandit["share"] - bandit["share_first_order"]).abs().max() < 0.05
    tree = squeezing.tree_experiment(seeds=[0], steps=5, sft_steps=10, hidden_size=8, lr=0.01)
    assert set(tree["policy"]) == {"rnn", "tabular"} and len(tree) == 10


# ----- IPO's argument -----------------------------------------------------------------------------------------
def test_ipo_and_dpo_on_a_bandit_follow_their_closed_forms():
    frame = ipo.bandit_experiment(betas=(0.1, 1.0), steps=200)
    assert (frame["h"] - frame["h_closed"]).abs().max() < 1e-9
    assert (frame["p_rejected"] - frame["p_rejected_closed"]).abs().max() < 1e-12
    last = frame[frame["step"] == 200].set_index(["loss", "beta"])
    for beta in (0.1, 1.0):
        assert last.loc[("ipo", beta), "h"] == pytest.approx(1 / beta, rel=1e-9)  # IPO: h = 1/beta
        dpo = frame[(frame["loss"] == "dpo") & (frame["beta"] == beta)]
        assert (np.diff(dpo["p_rejected"]) < 0).all() and (np.diff(dpo["h"]) > 0).all()  # no fixed point
        assert last.loc[("dpo", beta), "p_rejected"] < last.loc[("ipo", beta), "p_rejected"]


def test_dpo_rejected_probability_goes_to_zero_for_every_beta():
    ref = torch.zeros(3, dtype=torch.float64)
    for beta in (0.01, 0.5, 5.0):
        h = ipo.margin_recursion("dpo", beta, lr=0.05 / beta**2, steps=20000)
        x = beta * h[-1]
        assert float(x) == pytest.approx(math.log(2 * 0.05 * 20000), abs=0.2)  # beta h ~ log(2 rate t)
        p_rejected = ipo.bandit_log_probs(ref, 0, 1, h[[200, 2000, 20000]])[:, 1].exp()
        assert p_rejected[2] < p_rejected[1] < p_rejected[0]  # still falling: no finite optimum
    assert ipo.ipo_rejected_at_optimum(ref, 0, 1, 1.0) == pytest.approx(
        math.exp(-0.5) / (math.exp(0.5) + math.exp(-0.5) + 1))


# ----- unseen answers ------------------------------------------------------------------------------------------
def test_rlhf_optimum_with_a_tabular_reward_never_raises_an_unseen_answer():
    from treemdp.phenomena import unseen
    mdp, data = TreeMDP(), paper_dataset()
    reward = unseen.fit_tabular_reward(mdp, data, weight_decay=1e-2)
    mask = unseen.unseen_mask(mdp, data)
    assert int((~mask).sum()) == 2 and torch.all(reward[mask] == 0)
    margin = reward[12] - reward[0]  # stationarity of softplus(-m) + λ(r_w² + r_l²), r_w = -r_l = m/2: σ(-m) = λ m
    assert float(torch.sigmoid(-margin)) == pytest.approx(1e-2 * float(margin), rel=1e-9)
    g = torch.Generator().manual_seed(1)
    ref = torch.log_softmax(torch.randn(27, generator=g, dtype=torch.float64), 0)
    ref[12] = ref[0] = ref.max()  # ref(y_w) = ref(y_l): E_ref[r] = 0, so Z >= 1 (Jensen)
    ref = torch.log_softmax(ref, 0)
    for beta in (0.01, 0.1, 1.0):
        logp = unseen.rlhf_optimum(ref, reward, beta)
        ratios = unseen.unseen_ratios(logp, ref, mask)
        assert torch.allclose(ratios, ratios[0].expand_as(ratios)) and float(ratios[0]) <= 1.0
        # the closed form maximises E_pi[r] - beta KL(pi || ref): random perturbations do worse
        value = lambda lp: float((lp.exp() * (reward - beta * (lp - ref))).sum())  # noqa: E731
        for _ in range(5):
            other = torch.log_softmax(logp + 0.1 * torch.randn(27, generator=g, dtype=torch.float64), 0)
            assert value(other) <= value(logp) + 1e-12 and (beta < 1 or value(other) < value(logp))


def _rlhf_objective(logp: torch.Tensor, ref: torch.Tensor, reward: torch.Tensor, beta: float) -> float:
    """E_π[r] − β KL(π‖ref), with π and ref renormalised in float64."""
    logp, ref = torch.log_softmax(logp.double(), -1), torch.log_softmax(ref.double(), -1)
    return float((logp.exp() * (reward.double() - beta * (logp - ref))).sum())


def test_rlhf_optimum_with_the_lab_gru_reward_is_the_tilted_reference():
    from treemdp.phenomena import unseen
    mdp, data = TreeMDP(), paper_dataset()
    reward = unseen.lab_rewards(mdp, data, "rnn", [0, 1])
    assert reward.shape == (2, 27) and torch.all(reward[:, 12] > reward[:, 0] + 1)  # fits the pair
    mask = unseen.unseen_mask(mdp, data)
    assert float((reward[:, mask] - reward[:, mask].mean(1, keepdim=True)).abs().max()) > 0.1  # it extrapolates
    g = torch.Generator().manual_seed(2)
    ref = torch.log_softmax(torch.randn(27, generator=g, dtype=torch.float64), 0)
    for r in reward:
        for beta in (0.1, 0.5, 2.0):
            logp = unseen.rlhf_optimum(ref, r, beta)
            tilted = ref.exp() * torch.exp(r / beta)
            assert torch.allclose(logp.exp(), tilted / tilted.sum(), rtol=1e-12, atol=1e-300)
            assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-12)
            ratios = unseen.unseen_ratios(logp, ref, mask)  # π/ref = exp(r/β)/Z on every unseen answer
            z = float((ref.exp() * torch.exp(r / beta)).sum())
            assert torch.allclose(ratios, torch.exp(r[mask] / beta) / z, rtol=1e-10)
            best = _rlhf_objective(logp, ref, r, beta)  # the maximum: random perturbations do worse
            for _ in range(5):
                other = logp + 0.2 * torch.randn(27, generator=g, dtype=torch.float64)
                assert _rlhf_objective(other, ref, r, beta) < best


def test_rlhf_on_the_engine_reaches_the_closed_form_with_a_tabular_policy_and_improves_a_gru():
    from treemdp.engine import stack_parameters
    from treemdp.phenomena import unseen
    mdp, data = TreeMDP(), paper_dataset()
    reward = unseen.lab_rewards(mdp, data, "rnn", [0, 1])
    betas = [0.5, 1.0]
    tabular = [TabularPolicy(mdp, seed=s, init_scale=1.0) for s in (3, 4)]
    ref, final = unseen.rlhf_on_engine(mdp, data, tabular[0], stack_parameters(tabular), reward, betas,
                                       steps=800, lr=0.05)
    for r, beta in enumerate(betas):
        optimum = unseen.rlhf_optimum(ref[r], reward[r], beta).exp()
        assert torch.allclose(final[r].exp(), optimum, atol=5e-4)
        start, end = _rlhf_objective(ref[r], ref[r], reward[r], beta), _rlhf_objective(final[r], ref[r], reward[r], beta)
        best = _rlhf_objective(optimum.log(), ref[r], reward[r], beta)
        assert start + 0.5 < end <= best + 1e-9 and best - end < 1e-3
    gru = [RNNPolicy(mdp, hidden_size=8, seed=s) for s in (3, 4)]
    ref, final = unseen.rlhf_on_engine(mdp, data, gru[0], stack_parameters(gru), reward, betas, steps=60, lr=1e-2)
    for r, beta in enumerate(betas):
        start, end = _rlhf_objective(ref[r], ref[r], reward[r], beta), _rlhf_objective(final[r], ref[r], reward[r], beta)
        best = _rlhf_objective(unseen.rlhf_optimum(ref[r], reward[r], beta), ref[r], reward[r], beta)
        assert start + 0.05 < end <= best + 1e-9


def test_unseen_experiment_runs_small():
    from treemdp.phenomena import unseen
    frame = unseen.unseen_experiment(seeds=[0, 1], betas=[0.5], daa_steps=20, rlhf_steps=40)
    assert list(frame["method"].unique()) == list(unseen.METHODS)
    assert len(frame) == 2 * len(unseen.METHODS) and frame["max_ratio"].gt(0).all()
    assert list(frame.columns) == ["method", "beta", "seed", "max_ratio", "raised", "top_unseen", "unseen_mass_ref",
                                   "unseen_mass"]
    assert frame.loc[frame["method"] == "RLHF optimum, per-answer r_φ", "raised"].eq(0).all()
    rlhf = frame[frame["method"].str.startswith("RLHF")]  # every RLHF row starts from the GRU DPO runs' references
    gru_ref = frame[frame["method"] == "DPO, GRU"].set_index("seed")["unseen_mass_ref"]
    np.testing.assert_allclose(rlhf["unseen_mass_ref"], gru_ref[rlhf["seed"]].to_numpy(), rtol=1e-5)
    # the closed-form rows agree with rlhf_optimum on the lab's GRU reward (same seed, same reference)
    mdp, data = TreeMDP(), paper_dataset()
    reward = unseen.lab_rewards(mdp, data, "rnn", [0, 1])
    closed = frame[frame["method"] == "RLHF optimum, GRU r_φ"].set_index("seed")
    mask = unseen.unseen_mask(mdp, data)
    from treemdp.exact import trajectory_log_probs
    from treemdp.training import TrainConfig, train_batch
    from treemdp.reproduce import PAPER
    for s in (0, 1):
        (result,) = train_batch([TrainConfig(**{**PAPER, "daa_steps": 0, "seed": s, "log_every": 1})], keep_history=False)
        ref = trajectory_log_probs(result.reference).double()
        ratios = unseen.unseen_ratios(unseen.rlhf_optimum(ref, reward[s], 0.5), ref, mask)
        assert closed.loc[s, "max_ratio"] == pytest.approx(float(ratios.max()), rel=1e-4)
        assert closed.loc[s, "raised"] == int((ratios > 1 + 1e-9).sum())
