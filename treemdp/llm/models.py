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
from ..runs import share_modes

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
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise UserError(f"{name} holds no config.json; not a saved model folder")
        return str(path)
    return name


#: Files of which a saved tokenizer has at least one (fast, BPE, SentencePiece layouts).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model",
                   "spiece.model", "vocab.txt")
#: A probe text every real tokenizer turns into tokens.
PROBE_TEXT = "The quick brown fox jumps over the lazy dog."


def check_tokenizer(tokenizer, name: str) -> None:
    """UserError for a degenerate tokenizer: one that turns plain text into no tokens (what
    transformers builds from a model folder saved without its tokenizer files)."""
    try:
        ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    except Exception as e:  # noqa: BLE001 - a broken tokenizer fails in many ways; one line
        raise UserError(f"the tokenizer of {name} cannot encode text ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if len(ids) == 0:
        raise UserError(f"the tokenizer of {name} turns text into no tokens ({len(tokenizer)} "
                        "tokens in its vocabulary): the folder's tokenizer files are missing or "
                        "broken; save the model's tokenizer there (tokenizer.save_pretrained)")


def load_tokenizer(name: str, *, quiet: bool = False):
    """Load a tokenizer; one without a pad token gets its EOS token as padding (said on stderr).
    A local folder without tokenizer files, or a tokenizer that encodes text to nothing, is a
    UserError naming the folder (transformers would quietly build an empty one)."""
    from transformers import AutoTokenizer
    name = check_model_path(name)
    path = Path(name).expanduser()
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{name} holds a model but no tokenizer (none of "
                        f"{', '.join(TOKENIZER_FILES[:3])}, ...); save it beside the model with "
                        f"tokenizer.save_pretrained({name!r}), e.g. the tokenizer of the model "
                        "it was trained from")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer from {name}: {str(e).splitlines()[0]}") from None
    check_tokenizer(tokenizer, name)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserError(f"tokenizer of {name} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        if not quiet:
            print(f"note: tokenizer of {name} has no pad token; using its EOS token "
                  f"{tokenizer.eos_token!r} for padding (padding is masked out)", file=sys.stderr)
    return tokenizer


def adapter_base(name: str) -> str | None:
    """The base model of a LoRA adapter folder (``adapter_config.json``, written by peft), else None."""
    path = Path(name).expanduser() / "adapter_config.json"
    if not path.is_file():
        return None
    import json
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        base = None
    if not base:
        raise UserError(f"{path} names no base model (base_model_name_or_path)")
    return base


def require_peft():
    """The ``peft`` module, or a UserError saying how to install it (LoRA is an optional extra)."""
    try:
        import peft
    except ImportError:
        raise UserError("LoRA needs the peft package: pip install 'treemdp[lora]' "
                        "(or pip install peft)") from None
    return peft


def check_causal(name: str):
    """Load only the config of ``name``; fail with one line if it is missing or not a causal LM
    (a LoRA adapter folder is checked through its base model)."""
    from transformers import AutoConfig
    base = adapter_base(name) if Path(name).expanduser().is_dir() else None
    if base is not None:
        return check_causal(base)
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
    """Load a causal LM; fails with one line if the folder is missing or the model not causal.
    A LoRA adapter folder (a LoRA run's checkpoint) loads as its base with the adapters merged."""
    from transformers import AutoModelForCausalLM
    check_causal(name)
    name = check_model_path(name)
    base = adapter_base(name) if Path(name).expanduser().is_dir() else None
    if base is not None:
        peft = require_peft()
        return peft.PeftModel.from_pretrained(load_model(base, dtype=dtype), name).merge_and_unload()
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
        share_modes(out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror or e}") from None
    return out
