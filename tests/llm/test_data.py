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


# ---------------------------------------------------------------- the ecosystem's data (offline)

def rows_as(n=12):
    import json
    return [json.loads(l) for l in (DATA / "tldr_prefs.jsonl").read_text().splitlines()[:n]]


def test_datasets_sources_give_the_jsonl_rows(tmp_path):
    """An in-memory Dataset, a DatasetDict split, a save_to_disk folder, a parquet file and a
    renamed-column folder all load the same validated rows as the JSONL file."""
    datasets = pytest.importorskip("datasets")
    from treemdp.llm.data import load_rows
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows_as()))
    expected, _ = load_rows(jsonl, PAIR_FIELDS)
    ds = datasets.Dataset.from_list(rows_as())
    ds.save_to_disk(str(tmp_path / "disk"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4))}).save_to_disk(str(tmp_path / "dict"))
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.rename_columns({"prompt": "post", "chosen": "good", "rejected": "bad"}).save_to_disk(
        str(tmp_path / "renamed"))
    for source, kwargs in [(ds, {}), (str(tmp_path / "disk"), {}),
                           (str(tmp_path / "dict"), {"split": "train"}),
                           (str(tmp_path / "p.parquet"), {}),
                           (str(tmp_path / "renamed"), {"columns": "prompt=post,chosen=good,rejected=bad"})]:
        rows, label = load_rows(source, PAIR_FIELDS, **kwargs)
        assert rows == expected, label
    rows, _ = load_rows(str(tmp_path / "dict"), PAIR_FIELDS, split="test")
    assert rows == expected[:4]
    rows, _ = load_rows(datasets.DatasetDict({"test": ds.select(range(3))}), PAIR_FIELDS,
                        split="test")
    assert rows == expected[:3]
    with pytest.raises(UserError, match="has no split 'validation'; splits: train, test"):
        load_rows(str(tmp_path / "dict"), PAIR_FIELDS, split="validation")
    with pytest.raises(UserError, match="missing field 'prompt'"):
        load_rows(str(tmp_path / "renamed"), PAIR_FIELDS, columns="chosen=good,rejected=bad")
    with pytest.raises(UserError, match="column mapping names unknown field 'answer'"):
        load_rows(ds, PAIR_FIELDS, columns="answer=x")


def test_hub_name_offline_is_one_line(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from treemdp.llm.data import load_rows
    # read at import time, maybe before the test environment's HF_HUB_OFFLINE=1: set it here too
    # (else datasets retries the unreachable hub for ~25 s before giving up)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="cannot load dataset 'nobody/no-such-dataset'") as info:
        load_rows("nobody/no-such-dataset", PAIR_FIELDS)
    assert "\n" not in str(info.value)


def test_implicit_prompts_are_extracted():
    from treemdp.llm.data import validate_row
    row = validate_row({"chosen": "Human: hi Assistant: hello there",
                        "rejected": "Human: hi Assistant: go away"}, PAIR_FIELDS, "r")
    assert row == {"prompt": "Human: hi Assistant:", "chosen": " hello there",
                   "rejected": " go away"}
    user = {"role": "user", "content": "hi"}
    row = validate_row({"chosen": [user, {"role": "assistant", "content": "hello"}],
                        "rejected": [user, {"role": "assistant", "content": "go"}]}, PAIR_FIELDS, "r")
    assert row["prompt"] == [user] and row["chosen"] == [{"role": "assistant", "content": "hello"}]


def test_conversational_dataset_trains_sft_and_daa(tiny, tmp_path, capsys):
    """Conversational rows from a save_to_disk folder, rendered by the tokenizer's chat template,
    through `treemdp llm sft` and `daa` (the CLI), and a datasets.Dataset through `train()`."""
    import json
    import shutil

    datasets = pytest.importorskip("datasets")
    from treemdp.cli import main
    from treemdp.llm.train import LLMConfig, train

    model = shutil.copytree(tiny, tmp_path / "chat-model")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps(config))

    def msgs(role, text):
        return [{"role": role, "content": text.strip()}]
    rows = rows_as(8)
    prefs = datasets.Dataset.from_list([{"prompt": msgs("user", r["prompt"]),
                                         "chosen": msgs("assistant", r["chosen"]),
                                         "rejected": msgs("assistant", r["rejected"])} for r in rows])
    sft = datasets.Dataset.from_list([{"prompt": msgs("user", r["prompt"]),
                                       "completion": msgs("assistant", r["chosen"])} for r in rows])
    prefs.save_to_disk(str(tmp_path / "prefs"))
    sft.save_to_disk(str(tmp_path / "sft-data"))
    common = ["--no-progress", "--batch-size", "4", "--max-steps", "1"]
    assert main(["llm", "sft", "--model", str(model), "--data", str(tmp_path / "sft-data"),
                 "--out", str(tmp_path / "sft"), *common]) == 0
    assert main(["llm", "daa", "--model", str(tmp_path / "sft" / "final"), "--data",
                 str(tmp_path / "prefs"), "--out", str(tmp_path / "daa"), *common]) == 0
    assert "8/8 rows kept" in capsys.readouterr().err
    result = train(LLMConfig(phase="daa", model=str(model), data=prefs, out=str(tmp_path / "py"),
                               batch_size=4, max_steps=1, progress=False))
    assert result.finished
    saved = json.loads((tmp_path / "py" / "config.json").read_text())
    assert saved["data"] == "<in-memory Dataset>" and saved["data_source"].startswith("<Dataset")
    assert torch.load(tmp_path / "py" / "ref_logps.pt")["sums"].shape == (8, 2)
