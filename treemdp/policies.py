"""Policies over the tree: an RNN over the action prefix (shared parameters) and a table.

Both are ``torch.nn.Module`` with one public question, :meth:`action_log_probs` (log-probs of
the next action after each prefix), plus a stepwise interface the exact enumeration uses to
evaluate every tree node once:

    state = policy.root_state()                # the start state s1, batch 1
    logp  = policy.next_log_probs(state)       # [N, branching]
    state = policy.expand(state)             # all N * branching children, lexicographic
    state = policy.advance(state, actions)     # one child per row (rollouts)

The RNN reads the previous action as a token (a BOS token at the start), like a language model
reads a prefix; the tabular policy has independent logits per state, no parameter sharing: the
contrast case in which mass cannot leak to unseen trajectories through shared weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import UserError
from .tree import TreeMDP

CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "rnn": nn.RNNCell}


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(0 if seed is None else int(seed))
    return generator


class TreePolicy(nn.Module):
    """Base class: subclasses implement the stepwise interface."""

    mdp: TreeMDP

    def root_state(self) -> Any:
        raise NotImplementedError

    def next_log_probs(self, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def advance(self, state: Any, actions: torch.Tensor) -> Any:
        raise NotImplementedError

    def expand(self, state: Any) -> Any:
        """The state of every child of every node in ``state``, lexicographic ([N] -> [N*b])."""
        b = self.mdp.branching
        n = self.state_size(state)
        repeated = self.repeat_state(state, b)
        actions = torch.arange(b, device=self.device).repeat(n)
        return self.advance(repeated, actions)

    def state_size(self, state: Any) -> int:
        raise NotImplementedError

    def slice_state(self, state: Any, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of a batch of states (tensor, or tuple of tensors)."""
        return tuple(s[start:stop] for s in state) if isinstance(state, tuple) else state[start:stop]

    def repeat_state(self, state: Any, times: int) -> Any:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def action_log_probs(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Log-probs of the next action after each prefix.

        Args:
            prefixes: LongTensor [N, t], 0 <= t < depth (t = 0: the start state).

        Returns:
            Tensor [N, branching]; each row's ``exp`` sums to 1.
        """
        prefixes = torch.as_tensor(prefixes, dtype=torch.long, device=self.device)
        if prefixes.dim() != 2 or prefixes.shape[1] >= self.mdp.depth:
            raise UserError(f"prefixes must have shape [N, t] with t < depth={self.mdp.depth}, "
                            f"got {tuple(prefixes.shape)}")
        if prefixes.numel() and (prefixes.min() < 0 or prefixes.max() >= self.mdp.branching):
            raise UserError(f"prefix actions must lie in [0, {self.mdp.branching})")
        state = self.repeat_state(self.root_state(), prefixes.shape[0])
        for column in prefixes.T:
            state = self.advance(state, column)
        return self.next_log_probs(state)


class RNNPolicy(TreePolicy):
    """A recurrent policy over action tokens (GRU by default).

    Args:
        mdp: the tree.
        hidden_size: RNN state size.
        embed_size: action-embedding size (defaults to ``hidden_size``).
        cell: ``"gru"``, ``"lstm"`` or ``"rnn"`` (tanh).
        seed: initialises the weights from a local generator (global RNG untouched).
    """

    def __init__(self, mdp: TreeMDP, hidden_size: int = 32, cell: str = "gru",
                 seed: int | None = 0, embed_size: int | None = None):
        super().__init__()
        if cell not in CELLS:
            raise UserError(f"unknown cell {cell!r}; choose one of: {', '.join(CELLS)}")
        if int(hidden_size) < 1:
            raise UserError(f"hidden_size must be >= 1, got {hidden_size}")
        self.mdp = mdp
        self.cell_type = cell
        self.hidden_size = int(hidden_size)
        embed_size = self.hidden_size if embed_size is None else int(embed_size)
        self.bos = mdp.branching  # token id of "beginning of sequence"
        self.embed = nn.Embedding(mdp.branching + 1, embed_size)
        self.cell = CELLS[cell](embed_size, self.hidden_size)
        self.head = nn.Linear(self.hidden_size, mdp.branching)
        generator = _generator(seed)
        with torch.no_grad():  # uniform(+-1/sqrt(fan)) as PyTorch initialises, N(0,1) embeddings; local generator
            for name, p in self.named_parameters():
                if name.startswith("embed"):
                    p.normal_(0.0, 1.0, generator=generator)
                else:
                    bound = 1.0 / (p.shape[-1] if p.dim() > 1 else self.hidden_size) ** 0.5
                    p.uniform_(-bound, bound, generator=generator)

    # The state is the RNN state after reading BOS and the prefix: h, or (h, c) for an LSTM.
    def root_state(self):
        zeros = torch.zeros(1, self.hidden_size, device=self.device)
        start = zeros if self.cell_type != "lstm" else (zeros, zeros)
        return self.advance(start, torch.full((1,), self.bos, device=self.device))

    def advance(self, state, actions):
        return self.cell(self.embed(actions), state)

    def next_log_probs(self, state):
        h = state[0] if self.cell_type == "lstm" else state
        return torch.log_softmax(self.head(h), dim=-1)

    def expand(self, state):
        if self.cell_type != "gru":
            return super().expand(state)
        # GRU children without repeating the parents: the hidden-side projection is computed
        # once per parent and broadcast against the b action inputs (same math as nn.GRUCell:
        # r, z = sigmoid(W_i x + W_h h); n = tanh(W_in x + r * W_hn h); h' = (1 - z) n + z h).
        cell, b, H = self.cell, self.mdp.branching, self.hidden_size
        gi = torch.nn.functional.linear(self.embed.weight[:b], cell.weight_ih, cell.bias_ih)  # [b, 3H]
        gh = torch.nn.functional.linear(state, cell.weight_hh, cell.bias_hh)[:, None]  # [N, 1, 3H]
        rz = torch.sigmoid(gi[:, : 2 * H] + gh[..., : 2 * H])  # [N, b, 2H]
        r, z = rz[..., :H], rz[..., H:]
        n = torch.tanh(gi[:, 2 * H:] + r * gh[..., 2 * H:])  # [N, b, H]
        return (n + z * (state[:, None] - n)).reshape(-1, H)  # [N*b, H], child j*b + k

    def state_size(self, state):
        return (state[0] if self.cell_type == "lstm" else state).shape[0]

    def repeat_state(self, state, times):
        if self.cell_type == "lstm":
            return tuple(s.repeat_interleave(times, 0) for s in state)
        return state.repeat_interleave(times, 0)

    def extra_repr(self) -> str:
        return f"cell={self.cell_type}, hidden_size={self.hidden_size}, branching={self.mdp.branching}"


class TabularPolicy(TreePolicy):
    """Independent logits for every non-terminal state (softmax per state).

    Args:
        mdp: the tree.
        seed: draws the initial logits (std ``init_scale``) from a local generator.
        init_scale: standard deviation of the initial logits (0 gives the uniform policy).
    """

    def __init__(self, mdp: TreeMDP, seed: int | None = 0, init_scale: float = 0.1):
        super().__init__()
        self.mdp = mdp
        self.logits = nn.Parameter(
            torch.randn(mdp.n_states, mdp.branching, generator=_generator(seed)) * init_scale)
        self.register_buffer("next_state", torch.as_tensor(mdp.next_state), persistent=False)

    # The state is the BFS index of the tree node.
    def root_state(self):
        return torch.zeros(1, dtype=torch.long, device=self.device)

    def advance(self, state, actions):
        return self.next_state[state, actions]

    def expand(self, state):  # same as the generic one, minus the gather: children are contiguous
        return self.next_state[state].reshape(-1)

    def next_log_probs(self, state):
        return torch.log_softmax(self.logits[state], dim=-1)

    def state_size(self, state):
        return state.shape[0]

    def repeat_state(self, state, times):
        return state.repeat_interleave(times, 0)


POLICIES = {"rnn": RNNPolicy, "tabular": TabularPolicy}


def make_policy(mdp: TreeMDP, kind: str = "rnn", *, seed: int = 0, hidden_size: int = 32,
                cell: str = "gru") -> TreePolicy:
    """Build a policy by name (``"rnn"`` or ``"tabular"``)."""
    if kind == "rnn":
        return RNNPolicy(mdp, hidden_size=hidden_size, cell=cell, seed=seed)
    if kind == "tabular":
        return TabularPolicy(mdp, seed=seed)
    raise UserError(f"unknown policy {kind!r}; choose one of: {', '.join(POLICIES)}")
