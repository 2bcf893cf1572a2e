"""One toy run: SFT (behaviour cloning) on the demonstrations, then a direct alignment phase
(DPO/IPO/SLiC, paper eq. 4) on the preferences with the SFT policy frozen as the reference.

Every step enumerates all trajectory probabilities exactly (``exact.trajectory_log_probs``), so
peak OOD mass is tracked at every step, not only at logged ones. Results come back as tidy pandas
DataFrames; :mod:`treemdp.runs` writes them to a run directory.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch

from .errors import UserError
from .exact import entropy, in_distribution_mask, kl_divergence, trajectory_log_probs
from .losses import LOSSES, check_beta, preference_loss
from .policies import CELLS, POLICIES, TreePolicy, make_policy
from .tree import Dataset, TreeMDP, load_dataset, make_dataset, paper_dataset

OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one run; ``config.json`` holds these fields and reruns it exactly."""

    loss: str = "dpo"
    """Direct alignment loss: dpo, ipo or slic (paper eq. 4)."""
    beta: float = 0.1
    """Inverse temperature beta of g(beta * h); finite and > 0 (paper: 0.01, 0.1, 0.5)."""
    seed: int = 0
    """Seeds the policy initialisation; same seed, same numbers, bit for bit on CPU."""
    branching: int = 3
    """Actions per state (paper: 3)."""
    depth: int = 3
    """Actions per trajectory (paper: 3)."""
    policy: str = "rnn"
    """Policy class: rnn (shared parameters) or tabular (independent logits per state)."""
    cell: str = "gru"
    """Recurrent cell of the rnn policy: gru, lstm or rnn."""
    hidden_size: int = 32
    """Hidden size of the rnn policy."""
    optimizer: str = "adam"
    """Optimiser for both phases: adam, rmsprop or sgd."""
    sft_lr: float = 1e-2
    """Learning rate of the SFT phase."""
    daa_lr: float = 1e-2
    """Learning rate of the direct alignment phase."""
    sft_steps: int = 200
    """Full-batch SFT steps on the demonstrations."""
    daa_steps: int = 1000
    """Full-batch direct alignment steps on the preferences."""
    log_every: int = 1
    """Write every trajectory's probability to the history every this many steps (and the last)."""
    history_limit: int = 4096
    """Trees with more trajectories log only in-distribution and the top-10 OOD ones per logged step."""
    threads: int = 1
    """torch threads (one is fastest for these tiny tensors)."""
    device: str = "cpu"
    """Torch device: cpu, cuda, cuda:1, mps, ..."""
    data: Optional[str] = None
    """JSON data file (demonstrations, preferences); None means the paper's data."""

    def validate(self) -> "TrainConfig":
        """Raise UserError naming the first bad field; return self."""
        if self.loss not in LOSSES:
            raise UserError(f"unknown loss {self.loss!r}; choose one of: {', '.join(LOSSES)}")
        check_beta_user(self.beta)
        for name in ("branching", "depth", "hidden_size", "threads", "log_every", "history_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.branching < 2:
            raise UserError(f"branching must be >= 2, got {self.branching}")
        for name in ("sft_steps", "daa_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("sft_lr", "daa_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UserError(f"{name} must be a finite number > 0, got {value!r}")
        for name, table in (("policy", POLICIES), ("cell", CELLS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in table:
                raise UserError(f"unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(table)}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise UserError(f"unknown device {self.device!r}") from None
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainConfig":
        """Build from a dict (e.g. ``config.json``), refusing unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise UserError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**raw)


def check_beta_user(beta) -> float:
    """:func:`treemdp.losses.check_beta` with the error as a UserError."""
    try:
        return check_beta(beta)
    except ValueError as e:
        raise UserError(str(e)) from None


@dataclass
class RunResult:
    """What a run produces.

    Attributes:
        config: the settings.
        history: tidy DataFrame, one row per (phase, step, trajectory): ``phase``, ``step``,
            ``trajectory`` (paper notation), ``prob``, ``in_distribution``.
        metrics: one row per logged (phase, step): ``loss``, ``kl_to_reference``,
            ``chosen_prob``, ``rejected_prob``, ``in_distribution_mass``, ``ood_mass``, ``entropy``.
        summary: the ``summary.json`` dict.
        policy: the trained policy; reference: the frozen SFT policy.
    """

    config: TrainConfig
    history: pd.DataFrame
    metrics: pd.DataFrame
    summary: dict
    policy: TreePolicy
    reference: TreePolicy
    dataset: Dataset = field(repr=False, default=None)


class TrainingDiverged(UserError):
    """The loss or the probabilities became NaN/inf."""


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The optimiser by name (default hyper-parameters otherwise)."""
    return OPTIMIZERS[name](params, lr=lr, foreach=True)  # one multi-tensor update, not a Python loop


def flatten_parameters(module: torch.nn.Module) -> torch.nn.Parameter:
    """Make every parameter (and its .grad) a view into one flat tensor; return that tensor.

    The optimiser then updates one tensor instead of one per weight matrix: for these tiny models
    the per-tensor overhead, not arithmetic, dominates a step. Autograd accumulates into an
    existing ``.grad`` in place, so gradients land in the flat buffer; zero it with
    ``flat.grad.zero_()`` (never ``set_to_none``). The update is elementwise, so the numbers are
    those of per-parameter Adam/RMSprop/SGD.
    """
    params = list(module.parameters())
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
    flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat.data[offset:offset + n].view_as(p)
        p.grad = flat.grad[offset:offset + n].view_as(p)
        offset += n
    return flat


def sft_loss(logp: torch.Tensor, demo_index: torch.Tensor) -> torch.Tensor:
    """Behaviour cloning: mean negative log-likelihood of the demonstrations (a scalar)."""
    return -logp[demo_index].mean()


def daa_loss(logp: torch.Tensor, ref_logp: torch.Tensor, chosen: torch.Tensor,
             rejected: torch.Tensor, *, beta: float, loss: str) -> torch.Tensor:
    """Mean of eq. 4 over the preferences, from exact trajectory log-probs (a scalar)."""
    return preference_loss(logp[chosen], logp[rejected], ref_logp[chosen], ref_logp[rejected],
                           beta=beta, loss=loss).mean()


class _Recorder:
    """Collects what a run reports, keeping the per-step work in the training loop minimal.

    Small trees (<= ``history_limit`` trajectories): every step's log-prob vector is kept and
    everything (masses, KL, entropy, the history) is computed once, vectorised, at the end.
    Large trees: masses every step; KL, entropy and the probabilities of the in-distribution and
    the 10 most probable OOD trajectories at logged steps only.
    """

    def __init__(self, mdp: TreeMDP, in_dist: torch.Tensor, chosen, rejected, limit: int, log_every: int):
        self.mdp, self.in_dist, self.chosen, self.rejected = mdp, in_dist, chosen, rejected
        self.small = mdp.n_trajectories <= limit
        self.log_every = log_every
        self.phase: list[str] = []
        self.step: list[int] = []
        self.loss: list[float] = []
        self.per_step: list[torch.Tensor] = []  # [b**d] log-probs (small) or [3] masses (large)
        self.logged: list[tuple[str, int, float, float, torch.Tensor, torch.Tensor]] = []  # large trees
        self.ref_logp: Optional[torch.Tensor] = None

    def _masses(self, logp: torch.Tensor) -> torch.Tensor:
        """[..., b**d] log-probs -> [..., 3]: OOD mass, mean chosen prob, mean rejected prob."""
        probs = logp.exp()
        nan = probs.new_full(probs.shape[:-1], float("nan"))
        return torch.stack([probs[..., ~self.in_dist].sum(-1),
                            probs[..., self.chosen].mean(-1) if len(self.chosen) else nan,
                            probs[..., self.rejected].mean(-1) if len(self.rejected) else nan], -1)

    def record(self, phase: str, step: int, logp: torch.Tensor, loss: float, ref_logp, last: int):
        if not math.isfinite(loss):
            raise TrainingDiverged(f"{phase} step {step}: the loss became {loss} "
                                   f"(learning rate too high for this optimiser?); stopped")
        logp = logp.detach()
        self.phase.append(phase)
        self.step.append(step)
        self.loss.append(loss)
        if ref_logp is not None and self.ref_logp is None:
            self.ref_logp = ref_logp.detach().cpu()
        if self.small:
            self.per_step.append(logp)
            return
        logp = logp.cpu()
        self.per_step.append(self._masses(logp))
        if step % self.log_every == 0 or step == last:
            if not torch.isfinite(logp).all():
                raise TrainingDiverged(f"{phase} step {step}: the policy's probabilities became NaN/inf; stopped")
            kl = float(kl_divergence(logp, self.ref_logp)) if ref_logp is not None else float("nan")
            top = torch.topk(logp.masked_fill(self.in_dist, -math.inf), min(10, int((~self.in_dist).sum()))).indices
            index = torch.cat([self.in_dist.nonzero().squeeze(1), top])
            self.logged.append((phase, step, kl, float(entropy(logp)), index, logp[index].exp()))

    def _logged_mask(self) -> np.ndarray:
        steps = np.asarray(self.step)
        phases = np.asarray(self.phase)
        last = {p: steps[phases == p].max() for p in set(self.phase)}
        return (steps % self.log_every == 0) | (steps == np.vectorize(last.get)(phases))

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(history, metrics at logged steps, every-step scalars)."""
        per_step = torch.stack(self.per_step).cpu().double()  # [S, b**d] or [S, 3]
        masses = self._masses(per_step) if self.small else per_step
        steps = pd.DataFrame({"phase": self.phase, "step": self.step, "loss": self.loss,
                              "ood_mass": masses[:, 0].numpy(), "chosen_prob": masses[:, 1].numpy(),
                              "rejected_prob": masses[:, 2].numpy()})
        steps["in_distribution_mass"] = 1.0 - steps["ood_mass"]
        if self.small:
            logged = self._logged_mask()
            logp = per_step[torch.from_numpy(logged)]  # [L, b**d]
            if not torch.isfinite(logp).all():
                bad = int(torch.isfinite(logp).all(1).logical_not().nonzero()[0])
                raise TrainingDiverged(f"{np.asarray(self.phase)[logged][bad]} step {np.asarray(self.step)[logged][bad]}: "
                                       "the policy's probabilities became NaN/inf; stopped")
            probs = logp.exp()
            is_daa = torch.from_numpy(np.asarray(self.phase)[logged] == "daa")
            kl = ((probs * (logp - self.ref_logp.double())).sum(1) if self.ref_logp is not None
                  else torch.full((len(logp),), float("nan"), dtype=torch.float64))
            metrics = steps[logged].assign(
                kl_to_reference=torch.where(is_daa, kl, torch.tensor(float("nan"), dtype=torch.float64)).numpy(),
                entropy=(-(probs * logp).sum(1)).numpy()).reset_index(drop=True)
            n = self.mdp.n_trajectories
            history = pd.DataFrame({
                "phase": np.repeat(metrics["phase"].to_numpy(), n),
                "step": np.repeat(metrics["step"].to_numpy(), n),
                "trajectory": np.tile(np.asarray(self.mdp.trajectory_names(), dtype=object), len(metrics)),
                "prob": probs.reshape(-1).numpy(),
                "in_distribution": np.tile(self.in_dist.numpy(), len(metrics)),
            })
            return history, metrics, steps
        name_of = lambda i: self.mdp.trajectory_name(self.mdp.trajectories_row(i))  # noqa: E731
        history = pd.DataFrame({
            "phase": [p for p, _, _, _, index, _ in self.logged for _ in range(len(index))],
            "step": [s for _, s, _, _, index, _ in self.logged for _ in range(len(index))],
            "trajectory": [name_of(i) for *_, index, _ in self.logged for i in index.tolist()],
            "prob": torch.cat([p for *_, p in self.logged]).double().numpy() if self.logged else [],
            "in_distribution": torch.cat([self.in_dist[i] for *_, i, _ in self.logged]).numpy() if self.logged else [],
        })
        logged = pd.DataFrame([(p, s, kl, h) for p, s, kl, h, _, _ in self.logged],
                              columns=["phase", "step", "kl_to_reference", "entropy"])
        metrics = steps.merge(logged, on=["phase", "step"], how="inner")
        return history, metrics, steps


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


def train(config: TrainConfig | None = None, dataset: Dataset | None = None, *,
          progress: bool = True, on_log: Optional[Callable[[str, int, torch.Tensor], None]] = None,
          **overrides) -> RunResult:
    """Run SFT then direct alignment, enumerating every trajectory exactly at every step.

    Args:
        config: the settings (defaults: :class:`TrainConfig`); keyword ``overrides`` replace fields,
            e.g. ``train(loss="ipo", beta=0.5, seed=3)``.
        dataset: demonstrations and preferences; default: ``config.data`` if set, else the paper's.
        progress: show a tqdm bar on runs longer than a second.
        on_log: called as ``on_log(phase, step, probs)`` at every logged step (live plots).

    Returns:
        A :class:`RunResult`.
    """
    config = dataclasses.replace(config or TrainConfig(), **overrides).validate()
    mdp = TreeMDP(config.branching, config.depth)
    dataset = resolve_dataset(config, mdp, dataset)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, mdp, dataset, progress, on_log)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config, mdp, dataset, progress, on_log) -> RunResult:
    device = torch.device(config.device)
    policy = make_policy(mdp, config.policy, seed=config.seed, hidden_size=config.hidden_size,
                         cell=config.cell).to(device)
    in_dist = in_distribution_mask(mdp, dataset)
    demo_index = mdp.trajectory_index(dataset.demonstrations).to(device)
    chosen = mdp.trajectory_index(dataset.chosen()) if dataset.preferences else torch.zeros(0, dtype=torch.long)
    rejected = mdp.trajectory_index(dataset.rejected()) if dataset.preferences else torch.zeros(0, dtype=torch.long)
    recorder = _Recorder(mdp, in_dist, chosen, rejected, config.history_limit, config.log_every)
    chosen_d, rejected_d = chosen.to(device), rejected.to(device)

    from tqdm.auto import tqdm
    bar = tqdm(total=config.sft_steps + config.daa_steps, disable=not progress, delay=1.0,
               desc=f"{config.loss} beta={config.beta:g} seed={config.seed}", unit="step", leave=False)
    started = time.perf_counter()

    flat = flatten_parameters(policy)

    def run_phase(phase: str, steps: int, lr: float, objective, ref_logp=None) -> None:
        """``steps`` full-batch updates of ``objective(logp)``, recording steps 0..steps."""
        optimizer = make_optimizer(config.optimizer, [flat], lr)
        for step in range(steps + 1):
            logp = trajectory_log_probs(policy)  # [b**d], exact
            loss = objective(logp)
            recorder.record(phase, step, logp, loss.item(), ref_logp, steps)
            if on_log is not None and (step % config.log_every == 0 or step == steps):
                on_log(phase, step, logp.detach().exp())
            if step == steps:
                return
            flat.grad.zero_()
            loss.backward()
            optimizer.step()
            bar.update()

    # ----- SFT: maximise the likelihood of the demonstrations --------------------------------
    run_phase("sft", config.sft_steps, config.sft_lr, lambda logp: sft_loss(logp, demo_index))

    # ----- DAA: g(beta * h) on the preferences, SFT policy frozen as the reference ---------------
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    for p in reference.parameters():
        p.grad = None
    with torch.no_grad():
        ref_logp = trajectory_log_probs(reference)
    if config.daa_steps > 0:
        run_phase("daa", config.daa_steps, config.daa_lr,
                  lambda logp: daa_loss(logp, ref_logp, chosen_d, rejected_d, beta=config.beta, loss=config.loss),
                  ref_logp)
    bar.close()
    elapsed = time.perf_counter() - started

    history, metrics, steps = recorder.frames()
    with torch.no_grad():
        final_logp = trajectory_log_probs(policy)
    summary = summarize(config, mdp, steps, final_logp, ref_logp, in_dist, elapsed)
    return RunResult(config, history, metrics, summary, policy.requires_grad_(False).eval(), reference, dataset)


def summarize(config: TrainConfig, mdp: TreeMDP, steps: pd.DataFrame, final_logp: torch.Tensor,
              ref_logp: torch.Tensor, in_dist: torch.Tensor, elapsed: float) -> dict:
    """The ``summary.json`` dict from the every-step scalars and the final distributions."""
    from .exact import top_ood
    daa = steps[steps["phase"] == "daa"]
    sft = steps[steps["phase"] == "sft"]
    phase = daa if len(daa) else sft
    peak = phase["ood_mass"].idxmax()
    final = phase.iloc[-1]
    names = lambda index: mdp.trajectory_name(mdp.trajectories_row(index))  # noqa: E731
    return {
        "loss": config.loss, "beta": config.beta, "seed": config.seed,
        "policy": config.policy, "cell": config.cell, "hidden_size": config.hidden_size,
        "optimizer": config.optimizer,
        "final_in_distribution_mass": float(1.0 - final["ood_mass"]),
        "final_ood_mass": float(final["ood_mass"]),
        "peak_ood_mass": float(phase.loc[peak, "ood_mass"]),
        "peak_ood_step": int(phase.loc[peak, "step"]),
        "peak_ood_phase": str(phase.loc[peak, "phase"]),
        "sft_ood_mass": float(sft.iloc[-1]["ood_mass"]),
        "final_chosen_prob": float(final["chosen_prob"]),
        "final_rejected_prob": float(final["rejected_prob"]),
        "kl_to_reference": float(kl_divergence(final_logp, ref_logp)),
        "kl_reference_to_policy": float(kl_divergence(ref_logp, final_logp)),
        "final_entropy": float(entropy(final_logp)),
        "final_loss": float(final["loss"]),
        "top_ood": [{"trajectory": names(i), "prob": p} for i, p in top_ood(final_logp.cpu(), in_dist, k=3)],
        "train_seconds": round(elapsed, 4),
    }
