"""The tree MDP as a Gymnasium environment, registered as ``treemdp/TreeMDP-v0``."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from .errors import UserError
from .rng import stream
from .tree import TreeMDP

Reward = Union[None, Callable[[tuple], float], torch.Tensor, np.ndarray, Sequence[float]]


class TreeMDPEnv(gym.Env):
    """
    ## Description
    The token tree of Rafailov et al. (2024), Appendix E: from the start state s1 the agent picks
    one of ``branching`` actions (tokens); action a_k moves to the k-th child. After ``depth``
    actions the episode reaches the absorbing terminal state s∞. A state is the prefix of actions
    taken, so a trajectory is a "sentence" of ``depth`` tokens.

    ## Action Space
    ``Discrete(branching)``: action k moves to the k-th child.

    ## Observation Space
    ``Discrete(n_states + 1)``: the breadth-first index of the current node (s1 -> 0,
    s2 -> 1, ...), the terminal state s∞ last (index ``n_states``).

    ## Starting State
    Always s1 (observation 0).

    ## Reward
    0 on every step by default. With ``reward`` given, the reward of the finished trajectory is
    paid on the final step: either a callable on the action tuple, or a tensor/array with one value
    per trajectory in ``TreeMDP.trajectories()`` order.

    ## Episode End
    Terminated after ``depth`` actions (the terminal state is reached). No truncation.

    ## Arguments
    ``gymnasium.make("treemdp/TreeMDP-v0", branching=3, depth=3, reward=None, render_mode=None)``;
    ``render_mode="ansi"`` returns the tree as text with the current node marked (the path taken
    for trees too big to draw).

    ## Info
    ``{"actions": tuple of actions so far, "trajectory_index": row in trajectories() (at the
    end)}``.

    ## References
    R. Rafailov et al., "Scaling Laws for Reward Model Overoptimization in Direct Alignment
    Algorithms", NeurIPS 2024, Appendix E, figure 6.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, branching: int = 3, depth: int = 3, reward: Reward = None,
                 render_mode: Optional[str] = None):
        self.mdp = TreeMDP(branching, depth)
        self.observation_space = spaces.Discrete(self.mdp.n_states + 1)
        self.action_space = spaces.Discrete(self.mdp.branching)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UserError(f"unknown render_mode {render_mode!r}; choose one of: ansi")
        self.render_mode = render_mode
        self._reward_fn = self._make_reward(reward)
        self.state = 0
        self.actions: tuple[int, ...] = ()

    def _make_reward(self, reward: Reward) -> Callable[[tuple], float]:
        if reward is None:
            return lambda actions: 0.0
        if callable(reward):
            return lambda actions: float(reward(actions))
        table = np.asarray(reward.detach().cpu() if isinstance(reward, torch.Tensor) else reward, dtype=np.float64)
        if table.shape != (self.mdp.n_trajectories,):
            raise UserError(f"reward table must have shape ({self.mdp.n_trajectories},), got {table.shape}")
        powers = self.mdp.branching ** np.arange(self.mdp.depth - 1, -1, -1)
        return lambda actions: float(table[int(np.dot(actions, powers))])

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self.state, self.actions = 0, ()
        return self.state, {"actions": self.actions}

    def step(self, action):
        if self.state == self.mdp.terminal:
            raise RuntimeError("step() called after the episode ended; call reset()")
        action = int(action)
        if not self.action_space.contains(action):
            raise UserError(f"action {action} is not in [0, {self.mdp.branching})")
        self.state = self.mdp.step_state(self.state, action)  # the shared transition table
        self.actions = self.actions + (action,)
        terminated = self.state == self.mdp.terminal
        info = {"actions": self.actions}
        reward = 0.0
        if terminated:
            powers = self.mdp.branching ** np.arange(self.mdp.depth - 1, -1, -1)
            info["trajectory_index"] = int(np.dot(self.actions, powers))
            reward = self._reward_fn(self.actions)
        return self.state, reward, terminated, False, info

    def render(self):
        if self.render_mode != "ansi":
            return None
        return render_tree(self.mdp, self.actions)


def render_tree(mdp: TreeMDP, actions: Sequence[int] = (), max_nodes: int = 121) -> str:
    """Text drawing of the tree with the nodes on the path of ``actions`` marked by ``*``."""
    path = [0]
    for a in actions:
        path.append(mdp.step_state(path[-1], a))
    if mdp.n_states > max_nodes:
        steps = " ".join(f"-a{a}-> {mdp.state_name(s)}" for a, s in zip(actions, path[1:]))
        return f"{mdp!r}, current node {mdp.state_name(path[-1])}: s1 {steps}".rstrip() + "\n"
    lines = []

    def draw(state: int, label: str, indent: str) -> None:
        mark = " *" if state in path else ""
        lines.append(f"{indent}{label}{mdp.state_name(state)}{mark}")
        if state == mdp.terminal:
            return
        for a in range(mdp.branching):
            child = mdp.step_state(state, a)
            if child == mdp.terminal:
                continue
            draw(child, f"a{a}-> ", indent + "  ")

    draw(0, "", "")
    if path[-1] == mdp.terminal:
        lines.append("-> s∞ * (episode over)")
    return "\n".join(lines) + "\n"


def rollout(env: gym.Env, policy, *, seed: int, episodes: int) -> np.ndarray:
    """Sample ``episodes`` trajectories of ``policy`` through ``env``; int array [episodes, depth].

    Actions are drawn from a NumPy generator seeded with ``seed`` (the env is reset with the same
    seed). The policy is asked with :meth:`action_log_probs` on the prefix the env reports, cached
    per prefix, so sampling shares no code with the exact enumeration it is compared against.
    """
    rng = stream(seed, "rollouts")
    branching = env.unwrapped.mdp.branching
    cache: dict[tuple, np.ndarray] = {}
    out = []
    for e in range(episodes):
        _, info = env.reset(seed=seed if e == 0 else None)
        terminated = False
        while not terminated:
            prefix = info["actions"]
            if prefix not in cache:
                with torch.no_grad():
                    p = policy.action_log_probs(torch.tensor([prefix], dtype=torch.long).reshape(1, len(prefix)))
                p = p.exp().double().cpu().numpy()[0]
                cache[prefix] = p / p.sum()
            _, _, terminated, _, info = env.step(int(rng.choice(branching, p=cache[prefix])))
        out.append(info["actions"])
    return np.asarray(out, dtype=np.int64)
