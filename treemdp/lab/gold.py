"""Gold rewards r*(y) over the trajectories of a tree: the toy's ground truth of quality.

A :class:`GoldReward` is a float64 vector [T] in ``mdp.trajectories()`` order, plus a simple
*feature* f(y) (the count of one action in y: the toy's analogue of answer length, paper §3.3)
and, for rewards that define one, the *support* the data come from. Built-in kinds, by name:

    random            r*(y) ~ N(0, 1), independent per trajectory (seeded)
    additive          r*(y) = sum_t w(s_t, a_t), one N(0, 1/depth) reward per (state, action): a dense token reward
    spurious          r*(y) = z(y) + strength * f~(y) on the support, z(y) + off * strength * f~(y) off it

``spurious``: z ~ N(0, 1) per trajectory, f~ the standardised count of action ``action``; the
support is the trajectories whose first action is below branching / 2 (a region of the tree, like
a topic). On the support the simple feature raises the gold reward; off it, it lowers it
(``off = -1``) or does nothing (``off = 0``). Data drawn from the support teach "more of that
action is better", which holds only where the data were.

Parameters go in the name, as for objectives: ``spurious(strength=2, off=0)``. A user's reward is
a tensor/array of T values, a file (``.pt``, ``.npy``, ``.json`` list) or a callable
``f(actions LongTensor [T, depth]) -> [T]`` (on the command line ``package.module:function``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from .. import specs
from ..errors import UserError
from ..rng import stream
from ..tree import TreeMDP


@dataclass(frozen=True)
class GoldReward:
    """A gold reward over a tree's trajectories.

    Attributes:
        name: its spec (``random``, ``spurious(strength=2)``, ``file.npy``, ...).
        values: r*(y), float64 [T], ``mdp.trajectories()`` order.
        feature: the simple feature f(y) (count of ``feature_action``), float64 [T].
        feature_action: the action f counts.
        support: bool [T], where the data distribution lives (None: everywhere).
    """

    name: str
    values: torch.Tensor
    feature: torch.Tensor
    feature_action: int = 0
    support: Optional[torch.Tensor] = field(default=None, compare=False)

    @property
    def n_trajectories(self) -> int:
        return int(self.values.shape[0])


# ----- the built-in kinds --------------------------------------------------------------------------
def action_count(mdp: TreeMDP, action: int) -> torch.Tensor:
    """f(y): how many times ``action`` occurs in each trajectory, float64 [T]."""
    return (mdp.trajectories() == action).sum(-1).double()


def _normal(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(stream(seed, "gold").standard_normal(n))


def random_gold(mdp: TreeMDP, seed: int = 0) -> torch.Tensor:
    """r*(y) ~ N(0, 1) independently per trajectory."""
    return _normal(mdp.n_trajectories, seed)


def additive_gold(mdp: TreeMDP, seed: int = 0) -> torch.Tensor:
    """r*(y) = sum_t w(s_t, a_t) with w ~ N(0, 1/depth) per edge (variance 1 per trajectory)."""
    w = _normal(mdp.n_states * mdp.branching, seed) / math.sqrt(mdp.depth)
    return w[mdp.edge_index()].sum(-1)


def spurious_support(mdp: TreeMDP) -> torch.Tensor:
    """The spurious reward's support: first action < ceil(branching / 2), bool [T]."""
    return mdp.trajectories()[:, 0] < (mdp.branching + 1) // 2


def spurious_gold(mdp: TreeMDP, seed: int = 0, *, strength: float = 1.0, off: float = -1.0,
                  action: int = 0) -> torch.Tensor:
    """z(y) + strength * f~(y) on the support, z(y) + off * strength * f~(y) elsewhere (see module doc)."""
    count = action_count(mdp, action)
    standard = (count - count.mean()) / count.std(unbiased=False)
    sign = torch.where(spurious_support(mdp), 1.0, float(off)).double()
    return _normal(mdp.n_trajectories, seed) + strength * sign * standard


#: name -> (builder(mdp, seed, **params) -> values [T], parameter defaults)
GOLDS: dict[str, tuple[Callable[..., torch.Tensor], dict]] = {
    "random": (random_gold, {}),
    "additive": (additive_gold, {}),
    "spurious": (spurious_gold, {"strength": 1.0, "off": -1.0, "action": 0}),
}

def parse_spec(spec: str) -> tuple[str, dict]:
    """``"spurious(strength=2, off=0)"`` -> ``("spurious", {"strength": 2.0, "off": 0.0})``
    (read by :func:`treemdp.specs.parse_spec`; every parameter is a number)."""
    try:
        name, params = specs.parse_spec(spec, "gold reward")
    except ValueError:
        raise UserError(f"bad gold reward {spec!r}: write NAME or NAME(key=value, ...)") from None
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"bad gold reward {spec!r}: parameter {key}={specs.format_value(value)} is not key=number")
        params[key] = float(value)
    return name, params


# ----- building one ----------------------------------------------------------------------------------
GoldSpec = Union[str, torch.Tensor, np.ndarray, list, Callable[[torch.Tensor], object], GoldReward]


def make_gold(mdp: TreeMDP, spec: GoldSpec = "random", *, seed: int = 0) -> GoldReward:
    """A :class:`GoldReward` from a name (see :data:`GOLDS`), a tensor/array/list of T values, a
    file (``.pt``, ``.npy``, ``.json``), a callable on the actions [T, depth], or ``module:function``.

    Raises:
        UserError: unknown name or parameter, wrong length, non-finite values, unreadable file.
    """
    if isinstance(spec, GoldReward):
        values, name, support, action = spec.values, spec.name, spec.support, spec.feature_action
    else:
        support, action = None, 0
        if isinstance(spec, str) and ":" not in spec and not spec.lower().endswith((".pt", ".npy", ".json")):
            kind, params = parse_spec(spec)
            if kind not in GOLDS:
                raise UserError(f"unknown gold reward {kind!r}; choose one of: {', '.join(GOLDS)}, a file "
                                "(.pt/.npy/.json), or package.module:function")
            build, defaults = GOLDS[kind]
            unknown = set(params) - set(defaults)
            if unknown:
                raise UserError(f"gold reward {kind!r} has no parameter {sorted(unknown)[0]!r}"
                                + (f" (it has: {', '.join(defaults)})" if defaults else " (it takes none)"))
            if "action" in params:
                action = _action(mdp, params["action"])
                params["action"] = action
            values = build(mdp, seed, **params)
            name = spec.replace(" ", "")
            if kind == "spurious":
                support = spurious_support(mdp)
        else:
            values, name = _user_values(mdp, spec)
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if values.shape[0] != mdp.n_trajectories:
        raise UserError(f"gold reward {name!r} has {values.shape[0]} values; the tree has "
                        f"{mdp.n_trajectories} trajectories")
    if not torch.isfinite(values).all():
        raise UserError(f"gold reward {name!r} has NaN or infinite values")
    return GoldReward(name, values, action_count(mdp, action), action, support)


def _action(mdp: TreeMDP, value: float) -> int:
    if value != int(value) or not 0 <= value < mdp.branching:
        raise UserError(f"the spurious feature's action must be an integer in [0, {mdp.branching}), got {value:g}")
    return int(value)


def _user_values(mdp: TreeMDP, spec) -> tuple[object, str]:
    """Values from a tensor, array, list, file or callable, and a name for them."""
    if isinstance(spec, (torch.Tensor, np.ndarray, list, tuple)):
        return spec, "user"
    if isinstance(spec, str) and spec.lower().endswith((".pt", ".npy", ".json")):
        return _read_file(Path(spec)), spec
    if isinstance(spec, str):  # module:function
        try:
            fn = specs.load_attribute(spec)
        except (ImportError, AttributeError, ValueError) as e:
            raise UserError(f"cannot import gold reward {spec!r}: {e}") from None
        return _call(fn, mdp, spec), spec
    if callable(spec):
        return _call(spec, mdp, getattr(spec, "__name__", "callable")), getattr(spec, "__name__", "callable")
    raise UserError(f"a gold reward must be a name, a file, a tensor or a callable, got {type(spec).__name__}")


def _call(fn, mdp: TreeMDP, name: str):
    try:
        return torch.as_tensor(fn(mdp.trajectories()), dtype=torch.float64)
    except UserError:
        raise
    except Exception as e:  # the user's function failed: one line naming it
        raise UserError(f"gold reward {name!r} failed on the trajectories [T, depth]: {type(e).__name__}: {e}") from None


def _read_file(path: Path):
    try:
        if path.suffix.lower() == ".json":
            return json.loads(path.read_text())
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"gold reward file {str(path)!r} does not exist") from None
    except Exception as e:  # unreadable or malformed file
        raise UserError(f"cannot read gold reward file {str(path)!r}: {type(e).__name__}: {e}") from None


__all__ = ["GoldReward", "GOLDS", "make_gold", "random_gold", "additive_gold", "spurious_gold",
           "spurious_support", "action_count", "parse_spec"]
