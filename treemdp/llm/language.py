"""The toy lab's tree written as a language, so a Hugging Face model's answers can be enumerated.

A :class:`TreeLanguage` of branching B and depth D (the lab's 4×4 by default: 256 answers) has
B + 1 tokens: ``<|endoftext|>`` (id 0: BOS, EOS and padding at once) and the actions ``a0`` …
``a{B-1}`` (ids 1 … B). Every answer is generated after the prompt ``[EOS]`` (an empty prompt, as
the LLM track writes one) and is a *tree answer* ``a_i1 … a_iD EOS`` (text ``" a1 a0 a3 a2"``,
trajectory ``(1, 0, 3, 2)`` of :class:`treemdp.tree.TreeMDP`) or one of the model's other outputs.

The sampler (:func:`treemdp.llm.evaluate.sample`) stops at the first EOS or after D + 1 tokens, so
the outcomes it can return are exactly

    k actions then EOS (k = 0 … D)        sum_k B^k answers
    D + 1 actions (cut, no EOS)           B^(D+1) answers

— 1365 for the 4×4 tree. They are disjoint and exhaustive, so their probabilities under the model
sum to 1 and :meth:`TreeLanguage.log_probs` enumerates them all in one batched forward pass:
exact KL, exact gold, exact win rate for the very model the sampled estimates come from. The first
``B^D`` outcomes (index order) are the tree answers in ``mdp.trajectories()`` order; the others are
*malformed* and get the gold value :func:`malformed_gold` (below every tree answer).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from ..errors import UserError
from ..tree import TreeMDP
from .models import EOS


class TreeLanguage:
    """The token language of a tree (see the module doc). ``shape`` is ``"BxD"`` like the lab's ``--tree``."""

    def __init__(self, shape: str = "4x4"):
        try:
            branching, depth = (int(v) for v in str(shape).lower().split("x"))
        except ValueError:
            raise UserError(f"bad tree shape {shape!r}: write BRANCHINGxDEPTH, e.g. 4x4") from None
        if not (2 <= branching <= 8 and 1 <= depth <= 5):
            raise UserError(f"tree {shape!r}: the language needs 2 <= branching <= 8 and 1 <= depth <= 5")
        self.shape = f"{branching}x{depth}"
        self.mdp = TreeMDP(branching=branching, depth=depth)
        self.branching, self.depth = branching, depth
        self.eos_id = 0
        self.max_new_tokens = depth + 1
        tree = [list(map(int, row)) for row in self.mdp.trajectories().tolist()]
        answers = [[a + 1 for a in row] + [self.eos_id] for row in tree]  # the T tree answers
        for k in range(depth):  # malformed: too short
            answers += [[a + 1 for a in p] + [self.eos_id] for p in itertools.product(range(branching), repeat=k)]
        answers += [[a + 1 for a in p] for p in itertools.product(range(branching), repeat=depth + 1)]  # too long
        self.answers: list[list[int]] = answers
        self.index = {tuple(a): i for i, a in enumerate(answers)}
        self.n_tree = len(tree)

    @property
    def n_answers(self) -> int:
        return len(self.answers)

    # ----- text -------------------------------------------------------------------------------
    def vocabulary(self) -> dict[str, int]:
        return {EOS: self.eos_id} | {f"a{k}": k + 1 for k in range(self.branching)}

    def text(self, trajectory) -> str:
        """A tree answer's text: actions (2, 0, 1, 3) -> ``" a2 a0 a1 a3"`` (the tokenizer adds EOS)."""
        return "".join(f" a{int(a)}" for a in trajectory)

    def answer_of(self, token_ids) -> int:
        """Index of a sampled answer (token ids, EOS included if drawn) among :attr:`answers`."""
        key = tuple(int(t) for t in token_ids)
        if key not in self.index:
            raise UserError(f"{list(key)} is not an answer of the {self.shape} tree language")
        return self.index[key]

    def answer_of_text(self, text: str) -> int:
        """Index of an answer from its decoded text (malformed lengths included)."""
        vocab = self.vocabulary()
        words = text.split()
        if any(w not in vocab or w == EOS for w in words):
            raise UserError(f"{text!r} is not written in the {self.shape} tree language")
        ids = [vocab[w] for w in words]
        return self.answer_of(ids if len(ids) > self.depth else ids + [self.eos_id])

    # ----- model and tokenizer ------------------------------------------------------------------
    def tokenizer(self):
        """A word-level tokenizer over the B + 1 tokens (written locally, no download)."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast
        tok = Tokenizer(models.WordLevel(vocab=self.vocabulary(), unk_token=EOS))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                       pad_token=EOS)

    def build_model(self, out: str | Path, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                    seed: int = 0) -> Path:
        """Write a random-init GPT-NeoX (Pythia layout, as ``treemdp llm tiny-model``) and the tokenizer."""
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
        if hidden_size % num_heads:
            raise UserError(f"hidden size {hidden_size} is not divisible by {num_heads} heads")
        config = GPTNeoXConfig(
            vocab_size=self.branching + 1, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=4 * hidden_size, max_position_embeddings=32,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            bos_token_id=self.eos_id, eos_token_id=self.eos_id, pad_token_id=self.eos_id,
            hidden_dropout=0.0, attention_dropout=0.0)
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        self.tokenizer().save_pretrained(out)
        return out

    # ----- exact enumeration --------------------------------------------------------------------
    @torch.no_grad()
    def log_probs(self, model, device="cpu") -> torch.Tensor:
        """log pi(y) of every answer, float64 [n_answers], in one batched forward pass.

        Every answer is scored as ``[EOS] + answer`` (right-padded; padding is never attended to
        by a real token under causal attention); ``logsumexp`` is 0 up to float error.
        """
        width = 1 + self.max_new_tokens
        ids = torch.full((self.n_answers, width), self.eos_id, dtype=torch.long)
        mask = torch.zeros(self.n_answers, width, dtype=torch.bool)
        for i, a in enumerate(self.answers):
            ids[i, 1: 1 + len(a)] = torch.tensor(a)
            mask[i, 1: 1 + len(a)] = True
        was_training = model.training
        model.eval()
        logits = model(input_ids=ids.to(device), use_cache=False).logits.double()  # [A, W, V]
        model.train(was_training)
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        return (logp * mask[:, 1:].to(device)).sum(-1).cpu()

    def tree_values(self, gold_tree: torch.Tensor) -> torch.Tensor:
        """The gold of every answer from r* on the tree's T answers: malformed ones get :func:`malformed_gold`."""
        gold_tree = torch.as_tensor(gold_tree, dtype=torch.float64).reshape(-1)
        out = torch.full((self.n_answers,), malformed_gold(gold_tree), dtype=torch.float64)
        out[: self.n_tree] = gold_tree
        return out


def malformed_gold(gold_tree: torch.Tensor) -> float:
    """The gold of an answer that is not a tree answer: min r* − 1 (worse than any tree answer)."""
    return float(gold_tree.min()) - 1.0


__all__ = ["TreeLanguage", "malformed_gold"]
