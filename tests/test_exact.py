"""Exact enumeration vs two independent computations: the product of per-step probabilities and
Monte-Carlo frequencies through the gymnasium env; masses, KL, entropy, top OOD."""

import gymnasium
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import treemdp
from treemdp import RNNPolicy, TabularPolicy, TreeMDP, paper_dataset, trajectory_log_probs
from treemdp.env import rollout
from treemdp.exact import entropy, in_distribution_mask, kl_divergence, mass, ood_mass, top_ood
from treemdp.policies import TreePolicy

SHAPES = [(2, 1), (2, 5), (3, 3), (4, 3), (5, 2)]
POLICIES = [lambda m, s: RNNPolicy(m, hidden_size=8, seed=s),
            lambda m, s: RNNPolicy(m, hidden_size=8, cell="lstm", seed=s),
            lambda m, s: RNNPolicy(m, hidden_size=8, cell="rnn", seed=s),
            lambda m, s: TabularPolicy(m, seed=s, init_scale=1.0)]
POLICY_IDS = ["gru", "lstm", "rnn", "tabular"]


def product_of_steps(policy, mdp):
    """log p(y) = sum_t log pi(a_t | a_<t), asking action_log_probs one prefix length at a time."""
    traj = mdp.trajectories()
    return sum(policy.action_log_probs(traj[:, :t]).gather(1, traj[:, t:t + 1]).squeeze(1)
               for t in range(mdp.depth))


@pytest.mark.parametrize("branching,depth", SHAPES)
@pytest.mark.parametrize("make", POLICIES, ids=POLICY_IDS)
def test_enumeration_equals_product_of_step_probabilities(make, branching, depth):
    mdp = TreeMDP(branching, depth)
    policy = make(mdp, 3)
    with torch.no_grad():
        logp = trajectory_log_probs(policy)
        assert logp.shape == (branching**depth,)
        torch.testing.assert_close(logp, product_of_steps(policy, mdp), atol=1e-5, rtol=1e-5)
        assert abs(torch.logsumexp(logp, 0).item()) < 1e-6
        assert abs(logp.exp().sum().item() - 1) < 1e-6


@settings(max_examples=15, deadline=None)
@given(branching=st.integers(2, 5), depth=st.integers(1, 4), seed=st.integers(0, 10**6),
       hidden=st.integers(1, 12), cell=st.sampled_from(["gru", "lstm", "rnn"]))
def test_enumeration_property(branching, depth, seed, hidden, cell):
    mdp = TreeMDP(branching, depth)
    policy = RNNPolicy(mdp, hidden_size=hidden, cell=cell, seed=seed)
    with torch.no_grad():
        logp = trajectory_log_probs(policy)
        torch.testing.assert_close(logp, product_of_steps(policy, mdp), atol=1e-5, rtol=1e-5)
        assert abs(logp.exp().sum().item() - 1) < 1e-5


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_fast_children_equal_generic_advance_path(cell):
    """The broadcast children of RNNPolicy equal repeating each parent and advancing one action."""
    mdp = TreeMDP(4, 3)
    policy = RNNPolicy(mdp, hidden_size=16, cell=cell, seed=5)
    prep = policy.prepare({n: torch.stack([p, p * 0.5]) for n, p in policy.named_parameters()})  # R = 2
    state = policy.root(prep)
    for _ in range(2):
        fast, generic = policy.expand(prep, state), TreePolicy.expand(policy, prep, state)
        for a, b in zip(fast if cell == "lstm" else (fast,), generic if cell == "lstm" else (generic,)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
        state = fast


@pytest.mark.parametrize("make", POLICIES, ids=POLICY_IDS)
def test_stacked_runs_equal_runs_alone(make):
    """R stacked parameter sets give each run's own enumeration (rows never mix)."""
    mdp = TreeMDP(3, 4)
    policies = [make(mdp, seed) for seed in range(3)]
    params = {name: torch.stack([dict(p.named_parameters())[name] for p in policies])
              for name, _ in policies[0].named_parameters()}
    with torch.no_grad():
        stacked = policies[0].stacked_log_probs(params)
        for r, policy in enumerate(policies):
            torch.testing.assert_close(stacked[r], trajectory_log_probs(policy), atol=1e-6, rtol=1e-6)


@pytest.mark.slow  # tens of thousands of env rollouts in Python
@pytest.mark.parametrize("branching,depth,make", [(3, 3, POLICIES[0]), (2, 4, POLICIES[3]), (4, 2, POLICIES[1])])
def test_monte_carlo_through_env_matches_enumeration(branching, depth, make):
    mdp = TreeMDP(branching, depth)
    policy = make(mdp, 7)
    env = gymnasium.make(treemdp.ENV_ID, branching=branching, depth=depth)
    episodes = 100_000
    samples = rollout(env, policy, seed=11, episodes=episodes)
    counts = np.bincount(mdp.trajectory_index(torch.as_tensor(samples)).numpy(), minlength=mdp.n_trajectories)
    with torch.no_grad():
        p = trajectory_log_probs(policy).exp().double().numpy()
    stderr = np.sqrt(p * (1 - p) / episodes)
    # 5 standard errors per cell (plus a floor for tiny p): a wrong enumeration is off by far more
    assert np.all(np.abs(counts / episodes - p) <= 5 * stderr + 1e-4), np.abs(counts / episodes - p).max()


def test_gradients_flow_through_enumeration():
    mdp = TreeMDP()
    policy = RNNPolicy(mdp, seed=0)
    trajectory_log_probs(policy)[12].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.parameters())
    assert sum(p.grad.abs().sum() for p in policy.parameters()) > 0


def test_masses_kl_entropy():
    mdp = TreeMDP()
    data = paper_dataset()
    mask = in_distribution_mask(mdp, data)
    assert mask.nonzero().squeeze(1).tolist() == [0, 12, 26]
    uniform = torch.full((27,), -np.log(27.0))
    torch.testing.assert_close(mass(uniform, mask), torch.tensor(3 / 27))
    torch.testing.assert_close(ood_mass(uniform, mask), torch.tensor(24 / 27))
    torch.testing.assert_close(entropy(uniform), torch.tensor(np.log(27.0), dtype=torch.float32))
    assert kl_divergence(uniform, uniform).abs() < 1e-6
    with torch.no_grad():
        p = trajectory_log_probs(RNNPolicy(mdp, seed=1)).double()
        q = trajectory_log_probs(RNNPolicy(mdp, seed=2)).double()
    by_hand = sum(p[i].exp() * (p[i] - q[i]) for i in range(27))
    torch.testing.assert_close(kl_divergence(p, q), by_hand)
    assert kl_divergence(p, q) > 0 and kl_divergence(q, p) > 0
    top = top_ood(p, mask, k=3)
    probs = p.exp()
    assert [i for i, _ in top] == [i for i in torch.argsort(probs, descending=True).tolist() if not mask[i]][:3]


def test_large_tree_enumeration_is_normalised():
    mdp = TreeMDP(4, 10)  # 4**10 ~ 1e6 trajectories
    policy = RNNPolicy(mdp, hidden_size=16, seed=0)
    with torch.no_grad():
        logp = trajectory_log_probs(policy)
    assert logp.shape == (4**10,)
    assert abs(torch.logsumexp(logp.double(), 0).item()) < 1e-4
    # spot-check a few rows against the step product
    rows = torch.tensor([0, 12345, 4**10 - 1])
    actions = torch.stack([torch.tensor(mdp.trajectories_row(int(r))) for r in rows])
    step = sum(policy.action_log_probs(actions[:, :t]).gather(1, actions[:, t:t + 1]).squeeze(1)
               for t in range(mdp.depth)).detach()
    torch.testing.assert_close(logp[rows], step, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_chunked_checkpointed_enumeration_equals_plain(cell):
    mdp = TreeMDP(3, 5)
    policy = RNNPolicy(mdp, hidden_size=8, cell=cell, seed=2)
    weights = torch.linspace(0, 1, mdp.n_trajectories)
    results = []
    for chunk in (10**9, 20):  # plain, then 9-leaf subtrees chunked under checkpointing
        policy.zero_grad(set_to_none=True)
        logp = trajectory_log_probs(policy, chunk_leaves=chunk)
        (logp.exp() * weights).sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in policy.parameters()]))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)
