"""Toy runs: SFT (behaviour cloning) on the demonstrations, then a direct alignment phase (any
registered objective, paper eq. 4) on the preferences with the SFT policy frozen as the reference.

:func:`train_batch` trains R configurations as one stacked computation on the engine
(:mod:`treemdp.engine`); :func:`train` is a batch of one. Every step enumerates all trajectory
probabilities exactly, so peak OOD mass is tracked at every step, not only at logged ones.
Results come back as tidy pandas DataFrames; :mod:`treemdp.runs` writes them to a run directory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from . import accounting  # noqa: F401  (registers the mass buckets)
from .engine import (OPTIMIZERS, DaaHook, Phase, PhaseRecord, ReferenceUpdates, RunContext, daa_loss, load_row,
                     run_phase, sft_then_reference, stack_parameters, torch_threads)
from .errors import TrainingDiverged, UserError
from .grid import Study
from .exact import entropy, in_distribution_mask, kl_divergence, top_ood
from .losses import get_objective
from .objectives import check_loss, loss_spec
from .policies import CELLS, POLICIES, TreePolicy, make_policy
from .settings import Settings, check_integer, check_positive, check_real, setting
from .tree import Dataset, TreeMDP, load_dataset, make_dataset, paper_dataset


#: The history file formats of a run folder (``history_format``).
HISTORY_FORMATS = ("auto", "csv", "parquet")


def check_in_distribution(value) -> str:
    """``data``, ``demonstrations`` or the path of a JSON file of trajectories (any non-empty string)."""
    if not isinstance(value, str) or not value:
        raise UserError("in_distribution must be data, demonstrations or the path of a JSON file of trajectories")
    return value


def check_device(name: str) -> torch.device:
    """``torch.device(name)`` if this machine has it, else a one-line UserError saying what it has."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {name!r} (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None)
    if device.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    else:
        available = bool(backend is not None and hasattr(backend, "is_available") and backend.is_available())
        count = backend.device_count() if available and hasattr(backend, "device_count") else 0
    if not available or (device.index is not None and device.index >= count):
        have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] * torch.cuda.is_available()
        if torch.backends.mps.is_available():
            have.append("mps")
        raise UserError(f"device {name!r} is not available on this machine (available: {', '.join(have)})")
    return device


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Every setting of one run; ``config.json`` holds these fields and reruns it exactly."""

    loss: str = setting("dpo", check=check_loss)
    """Direct alignment objective: a name (dpo, ipo, slic, ...; see 'treemdp losses'), NAME(k=v, ...) with its parameters, module:function or path/to/file.py:function."""
    beta: float = setting(0.1, check=check_positive)
    """Inverse temperature beta of g(beta * h); finite and > 0 (paper: 0.01, 0.1, 0.5)."""
    seed: int = 0
    """Seeds the policy initialisation; same seed, same numbers, bit for bit on CPU."""
    branching: int = setting(3, check=check_integer(2))
    """Actions per state (paper: 3)."""
    depth: int = setting(3, check=check_integer(1))
    """Actions per trajectory (paper: 3)."""
    policy: str = setting("rnn", choices=lambda: POLICIES)
    """Policy class: rnn (shared parameters), tabular (independent logits per state), or a registered one."""
    cell: str = setting("gru", choices=lambda: CELLS)
    """Recurrent cell of the rnn policy: gru, lstm or rnn."""
    hidden_size: int = setting(32, check=check_integer(1))
    """Hidden size of the rnn policy."""
    optimizer: str = setting("adam", choices=lambda: OPTIMIZERS)
    """Optimiser for both phases: adam, rmsprop or sgd (torch.optim, default settings)."""
    sft_lr: float = setting(1e-2, check=check_positive)
    """Learning rate of the SFT phase."""
    daa_lr: float = setting(1e-2, check=check_positive)
    """Learning rate of the direct alignment phase."""
    sft_steps: int = setting(200, check=check_integer(0))
    """Full-batch SFT steps on the demonstrations."""
    daa_steps: int = setting(1000, check=check_integer(0))
    """Full-batch direct alignment steps on the preferences."""
    log_every: int = setting(1, check=check_integer(1))
    """Write every trajectory's probability to the history every this many steps (and the last)."""
    history_limit: int = setting(4096, check=check_integer(1))
    """Trees with more trajectories log only in-distribution and the top-10 OOD ones per logged step."""
    threads: int = setting(1, check=check_integer(1))
    """torch threads (one is fastest for these tiny tensors)."""
    device: str = setting("cpu", check=check_device)
    """Torch device: cpu, cuda, cuda:1, mps, ..."""
    data: Optional[str] = None
    """JSON data file (demonstrations, preferences); None means the paper's data."""
    in_distribution: str = setting("data", check=check_in_distribution)
    """What counts as in distribution: data (demonstrations and both sides of every preference), demonstrations, or a JSON file of trajectories."""
    history_format: str = setting("auto", choices=HISTORY_FORMATS)
    """history file of a run folder: csv, parquet, or auto (Parquet above a million rows)."""
    ref_sync_steps: int = setting(0, check=check_integer(0))
    """TR-DPO: update the DAA reference every N steps (0: the frozen SFT policy, the paper's)."""
    ref_mixup_alpha: float = setting(1.0, check=check_real(0.0, 1.0, low_open=True))
    """TR-DPO: ref <- alpha * policy + (1 - alpha) * ref at each update, alpha in (0, 1] (1: a copy)."""

    def validate(self) -> "TrainConfig":
        """Raise UserError naming the first bad field; return the config with its loss spelled canonically."""
        self.check_fields()
        objective = get_objective(self.loss)
        if isinstance(self.loss, str) and self.loss != objective.spec:
            return dataclasses.replace(self, loss=objective.spec)
        return self

    @property
    def objective(self):
        """The :class:`~treemdp.losses.Objective` named by ``loss``."""
        return get_objective(self.loss)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["loss"] = loss_spec(self.loss)
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainConfig":
        """Build from a dict (e.g. ``config.json``), refusing unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise UserError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**raw)


#: Fields that may differ between the runs of one batch; every other field is part of the shape.
PER_RUN_FIELDS = ("loss", "beta", "seed", "sft_lr", "daa_lr")


def shape_key(config: TrainConfig) -> tuple:
    """The settings a batch must share: every field except :data:`PER_RUN_FIELDS`."""
    fields = config.to_dict()
    return tuple(sorted((k, v) for k, v in fields.items() if k not in PER_RUN_FIELDS))


# ----- results -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _trajectory_names(branching: int, depth: int) -> pd.Series:
    return pd.Series(TreeMDP(branching, depth).trajectory_names(), dtype="str")


class RunResult:
    """What a run produces; the frames are built when first read.

    Attributes:
        config: the settings.
        summary: the ``summary.json`` dict.
        history: tidy DataFrame, one row per logged (phase, step, trajectory): ``phase``, ``step``,
            ``trajectory`` (paper notation), ``prob``, ``in_distribution``.
        metrics: one row per logged (phase, step): ``loss`` and every registered measurement
            (:data:`treemdp.engine.MEASUREMENTS`: ``ood_mass``, ``chosen_prob``, ``kl_to_reference``, ...).
        steps: the same columns at every step.
        policy: the trained policy; reference: the frozen SFT policy.
        dataset: the data.
    """

    def __init__(self, config: TrainConfig, summary: dict, dataset: Dataset, parts: list[tuple[PhaseRecord, int]],
                 make_policy_at: Callable[[str], TreePolicy]):
        self.config, self.summary, self.dataset = config, summary, dataset
        self._parts = parts  # (phase record, row of this run in it), in phase order
        self._make_policy_at = make_policy_at

    def __repr__(self) -> str:
        s = self.summary
        return (f"RunResult({self.config.loss} beta={self.config.beta:g} seed={self.config.seed}: "
                f"peak OOD {s['peak_ood_mass']:.3f} at {s['peak_ood_phase']} step {s['peak_ood_step']}, "
                f"final OOD {s['final_ood_mass']:.3f})")

    @functools.cached_property
    def steps(self) -> pd.DataFrame:
        frames = []
        for record, row in self._parts:
            columns = {name: values[:, row].numpy() for name, values in record.table().items()}
            frames.append(pd.DataFrame({"phase": record.name, "step": np.arange(record.steps + 1), **columns}))
        return pd.concat(frames, ignore_index=True)

    @functools.cached_property
    def metrics(self) -> pd.DataFrame:
        keep = np.concatenate([[record.is_logged(s) for s in range(record.steps + 1)] for record, _ in self._parts])
        return self.steps[keep].reset_index(drop=True)

    @functools.cached_property
    def history(self) -> pd.DataFrame:
        mdp = self._parts[0][0].ctx.mdp
        frames = []
        for record, row in self._parts:
            record.flush()
            in_dist = record.ctx.in_distribution[row].cpu().numpy()
            steps = np.asarray(record.logged_steps)
            if record.small:
                logps = torch.stack([p[row] for p in record.logged]).double() if record.logged else torch.zeros(0, mdp.n_trajectories)
                index = np.tile(np.arange(mdp.n_trajectories), len(steps))
                repeat = np.repeat(steps, mdp.n_trajectories)
                logps = logps.reshape(-1).numpy()
            else:
                k, width = int(record.in_counts[row]), record.in_rows.shape[1]
                keep = [torch.cat([r[row, :k], r[row, width:]]) for r, _ in record.logged_top]
                kept = [torch.cat([p[row, :k], p[row, width:]]) for _, p in record.logged_top]
                index = torch.cat(keep).numpy() if keep else np.zeros(0, dtype=np.int64)
                repeat = np.repeat(steps, [len(x) for x in keep])
                logps = torch.cat(kept).double().numpy() if kept else np.zeros(0)
            frames.append(history_frame(mdp, record.name, repeat, index, logps, in_dist))
        return pd.concat(frames, ignore_index=True)

    @functools.cached_property
    def policy(self) -> TreePolicy:
        return self._make_policy_at("final")

    @functools.cached_property
    def reference(self) -> TreePolicy:
        return self._make_policy_at("reference")


def history_frame(mdp: TreeMDP, phase: str, steps: np.ndarray, rows: np.ndarray, log_probs: np.ndarray,
                  in_distribution: np.ndarray) -> pd.DataFrame:
    """The tidy history: one row per (step, trajectory) with the trajectory's name, its row in
    ``mdp.trajectories()``, ``log_prob`` (the run's exact log-probability, float64) and its actions
    as columns ``action_0 .. action_{depth-1}``. ``prob`` = exp(log_prob) in float64, so it does not
    underflow where float32 would (below ~1e-45) and KL recomputed from the history is the run's."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    frame = pd.DataFrame({"phase": phase, "step": steps, "trajectory": _trajectory_name_array(mdp, rows),
                          "prob": np.exp(log_probs), "in_distribution": in_distribution[rows], "row": rows,
                          "log_prob": log_probs})
    for t in range(mdp.depth):
        frame[f"action_{t}"] = (rows // mdp.branching ** (mdp.depth - 1 - t)) % mdp.branching
    return frame


def _trajectory_name_array(mdp: TreeMDP, rows: np.ndarray) -> np.ndarray:
    if mdp.n_trajectories <= 100_000:
        return _trajectory_names(mdp.branching, mdp.depth).to_numpy()[rows]
    names = {i: mdp.trajectory_name(mdp.trajectories_row(i)) for i in np.unique(rows).tolist()}
    return np.array([names[i] for i in rows.tolist()], dtype=object)


def summarize(config: TrainConfig, mdp: TreeMDP, steps: pd.DataFrame, final_logp: torch.Tensor,
              ref_logp: torch.Tensor, in_dist: torch.Tensor, elapsed: float,
              peak_logp: torch.Tensor | None = None) -> dict:
    """The ``summary.json`` dict from the every-step scalars and the final distributions."""
    daa = steps[steps["phase"] == "daa"]
    sft = steps[steps["phase"] == "sft"]
    phase = daa if len(daa) else sft
    peak = phase["ood_mass"].idxmax()
    final = phase.iloc[-1]
    names = lambda index: mdp.trajectory_name(mdp.trajectories_row(index))  # noqa: E731
    summary = {
        "loss": loss_spec(config.loss), "beta": config.beta, "seed": config.seed,
        "policy": config.policy, "cell": config.cell, "hidden_size": config.hidden_size,
        "optimizer": config.optimizer,
        "final_in_distribution_mass": float(1.0 - final["ood_mass"]),
        "final_ood_mass": float(final["ood_mass"]),
        "peak_ood_mass": float(phase.loc[peak, "ood_mass"]),
        "peak_ood_step": int(phase.loc[peak, "step"]),
        "peak_ood_phase": str(phase.loc[peak, "phase"]),
        "sft_ood_mass": float(sft.iloc[-1]["ood_mass"]),
        "peak_ood_gain": float(daa["ood_mass"].max() - sft.iloc[-1]["ood_mass"]) if len(daa) and len(sft) else math.nan,
        "final_chosen_prob": float(final["chosen_prob"]),
        "final_rejected_prob": float(final["rejected_prob"]),
        # float64 from the run's float32 log-probs: the same numbers as history.csv's log_prob gives
        "kl_to_reference": float(kl_divergence(final_logp.double(), ref_logp.double())),
        "kl_reference_to_policy": float(kl_divergence(ref_logp.double(), final_logp.double())),
        "final_entropy": float(entropy(final_logp.double())),
        "final_loss": float(final["loss"]),
        "top_ood": [{"trajectory": names(i), "prob": p} for i, p in top_ood(final_logp.cpu(), in_dist, k=3)],
    }
    for column in [c for c in steps.columns if c.startswith("mass_")]:  # treemdp.accounting's buckets
        summary[f"peak_{column}"] = float(phase[column].max())
        summary[f"final_{column}"] = float(final[column])
    if len(daa) and "chosen_log_ratio" in daa:
        summary.update(chosen_dip(daa["step"].to_numpy(), daa["chosen_log_ratio"].to_numpy()))
    if peak_logp is not None:
        summary["top_ood_at_peak"] = [{"trajectory": names(i), "prob": p}
                                      for i, p in top_ood(peak_logp.cpu(), in_dist, k=3)]
    summary["train_seconds"] = round(elapsed, 4)
    return summary


#: A log-ratio below -DIP_TOL nats counts as a dip (float32 references carry ~1e-7 of rounding).
DIP_TOL = 1e-6


def chosen_dip(steps: np.ndarray, log_ratio: np.ndarray) -> dict:
    """The lowest chosen log-ratio log pi(y_w) - log ref(y_w) after step 0 (ref = the SFT policy), its
    step, and whether pi(y_w) fell below its SFT value: ``min_chosen_log_ratio``,
    ``min_chosen_log_ratio_step``, ``chosen_dipped_below_sft``. NaN and -1 without such a step."""
    after = (steps > 0) & np.isfinite(log_ratio)
    if not after.any():
        return {"min_chosen_log_ratio": math.nan, "min_chosen_log_ratio_step": -1, "chosen_dipped_below_sft": False}
    i = int(np.argmin(np.where(after, log_ratio, np.inf)))
    return {"min_chosen_log_ratio": float(log_ratio[i]), "min_chosen_log_ratio_step": int(steps[i]),
            "chosen_dipped_below_sft": bool(log_ratio[i] < -DIP_TOL)}


# ----- data --------------------------------------------------------------------------------------
def resolve_dataset(config: TrainConfig, mdp: TreeMDP, dataset: Dataset | None = None) -> Dataset:
    """The data a run uses, validated against ``mdp``: ``dataset`` if given, else the file
    ``config.data``, else the paper's (3 x 3 tree only). Raises UserError naming the problem."""
    if dataset is not None:
        dataset = make_dataset(mdp, dataset.demonstrations, list(dataset.preferences))
    elif config.data is not None:
        dataset = load_dataset(config.data, mdp)
    elif (config.branching, config.depth) == (3, 3):
        dataset = paper_dataset()
    else:
        raise UserError(f"the paper's data fit only the 3 x 3 tree; give --data FILE (TrainConfig.data) for "
                        f"branching={config.branching}, depth={config.depth}")
    if config.daa_steps > 0 and not dataset.preferences:
        raise UserError("the data have no preferences; set daa_steps to 0 for SFT only")
    return dataset


def _pad_rows(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-run index lists -> ([R, n] long, padded with each run's first entry; [R, n] mask)."""
    width = max(1, max(len(r) for r in rows))
    index = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        if len(r):
            index[i] = r[0]
            index[i, :len(r)] = r
            mask[i, :len(r)] = True
    return index, mask


def run_context(mdp: TreeMDP, datasets: Sequence[Dataset], in_distribution: str = "data") -> RunContext:
    """The :class:`~treemdp.engine.RunContext` of runs with these datasets (one per run).

    ``in_distribution``: see :func:`treemdp.exact.in_distribution_mask`."""
    rows = lambda seqs: mdp.trajectory_index(seqs) if len(seqs) else torch.zeros(0, dtype=torch.long)  # noqa: E731
    masks = {}
    for d in datasets:  # one mask per distinct dataset
        if id(d) not in masks:
            masks[id(d)] = in_distribution_mask(mdp, d, in_distribution)
    return context_from_rows(mdp, [rows(d.demonstrations) for d in datasets],
                             [rows(d.chosen()) if d.preferences else rows([]) for d in datasets],
                             [rows(d.rejected()) if d.preferences else rows([]) for d in datasets],
                             in_distribution=torch.stack([masks[id(d)] for d in datasets]))


def context_from_rows(mdp: TreeMDP, demonstrations: Sequence[torch.Tensor], chosen: Sequence[torch.Tensor],
                      rejected: Sequence[torch.Tensor], *, in_distribution: Optional[torch.Tensor] = None) -> RunContext:
    """:func:`run_context` from trajectory rows (one LongTensor per run each), already validated.

    ``in_distribution``: bool [R, T]; default: the demonstrations and both sides of every pair
    (:func:`treemdp.exact.in_distribution_mask`'s ``"data"``).
    """
    demos, demo_mask = _pad_rows(list(demonstrations))
    chosen_rows, pair_mask = _pad_rows(list(chosen))
    rejected_rows, _ = _pad_rows(list(rejected))
    if in_distribution is None:
        in_distribution = torch.zeros(len(demos), mdp.n_trajectories, dtype=torch.bool)
        for r, parts in enumerate(zip(demonstrations, chosen, rejected)):
            in_distribution[r, torch.cat([torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in parts])] = True
    return RunContext(mdp, in_distribution, demos, demo_mask, chosen_rows, rejected_rows, pair_mask)


# ----- training ----------------------------------------------------------------------------------
def train_batch(configs: Sequence[TrainConfig], dataset: Optional[Dataset] = None, *,
                datasets: Optional[Sequence[Dataset]] = None,
                on_step: Optional[Callable[[int], None]] = None, keep_history: bool = True,
                daa_hook: Optional[DaaHook] = None,
                on_log: Optional[Callable[[str, int, torch.Tensor], None]] = None,
                ) -> list[RunResult | TrainingDiverged]:
    """Train every configuration in ``configs`` as one stacked computation (SFT, then DAA).

    Runs with the same seed, SFT learning rate and data share one SFT phase (the loss, beta and
    DAA learning rate act only later).

    Args:
        configs: runs sharing :func:`shape_key` (they may differ in loss, beta, seed and the two
            learning rates).
        dataset: the data of every run (default: ``config.data`` or the paper's).
        datasets: one dataset per config instead (runs with different data in one batch).
        on_step: called with the number of optimisation steps done since its last call; the
            batch does ``sft_steps + daa_steps`` steps in all.
        keep_history: keep each logged step's probabilities (False: only the scalars; sweeps
            writing light run folders save the memory).
        daa_hook: replaces the DAA loss's inputs each step (see :func:`treemdp.engine.daa_loss`).
        on_log: called as ``on_log(phase, step, probs [R, T])`` at every logged step.

    Returns:
        One item per config, in order: a :class:`RunResult`, or the :class:`TrainingDiverged`
        error of a run whose loss or probabilities became NaN/inf.
    """
    configs = [c.validate() for c in configs]
    if not configs:
        return []
    first = configs[0]
    if any(shape_key(c) != shape_key(first) for c in configs):
        raise UserError("train_batch needs configs that differ only in " + ", ".join(PER_RUN_FIELDS))
    mdp = TreeMDP(first.branching, first.depth)
    if datasets is not None:
        if len(datasets) != len(configs):
            raise UserError(f"train_batch got {len(datasets)} datasets for {len(configs)} configs")
        datasets = [resolve_dataset(c, mdp, d) for c, d in zip(configs, datasets)]
    else:
        shared = resolve_dataset(first, mdp, dataset)
        datasets = [shared] * len(configs)
    with torch_threads(first.threads):
        return _train_batch(configs, mdp, datasets, on_step, keep_history, daa_hook, on_log)


def _train_batch(configs, mdp, datasets, on_step, keep_history, daa_hook, on_log):
    # Runs ordered by DAA learning rate (one parameter group per rate); results go back in the
    # caller's order at the end.
    order = sorted(range(len(configs)), key=lambda i: configs[i].daa_lr)
    configs = [configs[i] for i in order]
    datasets = [datasets[i] for i in order]
    first = configs[0]
    device = torch.device(first.device)
    R = len(configs)
    build = lambda c: make_policy(mdp, c.policy, seed=c.seed, hidden_size=c.hidden_size, cell=c.cell)  # noqa: E731

    # SFT once per distinct (SFT lr, seed, data), ordered by SFT learning rate.
    sft_key = lambda i: (configs[i].sft_lr, configs[i].seed, datasets[i].key())  # noqa: E731
    keys = sorted(dict.fromkeys(sft_key(i) for i in range(R)), key=lambda k: k[0])
    sft_of_run = torch.tensor([keys.index(sft_key(i)) for i in range(R)])
    sft_runs = [int((sft_of_run == u).nonzero()[0]) for u in range(len(keys))]  # a run of each SFT
    template = build(first).to(device)
    params = {n: p.to(device) for n, p in stack_parameters([build(configs[i]) for i in sft_runs]).items()}

    started = time.perf_counter()
    log = (lambda phase: (lambda step, probs: on_log(phase, step, probs))) if on_log else (lambda phase: None)  # noqa: E731
    sft_ctx = run_context(mdp, [datasets[i] for i in sft_runs], first.in_distribution).to(device)
    sft_record = PhaseRecord("sft", first.sft_steps, sft_ctx, log_every=first.log_every,
                             history_limit=first.history_limit, keep_history=keep_history, on_log=log("sft"))
    # DAA: every run starts from its SFT policy, which is also its frozen reference ([R, T], exact).
    params, ref_logp = sft_then_reference(template, params, sft_ctx, steps=first.sft_steps, lrs=[k[0] for k in keys],
                                          optimizer=first.optimizer, record=sft_record,
                                          of_run=sft_of_run.to(device), on_step=on_step)
    reference = {n: p.detach().cpu().clone() for n, p in params.items()}
    ctx = run_context(mdp, datasets, first.in_distribution).to(device)
    ctx.ref_logp = ref_logp
    records = [sft_record]
    if first.daa_steps > 0 and len(sft_record.first_bad) < len(keys):
        beta = torch.tensor([c.beta for c in configs], dtype=torch.float32, device=device)[:, None]
        objectives = [get_objective(c.loss) for c in configs]
        daa_record = PhaseRecord("daa", first.daa_steps, ctx, log_every=first.log_every,
                                 history_limit=first.history_limit, keep_history=keep_history, on_log=log("daa"))
        hook, before_step = daa_hook, None
        if first.ref_sync_steps:  # TR-DPO: the loss's reference moves; measurements keep the SFT one
            moving = ReferenceUpdates(template, params, ref_logp, first.ref_sync_steps, first.ref_mixup_alpha)
            before_step = moving.before_step
            hook = moving.hook if daa_hook is None else (
                lambda *a: daa_hook(a[0], a[1], *moving.hook(*a)))
        params = run_phase(template, params, Phase("daa", first.daa_steps, [c.daa_lr for c in configs],
                                                   daa_loss(ctx, objectives, beta, hook=hook), before_step),
                           first.optimizer, daa_record, on_step=on_step)
        records.append(daa_record)
    elapsed = time.perf_counter() - started
    final = {n: p.detach().cpu() for n, p in params.items()}
    with torch.no_grad():
        final_logp = template.stacked_log_probs(params).cpu()

    results = []
    for r, config in enumerate(configs):
        u = int(sft_of_run[r])
        run_parts = [(sft_record, u)] + ([(records[1], r)] if len(records) > 1 else [])
        bad = [rec.first_bad[row] for rec, row in run_parts if row in rec.first_bad]
        if bad:
            results.append(TrainingDiverged(bad[0]))
            continue
        last_record, row = run_parts[-1]
        result = RunResult(config, {}, datasets[r], run_parts,
                           functools.partial(_policy_at, build, config, final, reference, r))
        result.summary = summarize(config, mdp, result.steps, final_logp[r], ref_logp[r].cpu(),
                                   ctx.in_distribution[r].cpu(), elapsed / R,
                                   peak_logp=None if last_record.peak_logp is None else last_record.peak_logp[row])
        results.append(result)
    unsorted = [None] * R
    for position, i in enumerate(order):
        unsorted[i] = results[position]
    return unsorted


def _policy_at(build, config, final, reference, r, which):
    return load_row(build(config), final if which == "final" else reference, r)


def train(config: TrainConfig | None = None, dataset: Dataset | None = None, *,
          progress: bool = False, on_log: Optional[Callable[[str, int, torch.Tensor], None]] = None,
          **overrides) -> RunResult:
    """Run SFT then direct alignment, enumerating every trajectory exactly at every step.

    Args:
        config: the settings (defaults: :class:`TrainConfig`); keyword ``overrides`` replace fields,
            e.g. ``train(loss="ipo", beta=0.5, seed=3)``; ``loss`` may also be an objective or a
            callable ``g`` (see :func:`treemdp.losses.get_objective`).
        dataset: demonstrations and preferences; default: ``config.data`` if set, else the paper's.
        progress: show a tqdm bar (per step) on runs longer than a second; off by default.
        on_log: called as ``on_log(phase, step, probs)`` at every logged step (live plots).

    Returns:
        A :class:`RunResult`.

    Raises:
        TrainingDiverged: the loss or the probabilities became NaN/inf (the message names the step).
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides).validate()
    from tqdm.auto import tqdm
    with tqdm(total=config.sft_steps + config.daa_steps, disable=not progress, delay=1.0, leave=False,
              desc=f"{loss_spec(config.loss)} beta={config.beta:g} seed={config.seed}", unit="step") as bar:
        log = None if on_log is None else (lambda phase, step, probs: on_log(phase, step, probs[0]))
        (result,) = train_batch([config], dataset, on_step=bar.update, on_log=log)
    if isinstance(result, TrainingDiverged):
        raise result
    return result



# ----- the toy track's runs on the grid (treemdp.grid): in memory here, in folders by treemdp.sweep -----

#: Most runs trained as one stacked computation by default (a larger group is cut into equal parts).
#: Per-run cost falls with the batch up to a few hundred runs, then rises again once the stacked
#: weights outgrow the CPU caches (measured on the paper's tree, GRU h=32, one thread: 95 ms/run
#: at 60 runs, 57 at 195, 51 at 260-390, 72 at 780).
BATCH_SIZE = 384

#: Most values (runs x trajectories x recorded steps) one batch keeps: about 1 GB of float32.
BATCH_VALUES = 2**28


def batch_limit(config: TrainConfig, *, keep_history: bool) -> int:
    """Most runs of this shape one batch may hold: every logged step's probabilities stay in
    memory until the batch is written (light sweeps keep only scalars)."""
    T = config.branching ** config.depth
    steps = (config.sft_steps + config.daa_steps) // config.log_every + 2 if keep_history and T <= config.history_limit else 64
    return max(1, BATCH_VALUES // (T * steps))


def check_data(configs: Sequence[TrainConfig]) -> None:
    """Load every data file once before any work, so bad input fails first (UserError)."""
    from .tree import TreeMDP
    for data, branching, depth in {(c.data, c.branching, c.depth) for c in configs}:
        config = next(c for c in configs if (c.data, c.branching, c.depth) == (data, branching, depth))
        resolve_dataset(config, TreeMDP(branching, depth), None)



class TrainStudy(Study):
    """:func:`train_batch` as a grid study: TrainConfig runs stacked by :func:`shape_key`, in
    batches :func:`batch_limit` keeps in memory. In memory through :func:`treemdp.grid.compute`
    (:func:`treemdp.plots.run_grid`); :class:`treemdp.sweep.ToyStudy` adds the run folders."""

    label = "sweep"
    layout = "fill"
    spread = True

    def __init__(self, *, light: bool = False, batch_size: Optional[int] = None, dataset: Optional[Dataset] = None):
        self.light, self.dataset = light, dataset
        self.max_batch = BATCH_SIZE if batch_size is None else batch_size

    def shape(self, config: TrainConfig):
        return shape_key(config)

    def batch_limit(self, config: TrainConfig) -> int:
        return min(self.max_batch, batch_limit(config, keep_history=not self.light))

    def cost(self, config: TrainConfig) -> float:
        return (config.sft_steps + config.daa_steps) * config.hidden_size ** 2

    def check(self, configs: Sequence[TrainConfig]) -> None:
        check_data(configs)

    def run_batch(self, configs, on_work):
        unit = len(configs) * configs[0].hidden_size ** 2
        return train_batch(configs, self.dataset, on_step=lambda n: on_work(n * unit), keep_history=not self.light)


__all__ = ["TrainConfig", "RunResult", "TrainingDiverged", "train", "train_batch", "resolve_dataset",
           "summarize", "shape_key", "PER_RUN_FIELDS", "OPTIMIZERS", "run_context", "context_from_rows", "loss_spec",
           "chosen_dip", "DIP_TOL", "TrainStudy", "batch_limit", "check_data", "BATCH_SIZE", "BATCH_VALUES"]
