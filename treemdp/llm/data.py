"""JSONL data for the LLM track: loading with validation, tokenisation, truncation, padding.

Formats (one JSON object per line, the layout TRL and the Hugging Face hub use):

- SFT rows: ``{"prompt": str, "completion": str}``
- preference rows: ``{"prompt": str, "chosen": str, "rejected": str}``

Every completion gets the tokenizer's end-of-sequence token appended, so a policy learns to stop.
A tokenised row is ``prompt_ids + completion_ids``; only completion tokens count in log-probs
(the prompt is masked out). Rows over ``max_length`` are truncated (the prompt keeps its last
``max_prompt_length`` tokens, then the completion is cut to fit) or dropped; both are counted.
No transformers import here: a tokenizer is anything with ``__call__(text,
add_special_tokens=False)["input_ids"]`` and ``eos_token_id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError

SFT_FIELDS = ("prompt", "completion")
PAIR_FIELDS = ("prompt", "chosen", "rejected")
TRUNCATION_MODES = ("truncate", "drop")


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """Read and validate a JSONL file whose rows must hold the string ``fields``.

    Raises:
        UserError: one line naming the file and line: missing file, bad JSON, a row that is not
            an object, a missing or non-string field, an empty answer, chosen == rejected, or
            no rows at all.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object with fields {', '.join(fields)}")
        for name in fields:
            if name not in row:
                raise UserError(f"{where}: missing field '{name}' (need {', '.join(fields)})")
            if not isinstance(row[name], str):
                raise UserError(f"{where}: field '{name}' must be a string")
            if name != "prompt" and not row[name].strip():
                raise UserError(f"{where}: field '{name}' is empty")
        if "chosen" in fields and row["chosen"] == row["rejected"]:
            raise UserError(f"{where}: 'chosen' equals 'rejected'")
        rows.append({name: row[name] for name in fields})
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


@dataclass
class TokenStats:
    """What tokenisation did to a file: rows kept, of them truncated, and rows dropped."""
    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0

    def line(self, path) -> str:
        return (f"{path}: {self.kept}/{self.total} rows kept, {self.truncated} truncated, "
                f"{self.dropped} dropped")


@dataclass
class Example:
    """One tokenised row: the prompt and one (SFT) or two (chosen, rejected) completions."""
    prompt_ids: list[int]
    completions: list[list[int]] = field(default_factory=list)
    index: int = 0  # row index in the kept rows (keys the reference log-prob cache)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _fit(prompt: list[int], completion: list[int], max_length: int, max_prompt_length: int,
         mode: str) -> tuple[list[int], list[int], bool] | None:
    """Fit one prompt + completion into ``max_length``; None when the row must be dropped."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion, False
    if mode == "drop":
        return None
    prompt = prompt[-max_prompt_length:] if max_prompt_length > 0 else []
    completion = completion[: max_length - len(prompt)]
    if not completion:
        return None
    return prompt, completion, True


def tokenize_rows(rows: list[dict], tokenizer, *, kind: str, max_length: int,
                  max_prompt_length: int, truncation: str = "truncate",
                  path: str | Path = "data") -> tuple[list[Example], TokenStats]:
    """Tokenise validated rows (``kind`` "sft" or "pairs") and apply the length limit.

    Returns:
        The kept examples (``Example.completions`` has 1 entry for SFT, 2 for pairs:
        chosen then rejected) and the counts.

    Raises:
        UserError: bad limits, or every row exceeds ``max_length`` and none could be kept.
    """
    if truncation not in TRUNCATION_MODES:
        raise UserError(f"unknown truncation mode {truncation!r}; choose one of: "
                        f"{', '.join(TRUNCATION_MODES)}")
    if max_length < 2:
        raise UserError(f"max length must be >= 2, got {max_length}")
    if not 0 <= max_prompt_length < max_length:
        raise UserError(f"max prompt length must be in [0, max length), got {max_prompt_length} "
                        f"with max length {max_length}")
    eos = getattr(tokenizer, "eos_token_id", None)
    names = ("completion",) if kind == "sft" else ("chosen", "rejected")
    stats, examples = TokenStats(total=len(rows)), []
    for row in rows:
        prompt = _ids(tokenizer, row["prompt"])
        fitted, cut = [], False
        for name in names:
            completion = _ids(tokenizer, row[name]) + ([eos] if eos is not None else [])
            result = _fit(prompt, completion, max_length, max_prompt_length, truncation)
            if result is None:
                break
            fitted.append(result)
            cut = cut or result[2]
        if len(fitted) < len(names):
            stats.dropped += 1
            continue
        # both completions of a pair share the (possibly truncated) shorter prompt
        short_prompt = min((f[0] for f in fitted), key=len)
        completions = [f[1][: max_length - len(short_prompt)] for f in fitted]
        examples.append(Example(short_prompt, completions, index=len(examples)))
        stats.truncated += cut
    stats.kept = len(examples)
    if not examples:
        raise UserError(f"{path}: all {stats.total} rows are longer than --max-length "
                        f"{max_length} (truncation mode {truncation}); raise the limit")
    return examples, stats


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
