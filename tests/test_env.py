"""The gymnasium env, tested as Gymnasium tests its own: check_env, seeded determinism, table."""

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import treemdp
from treemdp import TreeMDP, UserError
from treemdp.env import TreeMDPEnv, rollout


@pytest.mark.parametrize("branching,depth", [(3, 3), (2, 1), (2, 6), (5, 2)])
def test_check_env_passes(branching, depth):
    env = gymnasium.make(treemdp.ENV_ID, branching=branching, depth=depth)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.observation_space == gymnasium.spaces.Discrete(TreeMDP(branching, depth).n_states + 1)
    assert env.action_space == gymnasium.spaces.Discrete(branching)


def test_steps_follow_the_shared_table_and_terminate_after_depth():
    env = TreeMDPEnv()
    obs, info = env.reset(seed=0)
    assert obs == 0 and info["actions"] == ()
    obs, r, term, trunc, info = env.step(1)
    assert (obs, r, term, trunc) == (2, 0.0, False, False)  # s3
    obs, _, term, _, _ = env.step(1)
    assert obs == 8 and not term  # s9
    obs, _, term, _, info = env.step(0)
    assert obs == env.mdp.terminal and term and info["trajectory_index"] == 12
    with pytest.raises(RuntimeError):
        env.step(0)
    for state in range(env.mdp.n_states):  # every transition equals the table the enumeration reads
        for a in range(3):
            env.state = state
            env.actions = (0,) * int(env.mdp.node_depth[state])
            assert env.step(a)[0] == env.mdp.next_state[state, a]


def test_reward_table_and_callable_paid_on_final_step():
    table = torch.arange(27, dtype=torch.float32)
    env = TreeMDPEnv(reward=table)
    env.reset()
    rewards = [env.step(a)[1] for a in (1, 1, 0)]
    assert rewards == [0.0, 0.0, 12.0]
    env = TreeMDPEnv(reward=lambda actions: sum(actions))
    env.reset()
    assert [env.step(a)[1] for a in (2, 2, 1)] == [0.0, 0.0, 5.0]
    with pytest.raises(UserError, match="shape"):
        TreeMDPEnv(reward=np.zeros(5))


def test_same_seeded_rollout_twice_is_identical():
    mdp = TreeMDP()
    policy = treemdp.RNNPolicy(mdp, seed=0)
    a = rollout(gymnasium.make(treemdp.ENV_ID), policy, seed=3, episodes=500)
    b = rollout(gymnasium.make(treemdp.ENV_ID), policy, seed=3, episodes=500)
    c = rollout(gymnasium.make(treemdp.ENV_ID), policy, seed=4, episodes=500)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_ansi_render_marks_the_path():
    env = gymnasium.make(treemdp.ENV_ID, render_mode="ansi")
    env.reset()
    env.step(1)
    text = env.render()
    marked = [line.strip() for line in text.splitlines() if line.endswith("*")]
    assert marked == ["s1 *", "a1-> s3 *"]
    big = gymnasium.make(treemdp.ENV_ID, branching=4, depth=6, render_mode="ansi")
    big.reset()
    big.step(3)
    assert "current node s5" in big.render()
