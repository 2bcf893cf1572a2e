"""Sequence log-probabilities of completions under a causal LM (the LLM track's log pi(y|x)).

The paper's sequence log-prob is the sum of the completion's token log-probs; the prompt and the
padding contribute nothing (``completion_mask``). Kept apart from the loss, which is
``treemdp.losses.preference_loss`` for both tracks.
"""

from __future__ import annotations

import inspect

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


def _accepts_logits_to_keep(model) -> bool:
    forward = getattr(model, "module", model).forward  # look through a DDP wrapper
    try:
        return "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def sequence_log_probs(model, batch: dict[str, torch.Tensor], *, average: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y|x) for every row of a collated batch, in one forward pass.

    Two savings, neither changing a number: logits are computed only from the first position
    that predicts a completion token on (``logits_to_keep``, where the model supports it), and
    a right-padded batch is run without an attention mask, since under causal attention no real
    token can see the padding after it (the tests compare with unpadded single-row passes).

    Args:
        model: a causal LM returning ``.logits``.
        batch: ``input_ids``, ``attention_mask``, ``completion_mask``, each [N, T], right-padded.
        average: return the per-token mean instead of the sum.

    Returns:
        (log-probs [N], completion token counts [N]).
    """
    input_ids, completion_mask = batch["input_ids"], batch["completion_mask"]
    attention_mask = batch["attention_mask"]
    t = input_ids.shape[1]
    kwargs = {}
    start = 0
    if _accepts_logits_to_keep(model):
        first = int(completion_mask.float().argmax(dim=1).min())  # earliest completion token
        start = max(first - 1, 0)  # the position that predicts it
        kwargs["logits_to_keep"] = t - start
    # right padding <=> every row's mask is a prefix of ones (non-increasing along T)
    right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
    logits = model(input_ids=input_ids, attention_mask=None if right_padded else attention_mask,
                   use_cache=False, **kwargs).logits  # [N, T - start, V]
    per_token = token_log_probs(logits, input_ids[:, start:], completion_mask[:, start:])
    n_tokens = completion_mask[:, 1:].sum(dim=1)
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
