"""Run directories: write a finished run atomically, load one (or a whole sweep) back.

Layout of a run directory::

    config.json    every TrainConfig field (rerun with ``treemdp train --config config.json``)
    data.json      the demonstrations and preferences used (the ``--data`` format)
    history.csv    phase, step, trajectory, prob, in_distribution, row, log_prob, action_0 .. action_{depth-1}
                   (one row per logged step x trajectory; log_prob is the run's exact log-probability
                   in float64, prob = exp(log_prob)); history.parquet instead for large runs
    metrics.csv    phase, step, loss, ood_mass, chosen_prob, ..., mass_* buckets (one row per logged step)
    summary.json   final / peak OOD mass and buckets, chosen / rejected probability, KL, top OOD trajectories
    policy.pt      the trained policy's state_dict; reference.pt the frozen SFT policy's
    run.png        every trajectory's probability over SFT and DAA steps, and the mass buckets

Files are written into a hidden sibling folder first and renamed into place, so an interrupted
write never leaves a half-written run that looks finished. :func:`load_run` gives it all back.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from .errors import UserError
from .files import (atomic_directory, atomic_file, check_writable, current_umask,  # noqa: F401  (re-exported)
                    remove_partial_writes, share_modes)

#: Above this many history rows, ``history_format="auto"`` writes Parquet instead of CSV.
PARQUET_ROWS = 1_000_000

RUN_FILES = ("config.json", "data.json", "history.csv", "metrics.csv", "summary.json",
             "policy.pt", "reference.pt", "run.png")


def _json_dump(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True) + "\n")


def write_run(result, out_dir: str | Path, *, plot: bool = True) -> Path:
    """Write a :class:`~treemdp.training.RunResult` into ``out_dir`` (replacing an older run there).

    Returns:
        The run directory.
    """
    with atomic_directory(out_dir) as tmp:
        _json_dump(result.config.to_dict(), tmp / "config.json")
        _json_dump(result.dataset.to_json(), tmp / "data.json")
        write_history(result.history, tmp, getattr(result.config, "history_format", "auto"))
        result.metrics.to_csv(tmp / "metrics.csv", index=False)
        _json_dump(result.summary, tmp / "summary.json")
        torch.save(result.policy.state_dict(), tmp / "policy.pt")
        torch.save(result.reference.state_dict(), tmp / "reference.pt")
        if plot:
            from .plots import plot_run
            plot_run(result.history, result.summary, path=tmp / "run.png", metrics=result.metrics)
    return Path(out_dir)


def write_history(history, folder: Path, history_format: str = "auto") -> Path:
    """``history.csv`` (in_distribution as true/false), or ``history.parquet`` when asked or large."""
    if history_format == "parquet" or (history_format == "auto" and len(history) > PARQUET_ROWS):
        path = folder / "history.parquet"
        history.to_parquet(path, index=False)
        return path
    history = history.copy()
    history["in_distribution"] = history["in_distribution"].map({True: "true", False: "false"})
    path = folder / "history.csv"
    history.to_csv(path, index=False)
    return path


def read_history(folder: str | Path):
    """A run folder's history (CSV or Parquet) as a DataFrame, ``in_distribution`` boolean."""
    import pandas as pd
    folder = Path(folder)
    if (folder / "history.parquet").is_file():
        return _with_log_prob(pd.read_parquet(folder / "history.parquet"))
    if not (folder / "history.csv").is_file():
        raise UserError(f"{str(folder)!r} has no history (a light sweep run keeps only config and summary)")
    history = pd.read_csv(folder / "history.csv")
    history["in_distribution"] = history["in_distribution"].astype(str).str.lower() == "true"
    return _with_log_prob(history)


def _with_log_prob(history):
    """Folders written before treemdp kept log-probs have only ``prob``: log it (-inf where it underflowed)."""
    import numpy as np
    if "log_prob" not in history.columns:
        with np.errstate(divide="ignore"):
            history.insert(list(history.columns).index("row") + 1 if "row" in history.columns else len(history.columns),
                           "log_prob", np.log(history["prob"].to_numpy(np.float64)))
    return history


def is_finished_run(path: str | Path) -> bool:
    """True when ``path`` holds a complete run (summary.json is written last-but-renamed-whole)."""
    return (Path(path) / "summary.json").is_file()


def read_run(path: str | Path) -> dict:
    """Load a run directory's tables: ``{"config", "summary", "history", "metrics"}`` (dicts, DataFrames)."""
    import pandas as pd
    path = Path(path)
    if not is_finished_run(path):
        raise UserError(f"{str(path)!r} is not a finished treemdp run (no summary.json)")
    return {"config": json.loads((path / "config.json").read_text()),
            "summary": json.loads((path / "summary.json").read_text()),
            "history": read_history(path),
            "metrics": pd.read_csv(path / "metrics.csv")}


class LoadedRun:
    """A run folder, read back: ``config`` (TrainConfig), ``dataset``, ``summary``, and, read when
    first used, ``metrics``, ``history``, ``policy`` and ``reference`` (modules with the saved weights).

    Light sweep runs hold only ``config`` and ``summary``; the rest raises a one-line error.
    """

    def __init__(self, path: str | Path):
        from .training import TrainConfig
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{str(self.path)!r} is not a folder")
        if not is_finished_run(self.path):
            raise UserError(f"{str(self.path)!r} is not a finished treemdp run (no summary.json)")
        try:
            self.config = TrainConfig.from_dict(json.loads((self.path / "config.json").read_text()))
            self.summary = json.loads((self.path / "summary.json").read_text())
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{str(self.path)!r}: cannot read config.json / summary.json: {e}") from None

    def __repr__(self) -> str:
        return f"LoadedRun({str(self.path)!r}, loss={self.config.loss}, beta={self.config.beta:g}, seed={self.config.seed})"

    @property
    def mdp(self):
        from .tree import TreeMDP
        return TreeMDP(self.config.branching, self.config.depth)

    def _need(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise UserError(f"{str(self.path)!r} has no {name} (a light sweep run keeps only config and summary)")
        return path

    @functools.cached_property
    def dataset(self):
        from .tree import load_dataset
        return load_dataset(self._need("data.json"), self.mdp)

    @functools.cached_property
    def metrics(self):
        import pandas as pd
        return pd.read_csv(self._need("metrics.csv"))

    @functools.cached_property
    def history(self):
        return read_history(self.path)

    def _policy(self, name: str):
        from .policies import make_policy
        c = self.config
        policy = make_policy(self.mdp, c.policy, seed=c.seed, hidden_size=c.hidden_size, cell=c.cell)
        policy.load_state_dict(torch.load(self._need(name), map_location="cpu", weights_only=True))
        return policy.requires_grad_(False).eval()

    @functools.cached_property
    def policy(self):
        return self._policy("policy.pt")

    @functools.cached_property
    def reference(self):
        return self._policy("reference.pt")


def load_run(path: str | Path) -> LoadedRun:
    """Read a run folder back (``treemdp train`` or one run of a sweep); see :class:`LoadedRun`.

    Example::

        run = treemdp.load_run("runs/dpo-beta0.1-seed0")
        run.summary["peak_ood_mass"], run.metrics, run.history
        treemdp.trajectory_log_probs(run.policy).exp()   # the trained policy, exactly
    """
    return LoadedRun(path)


class LoadedSweep:
    """A sweep folder: ``results`` (results.csv as a DataFrame, one row per run) and ``run(name)``."""

    def __init__(self, path: str | Path):
        import pandas as pd
        self.path = Path(path)
        if not (self.path / "results.csv").is_file():
            raise UserError(f"{str(self.path)!r} holds no sweep results (results.csv missing)")
        self.results = pd.read_csv(self.path / "results.csv")

    def __repr__(self) -> str:
        return f"LoadedSweep({str(self.path)!r}, {len(self.results)} runs)"

    def run(self, name: str) -> LoadedRun:
        """One run of the sweep, by its name (the ``run`` column)."""
        return load_run(self.path / name)

    def runs(self):
        """Every run of the sweep, in results.csv order."""
        return [self.run(name) for name in self.results["run"]]


def load_sweep(path: str | Path) -> LoadedSweep:
    """Read a sweep folder back: ``load_sweep(DIR).results`` and ``.run(name)``."""
    return LoadedSweep(path)
