"""The lab's runs, batched on the one engine: data from the gold reward, SFT, then DAA, RLHF or
best-of-n, every quality measured exactly at every step.

    configs -> batches of one shape (:func:`~treemdp.lab.config.shape_key`); for each batch:
        r* per run; demonstrations ~ softmax(r*/tau) -> SFT (engine.run_phase, once per distinct SFT)
        ref = the SFT policy; pairs ~ ref (or uniform), Bradley-Terry labels (nested over N)
        daa   run_phase(daa_loss(..., schedule=PairSchedule))                  the lab's measurements
        rlhf  run_phase(scorer, bradley_terry_loss) -> r_phi; run_phase(kl_regularised_loss(r_phi, beta))
        bon   the same r_phi; best-of-n for every n, exactly (no training)

Every run's loss and measurements depend on its own row of the stack only; which stack a run is
computed in is fixed by the grid (:func:`plan_batches`), so an interrupted, resumed or parallel
grid gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..engine import (Phase, PairSchedule, PhaseRecord, ReferenceUpdates, RunContext, bradley_terry_loss, daa_loss,
                      kl_regularised_loss, run_phase, sft_then_reference, stack_parameters, torch_threads)
from ..exact import plog
from ..grid import plan
from ..losses import get_objective
from ..policies import make_policy
from ..rng import stream_seed
from ..training import chosen_dip, context_from_rows
from ..tree import Dataset, TreeMDP
from .bestofn import BestOfN, best_of_n_table
from .config import LabConfig, shape_key
from .data import lab_dataset, sample_demonstrations, sample_pairs
from .gold import GoldReward, make_gold
from .measures import LAB_MEASUREMENTS
from .quality import expected, frontier, frontier_at, kl, tilted_log_probs, win_scores
from .rlhf import make_scorer, ranking_accuracy

#: Columns of a DAA / RLHF curve (one row per logged step).
STEP_COLUMNS = ("step", "epoch", "loss") + LAB_MEASUREMENTS
#: Columns of a best-of-n curve (one row per (proxy, n)).
BON_COLUMNS = ("proxy", "n", "kl_to_reference", "kl_bound", "sqrt_kl", "gold_reward", "gold_gain", "win_rate",
               "win_gain", "proxy_gain")


@dataclass
class LabResult:
    """One lab run.

    Attributes:
        config: its settings.
        summary: peak and final gains, KL, the frontier at the final KL, reward-model accuracy, ...
        curve: tidy DataFrame: one row per logged step (daa, rlhf; :data:`STEP_COLUMNS`) or per
            (proxy, n) (bon; :data:`BON_COLUMNS`).
        frontier: the gold and win-rate frontiers of the run's reference (:func:`~treemdp.lab.quality.frontier`).
        dataset: the demonstrations and pairs.
        gold: the gold reward.
        ref_probs: the reference (SFT) distribution, float64 [T].
        final_probs: the policy at the last step (daa, rlhf), float64 [T]; None for bon.
        reward_model: r_phi [T] (rlhf, bon), else None.
    """

    config: LabConfig
    summary: dict
    curve: pd.DataFrame
    frontier: pd.DataFrame
    dataset: Dataset
    gold: GoldReward
    ref_probs: torch.Tensor
    final_probs: Optional[torch.Tensor] = None
    reward_model: Optional[torch.Tensor] = None

    def __repr__(self) -> str:
        c, s = self.config, self.summary
        what = c.method if c.method != "daa" else c.loss
        return (f"LabResult({what} beta={c.beta:g} N={c.pairs} seed={c.seed}: win rate gain peak "
                f"{s['peak_win_gain']:+.3f} at KL {s['peak_win_kl']:.2f}, final {s['final_win_gain']:+.3f} "
                f"at KL {s['final_kl']:.2f})")


#: Most runs of one shape computed as one stack; a shape's runs are split into equal consecutive parts.
MAX_BATCH = 96


def plan_batches(configs: Sequence[LabConfig], max_batch: int = MAX_BATCH) -> list[list[int]]:
    """The stacks a grid is computed in: indices into ``configs``, by shape, in grid order.

    The plan depends on the grid alone (not on which runs are finished or how many workers run
    it), so a resumed or parallel grid computes every run in the same stack as an uninterrupted
    one: same numbers, bit for bit. (Another grid may stack a config differently: it then agrees
    to float rounding, which Adam's first steps amplify, since lr * g / (|g| + eps) turns
    gradient components at rounding level into steps of +-lr.)
    """
    return plan([shape_key(c) for c in configs], [max_batch] * len(configs), layout="equal")


def run_lab(configs: Sequence[LabConfig], *, progress: bool = False,
            on_batch: Optional[Callable[[list[int], list[LabResult]], None]] = None,
            batches: Optional[list[list[int]]] = None) -> list[LabResult]:
    """Run every config, batched by shape on the engine; results in ``configs`` order.

    Args:
        configs: :class:`LabConfig` objects (validated here).
        progress: a tqdm bar over the work.
        on_batch: called with (indices into ``configs``, their results) as each batch finishes
            (the sweep writes run folders here, so an interrupt loses at most one batch).
        batches: which stacks to compute (default :func:`plan_batches`: all of them); configs in no
            batch get None.
    """
    configs = [c.validate() for c in configs]
    batches = plan_batches(configs) if batches is None else batches
    from tqdm.auto import tqdm
    total = sum(run_work(configs[i]) for b in batches for i in b)
    results: list[Optional[LabResult]] = [None] * len(configs)
    with tqdm(total=total, disable=not progress or not total, unit="run-step", unit_scale=True, desc="lab",
              bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]") as bar:
        for batch in batches:
            out = run_batch([configs[i] for i in batch], on_work=bar.update)
            for i, r in zip(batch, out):
                results[i] = r
            if on_batch is not None:
                on_batch(batch, out)
    return results


def run_work(c: LabConfig) -> int:
    """Run-steps of one config (for the progress bar)."""
    return c.sft_steps + (c.rm_steps if c.method != "daa" else 0) + (c.steps if c.method != "bon" else 0)


def _quiet_record(name: str, steps: int, ctx: RunContext, measurements=()) -> PhaseRecord:
    """A record of per-step measurements only (no probabilities kept, no OOD peak tracking)."""
    return PhaseRecord(name, steps, ctx, log_every=max(1, steps), history_limit=0, keep_history=False,
                       measurements=list(measurements), track_peak=False)


def rm_seed(seed: int) -> int:
    """The reward model's initialisation seed, derived from the run's seed (its own stream)."""
    return stream_seed(seed, "reward_model_init")


def _unique(keys: list) -> tuple[list, torch.Tensor]:
    """Distinct keys (first-seen order) and, for each item, the index of its key."""
    distinct = list(dict.fromkeys(keys))
    where = {k: i for i, k in enumerate(distinct)}
    return distinct, torch.tensor([where[k] for k in keys], dtype=torch.long)


def run_batch(configs: Sequence[LabConfig], *, on_work: Optional[Callable[[int], None]] = None) -> list[LabResult]:
    """Run configs that share a :func:`shape_key` as one stacked computation (see module doc)."""
    order = sorted(range(len(configs)), key=lambda i: (configs[i].lr, configs[i].rm_lr))  # lr groups contiguous
    configs = [configs[i].validate() for i in order]
    first = configs[0]
    with torch_threads(first.threads):
        results = _run_sorted(configs, first.mdp, torch.device(first.device), on_work or (lambda n: None))
    out: list = [None] * len(configs)
    for position, i in enumerate(order):
        out[i] = results[position]
    return out


def _run_sorted(configs, mdp: TreeMDP, device, on_work) -> list[LabResult]:
    started = time.perf_counter()
    golds = {key: make_gold(mdp, key[0], seed=key[1]) for key in dict.fromkeys((c.gold, c.gold_seed) for c in configs)}
    gold_of = [golds[(c.gold, c.gold_seed)] for c in configs]
    sft = _sft(configs, mdp, device, golds, on_work)
    chosen, rejected = _pairs(configs, sft, gold_of)
    demos = [sft.demos[int(u)] for u in sft.of_run]
    ctx = context_from_rows(mdp, demos, chosen, rejected).to(device)
    ctx.ref_logp = sft.logp[sft.of_run.to(device)]
    ref_probs = sft.probs[sft.of_run]  # [R, T] float64
    ctx.extra.update(lab_extras(gold_of, ref_probs, [c.beta for c in configs]))
    rewards = None
    if configs[0].method in ("rlhf", "bon"):
        raw = _fit_reward_models(configs, mdp, device, ctx, chosen, rejected, on_work)  # [R, T] float64
        scales = reward_scale(raw, ref_probs)  # [R]
        rewards = torch.stack([normalize_reward(raw[r], ref_probs[r]) if c.rm_normalize else raw[r]
                               for r, c in enumerate(configs)])
        ctx.extra.update(proxy=rewards, proxy_ref=expected(ref_probs, rewards))
    params = {n: p[sft.of_run.to(device)] for n, p in sft.params.items()}  # every run starts from its reference
    record, schedule, final_logp = None, None, None
    if configs[0].method != "bon":
        record, schedule, final_logp = _optimise(configs, sft.template, params, ctx, rewards, on_work)
    elapsed = time.perf_counter() - started

    table = record.table() if record is not None else None
    results = []
    for r, c in enumerate(configs):
        gold, reward = gold_of[r], None if rewards is None else rewards[r]
        front = pd.concat([frontier(torch.log(ref_probs[r]), gold.values, kind=k) for k in ("gold", "win")],
                          ignore_index=True)
        if c.method == "bon":
            curve, final = bon_curve(ref_probs[r], gold, ctx.extra["win_score"][r], reward, c.n), None
        else:
            curve, final = step_curve(table, r, c, schedule), final_logp[r].exp()
        summary = summarize_lab(c, curve, front, ref_probs[r], gold, reward, elapsed / len(configs))
        if reward is not None:
            summary.update(rm_scale=float(scales[r]), rm_normalized=bool(c.rm_normalize))
            if c.method == "rlhf":
                summary.update(optimum_summary(ref_probs[r], reward, c.beta))
        if record is not None and r in record.first_bad:
            summary["diverged"] = record.first_bad[r]
        results.append(LabResult(c, summary, curve, front, lab_dataset(mdp, demos[r], chosen[r], rejected[r]), gold,
                                 ref_probs[r], final, reward))
    return results


@dataclass
class _References:
    """The SFT phase of a batch: one reference per distinct (seed, demonstrations, SFT lr)."""

    keys: list          # (seed, demos, demo_temperature, gold, gold_seed, sft_lr), ordered by sft_lr
    of_run: torch.Tensor  # [R] which reference each run uses
    demos: list         # per reference, the demonstrations' trajectory rows
    template: object    # the policy module that enumerates the stacked parameters
    params: dict        # name -> [U, ...] the SFT policies' weights
    logp: torch.Tensor  # [U, T] float32, the frozen references' log-probs (what the losses use)
    probs: torch.Tensor  # [U, T] float64, normalised (what the exact quantities use)


def _sft(configs, mdp: TreeMDP, device, golds: dict, on_work) -> _References:
    """Demonstrations from softmax(r*/tau), then SFT once per distinct reference (stacked)."""
    first = configs[0]
    keys, of_run = _unique([(c.seed, c.demos, c.demo_temperature, c.gold, c.gold_seed, c.sft_lr) for c in configs])
    order = sorted(range(len(keys)), key=lambda u: keys[u][-1])  # one parameter group per learning rate
    keys, of_run = [keys[u] for u in order], torch.argsort(torch.tensor(order))[of_run]
    demos = [sample_demonstrations(mdp, golds[(k[3], k[4])], k[1], temperature=k[2], seed=k[0]) for k in keys]
    build = lambda seed: make_policy(mdp, first.policy, seed=seed, hidden_size=first.hidden_size, cell=first.cell)  # noqa: E731
    template = build(0).to(device)
    empty = [torch.zeros(0, dtype=torch.long)] * len(keys)
    ctx = context_from_rows(mdp, demos, empty, empty).to(device)
    params = {n: p.to(device) for n, p in stack_parameters([build(k[0]) for k in keys]).items()}
    params, logp = sft_then_reference(template, params, ctx, steps=first.sft_steps, lrs=[k[-1] for k in keys],
                                      optimizer=first.optimizer, record=_quiet_record("sft", first.sft_steps, ctx),
                                      on_step=lambda n: on_work(n * len(keys)))
    probs = logp.double().exp().cpu()
    return _References(keys, of_run, demos, template, params, logp, probs / probs.sum(-1, keepdim=True))


def _pairs(configs, sft: _References, gold_of) -> tuple[list, list]:
    """Each run's (chosen, rejected) rows: one nested stream per (reference, source, label noise),
    a run with N pairs takes its first N."""
    keys, of_run = _unique([(int(sft.of_run[r]), c.pair_source, c.label_temperature) for r, c in enumerate(configs)])
    T = sft.probs.shape[1]
    streams = []
    for p, (u, source, temperature) in enumerate(keys):
        runs = [r for r in range(len(configs)) if int(of_run[r]) == p]
        probs = sft.probs[u] if source == "reference" else torch.full((T,), 1.0 / T, dtype=torch.float64)
        streams.append(sample_pairs(probs, gold_of[runs[0]], max(configs[r].pairs for r in runs),
                                    temperature=temperature, seed=sft.keys[u][0]))
    chosen = [streams[int(of_run[r])][0][:c.pairs] for r, c in enumerate(configs)]
    rejected = [streams[int(of_run[r])][1][:c.pairs] for r, c in enumerate(configs)]
    return chosen, rejected


def _optimise(configs, template, params, ctx: RunContext, rewards, on_work):
    """The policy phase (DAA or RLHF) on the engine, every lab quantity measured at every step.

    Returns the phase's record, its pair schedule (DAA) and the final log-probs [R, T] float64.
    """
    first, device = configs[0], ctx.chosen.device
    beta = torch.tensor([c.beta for c in configs], dtype=torch.float32, device=device)[:, None]
    schedule = None
    if first.method == "daa":
        schedule = PairSchedule([c.pairs for c in configs], first.batch_size,
                                [stream_seed(c.seed, "minibatches") for c in configs],
                                device=device)
        hook, before_step = None, None
        if first.ref_sync_steps:  # TR-DPO: the loss's reference moves; measurements keep the SFT one
            moving = ReferenceUpdates(template, params, ctx.ref_logp, first.ref_sync_steps, first.ref_mixup_alpha)
            hook, before_step = moving.hook, moving.before_step
        loss = daa_loss(ctx, [get_objective(c.loss) for c in configs], beta, schedule=schedule, hook=hook)
    else:
        loss = kl_regularised_loss(ctx, rewards.float().to(device), beta)
        before_step = None
    record, final_logp = policy_phase(template, params, ctx, loss, name=first.method, steps=first.steps,
                                      lrs=[c.lr for c in configs], optimizer=first.optimizer,
                                      measurements=LAB_MEASUREMENTS, on_work=on_work, before_step=before_step)
    return record, schedule, final_logp


def policy_phase(template, params: dict, ctx: RunContext, loss, *, name: str, steps: int, lrs: Sequence[float],
                 optimizer: str = "adam", measurements: Sequence[str] = (),
                 on_work: Optional[Callable[[int], None]] = None,
                 before_step: Optional[Callable[[int, dict], None]] = None) -> tuple[PhaseRecord, torch.Tensor]:
    """R stacked policies (``params``, from their references) trained by ``loss`` on the engine.

    Returns the phase's record (``measurements`` at every step, no probabilities kept) and the
    final log-probs [R, T] float64. The RLHF loss is
    ``engine.kl_regularised_loss(ctx, r_phi, beta)`` (``ctx.ref_logp`` the references).
    """
    R = int(ctx.in_distribution.shape[0])
    record = _quiet_record(name, steps, ctx, measurements)
    params = run_phase(template, params, Phase(name, steps, list(lrs), loss, before_step), optimizer, record,
                       on_step=None if on_work is None else (lambda n: on_work(n * R)))
    with torch.no_grad():
        final_logp = template.stacked_log_probs(params).double().cpu()
    return record, final_logp


def lab_extras(golds: Sequence[GoldReward], ref_probs: torch.Tensor, betas: Sequence[float]) -> dict:
    """What the lab's measurements read from ``ctx.extra`` (see :mod:`treemdp.lab.measures`)."""
    gold = torch.stack([g.values for g in golds])  # [R, T]
    win = torch.empty_like(gold)
    for g in dict.fromkeys(id(g) for g in golds):
        rows = torch.tensor([r for r, x in enumerate(golds) if id(x) == g])
        win[rows] = win_scores(ref_probs[rows], golds[int(rows[0])].values)
    return {"gold": gold, "gold_ref": expected(ref_probs, gold), "win_score": win, "ref_probs": ref_probs,
            "feature": torch.stack([g.feature for g in golds]),
            "beta": torch.tensor(list(betas), dtype=torch.float64)}


def _fit_reward_models(configs, mdp, device, ctx, chosen, rejected, on_work) -> torch.Tensor:
    """Bradley-Terry reward models, one per distinct (pairs, rm_lr); r_phi [R, T] float64."""
    first = configs[0]
    keys, rm_of_run = _unique([(c.seed, c.demos, c.demo_temperature, c.gold, c.gold_seed, c.sft_lr, c.pair_source,
                                c.label_temperature, c.pairs, c.rm_lr) for c in configs])
    rows = [int((rm_of_run == v).nonzero()[0]) for v in range(len(keys))]  # a run of each reward model
    reward = fit_reward_models(mdp, first.rm, [chosen[r] for r in rows], [rejected[r] for r in rows],
                               seeds=[rm_seed(configs[r].seed) for r in rows], lrs=[k[-1] for k in keys],
                               steps=first.rm_steps, optimizer=first.optimizer, hidden_size=first.rm_hidden_size,
                               cell=first.cell, device=device, on_work=on_work,
                               demonstrations=[ctx.demonstrations[r, :1].cpu() for r in rows])  # [V, T]
    return reward[rm_of_run]


def fit_reward_models(mdp: TreeMDP, kind: str, chosen: Sequence[torch.Tensor], rejected: Sequence[torch.Tensor], *,
                      seeds: Sequence[int], lrs: Sequence[float], steps: int, optimizer: str = "adam",
                      hidden_size: int = 16, cell: str = "gru", device="cpu",
                      on_work: Optional[Callable[[int], None]] = None,
                      demonstrations: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """V Bradley-Terry reward models fit as one stack on the engine: r_phi [V, T] float64.

    Model v is ``make_scorer(mdp, kind, seed=seeds[v], ...)`` trained for ``steps`` full-batch
    steps of ``engine.bradley_terry_loss`` on its pairs (``chosen[v]``, ``rejected[v]``: trajectory
    rows) at ``lrs[v]``. ``demonstrations`` only set the runs' in-distribution masks, which the fit
    does not read (default: each model's first chosen answer).
    """
    build = lambda seed: make_scorer(mdp, kind, seed=seed, hidden_size=hidden_size, cell=cell)  # noqa: E731
    template = build(0).to(device)
    params = {n: p.to(device) for n, p in stack_parameters([build(int(s)) for s in seeds]).items()}
    if demonstrations is None:
        demonstrations = [torch.as_tensor(c, dtype=torch.long)[:1] for c in chosen]
    rm_ctx = context_from_rows(mdp, list(demonstrations), list(chosen), list(rejected)).to(device)
    params = run_phase(template, params, Phase("rm", steps, list(lrs), bradley_terry_loss(rm_ctx)),
                       optimizer, _quiet_record("rm", steps, rm_ctx),
                       on_step=None if on_work is None else (lambda n: on_work(n * len(seeds))))
    with torch.no_grad():
        return template.stacked_log_probs(params).double().cpu()  # [V, T]


# ----- the reward model's scale ----------------------------------------------------------------------
def reward_scale(reward: torch.Tensor, ref_probs: torch.Tensor) -> torch.Tensor:
    """std_ref(r) = sqrt(E_ref[r^2] - E_ref[r]^2): the reward model's scale under the reference. [..., T] -> [...]."""
    mean = expected(ref_probs, reward)
    return (expected(ref_probs, reward ** 2) - mean ** 2).clamp_min(0.0).sqrt()


def normalize_reward(reward: torch.Tensor, ref_probs: torch.Tensor) -> torch.Tensor:
    """(r - E_ref[r]) / std_ref(r): mean 0, variance 1 under the reference (Ziegler et al. 2019 normalise
    the reward model this way on the initial policy's samples). A constant r is only centred. [..., T]."""
    scale = reward_scale(reward, ref_probs)[..., None]
    centred = reward - expected(ref_probs, reward)[..., None]
    return centred / torch.where(scale > 0, scale, torch.ones_like(scale))


def optimum_summary(ref_probs: torch.Tensor, reward: torch.Tensor, beta: float) -> dict:
    """Where RLHF's exact optimum pi*_beta = ref exp(r / beta) / Z sits (tabular policy; PAPER_NOTES).

    ``optimum_sqrt_kl``: sqrt KL(pi*_beta || ref); ``optimum_argmax_mass``: pi*_beta's mass on the
    argmax of r; at >= :data:`~treemdp.lab.rlhf.ARGMAX_SHARE` it is the argmax policy, the same for every smaller beta.
    """
    logp = tilted_log_probs(torch.log(ref_probs), reward, beta)
    top = reward >= reward.max()
    return {"optimum_sqrt_kl": float(kl(logp, torch.log(ref_probs)).clamp_min(0).sqrt()),
            "optimum_argmax_mass": float(logp.exp()[top].sum())}


# ----- tidy tables -------------------------------------------------------------------------------
def step_curve(table: dict, r: int, config: LabConfig, schedule: Optional[PairSchedule]) -> pd.DataFrame:
    """Run r's logged steps: :data:`STEP_COLUMNS`."""
    steps = np.arange(config.steps + 1)
    keep = (steps % config.log_every == 0) | (steps == config.steps)
    epoch = steps / float(schedule.steps_per_epoch[r]) if schedule is not None else np.full(len(steps), np.nan)
    frame = {"step": steps[keep], "epoch": epoch[keep]}
    for name in ("loss",) + LAB_MEASUREMENTS:
        frame[name] = table[name][:, r].numpy()[keep]
    return pd.DataFrame(frame)


def bon_curve(ref_probs: torch.Tensor, gold: GoldReward, win_score: torch.Tensor, reward: torch.Tensor,
              ns: Sequence[int]) -> pd.DataFrame:
    """Best-of-n under the reward model (``proxy = "rm"``) and under r* itself (``"gold"``): :data:`BON_COLUMNS`."""
    gold_ref, proxy_ref = float(expected(ref_probs, gold.values)), float(expected(ref_probs, reward))
    parts = []
    for name, proxy in (("rm", reward), ("gold", gold.values)):
        bon = BestOfN(ref_probs, proxy)
        t = best_of_n_table(ref_probs, proxy, ns, gold=gold.values, win_score=win_score, bon=bon)
        t["proxy_gain"] = [bon.expected(reward, n) - proxy_ref for n in ns]
        t = t.rename(columns={"kl": "kl_to_reference", "gold": "gold_reward"})
        t["gold_gain"] = t["gold_reward"] - gold_ref
        t["win_gain"] = t["win_rate"] - 0.5
        t.insert(0, "proxy", name)
        parts.append(t[list(BON_COLUMNS)])
    return pd.concat(parts, ignore_index=True)


#: Peaks ignore the first min(PEAK_SKIP, steps // 10) steps: Adam's first steps move every weight by
#: about +-lr whatever the gradient's size, a transient whose KL can exceed the run's final KL.
PEAK_SKIP = 10


def peak_skip(steps: int) -> int:
    """Steps a peak ignores (the optimiser's transient, reported as ``transient_*``)."""
    return min(PEAK_SKIP, steps // 10)


def _argmax(values: np.ndarray, where: np.ndarray) -> int:
    """Index of the largest finite value among ``where`` (the first index if there is none)."""
    masked = np.where(where & np.isfinite(values), values, -np.inf)
    return int(np.argmax(masked)) if np.isfinite(masked).any() else 0


def saturation_sqrt_kl(ref_probs: torch.Tensor, gold: torch.Tensor) -> float:
    """sqrt(-log ref(argmax r*)): the sqrt KL at which both frontiers reach their top (pi = ref on
    the best answers); no policy gains more beyond it."""
    return math.sqrt(max(-math.log(float(ref_probs[gold >= gold.max()].sum())), 0.0))


# ----- the summary ---------------------------------------------------------------------------------
def summarize_lab(config: LabConfig, curve: pd.DataFrame, front: pd.DataFrame, ref_probs: torch.Tensor,
                  gold: GoldReward, reward: Optional[torch.Tensor], seconds: float) -> dict:
    """Peak and final gains (win rate and gold), where they happen, and the frontier beside them."""
    rows = curve if config.method != "bon" else curve[curve["proxy"] == "rm"].reset_index(drop=True)
    x = "step" if config.method != "bon" else "n"
    summary = {"method": config.method, "loss": config.loss if config.method == "daa" else "",
               "beta": config.beta if config.method != "bon" else math.nan, "pairs": config.pairs, "seed": config.seed,
               "ref_gold": float(expected(ref_probs, gold.values)),
               "ref_entropy": float(-plog(ref_probs, torch.log(ref_probs)).sum())}
    saturation = saturation_sqrt_kl(ref_probs, gold.values)
    summary["saturation_sqrt_kl"] = saturation
    skip = peak_skip(config.steps) if config.method != "bon" else 0
    settled = rows[x].to_numpy() >= skip
    for quality in ("win", "gold"):
        gain = rows[f"{quality}_gain"].to_numpy()
        peak = _argmax(gain, settled)
        summary[f"peak_{quality}_gain"] = float(gain[peak])
        summary[f"peak_{quality}_{x}"] = int(rows[x].iloc[peak])
        summary[f"peak_{quality}_kl"] = float(rows["kl_to_reference"].iloc[peak])
        summary[f"peak_{quality}_saturation"] = (math.sqrt(max(summary[f"peak_{quality}_kl"], 0.0)) / saturation
                                                 if saturation > 0 else math.nan)
        summary[f"final_{quality}_gain"] = float(gain[-1])
        summary[f"{quality}_drop"] = float(gain[peak] - gain[-1])
        if config.method != "bon":
            summary[f"peak_{quality}_epoch"] = float(rows["epoch"].iloc[peak])
            early = _argmax(gain, ~settled)  # the optimiser's transient, reported apart from the peak
            summary[f"transient_{quality}_gain"] = float(gain[early]) if skip else math.nan
            summary[f"transient_{quality}_kl"] = float(rows["kl_to_reference"].iloc[early]) if skip else math.nan
        kind = front[front["kind"] == quality]
        summary[f"frontier_{quality}_gain_at_final_kl"] = float(frontier_at(kind, [rows["kl_to_reference"].iloc[-1]],
                                                                            f"{quality}_gain")[0])
    if "chosen_log_ratio" in rows and config.method != "bon":
        summary.update(chosen_dip(rows["step"].to_numpy(), rows["chosen_log_ratio"].to_numpy()))
    summary["final_kl"] = float(rows["kl_to_reference"].iloc[-1])
    summary["final_proxy_gain"] = float(rows["proxy_gain"].iloc[-1])
    if "ood_mass" in rows:
        summary["final_ood_mass"] = float(rows["ood_mass"].iloc[-1])
        summary["peak_ood_mass"] = float(rows["ood_mass"].max())
    for column in ("spurious_r2", "spurious_r2_ref", "feature_mean"):
        if column in rows:
            summary[f"final_{column}"] = float(rows[column].iloc[-1])
    if reward is not None and len(reward) <= 4096:
        summary["rm_accuracy"] = float(ranking_accuracy(reward[None], gold.values, ref_probs[None])[0])
    summary["seconds"] = round(seconds, 5)
    return summary


__all__ = ["LabResult", "run_lab", "run_batch", "reward_scale", "normalize_reward", "optimum_summary",
           "saturation_sqrt_kl", "peak_skip", "PEAK_SKIP", "plan_batches", "MAX_BATCH", "step_curve", "bon_curve", "summarize_lab", "lab_extras",
           "fit_reward_models", "policy_phase", "STEP_COLUMNS", "BON_COLUMNS"]
