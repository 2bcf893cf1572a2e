"""Neighbouring results re-run exactly on the tree, each a library function with a verdict.

- :mod:`.displacement`: likelihood displacement and the CHES score (Razin et al. 2024).
- :mod:`.squeezing`: the squeezing effect of a negative gradient (Ren & Sutherland 2025).
- :mod:`.ipo`: IPO's argument on a bandit (Azar et al. 2023), against closed forms.
- :mod:`.unseen`: unseen answers, DPO vs KL-regularised RLHF (Xu et al. 2024).
- :mod:`.explain`: where a run's chosen probability went (``treemdp explain RUN``).
- :mod:`.figures`: one figure per phenomenon, drawn by ``treemdp reproduce``.

The paper's theory (query matrix, null space, soft-Q view) is in :mod:`treemdp.theory`.
"""

import importlib as _importlib

#: The submodules, imported on first use (``treemdp.phenomena.displacement`` or ``from ... import``).
__all__ = ["displacement", "squeezing", "ipo", "unseen", "explain", "figures", "stacked"]


def __getattr__(name: str):
    if name in __all__:
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
