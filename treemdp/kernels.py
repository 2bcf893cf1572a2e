"""One set of CPU kernels on every x86-64 machine, so that a seed gives the same bits everywhere.

torch (and numpy) pick their float kernels by the CPU they run on: MKL's GEMM (every ``baddbmm``
of the engine) has one code path per instruction set and per vendor, ATen's vectorised
elementwise kernels come in AVX2 and AVX-512 builds, numpy's OpenBLAS has one kernel set per core
type. Each rounds differently, Adam's g / (sqrt(v) + eps) turns the last bit into a different
trajectory, and runs near a threshold (peak vs final OOD mass, "over-optimized or not") flip.
Measured on a 2-core AMD EPYC (AVX-512) with torch 2.13: ``MKL_CBWR=COMPATIBLE`` and MKL's
default path give different history bytes for a default ``train()``; ``ATEN_CPU_CAPABILITY=avx2``
and ``avx512`` give the same ones (see tests/test_kernels.py and benchmarks/bench_kernels.py).

:func:`pin` sets, before torch, MKL or OpenBLAS are loaded:

- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility on its SSE2 branch, the
  one branch Intel documents as giving the same results on Intel and non-Intel x86 CPUs (a fixed
  thread count is the other condition: runs use ``TrainConfig.threads``, 1 by default);
- ``ATEN_CPU_CAPABILITY=avx2`` where the CPU has AVX2 and FMA (every x86-64 CPU since ~2015):
  ATen's elementwise kernels as on an AVX2 machine, whatever wider unit this one has;
- ``OPENBLAS_CORETYPE=Haswell`` under the same condition: numpy's BLAS (the lab's fits) on its
  AVX2 kernels.

It overrides what the environment says (setting ``MKL_CBWR=AVX2`` or ``MKL_ENABLE_INSTRUCTIONS``
changes nothing), unless ``TREEMDP_KERNELS=native``: then every library keeps its own choice
(fastest, bits differ between machines). Both libraries read these variables once, at their first
computation; ``import treemdp`` calls :func:`pin` first thing, so it works whenever treemdp is
imported before torch computes anything (the CLI, ``python -m``, worker processes, which inherit
the environment). :func:`pinned` says whether it took effect in this process.

The LLM track (``treemdp llm ...``) calls :func:`unpin` and keeps every library's own kernels.

Not covered (bits may differ; the verdicts in figures/README.md are stated with their intervals):
other architectures (ARM, Apple silicon), GPUs, x86 CPUs without AVX2, another torch/numpy build.
"""

from __future__ import annotations

import os

#: variable -> value set by :func:`pin` (ATen's and OpenBLAS's only where the CPU has AVX2 + FMA).
MKL = {"MKL_CBWR": "COMPATIBLE"}
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell"}
#: MKL's code for the COMPATIBLE branch (mkl_cbwr_get(MKL_CBWR_BRANCH), mkl_service.h).
MKL_CBWR_COMPATIBLE = 3


def native() -> bool:
    """True when the user asked for each library's own kernels (``TREEMDP_KERNELS=native``)."""
    return os.environ.get("TREEMDP_KERNELS", "").strip().lower() == "native"


def cpu_has_avx2() -> bool:
    """AVX2 and FMA in /proc/cpuinfo's flags (False where there is no such file: not Linux x86)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx2", "fma"} <= flags
    except OSError:
        pass
    return False


def settings() -> dict[str, str]:
    """The variables :func:`pin` sets on this machine (empty under ``TREEMDP_KERNELS=native``)."""
    if native():
        return {}
    return {**MKL, **(AVX2 if cpu_has_avx2() else {})}


_BEFORE: dict[str, str | None] = {}  # what pin() replaced, for unpin()


def pin() -> dict[str, str]:
    """Set :func:`settings` in ``os.environ`` (effective if torch has not computed yet); return them."""
    chosen = settings()
    for name in chosen:
        _BEFORE.setdefault(name, os.environ.get(name))
    os.environ.update(chosen)
    return chosen


def unpin() -> None:
    """Give the environment back as it was before :func:`pin` (effective if torch has not computed
    yet). The LLM track does this: its matrix products are large, MKL's SSE2 branch would slow them
    several-fold, and bit identity across machines is not promised there (GPUs)."""
    for name, value in _BEFORE.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _BEFORE.clear()


def mkl_branch() -> int | None:
    """MKL's CNR branch in this process (3 = COMPATIBLE, 1 = off); None without an MKL build."""
    import ctypes

    import torch
    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return int(get(1))  # MKL_CBWR_BRANCH


def pinned() -> bool:
    """Whether this process computes with the pinned kernels (False under ``TREEMDP_KERNELS=native``,
    or when torch had already computed before ``import treemdp``)."""
    import torch
    if native():
        return False
    branch = mkl_branch()
    mkl_ok = branch is None or branch == MKL_CBWR_COMPATIBLE
    aten_ok = not cpu_has_avx2() or torch.backends.cpu.get_cpu_capability() == "AVX2"
    return mkl_ok and aten_ok
