"""Sequence log-probabilities of completions under a causal LM (the LLM track's log pi(y|x)).

The paper's sequence log-prob is the sum of the completion's token log-probs; the prompt and the
padding contribute nothing (``completion_mask``). Kept apart from the loss, which is
``treemdp.losses.preference_loss`` for both tracks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_log_probs(logits: torch.Tensor, input_ids: torch.Tensor,
                    completion_mask: torch.Tensor) -> torch.Tensor:
    """Log-prob of each token given the ones before it, zero outside the completion.

    Args:
        logits: [N, T, V] model outputs (position t predicts token t + 1).
        input_ids: [N, T].
        completion_mask: [N, T], 1 on completion tokens.

    Returns:
        [N, T - 1]; entry t is log p(input_ids[:, t + 1] | input_ids[:, :t + 1]) or 0.
    """
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].bool()
    # cross_entropy is a fused log-softmax + gather: no [N, T, V] log-prob tensor is kept
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                          reduction="none").view_as(targets)
    return torch.where(mask, -nll, torch.zeros_like(nll))


def sequence_log_probs(model, batch: dict[str, torch.Tensor], *, average: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y|x) for every row of a collated batch, in one forward pass.

    Args:
        model: a causal LM returning ``.logits``.
        batch: ``input_ids``, ``attention_mask``, ``completion_mask``, each [N, T].
        average: return the per-token mean instead of the sum.

    Returns:
        (log-probs [N], completion token counts [N]).
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_cache=False).logits  # [N, T, V]
    per_token = token_log_probs(logits, batch["input_ids"], batch["completion_mask"])
    n_tokens = batch["completion_mask"][:, 1:].sum(dim=1)
    logps = per_token.sum(dim=1)
    if average:
        logps = logps / n_tokens.clamp(min=1)
    return logps, n_tokens


def pair_log_probs(model, batch: dict[str, torch.Tensor], *, average: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [B], rejected [B]) log-probs from a ``collate_pairs`` batch [2B, T]."""
    logps, _ = sequence_log_probs(model, batch, average=average)
    chosen, rejected = logps.chunk(2)
    return chosen, rejected
