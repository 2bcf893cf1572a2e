"""Every bad input of the LLM track: exit code 2, one ``error:`` line, no traceback."""

import json

import pytest

from treemdp.cli import main

from .conftest import DATA, treemdp_cli


def run(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors (bad flag values)
        code = e.code
    captured = capsys.readouterr()
    return code, captured.err


def assert_user_error(code, err, *fragments):
    lines = [l for l in err.strip().splitlines() if not l.startswith("note:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "missing.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    (d / "empty.jsonl").write_text(json.dumps({"prompt": "p", "completion": ""}) + "\n")
    (d / "notjson.jsonl").write_text('{"prompt": "p", "completion": "c"}\n{oops\n')
    return d


@pytest.mark.parametrize("beta, fragment", [("0", "beta must be"), ("-1", "beta must be"),
                                            ("nan", "beta must be"), ("inf", "beta must be"),
                                            ("abc", "--beta: invalid float value")])
def test_invalid_beta(capsys, tiny, prefs_small, tmp_path, beta, fragment):
    code, err = run(capsys, "llm", "daa", "--beta", beta, "--model", tiny, "--data", prefs_small,
                    "--out", tmp_path / "o")
    assert_user_error(code, err, fragment)
    assert not (tmp_path / "o").exists()  # validated before any work


def test_unknown_loss(capsys, tiny, prefs_small, tmp_path):
    code, err = run(capsys, "llm", "daa", "--loss", "kto", "--model", tiny, "--data", prefs_small,
                    "--out", tmp_path / "o")
    assert_user_error(code, err, "unknown loss 'kto'", "dpo, ipo, slic")


@pytest.mark.parametrize("command, name, fragment", [
    ("daa", "missing.jsonl", "missing.jsonl:1: missing field 'rejected'"),
    ("sft", "empty.jsonl", "empty.jsonl:1: field 'completion' is empty"),
    ("sft", "notjson.jsonl", "notjson.jsonl:2: not valid JSON"),
    ("sft", "absent.jsonl", "data file not found"),
])
def test_bad_data(capsys, tiny, bad_files, tmp_path, command, name, fragment):
    code, err = run(capsys, "llm", command, "--model", tiny, "--data", bad_files / name,
                    "--out", tmp_path / "o", "--no-progress")
    assert_user_error(code, err, fragment)


def test_every_row_too_long(capsys, tiny, prefs_small, tmp_path):
    code, err = run(capsys, "llm", "daa", "--model", tiny, "--data", prefs_small, "--out",
                    tmp_path / "o", "--max-length", "10", "--max-prompt-length", "5",
                    "--truncation", "drop", "--no-progress")
    assert_user_error(code, err, "all 64 rows are longer than --max-length 10")


def test_model_path_missing(capsys, prefs_small, tmp_path):
    code, err = run(capsys, "llm", "daa", "--model", tmp_path / "nope", "--data", prefs_small,
                    "--out", tmp_path / "o")
    assert_user_error(code, err, "model path does not exist")
    (tmp_path / "empty").mkdir()
    code, err = run(capsys, "llm", "eval", "--model", tmp_path / "empty", "--ref", tmp_path / "empty",
                    "--data", prefs_small)
    assert_user_error(code, err, "holds no config.json")


def test_model_not_causal(capsys, tiny, prefs_small, tmp_path):
    from transformers import AutoConfig, GPTNeoXForSequenceClassification
    config = AutoConfig.from_pretrained(tiny)
    path = tmp_path / "classifier"
    GPTNeoXForSequenceClassification(config).save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (path / f).write_bytes((tiny / f).read_bytes())
    code, err = run(capsys, "llm", "sft", "--model", path, "--data", DATA / "tldr_sft.jsonl",
                    "--out", tmp_path / "o", "--no-progress")
    assert_user_error(code, err, "is not a causal language model",
                      "GPTNeoXForSequenceClassification")


def test_tokenizer_without_pad_token_gets_one_and_says_so(tiny, tmp_path, capsys):
    from transformers import AutoTokenizer
    from treemdp.llm.models import load_tokenizer
    tok = AutoTokenizer.from_pretrained(tiny)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_bytes((tiny / "config.json").read_bytes())
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token_id == loaded.eos_token_id
    assert "has no pad token" in capsys.readouterr().err


@pytest.mark.parametrize("args, fragment", [
    (["--max-length", "64", "--max-prompt-length", "64"], "max prompt length must be in"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--batch-size", "512"], "fewer than one global batch"),
    (["--lr", "-1"], "--lr must be"),
])
def test_bad_settings(capsys, tiny, prefs_small, tmp_path, args, fragment):
    code, err = run(capsys, "llm", "daa", "--model", tiny, "--data", prefs_small, "--out",
                    tmp_path / "o", "--no-progress", *args)
    assert_user_error(code, err, fragment)


def test_unwritable_output(capsys, tiny, prefs_small, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(capsys, "llm", "daa", "--model", tiny, "--data", prefs_small,
                    "--out", blocker / "sub", "--no-progress")
    assert_user_error(code, err, "cannot write output folder")


def test_eval_needs_exactly_one_target(capsys, prefs_small):
    code, err = run(capsys, "llm", "eval", "--data", prefs_small)
    assert_user_error(code, err, "exactly one of --model or --run")


def test_subprocess_error_has_no_traceback(prefs_small, tmp_path):
    proc = treemdp_cli("llm", "daa", "--beta", "-0.5", "--model", tmp_path, "--data", prefs_small,
                       "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: beta must be a finite number > 0, got -0.5"]


def test_import_and_help_stay_light():
    import subprocess
    import sys
    code = ("import sys, treemdp, treemdp.llm, treemdp.cli.llm; "
            "sys.exit(int(any(m in sys.modules for m in ('transformers', 'accelerate', 'trl'))))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    code = ("import sys; from treemdp.cli import build_parser; build_parser(); "
            "sys.exit(int('transformers' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without GPU")
def test_cuda_without_gpu(capsys, tiny, prefs_small, tmp_path):
    code, err = run(capsys, "llm", "daa", "--model", tiny, "--data", prefs_small, "--out",
                    tmp_path / "o", "--device", "cuda")
    assert_user_error(code, err, "no CUDA GPU")


def test_unknown_judge(capsys, tiny, prefs_small):
    code, err = run(capsys, "llm", "eval", "--model", tiny, "--ref", tiny, "--data", prefs_small,
                    "--judge", "nonsense")
    assert_user_error(code, err, "unknown judge")
