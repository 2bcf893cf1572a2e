"""Same seed, same bytes whatever kernels the machine would pick (treemdp/kernels.py).

Each case runs `treemdp train` (a default run, shortened) and a small `treemdp lab run` grid in a
fresh process whose environment imitates another machine: MKL told to use another branch
(MKL_CBWR=AVX2) or only AVX2 instructions (MKL_ENABLE_INSTRUCTIONS=AVX2), ATen forced to its
scalar kernels (ATEN_CPU_CAPABILITY=default). Every written table must be byte-identical. The
control case shows the comparison can fail: with TREEMDP_KERNELS=native the libraries follow the
environment, and MKL's COMPATIBLE branch rounds differently from the one it picks by itself.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from treemdp import kernels

TRAIN = ["train", "--sft-steps", "60", "--daa-steps", "120", "--no-plot", "--quiet"]
LAB = ["lab", "run", "--loss", "dpo", "ipo", "--seeds", "0-1", "--pairs", "16", "--sft-steps", "40", "--steps", "80",
       "--rm-steps", "40", "--quiet"]
#: name -> environment changes imitating another machine's kernel choice.
MACHINES = {
    "mkl_avx2": {"MKL_CBWR": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
}


def _outputs(treemdp_cmd, tmp: Path, env_changes: dict, commands=(TRAIN, LAB)) -> dict[str, bytes]:
    """Run the commands under ``os.environ | env_changes``; every CSV they wrote, by relative path."""
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "TREEMDP_KERNELS",
                                                             "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE")}
    env.update(env_changes)
    for args in commands:
        out = tmp / args[0]
        done = subprocess.run(treemdp_cmd + args + ["--out", str(out)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
    files = {str(p.relative_to(tmp)): p.read_bytes() for p in sorted(tmp.rglob("*.csv"))}
    assert "train/history.csv" in files and (LAB not in commands or sum(name.startswith("lab/") for name in files) >= 4)
    return files


def _differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [name for name in a if a[name] != b[name] and not name.endswith("results.csv")]


@pytest.fixture(scope="module")
def reference(treemdp_cmd_module, tmp_path_factory):
    return _outputs(treemdp_cmd_module, tmp_path_factory.mktemp("reference"), {})


@pytest.fixture(scope="module")
def treemdp_cmd_module():
    import sys
    script = Path(sys.executable).with_name("treemdp")
    return [str(script)] if script.exists() else [sys.executable, "-m", "treemdp"]


@pytest.mark.skipif(not kernels.cpu_has_avx2(), reason="the pinned kernels need an x86-64 CPU with AVX2")
@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_same_bytes_under_another_machines_kernels(machine, reference, treemdp_cmd_module, tmp_path):
    other = _outputs(treemdp_cmd_module, tmp_path, MACHINES[machine])
    assert _differing(reference, other) == []


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="the control needs torch's MKL build")
def test_native_kernels_do_change_the_bytes(treemdp_cmd_module, tmp_path):
    """The control: without the pin, MKL's branch alone changes a run's history."""
    native = {"TREEMDP_KERNELS": "native"}
    default = _outputs(treemdp_cmd_module, tmp_path / "a", native, [TRAIN])
    compatible = _outputs(treemdp_cmd_module, tmp_path / "b", {**native, "MKL_CBWR": "COMPATIBLE"}, [TRAIN])
    assert "train/history.csv" in _differing(default, compatible)


def test_this_process_is_pinned():
    """tests/conftest.py imports treemdp before torch computes, so the suite runs on the pinned kernels."""
    assert kernels.pinned() == (kernels.cpu_has_avx2() and not kernels.native())
    assert kernels.settings().get("MKL_CBWR") == ("COMPATIBLE" if not kernels.native() else None)


def test_unpin_gives_the_environment_back(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("TREEMDP_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_BEFORE", {})
    chosen = kernels.pin()
    assert os.environ["MKL_CBWR"] == "COMPATIBLE" and chosen["MKL_CBWR"] == "COMPATIBLE"
    kernels.unpin()
    assert os.environ["MKL_CBWR"] == "AVX2" and "ATEN_CPU_CAPABILITY" not in os.environ


def test_the_llm_commands_run_on_the_machines_own_kernels(tmp_path):
    """`treemdp llm ...` gives the environment back before its work starts (here: a one-line error)."""
    import sys
    code = ("import os, sys; from treemdp.cli import main; "
            f"rc = main(['llm', 'plot', {str(tmp_path / 'missing')!r}, '--out', {str(tmp_path / 'out')!r}]); "
            "print(rc, os.environ.get('MKL_CBWR'))")
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "TREEMDP_KERNELS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split()[-1] == "None", out.stdout + out.stderr
