"""Tokenisation conventions (docs/llm.md, "Conventions versus TRL"): the default one (BOS and EOS
as the tokenizer defines them, never two EOS) and ``trl``, checked against TRL 1.16's own dataset
preparation (``DPOTrainer._prepare_dataset``) on the same rows, for a Pythia-like tokenizer (no
BOS) and a Llama-like one (BOS added), in the standard and the conversational format."""

from types import SimpleNamespace

import pytest
import torch

from treemdp.llm.data import context_token, tokenize_row, tokenize_rows

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")

STANDARD = [
    {"prompt": "SUBREDDIT: r/cats\nTITLE: my cat left\nTL;DR:", "chosen": " my cat left.",
     "rejected": " so yeah"},
    {"prompt": "TL;DR: ", "chosen": "my cat left", "rejected": "dog"},  # space merges across
    {"prompt": "Q: hello\nA:", "chosen": " hi<|endoftext|>", "rejected": " bye"},  # EOS in text
]
CONVERSATIONAL = [
    {"prompt": [{"role": "user", "content": "What colour is the sky?"}],
     "chosen": [{"role": "assistant", "content": "Blue."}],
     "rejected": [{"role": "assistant", "content": "Green, mostly."}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     "chosen": [{"role": "assistant", "content": "Hello"}],
     "rejected": [{"role": "assistant", "content": "Good day to you"}]},
]


@pytest.fixture(scope="module", params=["pythia", "llama"])
def tok(request, tiny, tmp_path_factory):
    """The tiny model's tokenizer (no BOS, like Pythia's) or a copy that adds a BOS (like Llama's)."""
    from tokenizers import processors
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    if request.param == "llama":
        tokenizer.add_special_tokens({"bos_token": "<s>"})
        bos = tokenizer.convert_tokens_to_ids("<s>")
        tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
        path = tmp_path_factory.mktemp("llama-like")
        tokenizer.save_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert tokenizer("a")["input_ids"][0] == bos
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def trl_prepared(rows, tokenizer):
    """TRL 1.16's tokenisation of these rows, by its own code."""
    datasets = pytest.importorskip("datasets")
    trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
    args = SimpleNamespace(dataset_num_proc=None, max_length=None, truncation_mode="keep_start")
    prepared = trl_dpo.DPOTrainer._prepare_dataset(
        SimpleNamespace(_tokenizer=tokenizer), datasets.Dataset.from_list(rows), tokenizer, args,
        "train")
    return [(r["prompt_ids"], [r["chosen_ids"], r["rejected_ids"]]) for r in prepared]


@pytest.mark.parametrize("rows", [STANDARD, CONVERSATIONAL], ids=["standard", "conversational"])
def test_trl_mode_equals_trls_own_tokenisation(tok, rows):
    ours = [tokenize_row(r, ("chosen", "rejected"), tok, "trl") for r in rows]
    assert ours == trl_prepared(rows, tok)


def test_trl_splits_at_the_divergence_the_default_at_the_text_boundary(tok):
    row = STANDARD[1]  # "TL;DR: " + "my cat left": the space joins the completion's first token
    prompt_d, (chosen_d, _) = tokenize_row(row, ("chosen", "rejected"), tok, "default")
    prompt_t, (chosen_t, _) = tokenize_row(row, ("chosen", "rejected"), tok, "trl")
    assert tok.decode(prompt_d, skip_special_tokens=True) == "TL;DR: "
    assert tok.decode(prompt_t, skip_special_tokens=True) == "TL;DR:"
    assert tok.decode(chosen_t, skip_special_tokens=True) == " my cat left"
    assert len(chosen_d) != len(chosen_t)


def test_default_mode_bos_and_one_eos(tok):
    eos = tok.eos_token_id
    bos_added = tok("a")["input_ids"][0] != tok("a", add_special_tokens=False)["input_ids"][0]
    for row in STANDARD:
        prompt, completions = tokenize_row(row, ("chosen", "rejected"), tok, "default")
        assert (prompt[0] == tok.bos_token_id) == bos_added
        for ids in completions:
            assert ids[-1] == eos and ids[-2] != eos  # EOS once, also when the text ends with it
            assert tok.bos_token_id not in ids or tok.bos_token_id == eos


def test_default_mode_conversational_renders_the_chat_template(tok):
    for row in CONVERSATIONAL:
        prompt, completions = tokenize_row(row, ("chosen", "rejected"), tok, "default")
        for ids, name in zip(completions, ("chosen", "rejected")):
            rendered = tok.apply_chat_template(row["prompt"] + row[name], tokenize=False)
            assert tok.decode(prompt + ids) == rendered
        assert tok.decode(prompt).endswith("<|assistant|>")


def test_empty_prompt_is_scored_from_a_context_token(tok, model):
    """An empty prompt ("prompt": "", as prompt-less exports have) keeps every completion token
    in the log-prob: the first one is predicted from the BOS (else EOS) token."""
    from treemdp.llm.logprobs import pair_log_probs
    rows = [{"prompt": "", "chosen": " my cat left", "rejected": " so yeah"}]
    for mode in ("default", "trl"):
        (ex,), _ = tokenize_rows(rows, tok, kind="pairs", max_length=64, max_prompt_length=32,
                                 tokenization=mode)
        assert ex.prompt_ids[-1] in (context_token(tok), tok.bos_token_id)
        if len(tok) != model.config.vocab_size:
            continue  # the BOS-adding copy has one token more than the tiny model
        full = torch.tensor([ex.prompt_ids + ex.completions[0]])
        with torch.no_grad():
            logits = model(input_ids=full).logits[0].double().log_softmax(-1)
            expected = sum(logits[len(ex.prompt_ids) - 1 + j, t].item()
                           for j, t in enumerate(ex.completions[0]))
            (logps, counts), = [pair_log_probs(model, [ex], tok.pad_token_id, "cpu")]
        assert counts[0, 0] == len(tokenize_row(rows[0], ("chosen",), tok, mode)[1][0])
        assert logps[0, 0].item() == pytest.approx(expected, abs=1e-4)


def test_keep_start_truncation_is_trls(tok):
    rows = [{"prompt": "a b c d e f g h i j k l", "chosen": " one two three four five six",
             "rejected": " no"}, {"prompt": "x " * 40, "chosen": " y", "rejected": " z"}]
    prompt_len = len(tokenize_row(rows[0], ("chosen",), tok, "trl")[0])
    limit = prompt_len + 3
    kept, stats = tokenize_rows(rows, tok, kind="pairs", max_length=limit, max_prompt_length=1,
                                truncation="keep_start", tokenization="trl")
    assert stats.dropped == 1 and stats.truncated == 1  # the second prompt alone fills the limit
    full = tokenize_row(rows[0], ("chosen", "rejected"), tok, "trl")
    assert kept[0].prompt_ids == full[0]  # the prompt is kept whole,
    assert kept[0].completions[0] == full[1][0][:3]  # the completion keeps its start
    assert kept[0].completions[1] == full[1][1]
