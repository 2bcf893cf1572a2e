"""treemdp: see why direct alignment algorithms put probability on answers nobody showed them.

Toy track: an exact tree-structured token MDP (Rafailov et al., 2024, App. E), RNN and tabular
policies, exact enumeration of trajectory probabilities, SFT then DPO/IPO/SLiC. LLM track
(``treemdp.llm``, imported lazily): the same losses on Pythia / GPT-NeoX models.
"""

from . import kernels as _kernels

_kernels.pin()  # before anything loads torch, MKL or OpenBLAS: same kernels, same bits on every x86-64 CPU

from gymnasium.envs.registration import register as _register

from .errors import UserError
from .exact import (entropy, in_distribution_mask, kl_divergence, mass, ood_mass,
                    sequence_log_probs, top_ood, trajectory_log_probs)
from .losses import LOSSES, implicit_reward, preference_h, preference_loss
from .policies import POLICIES, RNNPolicy, TabularPolicy, TransformerPolicy, make_policy, register_policy
from .tree import Dataset, Preference, TreeMDP, load_dataset, make_dataset, paper_dataset


def load_run(path):
    """Read a run folder back: config, dataset, summary, metrics, history, policy, reference.

    See :func:`treemdp.runs.load_run`."""
    from .runs import load_run as _load_run
    return _load_run(path)


def load_sweep(path):
    """Read a sweep folder back: ``results`` and ``run(name)``. See :func:`treemdp.runs.load_sweep`."""
    from .runs import load_sweep as _load_sweep
    return _load_sweep(path)

__version__ = "0.1.0"

ENV_ID = "treemdp/TreeMDP-v0"
_register(id=ENV_ID, entry_point="treemdp.env:TreeMDPEnv")

__all__ = [
    "TreeMDP", "RNNPolicy", "TabularPolicy", "paper_dataset", "trajectory_log_probs",
    "preference_loss", "preference_h", "implicit_reward", "LOSSES", "Dataset", "Preference",
    "make_dataset", "load_dataset", "make_policy", "in_distribution_mask", "mass", "ood_mass",
    "kl_divergence", "entropy", "top_ood", "sequence_log_probs", "UserError", "ENV_ID",
    "load_run", "load_sweep", "POLICIES", "register_policy", "TransformerPolicy",
]
