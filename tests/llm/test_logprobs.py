"""Sequence log-probs: masking against a hand loop, concatenation against separate passes."""

import torch

from treemdp.llm.data import Example, collate_pairs, collate_sft
from treemdp.llm.logprobs import pair_log_probs, sequence_log_probs


def hand_logp(model, prompt, completion):
    """log p(completion | prompt) one token at a time, each from an unpadded forward pass."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    total = 0.0
    for t in range(len(prompt), len(prompt) + len(completion)):
        total += torch.log_softmax(logits[t - 1].double(), -1)[ids[0, t]].item()
    return total


EXAMPLES = [Example([5, 9, 33, 40], [[70, 71, 72], [80]]),
            Example([11], [[90, 91, 92, 93, 94, 95], [100, 101]]),
            Example([3, 4, 5, 6, 7, 8, 9], [[120], [130, 131, 132]])]


def test_masking_matches_hand_loop(model):
    batch = collate_pairs(EXAMPLES, pad_id=0)
    with torch.no_grad():
        logps, n_tokens = sequence_log_probs(model, batch)
    expected = [hand_logp(model, e.prompt_ids, e.completions[k]) for k in (0, 1) for e in EXAMPLES]
    torch.testing.assert_close(logps.double(), torch.tensor(expected, dtype=torch.double),
                               atol=1e-4, rtol=1e-5)
    assert n_tokens.tolist() == [len(e.completions[k]) for k in (0, 1) for e in EXAMPLES]
    with torch.no_grad():
        mean, _ = sequence_log_probs(model, batch, average=True)
    torch.testing.assert_close(mean, logps / n_tokens)


def test_prompt_and_padding_contribute_nothing(model):
    """Changing padding tokens or the padding amount leaves every log-prob unchanged."""
    batch = collate_pairs(EXAMPLES, pad_id=0)
    other = collate_pairs(EXAMPLES, pad_id=77)
    longer = collate_sft([Example(EXAMPLES[0].prompt_ids, [EXAMPLES[0].completions[1]]),
                          Example([1] * 20, [[2] * 10])], pad_id=0)
    with torch.no_grad():
        a, _ = sequence_log_probs(model, batch)
        b, _ = sequence_log_probs(model, other)
        c, _ = sequence_log_probs(model, longer)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(c[0], a[3], atol=1e-5, rtol=0)  # row 0's rejected, more padding


def test_concatenated_equals_separate_passes(model):
    batch = collate_pairs(EXAMPLES, pad_id=0)
    chosen_only = collate_sft([Example(e.prompt_ids, [e.completions[0]]) for e in EXAMPLES], 0)
    rejected_only = collate_sft([Example(e.prompt_ids, [e.completions[1]]) for e in EXAMPLES], 0)
    with torch.no_grad():
        chosen, rejected = pair_log_probs(model, batch)
        sep_chosen, _ = sequence_log_probs(model, chosen_only)
        sep_rejected, _ = sequence_log_probs(model, rejected_only)
    torch.testing.assert_close(chosen, sep_chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, sep_rejected, atol=1e-5, rtol=0)
