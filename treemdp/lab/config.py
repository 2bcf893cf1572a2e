"""One lab run's settings: :class:`LabConfig` (every field is a ``treemdp lab`` flag)."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass

from ..engine import OPTIMIZERS
from ..errors import UserError
from ..losses import get_objective
from ..policies import CELLS, POLICIES
from ..training import check_beta_user, loss_spec
from ..tree import TreeMDP

METHODS = ("daa", "rlhf", "bon")
PAIR_SOURCES = ("reference", "uniform")
#: n of best-of-n when none is given.
DEFAULT_N = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


@dataclass(frozen=True)
class LabConfig:
    """Every setting of one over-optimization lab run; ``config.json`` holds these fields."""

    method: str = "daa"
    """daa (a direct alignment objective), rlhf (Bradley-Terry reward model, then E_pi[r] - beta*KL by exact gradient) or bon (best-of-n under that reward model)."""
    loss: str = "dpo"
    """DAA objective (method daa): dpo, ipo, slic or any name of 'treemdp losses'."""
    beta: float = 0.1
    """beta of the DAA objective, or the KL coefficient of RLHF; finite and > 0."""
    seed: int = 0
    """Seeds the data draws and the initialisations; same seed, same numbers on CPU."""
    pairs: int = 64
    """N, the number of preference pairs (the pairs of one seed are nested: N=16 is a prefix of N=64)."""
    tree: str = "4x4"
    """Tree shape BRANCHINGxDEPTH (4x4: 256 trajectories)."""
    gold: str = "random"
    """Gold reward r*: random, additive, spurious (with parameters: spurious(strength=2, off=0)), a .pt/.npy/.json file of T values, or module:function."""
    gold_seed: int = 0
    """Seeds the gold reward (the task); runs with other seeds share it."""
    demos: int = 64
    """SFT demonstrations drawn from the data distribution softmax(r*/demo_temperature) on the gold's support."""
    demo_temperature: float = 1.0
    """Temperature of the data distribution of the demonstrations; > 0."""
    pair_source: str = "reference"
    """Where both answers of a pair come from: reference (the SFT policy) or uniform."""
    label_temperature: float = 1.0
    """Bradley-Terry label noise: P(y1 > y2) = sigmoid((r*(y1) - r*(y2)) / T); 0: deterministic."""
    policy: str = "rnn"
    """Policy class: rnn or tabular (or a registered one)."""
    cell: str = "gru"
    """Recurrent cell of the rnn policy (and of the rnn reward model)."""
    hidden_size: int = 16
    """Hidden size of the rnn policy: the toy's model size."""
    optimizer: str = "adam"
    """Optimiser of every phase: adam, rmsprop or sgd (torch.optim defaults)."""
    sft_lr: float = 1e-2
    """Learning rate of SFT on the demonstrations."""
    sft_steps: int = 200
    """Full-batch SFT steps."""
    lr: float = 1e-2
    """Learning rate of the policy optimisation (DAA or RLHF)."""
    steps: int = 1000
    """Policy optimisation steps (DAA or RLHF); every step is measured."""
    batch_size: int = 0
    """Preference pairs per DAA step (minibatches without replacement, epoch after epoch); 0: all pairs every step."""
    rm: str = "rnn"
    """Reward model (rlhf, bon): rnn (the policy's network with per-token reward outputs) or tabular."""
    rm_hidden_size: int = 16
    """Hidden size of the rnn reward model."""
    rm_lr: float = 1e-2
    """Learning rate of the reward model's Bradley-Terry fit."""
    rm_steps: int = 300
    """Full-batch Bradley-Terry steps of the reward model."""
    n: tuple = DEFAULT_N
    """Best-of-n sizes (method bon)."""
    ref_sync_steps: int = 0
    """DAA with TR-DPO: update the loss's reference every N steps (0: frozen, the paper's); measurements keep the SFT reference."""
    ref_mixup_alpha: float = 1.0
    """TR-DPO: ref <- alpha * policy + (1 - alpha) * ref at each update, alpha in (0, 1] (1: a copy)."""
    log_every: int = 1
    """Write every this many steps to curve.csv (and the last); measurements are taken at every step."""
    threads: int = 1
    """torch threads."""
    device: str = "cpu"
    """Torch device."""

    # ----- derived ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return parse_tree(self.tree)

    @property
    def mdp(self) -> TreeMDP:
        return TreeMDP(*self.shape)

    def validate(self) -> "LabConfig":
        """Raise UserError naming the first bad field; return the config with canonical spellings."""
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of: {', '.join(METHODS)}")
        try:
            objective = get_objective(self.loss)
        except ValueError as e:
            raise UserError(str(e)) from None
        check_beta_user(self.beta)
        _check_gold(self.tree, self.gold, self.gold_seed)  # validates the tree too
        for name in ("pairs", "demos", "hidden_size", "rm_hidden_size", "log_every", "threads"):
            _positive_int(name, getattr(self, name))
        for name in ("seed", "gold_seed", "sft_steps", "steps", "rm_steps", "batch_size", "ref_sync_steps"):
            _positive_int(name, getattr(self, name), low=0)
        for name in ("sft_lr", "lr", "rm_lr", "demo_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UserError(f"{name} must be a finite number > 0, got {value!r}")
        if isinstance(self.ref_mixup_alpha, bool) or not isinstance(self.ref_mixup_alpha, (int, float)) \
                or not 0 < self.ref_mixup_alpha <= 1:
            raise UserError(f"ref_mixup_alpha must be in (0, 1], got {self.ref_mixup_alpha!r}")
        if (isinstance(self.label_temperature, bool) or not isinstance(self.label_temperature, (int, float))
                or not math.isfinite(self.label_temperature) or self.label_temperature < 0):
            raise UserError(f"label_temperature must be a finite number >= 0, got {self.label_temperature!r}")
        for name, table in (("policy", POLICIES), ("cell", CELLS), ("optimizer", OPTIMIZERS),
                            ("pair_source", PAIR_SOURCES)):
            if getattr(self, name) not in table:
                raise UserError(f"unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(table)}")
        from .rlhf import SCORERS
        if self.rm not in SCORERS:
            raise UserError(f"unknown reward model {self.rm!r}; choose one of: {', '.join(SCORERS)}")
        n = tuple(self.n) if isinstance(self.n, (list, tuple)) else (self.n,)
        if not n:
            raise UserError("best-of-n needs at least one n")
        for value in n:
            _positive_int("n", value)
        try:
            import torch
            torch.device(self.device)
        except RuntimeError:
            raise UserError(f"unknown device {self.device!r}") from None
        canonical = dict(loss=objective.spec if isinstance(self.loss, str) else self.loss,
                         n=tuple(sorted(set(int(v) for v in n))))
        return dataclasses.replace(self, **{**canonical, **self._unused()})

    def _unused(self) -> dict:
        """Settings the method ignores, reset to their defaults (so a grid over them does not repeat runs)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {name: defaults[name] for name in IGNORED[self.method]}

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["loss"] = loss_spec(self.loss)
        out["n"] = list(self.n)
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> "LabConfig":
        """From a dict (``config.json``), refusing unknown keys."""
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UserError(f"unknown lab config keys: {', '.join(sorted(unknown))}")
        raw = dict(raw)
        if "n" in raw:
            raw["n"] = tuple(raw["n"]) if isinstance(raw["n"], (list, tuple)) else (raw["n"],)
        return cls(**raw)


#: The settings each method ignores (kept at their defaults).
IGNORED = {"daa": ("rm", "rm_hidden_size", "rm_lr", "rm_steps", "n"), "rlhf": ("loss", "batch_size", "n"),
           "bon": ("loss", "beta", "lr", "steps", "batch_size")}


@functools.lru_cache(maxsize=64)
def _check_gold(tree: str, gold, gold_seed: int) -> None:
    """Build the gold reward once per (tree, spec, seed), so a bad one fails before any work."""
    from .gold import make_gold
    make_gold(TreeMDP(*parse_tree(tree)), gold, seed=gold_seed)


def _positive_int(name: str, value, *, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}")


_TREE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_tree(text: str) -> tuple[int, int]:
    """``"4x4"`` -> (branching 4, depth 4); validated by :class:`~treemdp.tree.TreeMDP`."""
    match = _TREE.match(str(text))
    if not match:
        raise UserError(f"bad tree {text!r}: write BRANCHINGxDEPTH, e.g. 4x4 (256 trajectories) or 3x3")
    branching, depth = int(match.group(1)), int(match.group(2))
    TreeMDP(branching, depth)
    return branching, depth


#: Fields that may differ between the runs of one stacked batch; the rest make its shape.
PER_RUN_FIELDS = ("loss", "beta", "seed", "pairs", "gold", "gold_seed", "demos", "demo_temperature", "pair_source",
                  "label_temperature", "sft_lr", "lr", "rm_lr")


def shape_key(config: LabConfig) -> tuple:
    """What the runs of one batch share: every field but :data:`PER_RUN_FIELDS`."""
    return tuple((k, str(v)) for k, v in sorted(config.to_dict().items()) if k not in PER_RUN_FIELDS)


__all__ = ["LabConfig", "METHODS", "PAIR_SOURCES", "DEFAULT_N", "parse_tree", "shape_key", "PER_RUN_FIELDS"]
