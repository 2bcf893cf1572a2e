"""Data loading, validation, truncation and collation."""

import json

import pytest
import torch

from treemdp.errors import UserError
from treemdp.llm.data import (PAIR_FIELDS, SFT_FIELDS, collate_pairs, read_jsonl,
                              tokenize_rows)

from .conftest import DATA


def write(tmp_path, lines):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return path


@pytest.mark.parametrize("lines, fields, message", [
    ([{"prompt": "a"}], SFT_FIELDS, ":1: missing field 'completion'"),
    ([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": "  "}], SFT_FIELDS,
     ":2: field 'completion' is empty"),
    (["{not json"], SFT_FIELDS, ":1: not valid JSON"),
    (["[1, 2]"], SFT_FIELDS, ":1: expected a JSON object"),
    ([{"prompt": "a", "completion": 3}], SFT_FIELDS, "field 'completion' must be a string"),
    ([{"prompt": "p", "chosen": "x", "rejected": "x"}], PAIR_FIELDS, "'chosen' equals 'rejected'"),
    ([{"prompt": "p", "chosen": "x"}], PAIR_FIELDS, "missing field 'rejected'"),
    ([""], SFT_FIELDS, "no rows"),
])
def test_bad_rows_name_file_and_line(tmp_path, lines, fields, message):
    path = write(tmp_path, lines)
    with pytest.raises(UserError, match=message) as info:
        read_jsonl(path, fields)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_shipped_data_loads():
    assert len(read_jsonl(DATA / "tldr_sft.jsonl", SFT_FIELDS)) == 300
    assert len(read_jsonl(DATA / "tldr_prefs.jsonl", PAIR_FIELDS)) == 300
    assert len(read_jsonl(DATA / "tldr_prefs_test.jsonl", PAIR_FIELDS)) == 64


def test_truncate_and_drop_are_counted(tokenizer):
    rows = read_jsonl(DATA / "tldr_prefs.jsonl", PAIR_FIELDS)[:40]
    lengths = [len(tokenizer(r["prompt"])["input_ids"]) + len(tokenizer(r["rejected"])["input_ids"])
               + 1 for r in rows]
    limit = sorted(lengths)[len(lengths) // 2]
    kept, stats = tokenize_rows(rows, tokenizer, kind="pairs", max_length=limit,
                                max_prompt_length=limit - 8, truncation="truncate")
    assert stats.total == 40 and stats.kept + stats.dropped == 40 and stats.truncated > 0
    assert all(len(e.prompt_ids) + len(c) <= limit for e in kept for c in e.completions)
    kept_d, stats_d = tokenize_rows(rows, tokenizer, kind="pairs", max_length=limit,
                                    max_prompt_length=limit - 8, truncation="drop")
    assert stats_d.dropped >= stats.truncated and stats_d.truncated == 0
    assert stats_d.kept == len(kept_d) < 40
    with pytest.raises(UserError, match="all 40 rows are longer than --max-length 8"):
        tokenize_rows(rows, tokenizer, kind="pairs", max_length=8, max_prompt_length=4,
                      truncation="drop")


def test_collate_pairs_masks_prompt_and_padding():
    from treemdp.llm.data import Example
    ex = [Example([1, 2, 3], [[4, 5], [6]]), Example([7], [[8, 9, 10, 11], [12, 13]])]
    b = collate_pairs(ex, pad_id=0)
    assert b["input_ids"].shape == (4, 5)
    assert b["input_ids"][0].tolist() == [1, 2, 3, 4, 5]
    assert b["input_ids"][2].tolist() == [1, 2, 3, 6, 0]  # rejected of row 0 after the chosen
    assert b["completion_mask"][2].tolist() == [0, 0, 0, 1, 0]
    assert b["attention_mask"][3].tolist() == [1, 1, 1, 0, 0]
    assert torch.equal(b["completion_mask"] <= b["attention_mask"], torch.ones(4, 5, dtype=torch.bool))


def test_shipped_data_regenerates_bit_for_bit(tmp_path):
    from treemdp.llm.synthetic import write_dataset
    for path in write_dataset(tmp_path):
        assert path.read_bytes() == (DATA / path.name).read_bytes(), path.name
