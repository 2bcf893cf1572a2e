"""Shared fixtures for the LLM track tests: a tiny offline GPT-NeoX and small data files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"  # no hub downloads anywhere in these tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "treemdp" / "data"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def treemdp_cli(*args, check=True, timeout=300):
    """Run ``python -m treemdp ...`` in a subprocess; return the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "treemdp", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dst


@pytest.fixture(scope="session")
def llm_tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("llm")


@pytest.fixture(scope="session")
def tiny(llm_tmp):
    """A random-init GPT-NeoX (hidden 64, 2 layers, vocab 512) and its local tokenizer."""
    from treemdp.llm.models import build_tiny_model
    return build_tiny_model(llm_tmp / "tiny", hidden_size=64, num_layers=2, num_heads=4,
                            vocab_size=512, max_positions=256)


@pytest.fixture(scope="session")
def tokenizer(tiny):
    from treemdp.llm.models import load_tokenizer
    return load_tokenizer(str(tiny))


@pytest.fixture(scope="session")
def model(tiny):
    from treemdp.llm.models import load_model
    return load_model(str(tiny)).eval()


@pytest.fixture(scope="session")
def prefs_small(llm_tmp):
    return head(DATA / "tldr_prefs.jsonl", llm_tmp / "prefs64.jsonl", 64)


@pytest.fixture(scope="session")
def sft_run(tiny, llm_tmp):
    """SFT of the tiny model through the CLI on 192 synthetic rows (24 steps of 8)."""
    data = head(DATA / "tldr_sft.jsonl", llm_tmp / "sft192.jsonl", 192)
    out = llm_tmp / "sft"
    treemdp_cli("llm", "sft", "--model", tiny, "--data", data, "--out", out, "--preset", "cpu",
                "--threads", "2", "--no-progress", "--checkpoints-per-epoch", "2")
    return out


@pytest.fixture(scope="module")
def pairs16(tmp_path_factory):
    """The first 16 of the shipped preference pairs (the reliability and TRL-user tests)."""
    return head(DATA / "tldr_prefs.jsonl", tmp_path_factory.mktemp("pairs") / "p16.jsonl", 16)
