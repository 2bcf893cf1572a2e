"""Lesson 9's exercise: the CHES score of a preference pair from its hidden states.

The student writes ``ches_score(h_chosen, h_rejected)``: the hidden states before each answer
token, ``[K+, H]`` and ``[K−, H]``, in; Razin et al.'s CHES = ⟨Σ h+, Σ h−⟩ − ‖Σ h+‖² out (one
number). The check compares with :func:`treemdp.phenomena.displacement.ches_from_hidden` on random
hidden states (answers of different lengths included) and on the hidden states of a real GRU; an
answer that calls into that module (``ches_from_hidden`` itself) is refused.
"""

from __future__ import annotations

import torch

from .compare import as_tensor, close
from .core import LIBRARY_ANSWERS, Exercise, Incorrect, Reference, Result, call_student, register, run_check

_PROBE = (torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64), torch.tensor([[3.0, -1.0]], dtype=torch.float64))
#: The library's CHES, bound at import and verified at every check.
CHES_FROM_HIDDEN = Reference("treemdp.phenomena.displacement", "ches_from_hidden", lambda f: torch.stack(
    [f(*_PROBE), f(*_PROBE, normalize=True)]))


def _cases():
    """(h_chosen, h_rejected) pairs: random ones of several lengths, then a GRU's on the paper's tree."""
    from ..phenomena.displacement import answer_hidden, state_hidden
    from ..policies import RNNPolicy
    from ..tree import TreeMDP
    g = torch.Generator().manual_seed(90)
    cases = [(torch.randn(k_plus, 5, generator=g, dtype=torch.float64),
              torch.randn(k_minus, 5, generator=g, dtype=torch.float64))
             for k_plus, k_minus in ((3, 3), (1, 4), (5, 2), (2, 2))]
    mdp = TreeMDP()
    policy = RNNPolicy(mdp, hidden_size=6, seed=9).double()
    with torch.no_grad():
        hidden = answer_hidden(state_hidden(policy), mdp, mdp.trajectory_index([[1, 1, 0], [0, 0, 0]])[None])[0]
    cases.append((hidden[0], hidden[1]))
    return cases


def check_ches_score(ches_score) -> Result:
    """l9.ches_score: ``ches_score(h_chosen [K+, H], h_rejected [K−, H])`` -> CHES, one number."""

    def body() -> str:
        for i, (plus, minus) in enumerate(_cases()):
            got = as_tensor(call_student(ches_score, plus.clone(), minus.clone(),
                                         forbidden=LIBRARY_ANSWERS["displacement"], names=("h_chosen", "h_rejected"),
                                         why="the score that displacement.ches_from_hidden computes"),
                            "ches_score").reshape(-1)
            if got.numel() != 1:
                raise Incorrect(f"ches_score should return one number, got {got.numel()} values "
                                f"(sum over tokens and over the hidden dimension)")
            ches_from_hidden = CHES_FROM_HIDDEN.get()
            want = ches_from_hidden(plus, minus)
            if close(got[0], want):
                continue
            sp, sm = plus.sum(0), minus.sum(0)
            mistakes = [
                (ches_from_hidden(minus, plus), "chosen and rejected are swapped: centre on the chosen answer, "
                                                "⟨Σh+, Σh−⟩ − ‖Σh+‖²"),
                (sp @ sm, "the centring term is missing: subtract ‖Σh+‖², the chosen answer's own squared norm"),
                (ches_from_hidden(plus, minus, normalize=True), "that is the length-normalised score (means); "
                                                                "CHES itself sums over the answer's tokens"),
                (-want, "the sign is flipped: CHES = ⟨Σh+, Σh−⟩ − ‖Σh+‖² (higher means more displacement)"),
                ((plus * minus[: len(plus)]).sum() - (plus * plus).sum() if len(plus) <= len(minus) else None,
                 "sum the hidden states over tokens first, then take inner products (not token by token)"),
            ]
            for value, message in mistakes:
                if value is not None and close(got[0], value):
                    raise Incorrect(message)
            raise Incorrect(f"on case {i} (answers of {len(plus)} and {len(minus)} tokens) you return "
                            f"{float(got[0]):.6g}, expected {float(want):.6g}")
        return "matches treemdp.phenomena.displacement.ches_from_hidden on 5 pairs (random, and a GRU's hidden states)"

    return run_check("l9.ches_score", body)


register(Exercise(
    "l9.ches_score", "the CHES score of a preference pair", "ches_score", check_ches_score,
    ("CHES compares the two answers through the sums of their hidden states: first add up the rows "
     "of each input, giving one vector per answer.",
     "With plus = h_chosen.sum(0) and minus = h_rejected.sum(0), CHES is an inner product minus a "
     "squared norm, both involving plus.",
     "plus, minus = h_chosen.sum(0), h_rejected.sum(0); return plus @ minus - plus @ plus")))
