import os
import sys
from pathlib import Path

import pytest

import treemdp  # noqa: F401  first: pins the CPU kernels before torch computes (treemdp/kernels.py)
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


def pytest_terminal_summary(terminalreporter):
    """Print what tests measured (``record_property``), e.g. the browser test's redraw latency."""
    rows = [(report.nodeid, name, value) for reports in terminalreporter.stats.values() for report in reports
            if getattr(report, "when", None) == "call" for name, value in getattr(report, "user_properties", ())]
    if rows:
        terminalreporter.section("measurements")
        for nodeid, name, value in rows:
            terminalreporter.write_line(f"{name}: {value}  [{nodeid}]")
