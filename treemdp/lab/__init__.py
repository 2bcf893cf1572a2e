"""The over-optimization lab: the paper's title result computed exactly on a tree.

Gold rewards (:mod:`.gold`), data drawn from them (:mod:`.data`), exact quality and frontiers
(:mod:`.quality`), best-of-n (:mod:`.bestofn`), reward models for classical RLHF (:mod:`.rlhf`),
the lab's per-step measurements (:mod:`.measures`), batched runs on the engine (:mod:`.runner`),
resumable run folders (:mod:`.store`), Gao et al. fits (:mod:`.fits`) and the figures
(:mod:`.figures`). See the README's lab section and ``treemdp lab --help``.
"""

from .bestofn import BestOfN, best_of_n_probs, best_of_n_table, kl_bound
from .config import LabConfig, parse_tree
from .data import bradley_terry_probability, data_distribution, sample_demonstrations, sample_pairs
from .gold import GOLDS, GoldReward, make_gold
from .quality import expected, frontier, kl, tilted_log_probs, weighted_r2, win_rate, win_scores
from .runner import LabResult, run_lab

__all__ = ["BestOfN", "best_of_n_probs", "best_of_n_table", "kl_bound", "LabConfig", "parse_tree",
           "bradley_terry_probability", "data_distribution", "sample_demonstrations", "sample_pairs",
           "GOLDS", "GoldReward", "make_gold", "expected", "frontier", "kl", "tilted_log_probs", "weighted_r2",
           "win_rate", "win_scores", "LabResult", "run_lab"]
