"""One lab run's settings: :class:`LabConfig` (every field is a ``treemdp lab`` flag)."""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass

from ..engine import OPTIMIZERS
from ..errors import UserError
from ..losses import get_objective
from ..objectives import check_loss, loss_spec
from ..policies import CELLS, POLICIES
from ..settings import Settings, check_bool, check_integer, check_non_negative, check_positive, check_real, setting
from ..tree import TreeMDP

METHODS = ("daa", "rlhf", "bon")
PAIR_SOURCES = ("reference", "uniform")
#: n of best-of-n when none is given.
DEFAULT_N = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


def _scorers() -> list[str]:
    from .rlhf import SCORERS
    return list(SCORERS)


def check_best_of_n(value) -> tuple:
    """One best-of-n size or several, each an integer >= 1."""
    n = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not n:
        raise UserError("best-of-n needs at least one n")
    for item in n:
        check_integer(1)(item)
    return n


def check_tree(text: str) -> str:
    """BRANCHINGxDEPTH naming a valid tree (see :func:`parse_tree`)."""
    parse_tree(text)
    return text


def check_device_name(name: str) -> str:
    """A name ``torch.device`` reads (whether this machine has it is checked when the run starts)."""
    import torch
    try:
        torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}") from None
    return name


@dataclass(frozen=True)
class LabConfig(Settings):
    """Every setting of one over-optimization lab run; ``config.json`` holds these fields."""

    method: str = setting("daa", choices=METHODS)
    """daa (a direct alignment objective), rlhf (Bradley-Terry reward model, then E_pi[r] - beta*KL by exact gradient) or bon (best-of-n under that reward model)."""
    loss: str = setting("dpo", check=check_loss)
    """DAA objective (method daa): dpo, ipo, slic or any name of 'treemdp losses'."""
    beta: float = setting(0.1, check=check_positive)
    """beta of the DAA objective, or the KL coefficient of RLHF; finite and > 0."""
    seed: int = setting(0, check=check_integer(0))
    """Seeds the data draws and the initialisations; same seed, same numbers on CPU."""
    pairs: int = setting(64, check=check_integer(1))
    """N, the number of preference pairs (the pairs of one seed are nested: N=16 is a prefix of N=64)."""
    tree: str = setting("4x4", check=check_tree)
    """Tree shape BRANCHINGxDEPTH (4x4: 256 trajectories)."""
    gold: str = "random"
    """Gold reward r*: random, additive, spurious (with parameters: spurious(strength=2, off=0)), a .pt/.npy/.json file of T values, or module:function."""
    gold_seed: int = setting(0, check=check_integer(0))
    """Seeds the gold reward (the task); runs with other seeds share it."""
    demos: int = setting(64, check=check_integer(1))
    """SFT demonstrations drawn from the data distribution softmax(r*/demo_temperature) on the gold's support."""
    demo_temperature: float = setting(1.0, check=check_positive)
    """Temperature of the data distribution of the demonstrations; > 0."""
    pair_source: str = setting("reference", choices=PAIR_SOURCES)
    """Where both answers of a pair come from: reference (the SFT policy) or uniform."""
    label_temperature: float = setting(1.0, check=check_non_negative)
    """Bradley-Terry label noise: P(y1 > y2) = sigmoid((r*(y1) - r*(y2)) / T); 0: deterministic."""
    policy: str = setting("rnn", choices=lambda: POLICIES)
    """Policy class: rnn or tabular (or a registered one)."""
    cell: str = setting("gru", choices=lambda: CELLS)
    """Recurrent cell of the rnn policy (and of the rnn reward model)."""
    hidden_size: int = setting(16, check=check_integer(1))
    """Hidden size of the rnn policy: the toy's model size."""
    optimizer: str = setting("adam", choices=lambda: OPTIMIZERS)
    """Optimiser of every phase: adam, rmsprop or sgd (torch.optim defaults)."""
    sft_lr: float = setting(1e-2, check=check_positive)
    """Learning rate of SFT on the demonstrations."""
    sft_steps: int = setting(200, check=check_integer(0))
    """Full-batch SFT steps."""
    lr: float = setting(1e-2, check=check_positive)
    """Learning rate of the policy optimisation (DAA or RLHF)."""
    steps: int = setting(1000, check=check_integer(0))
    """Policy optimisation steps (DAA or RLHF); every step is measured."""
    batch_size: int = setting(0, check=check_integer(0))
    """Preference pairs per DAA step (minibatches without replacement, epoch after epoch); 0: all pairs every step."""
    rm: str = setting("rnn", choices=_scorers, label="reward model")
    """Reward model (rlhf, bon): rnn (the policy's network with per-token reward outputs) or tabular."""
    rm_hidden_size: int = setting(16, check=check_integer(1))
    """Hidden size of the rnn reward model."""
    rm_lr: float = setting(1e-2, check=check_positive)
    """Learning rate of the reward model's Bradley-Terry fit."""
    rm_steps: int = setting(300, check=check_integer(0))
    """Full-batch Bradley-Terry steps of the reward model."""
    rm_normalize: bool = setting(True, check=check_bool)
    """Rescale the reward model to mean 0, variance 1 under the reference before RLHF (Ziegler et al. 2019), so beta is on one scale whatever the fit's; false: the raw Bradley-Terry fit. Best-of-n does not depend on it."""
    n: tuple = setting(DEFAULT_N, check=check_best_of_n)
    """Best-of-n sizes (method bon)."""
    ref_sync_steps: int = setting(0, check=check_integer(0))
    """DAA with TR-DPO: update the loss's reference every N steps (0: frozen, the paper's); measurements keep the SFT reference."""
    ref_mixup_alpha: float = setting(1.0, check=check_real(0.0, 1.0, low_open=True))
    """TR-DPO: ref <- alpha * policy + (1 - alpha) * ref at each update, alpha in (0, 1] (1: a copy)."""
    log_every: int = setting(1, check=check_integer(1))
    """Write every this many steps to curve.csv (and the last); measurements are taken at every step."""
    threads: int = setting(1, check=check_integer(1))
    """torch threads."""
    device: str = setting("cpu", check=check_device_name)
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
        self.check_fields()
        _check_gold(self.tree, self.gold, self.gold_seed)  # the gold reward needs its tree and seed
        objective = get_objective(self.loss)
        n = tuple(self.n) if isinstance(self.n, (list, tuple)) else (self.n,)
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
IGNORED = {"daa": ("rm", "rm_hidden_size", "rm_lr", "rm_steps", "rm_normalize", "n"), "rlhf": ("loss", "batch_size", "n"),
           "bon": ("loss", "beta", "lr", "steps", "batch_size", "rm_normalize")}


@functools.lru_cache(maxsize=64)
def _check_gold(tree: str, gold, gold_seed: int) -> None:
    """Build the gold reward once per (tree, spec, seed), so a bad one fails before any work."""
    from .gold import make_gold
    make_gold(TreeMDP(*parse_tree(tree)), gold, seed=gold_seed)


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
                  "label_temperature", "sft_lr", "lr", "rm_lr", "rm_normalize")


def shape_key(config: LabConfig) -> tuple:
    """What the runs of one batch share: every field but :data:`PER_RUN_FIELDS`."""
    return tuple((k, str(v)) for k, v in sorted(config.to_dict().items()) if k not in PER_RUN_FIELDS)


__all__ = ["LabConfig", "METHODS", "PAIR_SOURCES", "DEFAULT_N", "parse_tree", "shape_key", "PER_RUN_FIELDS"]
