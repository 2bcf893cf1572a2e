"""Loading causal LMs and tokenizers, and building the offline tiny GPT-NeoX (Pythia layout).

Every ``transformers`` import happens inside a function: ``import treemdp`` stays light.
A model is a hub name (``EleutherAI/pythia-160m``, needs the network once) or a local folder
written by ``save_pretrained`` (what ``treemdp llm tiny-model``, ``sft`` and ``daa`` write).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ..errors import UserError

DEFAULT_MODEL = "EleutherAI/pythia-160m"
EOS = "<|endoftext|>"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is an error."""
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; choose one of: auto, cpu, cuda")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available")
    return device


def _looks_local(name: str) -> bool:
    return (os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name)
            or name.count("/") != 1)


def check_model_path(name: str) -> str:
    """Fail early on a local model path that does not exist or holds no saved model."""
    if not name:
        raise UserError("no model given (--model PATH or hub name)")
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise UserError(f"model path does not exist: {name}")
        if not (path / "config.json").is_file():
            raise UserError(f"{name} holds no config.json; not a saved model folder")
        return str(path)
    return name


def load_tokenizer(name: str, *, quiet: bool = False):
    """Load a tokenizer; one without a pad token gets its EOS token as padding (said on stderr)."""
    from transformers import AutoTokenizer
    name = check_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer from {name}: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer of {name} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        if not quiet:
            print(f"note: tokenizer of {name} has no pad token; using its EOS token "
                  f"{tokenizer.eos_token!r} for padding (padding is masked out)", file=sys.stderr)
    return tokenizer


def check_causal(name: str):
    """Load only the config of ``name``; fail with one line if it is missing or not a causal LM."""
    from transformers import AutoConfig
    name = check_model_path(name)
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - hub/network errors come in many types; one line each
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load model config from {name}: {first}") from None
    archs = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False) or (
            archs and not any("CausalLM" in a or "LMHead" in a for a in archs)):
        raise UserError(f"{name} is not a causal language model (architectures: "
                        f"{', '.join(archs) or config.model_type})")
    return config


def check_same_vocabulary(policy_config, ref_config, policy: str, ref: str) -> None:
    """UserError if two model configs index different vocabularies (log-probs would not compare)."""
    a, b = getattr(policy_config, "vocab_size", None), getattr(ref_config, "vocab_size", None)
    if a is not None and b is not None and a != b:
        raise UserError(f"the policy {policy} (vocabulary of {a} tokens) and the reference {ref} "
                        f"({b} tokens) do not share a vocabulary; give a reference of the same "
                        "model family")


def check_finite_weights(model, name: str) -> None:
    """UserError if any weight of ``model`` is NaN or infinite (e.g. saved by a diverged run)."""
    for pname, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise UserError(f"{name} has NaN or infinite weights ({pname}); it cannot be "
                            "evaluated (was it saved by a run whose loss diverged?)")


def load_model(name: str, *, dtype: torch.dtype = torch.float32):
    """Load a causal LM; fails with one line if the folder is missing or the model not causal."""
    from transformers import AutoModelForCausalLM
    check_causal(name)
    name = check_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load causal LM from {name}: {str(e).splitlines()[0]}") from None
    return model


def train_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained locally on ``corpus`` (the ``tokenizers`` library)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS)


def corpus_from_jsonl(paths: list[str]) -> list[str]:
    """Every string value of every row of the given JSONL files (no validation of fields)."""
    import json
    texts = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"corpus file not found: {path}")
        for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                texts.extend(v for v in (row.values() if isinstance(row, dict) else [])
                             if isinstance(v, str))
    return texts


def build_tiny_model(out: str | Path, *, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, vocab_size: int = 512, max_positions: int = 512,
                     corpus_files: list[str] | None = None, seed: int = 0) -> Path:
    """Write a random-init ``GPTNeoXForCausalLM`` and a locally trained tokenizer to ``out``.

    The config follows Pythia's layout (rotary on 25% of each head, parallel residual,
    untied embeddings) at toy size; ``from_pretrained(out)`` loads both back.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from .synthetic import shipped_data_dir
    if hidden_size % num_heads:
        raise UserError(f"--hidden {hidden_size} is not divisible by --heads {num_heads}")
    if min(hidden_size, num_layers, num_heads, max_positions) < 1 or vocab_size < 300:
        raise UserError("tiny-model sizes must be >= 1 and --vocab >= 300 (256 bytes + merges)")
    files = corpus_files or sorted(str(p) for p in shipped_data_dir().glob("tldr_*.jsonl"))
    tokenizer = train_tokenizer(corpus_from_jsonl(files), vocab_size)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=4 * hidden_size,
        max_position_embeddings=max_positions, rotary_pct=0.25, use_parallel_residual=True,
        tie_word_embeddings=False, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    return out
