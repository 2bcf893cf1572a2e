"""The lab's gold reward r*(x, y): the fixed scorer that labels the preference pairs and judges the policy.

``--gold`` names one (Gao et al.'s synthetic setting, PAPER_NOTES "The LLM lab"):

    tree language   random | additive | spurious(...) | FILE (.pt/.npy/.json) | module:function
                    the toy lab's golds (:func:`treemdp.lab.gold.make_gold`) on the tree's answers;
                    a malformed answer scores min r* - 1 (:func:`treemdp.llm.language.malformed_gold`)
    text            tldr (alias gold): the synthetic TL;DR rule-based scorer
                    (:func:`treemdp.llm.synthetic.gold_score`)
                    rm:PATH: a sequence-classification reward model's score of prompt + answer
                    (refused without a trained head); a public one plays the paper's GPT-4 on a GPU
                    module:function: ``f(prompts, completions) -> list[float]``

Every call is validated: one finite real per answer (a wrong count, NaN or inf, or a scorer that
raises is one ``error:`` line naming the gold).
"""

from __future__ import annotations

import importlib
from typing import Callable, Optional

import numpy as np
import torch

from ...errors import UserError
from ..evaluate import checked_scores

TEXT_GOLDS = ("tldr", "gold")


class Gold:
    """r*(x, y) for lists of prompts and answers -> float64 [n]; ``values`` [A] where every answer is known."""

    def __init__(self, name: str, score: Callable[[list[str], list[str]], object],
                 values: Optional[torch.Tensor] = None):
        self.name, self._score, self.values = name, score, values

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        try:
            out = self._score(list(prompts), list(completions))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's scorer failed: one line naming it
            raise UserError(f"gold {self.name} failed: {type(e).__name__}: {e}".splitlines()[0]) from None
        return np.asarray(checked_scores(out, len(completions), f"gold {self.name}"), dtype=np.float64)


def tree_gold(language, spec: str, seed: int = 0) -> Gold:
    """A toy-lab gold on the tree language (names, files and module:function as ``treemdp lab --gold``)."""
    from ...lab.gold import make_gold
    gold_tree = make_gold(language.mdp, spec, seed=seed)
    values = language.tree_values(gold_tree.values)

    def score(prompts, completions):
        return values[[language.answer_of_text(c) for c in completions]].tolist()
    return Gold(gold_tree.name, score, values)


def text_gold(spec: str, device: str = "cpu") -> Gold:
    """``tldr`` | ``rm:PATH`` | ``module:function`` (see the module doc)."""
    if spec in TEXT_GOLDS:
        from ..synthetic import gold_score
        return Gold("tldr", lambda prompts, completions: [gold_score(p, c) for p, c in zip(prompts, completions)])
    if spec.startswith("rm:"):
        from ..evaluate import reward_model_scorer
        rm = reward_model_scorer(spec[3:], device)
        return Gold(spec, lambda prompts, completions: rm([p + c for p, c in zip(prompts, completions)]))
    module, _, attr = spec.partition(":")
    if not attr:
        raise UserError(f"unknown gold {spec!r} for text; use tldr, rm:PATH or module:function")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"cannot import gold {spec!r}: {e}") from None
    if not callable(fn):
        raise UserError(f"gold {spec!r} is a {type(fn).__name__}, not a function f(prompts, completions)")
    return Gold(spec, fn)


def bradley_terry_labels(r1: np.ndarray, r2: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """True where answer 1 is preferred: P = sigma((r1 - r2) / temperature) (0: the higher wins, ties a coin)."""
    from ...lab.data import bradley_terry_probability
    return rng.random(len(r1)) < bradley_terry_probability(r1, r2, temperature)


__all__ = ["Gold", "tree_gold", "text_gold", "bradley_terry_labels", "TEXT_GOLDS"]
