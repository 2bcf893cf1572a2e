"""Data for the LLM track: loading, validation, tokenisation, truncation and padding.

Sources (:func:`load_rows`): a JSONL file, a folder written by ``datasets`` ``save_to_disk``, a
folder of data files or a hub dataset name (``datasets.load_dataset``, with a split), and in
Python a ``datasets.Dataset`` or a list of dicts. Row formats, as TRL and the hub use them:

- standard: SFT ``{"prompt": str, "completion": str}``; preferences ``{"prompt": str,
  "chosen": str, "rejected": str}``;
- conversational: the same fields holding lists of ``{"role", "content"}`` messages, rendered
  by the tokenizer's chat template;
- implicit prompt (preferences only): no ``prompt`` field; the prompt is what ``chosen`` and
  ``rejected`` share at their start (whole messages, or text up to the last shared space).

A column mapping (``"prompt=question,chosen=good,rejected=bad"``) renames a source's columns.

Tokenisation (:func:`tokenize_rows`) has two conventions, compared with TRL's in docs/llm.md:

- ``default``: the prompt is tokenised alone with the tokenizer's own leading special tokens
  (a Llama tokenizer's BOS; none for Pythia), each completion alone with none, and the EOS token
  is appended unless the completion already ends with it. Conversational rows are rendered with
  the chat template (which places its own special tokens); nothing is appended.
- ``trl``: TRL 1.16 ``DPOTrainer``'s split: EOS appended to the text unless it ends with it, the
  prompt and the joined prompt + completion tokenised with special tokens, the completion starts
  where the two token lists diverge (conversational: the chat template applied to the token ids).

A completion needs one token before it to be scored: an empty prompt becomes the BOS token (EOS
where the tokenizer has none). Only completion tokens count in log-probs. Rows over
``max_length`` are truncated or dropped (:data:`TRUNCATION_MODES`), and counted. No
transformers import here: a tokenizer is anything with ``__call__``, ``eos_token_id`` and, for
conversational data, ``apply_chat_template``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

SFT_FIELDS = ("prompt", "completion")
PAIR_FIELDS = ("prompt", "chosen", "rejected")
#: ``truncate``: the prompt keeps its last max_prompt_length tokens, then the completion is cut
#: to fit; ``drop``: rows over max_length are left out; ``keep_start`` (TRL 1.16): each sequence
#: keeps its first max_length tokens and rows whose prompt alone fills max_length are left out.
TRUNCATION_MODES = ("truncate", "drop", "keep_start")
TOKENIZATIONS = ("default", "trl")


# ---------------------------------------------------------------- loading and validation

def parse_columns(spec: str | dict | None) -> dict[str, str]:
    """``"prompt=question,chosen=good"`` -> ``{"prompt": "question", "chosen": "good"}``."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        pairs = list(spec.items())
    else:
        pairs = []
        for part in str(spec).split(","):
            name, eq, column = part.partition("=")
            if not eq or not name.strip() or not column.strip():
                raise UserError(f"bad column mapping {part.strip()!r}; write FIELD=COLUMN,... "
                                "e.g. prompt=question,chosen=good,rejected=bad")
            pairs.append((name.strip(), column.strip()))
    known = set(SFT_FIELDS + PAIR_FIELDS)
    for name, _ in pairs:
        if name not in known:
            raise UserError(f"column mapping names unknown field {name!r}; fields: "
                            f"{', '.join(sorted(known))}")
    return dict(pairs)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value)


def _is_empty(value: str | list) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not value or not any(m["content"].strip() for m in value)


def _extract_prompt(chosen, rejected):
    """The shared start of chosen and rejected (implicit prompt): whole messages, or text up to
    the character where they differ, without the space that starts the answers."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    if isinstance(chosen, str) and 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def validate_row(raw: Any, fields: tuple[str, ...], where: str) -> dict:
    """One row in the normal form ``{field: str | list of messages}``, or a UserError naming it."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object with fields {', '.join(fields)}")
    row = dict(raw)
    if "chosen" in fields and "prompt" not in row and "chosen" in row and "rejected" in row:
        if type(row["chosen"]) is type(row["rejected"]) and isinstance(row["chosen"], (str, list)):
            prompt, chosen, rejected = _extract_prompt(row["chosen"], row["rejected"])
            if prompt:  # nothing shared: not an implicit-prompt row (a column not mapped?)
                row.update(prompt=prompt, chosen=chosen, rejected=rejected)
    for name in fields:
        if name not in row:
            raise UserError(f"{where}: missing field '{name}' (need {', '.join(fields)})")
        value = row[name]
        if not isinstance(value, str) and not _is_messages(value):
            raise UserError(f"{where}: field '{name}' must be a string or a list of "
                            "{role, content} messages")
        if name != "prompt" and _is_empty(value):
            raise UserError(f"{where}: field '{name}' is empty")
    kinds = {isinstance(row[name], str) for name in fields if name != "prompt" or row[name]}
    if len(kinds) > 1:
        raise UserError(f"{where}: mixes text and message lists across {', '.join(fields)}")
    if "chosen" in fields and row["chosen"] == row["rejected"]:
        raise UserError(f"{where}: 'chosen' equals 'rejected'")
    return {name: row[name] for name in fields}


def read_jsonl(path: str | Path, fields: tuple[str, ...], columns: dict | None = None) -> list[dict]:
    """Read and validate a JSONL file whose rows must hold ``fields`` (see :func:`validate_row`).

    Raises:
        UserError: one line naming the file and line: missing file, bad JSON, a row that is not
            an object, a missing or malformed field, an empty answer, chosen == rejected, or
            no rows at all.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg})") from None
        rows.append(validate_row(_renamed(raw, columns), fields, where))
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _renamed(raw: Any, columns: dict | None) -> Any:
    if not columns or not isinstance(raw, dict):
        return raw
    row = {k: v for k, v in raw.items() if k not in set(columns) - set(columns.values())}
    for name, column in columns.items():
        if column in raw:
            row[name] = raw[column]
    return row


#: Files read through ``datasets`` (any other file is read as JSONL).
_DATASET_FILES = (".parquet", ".csv", ".arrow")


def _load_dataset(source: str, split: str):
    """A ``datasets.Dataset``: a ``save_to_disk`` folder, a data file or folder, or a hub name."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"--data {source}: reading a datasets folder or hub dataset needs the "
                        "'datasets' package (pip install datasets)") from None
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    path = Path(source).expanduser()
    try:
        if path.is_dir() and any((path / f).is_file() for f in
                                 ("dataset_info.json", "state.json", "dataset_dict.json")):
            data = datasets.load_from_disk(str(path))
        elif path.is_file():
            data = datasets.load_dataset(path.suffix[1:], data_files=str(path), split="train")
        else:
            data = datasets.load_dataset(str(path) if path.is_dir() else source, split=split)
    except Exception as e:  # noqa: BLE001 - missing names, offline hub, bad files: one line each
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load dataset {source!r}: {first}") from None
    return _pick_split(data, split, repr(source))


def _pick_split(data, split: str, name: str):
    """``data[split]`` of a ``DatasetDict`` (a dict of splits); anything else as it is."""
    if not isinstance(data, dict):
        return data
    if split not in data:
        raise UserError(f"dataset {name} has no split {split!r}; splits: {', '.join(data)}")
    return data[split]


def load_rows(source: Any, fields: tuple[str, ...], *, split: str = "train",
              columns: str | dict | None = None) -> tuple[list[dict], str]:
    """Validated rows from any supported source, and a label naming it in messages.

    Args:
        source: a JSONL path, a ``datasets`` folder, a hub dataset name, a ``datasets.Dataset``
            (or ``DatasetDict``: ``split`` picks one) or a list of dicts.
        fields: :data:`SFT_FIELDS` or :data:`PAIR_FIELDS`.
        split: split of a hub dataset or ``DatasetDict``.
        columns: a column mapping (:func:`parse_columns`).
    """
    columns = parse_columns(columns)
    if isinstance(source, (str, Path)):
        text = str(source)
        if not text:
            raise UserError("no data given (--data FILE, folder or hub dataset)")
        path = Path(text).expanduser()
        if path.suffix == ".jsonl" or (path.is_file() and path.suffix not in _DATASET_FILES):
            return read_jsonl(path, fields, columns), str(path)
        if not path.exists() and (path.suffix in _DATASET_FILES + (".json",)
                                  or text.startswith((".", "/", "~")) or text.count("/") > 1):
            raise UserError(f"data file not found: {text}")
        source, label = _load_dataset(text, split), f"{text} [{split}]"
    else:
        source = _pick_split(source, split, f"<{type(source).__name__}>")
        label = f"<{type(source).__name__} of {len(source)} rows>" if hasattr(source, "__len__") \
            else f"<{type(source).__name__}>"
    rows = [validate_row(_renamed(raw, columns), fields, f"{label} row {i}")
            for i, raw in enumerate(source)]
    if not rows:
        raise UserError(f"{label}: no rows")
    return rows, label


def rows_digest(rows: list[dict]) -> str:
    """A hash of validated rows (part of the key of the reference log-prob cache)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- tokenisation

@dataclass
class TokenStats:
    """What tokenisation did to a source: rows kept, of them truncated, and rows dropped."""
    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0

    def line(self, label) -> str:
        return (f"{label}: {self.kept}/{self.total} rows kept, {self.truncated} truncated, "
                f"{self.dropped} dropped")


@dataclass
class Example:
    """One tokenised row: the prompt and one (SFT) or two (chosen, rejected) completions."""
    prompt_ids: list[int]
    completions: list[list[int]] = field(default_factory=list)
    index: int = 0  # position among the kept examples (keys the reference log-prob cache)
    row: int = 0  # position in the source rows


def _ids(tokenizer, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (Llama: BOS; Pythia: none)."""
    plain, full = _ids(tokenizer, "a"), _ids(tokenizer, "a", special=True)
    for start in range(len(full) - len(plain) + 1):
        if full[start: start + len(plain)] == plain:
            return full[:start]
    return []


def context_token(tokenizer) -> int:
    """The token an empty prompt becomes: BOS, else EOS (GPT-style document start)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else tokenizer.eos_token_id


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _chat(tokenizer, messages: list[dict], *, prompt: bool, tokenize: bool):
    """The chat template applied to messages (a prompt: with the generation prompt, or continuing
    a final assistant message)."""
    kwargs = {}
    if prompt:
        last = messages[-1]["role"] if messages else "user"
        kwargs = ({"continue_final_message": True} if last == "assistant"
                  else {"add_generation_prompt": True})
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=tokenize,
                                            **({"return_dict": True} if tokenize else {}), **kwargs)
    except (ValueError, TypeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot apply the tokenizer's chat template to conversational data: "
                        f"{first}") from None
    return list(out["input_ids"]) if tokenize else out


def _split_trl(prompt_ids: list[int], fulls: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """TRL's split: the completion starts where the prompt's ids and prompt + completion's differ."""
    cut = min(_common_prefix(prompt_ids, f) for f in fulls)
    return prompt_ids[:cut], [f[cut:] for f in fulls]


def tokenize_row(row: dict, names: tuple[str, ...], tokenizer, mode: str = "default",
                 prefix: list[int] | None = None) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, [completion ids per name]) of one validated row, before any truncation."""
    eos, eos_text = tokenizer.eos_token_id, getattr(tokenizer, "eos_token", None)
    prompt = row["prompt"]
    if isinstance(row[names[0]], list):  # conversational
        messages = prompt if isinstance(prompt, list) else (
            [{"role": "user", "content": prompt}] if prompt else [])
        if mode == "trl":
            prompt_ids, completions = _split_trl(
                _chat(tokenizer, messages, prompt=True, tokenize=True),
                [_chat(tokenizer, messages + row[n], prompt=False, tokenize=True) for n in names])
        else:
            text = _chat(tokenizer, messages, prompt=True, tokenize=False)
            fulls = [_chat(tokenizer, messages + row[n], prompt=False, tokenize=False)
                     for n in names]
            cut = min(_common_prefix(text, f) for f in fulls)
            prompt_ids = _ids(tokenizer, text[:cut])
            completions = [_ids(tokenizer, f[cut:]) for f in fulls]
    elif mode == "trl":
        texts = [row[n] if eos_text is None or row[n].endswith(eos_text) else row[n] + eos_text
                 for n in names]
        prompt_ids, completions = _split_trl(
            _ids(tokenizer, prompt, special=True),
            [_ids(tokenizer, prompt + t, special=True) for t in texts])
    else:
        prefix = special_prefix(tokenizer) if prefix is None else prefix
        prompt_ids = prefix + _ids(tokenizer, prompt) if prompt else list(prefix)
        completions = []
        for n in names:
            ids = _ids(tokenizer, row[n])
            completions.append(ids + [eos] if eos is not None and ids[-1:] != [eos] else ids)
    if not prompt_ids:
        prompt_ids = [context_token(tokenizer)]
    return prompt_ids, completions


def _fit(prompt: list[int], completion: list[int], max_length: int, max_prompt_length: int,
         mode: str) -> tuple[list[int], list[int], bool] | None:
    """Fit one prompt + completion into ``max_length``; None when the row must be dropped."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion, False
    if mode == "drop" or (mode == "keep_start" and len(prompt) >= max_length):
        return None
    if mode == "truncate":
        prompt = prompt[-max_prompt_length:]
    completion = completion[: max_length - len(prompt)]
    return (prompt, completion, True) if completion else None


def check_lengths(max_length: int, max_prompt_length: int, truncation: str,
                  tokenization: str = "default") -> None:
    """UserError for limits or modes the tokeniser cannot use."""
    if truncation not in TRUNCATION_MODES:
        raise UserError(f"unknown truncation mode {truncation!r}; choose one of: "
                        f"{', '.join(TRUNCATION_MODES)}")
    if tokenization not in TOKENIZATIONS:
        raise UserError(f"unknown tokenization {tokenization!r}; choose one of: "
                        f"{', '.join(TOKENIZATIONS)}")
    if max_length < 2:
        raise UserError(f"max length must be >= 2, got {max_length}")
    if not 1 <= max_prompt_length < max_length:
        raise UserError(f"max prompt length must be in [1, max length), got {max_prompt_length} "
                        f"with max length {max_length} (an empty prompt is scored from one "
                        "BOS token)")


def tokenize_rows(rows: list[dict], tokenizer, *, kind: str, max_length: int,
                  max_prompt_length: int, truncation: str = "truncate",
                  tokenization: str = "default", path: str | Path = "data"
                  ) -> tuple[list[Example], TokenStats]:
    """Tokenise validated rows (``kind`` "sft" or "pairs") and apply the length limit.

    Returns:
        The kept examples (``Example.completions`` has 1 entry for SFT, 2 for pairs:
        chosen then rejected; both share one prompt) and the counts.

    Raises:
        UserError: bad limits, or every row exceeds ``max_length`` and none could be kept.
    """
    check_lengths(max_length, max_prompt_length, truncation, tokenization)
    names = ("completion",) if kind == "sft" else ("chosen", "rejected")
    prefix = special_prefix(tokenizer) if tokenization == "default" else None
    stats, examples = TokenStats(total=len(rows)), []
    for i, row in enumerate(rows):
        prompt, completions = tokenize_row(row, names, tokenizer, tokenization, prefix)
        fitted = [_fit(prompt, c, max_length, max_prompt_length, truncation) for c in completions]
        if any(f is None for f in fitted):
            stats.dropped += 1
            continue
        # both completions of a pair share the (possibly truncated) shorter prompt
        short_prompt = min((f[0] for f in fitted), key=len)
        kept = [f[1][: max_length - len(short_prompt)] for f in fitted]
        examples.append(Example(short_prompt, kept, index=len(examples), row=i))
        stats.truncated += any(f[2] for f in fitted)
    stats.kept = len(examples)
    if not examples:
        raise UserError(f"{path}: all {stats.total} rows are longer than --max-length "
                        f"{max_length} (truncation mode {truncation}); raise the limit")
    return examples, stats


def check_tokenized(rows: list[dict], examples: list[Example], tokenizer, *, kind: str,
                    path: str | Path = "data", model: str = "the model") -> None:
    """UserError for data a tokenizer silently damages: a non-empty text that becomes no tokens,
    or (pairs) a chosen and a rejected answer that differ as text but not as tokens. Either
    means the pair carries no signal, usually a wrong or broken tokenizer. Checked on the kept
    examples before truncation would make answers equal legitimately."""
    names = ("completion",) if kind == "sft" else ("chosen", "rejected")
    eos = getattr(tokenizer, "eos_token_id", None)
    for example in examples:
        row = rows[example.row]
        if not all(isinstance(row[n], str) for n in names):
            continue  # conversational rows: the chat template adds its own tokens
        texts = [row[n] for n in names] + ([row["prompt"]] if isinstance(row.get("prompt"), str)
                                           else [])
        for n, text in zip(names + ("prompt",), texts):
            if text.strip() and not [t for t in _ids(tokenizer, text) if t != eos]:
                raise UserError(f"{path}: row {example.row + 1}: the {n} text tokenises to no "
                                f"tokens with the tokenizer of {model}; is it the right "
                                "tokenizer (its files present)?")
        if kind != "sft" and row["chosen"] != row["rejected"]:
            ids = [_ids(tokenizer, row[n]) for n in names]
            if ids[0] == ids[1]:
                raise UserError(f"{path}: row {example.row + 1}: chosen and rejected differ as "
                                f"text but are the same tokens with the tokenizer of {model}; "
                                "the pair would teach nothing (wrong tokenizer, or texts that "
                                "differ only in characters it drops)")


# ---------------------------------------------------------------- padding

def collate(prompts: list[list[int]], completions: list[list[int]], pad_id: int
            ) -> dict[str, torch.Tensor]:
    """Right-pad ``prompt + completion`` rows into a batch.

    Returns:
        ``input_ids`` [N, T], ``attention_mask`` [N, T] (1 on real tokens) and
        ``completion_mask`` [N, T] (1 on completion tokens only: the prompt and padding are out).
    """
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    n, t = len(lengths), max(lengths)
    input_ids = torch.full((n, t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, t), dtype=torch.long)
    completion_mask = torch.zeros((n, t), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention_mask[i, : len(p) + len(c)] = 1
        completion_mask[i, len(p): len(p) + len(c)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "completion_mask": completion_mask}


def collate_sft(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """An SFT batch [B, T]."""
    return collate([e.prompt_ids for e in examples], [e.completions[0] for e in examples], pad_id)


def collate_pairs(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen and rejected concatenated into one batch [2B, T]: rows :B chosen, B: rejected."""
    prompts = [e.prompt_ids for e in examples]
    return collate(prompts + prompts, [e.completions[0] for e in examples]
                   + [e.completions[1] for e in examples], pad_id)


def collate_shared(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Pairs laid out for the shared-prompt forward (:func:`treemdp.llm.logprobs.shared_pair_log_probs`).

    Each prompt but its last token is run once; both completions then continue from the last
    prompt token. With P the prompt length and y a completion:

    - ``prompt_ids`` [B, P_max - 1]: ``prompt[:-1]``, right-padded; ``prompt_mask`` 1 on real tokens;
    - ``input_ids`` [2B, C]: ``[prompt[-1]] + y[:-1]``, rows :B chosen, B: rejected, right-padded;
    - ``targets`` [2B, C]: ``y`` (position j of ``input_ids`` predicts ``targets[:, j]``);
    - ``completion_mask`` [2B, C]: 1 on real completion tokens;
    - ``position_ids`` [2B, C]: ``P - 1 + j``, the positions these tokens have in prompt + y.
    """
    b = len(examples)
    p_max = max(len(e.prompt_ids) for e in examples)
    c_max = max(len(c) for e in examples for c in e.completions)
    prompt_ids = torch.full((b, p_max - 1), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, p_max - 1), dtype=torch.long)
    input_ids = torch.full((2 * b, c_max), pad_id, dtype=torch.long)
    targets = torch.full((2 * b, c_max), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((2 * b, c_max), dtype=torch.long)
    offsets = torch.zeros(2 * b, 1, dtype=torch.long)
    for i, e in enumerate(examples):
        p = e.prompt_ids
        prompt_ids[i, : len(p) - 1] = torch.tensor(p[:-1], dtype=torch.long)
        prompt_mask[i, : len(p) - 1] = 1
        for k, y in enumerate(e.completions):
            row = k * b + i
            input_ids[row, : len(y)] = torch.tensor([p[-1]] + y[:-1], dtype=torch.long)
            targets[row, : len(y)] = torch.tensor(y, dtype=torch.long)
            completion_mask[row, : len(y)] = 1
            offsets[row] = len(p) - 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "input_ids": input_ids,
            "targets": targets, "completion_mask": completion_mask,
            "position_ids": offsets + torch.arange(c_max)}
