"""The tree-structured token MDP of Rafailov et al. (2024), Appendix E, and its data.

A start state s1; action a_k from a node moves to its k-th child; nodes at depth ``depth - 1``
move to the absorbing terminal state ``s∞`` whatever the action. States are numbered breadth
first (s1; s2 s3 s4; s5 ... s13 for the paper's tree), so a state is the prefix of actions taken,
like a token prefix. One table, :attr:`TreeMDP.next_state`, holds the transitions; the gymnasium
env steps through it and the exact enumeration walks it, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .errors import UserError, read_json_file

#: Largest tree whose per-trajectory tables we are willing to build (memory guard).
MAX_TRAJECTORIES = 10**8


class TreeMDP:
    """A deterministic tree MDP with ``branching`` actions and ``depth`` steps per episode.

    Args:
        branching: actions per state (>= 2); the paper uses 3.
        depth: actions per trajectory (>= 1); the paper uses 3.

    Attributes:
        n_states: non-terminal states, ``(branching**depth - 1) / (branching - 1)``.
        terminal: index of the absorbing terminal state ``s∞`` (== ``n_states``).
        n_trajectories: ``branching**depth``.
        next_state: int64 array [n_states, branching], the transition table.
        node_depth: int64 array [n_states], number of actions taken to reach each state.
    """

    def __init__(self, branching: int = 3, depth: int = 3):
        for name, value, low in (("branching", branching, 2), ("depth", depth, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise UserError(f"{name} must be an integer, got {value!r}")
            if value < low:
                raise UserError(f"{name} must be >= {low}, got {value}")
        if branching**depth > MAX_TRAJECTORIES:
            raise UserError(
                f"a tree with branching={branching}, depth={depth} has {branching**depth:.3g} "
                f"trajectories; at most {MAX_TRAJECTORIES:.0e} are supported")
        self.branching = int(branching)
        self.depth = int(depth)
        self.n_trajectories = self.branching**self.depth
        # level_start[t] = BFS index of the first node at depth t (t actions taken).
        sizes = [self.branching**t for t in range(self.depth)]
        self.level_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_states = int(self.level_start[-1])
        self.terminal = self.n_states
        self.node_depth = np.repeat(np.arange(self.depth), sizes).astype(np.int64)
        # Child k of the j-th node of level t is node j*branching + k of level t+1 (lexicographic).
        offset_in_level = np.arange(self.n_states) - self.level_start[self.node_depth]
        children = (self.level_start[np.minimum(self.node_depth + 1, self.depth)][:, None]
                    + offset_in_level[:, None] * self.branching + np.arange(self.branching))
        leaf_level = (self.node_depth == self.depth - 1)[:, None]
        self.next_state = np.where(leaf_level, self.terminal, children).astype(np.int64)
        self._edges = None

    def __repr__(self) -> str:
        return f"TreeMDP(branching={self.branching}, depth={self.depth})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TreeMDP) and (self.branching, self.depth) == (other.branching, other.depth)

    def __hash__(self) -> int:
        return hash((self.branching, self.depth))

    # ----- states -----------------------------------------------------------------------------
    def state_name(self, state: int) -> str:
        """The paper's name of a state: ``s1`` for the root, ``s∞`` for the terminal state."""
        if state == self.terminal:
            return "s∞"
        if not 0 <= state < self.n_states:
            raise UserError(f"state {state} is not in {self!r} (0..{self.terminal})")
        return f"s{state + 1}"

    def step_state(self, state: int, action: int) -> int:
        """The successor of ``state`` under ``action`` (a lookup in :attr:`next_state`)."""
        return int(self.next_state[state, action])

    def nodes_at_depth(self, t: int) -> np.ndarray:
        """BFS indices of the ``branching**t`` states reached after ``t`` actions, lexicographic."""
        return np.arange(self.level_start[t], self.level_start[t + 1])

    def edge_index(self) -> torch.Tensor:
        """LongTensor [branching**depth, depth]: the edge (node * branching + action) each
        trajectory takes at each depth, so log p(y) = sum_t edge_logp[edge_index[y, t]]."""
        if self._edges is None:
            y = torch.arange(self.n_trajectories)[:, None]
            t = torch.arange(self.depth)
            start = torch.as_tensor(self.level_start[:-1])
            # node at depth t = level_start[t] + y // b**(d-t); edge = node * b + a_t = level_start[t] * b + y // b**(d-1-t)
            self._edges = start * self.branching + y // self.branching ** (self.depth - 1 - t)
        return self._edges

    def prefix_states(self, prefixes: torch.Tensor) -> torch.Tensor:
        """The state reached by each action prefix, read from :attr:`next_state`.

        Args:
            prefixes: LongTensor [N, t] with 0 <= t < depth.

        Returns:
            LongTensor [N] of state indices.
        """
        table = torch.as_tensor(self.next_state, device=prefixes.device)
        states = torch.zeros(prefixes.shape[0], dtype=torch.long, device=prefixes.device)
        for column in prefixes.T:
            states = table[states, column]
        return states

    # ----- trajectories -----------------------------------------------------------------------
    def trajectories(self) -> torch.Tensor:
        """Every action sequence, LongTensor [branching**depth, depth], lexicographic order."""
        index = torch.arange(self.n_trajectories)
        powers = self.branching ** torch.arange(self.depth - 1, -1, -1)
        return (index[:, None] // powers) % self.branching

    def trajectories_row(self, index: int) -> list[int]:
        """The action sequence at row ``index`` of :meth:`trajectories` (without building it)."""
        if not 0 <= index < self.n_trajectories:
            raise UserError(f"trajectory row {index} is not in [0, {self.n_trajectories})")
        return [(int(index) // self.branching**(self.depth - 1 - t)) % self.branching for t in range(self.depth)]

    def trajectory_index(self, actions) -> torch.Tensor:
        """Row of each action sequence in :meth:`trajectories` (validated).

        Args:
            actions: [N, depth] sequences, or one sequence [depth]: a tensor, a NumPy array or lists.

        Returns:
            LongTensor [N] (a 0-d tensor for one sequence).
        """
        single = _is_sequence_of_actions(actions)
        actions = self.validate_trajectories([actions] if single else actions)
        powers = self.branching ** torch.arange(self.depth - 1, -1, -1)
        rows = (actions * powers).sum(-1)
        return rows[0] if single else rows

    def validate_trajectories(self, actions, what: str = "trajectory") -> torch.Tensor:
        """Return ``actions`` as LongTensor [N, depth] or raise UserError naming the bad row.

        Tensors, NumPy arrays and (nested) lists of integers are all accepted.
        """
        rows = _to_list(actions)
        if not isinstance(rows, list):
            raise UserError(f"{what}s must be a list of action sequences, got {actions!r}")
        for i, row in enumerate(rows):
            if not isinstance(row, list):
                raise UserError(f"{what} {i} must be a list of actions, got {row!r}")
            if len(row) != self.depth:
                raise UserError(f"{what} {i} {row} has length {len(row)}; this tree has depth {self.depth}")
            for a in row:
                if isinstance(a, bool) or not isinstance(a, int):
                    raise UserError(f"{what} {i} {row}: action {a!r} is not an integer")
                if not 0 <= a < self.branching:
                    raise UserError(f"{what} {i} {row}: action {a} is not in [0, {self.branching}) "
                                    f"(this tree has branching {self.branching}; for a wider tree set the "
                                    "branching, or add \"branching\": N to the data file)")
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.depth)

    def trajectory_name(self, actions) -> str:
        """The paper's notation of one action sequence, e.g. ``s1-a1-s3-a1-s9-a0-s∞``.

        ``actions``: [depth] integers as a list, tuple, tensor or NumPy array.
        """
        (actions,) = self.validate_trajectories([actions])
        state, parts = 0, ["s1"]
        for a in actions.tolist():
            state = self.step_state(state, a)
            parts += [f"a{a}", self.state_name(state)]
        return "-".join(parts)

    def trajectory_names(self) -> list[str]:
        """Names of all trajectories in :meth:`trajectories` order (small trees only)."""
        if self.n_trajectories > 100_000:
            raise UserError(f"{self!r} has {self.n_trajectories} trajectories: too many to name")
        return [self.trajectory_name(row) for row in self.trajectories().tolist()]


def _to_list(x):
    """Tensors and arrays to (nested) lists of Python ints; other sequences element by element."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.tolist()
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
        return x
    return [_to_list(item) for item in x]


def _is_sequence_of_actions(x) -> bool:
    """True for one flat sequence of actions ([depth]), False for a batch ([N, depth])."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.ndim == 1
    items = list(x) if isinstance(x, Iterable) and not isinstance(x, (str, bytes)) else []
    return bool(items) and all(isinstance(a, (int, np.integer, torch.Tensor)) and not isinstance(a, bool)
                               and getattr(a, "ndim", 0) == 0 for a in items)


@dataclass(frozen=True)
class Preference:
    """One preference: ``chosen`` is preferred over ``rejected`` (action sequences)."""

    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


@dataclass(frozen=True)
class Dataset:
    """Demonstrations for SFT and preferences for the direct alignment phase.

    Attributes:
        demonstrations: LongTensor [n_demos, depth].
        preferences: tuple of :class:`Preference`.
    """

    demonstrations: torch.Tensor
    preferences: tuple[Preference, ...] = field(default_factory=tuple)

    def chosen(self) -> torch.Tensor:
        """LongTensor [n_prefs, depth] of the preferred sequences."""
        return torch.tensor([p.chosen for p in self.preferences], dtype=torch.long)

    def rejected(self) -> torch.Tensor:
        """LongTensor [n_prefs, depth] of the dispreferred sequences."""
        return torch.tensor([p.rejected for p in self.preferences], dtype=torch.long)

    def key(self) -> tuple:
        """A hashable summary: equal datasets have equal keys."""
        return (tuple(map(tuple, self.demonstrations.tolist())), self.preferences)

    def __eq__(self, other) -> bool:
        return isinstance(other, Dataset) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def to_json(self) -> dict:
        """The ``--data`` file format (README, "Data file")."""
        return {"demonstrations": self.demonstrations.tolist(),
                "preferences": [{"chosen": list(p.chosen), "rejected": list(p.rejected)}
                                for p in self.preferences]}


def paper_dataset() -> Dataset:
    """The three demonstrations and the one preference of Appendix E (paper's tree).

    Demonstrations (s1,a0,s2,a0,s5,a0,s∞), (s1,a1,s3,a1,s9,a0,s∞), (s1,a2,s4,a2,s13,a2,s∞);
    preference (s1,a1,s3,a1,s9,a0,s∞) over (s1,a0,s2,a0,s5,a0,s∞).
    """
    return Dataset(demonstrations=torch.tensor([[0, 0, 0], [1, 1, 0], [2, 2, 2]]),
                   preferences=(Preference(chosen=(1, 1, 0), rejected=(0, 0, 0)),))


def make_dataset(mdp: TreeMDP, demonstrations, preferences) -> Dataset:
    """Validate raw lists against ``mdp`` and build a :class:`Dataset`.

    Args:
        demonstrations: list of action sequences (non-empty).
        preferences: list of ``{"chosen": [...], "rejected": [...]}`` dicts or
            :class:`Preference` objects (may be empty: SFT only).
    """
    if not isinstance(demonstrations, (list, tuple, torch.Tensor)) or len(demonstrations) == 0:
        raise UserError("demonstrations must be a non-empty list of action sequences")
    demos = mdp.validate_trajectories(demonstrations, what="demonstration")
    if not isinstance(preferences, (list, tuple)):
        raise UserError("preferences must be a list of {\"chosen\": [...], \"rejected\": [...]} objects")
    prefs = []
    for i, p in enumerate(preferences):
        if isinstance(p, Preference):
            p = {"chosen": list(p.chosen), "rejected": list(p.rejected)}
        if not isinstance(p, dict) or set(p) != {"chosen", "rejected"}:
            raise UserError(f"preference {i} must be an object with exactly the keys 'chosen' and 'rejected'")
        chosen = mdp.validate_trajectories([p["chosen"]], what=f"preference {i} chosen")[0]
        rejected = mdp.validate_trajectories([p["rejected"]], what=f"preference {i} rejected")[0]
        if torch.equal(chosen, rejected):
            raise UserError(f"preference {i}: chosen equals rejected ({chosen.tolist()}); nothing to prefer")
        prefs.append(Preference(tuple(chosen.tolist()), tuple(rejected.tolist())))
    return Dataset(demonstrations=demos, preferences=tuple(prefs))


def _read_data_file(path: str | Path) -> dict:
    raw = read_json_file(path, "data file")
    if not isinstance(raw, dict):
        raise UserError(f"data file {str(path)!r} must hold a JSON object with 'demonstrations' and 'preferences'")
    unknown = set(raw) - {"demonstrations", "preferences", "branching"}
    if unknown:
        raise UserError(f"data file {str(path)!r} has unknown keys: {', '.join(sorted(unknown))} "
                        "(allowed: demonstrations, preferences, branching)")
    if "demonstrations" not in raw:
        raise UserError(f"data file {str(path)!r} has no 'demonstrations'")
    branching = raw.get("branching")
    if branching is not None and (isinstance(branching, bool) or not isinstance(branching, int) or branching < 2):
        raise UserError(f"data file {str(path)!r}: 'branching' must be an integer >= 2, got {branching!r}")
    return raw


def data_shape(path: str | Path) -> tuple[int | None, int | None]:
    """The tree shape a ``--data`` file implies: (its ``"branching"`` key or None, the sequences' length
    or None when they disagree).

    The branching is never guessed from the largest action (a typo must stay an error).
    """
    raw = _read_data_file(path)
    lengths = set()
    for seq in list(raw["demonstrations"] or []) + [p.get(k) for p in raw.get("preferences") or []
                                                     if isinstance(p, dict) for k in ("chosen", "rejected")]:
        if isinstance(seq, list):
            lengths.add(len(seq))
    # No sequences, or sequences of several lengths: nothing to infer (validation then names the problem).
    return raw.get("branching"), lengths.pop() if len(lengths) == 1 else None


def load_dataset(path: str | Path, mdp: TreeMDP) -> Dataset:
    """Read and validate a ``--data`` JSON file (format: see the README, 'Data file').

    Every error names the file. A ``"branching"`` key, if present, must match ``mdp``.
    """
    raw = _read_data_file(path)
    if raw.get("branching") not in (None, mdp.branching):
        raise UserError(f"data file {str(path)!r} is for branching {raw['branching']}, but the tree has branching "
                        f"{mdp.branching} (drop --branching, or make them agree)")
    try:
        return make_dataset(mdp, raw["demonstrations"], raw.get("preferences", []))
    except UserError as e:
        raise UserError(f"data file {str(path)!r}: {e}") from None
