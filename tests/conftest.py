import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def treemdp_cmd():
    """The installed console script (falls back to ``python -m treemdp``)."""
    script = Path(sys.executable).with_name("treemdp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "treemdp"]


@pytest.fixture
def cli_env():
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env
