"""Sequence log-probabilities of completions under a causal LM (the LLM track's log pi(y|x)).

The paper's sequence log-prob is the sum of the completion's token log-probs; the prompt and the
padding contribute nothing. Kept apart from the loss, which is
``treemdp.losses.preference_loss`` for both tracks.

Two ways to score a preference pair, equal to float tolerance (tests):

- unshared (:func:`sequence_log_probs` on a ``collate_pairs`` batch): prompt + chosen and
  prompt + rejected as two rows, the prompt computed twice, as TRL's ``DPOTrainer`` does;
- shared (:func:`shared_pair_log_probs`, the default): the prompt once, its key/value cache
  copied to both completions, gradients flowing through it. When the prompt dominates (TL;DR:
  ~300 prompt tokens, ~40 per summary) this nearly halves the tokens a step computes.

:func:`shared_prompt_works` checks once per model that both agree (a model whose attention or
positions ignore the cache or ``position_ids`` would not); the training loop falls back to the
unshared way when they do not, or under gradient checkpointing (which drops the cache).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys

import torch
import torch.nn.functional as F

from .data import Example, collate_pairs, collate_shared, collate_sft


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
    return target_log_probs(logits[:, :-1], input_ids[:, 1:], completion_mask[:, 1:])


def target_log_probs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
                     ) -> torch.Tensor:
    """log softmax(logits)[targets] where ``mask``, else 0; logits [N, T, V], the rest [N, T]."""
    # cross_entropy is a fused log-softmax + gather: no [N, T, V] log-prob tensor is kept
    nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                          reduction="none").view_as(targets)
    return torch.where(mask.bool(), -nll, torch.zeros_like(nll))


def _inner(model):
    model = getattr(model, "module", model)  # look through a DDP wrapper
    base = getattr(model, "get_base_model", None)  # and a peft (LoRA) one
    return base() if callable(base) else model


def new_cache(model):
    """An empty key/value cache for ``model`` (transformers' ``DynamicCache``), filled in place
    by the forward passes it is given to."""
    from transformers import DynamicCache
    config = getattr(_inner(model), "config", None)
    try:
        return DynamicCache(config=config) if config is not None else DynamicCache()
    except TypeError:  # transformers before the config argument
        return DynamicCache()


def cache_arguments(model, cache) -> dict:
    """Keyword arguments passing ``cache`` to ``model``'s forward: ``cache=`` where the model takes
    it (transformers 5.2x renamed it; ``past_key_values=`` is deprecated there), else
    ``past_key_values=`` (the pyproject floor, 4.56)."""
    return {"cache" if _accepts(model, "cache") else "past_key_values": cache, "use_cache": True}


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(_inner(model).forward).parameters
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
        (log-probs [N], completion token counts [N], torch.long).
    """
    input_ids, completion_mask = batch["input_ids"], batch["completion_mask"]
    attention_mask = batch["attention_mask"]
    t = input_ids.shape[1]
    kwargs = {}
    start = 0
    if _accepts(model, "logits_to_keep"):
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


def _prompt_pass_context(model):
    """DDP counts forward passes: the first of two before one backward runs outside its sync."""
    no_sync = getattr(model, "no_sync", None)
    is_ddp = type(model).__name__ == "DistributedDataParallel"
    return no_sync() if is_ddp and torch.is_grad_enabled() else contextlib.nullcontext()


def shared_pair_log_probs(model, batch: dict[str, torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y_w|x) and log pi(y_l|x) with each prompt computed once (a ``collate_shared`` batch).

    1. ``prompt[:-1]`` of every pair, right-padded, in one forward pass that keeps its key/value
       cache (no attention mask: causal attention never lets a real token see later padding);
    2. the cache repeated for the chosen and the rejected rows ([B] -> [2B]);
    3. ``[prompt[-1]] + y[:-1]`` for both completions, at positions ``P - 1 + j``, attending to
       the cache (padding masked out) and to themselves; position j predicts ``y[j]``.

    Gradients flow through the cache into the prompt's computation, so the backward pass equals
    the unshared one's too.

    Returns:
        (log-probs [B, 2]: column 0 chosen, 1 rejected; completion token counts [B, 2], long).
    """
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    b = prompt_ids.shape[0]
    cache, past = None, prompt_mask.repeat(2, 1)  # [2B, P_max - 1], maybe 0 wide
    if prompt_ids.shape[1] > 0:
        kwargs = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
        cache = new_cache(model)
        with _prompt_pass_context(model):
            model(input_ids=prompt_ids, **cache_arguments(model, cache), **kwargs)
        cache.batch_select_indices(torch.arange(b, device=prompt_ids.device).repeat(2))
    completion_mask = batch["completion_mask"]
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   attention_mask=torch.cat([past, completion_mask], dim=1),
                   **(cache_arguments(model, cache) if cache is not None
                      else {"use_cache": False})).logits  # [2B, C, V]
    logps = target_log_probs(logits, batch["targets"], completion_mask).sum(dim=1)
    return logps.view(2, b).T, completion_mask.sum(dim=1).view(2, b).T


def pair_log_probs(model, examples: list[Example], pad_id: int, device, *, shared: bool = True,
                   average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of both completions of every pair: (logps [B, 2], token counts [B, 2]).

    ``shared`` picks :func:`shared_pair_log_probs`, else one ``collate_pairs`` batch [2B, T];
    ``average`` divides each sum by its completion's token count.
    """
    if shared:
        batch = {k: v.to(device) for k, v in collate_shared(examples, pad_id).items()}
        logps, n_tokens = shared_pair_log_probs(model, batch)
    else:
        batch = {k: v.to(device) for k, v in collate_pairs(examples, pad_id).items()}
        flat, flat_n = sequence_log_probs(model, batch)
        logps, n_tokens = flat.view(2, -1).T, flat_n.view(2, -1).T
    if average:
        logps = logps / n_tokens.clamp(min=1)
    return logps, n_tokens


def gradient_checkpointing_on(model) -> bool:
    """Whether activation (gradient) checkpointing is on (transformers 5 renamed the flag)."""
    inner = _inner(model)
    if hasattr(type(inner), "is_activation_checkpointing"):
        return bool(inner.is_activation_checkpointing)
    return bool(getattr(inner, "is_gradient_checkpointing", False))


@torch.no_grad()
def shared_prompt_works(model, examples: list[Example], pad_id: int, device, *,
                        name: str = "the model", quiet: bool = False) -> bool:
    """True if the shared-prompt forward gives the unshared log-probs on these examples.

    Run once per model before training or evaluating, in float32 without autocast: a model
    whose attention ignores ``position_ids`` or the cache would differ by far more than the
    tolerance (1e-3 + 1e-4 relative on sequence log-probs). Says on stderr when it falls back.
    """
    reason = None
    if gradient_checkpointing_on(model):
        reason = "gradient checkpointing drops the key/value cache"
    else:
        was_training = model.training
        model.eval()
        try:
            shared, _ = pair_log_probs(model, examples, pad_id, device, shared=True)
            plain, _ = pair_log_probs(model, examples, pad_id, device, shared=False)
            if not torch.allclose(shared.float(), plain.float(), rtol=1e-4, atol=1e-3):
                gap = float((shared - plain).abs().max())
                reason = f"its shared-prompt log-probs differ from the unshared ones by {gap:.3g}"
        except Exception as e:  # noqa: BLE001 - any model that cannot take a cache this way
            reason = f"it cannot reuse a prompt's cache ({type(e).__name__}: {e})".splitlines()[0]
        finally:
            model.train(was_training)
    if reason and not quiet:
        print(f"note: scoring each pair's prompt twice for {name}: {reason}", file=sys.stderr)
    return reason is None


@torch.no_grad()
def log_prob_table(model, examples: list[Example], pad_id: int, device, batch_size: int, *,
                   pairs: bool, shared: bool = True, accelerator=None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts for every example, [n, k] each (k = 2 for pairs).

    With an ``accelerator`` of several processes each computes a strided share and the results
    are gathered, so every process ends with the full tables.
    """
    world = accelerator.num_processes if accelerator else 1
    rank = accelerator.process_index if accelerator else 0
    n, k = len(examples), 2 if pairs else 1
    padded = math.ceil(n / world) * world
    mine = list(range(rank, padded, world))
    sums = torch.zeros(len(mine), k, dtype=torch.float32, device=device)
    counts = torch.zeros(len(mine), k, dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    autocast = accelerator.autocast() if accelerator else contextlib.nullcontext()
    with autocast:
        for start in range(0, len(mine), batch_size):
            rows = mine[start: start + batch_size]
            chunk = [examples[i % n] for i in rows]
            if pairs:
                logps, n_tok = pair_log_probs(model, chunk, pad_id, device, shared=shared)
            else:
                batch = {key: v.to(device) for key, v in collate_sft(chunk, pad_id).items()}
                logps, n_tok = (t[:, None] for t in sequence_log_probs(model, batch))
            sums[start: start + len(rows)] = logps.float()
            counts[start: start + len(rows)] = n_tok.float()
    model.train(was_training)
    if world > 1:
        sums, counts = accelerator.gather(sums), accelerator.gather(counts)
        # gathered rows are [rank0 share, rank1 share, ...]; share r holds r, r + world, ...
        order = torch.arange(padded, device=sums.device).view(-1, world).T.flatten()
        full_s = torch.empty_like(sums)
        full_c = torch.empty_like(counts)
        full_s[order], full_c[order] = sums, counts
        sums, counts = full_s, full_c
    return sums[:n].cpu(), counts[:n].cpu()
