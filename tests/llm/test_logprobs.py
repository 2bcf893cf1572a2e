"""Sequence log-probs: masking against a hand loop, concatenation against separate passes, and
the shared-prompt forward against the unshared one (values and gradients, three architectures)."""

import pytest
import torch

from treemdp.llm.data import Example, collate_pairs, collate_shared, collate_sft
from treemdp.llm.logprobs import (pair_log_probs, sequence_log_probs, shared_pair_log_probs,
                                  shared_prompt_works)


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
            Example([11], [[90, 91, 92, 93, 94, 95], [100, 101]]),  # one-token prompt: no prompt pass
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
    with torch.no_grad():
        a, _ = sequence_log_probs(model, collate_pairs(EXAMPLES, pad_id=0))
        b, _ = sequence_log_probs(model, collate_pairs(EXAMPLES, pad_id=77))
        c, _ = sequence_log_probs(model, collate_sft(
            [Example(EXAMPLES[0].prompt_ids, [EXAMPLES[0].completions[1]]),
             Example([1] * 20, [[2] * 10])], pad_id=0))
        d, _ = shared_pair_log_probs(model, collate_shared(EXAMPLES, pad_id=77))
        e, _ = shared_pair_log_probs(model, collate_shared(EXAMPLES + [Example([1] * 20, [[2] * 9, [3]])],
                                                           pad_id=0))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(c[0], a[3], atol=1e-5, rtol=0)  # row 0's rejected, more padding
    torch.testing.assert_close(d, e[:3], atol=1e-5, rtol=0)


def test_concatenated_equals_separate_passes(model):
    chosen_only = collate_sft([Example(e.prompt_ids, [e.completions[0]]) for e in EXAMPLES], 0)
    rejected_only = collate_sft([Example(e.prompt_ids, [e.completions[1]]) for e in EXAMPLES], 0)
    with torch.no_grad():
        logps, n_tokens = pair_log_probs(model, EXAMPLES, 0, "cpu", shared=False)
        sep_chosen, _ = sequence_log_probs(model, chosen_only)
        sep_rejected, _ = sequence_log_probs(model, rejected_only)
    torch.testing.assert_close(logps[:, 0], sep_chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(logps[:, 1], sep_rejected, atol=1e-5, rtol=0)
    assert n_tokens.tolist() == [[len(c) for c in e.completions] for e in EXAMPLES]


def tiny_causal_lm(arch: str):
    """A random tiny model of an architecture transformers ships (vocab 512), float32, with
    weights large enough (initializer_range 0.5) that attention is sharp: positions and the
    cache then change log-probs by far more than the tolerances, so the equality tests can fail."""
    import transformers as tf
    torch.manual_seed(0)
    config = {
        "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64,
                                             max_position_embeddings=256, rotary_pct=0.25),
        "llama": lambda: tf.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=256),
        "gpt2": lambda: tf.GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=256, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0),
    }[arch]()
    config.initializer_range = 0.5
    return tf.AutoModelForCausalLM.from_config(config).float()


def random_pairs(seed, n=5):
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(1, 512, (int(torch.randint(lo, hi, (1,), generator=g)),),
                             generator=g).tolist()
    return [Example(ids(1, 40), [ids(1, 12), ids(1, 12)]) for _ in range(n)]


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "gpt2"])
def test_shared_prompt_equals_unshared(arch):
    """Each prompt computed once == computed per completion: log-probs, counts and gradients."""
    model = tiny_causal_lm(arch)
    examples = random_pairs(1) + [Example([7], [[8, 9], [10]])]
    weights = torch.randn(len(examples), 2, generator=torch.Generator().manual_seed(2))
    results = []
    for shared in (True, False):
        model.zero_grad()
        logps, n_tokens = pair_log_probs(model, examples, 0, "cpu", shared=shared)
        (weights * logps).sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), n_tokens, grads))
    (a, na, ga), (b, nb, gb) = results
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    assert torch.equal(na, nb) and na.dtype == torch.long
    assert ga.keys() == gb.keys() and len(ga) == len(list(model.parameters()))
    for key in ga:  # float32 sums in another order: equal up to rounding, relative to the norm
        assert (ga[key] - gb[key]).norm() <= 1e-5 * gb[key].norm() + 1e-7, key
    assert shared_prompt_works(model, examples, 0, "cpu")


def test_every_prompt_of_one_token_needs_no_prompt_pass(model):
    ex = [Example([3], [[4, 5], [6]]), Example([9], [[1], [2, 3, 4]])]
    with torch.no_grad():
        a, _ = pair_log_probs(model, ex, 0, "cpu", shared=True)
        b, _ = pair_log_probs(model, ex, 0, "cpu", shared=False)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


class IgnoresPositions(torch.nn.Module):
    """A causal LM that drops ``position_ids``: it cannot continue a cached prompt correctly."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


def test_a_model_that_cannot_share_falls_back(capsys):
    model = IgnoresPositions(tiny_causal_lm("gpt_neox"))
    examples = random_pairs(3)
    assert not shared_prompt_works(model, examples, 0, "cpu", name="m")
    assert "scoring each pair's prompt twice for m" in capsys.readouterr().err
    with torch.no_grad():  # the check is real: the shared numbers differ for this model
        a, _ = pair_log_probs(model, examples, 0, "cpu", shared=True)
        b, _ = pair_log_probs(model, examples, 0, "cpu", shared=False)
    assert (a - b).abs().max() > 1e-2


def test_gradient_checkpointing_disables_sharing(capsys):
    model = tiny_causal_lm("gpt_neox")
    model.gradient_checkpointing_enable()
    assert not shared_prompt_works(model, random_pairs(4), 0, "cpu")
    assert "gradient checkpointing" in capsys.readouterr().err
