"""The theory tools (treemdp.theory) against closed forms and independent computations."""

from __future__ import annotations

import pytest
import torch

from treemdp import RNNPolicy, TreeMDP, in_distribution_mask, paper_dataset, preference_h, preference_loss
from treemdp.exact import trajectory_log_probs
from treemdp.tree import make_dataset
from treemdp import theory


@pytest.fixture(scope="module")
def trained():
    """A GRU policy and a reference that differ (two seeds), as float64 log-probs."""
    mdp = TreeMDP()
    with torch.no_grad():
        logp = trajectory_log_probs(RNNPolicy(mdp, hidden_size=8, seed=1)).double()
        ref = trajectory_log_probs(RNNPolicy(mdp, hidden_size=8, seed=2)).double()
    return mdp, torch.log_softmax(logp, 0), torch.log_softmax(ref, 0)


def losses(logp, ref, mdp, data, beta):
    w, l = mdp.trajectory_index(data.chosen()), mdp.trajectory_index(data.rejected())
    return torch.stack([preference_loss(logp[w], logp[l], ref[w], ref[l], beta=beta, loss=g).mean()
                        for g in ("dpo", "ipo", "slic")])


def test_query_matrix_rank_and_null_space():
    mdp, data = TreeMDP(), paper_dataset()
    Q = theory.query_matrix(mdp, data)
    assert Q.shape == (1, 27) and Q[0, 12] == 1 and Q[0, 0] == -1 and Q.abs().sum() == 2
    assert theory.query_rank(Q) == 1
    basis = theory.null_space(Q)
    assert basis.shape == (27, 26)
    assert torch.allclose(Q @ basis, torch.zeros(1, 26, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(basis.T @ basis, torch.eye(26, dtype=torch.float64), atol=1e-12)
    # pairwise data never see the all-ones vector: three pairs on a cycle have rank 2, not 3
    cycle = make_dataset(mdp, [[0, 0, 0]], [{"chosen": [0, 0, 0], "rejected": [1, 1, 1]},
                                            {"chosen": [1, 1, 1], "rejected": [2, 2, 2]},
                                            {"chosen": [2, 2, 2], "rejected": [0, 0, 0]}])
    Q3 = theory.query_matrix(mdp, cycle)
    assert theory.query_rank(Q3) == 2
    ones = torch.ones(27, dtype=torch.float64)
    assert torch.allclose(Q3 @ ones, torch.zeros(3, dtype=torch.float64))


def test_margins_are_preference_h(trained):
    mdp, logp, ref = trained
    data = paper_dataset()
    w, l = mdp.trajectory_index(data.chosen()), mdp.trajectory_index(data.rejected())
    assert torch.allclose(theory.margins(theory.query_matrix(mdp, data), logp, ref),
                          preference_h(logp[w], logp[l], ref[w], ref[l]), atol=1e-12)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_equal_loss_pair_has_equal_loss_and_different_ood_mass(trained, beta):
    mdp, logp, ref = trained
    data = paper_dataset()
    inside = in_distribution_mask(mdp, data)
    for onto in (None, int(mdp.trajectory_index([[1, 1, 2]])[0])):
        pair = theory.equal_loss_pair(logp, inside, low=0.01, high=0.99, onto=onto)
        assert pair.ood_low == pytest.approx(0.01, abs=1e-12) and pair.ood_high == pytest.approx(0.99, abs=1e-12)
        # the same two distributions as actual policies, enumerated by the library's tree walk
        a = trajectory_log_probs(theory.tabular_from_log_probs(mdp, pair.low)).detach()
        b = trajectory_log_probs(theory.tabular_from_log_probs(mdp, pair.high)).detach()
        assert torch.allclose(a, pair.low, atol=1e-10) and torch.allclose(b, pair.high, atol=1e-10)
        assert torch.allclose(losses(a, ref, mdp, data, beta), losses(b, ref, mdp, data, beta), atol=1e-6, rtol=0)
        assert torch.allclose(losses(a, ref, mdp, data, beta), losses(logp, ref, mdp, data, beta), atol=1e-6, rtol=0)
    # with `onto`, that one trajectory takes every gain: the other OOD trajectories lose
    onto = int(mdp.trajectory_index([[1, 1, 2]])[0])
    moved = theory.with_ood_mass(logp, inside, 0.9, onto=onto)
    others = ~inside
    others[onto] = False
    assert float(moved.exp()[others].sum()) < float(logp.exp()[others].sum())


def test_any_null_space_move_keeps_the_loss(trained):
    mdp, logp, ref = trained
    data = make_dataset(mdp, [[0, 0, 0]], [{"chosen": [1, 1, 0], "rejected": [0, 0, 0]},
                                           {"chosen": [2, 2, 2], "rejected": [1, 1, 0]}])
    Q = theory.query_matrix(mdp, data)
    v = torch.randn(27, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    moved = theory.null_space_move(logp, Q, v)
    assert float(moved.logsumexp(0)) == pytest.approx(0.0, abs=1e-12)
    assert not torch.allclose(moved, logp, atol=1e-2)
    assert torch.allclose(losses(moved, ref, mdp, data, 0.3), losses(logp, ref, mdp, data, 0.3), atol=1e-9, rtol=0)


def test_bad_targets_are_user_errors(trained):
    from treemdp.errors import UserError
    mdp, logp, _ = trained
    inside = in_distribution_mask(mdp, paper_dataset())
    with pytest.raises(UserError):
        theory.with_ood_mass(logp, inside, 1.0)
    with pytest.raises(UserError):
        theory.with_ood_mass(logp, inside, 0.5, onto=12)  # the chosen trajectory is in the data


@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_soft_q_view_of_a_policy(trained, beta):
    mdp, logp, ref = trained
    view = theory.soft_q_of_policy(logp, ref, mdp, beta)
    # V = beta * logsumexp(Q / beta), written out
    for q, v in zip(view.Q, view.V):
        assert torch.allclose(v, beta * torch.log(torch.exp(q / beta).sum(-1)), atol=1e-10)
    assert float(view.V[0][0]) == pytest.approx(0.0, abs=1e-10)
    # the backup returns the policy's own next-action distributions, read through the RNN's step interface
    policy = RNNPolicy(mdp, hidden_size=8, seed=1).double()
    prefixes = [torch.zeros(1, 0, dtype=torch.long), TreeMDP(3, 1).trajectories(), TreeMDP(3, 2).trajectories()]
    with torch.no_grad():
        for t, prefix in enumerate(prefixes):
            assert torch.allclose(view.log_pi[t], policy.action_log_probs(prefix), atol=1e-6)
    # implied per-token rewards reproduce beta * log(pi/ref) along every trajectory
    assert torch.allclose(view.trajectory_sums(view.token_rewards), beta * (logp - ref), atol=1e-10)
    # bootstrapping term: Q = r + beta log ref + V(s'), with r = 0 before the last token
    sparse = [q - beta * lr - boot for q, lr, boot in zip(view.Q, view.log_ref, view.bootstrap)]
    assert all(torch.allclose(x, torch.zeros_like(x), atol=1e-10) for x in sparse[:-1])
    assert torch.allclose(sparse[-1].reshape(-1), view.reward, atol=1e-10)
    share = theory.ood_bootstrap_share(view, in_distribution_mask(mdp, paper_dataset()))
    assert float(share[0][0]) == pytest.approx(float(logp.exp()[~in_distribution_mask(mdp, paper_dataset())].sum()),
                                                abs=1e-10)
    table = view.table()
    assert len(table) == mdp.n_states * 3 and {"Q", "V", "bootstrap", "token_reward"} <= set(table)


def test_soft_q_of_a_reward_is_the_kl_regularised_optimum_and_its_beta_limits(trained):
    mdp, _, ref = trained
    reward = torch.randn(27, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    beta = 0.7
    view = theory.soft_q(reward, ref, mdp, beta)
    optimum = torch.log_softmax(ref + reward / beta, 0)  # pi* ∝ ref exp(r / beta)
    logp = torch.cat([x.reshape(-1) for x in view.log_pi])[mdp.edge_index()].sum(-1)
    assert torch.allclose(logp, optimum, atol=1e-10)
    assert float(view.V[0][0]) == pytest.approx(float(beta * torch.logsumexp(ref + reward / beta, 0)), abs=1e-10)
    values = theory.values_over_beta(reward, ref, mdp, [1e-4, 1e4])
    cold, hot = values[values["beta"] == 1e-4], values[values["beta"] == 1e4]
    assert (cold["V"] - cold["max_r"]).abs().max() < 1e-2        # beta -> 0: the best continuation
    assert (hot["V"] - hot["ref_mean_r"]).abs().max() < 1e-3     # beta -> inf: the reference average
    assert (values.groupby("state")["V"].apply(lambda v: v.iloc[0] >= v.iloc[1])).all()
