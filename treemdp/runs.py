"""Run directories (CONTRACT.md): write a finished run atomically, read one back.

Layout of a run directory::

    config.json    every TrainConfig field (rerun with ``treemdp train --config config.json``)
    data.json      the demonstrations and preferences used (the ``--data`` format)
    history.csv    phase, step, trajectory, prob, in_distribution (one row per logged step x trajectory)
    metrics.csv    phase, step, loss, kl_to_reference, chosen_prob, ... (one row per logged step)
    summary.json   final / peak OOD mass, chosen / rejected probability, KL, top OOD trajectories
    policy.pt      the trained policy's state_dict; reference.pt the frozen SFT policy's
    run.png        every trajectory's probability over SFT and DAA steps, in-distribution highlighted

Files are written into a hidden sibling folder first and renamed into place, so an interrupted
write never leaves a half-written run that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from .errors import UserError

RUN_FILES = ("config.json", "data.json", "history.csv", "metrics.csv", "summary.json",
             "policy.pt", "reference.pt", "run.png")


def _json_dump(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True) + "\n")


def check_writable(out_dir: str | Path) -> Path:
    """Fail early (UserError) if ``out_dir`` cannot be created or written."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {str(out)!r} exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.parent)
        os.rmdir(probe)
    except OSError as e:
        raise UserError(f"cannot write to output directory {str(out)!r}: {e.strerror or e}") from None
    return out


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Write a folder all at once: yields a hidden sibling folder; on success it replaces ``out_dir``.

    An interrupted write leaves at most a hidden ``.NAME.tmp-*`` folder (removed here on errors,
    and by sweeps on resume), never a half-written ``out_dir``. Both tracks' run folders and
    checkpoints are written through this.
    """
    out = check_writable(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_run(result, out_dir: str | Path, *, plot: bool = True) -> Path:
    """Write a :class:`~treemdp.training.RunResult` into ``out_dir`` (replacing an older run there).

    Returns:
        The run directory.
    """
    with atomic_directory(out_dir) as tmp:
        _json_dump(result.config.to_dict(), tmp / "config.json")
        _json_dump(result.dataset.to_json(), tmp / "data.json")
        history = result.history.copy()
        history["in_distribution"] = history["in_distribution"].map({True: "true", False: "false"})
        history.to_csv(tmp / "history.csv", index=False)
        result.metrics.to_csv(tmp / "metrics.csv", index=False)
        _json_dump(result.summary, tmp / "summary.json")
        torch.save(result.policy.state_dict(), tmp / "policy.pt")
        torch.save(result.reference.state_dict(), tmp / "reference.pt")
        if plot:
            from .plots import plot_run
            plot_run(result.history, result.summary, path=tmp / "run.png")
    return Path(out_dir)


def is_finished_run(path: str | Path) -> bool:
    """True when ``path`` holds a complete run (summary.json is written last-but-renamed-whole)."""
    return (Path(path) / "summary.json").is_file()


def read_run(path: str | Path) -> dict:
    """Load a run directory: ``{"config", "summary", "history", "metrics"}`` (DataFrames for CSVs)."""
    import pandas as pd
    path = Path(path)
    if not is_finished_run(path):
        raise UserError(f"{str(path)!r} is not a finished treemdp run (no summary.json)")
    history = pd.read_csv(path / "history.csv")
    history["in_distribution"] = history["in_distribution"].astype(str).str.lower() == "true"
    return {"config": json.loads((path / "config.json").read_text()),
            "summary": json.loads((path / "summary.json").read_text()),
            "history": history,
            "metrics": pd.read_csv(path / "metrics.csv")}
