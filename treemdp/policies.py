"""Policies over the tree, and the registry that names them.

A policy is a ``torch.nn.Module`` whose one essential job is :meth:`TreePolicy.stacked_log_probs`:
given its parameters stacked over R runs (``params[name]`` is ``[R, *shape]``), the exact
log-probability of every trajectory, ``[R, T]``. The training engine trains R runs at once
through it; a single module is the case R = 1 (:meth:`TreePolicy.trajectory_log_probs`).

The two built-in policies describe themselves step by step instead, and the shared tree walk of
:func:`walk_log_probs` (level by level, each node once) turns that into
``stacked_log_probs``::

    prep  = policy.prepare(params)            # per-forward tables (e.g. input gates per token)
    state = policy.root(prep)                 # the start state s1: [R, 1, ...]
    logp  = policy.next_log_probs(prep, state) # next-action log-probs: [R, N, branching]
    state = policy.expand(prep, state)      # every child of every node: [R, N * branching, ...]
    state = policy.advance(prep, state, a)    # one child per node (a: LongTensor [N])

:class:`RNNPolicy` reads the previous action as a token (a BOS token first), like a language model
reads a prefix; :class:`TabularPolicy` has independent logits per state, no parameter sharing:
the contrast case in which mass cannot leak to unseen trajectories through shared weights.

A new policy class needs only its parameters and ``stacked_log_probs`` (or the step interface)
and one :func:`register_policy` entry; ``train``, ``sweep`` and the lessons then accept its name.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .errors import UserError
from .rng import stream
from .tree import TreeMDP

CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "rnn": nn.RNNCell}
#: Gates per cell: the rows of weight_ih / weight_hh are (gates * hidden).
GATES = {"gru": 3, "lstm": 4, "rnn": 1}


def _generator(seed: int | None) -> torch.Generator:
    return stream(0 if seed is None else seed, "policy_init")


class TreePolicy(nn.Module):
    """Base class of tree policies.

    Subclasses implement :meth:`stacked_log_probs`, or the step interface (``root``, ``next_log_probs``,
    ``advance``, optionally ``prepare`` and a faster ``expand``) that the default
    ``stacked_log_probs`` walks.
    """

    mdp: TreeMDP

    # ----- the one question the engine asks ------------------------------------------------------
    def stacked_log_probs(self, params: dict[str, torch.Tensor], *, chunk_leaves: int | None = None) -> torch.Tensor:
        """Exact log-probs of every trajectory for R stacked parameter sets.

        Args:
            params: ``name -> [R, *shape]`` for every name of ``named_parameters()``.
            chunk_leaves: see :func:`walk_log_probs`.

        Returns:
            Tensor [R, branching**depth] in ``mdp.trajectories()`` order. Differentiable.
        """
        return walk_log_probs(self, params, chunk_leaves=CHUNK_LEAVES if chunk_leaves is None else chunk_leaves)

    def stacked_parameters(self) -> dict[str, torch.Tensor]:
        """This module's parameters as a stack of one run (views: gradients reach the module)."""
        return {name: p.unsqueeze(0) for name, p in self.named_parameters()}

    def trajectory_log_probs(self, **kwargs) -> torch.Tensor:
        """Exact log-probs of every trajectory of this policy, [branching**depth]."""
        return self.stacked_log_probs(self.stacked_parameters(), **kwargs)[0]

    # ----- the step interface (optional) ---------------------------------------------------------
    def prepare(self, params: dict[str, torch.Tensor]) -> Any:
        """Per-forward precomputation handed to the step functions (default: the params)."""
        return params

    def root(self, prep) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no step interface; override stacked_log_probs")

    def next_log_probs(self, prep, state) -> torch.Tensor:
        raise NotImplementedError

    def advance(self, prep, state, actions: torch.Tensor) -> Any:
        raise NotImplementedError

    def expand(self, prep, state) -> Any:
        """Every child of every node, lexicographic: node j's child k is row j*b + k."""
        b = self.mdp.branching
        n = self.state_rows(state)
        actions = torch.arange(b, device=self.device).repeat(n)
        return self.advance(prep, self.repeat_state(state, b), actions)

    # States are tensors [R, N, ...] (or tuples of them); policies with another layout override these.
    def state_rows(self, state) -> int:
        return (state[0] if isinstance(state, tuple) else state).shape[1]

    def repeat_state(self, state, times: int):
        """Each node's state ``times`` times in a row ([R, N] -> [R, N*times])."""
        if isinstance(state, tuple):
            return tuple(s.repeat_interleave(times, 1) for s in state)
        return state.repeat_interleave(times, 1)

    def cat_states(self, states: list):
        if isinstance(states[0], tuple):
            return tuple(torch.cat(parts, 1) for parts in zip(*states))
        return torch.cat(states, 1)

    def slice_state(self, state, start: int, stop: int):
        if isinstance(state, tuple):
            return tuple(s[:, start:stop] for s in state)
        return state[:, start:stop]

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
        params = self.stacked_parameters()
        try:
            prep = self.prepare(params)
            state = self.repeat_state(self.root(prep), prefixes.shape[0])
        except NotImplementedError:
            return self._action_log_probs_from_enumeration(prefixes)
        for column in prefixes.T:
            state = self.advance(prep, state, column)
        return self.next_log_probs(prep, state)[0]

    def _action_log_probs_from_enumeration(self, prefixes: torch.Tensor) -> torch.Tensor:
        """pi(a | prefix) = P(prefix + a) / P(prefix), both sums over the exact enumeration."""
        b, depth = self.mdp.branching, self.mdp.depth
        t = prefixes.shape[1]
        logp = self.trajectory_log_probs().reshape([b] * depth)  # one axis per action
        marginal = logp.reshape(b ** (t + 1), -1).logsumexp(-1).reshape(-1, b)  # [b**t, b]: P(prefix + a)
        powers = b ** torch.arange(t - 1, -1, -1, device=prefixes.device)
        rows = (prefixes * powers).sum(-1) if t else torch.zeros(len(prefixes), dtype=torch.long, device=prefixes.device)
        return torch.log_softmax(marginal[rows], -1)


# ----- the tree walk: every policy's enumeration ---------------------------------------------------
#: With gradients on, the last two levels are computed in chunks of at most this many leaves,
#: each recomputed during backward (activation checkpointing), bounding memory on huge trees.
CHUNK_LEAVES = 2**20

#: Up to this many (run x node) states, every level's states are kept and the policy's head runs
#: once over all of them (fewer, larger operations: faster for the small trees of most runs).
ONE_HEAD_STATES = 2**17


def walk_log_probs(policy: TreePolicy, params: dict[str, torch.Tensor], *,
                   chunk_leaves: int = CHUNK_LEAVES) -> torch.Tensor:
    """The tree walk behind every policy's enumeration: [R, branching**depth] log-probs.

    At depth t the walk holds the state of all ``b**t`` nodes (of every stacked run), asks the
    policy for their next-action log-probs once, and adds them to the prefix log-probs: each node
    is evaluated exactly once (prefix sharing) and everything stays in log space.

    Args:
        policy: a policy with the step interface (``prepare``, ``root``, ``expand``,
            ``next_log_probs``).
        params: its parameters stacked over R runs, ``name -> [R, *shape]``.
        chunk_leaves: with autograd on and more leaves than this, the last two levels are
            evaluated subtree by subtree under activation checkpointing (same numbers, bounded
            memory, some recomputation in backward).
    """
    mdp = policy.mdp
    prep = policy.prepare(params)
    state = policy.root(prep)
    R = next(iter(params.values())).shape[0]
    if R * mdp.n_states <= ONE_HEAD_STATES:
        levels = [state]
        for _ in range(1, mdp.depth):
            state = policy.expand(prep, state)
            levels.append(state)
        step = policy.next_log_probs(prep, policy.cat_states(levels) if len(levels) > 1 else state)  # [R, n_states, b]
        edges = mdp.edge_index().to(step.device).reshape(1, -1).expand(R, -1)  # [R, T*depth]
        per_edge = step.reshape(R, -1).gather(1, edges)  # the edge each trajectory takes at each depth
        return per_edge.reshape(R, mdp.n_trajectories, mdp.depth).sum(-1)  # log p(y) = sum_t log pi(a_t | s_t)
    logp = None
    for t in range(mdp.depth):
        if t == mdp.depth - 2 and torch.is_grad_enabled() and R * mdp.n_trajectories > chunk_leaves:
            return _last_two_levels_chunked(policy, prep, state, logp, R, chunk_leaves)
        step = policy.next_log_probs(prep, state)  # [R, b**t, b]
        logp = step.reshape(R, -1) if logp is None else (logp[:, :, None] + step).reshape(R, -1)
        if t + 1 < mdp.depth:
            state = policy.expand(prep, state)
    return logp


def _last_two_levels(policy: TreePolicy, prep, state, logp: torch.Tensor) -> torch.Tensor:
    """From nodes at depth d-2 (states, [R, N] log-probs) to their N*b*b leaves' log-probs."""
    R = logp.shape[0]
    logp = (logp[:, :, None] + policy.next_log_probs(prep, state)).reshape(R, -1)
    return (logp[:, :, None] + policy.next_log_probs(prep, policy.expand(prep, state))).reshape(R, -1)


def _last_two_levels_chunked(policy: TreePolicy, prep, state, logp, R: int, chunk_leaves: int) -> torch.Tensor:
    from torch.utils.checkpoint import checkpoint
    if logp is None:  # depth 2: the root is the only node at depth d-2
        logp = torch.zeros(R, 1, device=policy.device)
    per_node = policy.mdp.branching**2
    step = max(1, chunk_leaves // (per_node * R))
    parts = []
    for start in range(0, logp.shape[1], step):
        stop = min(start + step, logp.shape[1])
        parts.append(checkpoint(_last_two_levels, policy, prep, policy.slice_state(state, start, stop),
                                logp[:, start:stop], use_reentrant=False))
    return torch.cat(parts, 1)



class RNNPolicy(TreePolicy):
    """A recurrent policy over action tokens (GRU by default), reading a BOS token first.

    The cell computes PyTorch's ``GRUCell`` / ``LSTMCell`` / ``RNNCell`` equations; the weights are
    stored the way the enumeration multiplies them (inputs on the left, biases as a row), so a
    forward pass over every tree node needs no transposes:

        gates_x = x @ weight_ih + bias_ih      # [.., G*H]; PyTorch keeps weight_ih as [G*H, in]
        gates_h = h @ weight_hh + bias_hh
        logits  = h @ head_weight + head_bias  # [.., branching]

    Args:
        mdp: the tree.
        hidden_size: RNN state size.
        embed_size: action-embedding size (defaults to ``hidden_size``).
        cell: ``"gru"``, ``"lstm"`` or ``"rnn"`` (tanh).
        seed: initialises the weights from a local generator (global RNG untouched): PyTorch's
            uniform(+-1/sqrt(hidden)) for the cell and head, N(0, 1) for the embeddings.

    Parameters: ``embed`` [branching, E] (action tokens), ``bos`` [1, E], ``weight_ih`` [E, G*H],
    ``bias_ih`` [1, G*H], ``weight_hh`` [H, G*H], ``bias_hh`` [1, G*H], ``head_weight`` [H, b],
    ``head_bias`` [1, b], with G = 3 (GRU: r, z, n), 4 (LSTM: i, f, g, o) or 1 (tanh RNN).
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
        H = self.hidden_size = int(hidden_size)
        E = self.embed_size = H if embed_size is None else int(embed_size)
        b, GH = mdp.branching, GATES[cell] * H
        # Drawn in PyTorch's layouts and order (embedding; cell weight_ih, weight_hh, bias_ih,
        # bias_hh; head weight, bias), each from the one local generator, then stored transposed.
        generator = _generator(seed)
        uniform = lambda *shape, fan: torch.empty(*shape).uniform_(-fan ** -0.5, fan ** -0.5, generator=generator)  # noqa: E731
        embed = torch.empty(b + 1, E).normal_(0.0, 1.0, generator=generator)  # row b is BOS
        weight_ih, weight_hh = uniform(GH, E, fan=E), uniform(GH, H, fan=H)
        bias_ih, bias_hh = uniform(GH, fan=H), uniform(GH, fan=H)
        head_weight, head_bias = uniform(b, H, fan=H), uniform(b, fan=H)
        self.embed = nn.Parameter(embed[:b].clone())
        self.bos = nn.Parameter(embed[b:].clone())
        self.weight_ih = nn.Parameter(weight_ih.T.contiguous())
        self.bias_ih = nn.Parameter(bias_ih[None])
        self.weight_hh = nn.Parameter(weight_hh.T.contiguous())
        self.bias_hh = nn.Parameter(bias_hh[None])
        self.head_weight = nn.Parameter(head_weight.T.contiguous())
        self.head_bias = nn.Parameter(head_bias[None])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Run folders written before treemdp 0.2 hold nn.Embedding / nn.GRUCell / nn.Linear weights.
        old = lambda name: state_dict.pop(prefix + name)  # noqa: E731
        if prefix + "embed.weight" in state_dict:
            embed = old("embed.weight")
            state_dict[prefix + "embed"], state_dict[prefix + "bos"] = embed[:-1], embed[-1:]
            for new, name, transpose in (("weight_ih", "cell.weight_ih", True), ("weight_hh", "cell.weight_hh", True),
                                         ("bias_ih", "cell.bias_ih", False), ("bias_hh", "cell.bias_hh", False),
                                         ("head_weight", "head.weight", True), ("head_bias", "head.bias", False)):
                value = old(name)
                state_dict[prefix + new] = value.T.contiguous() if transpose else value[None]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # The state is the cell state after reading BOS and the prefix: h [R, N, H], or (h, c) for an LSTM.
    def prepare(self, params):
        """Everything a forward pass reuses across levels, computed once (fewer autograd nodes)."""
        # Input-side gates once per action token [R, 1, b, G*H] and for BOS [R, 1, G*H].
        gi_actions = torch.baddbmm(params["bias_ih"], params["embed"], params["weight_ih"])
        gi_bos = torch.baddbmm(params["bias_ih"], params["bos"], params["weight_ih"])
        return {"params": params, "gi_actions": gi_actions,
                "gi_children": self._split(gi_actions.unsqueeze(1)), "gi_bos": self._split(gi_bos)}

    def _split(self, gates):
        """GRU gates as (r and z together, n): one split instead of a slice per use."""
        return gates.split([2 * self.hidden_size, self.hidden_size], -1) if self.cell_type == "gru" else gates

    def _cell(self, gi, gh, state):
        """PyTorch's GRUCell / LSTMCell / RNNCell on precomputed input and hidden gates (broadcasting)."""
        if self.cell_type == "gru":  # r, z, n order: h' = (1 - z) n + z h = n + z (h - n)
            r, z = torch.sigmoid(gi[0] + gh[0]).chunk(2, -1)
            n = torch.tanh(torch.addcmul(gi[1], r, gh[1]))  # tanh(W_in x + b_in + r * (W_hn h + b_hn))
            return torch.lerp(n, state, z)
        if self.cell_type == "lstm":  # i, f, g, o order
            h, c = state
            i, f, g, o = (gi + gh).chunk(4, -1)
            c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
            return torch.sigmoid(o) * torch.tanh(c), c
        return torch.tanh(gi + gh)

    def _hidden_gates(self, params, h):
        """h @ W_hh + b_hh for a batch of hidden states [R, N, H] -> [R, N, G*H]."""
        return torch.baddbmm(params["bias_hh"], h, params["weight_hh"])

    def root(self, prep):
        bias_hh = prep["params"]["bias_hh"]
        zeros = bias_hh.new_zeros(bias_hh.shape[0], 1, self.hidden_size)
        start = (zeros, zeros) if self.cell_type == "lstm" else zeros
        return self._cell(prep["gi_bos"], self._split(bias_hh), start)  # from the zero state W_hh h = 0

    def advance(self, prep, state, actions):
        h = state[0] if self.cell_type == "lstm" else state
        return self._cell(self._split(prep["gi_actions"][:, actions]),
                          self._split(self._hidden_gates(prep["params"], h)), state)

    def expand(self, prep, state):
        # Hidden-side gates once per parent [R, N, 1, G*H], input-side once per action [R, 1, b, G*H]:
        # broadcasting gives every child without repeating the parents.
        h = state[0] if self.cell_type == "lstm" else state
        gh = self._split(self._hidden_gates(prep["params"], h).unsqueeze(2))
        parent = tuple(s.unsqueeze(2) for s in state) if self.cell_type == "lstm" else state.unsqueeze(2)
        child = self._cell(prep["gi_children"], gh, parent)  # [R, N, b, H]
        flat = lambda s: s.reshape(s.shape[0], -1, self.hidden_size)  # noqa: E731  [R, N*b, H], child j*b + k
        return tuple(flat(s) for s in child) if self.cell_type == "lstm" else flat(child)

    def next_log_probs(self, prep, state):
        h = state[0] if self.cell_type == "lstm" else state
        params = prep["params"]
        return torch.log_softmax(torch.baddbmm(params["head_bias"], h, params["head_weight"]), dim=-1)

    def repeat_state(self, state, times):
        # The root ([R, 1, ...]) is repeated for rollouts: expand, no copy.
        if self.state_rows(state) == 1:
            grow = lambda s: s.expand(s.shape[0], times, s.shape[2])  # noqa: E731
            return tuple(grow(s) for s in state) if isinstance(state, tuple) else grow(state)
        return super().repeat_state(state, times)

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

    # The state is the BFS index of each node, LongTensor [N], the same for every stacked run.
    def root(self, prep):
        return torch.zeros(1, dtype=torch.long, device=self.next_state.device)

    def advance(self, prep, state, actions):
        return self.next_state[state, actions]

    def expand(self, prep, state):  # children of a node are contiguous in BFS order
        return self.next_state[state].reshape(-1)

    def next_log_probs(self, prep, state):
        return torch.log_softmax(prep["logits"][:, state], dim=-1)  # [R, N, b]

    def state_rows(self, state):
        return state.shape[0]

    def repeat_state(self, state, times):
        return state.repeat_interleave(times, 0)

    def cat_states(self, states):
        return torch.cat(states, 0)

    def slice_state(self, state, start, stop):
        return state[start:stop]

    @property
    def device(self) -> torch.device:
        return self.logits.device


# ----- the registry ------------------------------------------------------------------------------
#: name -> builder(mdp, *, seed, hidden_size, cell) -> TreePolicy. Builders ignore settings they
#: do not use (a tabular policy has no hidden size).
POLICIES: dict[str, Callable[..., TreePolicy]] = {}


def register_policy(name: str, builder: Callable[..., TreePolicy] | None = None):
    """Register a policy under ``name`` (usable as a decorator); ``train(policy=name)`` then builds it.

    The builder is called as ``builder(mdp, seed=..., hidden_size=..., cell=...)`` and returns a
    :class:`TreePolicy`, e.g.::

        @register_policy("mlp")
        def build_mlp(mdp, *, seed, hidden_size, **_):
            return MyMLPPolicy(mdp, hidden_size, seed)
    """
    def add(builder):
        POLICIES[name] = builder
        return builder
    return add(builder) if builder is not None else add


register_policy("rnn", lambda mdp, *, seed=0, hidden_size=32, cell="gru", **_: RNNPolicy(
    mdp, hidden_size=hidden_size, cell=cell, seed=seed))
register_policy("tabular", lambda mdp, *, seed=0, **_: TabularPolicy(mdp, seed=seed))


def make_policy(mdp: TreeMDP, kind: str = "rnn", *, seed: int = 0, hidden_size: int = 32,
                cell: str = "gru") -> TreePolicy:
    """Build a registered policy by name (``"rnn"``, ``"tabular"``, or one a user registered)."""
    if kind not in POLICIES:
        raise UserError(f"unknown policy {kind!r}; choose one of: {', '.join(POLICIES)}")
    return POLICIES[kind](mdp, seed=seed, hidden_size=hidden_size, cell=cell)


class TransformerPolicy(TreePolicy):
    """A small causal transformer over action tokens (GPT-style: pre-LayerNorm, learned positions).

    It reads BOS then the prefix and predicts the next action at every position, like a language
    model. It implements only :meth:`stacked_log_probs`: every trajectory is run as a whole
    sequence (no prefix sharing), so memory grows as trajectories x depth x hidden size; meant for
    trees up to ~10^5 trajectories. It shows that a policy needs nothing but its parameters and
    its log-probs over all trajectories (``action_log_probs`` comes from the enumeration).

    Args:
        mdp: the tree.
        hidden_size: model width (divisible by ``heads``).
        layers: transformer blocks.
        heads: attention heads.
        seed: weights N(0, 0.02) from a local generator; biases 0; LayerNorm gains 1.
    """

    def __init__(self, mdp: TreeMDP, hidden_size: int = 32, layers: int = 2, heads: int = 2, seed: int | None = 0):
        super().__init__()
        E = int(hidden_size)
        if E < 1 or E % heads:
            raise UserError(f"hidden_size must be a positive multiple of heads={heads}, got {hidden_size}")
        self.mdp, self.hidden_size, self.layers, self.heads = mdp, E, int(layers), int(heads)
        generator = _generator(seed)
        normal = lambda *shape: nn.Parameter(torch.randn(*shape, generator=generator) * 0.02)  # noqa: E731
        zeros = lambda *shape: nn.Parameter(torch.zeros(*shape))  # noqa: E731
        ones = lambda *shape: nn.Parameter(torch.ones(*shape))  # noqa: E731
        b = mdp.branching
        self.tokens = normal(b + 1, E)  # row b is BOS
        self.positions = normal(mdp.depth, E)
        for i in range(self.layers):
            for name, p in (("ln1_w", ones(1, E)), ("ln1_b", zeros(1, E)), ("qkv_w", normal(E, 3 * E)),
                            ("qkv_b", zeros(1, 3 * E)), ("out_w", normal(E, E)), ("out_b", zeros(1, E)),
                            ("ln2_w", ones(1, E)), ("ln2_b", zeros(1, E)), ("mlp_w1", normal(E, 4 * E)),
                            ("mlp_b1", zeros(1, 4 * E)), ("mlp_w2", normal(4 * E, E)), ("mlp_b2", zeros(1, E))):
                self.register_parameter(f"block{i}_{name}", p)
        self.ln_f_w, self.ln_f_b = ones(1, E), zeros(1, E)
        self.head_w, self.head_b = normal(E, b), zeros(1, b)
        trajectories = mdp.trajectories()
        inputs = torch.cat([torch.full((len(trajectories), 1), b), trajectories[:, :-1]], 1)  # BOS + prefix
        self.register_buffer("inputs", inputs, persistent=False)  # [T, depth]
        self.register_buffer("targets", trajectories, persistent=False)  # [T, depth]

    @staticmethod
    def _layer_norm(x, w, b):
        """LayerNorm over the last dim with per-run gain and bias ([R, 1, E] -> broadcast over [R, T, d, E])."""
        return torch.nn.functional.layer_norm(x, x.shape[-1:]) * w[:, None] + b[:, None]

    def stacked_log_probs(self, params, *, chunk_leaves=None):
        R, E, H = params["tokens"].shape[0], self.hidden_size, self.heads
        T, d = self.inputs.shape
        x = params["tokens"][:, self.inputs] + params["positions"][:, None]  # [R, T, d, E]
        causal = torch.ones(d, d, dtype=torch.bool, device=x.device).tril()
        for i in range(self.layers):
            p = lambda name: params[f"block{i}_{name}"]  # noqa: E731
            h = self._layer_norm(x, p("ln1_w"), p("ln1_b"))
            qkv = torch.matmul(h, p("qkv_w")[:, None]) + p("qkv_b")[:, None]  # [R, T, d, 3E]
            q, k, v = (t.reshape(R, T, d, H, E // H).transpose(2, 3) for t in qkv.chunk(3, -1))  # [R, T, H, d, E/H]
            attention = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal)
            x = x + torch.matmul(attention.transpose(2, 3).reshape(R, T, d, E), p("out_w")[:, None]) + p("out_b")[:, None]
            h = self._layer_norm(x, p("ln2_w"), p("ln2_b"))
            hidden = torch.nn.functional.gelu(torch.matmul(h, p("mlp_w1")[:, None]) + p("mlp_b1")[:, None])
            x = x + torch.matmul(hidden, p("mlp_w2")[:, None]) + p("mlp_b2")[:, None]
        logits = torch.matmul(self._layer_norm(x, params["ln_f_w"], params["ln_f_b"]),
                              params["head_w"][:, None]) + params["head_b"][:, None]  # [R, T, d, b]
        step = torch.log_softmax(logits, -1).gather(-1, self.targets.expand(R, T, d)[..., None])[..., 0]
        return step.sum(-1)  # log p(y) = sum_t log pi(a_t | BOS, a_<t), [R, T]

    @property
    def device(self) -> torch.device:
        return self.tokens.device


register_policy("transformer", lambda mdp, *, seed=0, hidden_size=32, **_: TransformerPolicy(
    mdp, hidden_size=hidden_size, seed=seed))
